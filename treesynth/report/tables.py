"""The tables: one per (generator, fine-tuned model, data size), cells averaged over runs, and their
Markdown and CSV forms."""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from treesynth.report.collect import Obs
from treesynth.report.layout import (
    ANY,
    DIV_PREFIX,
    HUMAN,
    method_rank,
    order_benchmarks,
    order_diversity,
    size_key,
)

Group = tuple[str, str, str]  # (generator, model, size)


def _fits(obs: Obs, group: Group) -> bool:
    return all(o in (ANY, g) for o, g in zip((obs.generator, obs.model, obs.size), group, strict=True))


def _covers(general: Group, specific: Group) -> bool:
    return general != specific and all(g in (ANY, s) for g, s in zip(general, specific, strict=True))



@dataclass
class Cell:
    mean: float
    std: float
    n: int


@dataclass
class Table:
    group: Group
    rows: list[str]
    benchmarks: list[str]
    diversity: list[str]
    cells: dict[tuple[str, str], Cell]  # (row, column) -> cell; "average" included where defined
    datasets: dict[str, list[str]] = field(default_factory=dict)  # row -> synthesize artifact dirs

    @property
    def columns(self) -> list[str]:
        return [*self.benchmarks, "average", *self.diversity]


def build_tables(obs: list[Obs]) -> list[Table]:
    """One table per (generator, model, size); an observation with ANY slots joins every group it fits,
    and a group made only of such slots is dropped when a more specific group shows its numbers."""
    keys = {(o.generator, o.model, o.size) for o in obs}
    groups = sorted(
        (g for g in keys if not any(_covers(g, other) for other in keys)),
        key=lambda g: (g[0], g[1], size_key(g[2])),
    )
    tables = []
    for group in groups:
        members = [o for o in obs if _fits(o, group)]
        by_cell: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        for o in members:
            by_cell[(o.row, o.column)][o.source] = o.value  # one artifact, one vote
        cells = {
            k: Cell(statistics.fmean(v.values()), statistics.pstdev(v.values()), len(v)) for k, v in by_cell.items()
        }
        columns = {c for _, c in cells}
        benchmarks = order_benchmarks(c for c in columns if not c.startswith(DIV_PREFIX))
        diversity = order_diversity(c for c in columns if c.startswith(DIV_PREFIX))
        rows = sorted({r for r, _ in cells}, key=method_rank)
        for row in rows:  # the paper averages over all benchmarks; a partial average would mislead
            values = [cells.get((row, b)) for b in benchmarks]
            if benchmarks and all(values):
                cells[(row, "average")] = Cell(statistics.fmean(c.mean for c in values), 0.0, min(c.n for c in values))
        datasets = {r: sorted({o.dataset for o in members if o.row == r and o.dataset}) for r in rows}
        tables.append(Table(group, rows, benchmarks, diversity, cells, {r: d for r, d in datasets.items() if d}))
    return tables



def fmt(cell: Cell | None, column: str, with_n: bool = True) -> str:
    if cell is None:
        return "-"
    text = f"{cell.mean:.3f}" if column.startswith(DIV_PREFIX) else f"{cell.mean:.2f}"
    return f"{text} (n={cell.n})" if with_n and cell.n > 1 and column != "average" else text


def group_title(group: Group) -> str:
    gen, model, size = group
    size_text = "human-set size" if size == HUMAN else f"{size} records" if size != ANY else "any size"
    return f"generator {gen if gen != ANY else '-'} | fine-tuned {model if model != ANY else '-'} | {size_text}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def to_csv(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()

