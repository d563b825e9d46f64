"""Answer extraction and normalisation: the one implementation that training-data verification
(treesynth/methods/verify.py), the `human` method's conversion and the evaluation's scoring
(evaluation/tasks/utils.py) all call, so they judge the same answer the same way.

Extractors (a benchmark entry names one, `answer.extract`, conf/benchmark/*.yaml):
  hash_number   the number after the last `####` (GSM8K)
  last_number   `####` if present, else the last number in the text (GSM8K's flexible match)
  boxed         the last \\boxed{...} / \\fbox{...} (braces balanced; `\\boxed 5` too) (MATH)
  code          the first ```python block (an unterminated one runs to the end), else the text
  letter        `Answer: B`, else the last standalone option letter (SimpleToM)
  regex:<re>    group `answer` (or group 1, or the whole match) of the last match (user benchmarks)
Normalisers (`answer.normalize`): number ('$1,234.50' -> '1234.5'), latex (lm-eval's MATH string
normalisation), text (stripped, case-folded, spaces collapsed), none.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_NUM = r"-?[$0-9.,]*[0-9]"
_HASH = re.compile(r"####\s*\$?\s*(" + _NUM + ")")
_ANY_NUM = re.compile(_NUM)
_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:\n?```|$)", re.DOTALL)
_LETTER = re.compile(r"\b([A-E])\b")
_ANSWER_LETTER = re.compile(r"answer\s*(?:is)?\s*[:\-]?\s*\(?([A-E])\)?", re.IGNORECASE)


def normalize_number(text: str | None) -> str | None:
    """'$1,234.50' -> '1234.5', '42.0' -> '42'; None when it is not a number."""
    if text is None:
        return None
    t = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(t)
    except ValueError:
        return None
    return str(int(value)) if value == int(value) else repr(value)


def hash_number(text: str) -> str | None:
    found = _HASH.findall(text)
    return found[-1] if found else None


def last_number(text: str) -> str | None:
    found = hash_number(text)
    if found is not None:
        return found
    nums = _ANY_NUM.findall(text)
    return nums[-1] if nums else None


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...} (braces balanced; `\\boxed 5` form too); None if absent."""
    best: tuple[int, str] | None = None
    for cmd in ("\\boxed", "\\fbox"):
        idx = text.rfind(cmd)
        while idx >= 0:
            got = _boxed_at(text[idx + len(cmd):])
            if got is not None:
                if best is None or idx > best[0]:
                    best = (idx, got)
                break
            idx = text.rfind(cmd, 0, idx)
    return best[1] if best else None


def _boxed_at(rest: str) -> str | None:
    if rest.startswith(" ") and rest.strip():  # "\boxed 5"
        return rest.strip().split("$")[0].split()[0]
    if not rest.startswith("{"):
        return None
    depth = 0
    for i, ch in enumerate(rest):
        depth += ch == "{"
        depth -= ch == "}"
        if depth == 0:
            return rest[1:i]
    return None


def code_block(text: str) -> str | None:
    """The first ```python block (an unterminated one, cut off by max tokens, runs to the end)."""
    m = _FENCE.search(text)
    return m.group(1).rstrip() if m else None


def code(text: str) -> str:
    """The code of a response: its first ```python block, else the whole text."""
    found = code_block(text)
    return found if found is not None else text.strip()


def letter(text: str) -> str | None:
    m = _ANSWER_LETTER.findall(text)
    if m:
        return m[-1].upper()
    letters = _LETTER.findall(text)
    return letters[-1] if letters else None


def regex_extractor(pattern: str) -> Callable[[str], str | None]:
    compiled = re.compile(pattern, re.S)

    def extract(text: str) -> str | None:
        matches = list(compiled.finditer(text))
        if not matches:
            return None
        m = matches[-1]
        if "answer" in compiled.groupindex:
            return m.group("answer")
        return m.group(1) if compiled.groups else m.group(0)

    return extract


EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "hash_number": hash_number,
    "last_number": last_number,
    "boxed": last_boxed,
    "code": code,
    "letter": letter,
}


def latex(text: str | None) -> str | None:
    if text is None:
        return None
    # lm-eval's hendrycks_math normalisation (importable: it needs only `datasets`).
    from lm_eval.tasks.hendrycks_math.utils import strip_string

    try:
        return strip_string(text)
    except Exception:  # noqa: BLE001 - their normaliser asserts on odd inputs
        return text.strip()


def plain_text(text: str | None) -> str | None:
    return None if text is None else " ".join(text.strip().casefold().split()).rstrip(".") or None


NORMALIZERS: dict[str, Callable[[str | None], str | None]] = {
    "number": normalize_number,
    "latex": latex,
    "text": plain_text,
    "none": lambda t: None if t is None else t.strip(),
}


def extractor(spec: str) -> Callable[[str], str | None]:
    """An extractor by name (`boxed`) or `regex:<pattern>`; unknown names raise ValueError."""
    if spec.startswith("regex:"):
        return regex_extractor(spec[len("regex:"):])
    if spec not in EXTRACTORS:
        raise ValueError(f"unknown answer extractor {spec!r}: choose one of {sorted(EXTRACTORS)} or regex:<pattern>")
    return EXTRACTORS[spec]


def normalizer(name: str) -> Callable[[str | None], str | None]:
    if name not in NORMALIZERS:
        raise ValueError(f"unknown answer normaliser {name!r}: choose one of {sorted(NORMALIZERS)}")
    return NORMALIZERS[name]


def final_answer(text: str, extract: str, normalize: str = "none") -> str | None:
    """The normalised final answer of a text, or None when it has none."""
    return normalizer(normalize)(extractor(extract)(text))


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


def equivalent(a: str | None, b: str | None, normalize: str = "none") -> bool:
    """Two extracted answers are the same answer: equal after normalisation; LaTeX answers also when sympy
    finds them equal (0.5 and \\frac{1}{2}). Scoring and self-consistency voting both decide with this."""
    if a is None or b is None:
        return False
    na, nb = normalizer(normalize)(a), normalizer(normalize)(b)
    if na is not None and na == nb:
        return True
    if normalize != "latex" or na is None or nb is None or len(na) > 80 or len(nb) > 80:  # keep sympy off long strings
        return False
    return _sympy_equal(na, nb)


def numeric_match(pred: str | None, gold: str | None, tolerance: float = 0.0) -> bool:
    """Both parse as numbers and differ by at most `tolerance` (absolute)."""
    p, g = normalize_number(pred), normalize_number(gold)
    if p is None or g is None:
        return False
    return abs(float(p) - float(g)) <= tolerance
