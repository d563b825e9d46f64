"""The report: report.md (tables, the side-by-side with the paper, datasets, cost, figures) and its CSVs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from treesynth.export import hub_url, read_exports
from treesynth.io import atomic_write_text
from treesynth.report.collect import Run, generator_name, load_runs, observations
from treesynth.report.embeddings import tsne_figures
from treesynth.report.headline import is_number
from treesynth.report.layout import (
    ANY,
    BENCH_LABEL,
    DIV_PREFIX,
    method_rank,
    order_benchmarks,
    order_diversity,
    row_label,
    size_key,
)
from treesynth.report.paper import PAPER_DIR, Paper
from treesynth.report.plots import scaling_plots
from treesynth.report.tables import Cell, Table, build_tables, fmt, group_title, markdown_table, to_csv


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
    all_columns = [*order_benchmarks({c for t in tables for c in t.benchmarks}), "average",
                   *order_diversity(c for t in tables for c in t.diversity)]
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
        if not is_number(metrics.get("cost_usd")):
            continue
        key = str((run.summary.get("artifacts") or {}).get("synthesize") or run.path)
        method = str(run.cfg("method.name", "?"))
        gen = ANY if method == "human" else generator_name(run)
        seen.setdefault(key, [gen, method, str(run.cfg("data.size")), str(metrics.get("records", "-")),
                              f"{float(metrics['cost_usd']):.2f}"])
    if not seen:
        return []
    ordered = sorted(seen.values(), key=lambda r: (r[0], method_rank(r[1]), size_key(r[2])))
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

