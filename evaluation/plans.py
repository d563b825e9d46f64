"""Benchmark plans: which lm-eval task YAML(s) evaluate a benchmark, and where their data comes from.

A benchmark is data (treesynth/benchmarks.py, conf/benchmark/); its `kind` picks the plan builder from
`PLANNERS`: `builtin` (an entry with `tasks:`, our task YAMLs), `user` (an entry without: its rows
through the generic treesynth_user task) and `lm_eval` (any task or group lm-eval knows by name).
evaluation/harness.py writes the plans' YAMLs and runs them in one lm-eval call.

Two prompt styles for the built-ins (config `eval.style`):
- `chat`: our tasks in evaluation/tasks/ (zero-shot, chat template): the format a fine-tuned model was
  trained on, with extraction of the endings synthesized completions use.
- `builtin`: lm-eval's own task YAMLs (the paper's few-shot rows), included by path.
Data comes from the hub by default. When `data.dir` (env TREESYNTH_DATA_DIR) holds a test set, the
generated YAML includes the task YAML by path and overrides `dataset_path: json` + `dataset_kwargs.data_files`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from treesynth.benchmarks import (
    Benchmark,
    Source,
    benchmark,
    lm_eval_leaves,
    lm_eval_splits,
    lm_eval_test_split,
    lm_eval_yaml,
)
from treesynth.datasets import DataUnavailable, load_source, local_path
from treesynth.errors import TreesynthError
from treesynth.io import atomic_write_text, write_jsonl
from treesynth.prompts import fill
from treesynth.registry import Registry

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
USER_TASK = TASKS_DIR / "treesynth_user.yaml"  # every user benchmark: question/answer columns, scored per row
STYLES = ("chat", "builtin")


def _task_yaml(ref: str) -> Path:
    """A registry `tasks:` reference: ours (evaluation/tasks/) or `lm_eval:<path>` (lm-eval's tasks folder)."""
    if ref.startswith("lm_eval:"):
        import lm_eval.tasks

        return Path(lm_eval.tasks.__file__).resolve().parent / ref.removeprefix("lm_eval:")
    return TASKS_DIR / ref


@dataclass
class TaskSpec:
    """One generated lm-eval task: a YAML to include plus the keys it overrides."""

    name: str
    include: Path
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchmarkPlan:
    benchmark: str
    tasks: list[TaskSpec]
    group: str | None = None  # when the benchmark is several tasks (SimpleToM's three question types)
    source: str = "hub"
    metric: str | None = None  # the headline metric (registry `metric`)
    group_metrics: list[dict] = field(default_factory=list)  # the group's aggregate_metric_list
    code: bool = False  # runs model-written code
    settings: dict[str, Any] = field(default_factory=dict)  # benchmark-specific eval.json settings

    @property
    def entry(self) -> str:
        return self.group or self.tasks[0].name


def _json_source(files: dict[str, Path]) -> dict[str, Any]:
    return {"dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": {k: str(v) for k, v in files.items()}}}


def _materialize(src: Source, data_dir: Path | None, dst: Path) -> Path | None:
    """The source's local rows (filtered, projected) as one JSONL under the eval folder; None: no local file."""
    if local_path(src, data_dir, use_env=False) is None:
        return None
    write_jsonl(dst, load_source(src, data_dir, use_env=False))
    return dst


def _hub_keys(src: Source, config: str | None = None) -> dict[str, Any]:
    hub = src.hub or {}
    return {"dataset_path": hub.get("path"), "dataset_name": config if config is not None else hub.get("name"),
            "test_split": hub.get("split", "test")}


@dataclass(frozen=True)
class PlanInput:
    """What a plan builder is given besides the benchmark: the eval settings and where to write data."""

    style: str  # eval.style
    variant: str | None  # eval.math_split, for benchmarks that have test set variants
    data_dir: Path | None  # data.dir: local copies of the test sets (None: the hub)
    work: Path  # the evaluation's task folder (materialized rows go under data/)
    answer_format: str | None  # the evaluated task's: a user benchmark without an extractor reads answers with it


