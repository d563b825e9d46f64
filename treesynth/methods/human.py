"""The task's real training set as a "method": GSM8K train, MATH train, Code Alpaca 20k (hub, or a local
file: method.file or task.human.file under data.dir). SimpleToM has none: a clear error.

Rows are converted into the record format and a seeded permutation of them is the stream, so any
data.size is a seeded subsample. Each record brings its own completion (no teacher call): the row's text
`task.human.completion` (a template over the row, e.g. "{answer}") rewritten into the task's answer format
by the converter the task's benchmark names in the registry (conf/benchmark/*.yaml `human:`):
- hash_solution: `<<...>>` calculator annotations stripped; reasoning + the number after `####`;
- boxed_solution: the solution followed by the template's final answer (the last \\boxed{});
- code_block: the code (unwrapped when already fenced) in the task's code template;
- none of the benchmarks names one: the filled `human.completion` as it is.
A row that cannot be converted is skipped (counted in `human_unconverted`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

from treesynth import answers
from treesynth.benchmarks import benchmark
from treesynth.datasets import load_human
from treesynth.errors import TreesynthError
from treesynth.methods.base import Method, MethodEnv, PromptRecord
from treesynth.prompts import fill
from treesynth.tasks import TaskSpec

_CALC = re.compile(r"<<[^<>]*>>")


def hash_solution(text: str) -> dict[str, str] | None:
    text = _CALC.sub("", text)
    final = answers.final_answer(text, "hash_number", "number")
    if final is None:
        return None
    return {"reasoning": text.rsplit("####", 1)[0].strip(), "answer": final}


def boxed_solution(text: str) -> dict[str, str] | None:
    solution = text.strip()
    boxed = answers.last_boxed(solution)
    return None if boxed is None else {"reasoning": solution, "answer": boxed}


def code_block(text: str) -> dict[str, str] | None:
    code = answers.code(text)  # already fenced: unwrapped
    return {"code": code} if code else None


# registry `human:` name -> the row's text -> {reasoning (optional), answer (or code)}
CONVERTERS: dict[str, Callable[[str], dict[str, str] | None]] = {
    "hash_solution": hash_solution,
    "boxed_solution": boxed_solution,
    "code_block": code_block,
}


def converter_for(task: TaskSpec) -> Callable[[str], dict[str, str] | None] | None:
    """The converter the first of the task's benchmarks names (None: use the filled template as it is)."""
    for name in task.benchmarks:
        conv = benchmark(name).human
        if conv:
            if conv not in CONVERTERS:
                raise TreesynthError(f"benchmark {name!r}: human: {conv!r} is not one of {sorted(CONVERTERS)}")
            return CONVERTERS[conv]
    return None


def convert(task: TaskSpec, row: dict, to_fields: Callable[[str], dict[str, str] | None] | None = None) -> str | None:
    """The row's completion in the task's answer format, or None if it cannot be made to end in it."""
    human = task.human or {}
    text: str | None = fill(str(human.get("completion", "")), {k: str(v) for k, v in row.items()})
    if to_fields is not None:
        fields = to_fields(text)
        text = task.render_answer(fields.get("reasoning"), fields[task.answer_key]) if fields is not None else None
    text = text.strip() if text else None
    return text if text and task.ends_in_answer_format(text) else None


class Human(Method):
    name = "human"
    input_files = ("file",)

    def __init__(self, env: MethodEnv):
        super().__init__(env)
        task = env.task
        if not task.human:
            raise TreesynthError(f"task {task.name!r} has no real training set; method=human is not available for it")
        rows = load_human(task.name, task.human, env.root_cfg.data.dir, env.cfg.get("file"))
        if not rows:
            raise TreesynthError(f"the {task.name} training set is empty")
        self.rows = rows
        self.order = list(range(len(rows)))
        random.Random(env.seed).shuffle(self.order)  # the seeded subsample: any prefix of this permutation
        self.unconverted = 0
        self.to_fields = converter_for(task)

    def _record(self, i: int) -> PromptRecord | None:
        row, task = self.rows[i], self.env.task
        completion = convert(task, row, self.to_fields)
        if completion is None:
            return None
        sample = {f.name: str(row.get(f.name, "") or "").strip() for f in task.fields}
        if all(sample[f.name] for f in task.fields if f.required):
            prompt = task.build_prompt(sample)
        else:  # the source names its fields differently: the task's human.prompt template
            prompt = fill(str(task.human.get("prompt", "")), {k: str(v) for k, v in row.items()}).strip()
        if not prompt:
            return None
        return PromptRecord(id=f"human/{i}", prompt=prompt, sample=sample, completion=completion,
                            meta={"source_index": i})

    async def prompts(self, n: int) -> list[PromptRecord]:
        out = [r for i in self.order[:n] if (r := self._record(i)) is not None]
        self.unconverted = min(n, len(self.rows)) - len(out)
        if n > len(self.rows):  # the stage asks beyond the set only when it still lacks records
            raise TreesynthError(
                f"the {self.env.task.name} training set has only {len(self.rows)} rows "
                f"({self.unconverted} not convertible); lower data.size"
            )
        return out

    def plan(self, size: int) -> dict[str, Any]:
        return {"method": self.name, "generation_calls": {"expected": 0}, "teacher_calls": {"expected": 0},
                "rows_available": len(self.rows)}

    def finalize(self, records: list[dict]) -> dict[str, Any]:
        return {"human_rows": len(self.rows), "human_unconverted": self.unconverted}
