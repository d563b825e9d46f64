"""The `synthesize` stage: method -> teacher -> hygiene -> exactly `data.size` records.

1. The method (cfg.method.name, treesynth/methods/) yields prompt records as a deterministic stream.
2. The teacher (cfg.teacher, default: the generator) writes one completion per prompt that ends in the
   task's answer format (re-sampled a bounded number of times, else the record is dropped).
3. Hygiene (dedup / decontamination, `apply_hygiene`) filters the answered records.
4. If fewer than data.size survive, the method is asked for more stream positions (refill), bounded.
Outputs in the stage dir: data.jsonl, data.parquet, method artifacts (tree.json, tree.txt, tree.html),
and the checkpoints that make a killed run resume (responses.jsonl, the method's logs).
With method.plan_only=true it only writes plan.json and logs the expected LLM calls and tokens.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from treesynth.datasets import file_digest, local_data_digest
from treesynth.errors import TreesynthError
from treesynth.io import atomic_write_bytes, atomic_write_json, write_jsonl
from treesynth.llm import LLM, build_llm
from treesynth.methods import Method, MethodEnv, method_class
from treesynth.methods.base import Checkpoint, PromptRecord
from treesynth.methods.hygiene import filter_records
from treesynth.methods.verify import verify_records
from treesynth.pipeline import StageContext
from treesynth.profiles import used_profiles
from treesynth.respond import respond
from treesynth.tasks import TaskSpec, task_of

log = logging.getLogger("treesynth")

MAX_REFILL_ROUNDS = 8


def apply_hygiene(records: list[dict], cfg: DictConfig) -> tuple[list[dict], dict[str, int]]:
    """Dedup + decontamination: data.jsonl rows in stream order in, kept rows (same order) + counts out."""
    kept, counts = filter_records(records, cfg)
    return kept, dict(counts)


async def apply_verify(records: list[dict], teacher: LLM, env: MethodEnv, cfg: DictConfig) -> tuple[list[dict], dict]:
    """Answer verification (data.verify, off by default)."""
    if not OmegaConf.select(cfg, "data.verify.enabled", default=False):
        return records, {}
    return await verify_records(records, teacher, env.task, cfg, env.work_dir)


def key_inputs(cfg: DictConfig) -> dict[str, Any]:
    """What the synthesized data reads besides its config, by content (part of the artifact key): the
    task's folders in the local data dir (training set; benchmarks for decontamination), the files
    the method's config names (method.file, seed_file, ...) and the capability profiles in use."""
    task = cfg.task
    folders = list(task.get("benchmarks") or [])
    human = task.get("human")
    if human and human.get("file"):
        folders.append(Path(str(human.file)).parts[0])
    files = {}
    for name in method_class(str(cfg.method.name)).input_files:
        value = cfg.method.get(name)
        if value and Path(str(value)).is_file():
            files[name] = file_digest(str(value))
    return {"data": local_data_digest(folders, cfg.data.get("dir")), "method_files": files,
            "profiles": used_profiles(cfg)}


def describe_profiles(task: TaskSpec) -> str:
    """One line on what the profiles allow: what a user should know before a long run."""
    p, t = task.profile, task.teacher_profile
    lo, hi = p.chars["text"]
    text = f"text {lo}-{hi} chars" + (f" of [{p.charset}]" if p.charset else ", any characters")
    teacher = "free text" if t.response_mode == "free" else "bounded JSON fields"
    return (f"profile {p.name}: {text}, {p.samples_per_call} sample(s) per call; teacher ({t.name}): {teacher}, "
            f"up to {t.response_max_tokens} tokens")


def request_cache_dir(cfg: DictConfig) -> Path:
    """Shared by every run under the same artifacts root: a killed run's finished calls are reused."""
    return Path(cfg.paths.artifacts) / ".cache" / "llm"


def to_row(p: PromptRecord, completion: str, task: str, method: str, extra_meta: dict[str, Any]) -> dict:
    return {"id": p.id, "task": task, "method": method, "prompt": p.prompt, "completion": completion,
            "meta": {**p.meta, **extra_meta}}


def write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # heterogeneous meta: keep it as a JSON string
        table = pa.Table.from_pylist([{**r, "meta": json.dumps(r["meta"])} for r in rows])
    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(path, buf.getvalue())


