"""Publish a synthesized dataset with a dataset card.

    python -m treesynth.export SOURCE --to dir PATH [--format parquet|disk|both] [--license L]
    python -m treesynth.export SOURCE --to hub --repo user/name [--private] [--license L]

SOURCE is a run folder (`outputs/...` or `multirun/...` job with summary.json) or a synthesize artifact
folder (`artifacts/synthesize/<key>/`). The export holds `README.md` (the dataset card, written by
treesynth/dataset_card.py: YAML front matter the hub reads, then the task, method, models, size, seed,
hygiene counts, diversity metrics, the TreeSynth tree's summary and the command that made the data), `data/train-00000-of-00001.parquet` (every record of
data.jsonl; `load_dataset(PATH)` reads it through the card's `configs`), TreeSynth's tree files, and with
--format disk/both a `datasets` save_to_disk folder `disk/` (`load_from_disk(PATH/disk)`).
The hub upload reads its token from HF_TOKEN (never written anywhere) and checks that the hub answers
before anything is uploaded. Every export is recorded in `exports.json` next to the artifact; the report
links each row to its dataset from there.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from treesynth.dataset_card import DATA_FILE, DISK_DIR, Source, dataset_card, load_source
from treesynth.errors import TreesynthError
from treesynth.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_jsonl

log = logging.getLogger("treesynth")

EXPORTS_FILE = "exports.json"
TREE_FILES = ("tree.json", "tree.html", "tree.txt")
TOKEN_ENV = "HF_TOKEN"
HUB_PROBE_TIMEOUT_S = 5.0
CHECK_BATCH = 10_000  # records compared at a time when checking that arrow holds them exactly
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


# ----------------------------------------------------------------------------------------------- data
def records_table(rows: list[dict[str, Any]]) -> tuple[Any, bool]:
    """(pyarrow table, whether `meta` is stored as JSON text). A typed `meta` struct when arrow holds
    every record exactly as data.jsonl has it; else JSON text, so every record still round-trips."""
    import pyarrow as pa

    try:
        table = pa.Table.from_pylist(rows)
        struct_ok = all(f.type.num_fields > 0 for f in table.schema if pa.types.is_struct(f.type))  # parquet
        if struct_ok and all(table.slice(i, CHECK_BATCH).to_pylist() == rows[i:i + CHECK_BATCH]
                             for i in range(0, len(rows), CHECK_BATCH)):  # in batches: no second full copy
            return table, False
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        pass
    return pa.Table.from_pylist([{**r, "meta": json.dumps(r.get("meta"), ensure_ascii=False)} for r in rows]), True


def build_export(source: Source, folder: Path, formats: tuple[str, ...] = ("parquet",),
                 license_id: str | None = None, repo: str | None = None) -> int:
    """Write the export into an empty `folder`; returns the number of records."""
    import pyarrow.parquet as pq

    rows = read_jsonl(source.artifact / "data.jsonl")
    if not rows:
        raise TreesynthError(f"export: {source.artifact / 'data.jsonl'} holds no records")
    table, meta_as_json = records_table(rows)
    if "parquet" in formats:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        atomic_write_bytes(folder / DATA_FILE, buf.getvalue())
    if "disk" in formats:
        import datasets

        datasets.Dataset(datasets.table.InMemoryTable(table)).save_to_disk(str(folder / DISK_DIR))
    for name in TREE_FILES:
        if (source.artifact / name).is_file():
            shutil.copyfile(source.artifact / name, folder / name)
    atomic_write_text(folder / "README.md",
                      dataset_card(source, len(rows), license_id, repo, meta_as_json, "parquet" in formats))
    return len(rows)


# ----------------------------------------------------------------------------------------------- records
def read_exports(artifact: str | Path) -> list[dict[str, Any]]:
    """The exports recorded for a synthesize artifact (empty when none or unreadable)."""
    try:
        doc = json.loads((Path(artifact) / EXPORTS_FILE).read_text())
    except (OSError, ValueError):
        return []
    return doc if isinstance(doc, list) else []


def record_export(artifact: Path, entry: dict[str, Any]) -> None:
    """Append an export to the artifact's exports.json (one entry per destination; the newest wins)."""
    same = ("to", "path", "repo")
    kept = [e for e in read_exports(artifact) if any(e.get(k) != entry.get(k) for k in same)]
    try:
        atomic_write_json(artifact / EXPORTS_FILE, [*kept, {**entry, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}])
    except OSError as e:  # a read-only shared store: the export itself is done
        log.warning("export: could not record the export in %s: %s", artifact / EXPORTS_FILE, e)


