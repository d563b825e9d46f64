"""The paper's numbers (results/paper/*.csv) and the lookup of the one that matches a cell of ours."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from treesynth.report.layout import DIV_PREFIX, DIVERSITY_METRIC, HUMAN
from treesynth.report.tables import Group

PAPER_DIR = Path(__file__).resolve().parents[2] / "results" / "paper"


@dataclass
class Paper:
    accuracy: dict[tuple[str, str, str, str], float]  # (generator, model, method, benchmark) -> %
    diversity: dict[tuple[str, str, str], float]  # (generator, method, task) -> cosine
    scaling: dict[tuple[str, str, str, str, int], float]  # (generator, model, method, benchmark, size) -> %

    @classmethod
    def load(cls, folder: Path) -> Paper:
        def rows(name: str) -> list[dict[str, str]]:
            path = folder / name
            return list(csv.DictReader(path.open())) if path.exists() else []

        return cls(
            {(r["generator"], r["model"], r["method"], r["benchmark"]): float(r["score"]) for r in rows("accuracy.csv")},
            {(r["generator"], r["method"], r["task"]): float(r[DIVERSITY_METRIC]) for r in rows("diversity.csv")},
            {
                (r["generator"], r["model"], r["method"], r["benchmark"], int(r["size"])): float(r["score"])
                for r in rows("scaling.csv")
            },
        )

    def lookup(self, group: Group, row: str, column: str) -> float | None:
        """The paper's number for one of our cells (same generator, model, method, size), or None."""
        gen, model, size = group
        if " (" in row or column == "average":  # k-shot fine-tuned rows: not in the paper  # our average spans our columns, not the paper's four
            return None
        method = row
        paper_gen = "" if method in ("zero_shot", "few_shot", HUMAN) else gen
        if column.startswith(DIV_PREFIX):
            if size != HUMAN:
                return None
            return self.diversity.get((paper_gen, method, column[len(DIV_PREFIX):]))
        if method in ("zero_shot", "few_shot") or size == HUMAN:
            return self.accuracy.get((paper_gen, model, method, column))
        if size.isdigit():
            return self.scaling.get((paper_gen, model, method, column, int(size)))
        return None

