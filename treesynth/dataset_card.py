"""What is known about how a synthesized dataset was made (`Source`: read from a run folder or a synthesize
artifact) and its dataset card: the README.md of an export (YAML front matter the hub reads, then the task,
method, models, size, seed, hygiene counts, diversity metrics, the TreeSynth tree's summary and the command
that made the data). treesynth/export.py writes it next to the data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from treesynth.errors import TreesynthError
from treesynth.pipeline import scrub_secrets

DATA_FILE = "data/train-00000-of-00001.parquet"  # the export's records (the card's `configs` point here)
DISK_DIR = "disk"  # the export's save_to_disk folder
# Synthesize metrics that are not pipeline counts (the tree has its own section; LLM stats are usage).
NOT_COUNTS = ("records", "seconds", "llm", "teacher_llm", "plan")
# The hub's size buckets (dataset card `size_categories`), upper bounds exclusive.
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))



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

