"""Answer extraction and scoring for our lm-eval tasks (referenced from the task YAMLs with !function).

Each extractor accepts the format the synthesized training completions end in (see docs/ARCHITECTURE.md, "Capability profiles" and the task `answer` key):
GSM8K `#### <number>`, MATH `\\boxed{...}`, code one ```python block, SimpleToM the option letter.
Code is executed only through `evaluation.sandbox` (a subprocess), never in this process.
"""

from __future__ import annotations

import os
import re
from typing import Any

# ---------------------------------------------------------------- GSM8K

_NUM = r"-?[$0-9.,]*[0-9]"
_STRICT = re.compile(r"####\s*\$?\s*(" + _NUM + ")")
_ANY_NUM = re.compile(_NUM)


def normalize_number(text: str | None) -> str | None:
    """'$1,234.50' -> '1234.5'; None when it is not a number."""
    if text is None:
        return None
    t = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(t)
    except ValueError:
        return None
    return str(int(value)) if value == int(value) else repr(value)


def extract_gsm8k(text: str, strict: bool = True) -> str | None:
    """The answer after the last `####` (strict), else the last number in the text (flexible)."""
    found = _STRICT.findall(text)
    if found:
        return normalize_number(found[-1])
    if strict:
        return None
    nums = _ANY_NUM.findall(text)
    return normalize_number(nums[-1]) if nums else None


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


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced; None if absent."""
    for cmd in ("\\boxed", "\\fbox"):
        idx = text.rfind(cmd)
        if idx < 0:
            continue
        rest = text[idx + len(cmd):]
        if rest.startswith(" "):  # "\boxed 5"
            return rest.strip().split("$")[0].split()[0] if rest.strip() else None
        if not rest.startswith("{"):
            continue
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "{"
            depth -= ch == "}"
            if depth == 0:
                return rest[1:i]
        return None
    return None


def process_docs_math(dataset: Any) -> Any:
    """Gold answer = the last boxed expression of the reference solution (MATH and MATH-500 alike)."""
    return dataset.map(lambda doc: {"answer": last_boxed(doc["solution"]) or doc.get("answer", "")})


def _strip_latex(s: str) -> str:
    # Reuse lm-eval's hendrycks_math normalization (importable: it needs only `datasets`).
    from lm_eval.tasks.hendrycks_math.utils import strip_string

    try:
        return strip_string(s)
    except Exception:  # noqa: BLE001 - their normalizer asserts on odd inputs
        return s.strip()


def _sympy_equal(a: str, b: str) -> bool:
    """Symbolic equivalence of two LaTeX answers, as lm-eval's minerva_math does, via sympy's lark parser
    (sympy's antlr parser needs antlr4 4.11, which conflicts with Hydra's 4.9)."""
    import sympy
    from sympy.parsing.latex import parse_latex

    try:
        x, y = parse_latex(a, backend="lark"), parse_latex(b, backend="lark")
        return bool(sympy.simplify(x - y) == 0)
    except Exception:  # noqa: BLE001 - unparsable or incomparable answers are simply not equal
        return False


def math_equiv(pred: str | None, gold: str | None) -> bool:
    if pred is None or gold is None:
        return False
    p, g = _strip_latex(pred), _strip_latex(gold)
    if p == g:
        return True
    if len(p) > 80 or len(g) > 80:  # keep sympy off pathological strings
        return False
    return _sympy_equal(p, g)


def process_results_math(doc: dict, results: list[str]) -> dict[str, int]:
    return {"exact_match": int(math_equiv(last_boxed(results[0]), doc["answer"]))}


# ---------------------------------------------------------------- code

_BLOCK = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


def extract_code(text: str) -> str:
    """The first ```python block (an unterminated one runs to the end); else the text itself."""
    m = _BLOCK.search(text)
    return m.group(1).rstrip() if m else text.strip()


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

_LETTER = re.compile(r"\b([AB])\b")
_ANSWER_LETTER = re.compile(r"answer\s*(?:is)?\s*[:\-]?\s*\(?([AB])\)?", re.IGNORECASE)


def simpletom_doc_to_text(doc: dict) -> str:
    options = "\n".join(f"{lab}. {txt}" for lab, txt in zip(doc["choices"]["label"], doc["choices"]["text"], strict=True))
    return (f"{doc['story']}\n\nQuestion: {doc['question']}\n{options}\n"
            "Answer with the letter of the correct option (A or B).")


def extract_letter(text: str) -> str | None:
    """`Answer: B` wins; else the last standalone A/B in the text."""
    m = _ANSWER_LETTER.findall(text)
    if m:
        return m[-1].upper()
    letters = _LETTER.findall(text)
    return letters[-1] if letters else None


def process_results_simpletom(doc: dict, results: list[str]) -> dict[str, int]:
    return {"acc": int(extract_letter(results[0]) == doc["answerKey"])}
