"""lm-eval wrapper: per-run task YAMLs (hub or local data), one `simple_evaluate` call, eval.json rows.

Two prompt styles (config `eval.style`):
- `chat`: our tasks in evaluation/tasks/ (zero-shot, chat template): the format a fine-tuned model was
  trained on, with extraction of the endings synthesized completions use.
- `builtin`: lm-eval's own task YAMLs (the paper's few-shot rows), included by path.
Which tasks and data a benchmark uses comes from the registry (treesynth/benchmarks.py, conf/benchmark/).
Data comes from the hub by default. When `data.dir` (env TREESYNTH_DATA_DIR) is set, the generated YAML
includes the task YAML by path and overrides `dataset_path: json` + `dataset_kwargs.data_files`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evaluation.sandbox import require_sandbox
from treesynth.benchmarks import (
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

log = logging.getLogger("treesynth")

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


def plan_benchmark(bench: str, style: str, variant: str | None, data_dir: Path | None, work: Path,
                   answer_format: str | None = None) -> BenchmarkPlan:
    """Which task YAML(s) evaluate `bench` (a registry entry), and where their data comes from.
    `variant`: the test set variant (eval.math_split for benchmarks that have variants); `answer_format`:
    the evaluated task's (a user benchmark without an extractor reads answers with it)."""
    if style not in STYLES:
        raise TreesynthError(f"eval.style={style!r}: choose one of {STYLES}")
    b = benchmark(bench)
    if b.kind == "lm_eval":
        return _plan_lm_eval(b, data_dir)
    if b.kind == "user":
        return _plan_user(b, data_dir, work, answer_format)
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


def _plan_user(b: Any, data_dir: Path | None, work: Path, answer_format: str | None) -> BenchmarkPlan:
    """A user benchmark: its rows become {question (the rendered prompt), answer, scoring spec} in one
    JSONL under the eval folder, evaluated by the generic treesynth_user task."""
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


def _plan_lm_eval(b: Any, data_dir: Path | None) -> BenchmarkPlan:
    """An lm-eval task (or a group of tasks) by name, scored with lm-eval's own config. Local data:
    `<data.dir>/<task>/<split>.jsonl` for the splits the task reads (test split required)."""
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


@contextmanager
def _code_env(enabled: bool, timeout_s: float, memory_mb: int, sandbox: str) -> Iterator[None]:
    """HF_ALLOW_CODE_EVAL and the sandbox settings only while a code benchmark runs."""
    keys = {"TREESYNTH_CODE_TIMEOUT_S": str(timeout_s), "TREESYNTH_CODE_MEMORY_MB": str(memory_mb),
            "TREESYNTH_CODE_SANDBOX": sandbox}
    if enabled:
        keys["HF_ALLOW_CODE_EVAL"] = "1"
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def lora_rank(adapter_dir: str | Path) -> int:
    cfg_path = Path(adapter_dir) / "adapter_config.json"
    if not cfg_path.exists():
        raise TreesynthError(f"{cfg_path} missing: the adapter directory must hold a PEFT adapter")
    return int(json.loads(cfg_path.read_text())["r"])


def model_spec(backend: str, model_path: str, adapter: str | None, dtype: str, device: str) -> tuple[str, dict]:
    """lm-eval model name and model_args for the hf or vllm backend (LoRA adapter optional)."""
    if backend == "hf":
        args: dict[str, Any] = {"pretrained": model_path, "dtype": dtype, "device": device}
        if adapter:
            args["peft"] = str(adapter)
            args["tokenizer"] = str(adapter)  # saved with the adapter: same chat template as in training
        return "hf", args
    if backend == "vllm":
        args = {"pretrained": model_path, "dtype": dtype}
        if adapter:
            # lm-eval turns on enable_lora when lora_local_path is set; the rank must fit max_lora_rank.
            args.update(lora_local_path=str(adapter), max_lora_rank=max(16, lora_rank(adapter)))
        return "vllm", args
    raise TreesynthError(f"eval.backend={backend!r}: choose hf or vllm")


