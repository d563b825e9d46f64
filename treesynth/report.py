"""Reports across runs: `python -m treesynth.report <dir> [--name NAME]`.

Collects every `summary.json` under <dir> (a Hydra `outputs/` or `multirun/` tree) and writes, under
`results/<NAME>/`:
  report.md            the tables in the paper's layout, the comparison with the paper, the figures
  table.csv            the same table: one row per (generator, fine-tuned model, data size, method), with the
                       row's datasets (synthesize artifact dirs) and their hub ids (exports.json)
  cells.csv            every cell in long form with its mean, standard deviation and number of runs
  paper_comparison.csv our cells next to the paper's (results/paper/*.csv)
  scaling_*.png        accuracy / diversity vs data size (log x), one line per method
  tsne_*.png           t-SNE of the methods' data (when treesynth.metrics.plots/embed are installed)

How runs map onto the paper's table:
  rows     zero-shot = `evaluate_base` with 0 shots; few-shot = `evaluate_base` with shots > 0 or lm-eval's
           builtin prompts (eval=fewshot); vanilla = method `human`; the synthesizers by method name (a
           fine-tuned model evaluated few-shot gets its own row "<method> (5-shot)").
  columns  one per benchmark (headline metric, see `headline_metric`), `average` (only when every
           benchmark column of the table has a value), and `diversity <task>` (mean cosine similarity).
  groups   (generator = llm.model, fine-tuned model, data size); the size is "human" when
           data.size == task.human_size, so GSM8K at 7473 and code at 2700 share the paper's main table.
  Zero-/few-shot rows do not depend on the generator or size, vanilla not on the generator, diversity
  not on the fine-tuned model: they are shown in every group they fit. Several runs for one cell
  (seeds) are averaged; runs that reused the same artifact count once. Missing cells are "-".
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treesynth.benchmarks import benchmark, builtin_names, task_names_in_order
from treesynth.errors import TreesynthError
from treesynth.export import hub_url, read_exports
from treesynth.io import atomic_write_bytes, atomic_write_text, iter_jsonl

log = logging.getLogger("treesynth")

PAPER_DIR = Path(__file__).resolve().parents[1] / "results" / "paper"

# Headline metric of a benchmark result, when it names no "primary": the metric whose base name comes
# first here, ties broken by the filter. Filters appear as lm-eval writes them ("exact_match,strict-match")
# or as evaluation/harness.py flattens them ("exact_match_strict_match"; filter `none` dropped: "exact_match").
# strict-match first because fine-tuned completions end in the exact answer format the evaluation extracts;
# flexible-extract is the fallback. Never a `*stderr*` entry, and a sub-task's "sub/metric" only when the
# benchmark has no aggregate.
METRIC_PREFERENCE = ("exact_match", "pass@1", "pass_at_1", "acc", "acc_norm", "math_verify")
FILTER_PREFERENCE = ("strict-match", "none", "create_test", "flexible-extract")
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
TSNE_MAX_PER_METHOD = 1000  # t-SNE is O(n log n) but slow on CPU; a sample shows the spread


# ----------------------------------------------------------------------------------------------- metrics
def _split_metric(name: str) -> tuple[str, str]:
    """(base metric, filter) from "metric,filter", "metric_filter_with_underscores" or "metric"."""
    if "," in name:
        base, flt = name.split(",", 1)
        return base, flt
    for flt in FILTER_PREFERENCE:
        suffix = "_" + flt.replace("-", "_")
        if name.endswith(suffix) and name[: -len(suffix)] in METRIC_PREFERENCE:
            return name[: -len(suffix)], flt
    return name, "none"


def headline_metric(result: dict[str, Any]) -> tuple[str, float] | None:
    """(metric name, value) to report for one benchmark result of an `eval.json`/summary, or None."""
    metrics = {k: v for k, v in (result.get("metrics") or {}).items() if _is_number(v) and "stderr" not in k}
    primary = result.get("primary")
    if primary in metrics:
        return primary, float(metrics[primary])
    if primary:  # a bare "exact_match" names the metric under every filter
        metrics = {k: v for k, v in metrics.items() if _split_metric(k)[0] == primary} or metrics

    def rank(name: str) -> tuple[int, int, int] | None:
        base, flt = _split_metric(name.rpartition("/")[2])
        if base not in METRIC_PREFERENCE:
            return None
        f = FILTER_PREFERENCE.index(flt) if flt in FILTER_PREFERENCE else len(FILTER_PREFERENCE)
        return int("/" in name), METRIC_PREFERENCE.index(base), f

    ranked = sorted((r, k) for k in metrics if (r := rank(k)) is not None)
    if not ranked:
        return None
    name = ranked[0][1]
    return name, float(metrics[name])


def as_percent(value: float) -> float:
    """Scores in [0, 1] are fractions: shown as percentages like the paper; others are kept."""
    return value * 100 if 0 <= value <= 1 else value


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


# ----------------------------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class Obs:
    """One number from one run, placed in the table. ANY in a slot: valid for every group value there."""

    generator: str
    model: str
    size: str  # HUMAN or the data size as text
    row: str
    column: str
    value: float
    source: str  # artifact dir (runs that reused one artifact count once) or the summary path
    x: int | None = None  # numeric data size, for the scaling plots
    dataset: str = ""  # the synthesize artifact dir the row's model trained on / the diversity measured


@dataclass
class Run:
    path: Path
    summary: dict[str, Any]

    def cfg(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.summary.get("config") or {}
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


def load_runs(root: str | Path) -> tuple[list[Run], list[str]]:
    """Every summary.json under root; unreadable ones are skipped and listed in the second value."""
    root = Path(root)
    if not root.is_dir():
        raise TreesynthError(f"report: {root} is not a directory; pass a Hydra outputs/ or multirun/ folder")
    runs, skipped = [], []
    for path in sorted(root.rglob("summary.json")):
        try:
            summary = json.loads(path.read_text())
            if not isinstance(summary, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            skipped.append(f"{path}: {e}")
            continue
        runs.append(Run(path, summary))
    if not runs:
        raise TreesynthError(f"report: no summary.json under {root}; run `python run.py` first")
    return runs, skipped


def generator_name(run: Run) -> str:
    """Lower-cased last part of the generator model id (matches results/paper/*.csv), + the teacher."""

    def short(model: Any) -> str:
        return str(model).rstrip("/").split("/")[-1].lower() if model else "?"

    gen = short(run.cfg("llm.model"))
    teacher = run.cfg("teacher.model")
    return f"{gen}+teacher:{short(teacher)}" if teacher and short(teacher) != gen else gen


def _prompting(run: Run, result: dict[str, Any]) -> str:
    """"" for a zero-shot evaluation, else how it was prompted ("5-shot"; "builtin" = lm-eval's own task
    with its default shots, see conf/eval/fewshot.yaml). Read from the result's settings, else the config."""
    settings = {**(run.cfg("eval") or {}), **(result.get("settings") or {})}
    shots = settings.get("num_fewshot")
    if _is_number(shots):
        return f"{int(shots)}-shot" if shots else ""
    return "builtin" if settings.get("style") == "builtin" else ""


def observations(run: Run) -> list[Obs]:
    """The table cells one run contributes."""
    stages = run.summary.get("stages") or {}
    artifacts = run.summary.get("artifacts") or {}
    method = str(run.cfg("method.name", "?"))
    model = str(run.cfg("model.name", "?"))
    data_size = run.cfg("data.size")
    x = int(data_size) if _is_number(data_size) else None
    size = HUMAN if data_size is not None and data_size == run.cfg("task.human_size") else str(data_size)
    gen = ANY if method == "human" else generator_name(run)  # vanilla data has no generator
    dataset = str(artifacts.get("synthesize") or "")
    out: list[Obs] = []

    def source(stage: str) -> str:
        return str(artifacts.get(stage) or f"{run.path}#{stage}")

    for stage in ("evaluate_base", "evaluate"):
        for bench, result in ((stages.get(stage) or {}).get("benchmarks") or {}).items():
            head = headline_metric(result or {})
            if head is None:
                continue
            prompting = _prompting(run, result)
            if stage == "evaluate_base":
                row = "few_shot" if prompting else "zero_shot"
                out.append(Obs(ANY, model, ANY, row, bench, as_percent(head[1]), source(stage)))
            else:
                row = f"{method} ({prompting})" if prompting else method
                out.append(Obs(gen, model, size, row, bench, as_percent(head[1]), source(stage), x, dataset))
    div = (stages.get("diversity") or {}).get(DIVERSITY_METRIC)
    if _is_number(div):
        column = DIV_PREFIX + str(run.cfg("task.name", "?"))
        out.append(Obs(gen, ANY, size, method, column, float(div), source("diversity"), x, dataset))
    return out


# ----------------------------------------------------------------------------------------------- table
Group = tuple[str, str, str]  # (generator, model, size)


def _fits(obs: Obs, group: Group) -> bool:
    return all(o in (ANY, g) for o, g in zip((obs.generator, obs.model, obs.size), group, strict=True))


def _covers(general: Group, specific: Group) -> bool:
    return general != specific and all(g in (ANY, s) for g, s in zip(general, specific, strict=True))


def _size_key(size: str) -> tuple[int, float]:
    return (0, 0) if size == HUMAN else (1, float(size)) if size.replace(".", "").isdigit() else (2, 0)


def _rank(name: str, preferred: tuple[str, ...]) -> tuple[int, str]:
    base = name.split(" (")[0]
    return (preferred.index(base) if base in preferred else len(preferred), name)


def _order(items: Iterable[str], preferred: tuple[str, ...]) -> list[str]:
    return sorted(set(items), key=lambda name: _rank(name, preferred))


def _order_diversity(columns: Iterable[str]) -> list[str]:
    return sorted(set(columns), key=lambda c: _rank(c[len(DIV_PREFIX):], TASK_ORDER))


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
        key=lambda g: (g[0], g[1], _size_key(g[2])),
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
        benchmarks = _order((c for c in columns if not c.startswith(DIV_PREFIX)), BENCH_ORDER)
        diversity = _order_diversity(c for c in columns if c.startswith(DIV_PREFIX))
        rows = _order((r for r, _ in cells), METHOD_ORDER)
        for row in rows:  # the paper averages over all benchmarks; a partial average would mislead
            values = [cells.get((row, b)) for b in benchmarks]
            if benchmarks and all(values):
                cells[(row, "average")] = Cell(statistics.fmean(c.mean for c in values), 0.0, min(c.n for c in values))
        datasets = {r: sorted({o.dataset for o in members if o.row == r and o.dataset}) for r in rows}
        tables.append(Table(group, rows, benchmarks, diversity, cells, {r: d for r, d in datasets.items() if d}))
    return tables


def row_label(row: str) -> str:
    base, _, rest = row.partition(" (")
    return METHOD_LABEL.get(base, base) + (f" ({rest}" if rest else "")


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


# ----------------------------------------------------------------------------------------------- paper
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


# ----------------------------------------------------------------------------------------------- plots
def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "x"


def _save(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


Line = tuple[str, list[tuple[int, float]], str, str]  # (label, [(size, value)], line style, colour)


def _colour(row: str) -> str:
    """One colour per method in every panel and figure (matplotlib's cycle, indexed by METHOD_ORDER)."""
    return f"C{_rank(row, METHOD_ORDER)[0] % 10}"


def _curves(points: list[Obs]) -> dict[str, list[tuple[int, float]]]:
    """row -> [(size, mean over runs)] sorted by size."""
    per: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
    for o in points:
        per[(o.row, o.x or 0)][o.source] = o.value
    lines: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for (row, x), vals in sorted(per.items(), key=lambda kv: kv[0][1]):
        lines[row].append((x, statistics.fmean(vals.values())))
    return dict(sorted(lines.items(), key=lambda kv: _rank(kv[0], METHOD_ORDER)))


def _figure(panels: dict[str, list[Line]], hlines: dict[str, float], title: str, ylabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # headless: reports are built on clusters and in CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False, layout="constrained")
    for ax, (panel, lines) in zip(axes[0], panels.items(), strict=True):
        for label, points, style, colour in lines:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, style, label=label, color=colour, alpha=0.6 if style.startswith("x") else 1.0)
        if panel in hlines:
            ax.axhline(hlines[panel], ls=":", color="grey", label="zero-shot")
        ax.set_xscale("log")
        ax.set(xlabel="training records", ylabel=ylabel, title=panel)
        ax.grid(alpha=0.3)
    handles: dict[str, Any] = {}
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=min(len(handles), 4) or 1)
    fig.suptitle(title)
    _save(fig, path)
    plt.close(fig)


def scaling_plots(obs: list[Obs], paper: Paper, out: Path) -> list[Path]:
    """Accuracy vs size per (generator, model) and diversity vs size per generator; log x; one line per
    method (mean over seeds), the paper's curve dashed where it has one, zero-shot dotted. Only where
    runs exist at two or more sizes."""
    sized = [o for o in obs if o.x is not None and " (" not in o.row]
    made: list[Path] = []
    accuracy = [o for o in sized if not o.column.startswith(DIV_PREFIX)]
    for gen, model in sorted({(o.generator, o.model) for o in accuracy if o.generator != ANY}):
        points = [o for o in accuracy if o.model == model and o.generator in (gen, ANY)]
        if len({o.x for o in points}) < 2:
            continue
        panels: dict[str, list[Line]] = {}
        for bench in _order({o.column for o in points}, BENCH_ORDER):
            lines: list[Line] = []
            for row, line in _curves([o for o in points if o.column == bench]).items():
                lines.append((row_label(row), line, "o-", _colour(row)))
                ref = sorted((k[4], v) for k, v in paper.scaling.items() if k[:4] == (gen, model, row, bench))
                if ref:
                    lines.append((f"{row_label(row)} (paper)", ref, "x--", _colour(row)))
            panels[bench] = lines
        zero = [o for o in obs if o.row == "zero_shot" and o.model == model]
        hlines = {b: statistics.fmean(o.value for o in zero if o.column == b) for b in panels
                  if any(o.column == b for o in zero)}
        path = out / f"scaling_accuracy_{_safe(gen)}_{_safe(model)}.png"
        _figure(panels, hlines, f"accuracy vs data size: generator {gen}, fine-tuned {model}", "accuracy (%)", path)
        made.append(path)

    diversity = [o for o in sized if o.column.startswith(DIV_PREFIX)]
    for gen in sorted({o.generator for o in diversity if o.generator != ANY}):
        points = [o for o in diversity if o.generator in (gen, ANY)]
        if len({o.x for o in points}) < 2:
            continue
        panels = {
            column: [(row_label(r), line, "o-", _colour(r))
                     for r, line in _curves([o for o in points if o.column == column]).items()]
            for column in _order_diversity({o.column for o in points})
        }
        path = out / f"scaling_diversity_{_safe(gen)}.png"
        _figure(panels, {}, f"diversity vs data size: generator {gen} (lower = more diverse)",
                "mean cosine similarity", path)
        made.append(path)
    return made


def _record_text(record: dict[str, Any], field: str) -> str:
    """The text the diversity metrics measure (config diversity.text: prompt | completion | both)."""
    if field == "both":
        return f"{record.get('prompt', '')}\n{record.get('completion', '')}"
    return str(record.get(field, ""))


def _embeddings(run: Run, data: Path) -> Any:
    """Embeddings of a run's records for the t-SNE: the diversity stage's cached file when one exists
    for exactly these texts, else a sample of TSNE_MAX_PER_METHOD embedded now (cached in the store)."""
    import numpy as np

    from treesynth.metrics.diversity import sample_indices
    from treesynth.metrics.embed import cache_key, cached_embeddings

    field = str(run.cfg("diversity.text", "prompt"))
    model = str(run.cfg("diversity.embedding_model", "embedded"))
    texts = [_record_text(r, field) for r in iter_jsonl(data / "data.jsonl")]
    if not texts:
        return np.zeros((0, 1), dtype=np.float32)
    keep = sample_indices(len(texts), TSNE_MAX_PER_METHOD, 0)
    div_dir = (run.summary.get("artifacts") or {}).get("diversity")
    key = cache_key(texts, model)
    for folder in ([Path(div_dir), Path(div_dir) / "embeddings"] if div_dir else []):
        if (folder / f"{key}.f16.npy").exists():
            return np.load(folder / f"{key}.f16.npy")[keep]
    store = Path(str(run.cfg("paths.artifacts", data.parent.parent))) / "embeddings"
    return cached_embeddings([texts[i] for i in keep], model, store)[0]


def tsne_figures(runs: list[Run], out: Path) -> tuple[list[Path], str | None]:
    """t-SNE of each method's data per (generator, task), at the size with the most methods (vanilla
    included). Uses treesynth.metrics.plots / embed; returns (figures, why none were made)."""
    try:
        from treesynth.metrics.plots import plot_tsne
    except ImportError as e:
        return [], f"t-SNE skipped: {e}"
    by_key: dict[tuple[str, str, Any], dict[str, tuple[Run, Path]]] = defaultdict(dict)
    for run in runs:
        data_dir = (run.summary.get("artifacts") or {}).get("synthesize")
        if data_dir and (Path(data_dir) / "data.jsonl").exists():
            method = str(run.cfg("method.name", "?"))
            gen = ANY if method == "human" else generator_name(run)
            by_key[(gen, str(run.cfg("task.name", "?")), run.cfg("data.size"))][method] = (run, Path(data_dir))
    made: list[Path] = []
    for gen, task in sorted({(g, t) for g, t, _ in by_key if g != ANY}):
        sizes = {s for g, t, s in by_key if g == gen and t == task}
        size = max(sizes, key=lambda s: (len(by_key[(gen, task, s)]) + len(by_key.get((ANY, task, s), {})), s or 0))
        methods = {**by_key.get((ANY, task, size), {}), **by_key[(gen, task, size)]}
        groups = {row_label(m): _embeddings(run, data) for m, (run, data) in sorted(methods.items(),
                                                                                    key=lambda kv: _rank(kv[0], METHOD_ORDER))}
        groups = {k: v for k, v in groups.items() if len(v)}
        if groups:
            path = out / f"tsne_{_safe(gen)}_{_safe(task)}.png"
            plot_tsne(groups, path, title=f"t-SNE of {task} data ({size} records), generator {gen}")
            made.append(path)
    if not made:
        return [], "t-SNE skipped: no run's synthesize artifact (data.jsonl) is reachable from here"
    return made, None


# ----------------------------------------------------------------------------------------------- report
def build_report(root: str | Path, out: str | Path, paper_dir: Path = PAPER_DIR, tsne: bool = True,
                 note: str | None = None) -> Path:
    """Write the report for every run under `root` into `out`; returns the path of report.md.
    `note` is printed under the title (e.g. how the runs differ from the paper's setting)."""
    runs, skipped = load_runs(root)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    obs = [o for run in runs for o in observations(run)]
    tables = build_tables(obs)
    paper = Paper.load(paper_dir)

    md = [f"# Report: {len(runs)} run(s) under `{root}`", ""]
    if note:
        md += [f"> {line}" if line.strip() else ">" for line in note.strip().splitlines()] + [""]
    md += ["Accuracy in %, headline metric per benchmark; diversity = mean pairwise cosine similarity "
          "(lower is more diverse). `(n=k)`: mean over k runs (seeds). `-`: no run produced that cell.", ""]
    table_rows, cell_rows, cmp_rows = [], [], []
    compared: set[tuple] = set()
    all_columns = [*_order({c for t in tables for c in t.benchmarks}, BENCH_ORDER), "average",
                   *_order_diversity(c for t in tables for c in t.diversity)]
    for t in tables:
        md += [f"## {group_title(t.group)}", ""]
        md.append(markdown_table(["method", *(BENCH_LABEL.get(c, c) for c in t.columns)],
                                 [[row_label(r), *(fmt(t.cells.get((r, c)), c) for c in t.columns)] for r in t.rows]))
        md.append("")
        for r in t.rows:
            data = t.datasets.get(r, [])
            table_rows.append([*t.group, r, *(_num(t.cells.get((r, c))) for c in all_columns), ";".join(data),
                               ";".join(e["repo"] for d in data for e in read_exports(d) if e.get("to") == "hub")])
            for c in t.columns:
                cell = t.cells.get((r, c))
                if cell is not None:
                    cell_rows.append([*t.group, r, c, round(cell.mean, 4), round(cell.std, 4), cell.n])
                ref = paper.lookup(t.group, r, c)
                # cells shown in several groups (zero-/few-shot: any size; diversity: any model): compare once
                where = (t.group[0], t.group[1], ANY) if r in ("zero_shot", "few_shot") else t.group
                where = (where[0], ANY, where[2]) if c.startswith(DIV_PREFIX) else where
                if (cell is not None or ref is not None) and (*where, r, c) not in compared:
                    compared.add((*where, r, c))
                    delta = round(cell.mean - ref, 2) if cell is not None and ref is not None else ""
                    cmp_rows.append([*where, r, c, _num(cell), "" if ref is None else ref, delta])

    matched = [r for r in cmp_rows if r[5] != "" and r[6] != ""]  # the CSV also lists one-sided cells
    md += ["## Side by side with the paper", ""]
    if matched:
        md.append(markdown_table(
            ["generator", "fine-tuned", "size", "method", "column", "ours", "paper", "ours - paper"],
            [[*r[:3], row_label(r[3]), r[4], _show(r[5]), _show(r[6]), _show(r[7])] for r in matched]))
    else:
        md.append("No run matches a configuration the paper reports (its generators: GPT-4o, Llama-3.3-70B, "
                  "Qwen2.5-72B; fine-tuned: llama3_1_8b, qwen2_5_7b; data at human-set size or the scaling sizes).")
    md.append("")

    md += dataset_links(tables)
    md += cost_section(runs)
    figures = scaling_plots(obs, paper, out)
    tsne_made, tsne_note = tsne_figures(runs, out) if tsne else ([], "t-SNE skipped: --no-tsne")
    md += ["## Figures", ""]
    md += [f"![{p.stem}]({p.name})" for p in [*figures, *tsne_made]]
    if not figures:
        md.append("Scaling plots: need runs at two or more data sizes.")
    if tsne_note:
        md.append(tsne_note)
    if skipped:
        md += ["", "## Skipped", "", *(f"- {s}" for s in skipped)]

    atomic_write_text(out / "table.csv", to_csv(["generator", "model", "size", "method", *all_columns, "datasets",
                                                 "hub"], table_rows))
    atomic_write_text(out / "cells.csv", to_csv(["generator", "model", "size", "method", "column", "mean", "std", "n"],
                                                cell_rows))
    atomic_write_text(out / "paper_comparison.csv",
                      to_csv(["generator", "model", "size", "method", "column", "ours", "paper", "ours_minus_paper"],
                             cmp_rows))
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    return out / "report.md"


def cost_section(runs: list[Run]) -> list[str]:
    """Teacher + generator dollars per synthesized dataset (each synthesize artifact once, however many
    runs trained on it): generator, method, size, records, $ (stage metric `cost_usd`)."""
    seen: dict[str, list[Any]] = {}
    for run in runs:
        metrics = (run.summary.get("stages") or {}).get("synthesize") or {}
        if not _is_number(metrics.get("cost_usd")):
            continue
        key = str((run.summary.get("artifacts") or {}).get("synthesize") or run.path)
        method = str(run.cfg("method.name", "?"))
        gen = ANY if method == "human" else generator_name(run)
        seen.setdefault(key, [gen, method, str(run.cfg("data.size")), str(metrics.get("records", "-")),
                              f"{float(metrics['cost_usd']):.2f}"])
    if not seen:
        return []
    ordered = sorted(seen.values(), key=lambda r: (r[0], _rank(r[1], METHOD_ORDER), _size_key(r[2])))
    rows = [[gen, row_label(method), *rest] for gen, method, *rest in ordered]
    return ["## Cost of the data", "", markdown_table(["generator", "method", "size", "records", "cost ($)"], rows), ""]


def dataset_links(tables: list[Table]) -> list[str]:
    """Report section: each row's synthetic data (its artifact folder) and where it was exported
    (exports.json, written by `python -m treesynth.export`)."""
    rows = []
    for t in tables:
        for r in t.rows:
            for d in t.datasets.get(r, []):
                exported = [f"[{e['repo']}]({e.get('url') or hub_url(e['repo'])})" if e.get("to") == "hub"
                            else f"`{e.get('path')}`" for e in read_exports(d)]
                rows.append([group_title(t.group), row_label(r), f"`{d}`", ", ".join(exported) or "-"])
    if not rows:
        return []
    return ["## Datasets", "", "Each row's synthetic data (artifact folder) and its exports "
            "(`python -m treesynth.export <artifact> --to hub --repo user/name`).", "",
            markdown_table(["group", "method", "dataset", "exported to"], rows), ""]


def _num(cell: Cell | None) -> str | float:
    return "" if cell is None else round(cell.mean, 4)


def _show(v: Any) -> str:
    return "-" if v == "" or v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m treesynth.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", help="folder holding run outputs (Hydra outputs/ or multirun/)")
    parser.add_argument("--name", help="report name: writes results/<name>/ (default: the folder's name)")
    parser.add_argument("--results", default="results", help="results root (default: ./results)")
    parser.add_argument("--paper", default=str(PAPER_DIR), help="folder of the paper's CSVs")
    parser.add_argument("--no-tsne", action="store_true", help="skip the t-SNE figures (embedding is slow)")
    parser.add_argument("--note", help="text shown under the report's title (e.g. how the setting differs from the paper's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    name = args.name or Path(args.dir).resolve().name
    try:
        path = build_report(args.dir, Path(args.results) / name, Path(args.paper), tsne=not args.no_tsne,
                            note=args.note)
    except TreesynthError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