# benchmark kind (Benchmark.kind) -> "module:function(Benchmark, PlanInput) -> BenchmarkPlan"
PLANNERS = Registry("benchmark kind", "benchmark/<name>.yaml", {
    "builtin": "evaluation.plans:plan_builtin",
    "user": "evaluation.plans:plan_user",
    "lm_eval": "evaluation.plans:plan_lm_eval",
})


def plan_benchmark(bench: str, style: str, variant: str | None, data_dir: Path | None, work: Path,
                   answer_format: str | None = None) -> BenchmarkPlan:
    """The plan of `bench` (a registry entry), from the builder its kind names."""
    if style not in STYLES:
        raise TreesynthError(f"eval.style={style!r}: choose one of {STYLES}")
    b = benchmark(bench)
    return PLANNERS.load(b.kind)(b, PlanInput(style, variant, data_dir, work, answer_format))


def plan_builtin(b: Benchmark, p: PlanInput) -> BenchmarkPlan:
    """One of the repository's benchmarks: our task YAML for the style, local rows when data.dir has them
    (few-shot only with its split local too), else the hub; several parts or hub configs are a group."""
    bench, style, variant, data_dir, work = b.name, p.style, p.variant, p.data_dir, p.work
    name = f"ts_{bench}"
    ref = (b.spec.get("tasks") or {}).get(style)
    if ref is None:
        raise TreesynthError(f"eval.style={style} has no {bench} task here; use eval.style="
                             f"{' or '.join(sorted(b.spec.get('tasks') or {}))}")
    include = _task_yaml(ref)
    variants = b.variants()
    settings: dict[str, Any] = {}
    if variants:
        if variant not in ("test", *variants):
            raise TreesynthError(f"eval.math_split={variant!r}: choose one of {('test', *variants)}")
        settings["math_split"] = variant
    raw = b.spec["test"] if variant in (None, "test") or not variants else variants[variant]
    parts = b.test_parts(variant if variants else None)
    plan = BenchmarkPlan(bench, [], metric=b.metric, code=b.code, settings=settings)
    overrides = dict(raw.get("task_overrides") or {})
    if len(parts) == 1:
        src = parts[0].source
        fewshot = b.fewshot_source()
        test = _materialize(src, data_dir, work / "data" / f"{bench}_test.jsonl")
        train = _materialize(dataclasses.replace(fewshot, columns=src.columns), data_dir,
                             work / "data" / f"{bench}_train.jsonl") if fewshot and test else None
        if test is not None and (fewshot is None or train is not None):  # few-shot needs its split local too
            files = {"test": test, **({"train": train} if train else {})}
            splits = {"test_split": "test", **({"training_split": "train", "fewshot_split": "train"} if train else {})}
            plan.tasks = [TaskSpec(name, include, {**_json_source(files), **splits})]
            plan.source = "local"
            return plan
        if src.hub_configs:  # one hub config per part (the full MATH test set): a group over them
            # few-shot examples from each config's own train split
            shots = {"training_split": "train", "fewshot_split": "train"} if fewshot else {}
            plan.tasks = [TaskSpec(f"{name}_{c}", include, {**_hub_keys(src, c), **shots}) for c in src.hub_configs]
            plan.group = name
        else:
            plan.tasks = [TaskSpec(name, include, {**_hub_keys(src), **overrides})]
        return plan
    local = True
    for part in parts:
        test = _materialize(part.source, data_dir, work / "data" / f"{bench}_{part.short}.jsonl")
        local &= test is not None
        keys = {**_json_source({"test": test}), "test_split": "test"} if test else _hub_keys(part.source)
        plan.tasks.append(TaskSpec(f"{name}_{part.short}", include, keys))
    plan.group, plan.source = name, "local" if local else "hub"
    return plan


