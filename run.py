"""Entry point: `python run.py [overrides]` runs one experiment; `python run.py -m ...` sweeps.

Stages (stages=[...]): synthesize -> diversity -> train -> evaluate_base / evaluate. Each stage's artifact
is keyed by the config it depends on, so reruns and sweeps reuse what already exists.
"""

from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from treesynth.errors import TreesynthError


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict | None:
    from treesynth.preflight import preflight

    # Relative paths are relative to where run.py was launched, also inside launcher jobs.
    cfg.paths.artifacts = to_absolute_path(str(cfg.paths.artifacts))
    cfg.paths.results = to_absolute_path(str(cfg.paths.results))
    try:
        preflight(cfg)  # bad settings or input files: one line now, before the heavy imports below
        from treesynth.pipeline import run_pipeline

        summary = run_pipeline(cfg, HydraConfig.get().runtime.output_dir)
    except TreesynthError as e:
        print(f"error: {e}", file=sys.stderr)  # one line on stderr (Hydra's console log goes to stdout)
        sys.exit(2)
    from treesynth.summary import print_summary

    print_summary(summary)
    return summary


def one_line(e: HydraException) -> str:
    """Hydra's error (an unknown key, a bad override, an option that does not exist) as one line: its
    message lines joined, without the indented detail lines (full_key, object_type)."""
    text = str(e).split("\nConfig search path:")[0]  # (where Hydra looked: noise next to the options listed)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("    ")]
    if override := getattr(e, "override", None):  # a parse error: say which argument
        lines.insert(0, f"{override}:")
    if e.__cause__ is not None and str(e.__cause__).strip():
        lines.append(f"({str(e.__cause__).splitlines()[0].strip()})")
    return " ".join(lines)


if __name__ == "__main__":
    # Hydra re-raises its errors instead of printing several lines and exiting 1: they become one line
    # and exit code 2 like ours (`llm.runtime.max_concurrency=0` where the backend has no such key).
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except HydraException as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
