"""The paper's table layout: row (method) and column (benchmark, diversity) names, labels and order,
and the group slots shared by every part of the report."""

from __future__ import annotations

from collections.abc import Iterable

from treesynth.benchmarks import benchmark, builtin_names, task_names_in_order

DIVERSITY_METRIC = "mean_cosine_similarity"  # the paper's "Diversity" column (lower = more diverse)

METHOD_ORDER = ("zero_shot", "few_shot", "human", "temperature", "evol_instruct", "persona_hub", "treesynth")
METHOD_LABEL = {
    "zero_shot": "zero-shot",
    "few_shot": "few-shot",
    "human": "vanilla",
    "temperature": "temperature",
    "evol_instruct": "Evol-Instruct",
    "persona_hub": "Persona Hub",
    "treesynth": "TreeSynth",
}
# Column order: the registry's (conf/benchmark/*.yaml `order`); a user's or lm-eval's benchmark follows them,
# by name. Diversity columns follow the same order through each task's first benchmark.
BENCH_ORDER = tuple(builtin_names())
TASK_ORDER = tuple(task_names_in_order())
BENCH_LABEL = {name: benchmark(name).display for name in BENCH_ORDER}  # report.md headers (registry `display`)
HUMAN = "human"  # size label of runs at the task's human-set size (the paper's main tables)
ANY = "-"  # a group slot an observation does not depend on
DIV_PREFIX = "diversity "


def size_key(size: str) -> tuple[int, float]:
    """Sort key of a group's size: the human-set size first, then by number."""
    return (0, 0) if size == HUMAN else (1, float(size)) if size.replace(".", "").isdigit() else (2, 0)


def rank(name: str, preferred: tuple[str, ...]) -> tuple[int, str]:
    """Sort key: the place of the name's base ("treesynth (5-shot)" -> "treesynth") in `preferred`, then by name."""
    base = name.split(" (")[0]
    return (preferred.index(base) if base in preferred else len(preferred), name)


def order(items: Iterable[str], preferred: tuple[str, ...]) -> list[str]:
    return sorted(set(items), key=lambda name: rank(name, preferred))


def order_benchmarks(columns: Iterable[str]) -> list[str]:
    """Benchmark columns: the registry's order, then by name."""
    return order(columns, BENCH_ORDER)


def order_diversity(columns: Iterable[str]) -> list[str]:
    """Diversity columns ("diversity <task>"): in the order of the tasks' first benchmarks."""
    return sorted(set(columns), key=lambda c: rank(c[len(DIV_PREFIX):], TASK_ORDER))


def method_rank(row: str) -> tuple[int, str]:
    """Sort key of a row: the paper's method order (a k-shot row beside its method), then by name."""
    return rank(row, METHOD_ORDER)


def row_label(row: str) -> str:
    """A row's name in report.md ("evol_instruct (5-shot)" -> "Evol-Instruct (5-shot)")."""
    base, _, rest = row.partition(" (")
    return METHOD_LABEL.get(base, base) + (f" ({rest}" if rest else "")

