"""The `synthesize` stage: method -> prompt hygiene -> teacher -> checks -> exactly `data.size` records.

Records stream through the stage (treesynth/fill.py), in stream order:
1. The method (cfg.method.name, treesynth/methods/) yields the prompt records of the next chunk of
   stream positions.
2. Prompt hygiene (dedup / decontamination, `Hygiene`) drops prompts BEFORE the teacher is asked: no
   teacher call is ever paid for a duplicate or contaminated prompt.
3. The teacher (cfg.teacher, default: the generator) writes one completion per kept prompt that ends in
   the task's answer format (re-sampled a bounded number of times, else the record is dropped); it is
   asked for no more records than are still missing.
4. Checks on the completion (decontamination of the completion when configured, data.verify) follow;
   survivors are written to data.jsonl as they come. Until data.size records are written, more positions
   are generated (refill), bounded.
Generation and the teacher run at once, sharing the request slots. What stays in memory is a few chunks
of records, plus per record the ids and offsets of the checkpoint logs and the hygiene hashes.
Outputs in the stage dir: data.jsonl, data.parquet, method artifacts (tree.json, tree.txt, tree.html),
and the checkpoints that make a killed run resume (responses.jsonl, the method's logs, cost.json).
The output is the first data.size survivors in stream order, whatever the chunking: the same seed gives
the same records, also after a kill and a rerun.
With method.plan_only=true it only writes plan.json and logs the expected LLM calls, tokens and dollars
(treesynth/plan.py).
`llm.budget_usd` stops the stage (one line) before the spend of all runs of this artifact could
exceed it; a rerun with a larger budget resumes (finished calls come from the request cache, free).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from treesynth.datasets import benchmark_digests, file_digest, local_data_digest
from treesynth.errors import TreesynthError
from treesynth.fill import Fill
from treesynth.io import atomic_write_json, iter_jsonl, write_failed
from treesynth.llm import Budget, BudgetExceeded, build_llm
from treesynth.methods import MethodEnv, method_class
from treesynth.paths import artifact_cache
from treesynth.plan import plan
from treesynth.profiles import used_profiles
from treesynth.progress import Progress
from treesynth.progress import configure as configure_progress
from treesynth.settings import LLMSettings, load
from treesynth.stage_context import StageContext
from treesynth.tasks import TaskSpec, task_of

log = logging.getLogger("treesynth")

COST_FILE = "cost.json"  # what the runs of this artifact spent, for llm.budget_usd


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
    decontaminates = cfg.data.hygiene.decontaminate
    return {"data": local_data_digest(folders, cfg.data.dir), "method_files": files,
            "profiles": used_profiles(cfg),
            # decontamination reads the benchmarks: their registry entries and a user benchmark's own file
            "benchmarks": benchmark_digests(task.get("benchmarks") or [], cfg.data.dir) if decontaminates else {}}


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
    return artifact_cache(cfg.paths.artifacts, "llm")


@contextmanager
def _atomic_file(path: Path) -> Iterator[Path]:
    """A temp file beside `path`, renamed into place when the block succeeds (a streamed atomic write)."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise write_failed(path, e) from e
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet(path: Path, rows: Callable[[], Iterable[dict]], batch: int = 8192) -> None:
    """data.parquet from the rows (`rows()` iterates them, possibly twice), a batch at a time (flat memory). `meta` is a struct column; when the
    records' meta differ in shape it is written as a JSON string column instead."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def batches(as_json: bool) -> Iterator[list[dict]]:
        chunk: list[dict] = []
        for r in rows():
            chunk.append({**r, "meta": json.dumps(r["meta"], ensure_ascii=False)} if as_json else r)
            if len(chunk) == batch:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def write(tmp: Path, as_json: bool) -> bool:
        writer = None
        try:
            for chunk in batches(as_json):
                table = pa.Table.from_pylist(chunk)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                elif table.schema != writer.schema:
                    return False
                writer.write_table(table)
            if writer is None:
                pq.write_table(pa.table({}), tmp)
            return True
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return False
        finally:
            if writer is not None:
                writer.close()

    with _atomic_file(path) as tmp:
        if not write(tmp, as_json=False):
            write(tmp, as_json=True)


def run(ctx: StageContext) -> dict:
    return asyncio.run(synthesize(ctx.cfg, ctx.dir))


def budget_of(cfg: DictConfig, out: Path) -> Budget:
    """The run's budget (llm.budget_usd; null: none) with what earlier runs of this artifact spent."""
    limit = load(cfg.llm, LLMSettings, "llm").budget_usd
    spent = 0.0
    if (out / COST_FILE).exists():
        spent = float(json.loads((out / COST_FILE).read_text(encoding="utf-8")).get("spent_usd", 0.0))
    return Budget(limit, spent)