def plan_user(b: Benchmark, p: PlanInput) -> BenchmarkPlan:
    """A user benchmark: its rows become {question (the rendered prompt), answer, scoring spec} in one
    JSONL under the eval folder, evaluated by the generic treesynth_user task."""
    data_dir, work, answer_format = p.data_dir, p.work, p.answer_format
    spec = b.spec
    src = b.test_parts()[0].source
    try:
        rows = load_source(src, data_dir, use_env=False)
    except DataUnavailable as e:
        raise TreesynthError(f"benchmark {b.name!r}: {e}") from None
    qkey, akey = str(spec.get("question", "question")), str(spec.get("answer", "answer"))
    template = str(spec.get("prompt") or "{" + qkey + "}")
    out = []
    for i, r in enumerate(rows):
        if qkey not in r or akey not in r:
            raise TreesynthError(f"benchmark {b.name!r}: row {i + 1} of its test set lacks field "
                                 f"{qkey if qkey not in r else akey!r} (has {sorted(r)}); set question:/answer: in {b.file}")
        out.append({"question": fill(template, {k: str(v) for k, v in r.items()}), "answer": str(r[akey]),
                    "extract": b.extractor_spec(answer_format), "normalize": b.normalize, "metric": b.metric,
                    "tolerance": float(spec.get("tolerance", 0.0))})
    if not out:
        raise TreesynthError(f"benchmark {b.name!r}: its test set is empty")
    test = work / "data" / f"{b.name}_test.jsonl"
    write_jsonl(test, out)
    overrides: dict[str, Any] = {**_json_source({"test": test}), "test_split": "test"}
    if spec.get("until"):  # stop sequences; max_gen_toks is the run's (eval.max_gen_toks)
        overrides["generation_kwargs"] = {"until": [str(u) for u in spec["until"]], "do_sample": False}
    return BenchmarkPlan(b.name, [TaskSpec(f"ts_{b.name}", USER_TASK, overrides)],
                         source="local" if local_path(src, data_dir, use_env=False) else "hub",
                         metric="numeric_match" if b.metric == "numeric" else "exact_match")


def plan_lm_eval(b: Benchmark, p: PlanInput) -> BenchmarkPlan:
    """An lm-eval task (or a group of tasks) by name, scored with lm-eval's own config. Local data:
    `<data.dir>/<task>/<split>.jsonl` for the splits the task reads (test split required)."""
    data_dir = p.data_dir
    tasks, local = [], True
    for leaf, cfg in lm_eval_leaves(b.name, b.spec):
        files = {}
        for split in lm_eval_splits(cfg):
            path = (data_dir / leaf / f"{split}.jsonl") if data_dir else None
            if path is not None and path.is_file():
                files[split] = path
        test_split = lm_eval_test_split(cfg)
        overrides = _json_source(files) if test_split in files else {}
        if overrides:  # splits the task names but the folder lacks: none (zero-shot needs only the test split)
            overrides.update({k: None for k in ("training_split", "validation_split", "fewshot_split")
                              if cfg.get(k) and cfg[k] not in files})
        local &= bool(overrides)
        tasks.append(TaskSpec(f"ts_{leaf}", lm_eval_yaml(leaf), overrides))
    group = None
    group_metrics: list[dict] = []
    if b.spec.get("_lm_eval_kind") == "GROUP":
        group = f"ts_{b.name}"
        group_metrics = list(b.spec.get("aggregate_metric_list") or [])
    listed = group_metrics or list(b.spec.get("metric_list") or [])
    return BenchmarkPlan(b.name, tasks, group=group, source="local" if local else "hub",
                         metric=listed[0].get("metric") if listed else None, group_metrics=group_metrics,
                         code=bool(b.spec.get("unsafe_code")))


def write_task_yamls(plans: list[BenchmarkPlan], out: Path) -> None:
    """One YAML per task (include by absolute path + overrides) and one per group."""
    for plan in plans:
        for t in plan.tasks:
            doc = {"include": str(t.include), "task": t.name, **t.overrides}
            atomic_write_text(out / f"{t.name}.yaml", yaml.safe_dump(doc, sort_keys=False))
        if plan.group:
            metrics = plan.group_metrics or [{"metric": plan.metric, "aggregation": "mean", "weight_by_size": True}]
            group = {"group": plan.group, "task": [t.name for t in plan.tasks], "aggregate_metric_list": metrics,
                     "metadata": {"version": 1.0}}
            atomic_write_text(out / f"{plan.group}.yaml", yaml.safe_dump(group, sort_keys=False))


