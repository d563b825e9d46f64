"""Evol-Instruct (WizardLM, Xu et al. 2023): seed instructions evolved over `rounds` rounds, each round
one operation drawn with a derived seed: in-depth (add constraints, deepen, concretize, increase
reasoning steps) or in-breadth (mutation into a new, rarer instruction of the same domain).

The elimination filter discards a failed evolution: a copy of its parent (normalized equal or char
5-gram Jaccard >= `copy_threshold`), an apology/refusal, or one that leaks the rewriting prompt's
markers ("#Rewritten Prompt#", "given prompt", ...). As in WizardLM, the chain then goes on from the
parent; a position where no round survived yields no record (it would only repeat the seed), and the
stage refills with later positions.

Seeds (`method.seeds`): `human` = the task's real training questions (seeded subsample of
`seed_pool`), `temperature` = temperature-sampled ones, `auto` = human when the training set can be
loaded, else temperature. Stream position p evolves seed p % seed_pool. Every position's evolution is
appended to `evol.jsonl`, so a rerun replays it; the log is read by position (`KeyedLog`), so a chunk of
positions costs its own evolutions and memory holds positions and offsets, not evolutions.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any

from treesynth.datasets import DataUnavailable, load_human
from treesynth.errors import TreesynthError
from treesynth.io import iter_jsonl
from treesynth.llm import derive_seed
from treesynth.methods.base import KeyedLog, Method, MethodEnv, PromptRecord, gather_logged
from treesynth.methods.hygiene import normalize
from treesynth.methods.temperature import Temperature, templated_sample_request
from treesynth.metrics.diversity import shingles
from treesynth.settings import EvolInstructMethod, load

# The WizardLM in-depth operations; `breadth` is in-breadth evolving (mutation).
DEPTH_OPERATIONS = {
    "add_constraints": "Please add one more constraint or requirement to #The Given Prompt#.",
    "deepen": "If #The Given Prompt# contains inquiries about certain issues, increase the depth and breadth of the inquiry.",
    "concretize": "Please replace general concepts with more specific concepts.",
    "increase_reasoning": "If #The Given Prompt# can be solved with just a few simple thinking processes, rewrite it "
    "to explicitly require multiple-step reasoning.",
}
OPERATIONS = (*DEPTH_OPERATIONS, "breadth")
_APOLOGY = re.compile(r"\b(sorry|apolog\w*|as an ai|i cannot|i can't|i am unable|i'm unable|unable to (?:help|comply))\b", re.I)
_LEAK = re.compile(r"\b(given|rewritten|created) prompt\b", re.I)


def elimination_reason(evolved: str, parent: str, copy_threshold: float = 0.9) -> str | None:
    """Why an evolution failed (WizardLM's elimination filter), or None if it is kept."""
    a, b = (normalize(re.sub(r"\W+", " ", t)) for t in (evolved, parent))  # punctuation/case do not count
    if not a:
        return "empty"
    if a == b:
        return "copy"
    sa, sb = shingles(a), shingles(b)
    if len(sa & sb) / max(1, len(sa | sb)) >= copy_threshold:
        return "copy"
    if _APOLOGY.search(evolved):
        return "apology"
    if _LEAK.search(evolved):
        return "prompt_leak"
    return None


class SeedSampler(Temperature):
    """Temperature-sampled seeds for tasks without a loadable training set (its own call log)."""

    name = "evol_seed"
    log_name = "evol_seed_calls.jsonl"


class EvolInstruct(Method):
    name = "evol_instruct"
    input_files = ("seed_file",)

    def __init__(self, env: MethodEnv):
        super().__init__(env)
        s = load(env.cfg, EvolInstructMethod, "method")
        self.rounds, self.pool_size, self.temperature = s.rounds, s.seed_pool, s.temperature
        self.copy_threshold, self.operations, self.seed_mode = s.copy_threshold, s.operations, s.seeds
        self.seed_file = s.seed_file
        if unknown := sorted(set(self.operations) - set(OPERATIONS)):
            raise TreesynthError(f"method.operations: unknown {unknown}; choose from {list(OPERATIONS)}")
        self.seed_source: str | None = None
        self.human_seeds: list[dict[str, str]] | None = None
        self.sampler: SeedSampler | None = None
        self.temperature_seeds: dict[int, dict[str, str] | None] = {}  # seed index -> sample (<= seed_pool)
        self.log = KeyedLog(env.work_dir / "evol.jsonl", "pos")

    # ---- seeds ------------------------------------------------------------------------------
    def _load_human_seeds(self) -> list[dict[str, str]] | None:
        task = self.env.task
        if not task.human:
            return None
        try:
            rows = load_human(task.name, task.human, self.env.root_cfg.data.dir, self.seed_file)
        except DataUnavailable:
            return None
        names = [f.name for f in task.fields]
        required = [f.name for f in task.fields if f.required]
        seeds = [{n: str(r.get(n, "") or "").strip() for n in names} for r in rows]
        seeds = [s for s in seeds if all(s[n] for n in required)]
        random.Random(derive_seed(self.env.seed, "evol_seeds")).shuffle(seeds)
        return seeds[: self.pool_size] or None

    async def seed_for(self, p: int) -> dict[str, str] | None:
        if self.seed_source is None:
            seeds = self._load_human_seeds() if self.seed_mode in ("auto", "human") else None
            if seeds is None and self.seed_mode == "human":
                raise TreesynthError(f"method.seeds=human but the {self.env.task.name} training set is unavailable "
                                     "(set data.dir or method.seed_file, or method.seeds=temperature)")
            self.human_seeds = seeds
            self.seed_source = "human" if seeds else "temperature"
            if seeds is None:
                self.sampler = SeedSampler(self.env)
        if self.human_seeds is not None:
            return self.human_seeds[p % len(self.human_seeds)]
        assert self.sampler is not None
        j = p % self.pool_size
        if j not in self.temperature_seeds:
            got = await self.sampler.positions(j + 1, start=j)
            self.temperature_seeds[j] = got[j][2] if j in got else None
        return self.temperature_seeds[j]

    # ---- evolution --------------------------------------------------------------------------
    async def evolve(self, p: int) -> dict:
        task = self.env.task
        seed_sample = await self.seed_for(p)
        row: dict[str, Any] = {"pos": p, "seed_index": p % self.pool_size, "seed_source": self.seed_source,
                               "seed_sample": seed_sample, "rounds": [], "sample": None}
        if seed_sample is None:  # a temperature seed that failed to generate
            return row
        current = seed_sample
        for r in range(1, self.rounds + 1):
            seed = derive_seed(self.env.seed, "evol", p, r)
            op = random.Random(seed).choice(self.operations)
            parent = task.build_prompt(current)
            if op == "breadth":
                req = templated_sample_request(task, "evol_breadth", 1, seed=seed, temperature=self.temperature,
                                               prompt=parent)
            else:
                req = templated_sample_request(task, "evol_depth", 1, seed=seed, temperature=self.temperature,
                                               prompt=parent, operation=DEPTH_OPERATIONS[op])
            samples = task.parse_samples(await self.env.llm.complete(req))
            reason = "no_valid_sample" if not samples else elimination_reason(
                task.build_prompt(samples[0]), parent, self.copy_threshold)
            row["rounds"].append({"round": r, "operation": op, "seed": seed, "eliminated": reason,
                                  "sample": samples[0] if samples else None})
            if reason is None:
                current = samples[0]
                row["sample"] = current
        return row

    async def prompts(self, n: int) -> list[PromptRecord]:
        return await self.prompts_between(0, n)

    async def prompts_between(self, start: int, stop: int) -> list[PromptRecord]:
        self.log.forget()  # the stage has moved on: earlier evolutions are read from disk if ever needed
        missing = [p for p in range(start, stop) if p not in self.log]
        if missing:
            await self.seed_for(0)  # decide the seed source once, before the positions run concurrently
            if self.sampler is not None:  # generate the temperature seeds up front (once, not per position)
                await self.sampler.ensure(min(max(missing) + 1, self.pool_size))
            await gather_logged((self.evolve(p) for p in missing), self.log, llm=self.env.llm)
        rows = self.log.get_many(range(start, stop))
        out = []
        for p in range(start, stop):
            row = rows[p]
            if row["sample"] is not None:
                ops = [x["operation"] for x in row["rounds"] if x["eliminated"] is None]
                out.append(PromptRecord(
                    id=f"evol/{p}", prompt=self.env.task.build_prompt(row["sample"]), sample=row["sample"],
                    meta={"seed_index": row["seed_index"], "seed_source": row["seed_source"], "operations": ops,
                          "seed_prompt": self.env.task.build_prompt(row["seed_sample"])},
                ))
        return out

    def plan(self, size: int) -> dict[str, Any]:
        return {"method": self.name, "generation_calls": {"expected": size * self.rounds},
                "teacher_calls": {"expected": size}, "rounds": self.rounds}

    def finalize(self, records: list[dict]) -> dict[str, Any]:
        reasons: Counter = Counter()
        source, without = self.seed_source, 0
        for row in iter_jsonl(self.log.path) if self.log.path.exists() else ():  # every position evolved, from disk
            reasons.update(x["eliminated"] for x in row["rounds"])
            source = source or row["seed_source"]
            without += row["sample"] is None
        return {
            "evol_seed_source": source,
            "evolutions": sum(reasons.values()),
            "evolutions_kept": reasons.pop(None, 0),
            "evolutions_eliminated": dict(reasons),
            "positions_without_evolution": without,
        }
