"""Runs of bench/faults.py: the stub's deterministic answers, one synthesis over the stub, and what a
finished run left on disk (records, checkpoint logs, the request cache) with its duplicate and
failures-kept counts."""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from treesynth.io import read_jsonl
from treesynth.paths import artifact_cache
from treesynth.testing.scripted import WORDS, instance

REPO = Path(__file__).resolve().parents[1]

# How entries of a checkpoint log are identified (two rows for one identity = duplicated work).
CHECKPOINT_IDS: dict[str, Callable[[dict], Any]] = {
    "responses.jsonl": lambda r: r["id"],
    "calls.jsonl": lambda r: r["call"],
    "leaf_calls.jsonl": lambda r: (r["leaf"], r["call"]),
    "tree_events.jsonl": lambda r: r["node"]["id"],
}


# ---- the deterministic backend ---------------------------------------------------------------
def fault_free_answer(body: dict) -> str:
    """The stub's answer to a chat request, a function of (messages, seed) only: a schema-valid instance
    for JSON-schema requests (bounded strings as the stub's default; unbounded ones get a sentence of
    8-16 words, so unbounded samples stay distinct), else a short solution ending in "#### <n>"."""
    digest = hashlib.sha256(json.dumps([body.get("messages"), body.get("seed")], sort_keys=True).encode()).digest()
    rng = random.Random(digest)
    fmt = body.get("response_format") or {}
    schema = (fmt.get("json_schema") or {}).get("schema") if fmt.get("type") == "json_schema" else fmt.get("schema")
    if fmt and schema is not None:
        return json.dumps(_instance(schema, rng))
    n = rng.randint(1, 999)
    return f"Adding the {rng.choice(WORDS)} counts step by step gives {n}.\n#### {n}"


def _instance(schema: dict, rng: random.Random) -> Any:
    kind = schema.get("type")
    if "enum" in schema or kind not in ("object", "array", "string"):
        return instance(schema, rng)
    if kind == "object":
        return {k: _instance(v, rng) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        lo = int(schema.get("minItems", 1))
        hi = max(lo, min(int(schema.get("maxItems", lo + 2)), lo + 2))
        return [_instance(schema.get("items") or {"type": "string"}, rng) for _ in range(rng.randint(lo, hi))]
    if any(k in schema for k in ("pattern", "maxLength", "format")):
        return instance(schema, rng)
    words = [rng.choice(WORDS) for _ in range(rng.randint(8, 16))]
    return " ".join(words).capitalize() + f" {rng.randint(2, 99)}?"


# ---- runs ------------------------------------------------------------------------------------
def synthesis_overrides(base_url: str, size: int, root: Path, method: list[str], extra: list[str]) -> list[str]:
    """`run.py` overrides of one synthesis-only run over the stub, writing only under `root`."""
    return [
        # constrained: every request is a JSON-schema request with one sample, the setting the figures were
        # first measured in (the fault handling is the same for the open profile's free-text teacher)
        "stages=[synthesize]", "task=gsm8k", *method, "llm=openai", "llm.profile=constrained",
        "llm.model=stub-model", "llm.api_key_env=null", f"llm.runtime.base_urls=[{base_url}]",
        "llm.runtime.backoff_base_s=0.05", "llm.runtime.backoff_max_s=0.5",
        f"data.size={size}", f"paths.artifacts={root / 'artifacts'}", f"paths.results={root / 'results'}",
        "data.hygiene.decontaminate=false", "wandb.mode=disabled", "seed=0",  # no benchmark data needed
        *extra,
    ]


def compose_cfg(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return compose("config", overrides=overrides)


def run_in_process(overrides: list[str], run_dir: Path) -> Path:
    """Run the synthesize stage here; return its stage dir."""
    from treesynth.pipeline import run_pipeline, stage_dir

    cfg = compose_cfg(overrides)
    run_pipeline(cfg, run_dir)
    return stage_dir(cfg, "synthesize")


@dataclass
class RunState:
    """What a finished synthesis left on disk."""

    rows: list[dict]  # data.jsonl
    checkpoints: dict[str, list[dict]]  # checkpoint log name -> rows
    cache: dict[str, str]  # request cache: key -> stored completion (JSON text)
    metrics: dict  # stage.json metrics

    @classmethod
    def read(cls, stage: Path) -> RunState:
        cache_db = artifact_cache(stage.parents[1], "llm") / "requests.sqlite"
        db = sqlite3.connect(f"file:{cache_db}?mode=ro", uri=True)
        try:
            cache = dict(db.execute("SELECT key, value FROM completions").fetchall())
        finally:
            db.close()
        logs = {p.name: read_jsonl(p) for p in sorted(stage.glob("*.jsonl")) if p.name != "data.jsonl"}
        metrics = json.loads((stage / "stage.json").read_text())["metrics"]
        return cls(read_jsonl(stage / "data.jsonl"), logs, cache, metrics)

    def duplicates(self) -> int:
        n = _repeats([r["id"] for r in self.rows]) + _repeats([r["prompt"] for r in self.rows])
        for name, rows in self.checkpoints.items():
            ident = CHECKPOINT_IDS.get(name, lambda r: json.dumps(r, sort_keys=True))
            n += _repeats([json.dumps(ident(r)) for r in rows])
        return n

    def failures_kept(self, ref: RunState) -> int:
        """Cache entries and checkpoint rows that the fault-free run does not have."""
        n = sum(1 for k, v in self.cache.items() if ref.cache.get(k) != v)
        for name, rows in self.checkpoints.items():
            extra = Counter(_canon(r) for r in rows) - Counter(_canon(r) for r in ref.checkpoints.get(name, []))
            n += sum(extra.values())
        return n


def _repeats(items: list) -> int:
    return len(items) - len(set(items))


def _canon(row: dict) -> str:
    return json.dumps(row, sort_keys=True)


