"""A criterion's parts checked without any LLM (pure functions, unit-tested directly): value and dimension
hygiene, the paper's one-call criterion validated, and the JSON schemas the builder's calls carry."""

from __future__ import annotations

import difflib
import re
from typing import Any


class CriterionError(ValueError):
    """One criterion attempt was invalid (the message says why); the builder re-samples."""


# ---- value hygiene (pure functions: unit-tested directly) ---------------------------------------

_PLACEHOLDER = re.compile(
    r"[<>{}\[\]]|^(value|option|category|attribute|dimension|criterion|type|item|example|sample)\s*[a-z0-9]?$|\.\.\.|^x+$",
    re.I,
)
_OTHER = re.compile(r"\b(other|others|misc|miscellaneous|etc|various|mixed|none|n/?a|unknown|general|any)\b", re.I)
_COMBINED = re.compile(r"\s(and|or|&|\+|vs\.?)\s|/|&|\band/or\b", re.I)


def normalize(text: str) -> str:
    words = re.sub(r"[^a-z0-9]+", " ", text.lower()).split()
    return " ".join(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words)


def near_duplicate(a: str, b: str, threshold: float = 0.85) -> bool:
    na, nb = normalize(a), normalize(b)
    return na == nb or difflib.SequenceMatcher(None, na, nb).ratio() >= threshold


def overlapping(a: str, b: str) -> bool:
    """One value's words contain the other's ("fractions" vs "fractions with decimals"): not disjoint."""
    wa, wb = set(normalize(a).split()), set(normalize(b).split())
    return bool(wa and wb) and (wa <= wb or wb <= wa)


_WORD = re.compile(r"[A-Za-z]{3,}|^[0-9][0-9.,\s-]*$")  # a word, or a number / range such as "2-3"


def value_problem(value: str) -> str | None:
    v = value.strip()
    if len(normalize(v)) < 2:
        return "empty"
    if _PLACEHOLDER.search(v):
        return "placeholder"
    # A weak model's fragments (", BQUICK_PINK", ")sort_by") start mid-sentence or hold no word.
    if not v[0].isalnum() or not _WORD.search(v):
        return "not a value (no leading word)"
    if _OTHER.search(v):
        return "catch-all ('other')"
    if _COMBINED.search(v):
        return "combined"
    return None


def clean_values(
    candidates: list[str], existing: list[str] = (), dimension: str | None = None
) -> tuple[list[str], list[tuple[str, str]]]:
    """Keep the candidates that are valid, new and disjoint from `existing` and each other; near-duplicates
    are merged into the value already kept; a value that restates the dimension itself is dropped.
    Returns (kept, [(dropped value, why)])."""
    kept: list[str] = []
    dropped: list[tuple[str, str]] = []
    for raw in candidates:
        v = " ".join(str(raw).split())
        problem = value_problem(v)
        if problem is None and dimension and near_duplicate(v, dimension):
            problem = "restates the dimension"
        if problem is None:
            for other in [*existing, *kept]:
                if near_duplicate(v, other):
                    problem = f"duplicate of {other!r}"
                    break
                if overlapping(v, other):
                    problem = f"overlaps {other!r}"
                    break
        if problem:
            dropped.append((v, problem))
        else:
            kept.append(v)
    return kept, dropped


def dimension_problem(dimension: str, used: list[str]) -> str | None:
    d = " ".join(str(dimension).split())
    if len(normalize(d)) < 3 or _PLACEHOLDER.search(d):
        return f"dimension {d!r} is a placeholder"
    for u in used:
        if near_duplicate(d, u) or normalize(d) == normalize(u):
            return f"dimension {d!r} is already used by an ancestor ({u!r})"
    return None


def validate_one_call(data: Any, n_pivots: int, used: list[str]) -> tuple[str, dict[str, list[int]]]:
    """The paper's one-call criterion, checked: returns (dimension, value -> 1-based pivot indices)."""
    if not isinstance(data, dict) or not isinstance(data.get("attributes"), list):
        raise CriterionError("criterion JSON lacks attributes")
    dimension = " ".join(str(data.get("dimension", "")).split())
    if problem := dimension_problem(dimension, used):
        raise CriterionError(problem)
    assignment: dict[str, list[int]] = {}
    for item in data["attributes"]:
        value, idx = str(item.get("value", "")), item.get("samples", [])
        kept, dropped = clean_values([value], list(assignment))
        if dropped:
            raise CriterionError(f"value {value!r} rejected: {dropped[0][1]}")
        if not all(isinstance(i, int) and 1 <= i <= n_pivots for i in idx):
            raise CriterionError(f"value {value!r}: sample indices out of range 1..{n_pivots}: {idx}")
        assignment[kept[0]] = sorted(set(idx))
    seen = [i for idx in assignment.values() for i in idx]
    if len(seen) != len(set(seen)):
        raise CriterionError("a sample is assigned to two values (values overlap)")
    if set(seen) != set(range(1, n_pivots + 1)):
        raise CriterionError(f"samples {sorted(set(range(1, n_pivots + 1)) - set(seen))} are not assigned")
    if len(assignment) < 2:
        raise CriterionError("fewer than 2 values")
    return dimension, assignment


# ---- schemas of the builder's calls ------------------------------------------------------------------

def propose_schema(max_values: int, value: dict) -> dict:
    """`value`: the schema of one dimension or value name (the generator profile's `value_schema()`)."""
    return {
        "title": "propose",
        "type": "object",
        "properties": {
            "dimension": value,
            "values": {"type": "array", "items": value, "minItems": 2, "maxItems": max(2, max_values)},
        },
        "required": ["dimension", "values"],
        "additionalProperties": False,
    }


def assign_schema(values: list[str]) -> dict:
    return {
        "title": "assign",
        "type": "object",
        "properties": {"value": {"enum": list(values)}},
        "required": ["value"],
        "additionalProperties": False,
    }


def one_call_schema(n_pivots: int, max_values: int, value: dict) -> dict:
    item = {
        "type": "object",
        "properties": {
            "value": value,
            "samples": {"type": "array", "items": {"enum": list(range(1, n_pivots + 1))}, "minItems": 1, "maxItems": n_pivots},
        },
        "required": ["value", "samples"],
        "additionalProperties": False,
    }
    return {
        "title": "criterion",
        "type": "object",
        "properties": {
            "dimension": value,
            "attributes": {"type": "array", "items": item, "minItems": 2, "maxItems": max(2, min(max_values, n_pivots))},
        },
        "required": ["dimension", "attributes"],
        "additionalProperties": False,
    }


def coverage_schema(max_new: int, value: dict) -> dict:
    return {
        "title": "coverage",
        "type": "object",
        "properties": {
            "complete": {"type": "boolean"},
            "new_values": {"type": "array", "items": value, "minItems": 0, "maxItems": max(1, max_new)},
        },
        "required": ["complete", "new_values"],
        "additionalProperties": False,
    }


