"""Stages and the artifact store.

Each stage writes into `<paths.artifacts>/<stage>/<key>/`, where the key hashes exactly the config the
stage's output depends on plus its upstream stages' keys. Sub-nodes named `runtime` (concurrency,
batch sizes, endpoints, timeouts) are excluded from every key: they change speed, not output; so are an
LLM's money keys (`llm.budget_usd`, `llm.price`, `llm.prices`): what a run may cost, not what it makes, so
a rerun with a larger budget resumes the same artifact.
A stage is finished when its `stage.json` exists; a rerun skips it; an interrupted stage finds its
partial checkpoint files in the same directory and resumes. A per-key file lock keeps parallel sweep
jobs from computing the same artifact twice. What a stage function receives is a `StageContext`
(treesynth/stage_context.py), built here by `stage_context`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from treesynth.io import atomic_write_json, file_lock, reporting_write_failures
from treesynth.registry import Registry
from treesynth.stage_context import DONE_FILE, StageContext
from treesynth.tracking import Tracker

log = logging.getLogger("treesynth")

RUNTIME_KEY = "runtime"
_MONEY = ("budget_usd", "price", "prices")
MONEY_KEYS = {"llm": _MONEY, "teacher": _MONEY}


@dataclass(frozen=True)
class Stage:
    name: str
    depends_on: tuple[str, ...]  # dotted config paths whose values change this stage's output
    after: tuple[str, ...]  # upstream stages; their keys are folded into this one's
    entry: str  # "module:function", imported lazily so `run.py stages=[synthesize]` never loads TRL
    # "module:function(cfg) -> dict": what the stage reads besides its config (local data files, by content)
    inputs: str | None = None


# One table, in execution order. Adding a stage = one row here + its module.
STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage(
            "synthesize",
            ("task", "method", "llm", "teacher", "data.size", "data.hygiene", "data.verify", "seed"),
            (),
            "treesynth.synthesize:run",
            "treesynth.synthesize:key_inputs",
        ),
        Stage("diversity", ("diversity",), ("synthesize",), "treesynth.metrics.stage:run"),
        Stage("train", ("model", "train", "seed"), ("synthesize",), "training.stage:run"),
        Stage("evaluate_base", ("model", "eval", "task.benchmarks"), (), "evaluation.stage:run_base",
              "evaluation.stage:key_inputs"),
        Stage("evaluate", ("eval", "task.benchmarks"), ("train",), "evaluation.stage:run_finetuned",
              "evaluation.stage:key_inputs"),
    ]
}
# The lazy references of the table, by stage name: a stage's function and its key-inputs function.
ENTRIES = Registry("stage", "stages=[...]", {s.name: s.entry for s in STAGES.values()})
KEY_INPUTS = Registry("stage", "stages=[...]", {s.name: s.inputs for s in STAGES.values() if s.inputs})


def _strip_runtime(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_runtime(v) for k, v in sorted(node.items()) if k != RUNTIME_KEY}
    if isinstance(node, list):
        return [_strip_runtime(v) for v in node]
    return node


def stage_config(cfg: DictConfig, stage: Stage) -> dict:
    """The exact config slice a stage depends on (resolved, runtime knobs removed), plus the digests of
    the files it reads (`inputs`): pointing data.dir at other files gives another artifact."""
    out = {}
    for path in stage.depends_on:
        value = OmegaConf.select(cfg, path, default=None)
        if isinstance(value, DictConfig) or OmegaConf.is_list(value):
            value = OmegaConf.to_container(value, resolve=True)
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in MONEY_KEYS.get(path, ())}
        out[path] = _strip_runtime(value)
    if stage.name in KEY_INPUTS:
        out["inputs"] = KEY_INPUTS.load(stage.name)(cfg)
    return out


def _payload(cfg: DictConfig, name: str, keys: dict[str, str]) -> dict:
    """What stage `name`'s key hashes; `keys` memoizes the upstream keys (each stage's config slice and
    input digests, which read data files, are computed once per call)."""
    stage = STAGES[name]
    for up in stage.after:
        if up not in keys:
            keys[up] = _hash(_payload(cfg, up, keys))
    return {"stage": name, "config": stage_config(cfg, stage), "upstream": {up: keys[up] for up in stage.after}}


def _hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_key(cfg: DictConfig, name: str) -> str:
    return _hash(_payload(cfg, name, {}))


def stage_dir(cfg: DictConfig, name: str) -> Path:
    return Path(cfg.paths.artifacts) / name / stage_key(cfg, name)


def is_done(cfg: DictConfig, name: str) -> bool:
    return (stage_dir(cfg, name) / DONE_FILE).exists()


def _closure(selected: list[str]) -> list[str]:
    """Selected stages plus any upstream stage they need, in table order."""
    for s in selected:
        ENTRIES.check(s)
    need: set[str] = set()

    def add(name: str) -> None:
        if name not in need:
            need.add(name)
            for up in STAGES[name].after:
                add(up)

    for s in selected:
        add(s)
    return [s for s in STAGES if s in need]


def _entry(stage: Stage) -> Callable[[StageContext], dict]:
    return ENTRIES.load(stage.name)


def stage_context(cfg: DictConfig, name: str, tracker: Any = None) -> StageContext:
    """What stage `name` receives under this config: its key, its artifact dir, its upstream stages' dirs."""
    return _context(cfg, name, tracker)[0]


