"""The teacher step: one solution per prompt record, written with the task's solution prompt.

A completion that does not end in the task's answer format is re-sampled (new derived seed) up to
the teacher profile's `response.retries` times; a free-text teacher then gets one call for its final
answer alone (`final_answer_call`), written after its own last text; else the record is marked failed
(None) and the stage refills it with a new prompt. Every outcome is appended to a checkpoint, so a rerun never asks the teacher again for a
record it already answered, and the request cache covers calls that returned before a kill.
"""

from __future__ import annotations

import asyncio

from treesynth.llm import LLM, derive_seed
from treesynth.methods.base import Checkpoint, PromptRecord
from treesynth.tasks import TaskSpec


async def respond_one(llm: LLM, task: TaskSpec, rec: PromptRecord, seed: int) -> tuple[str | None, int, bool]:
    """(completion or None, attempts used, whether the final line came from a final-answer call)."""
    tries = 1 + task.teacher_profile.response_retries
    work = ""
    for attempt in range(tries):
        req = task.response_request(rec.prompt, rec.sample, seed=derive_seed(seed, "respond", rec.id, attempt))
        c = await llm.complete(req)
        completion = task.completion_from(c, rec.sample)
        if completion is not None:
            return completion, attempt + 1, False
        # a text cut at max_tokens still carries the teacher's work (a weak model rambles to its budget)
        work = c.text if c.error is None and c.text.strip() else work
    # A free answer that never ended in the format: ask for its final answer alone (profile's final_answer_call).
    req = task.final_answer_request(rec.prompt, rec.sample, work, seed=derive_seed(seed, "final", rec.id))
    if req is not None and (completion := task.with_final_answer(work, await llm.complete(req), rec.sample)):
        return completion, tries + 1, True
    return None, tries, False


async def respond(
    llm: LLM, task: TaskSpec, records: list[PromptRecord], seed: int, log: Checkpoint, done: dict[str, dict]
) -> None:
    """Answer every record not yet in `done` (id -> {completion, attempts}); append each outcome to `log`."""

    async def one(rec: PromptRecord) -> None:
        completion, attempts, final_line = await respond_one(llm, task, rec, seed)
        row = {"id": rec.id, "completion": completion, "attempts": attempts, **({"final_line": True} if final_line else {})}
        done[rec.id] = row
        log.append(row)

    await asyncio.gather(*(one(r) for r in records if r.id not in done and r.completion is None))
