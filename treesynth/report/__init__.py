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

Modules: collect (runs -> cells), headline (which metric a benchmark shows), layout (row and column
names and order), tables (cells -> tables, Markdown, CSV), paper (results/paper/*.csv), plots (scaling
figures), embeddings (t-SNE figures), build (report.md and the CSVs), cli (the command line).
"""

from __future__ import annotations

from treesynth.report.build import build_report, cost_section, dataset_links
from treesynth.report.cli import main
from treesynth.report.collect import Obs, Run, load_runs, observations
from treesynth.report.headline import as_percent, headline_metric
from treesynth.report.paper import PAPER_DIR, Paper
from treesynth.report.tables import Cell, Table, build_tables

__all__ = ["PAPER_DIR", "Cell", "Obs", "Paper", "Run", "Table", "as_percent", "build_report", "build_tables",
           "cost_section", "dataset_links", "headline_metric", "load_runs", "main", "observations"]