def _context(cfg: DictConfig, name: str, tracker: Any = None) -> tuple[StageContext, dict]:
    """(the stage's context, the config slice its key hashes), from one pass over the key payloads."""
    payload = _payload(cfg, name, {})
    root, key = Path(cfg.paths.artifacts), _hash(payload)
    ctx = StageContext(cfg=cfg, stage=name, key=key, dir=root / name / key,
                       inputs={up: root / up / k for up, k in payload["upstream"].items()}, tracker=tracker)
    return ctx, payload["config"]


def run_unrecorded(cfg: DictConfig, name: str) -> dict:
    """Run stage `name`'s function into its artifact dir without lock, stage.json or tracking: the other
    ranks of a distributed launch join the work that rank 0 runs (and records) through `run_stage`."""
    ctx = stage_context(cfg, name)
    ctx.dir.mkdir(parents=True, exist_ok=True)
    return _entry(STAGES[name])(ctx) or {}


def run_stage(cfg: DictConfig, name: str, tracker: Any = None) -> dict:
    """Run one stage unless its artifact already exists; return its metrics. A full or read-only artifacts
    filesystem is one WriteFailed line naming the path, and the stage stays unfinished (no stage.json), so a
    rerun after freeing space redoes it, resuming from its checkpoints."""
    return _run(*_context(cfg, name, tracker))


def _run(ctx: StageContext, key_config: dict) -> dict:
    name, key, out = ctx.stage, ctx.key, ctx.dir
    stage = STAGES[name]
    done = out / DONE_FILE
    with reporting_write_failures(out), file_lock(out.parent / f"{key}.lock"):
        if done.exists():
            log.info("[%s] already done (key %s): reusing %s", name, key, out)
            return json.loads(done.read_text())["metrics"]
        out.mkdir(parents=True, exist_ok=True)
        resumed = any(p.name != "stage_config.json" for p in out.iterdir())
        log.info("[%s] %s (key %s) in %s", name, "resuming" if resumed else "running", key, out)
        atomic_write_json(out / "stage_config.json", scrub_secrets(key_config))  # the key hashes the values
        t0 = time.time()
        metrics = _entry(stage)(ctx) or {}
        metrics = {**metrics, "seconds": round(time.time() - t0, 2)}
        # upstream keys: what this artifact was made from (an export finds a dataset's diversity stage);
        # command: the invocation that made it (dataset cards quote it)
        atomic_write_json(done, {"stage": name, "key": key, "metrics": metrics, "finished": time.time(),
                                 "upstream": {up: d.name for up, d in ctx.inputs.items()},
                                 "command": invocation()})
        return metrics


# A key is secret when one of its words is one of these (hf_token, client_secret, Authorization) or it
# contains one of the phrases (api_key, openai_apikey). Whole words, so max_tokens or prompt_tokens stay.
SECRET_WORDS = frozenset({"token", "secret", "password", "passwd", "authorization", "credentials"})
SECRET_PHRASES = ("api_key", "apikey", "access_key", "private_key")


def is_secret_key(key: str) -> bool:
    """Whether a config key holds a secret (keys that *name* an env variable, `*_env`, do not)."""
    k = key.lower()
    if k.endswith("_env"):
        return False
    return bool(SECRET_WORDS & set(re.split(r"[^a-z0-9]+", k))) or any(p in k for p in SECRET_PHRASES)


def scrub_secrets(obj: Any) -> Any:
    """Replace the values under secret keys with "<redacted>", recursively."""
    if isinstance(obj, dict):
        return {k: "<redacted>" if is_secret_key(str(k)) else scrub_secrets(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub_secrets(v) for v in obj]
    return obj


def _scrub_override(override: str) -> str:
    key, eq, _ = override.partition("=")
    return f"{key}=<redacted>" if eq and is_secret_key(key.lstrip("+~").rsplit(".", 1)[-1]) else override


def invocation() -> dict[str, Any] | None:
    """How this process was started, under Hydra: the job's overrides (a sweep job's own values), the
    equivalent single-run command line and the launch directory; secret values redacted. None outside
    Hydra (library use, tests)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        overrides = [_scrub_override(str(o)) for o in hc.overrides.task]
        cwd = str(hc.runtime.cwd)
    except Exception:  # not under Hydra
        return None
    return {"overrides": overrides, "command": shlex.join(["python", "run.py", *overrides]), "cwd": cwd}


def run_pipeline(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Run the configured stages (and the upstream ones they need); write `summary.json` in run_dir."""
    run_dir = Path(run_dir)
    order = _closure(list(cfg.stages))
    config = scrub_secrets(OmegaConf.to_container(cfg, resolve=True))
    tracker = Tracker(cfg, config)
    summary: dict[str, Any] = {"config": config, "command": invocation(), "stages": {}, "artifacts": {}}
    try:
        for name in order:
            ctx, key_config = _context(cfg, name, tracker)
            metrics = _run(ctx, key_config)
            summary["stages"][name] = metrics
            summary["artifacts"][name] = str(ctx.dir)
            tracker.log_stage(name, metrics, ctx.dir, ctx.inputs)
            atomic_write_json(run_dir / "summary.json", summary)
    finally:
        tracker.finish()
    atomic_write_json(run_dir / "summary.json", summary)
    return summary
