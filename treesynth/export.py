"""Publish a synthesized dataset with a dataset card.

    python -m treesynth.export SOURCE --to dir PATH [--format parquet|disk|both] [--license L]
    python -m treesynth.export SOURCE --to hub --repo user/name [--private] [--license L]

SOURCE is a run folder (`outputs/...` or `multirun/...` job with summary.json) or a synthesize artifact
folder (`artifacts/synthesize/<key>/`). The export holds `README.md` (the dataset card: YAML front matter
the hub reads, then the task, method, models, size, seed, hygiene counts, diversity metrics, the TreeSynth
tree's summary and the command that made the data), `data/train-00000-of-00001.parquet` (every record of
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from treesynth.errors import TreesynthError
from treesynth.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_jsonl
from treesynth.pipeline import scrub_secrets

log = logging.getLogger("treesynth")

EXPORTS_FILE = "exports.json"
DATA_FILE = "data/train-00000-of-00001.parquet"
DISK_DIR = "disk"
TREE_FILES = ("tree.json", "tree.html", "tree.txt")
TOKEN_ENV = "HF_TOKEN"
HUB_PROBE_TIMEOUT_S = 5.0
CHECK_BATCH = 10_000  # records compared at a time when checking that arrow holds them exactly
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# Synthesize metrics that are not pipeline counts (the tree has its own section; LLM stats are usage).
NOT_COUNTS = ("records", "seconds", "llm", "teacher_llm", "plan")
# The hub's size buckets (dataset card `size_categories`), upper bounds exclusive.
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))


# ----------------------------------------------------------------------------------------------- source
@dataclass
class Source:
    """One synthesized dataset and what is known about how it was made."""

    artifact: Path  # artifacts/synthesize/<key>/
    stage_config: dict[str, Any]  # exactly what the data depends on (stage_config.json)
    config: dict[str, Any]  # the run's config (summary.json), else stage_config
    metrics: dict[str, Any]  # the synthesize stage's metrics
    diversity: dict[str, Any] | None  # the diversity stage's metrics
    command: dict[str, Any] | None  # pipeline.invocation() of the run that made it

    @property
    def key(self) -> str:
        return self.artifact.name

    def cfg(self, dotted: str, default: Any = None) -> Any:
        """A config value by dotted path (stage_config.json stores some keys dotted: "data.size")."""
        if dotted in self.config:
            return self.config[dotted]
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TreesynthError(f"export: cannot read {path}: {e}") from e


def _diversity_of(artifact: Path) -> dict[str, Any] | None:
    """The newest finished diversity stage made from this synthesize artifact (stage.json names its upstream)."""
    found = []
    for done in (artifact.parent.parent / "diversity").glob("*/stage.json"):
        try:
            doc = json.loads(done.read_text())
        except (OSError, ValueError):
            continue
        if (doc.get("upstream") or {}).get("synthesize") == artifact.name:
            found.append((doc.get("finished") or 0, doc.get("metrics") or {}))
    return max(found, key=lambda f: f[0])[1] if found else None


def load_source(path: str | Path) -> Source:
    """A run folder (summary.json) or a synthesize artifact folder; a clear error for anything else."""
    path = Path(path)
    if (path / "summary.json").is_file():
        summary = _read_json(path / "summary.json")
        artifact = (summary.get("artifacts") or {}).get("synthesize")
        if not artifact:
            raise TreesynthError(f"export: the run {path} has no synthesize stage (see its summary.json)")
        if not Path(artifact).is_dir():
            raise TreesynthError(f"export: the run's synthesize artifact {artifact} (from {path / 'summary.json'}) "
                                 f"is not here; pass the artifact folder where it is now")
        source = _artifact_source(Path(artifact))
        source.config = summary.get("config") or source.config
        source.diversity = (summary.get("stages") or {}).get("diversity") or source.diversity
        source.command = source.command or summary.get("command")
        return source
    if (path / "data.jsonl").is_file() or (path / "stage.json").is_file():
        return _artifact_source(path)
    raise TreesynthError(f"export: {path} is neither a run folder (summary.json; in a sweep, one job's folder "
                         f"multirun/<sweep>/<n>) nor a synthesize artifact (artifacts/synthesize/<key>/)")


def _artifact_source(artifact: Path) -> Source:
    done = artifact / "stage.json"
    if not done.is_file() or not (artifact / "data.jsonl").is_file():
        raise TreesynthError(f"export: {artifact} is not a finished synthesize artifact (no stage.json or "
                             f"data.jsonl); run or resume `python run.py stages=[synthesize] ...` first")
    doc = _read_json(done)
    if doc.get("stage", "synthesize") != "synthesize":
        raise TreesynthError(f"export: {artifact} is a {doc.get('stage')} artifact; pass a synthesize one")
    config = _read_json(artifact / "stage_config.json") if (artifact / "stage_config.json").is_file() else {}
    return Source(artifact.resolve(), config, config, doc.get("metrics") or {}, _diversity_of(artifact),
                  doc.get("command"))


# ----------------------------------------------------------------------------------------------- card
def tree_summary(doc: dict[str, Any]) -> dict[str, Any]:
    """Depth, node and leaf counts, and the first split (dimension; per value: records, leaves, next split)
    of a TreeSynth tree.json."""
    nodes = doc.get("nodes") or {}
    nodes = nodes if isinstance(nodes, dict) else {str(n["id"]): n for n in nodes}
    leaves = [str(i) for i in doc.get("leaves") or [i for i, n in nodes.items() if n.get("is_leaf")]]
    root = nodes.get(str(doc.get("root", "0"))) or {}

    def label(node: dict[str, Any]) -> str:
        values = node.get("values")
        return f"any of {len(values)} values" if isinstance(values, list) else str(node.get("value"))

    first = []
    for cid in root.get("children") or []:
        child = nodes.get(str(cid)) or {}
        first.append({"value": label(child), "records": child.get("records", 0),
                      "leaves": sum(1 for leaf in leaves if leaf == cid or leaf.startswith(f"{cid}.")),
                      "next_dimension": child.get("child_dimension")})
    return {"depth": max((int(n.get("depth", 0)) for n in nodes.values()), default=0), "nodes": len(nodes),
            "leaves": len(leaves), "first_dimension": root.get("child_dimension"), "first_level": first}


def size_category(n: int) -> str:
    return next((name for bound, name in SIZE_CATEGORIES if n < bound), "n>1T")


def _model(node: Any) -> str | None:
    return node.get("model") if isinstance(node, dict) else None


def card_metadata(source: Source, records: int, license_id: str | None, parquet: bool = True) -> dict[str, Any]:
    """What the card's front matter holds: the hub's fields, and ours under `treesynth`."""
    task, method = str(source.cfg("task.name", "?")), str(source.cfg("method.name", "?"))
    generator = _model(source.cfg("llm"))
    tree = source.artifact / "tree.json"
    ours: dict[str, Any] = {
        "task": task,
        "method": method,
        "generator": None if method == "human" else generator,
        "teacher": _model(source.cfg("teacher")) or (None if method == "human" else generator),
        "size": records,
        "requested_size": source.cfg("data.size"),
        "seed": source.cfg("seed"),
        "artifact_key": source.key,
        "hygiene": {k: v for k, v in source.metrics.items()
                    if k not in NOT_COUNTS and not k.startswith("tree_") and not isinstance(v, dict)},
        "diversity": {k: v for k, v in (source.diversity or {}).items()
                      if isinstance(v, int | float | str) and k != "seconds"} or None,
        "tree": tree_summary(_read_json(tree)) if tree.is_file() else None,
        "command": (source.command or {}).get("command"),
    }
    meta = {
        "license": license_id or "unknown",
        "pretty_name": f"{task} by {method} (treesynth {source.key})",
        "language": ["en"],
        "task_categories": ["text-generation"],
        "size_categories": [size_category(records)],
        "tags": list(dict.fromkeys(["synthetic", "treesynth", task, method])),
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": DATA_FILE}]}],
        "treesynth": ours,
    }
    if not parquet:  # a save_to_disk-only export: load_from_disk(PATH/disk), no data files for the hub
        del meta["configs"]
    return meta


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(v: Any) -> str:
        return "-" if v is None or v == "" else str(v).replace("|", "\\|")

    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(cell(v) for v in r) + " |" for r in rows), ""]


def dataset_card(source: Source, records: int, license_id: str | None, repo: str | None,
                 meta_as_json: bool, parquet: bool = True) -> str:
    """README.md: YAML front matter, then the same facts for people."""
    meta = card_metadata(source, records, license_id, parquet)
    ours = meta["treesynth"]
    if repo:
        load = ["from datasets import load_dataset", "", f'ds = load_dataset("{repo}", split="train")']
    elif parquet:
        load = ["from datasets import load_dataset", "", 'ds = load_dataset("path/to/this/folder", split="train")']
    else:
        load = ["from datasets import load_from_disk", "", f'ds = load_from_disk("path/to/this/folder/{DISK_DIR}")']
    md = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip(), "---", "",
          f"# {meta['pretty_name']}", "",
          f"Synthetic `{ours['task']}` training data made with [treesynth](https://arxiv.org/abs/2503.17195)'s "
          f"`{ours['method']}` method: {records} records (`prompt`, `completion`), one `train` split.", "",
          "```python", *load, "```", ""]
    md += ["## How it was made", ""]
    md += _table(["", ""], [["task", ours["task"]], ["method", ours["method"]], ["generator", ours["generator"]],
                            ["teacher (completions)", ours["teacher"]], ["records", records],
                            ["requested size (data.size)", ours["requested_size"]], ["seed", ours["seed"]],
                            ["treesynth artifact key", ours["artifact_key"]],
                            ["license", meta["license"] + ("" if license_id else " (not set: pass --license)")]])
    command = ours["command"]
    md += ["Command (run from the treesynth repository root):", "", "```bash",
           command or "# not recorded: this artifact was made before treesynth recorded commands; "
                      "its config is below", "```", ""]
    config = json.dumps(scrub_secrets(source.stage_config), indent=2, ensure_ascii=False, default=str)
    md += ["<details><summary>The config this data depends on</summary>", "", "```json", config, "```", "",
           "</details>", ""]
    md += ["## Hygiene and pipeline counts", ""]
    md += _table(["count", "value"], [[k, v] for k, v in ours["hygiene"].items()]) if ours["hygiene"] else [
        "None recorded.", ""]
    md += ["## Diversity", ""]
    if ours["diversity"]:
        md += ["`mean_cosine_similarity` is the paper's Diversity (lower is more diverse).", ""]
        md += _table(["metric", "value"], [[k, v] for k, v in ours["diversity"].items()])
    else:
        md += ["Not measured (run the `diversity` stage, then export the run folder).", ""]
    tree = ours["tree"]
    if tree:
        md += ["## TreeSynth tree", "",
               f"Depth {tree['depth']}, {tree['nodes']} nodes, {tree['leaves']} leaves. First split: "
               f"**{tree['first_dimension']}**. The whole tree: `tree.html` (collapsible), `tree.txt`, `tree.json`.",
               ""]
        md += _table(["value", "records", "leaves", "next dimension"],
                     [[v["value"], v["records"], v["leaves"], v["next_dimension"]] for v in tree["first_level"]])
    md += ["## Columns", "",
           "`id`, `task`, `method`, `prompt`, `completion`, and `meta` (per-record provenance: seeds, generator, "
           "teacher, TreeSynth leaf and attributes)" + (" as a JSON string (its fields differ between records)."
                                                         if meta_as_json else "."), ""]
    md += ["The generator's and teacher's terms of use may restrict how model outputs are used; check them "
           "before choosing a license.", ""]
    return "\n".join(md)


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