def run(ctx: StageContext) -> dict:
    return asyncio.run(synthesize(ctx.cfg, ctx.dir))


async def synthesize(cfg: DictConfig, out: Path) -> dict[str, Any]:
    task = task_of(cfg)
    size = int(cfg.data.size)
    if size < 1:
        raise TreesynthError(f"data.size must be >= 1, got {size}")
    cls = method_class(str(cfg.method.name))
    if cfg.method.get("plan_only", False):
        return _plan(cls, cfg, task, size, out)

    log.info("[synthesize] %s", describe_profiles(task))
    cache_dir = request_cache_dir(cfg)
    llm = build_llm(cfg.llm, cache_dir)
    teacher = llm if cfg.get("teacher") is None else build_llm(cfg.teacher, cache_dir)
    try:
        await llm.backend.health_check()
        if teacher is not llm:
            await teacher.backend.health_check()
        env = MethodEnv(llm=llm, task=task, cfg=cfg.method, seed=int(cfg.seed), work_dir=out, root_cfg=cfg)
        method = cls(env)
        rows, counts = await _fill(method, teacher, cfg, size, out)
    finally:
        await llm.aclose()
        if teacher is not llm:
            await teacher.aclose()

    write_jsonl(out / "data.jsonl", rows)
    write_parquet(out / "data.parquet", rows)
    metrics = {"records": len(rows), **counts, **method.finalize(rows)}
    metrics["llm"] = llm.stats.as_dict()
    if teacher is not llm:
        metrics["teacher_llm"] = teacher.stats.as_dict()
    log.info("[synthesize] %d records -> %s (LLM: %s)", len(rows), out / "data.jsonl", llm.stats.as_dict())
    return metrics


async def _fill(method: Method, teacher: LLM, cfg: DictConfig, size: int, out: Path) -> tuple[list[dict], dict]:
    env = method.env
    responses = Checkpoint(out / "responses.jsonl")
    done = {r["id"]: r for r in responses.rows()}
    extra_meta = {"seed": env.seed, "generator": env.llm.model, "teacher": teacher.model}
    want, kept, hygiene = size, [], {}
    try:
        for _ in range(MAX_REFILL_ROUNDS):
            prompts = await method.prompts(want)
            await respond(teacher, env.task, prompts, env.seed, responses, done)
            answered = []
            for p in prompts:
                completion = p.completion if p.completion is not None else done[p.id]["completion"]
                if completion is not None:
                    answered.append(to_row(p, completion, env.task.name, method.name, extra_meta))
            kept, hygiene = apply_hygiene(answered, cfg)
            kept, verification = await apply_verify(kept, teacher, env, cfg)
            hygiene = {**hygiene, **verification}
            if len(kept) >= size:
                break
            # Ask for more positions in proportion to the yield so far (a weak model drops many).
            deficit = size - len(kept)
            rate = max(len(kept) / want, 0.1)
            want += max(deficit, math.ceil(deficit / rate))
        else:
            raise TreesynthError(
                f"only {len(kept)} of data.size={size} records survived after {MAX_REFILL_ROUNDS} refill rounds "
                f"({want} prompts tried); check the generator/teacher (llm=, teacher=) or lower data.size"
            )
    finally:
        responses.close()
    counts = {
        "prompts_generated": want,
        "teacher_failed": sum(1 for r in done.values() if r["completion"] is None),
        "teacher_attempts": sum(r["attempts"] for r in done.values()),
        "teacher_final_line_added": sum(1 for r in done.values() if r.get("final_line")),
        "dropped_by_hygiene": len(answered) - len(kept),
        "unused_records": len(kept) - size,
        **hygiene,
    }
    return kept[:size], counts


def _plan(cls: type[Method], cfg: DictConfig, task: Any, size: int, out: Path) -> dict[str, Any]:
    env = MethodEnv(llm=None, task=task, cfg=cfg.method, seed=int(cfg.seed), work_dir=out, root_cfg=cfg)  # type: ignore[arg-type]
    estimate = cls(env).plan(size)
    if estimate is None:
        raise TreesynthError(f"method {cfg.method.name!r} has no plan mode; drop method.plan_only")
    atomic_write_json(out / "plan.json", estimate)
    print(f"[plan] {cfg.method.name} on {task.name}, data.size={size}: nothing was run")
    print(json.dumps(estimate, indent=2))
    return {"plan": estimate}
