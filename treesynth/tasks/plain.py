"""Samples written as a plain-text list, the authors' own answer format ("Question 1: ...", "1. ...",
"**2)** ..."), for servers or models that ignore `response_format` and answer in prose. Generation asks
for JSON; when an answer is not JSON, `parse_listed` recovers the samples from the text instead of
losing the call. Multi-field samples are numbered blocks of `field: value` lines.
"""

from __future__ import annotations

import re

# An item label at the start of a line: optional bullet/markdown, an optional word ("Question", "Sample"),
# a number, then ".", ")" or ":"; e.g. "1. ", "**Question 2:** ", "- 3) ", "Problem #4 - ".
_LABEL = re.compile(
    r"^[ \t]*(?:[-*][ \t]+)?(?:\*\*|__)?(?:[A-Za-z][A-Za-z ]{0,20}?[ \t]*)?#?(\d{1,3})[ \t]*(?:[.):]|[ \t]-)"
    r"(?:\*\*|__)?[ \t]*",
    re.M,
)


def _items(text: str) -> list[str]:
    """The numbered items of a list, in order, each with its continuation lines; [] if it is no list."""
    marks = [m for m in _LABEL.finditer(text)]
    # Keep a run of labels that counts 1, 2, 3, ... (numbers inside an item's text are not labels).
    run, want = [], 1
    for m in marks:
        if int(m.group(1)) == want:
            run.append(m)
            want += 1
    items = []
    for i, m in enumerate(run):
        end = run[i + 1].start() if i + 1 < len(run) else len(text)
        items.append(text[m.end():end].strip())
    return [it for it in items if it]


def _fields_of(block: str, names: list[str]) -> dict[str, str]:
    """`field: value` lines of one block (names matched case-insensitively, `_` as a space, an optional
    item number: "Input 1:"); a value runs until the next field line."""
    pattern = "|".join(re.escape(n).replace("_", "[ _]") for n in names)
    heads = list(re.finditer(rf"^[ \t]*(?:\*\*)?({pattern})(?:[ \t]*\d{{1,3}})?(?:\*\*)?[ \t]*:(?:\*\*)?[ \t]*",
                             block, re.I | re.M))
    out = {}
    lead = block[: heads[0].start()].strip() if heads else block.strip()
    if lead:  # the item's label was the first field's own ("Instruction 1: ..."), so its text comes first
        out[names[0]] = lead
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(block)
        key = next(n for n in names if re.fullmatch(re.escape(n).replace("_", "[ _]"), m.group(1), re.I))
        out[key] = block[m.end():end].strip()
    return out


def parse_listed(text: str, names: list[str]) -> list[dict[str, str]]:
    """Samples from a plain-text list: one field -> each item is its value; several -> each item is a block
    of `field: value` lines (missing fields are empty; the caller drops incomplete samples)."""
    items = _items(text)
    if len(names) == 1:
        return [{names[0]: it} for it in items]
    return [_fields_of(it, names) for it in items]
