"""Records streaming through the synthesize stage: generation -> prompt hygiene -> teacher -> checks -> data.jsonl.

`Fill.run()` drives two loops at once on the request slots, so that neither waits for the other's stragglers:
- The generator asks the method for the next chunk of stream positions (`data.runtime.chunk` at most)
  and puts the prompts that pass prompt hygiene (dedup, decontamination), in stream order, in a queue.
  It generates a chunk only when, even if every prompt queued or with the teacher became a record, records
  would still be missing, and only while fewer than AHEAD chunks of prompts wait for the teacher. Its
  requests are admitted first (`admitted_first`, treesynth/llm/admission.py): the chunk runs at full speed
  and the teacher's requests fill the slots its last calls leave free.
- Each queued prompt gets its own teacher task (treesynth/respond.py `respond_one`, then the completion
  checks and verification), started in stream order while the records that may still survive (finished
  survivors plus the tasks running) are fewer than data.size: the teacher is never asked about a prompt
  hygiene dropped, nor about more records than are missing.
- Finished records are written in stream order, through a reorder window of WINDOW chunks, so data.jsonl
  holds the first data.size survivors in stream order whatever the timing or the chunking: the same seed
  gives the same records, also after a kill and a rerun.
What stays in memory is bounded by a few chunks of records, plus per record the ids and offsets of the
checkpoint logs and the hygiene hashes. Every teacher outcome goes to responses.jsonl as it comes, so a
rerun asks nothing twice (and the request cache has every call that returned before a kill).
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

from omegaconf import DictConfig

from treesynth.errors import TreesynthError
from treesynth.llm import LLM, BudgetExceeded, admitted_first
from treesynth.methods import Method
from treesynth.methods.base import PromptRecord
from treesynth.methods.hygiene import Hygiene
from treesynth.methods.verify import Verifier
from treesynth.respond import respond_one, response_log

# A run that needs more than this many prompts per record has a generator/teacher problem, not bad luck.
MAX_POSITIONS_PER_RECORD = 20
AHEAD = 2  # chunks of prompts that may wait for the teacher: one covers the generator's next chunk
WINDOW = 2  # chunks of records past the first unwritten one that may be answered (the reorder window)
HYGIENE_SLICE = 32  # prompts checked between two turns of the event loop
GC_YOUNG = 10_000  # new objects between two young-generation collections while the stream runs (Python: 700)


async def apply_hygiene(prompts: list[PromptRecord], hygiene: Hygiene,
                        keep: Callable[[list[PromptRecord]], None]) -> None:
    """Prompt-level dedup + decontamination of one chunk, in stream order: `keep` gets the prompts that
    pass, a slice at a time, as they are checked, so the teacher starts on the first ones while the rest
    are checked. Yields to the event loop after each slice (answers in flight are taken in meanwhile)."""
    for i in range(0, len(prompts), HYGIENE_SLICE):
        kept = [p for p in prompts[i : i + HYGIENE_SLICE] if hygiene.check({"prompt": p.prompt, **p.sample}) is None]
        if kept:
            keep(kept)
        await asyncio.sleep(0)


def chunk_size(size: int, expected: float, tried: int, chunk_max: int) -> int:
    """How many stream positions to generate next: the records missing when `expected` records come of
    the `tried` positions so far, scaled by that yield (a weak model drops many), at most chunk_max (so
    memory and work past the target stay bounded)."""
    rate = max(expected / tried, 0.1) if tried else 1.0
    return max(1, min(chunk_max, math.ceil((size - expected) / rate)))


def to_row(p: PromptRecord, completion: str, task: str, method: str, extra_meta: dict[str, Any]) -> dict:
    return {"id": p.id, "task": task, "method": method, "prompt": p.prompt, "completion": completion,
            "meta": {**p.meta, **extra_meta}}


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Garbage collection that does not stall the stream. The cyclic collector stops the event loop while
    it scans, and no answer is read meanwhile: in a 10k-record run its pauses were an eighth of the time.
    So: the objects alive now (modules, config, indexes) are frozen out of its scans, and it runs after
    GC_YOUNG new objects instead of 700, which lets the young die by reference count first (a tenth of
    the pauses); both are undone when the block ends."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


class Fill:
    """One synthesis stream into `data` (an open text file): `await Fill(...).run()` -> stage counts."""

    def __init__(self, method: Method, teacher: LLM, cfg: DictConfig, size: int, data: IO[str],
                 on_written: Callable[[int], None]):
        env = method.env
        self.method, self.teacher, self.task, self.seed = method, teacher, env.task, env.seed
        self.size, self.data, self.on_written = size, data, on_written
        self.responses = response_log(env.work_dir / "responses.jsonl")
        self.hygiene = Hygiene(cfg)
        # answer verification (data.verify, off by default): one verifier for the stage, its log read by id
        self.verifier = Verifier(teacher, env.task, cfg, env.work_dir) if cfg.data.verify.enabled else None
        self.extra_meta = {"seed": env.seed, "generator": env.llm.model, "teacher": teacher.model}
        self.chunk_max = int(cfg.data.runtime.chunk)
        # Teacher tasks at a time: what the teacher admits at once (the rest would only wait at its gate,
        # each task a dozen objects for the garbage collector), else (no gate: it batches) the window.
        self.answer_tasks = teacher.admission_limit or WINDOW * self.chunk_max
        self.queue: deque[tuple[int, PromptRecord, dict | None]] = deque()  # (seq, prompt, logged answer)
        self.tasks: set[asyncio.Task] = set()
        self.answering = 0  # teacher tasks started and not finished
        self.answered = 0  # teacher tasks finished (the record kept or dropped)
        self.finished: dict[int, dict | None] = {}  # seq -> row (None: dropped), waiting for earlier seqs
        self.next_seq = self.next_write = 0
        self.survivors = 0  # records finished and kept: written, or waiting for earlier ones
        self.kept = 0  # records written
        self.tried = 0  # stream positions generated
        self.counts: Counter = Counter()
        self.error: BaseException | None = None
        self.stopping = False
        self.changed = asyncio.Event()

    # ------------------------------------------------------------------ the stage
    async def run(self) -> dict[str, Any]:
        with frozen_heap():
            return await self._run()

    async def _run(self) -> dict[str, Any]:
        generator = asyncio.create_task(self._generate())
        try:
            while self.kept < self.size and self.error is None:
                await self.changed.wait()
                self.changed.clear()
        except BaseException:  # cancelled or interrupted: stop now (what came back is logged and cached)
            for t in (generator, *self.tasks):
                t.cancel()
            raise
        finally:
            self.stopping = True  # nothing new starts; calls in flight finish and are logged (they are paid)
            self.changed.set()  # the generator may be waiting for room
            await asyncio.gather(generator, *self.tasks, return_exceptions=True)
            self.responses.close()
            if self.verifier is not None:
                self.verifier.close()
        if self.error is not None:
            raise self.error
        return self.metrics()

    def metrics(self) -> dict[str, Any]:
        c, h = self.counts, self.hygiene.counts
        return {
            "prompts_generated": self.tried,
            "teacher_asked": c["teacher_asked"],  # records the teacher was asked about (after prompt hygiene)
            "teacher_failed": c["teacher_failed"],
            "teacher_attempts": c["teacher_attempts"],
            "teacher_final_line_added": c["teacher_final_line_added"],
            "dropped_by_hygiene": h["hygiene_input"] - h.get("hygiene_kept", self.tried),
            **h,
            **{k: v for k, v in c.items() if k.startswith("verify_")},
        }

    def _fail(self, e: BaseException) -> None:
        """Stop the stream with `e` (a budget stop gives way to any other error: that one is the news)."""
        if self.error is None or (isinstance(self.error, BudgetExceeded) and not isinstance(e, BudgetExceeded)):
            self.error = e
        self.stopping = True
        self.changed.set()

    # ------------------------------------------------------------------ the generator
    def _may_survive(self) -> int:
        """Records there could be if every prompt queued or with the teacher became one."""
        return self.survivors + self.answering + len(self.queue)

    def _expected(self) -> float:
        """Records expected of the prompts so far: the survivors, and the prompts queued or with the teacher
        at the teacher's yield so far (smoothed toward 1: no evidence, no loss)."""
        teacher_yield = (self.survivors + 1) / (self.answered + 1)
        return self.survivors + (self.answering + len(self.queue)) * teacher_yield

    def _wants_prompts(self) -> bool:
        return (self._may_survive() < self.size
                and self.answering + len(self.queue) < AHEAD * self.chunk_max)

    async def _generate(self) -> None:
        start, max_positions = 0, MAX_POSITIONS_PER_RECORD * self.size
        try:
            while True:
                while not self.stopping and not self._wants_prompts():
                    await self.changed.wait()
                    self.changed.clear()
                if self.stopping:
                    return
                if start >= max_positions:
                    raise TreesynthError(
                        f"only {self.survivors} of data.size={self.size} records survived after {start} prompts "
                        "were tried; check the generator/teacher (llm=, teacher=) or lower data.size")
                stop = start + chunk_size(self.size, self._expected(), start, self.chunk_max)
                with admitted_first():
                    prompts = await self.method.prompts_between(start, stop)
                self.tried = start = stop
                self.responses.forget()  # rows of earlier chunks are on disk; their records hold what they need
                await apply_hygiene(prompts, self.hygiene, self._enqueue)
        except BaseException as e:
            self._fail(e)

    def _enqueue(self, prompts: list[PromptRecord]) -> None:
        """Queue prompts that passed hygiene for the teacher (with the answers a killed run logged)."""
        logged = self.responses.get_many(p.id for p in prompts if p.completion is None)
        for p in prompts:
            self.queue.append((self.next_seq, p, logged.get(p.id)))
            self.next_seq += 1
        self._start_answers()

    # ------------------------------------------------------------------ the teacher and the writer
    def _start_answers(self) -> None:
        """Teacher tasks for queued prompts, in stream order, while records are still missing even if
        every running task keeps its record, at most `answer_tasks` at a time, within the reorder window."""
        window = WINDOW * self.chunk_max
        while (self.queue and not self.stopping and self.survivors + self.answering < self.size
               and self.answering < self.answer_tasks and self.queue[0][0] < self.next_write + window):
            seq, p, logged = self.queue.popleft()
            self.answering += 1
            task = asyncio.create_task(self._answer(seq, p, logged))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _answer(self, seq: int, p: PromptRecord, logged: dict | None) -> None:
        try:
            row = await self._record(p, logged)
        except BaseException as e:
            self.answering -= 1
            self._fail(e)
            return
        self._finish(seq, row)

    async def _record(self, p: PromptRecord, logged: dict | None) -> dict | None:
        """The row for prompt `p` (None: dropped): the teacher's answer (or the method's own completion),
        then the completion checks and verification."""
        completion = p.completion
        if completion is None:
            if logged is None:
                async with self.teacher.admission():  # thousands queued wait here, not all rendered at once
                    if self.stopping:
                        return None
                    completion, attempts, final_line = await respond_one(self.teacher, self.task, p, self.seed)
                logged = {"id": p.id, "completion": completion, "attempts": attempts,
                          **({"final_line": True} if final_line else {})}
                self.responses.append(logged)
            self.counts.update(teacher_asked=1, teacher_attempts=logged["attempts"],
                               teacher_final_line_added=int(bool(logged.get("final_line"))))
            completion = logged["completion"]
            if completion is None:
                self.counts["teacher_failed"] += 1
                return None
        row = to_row(p, completion, self.task.name, self.method.name, self.extra_meta)
        if self.hygiene.check_completion(row) is not None:
            return None
        if self.verifier is not None:
            return await self._verified(row)
        return row

    async def _verified(self, row: dict) -> dict | None:
        v = self.verifier
        if v.kind is None:
            self.counts["verify_skipped"] += 1
            return row
        outcome = await v.outcome(row)
        self.counts.update(verify_checked=1, verify_failed=int(not outcome["ok"]))
        return row if outcome["ok"] else None

    def _finish(self, seq: int, row: dict | None) -> None:
        """Record a finished prompt; write every row whose earlier ones are all finished; start more."""
        self.answering -= 1
        self.answered += 1
        self.finished[seq] = row
        self.survivors += row is not None
        while self.next_write in self.finished:
            r = self.finished.pop(self.next_write)
            self.next_write += 1
            if r is not None:
                self.data.write(json.dumps(r, ensure_ascii=False) + "\n")
                self.kept += 1
        self.on_written(self.kept)
        self._start_answers()
        self.changed.set()