def save_cost(budget: Budget, out: Path) -> None:
    atomic_write_json(out / COST_FILE, {"spent_usd": budget.total})


async def synthesize(cfg: DictConfig, out: Path) -> dict[str, Any]:
    task = task_of(cfg)
    size = int(cfg.data.size)
    if size < 1:
        raise TreesynthError(f"data.size must be >= 1, got {size}")
    cls = method_class(str(cfg.method.name))
    if cfg.method.plan_only:
        return plan(cls, cfg, task, size, out)

    log.info("[synthesize] %s", describe_profiles(task))
    cache_dir = request_cache_dir(cfg)
    budget = budget_of(cfg, out)
    llm = build_llm(cfg.llm, cache_dir, budget)
    teacher = llm if cfg.get("teacher") is None else build_llm(cfg.teacher, cache_dir, budget)
    configure_progress(cfg)
    progress = Progress("synthesize", size, "records", llms=(llm, teacher))
    try:
        await llm.backend.health_check()
        if teacher is not llm:
            await teacher.backend.health_check()
        env = MethodEnv(llm=llm, task=task, cfg=cfg.method, seed=int(cfg.seed), work_dir=out, root_cfg=cfg)
        method = cls(env)
        with _atomic_file(out / "data.jsonl") as partial, open(partial, "w", encoding="utf-8") as data:
            counts = await Fill(method, teacher, cfg, size, data, progress.set).run()
    except BudgetExceeded:
        await _drain_in_flight()
        progress.close(final_line=True)
        # what the runs of this artifact spent once the calls in flight came back (not when one was refused)
        raise TreesynthError(
            f"stopped: budget llm.budget_usd={budget.limit:g} reached: ${budget.total:.4f} spent, a further call "
            "could pass it; rerun with a larger budget to resume from the checkpoint") from None
    finally:
        progress.close()
        save_cost(budget, out)
        await llm.aclose()
        if teacher is not llm:
            await teacher.aclose()

    write_parquet(out / "data.parquet", lambda: iter_jsonl(out / "data.jsonl"))
    metrics = {"records": size, **counts, **method.finalize(iter_jsonl(out / "data.jsonl"))}
    metrics["llm"] = llm.stats.as_dict()
    if teacher is not llm:
        metrics["teacher_llm"] = teacher.stats.as_dict()
    metrics["cost_usd"] = round(budget.total, 6)  # every run of this artifact, generator + teacher
    metrics["progress"] = progress.totals()
    log.info("[synthesize] %d records -> %s (LLM: %s)", size, out / "data.jsonl", llm.stats.as_dict())
    return metrics


async def _drain_in_flight(timeout_s: float = 300.0) -> None:
    """Let the calls still in flight (tasks a gather left running when the budget stopped it) finish, so
    their answers reach the request cache and the checkpoints: a paid call is never lost. The budget
    refuses every new call, so each task ends at its next request at the latest."""
    others = asyncio.all_tasks() - {asyncio.current_task()}
    if others:
        done, _ = await asyncio.wait(others, timeout=timeout_s)
        for t in done:  # their errors (the same budget stop) are retrieved here, not reported as lost
            if not t.cancelled():
                t.exception()
