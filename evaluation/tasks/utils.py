"""Answer extraction and scoring for our lm-eval tasks (referenced from the task YAMLs with !function).

Extraction and normalisation are treesynth/answers.py's (the same code verification uses); each
extractor accepts the format the synthesized training completions end in (the task `answer` key):
GSM8K `#### <number>`, MATH `\\boxed{...}`, code one ```python block, SimpleToM the option letter.
Code is executed only through `evaluation.sandbox` (a subprocess), never in this process.
"""

from __future__ import annotations

import os
from typing import Any

from treesynth import answers
from treesynth.answers import last_boxed

# ---------------------------------------------------------------- GSM8K


def extract_gsm8k(text: str, strict: bool = True) -> str | None:
    """The number after the last `####` (strict), else the last number in the text (flexible), normalised."""
    return answers.final_answer(text, "hash_number" if strict else "last_number", "number")


def gsm8k_gold(doc: dict) -> str | None:
    return extract_gsm8k(doc["answer"])


def process_results_gsm8k(doc: dict, results: list[str]) -> dict[str, int]:
    gold = gsm8k_gold(doc)
    text = results[0]
    return {
        "exact_match": int(extract_gsm8k(text) == gold),
        "flexible_match": int(extract_gsm8k(text, strict=False) == gold),
    }


# ---------------------------------------------------------------- MATH


def process_docs_math(dataset: Any) -> Any:
    """Gold answer = the last boxed expression of the reference solution (MATH and MATH-500 alike)."""
    return dataset.map(lambda doc: {"answer": last_boxed(doc["solution"]) or doc.get("answer", "")})


def math_equiv(pred: str | None, gold: str | None) -> bool:
    return answers.equivalent(pred, gold, "latex")


def process_results_math(doc: dict, results: list[str]) -> dict[str, int]:
    return {"exact_match": int(math_equiv(last_boxed(results[0]), doc["answer"]))}


# ---------------------------------------------------------------- code

extract_code = answers.code  # the first ```python block (an unterminated one runs to the end), else the text


def run_tests(program: str) -> int:
    from evaluation.sandbox import DEFAULT_SANDBOX, run_program

    # Set by the harness from eval.code_timeout_s / code_memory_mb / sandbox (lm-eval gives metrics no config).
    return int(run_program(program, timeout_s=float(os.environ.get("TREESYNTH_CODE_TIMEOUT_S", "10")),
                           memory_mb=int(os.environ.get("TREESYNTH_CODE_MEMORY_MB", "1024")),
                           mode=os.environ.get("TREESYNTH_CODE_SANDBOX", DEFAULT_SANDBOX)).passed)


def mbpp_program(doc: dict, code: str) -> str:
    setup = doc.get("test_setup_code") or ""
    tests = "\n".join(doc["test_list"])
    return f"{setup}\n{code}\n\n{tests}\n"


def humaneval_program(doc: dict, code: str) -> str:
    # The prompt first: its imports and signature; a full function in `code` redefines it.
    if f"def {doc['entry_point']}" not in code:
        code = doc["prompt"] + code
    else:
        code = doc["prompt"] + "    pass\n\n" + code
    return f"{code}\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"


def process_results_mbpp(doc: dict, results: list[str]) -> dict[str, int]:
    return {"pass_at_1": run_tests(mbpp_program(doc, extract_code(results[0])))}


def process_results_humaneval(doc: dict, results: list[str]) -> dict[str, int]:
    return {"pass_at_1": run_tests(humaneval_program(doc, extract_code(results[0])))}


def mbpp_doc_to_text(doc: dict) -> str:
    tests = "\n".join(doc["test_list"])
    return f"{doc['text']}\nYour code should pass these tests:\n{tests}"


# ---------------------------------------------------------------- SimpleToM

def simpletom_doc_to_text(doc: dict) -> str:
    options = "\n".join(f"{lab}. {txt}" for lab, txt in zip(doc["choices"]["label"], doc["choices"]["text"], strict=True))
    return (f"{doc['story']}\n\nQuestion: {doc['question']}\n{options}\n"
            "Answer with the letter of the correct option (A or B).")


extract_letter = answers.letter  # `Answer: B`, else the last standalone option letter


def process_results_simpletom(doc: dict, results: list[str]) -> dict[str, int]:
    return {"acc": int(extract_letter(results[0]) == doc["answerKey"])}


# ---------------------------------------------------------------- user benchmarks (treesynth_user.yaml)


def process_results_user(doc: dict, results: list[str]) -> dict[str, int]:
    """A user benchmark's row carries its scoring spec (the harness writes it from the benchmark YAML):
    `extract` (extractor name or regex:...), `normalize`, `metric` (exact_match | numeric), `tolerance`."""
    pred = answers.final_answer(results[0], doc["extract"], doc["normalize"])
    if doc["metric"] == "numeric":
        return {"numeric_match": int(answers.numeric_match(pred, doc["answer"], float(doc.get("tolerance") or 0.0)))}
    gold = answers.normalizer(doc["normalize"])(doc["answer"])
    return {"exact_match": int(pred is not None and pred == gold)}
