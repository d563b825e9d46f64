"""The teacher step: one solution per prompt record, written with the task's solution prompt.

A completion that does not end in the task's answer format is re-sampled (new derived seed) up to
the teacher profile's `response.retries` times; a free-text teacher then gets one call for its final
answer alone (`final_answer_call`), written after its own last text; else the record is marked failed
(None) and the stage refills it with a new prompt. The stage (treesynth/fill.py) appends every outcome to
a checkpoint (`response_log`), so a rerun never asks the teacher again for a record it already answered,
and the request cache covers calls that returned before a kill.
"""

from __future__ import annotations

from pathlib import Path

from treesynth.llm import LLM, derive_seed
from treesynth.methods.base import KeyedLog, PromptRecord
from treesynth.tasks import TaskSpec


def response_log(path: Path) -> KeyedLog:
    """responses.jsonl: {id, completion, attempts} per answered record, read by id."""
    return KeyedLog(path, "id")


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
