"""Temperature sampling (the paper's baseline): plain sampling from the task description alone.

`CallStream` is the shared machinery of the call-based baselines (temperature, persona_hub, and the
seed pool of evol_instruct): stream position p is slot p % k of generation call p // k (k samples per
call, each call with its own derived seed), so any prefix is fixed by the seed; a call that returns
fewer valid samples leaves its missing slots empty (skipped) and the stage refills with later calls.
Every call is appended to a checkpoint log, so a rerun replays it and generates only what is missing.
The log is read by call number (`KeyedLog`): only call numbers and file offsets stay in memory, plus the
calls of the chunk the stage is working on, so a million-record stream runs in flat memory.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

from treesynth.llm import ChatRequest, derive_seed
from treesynth.methods.base import KeyedLog, Method, MethodEnv, PromptRecord, gather_logged
from treesynth.prompts import render
from treesynth.settings import TemperatureMethod, load
from treesynth.tasks import TaskSpec


def templated_sample_request(task: TaskSpec, template: str, k: int, *, seed: int, temperature: float,
                             **values: str) -> ChatRequest:
    """A k-sample generation request from one of this package's prompt templates (persona, evolution:
    the baselines' own prompts), with the task's sample schema, so its answers parse with
    `task.parse_samples` like TreeSynth's."""
    prompt = render(template, description=task.description, sample=task.sample, k=str(k),
                    fields="\n".join(f"- {f.name}: {f.description}" for f in task.fields), **values)
    return ChatRequest.user(prompt, temperature=temperature, max_tokens=task.sample_max_tokens(k), seed=seed,
                            json_schema=task.sample_schema(k))


class CallStream(Method):
    log_name = "calls.jsonl"

    def __init__(self, env: MethodEnv):
        super().__init__(env)
        s = load(env.cfg, TemperatureMethod, "method")
        self.k, self.temperature = s.samples_per_call, s.temperature
        self.calls = KeyedLog(env.work_dir / self.log_name, "call")

    @abstractmethod
    async def call(self, c: int) -> dict:
        """Generation call number c: a row with at least `call`, `seed` and `samples`."""

    def record(self, row: dict, slot: int, sample: dict[str, str]) -> PromptRecord:
        meta = {k: v for k, v in row.items() if k != "samples"}
        return PromptRecord(id=f"{row['call']}/{slot}", prompt=self.env.task.build_prompt(sample), sample=sample,
                            meta={**meta, "slot": slot})

    def seed_of(self, c: int) -> int:
        return derive_seed(self.env.seed, self.name, "call", c)

    def sample_request(self, attributes: list[tuple[str, str]], seed: int) -> ChatRequest:
        task = self.env.task
        return task.sample_request(attributes, self.k, seed=seed, temperature=self.temperature,
                                   max_tokens=task.sample_max_tokens(self.k))

    async def ensure(self, n: int, start: int = 0) -> None:
        """Make every call behind positions [start, n) exist (run the missing ones concurrently). Calls that
        finished are logged even when another one raised (a budget stop): none is paid for twice."""
        missing = [c for c in range(start // self.k, math.ceil(n / self.k)) if c not in self.calls]
        if missing:
            await gather_logged((self.call(c) for c in missing), self.calls, llm=self.env.llm)

    async def positions(self, n: int, start: int = 0) -> dict[int, tuple[dict, int, dict]]:
        """Stream position -> (call row, slot, sample) for the positions in [start, n) that succeeded."""
        await self.ensure(n, start)
        rows = self.calls.get_many(range(start // self.k, math.ceil(n / self.k)))
        out = {}
        for p in range(start, n):
            c, slot = divmod(p, self.k)
            samples = rows[c]["samples"]
            if slot < len(samples):
                out[p] = (rows[c], slot, samples[slot])
        return out

    async def prompts(self, n: int) -> list[PromptRecord]:
        return await self.prompts_between(0, n)

    async def prompts_between(self, start: int, stop: int) -> list[PromptRecord]:
        self.calls.forget()  # the stage has moved on: earlier calls are read from disk if ever needed
        return [self.record(row, slot, s) for row, slot, s in (await self.positions(stop, start)).values()]

    def plan(self, size: int) -> dict[str, Any]:
        calls = math.ceil(size / self.k)
        return {"method": self.name, "generation_calls": {"expected": calls},
                "teacher_calls": {"expected": size}, "samples_per_call": self.k}


class Temperature(CallStream):
    name = "temperature"

    async def call(self, c: int) -> dict:
        seed = self.seed_of(c)
        completion = await self.env.llm.complete(self.sample_request([], seed))
        return {"call": c, "seed": seed, "temperature": self.temperature,
                "samples": self.env.task.parse_samples(completion, self.k)}
