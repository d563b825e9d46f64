"""Collecting runs: every summary.json under a folder, and the table cells each run contributes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from treesynth.errors import TreesynthError
from treesynth.report.headline import as_percent, headline_metric, is_number
from treesynth.report.layout import ANY, DIV_PREFIX, DIVERSITY_METRIC, HUMAN


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
    if is_number(shots):
        return f"{int(shots)}-shot" if shots else ""
    return "builtin" if settings.get("style") == "builtin" else ""


def observations(run: Run) -> list[Obs]:
    """The table cells one run contributes."""
    stages = run.summary.get("stages") or {}
    artifacts = run.summary.get("artifacts") or {}
    method = str(run.cfg("method.name", "?"))
    model = str(run.cfg("model.name", "?"))
    data_size = run.cfg("data.size")
    x = int(data_size) if is_number(data_size) else None
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
    if is_number(div):
        column = DIV_PREFIX + str(run.cfg("task.name", "?"))
        out.append(Obs(gen, ANY, size, method, column, float(div), source("diversity"), x, dataset))
    return out