def run_eval(eval_cfg: Any, benchmarks: list[str], model_path: str, adapter: str | None,
             data_dir: str | None, out_dir: Path, lm: Any = None, answer_format: str | None = None) -> dict:
    """Evaluate one model on `benchmarks`; returns the eval.json dict (not yet written).
    `lm`: an lm-eval LM object to use instead of loading `model_path` (tests of the scoring logic);
    `answer_format`: the task's `answer.format` (the default extractor of a user benchmark)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    if not benchmarks:
        raise TreesynthError("task.benchmarks is empty: name at least one benchmark (README, 'Benchmarks')")
    data = Path(data_dir).expanduser() if data_dir else None
    if data is not None and not data.is_dir():
        raise TreesynthError(f"data.dir={data} is not a directory (set TREESYNTH_DATA_DIR or data.dir correctly, or null for the hub)")
    style = eval_cfg.style
    task_dir = out_dir / "tasks"
    plans = [plan_benchmark(b, style, eval_cfg.math_split, data, task_dir, answer_format) for b in benchmarks]
    write_task_yamls(plans, task_dir)
    chat = style == "chat" if eval_cfg.apply_chat_template is None else bool(eval_cfg.apply_chat_template)
    model, model_args = (lm, None) if lm is not None else model_spec(
        eval_cfg.backend, model_path, adapter, eval_cfg.dtype, eval_cfg.runtime.device)
    code = any(p.code for p in plans)
    sandbox = str(eval_cfg.sandbox)
    if code:
        require_sandbox(sandbox)  # no isolation, no code evaluation (unless guard_only was chosen)
        if sandbox == "guard_only":
            log.warning("eval.sandbox=guard_only: model-written code runs without OS isolation")
    settings = {
        "style": style, "backend": eval_cfg.backend, "limit": eval_cfg.limit, "num_fewshot": eval_cfg.num_fewshot,
        "apply_chat_template": chat, "max_gen_toks": eval_cfg.max_gen_toks, "dtype": eval_cfg.dtype,
        "do_sample": False,
    }
    with _code_env(code, eval_cfg.code_timeout_s, eval_cfg.code_memory_mb, sandbox), _hub_errors(data):
        res = simple_evaluate(
            model=model,
            model_args=model_args,
            tasks=[p.entry for p in plans],
            task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
            num_fewshot=eval_cfg.num_fewshot,
            batch_size=eval_cfg.runtime.batch_size,
            limit=eval_cfg.limit,
            apply_chat_template=chat,
            gen_kwargs={"max_gen_toks": int(eval_cfg.max_gen_toks)},
            confirm_run_unsafe_code=code,
            log_samples=True,
            bootstrap_iters=0,
        )
    out: dict[str, Any] = {"benchmarks": {}, "model": model_path, "adapter": adapter}
    for plan in plans:
        metrics, n = collect_metrics(res, plan)
        primary = headline_key(plan.metric, metrics)
        out["benchmarks"][plan.benchmark] = {
            "metrics": metrics, "n": n, **({"primary": primary} if primary else {}),
            "settings": {**settings, "tasks": [t.name for t in plan.tasks], "data": plan.source, **plan.settings,
                         **({"sandbox": sandbox} if plan.code else {})},
        }
        _write_samples(res, plan, out_dir / f"samples_{plan.benchmark}.jsonl")
    return out


def headline_key(metric: str | None, metrics: dict[str, float]) -> str | None:
    """eval.json `primary`: the metric's own key when there is exactly one for it at the top level (an lm-eval
    filter we do not rank, e.g. bbh's `exact_match_get_answer`), else its bare name (the report then prefers
    the strict filter)."""
    if metric is None or metric in metrics:
        return metric
    keys = [k for k in metrics if "/" not in k and k.startswith(metric + "_")]
    return keys[0] if len(keys) == 1 else metric


@contextmanager
def _hub_errors(data: Path | None) -> Iterator[None]:
    """A benchmark on the hub that cannot be reached is a setup problem: say how to fix it in one line."""
    try:
        yield
    except ConnectionError as e:
        where = f"data.dir={data} lacks it and " if data else ""
        raise TreesynthError(
            f"benchmark data unavailable: {where}{str(e).splitlines()[0]}; point TREESYNTH_DATA_DIR or data.dir "
            "at a local copy (see README, 'Offline machines')"
        ) from e


def collect_metrics(res: dict, plan: BenchmarkPlan) -> tuple[dict[str, float], int]:
    """lm-eval's `metric,filter` keys -> plain names (filter appended unless it is `none`); n = items."""
    results = res["results"]
    names = [plan.entry] + ([t.name for t in plan.tasks] if plan.group else [])
    metrics: dict[str, float] = {}
    for task in names:
        prefix = "" if task == plan.entry else task.removeprefix(plan.entry + "_") + "/"
        for key, value in results.get(task, {}).items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            label = metric if filt == "none" else f"{metric}_{filt.replace('-', '_')}"
            metrics[prefix + label] = float(value)
    n = sum(int(res["n-samples"][t.name]["effective"]) for t in plan.tasks)
    return metrics, n


def _write_samples(res: dict, plan: BenchmarkPlan, path: Path) -> None:
    rows = []
    for t in plan.tasks:
        for s in res.get("samples", {}).get(t.name, []):
            rows.append({"task": t.name, "doc_id": s["doc_id"], "prompt": _prompt_text(s),
                         "response": s["resps"][0][0] if s.get("resps") else None,
                         "target": s.get("target"),
                         **{k: s[k] for k in s if k in ("exact_match", "flexible_match", "pass_at_1", "acc")}})
    write_jsonl(path, rows)


def _prompt_text(sample: dict) -> Any:
    args = sample.get("arguments")
    try:
        return args[0][0] if isinstance(args, list) else args["gen_args_0"]["arg_0"]
    except (KeyError, IndexError, TypeError):
        return None
