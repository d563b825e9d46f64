"""Scaling figures: accuracy and diversity vs data size (log x), one line per method, the paper's curve
beside ours."""

from __future__ import annotations

import io
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from treesynth.io import atomic_write_bytes
from treesynth.report.collect import Obs
from treesynth.report.layout import ANY, DIV_PREFIX, method_rank, order_benchmarks, order_diversity, row_label
from treesynth.report.paper import Paper


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "x"


def _save(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


Line = tuple[str, list[tuple[int, float]], str, str]  # (label, [(size, value)], line style, colour)


def _colour(row: str) -> str:
    """One colour per method in every panel and figure (matplotlib's cycle, indexed by METHOD_ORDER)."""
    return f"C{method_rank(row)[0] % 10}"


def _curves(points: list[Obs]) -> dict[str, list[tuple[int, float]]]:
    """row -> [(size, mean over runs)] sorted by size."""
    per: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
    for o in points:
        per[(o.row, o.x or 0)][o.source] = o.value
    lines: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for (row, x), vals in sorted(per.items(), key=lambda kv: kv[0][1]):
        lines[row].append((x, statistics.fmean(vals.values())))
    return dict(sorted(lines.items(), key=lambda kv: method_rank(kv[0])))


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
        for bench in order_benchmarks({o.column for o in points}):
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
        path = out / f"scaling_accuracy_{safe_name(gen)}_{safe_name(model)}.png"
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
            for column in order_diversity({o.column for o in points})
        }
        path = out / f"scaling_diversity_{safe_name(gen)}.png"
        _figure(panels, {}, f"diversity vs data size: generator {gen} (lower = more diverse)",
                "mean cosine similarity", path)
        made.append(path)
    return made

