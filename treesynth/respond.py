"""The teacher step: one solution per prompt record, written with the task's solution prompt.

A completion that does not end in the task's answer format is re-sampled (new derived seed) up to
the teacher profile's `response.retries` times; then the record is marked failed (None) and the stage refills it with a
new prompt. Every outcome is appended to a checkpoint, so a rerun never asks the teacher again for a
record it already answered, and the request cache covers calls that returned before a kill.
"""

from __future__ import annotations

import asyncio

from treesynth.llm import LLM, derive_seed
from treesynth.methods.base import Checkpoint, PromptRecord
from treesynth.tasks import TaskSpec


async def respond_one(llm: LLM, task: TaskSpec, rec: PromptRecord, seed: int) -> tuple[str | None, int]:
    """(completion or None, attempts used)."""
    tries = 1 + task.teacher_profile.response_retries
    for attempt in range(tries):
        req = task.response_request(rec.prompt, rec.sample, seed=derive_seed(seed, "respond", rec.id, attempt))
        completion = task.completion_from(await llm.complete(req), rec.sample)
        if completion is not None:
            return completion, attempt + 1
    return None, tries


async def respond(
    llm: LLM, task: TaskSpec, records: list[PromptRecord], seed: int, log: Checkpoint, done: dict[str, dict]
) -> None:
    """Answer every record not yet in `done` (id -> {completion, attempts}); append each outcome to `log`."""

    async def one(rec: PromptRecord) -> None:
        completion, attempts = await respond_one(llm, task, rec, seed)
        row = {"id": rec.id, "completion": completion, "attempts": attempts}
        done[rec.id] = row
        log.append(row)

    await asyncio.gather(*(one(r) for r in records if r.id not in done and r.completion is None))
