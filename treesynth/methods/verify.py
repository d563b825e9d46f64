"""Answer verification (config `data.verify`, off by default), the second hook after hygiene.

Which check a task gets (kind auto) and how its answers are read come from the registry entries of the
task's benchmarks (conf/benchmark/*.yaml `verify:` and `answer:`; treesynth/benchmarks.py), and the
extraction is treesynth/answers.py's, the code the evaluation scores with:
- self_consistency (benchmarks with `verify: self_consistency`): k more teacher samples for the record's
  prompt; kept only when the majority answer (ties: any of the most frequent) equals its completion's.
- execute (`verify: execute`, code): the record's code runs in evaluation/sandbox.py (isolation
  `eval.sandbox`) with its own asserts, or, when it has none, with `tests` assert lines the teacher
  writes; kept when it exits 0.
- benchmarks without `verify:`: nothing to check; records pass through (`verify_skipped`).
The stage keeps one `Verifier` and asks it for the `outcome` of each surviving record (`run` does a batch):
outcomes are checkpointed per record id in `verify.jsonl` (read by id: memory holds ids and offsets; the
LLM calls are cached), so each record is verified once, also across a kill and a rerun.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from evaluation import sandbox
from treesynth import answers
from treesynth.benchmarks import Benchmark, benchmark
from treesynth.llm import LLM, ChatRequest, derive_seed
from treesynth.methods.base import KeyedLog
from treesynth.prompts import render
from treesynth.settings import Verify as VerifySettings
from treesynth.settings import load
from treesynth.tasks import TaskSpec

_ASSERT = re.compile(r"^\s*assert\b", re.M)


def verified_benchmark(task: TaskSpec) -> Benchmark | None:
    """The first of the task's benchmarks whose registry entry names a verification kind."""
    for name in task.benchmarks:
        b = benchmark(name)
        if b.verify:
            return b
    return None


def kind_for(task: TaskSpec, kind: str) -> str | None:
    if kind != "auto":
        return kind
    b = verified_benchmark(task)
    return b.verify if b else None


def extract_answer(text: str, bench: Benchmark | None, answer_format: str | None = None) -> str | None:
    """The completion's final answer as the benchmark extracts and normalises it when scoring (a user
    benchmark without an extractor: the task's answer format); without one, the last \\boxed{} else the
    `####` number."""
    if bench is not None and bench.extractor_spec(answer_format):
        return bench.final_answer(text, answer_format)
    return answers.final_answer(text, "boxed", "latex") or answers.final_answer(text, "hash_number", "number")


def code_of(completion: str) -> str | None:
    return answers.code_block(completion)


def tests_schema(n: int) -> dict:
    return {
        "title": "tests",
        "type": "object",
        "properties": {"tests": {"type": "array", "minItems": 1, "maxItems": n,
                                 "items": {"type": "string", "pattern": "^assert [ -~]{5,120}$"}}},
        "required": ["tests"],
        "additionalProperties": False,
    }


class Verifier:
    def __init__(self, teacher: LLM, task: TaskSpec, cfg: DictConfig, work_dir: Path):
        self.teacher, self.task, self.v = teacher, task, load(cfg.data.verify, VerifySettings, "data.verify")
        self.seed = int(cfg.seed)
        self.kind = kind_for(task, self.v.kind)
        self.bench = verified_benchmark(task)
        self.sandbox_mode = str(cfg.eval.sandbox)  # one setting for all generated code
        self.log = KeyedLog(work_dir / "verify.jsonl", "id")

    async def self_consistency(self, r: dict) -> dict:
        own = extract_answer(r["completion"], self.bench, self.task.answer.format)
        reqs = [self.task.response_request(r["prompt"], {}, seed=derive_seed(self.seed, "verify", r["id"], i))
                for i in range(self.v.k)]
        votes = [extract_answer(c, self.bench, self.task.answer.format) for c in map(self.task.completion_from, await self.teacher.generate(reqs)) if c]
        counts = self._tally(a for a in votes if a is not None)
        top = max(counts.values(), default=0)
        mine = next((a for a in counts if self._same(a, own)), None)
        ok = own is not None and top > 0 and mine is not None and counts[mine] == top
        reason = None if ok else ("no_votes" if not top else "majority_disagrees")
        return {"id": r["id"], "ok": ok, "reason": reason, "answer": own, "votes": dict(counts)}

    def _same(self, a: str | None, b: str | None) -> bool:
        """The scoring's equivalence (sympy for LaTeX answers), so a vote counts as the evaluation would."""
        return answers.equivalent(a, b, self.bench.normalize if self.bench else "none")

    def _tally(self, votes: Any) -> Counter:
        """Votes grouped by equivalence: each group counted under its first answer."""
        counts: Counter = Counter()
        for v in votes:
            counts[next((k for k in counts if self._same(k, v)), v)] += 1
        return counts

    async def execute(self, r: dict) -> dict:
        code = code_of(r["completion"])
        if code is None:
            return {"id": r["id"], "ok": False, "reason": "no_code"}
        tests: list[str] = []
        if not _ASSERT.search(code):  # no asserts of its own: ask the teacher for some
            n = self.v.tests
            req = ChatRequest.user(render("verify_tests", n=str(n), prompt=r["prompt"], code=code), temperature=0.2,
                                   max_tokens=60 * n + 20, seed=derive_seed(self.seed, "verify_tests", r["id"]),
                                   json_schema=tests_schema(n))
            c = await self.teacher.complete(req)
            tests = list(c.data["tests"]) if c.ok and isinstance(c.data, dict) else []
            if not tests:
                ok = self.v.keep_untested
                return {"id": r["id"], "ok": ok, "reason": "untested"}
        program = code + "\n\n" + "\n".join(tests) + "\n"
        res = await asyncio.to_thread(sandbox.run_program, program, self.v.timeout_s, mode=self.sandbox_mode)
        return {"id": r["id"], "ok": res.passed, "reason": None if res.passed else f"tests_{res.status}",
                "tests": tests, "own_asserts": not tests}

    async def outcome(self, r: dict) -> dict:
        """The verification outcome of record `r` ({id, ok, reason, ...}), checked once: read back from
        verify.jsonl when a batch or an earlier run checked it."""
        if r["id"] in self.log:
            return self.log[r["id"]]
        if self.kind == "execute":
            sandbox.require_sandbox(self.sandbox_mode)  # one line on what to install, before any record runs
        o = await (self.self_consistency if self.kind == "self_consistency" else self.execute)(r)
        self.log.append(o)
        return o

    def close(self) -> None:
        """Write out the outcomes still buffered (a later outcome reopens the log)."""
        self.log.close()

    async def run(self, records: list[dict]) -> tuple[list[dict], dict[str, Any]]:
        """(the records that pass, counts): `outcome` of each, concurrently. Outcomes that came back are
        logged even when another check raised (a budget stop)."""
        counts: dict[str, Any] = {"verify_kind": self.kind}
        if self.kind is None:
            return records, {**counts, "verify_skipped": len(records)}
        self.log.forget()  # outcomes of earlier batches stay on disk
        try:
            results = await asyncio.gather(*(self.outcome(r) for r in records), return_exceptions=True)
        finally:
            self.close()
        if errors := [e for e in results if isinstance(e, BaseException)]:
            raise errors[0]
        kept = [r for r, o in zip(records, results, strict=True) if o["ok"]]
        reasons = Counter(o["reason"] for o in results if not o["ok"])
        return kept, {**counts, "verify_checked": len(records), "verify_failed": len(records) - len(kept),
                      "verify_fail_reasons": dict(reasons)}