def hub_url(repo: str, endpoint: str | None = None) -> str:
    return f"{(endpoint or 'https://huggingface.co').rstrip('/')}/datasets/{repo}"


# ----------------------------------------------------------------------------------------------- targets
def export_dir(source: Source, path: Path, formats: tuple[str, ...], license_id: str | None,
               overwrite: bool = False) -> int:
    """Build next to `path`, then move into place: an interrupted export leaves no half folder."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise TreesynthError(f"export: {path} exists and is not empty; pass --overwrite or choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        n = build_export(source, tmp, formats, license_id)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
        else:
            tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    record_export(source.artifact, {"to": "dir", "path": str(path.resolve()), "formats": list(formats)})
    return n


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def check_hub_reachable(endpoint: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> None:
    """One short request without credentials; any HTTP answer means the hub is there."""
    try:
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/api/datasets?limit=1", method="HEAD"),
                               timeout=timeout).close()
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise TreesynthError(f"export: the Hugging Face hub at {endpoint} is unreachable ({reason}); nothing "
                             f"was uploaded. Export with --to dir PATH now and upload that folder later") from None


def export_hub(source: Source, repo: str, private: bool, license_id: str | None) -> tuple[int, str]:
    """Create (or reuse) the dataset repo and upload the export in one commit; returns (records, url)."""
    if not REPO_ID.match(repo):
        raise TreesynthError(f"export: --repo {repo!r} is not a hub id; use user/name or org/name")
    token = os.environ.get(TOKEN_ENV)
    if not token:
        raise TreesynthError(f"export: set {TOKEN_ENV} to a Hugging Face token with write access "
                             f"(https://huggingface.co/settings/tokens)")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise TreesynthError("export: HF_HUB_OFFLINE is set, so the hub is off for this process; unset it to "
                             "upload (nothing was uploaded)")
    endpoint = hub_endpoint()
    check_hub_reachable(endpoint)
    import huggingface_hub

    with tempfile.TemporaryDirectory(prefix="treesynth-export-") as staging:
        n = build_export(source, Path(staging), ("parquet",), license_id, repo)
        api = huggingface_hub.HfApi(endpoint=endpoint, token=token)
        try:
            api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
            commit = api.upload_folder(repo_id=repo, folder_path=staging, repo_type="dataset",
                                       commit_message=f"treesynth export of artifact {source.key}")
        except Exception as e:  # HTTP errors name the status and the hub's reason, never the token
            raise TreesynthError(f"export: hub upload to {repo} failed: {str(e).splitlines()[0] if str(e) else e!r}") from None
    url = hub_url(repo, endpoint)
    record_export(source.artifact, {"to": "hub", "repo": repo, "url": url, "private": private,
                                    "commit": getattr(commit, "oid", None)})
    return n, url


# ----------------------------------------------------------------------------------------------- cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m treesynth.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a run folder (with summary.json) or artifacts/synthesize/<key>/")
    parser.add_argument("--to", nargs="+", required=True, metavar="TARGET",
                        help="`dir PATH` (a local folder) or `hub` (with --repo)")
    parser.add_argument("--repo", help="hub dataset id, user/name or org/name")
    parser.add_argument("--private", action="store_true", help="create the hub repo private")
    parser.add_argument("--license", help="the card's license id (e.g. apache-2.0, cc-by-4.0, mit); default unknown")
    parser.add_argument("--format", choices=("parquet", "disk", "both"), default="parquet",
                        help="dir: parquet (the hub layout: load_dataset(PATH)), disk (a save_to_disk folder: "
                             "load_from_disk(PATH/disk)), or both")
    parser.add_argument("--overwrite", action="store_true", help="dir: replace an existing non-empty PATH")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        target, rest = args.to[0], args.to[1:]
        if target == "dir" and len(rest) == 1:
            source = load_source(args.source)
            formats = ("parquet", "disk") if args.format == "both" else (args.format,)
            n = export_dir(source, Path(rest[0]), formats, args.license, args.overwrite)
            print(f"exported {n} records of {source.artifact} to {Path(rest[0]).resolve()}")
        elif target == "hub" and not rest:
            if not args.repo:
                raise TreesynthError("export: --to hub needs --repo user/name")
            source = load_source(args.source)
            n, url = export_hub(source, args.repo, args.private, args.license)
            print(f"exported {n} records of {source.artifact} to {url}")
        else:
            raise TreesynthError(f"export: --to {' '.join(args.to)}: use `--to dir PATH` or `--to hub --repo user/name`")
    except TreesynthError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
