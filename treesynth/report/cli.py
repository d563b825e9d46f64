"""Reports across runs: `python -m treesynth.report <dir> [--name NAME]`.

The command line; what the report holds and how runs map onto the paper's table: treesynth/report/__init__.py.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from treesynth.errors import TreesynthError
from treesynth.report.build import build_report
from treesynth.report.paper import PAPER_DIR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m treesynth.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", help="folder holding run outputs (Hydra outputs/ or multirun/)")
    parser.add_argument("--name", help="report name: writes results/<name>/ (default: the folder's name)")
    parser.add_argument("--results", default="results", help="results root (default: ./results)")
    parser.add_argument("--paper", default=str(PAPER_DIR), help="folder of the paper's CSVs")
    parser.add_argument("--no-tsne", action="store_true", help="skip the t-SNE figures (embedding is slow)")
    parser.add_argument("--note", help="text shown under the report's title (e.g. how the setting differs from the paper's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    name = args.name or Path(args.dir).resolve().name
    try:
        path = build_report(args.dir, Path(args.results) / name, Path(args.paper), tsne=not args.no_tsne,
                            note=args.note)
    except TreesynthError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report written: {path}")
    return 0

