"""The task's real training set as a "method": GSM8K train, MATH train, Code Alpaca 20k (hub, or a local
file: method.file or task.human.file under data.dir). SimpleToM has none: a clear error.

Rows are converted into the record format and a seeded permutation of them is the stream, so any
data.size is a seeded subsample. Each record brings its own completion (no teacher call): the human
solution rewritten into the task's answer format through the task's answer template:
- gsm8k: the answer's `<<...>>` calculator annotations stripped; reasoning + `#### n`;
- math: the solution followed by the template's `The final answer is $\\boxed{...}$.` (last \\boxed{});
- code: the code wrapped in one ```python block.
A row that cannot be converted is skipped (counted in `human_unconverted`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

from treesynth.datasets import load_human
from treesynth.errors import TreesynthError
from treesynth.methods.base import Method, MethodEnv, PromptRecord
from treesynth.prompts import fill
from treesynth.tasks import TaskSpec

_CALC = re.compile(r"<<[^<>]*>>")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (balanced braces), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def gsm8k_fields(row: dict) -> dict[str, str] | None:
    answer = _CALC.sub("", str(row.get("answer", "")))
    if "####" not in answer:
        return None
    reasoning, final = answer.rsplit("####", 1)
    return {"reasoning": reasoning.strip(), "answer": final.strip().replace(",", "")}


def math_fields(row: dict) -> dict[str, str] | None:
    solution = str(row.get("solution", "")).strip()
    boxed = last_boxed(solution)
    return None if boxed is None else {"reasoning": solution, "answer": boxed}


def code_fields(row: dict) -> dict[str, str] | None:
    code = str(row.get("output", row.get("code", ""))).strip()
    fence = re.fullmatch(r"```(?:python|py)?\n?(.*?)\n?```", code, re.S)  # already fenced: unwrap first
    code = fence.group(1).strip() if fence else code
    return {"code": code} if code else None


# task name -> row -> {reasoning (optional), answer (or code)}. Tasks not listed use task.human.completion as is.
CONVERTERS: dict[str, Callable[[dict], dict[str, str] | None]] = {
    "gsm8k": gsm8k_fields,
    "math": math_fields,
    "code_alpaca": code_fields,
}


def convert(task: TaskSpec, row: dict) -> str | None:
    """The row's completion in the task's answer format, or None if it cannot be made to end in it."""
    human = task.human or {}
    to_fields = CONVERTERS.get(task.name)
    if to_fields is not None:
        fields = to_fields(row)
        text = task.render_answer(fields.get("reasoning"), fields[task.answer_key]) if fields is not None else None
    else:
        text = fill(str(human.get("completion", "")), {k: str(v) for k, v in row.items()})
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
        rows = load_human(task.name, task.human, env.root_cfg.data.get("dir"), env.cfg.get("file"))
        if not rows:
            raise TreesynthError(f"the {task.name} training set is empty")
        self.rows = rows
        self.order = list(range(len(rows)))
        random.Random(env.seed).shuffle(self.order)  # the seeded subsample: any prefix of this permutation
        self.unconverted = 0

    def _record(self, i: int) -> PromptRecord | None:
        row, task = self.rows[i], self.env.task
        completion = convert(task, row)
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
