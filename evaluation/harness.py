"""lm-eval wrapper: the benchmarks' plans (evaluation/plans.py) as per-run task YAMLs, one
`simple_evaluate` call, eval.json rows (metrics, n, settings) and per-item samples.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from evaluation.plans import BenchmarkPlan, plan_benchmark, write_task_yamls
from evaluation.progress import counted_model
from evaluation.sandbox import require_sandbox
from treesynth.errors import TreesynthError
from treesynth.io import write_jsonl

log = logging.getLogger("treesynth")


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
             data_dir: str | None, out_dir: Path, lm: Any = None, answer_format: str | None = None,
             stage: str = "evaluate") -> dict:
    """Evaluate one model on `benchmarks`; returns the eval.json dict (not yet written).
    `lm`: an lm-eval LM object to use instead of loading `model_path` (tests of the scoring logic);
    `answer_format`: the task's `answer.format` (the default extractor of a user benchmark);
    `stage`: the name the progress lines carry (evaluation/progress.py)."""
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
    with (_code_env(code, eval_cfg.code_timeout_s, eval_cfg.code_memory_mb, sandbox), _hub_errors(data),
          counted_model(model, model_args, eval_cfg.runtime.batch_size, stage) as (loaded, progress)):
        res = simple_evaluate(
            model=loaded,
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
    out: dict[str, Any] = {"benchmarks": {}, "model": model_path, "adapter": adapter,
                           **({"progress": progress.totals()} if progress else {})}
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
