"""Plan mode (`method.plan_only=true`): what a synthesis would ask for and cost, with nothing sent. The
method estimates its calls and tokens (`Method.plan`); this prices them with the generator's and teacher's
prices (treesynth/llm/client.py `price_of`) and writes plan.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from treesynth.errors import TreesynthError
from treesynth.io import atomic_write_json
from treesynth.llm import price_of
from treesynth.methods import Method, MethodEnv
from treesynth.tasks import TaskSpec

# Plan mode's "likely" dollars assume answers fill this share of their max_tokens (the upper bound: all).
LIKELY_FILL = 0.4


def _request_tokens(request: Any) -> int:
    return sum(len(content) for _, content in request.messages) // 4 + 16  # about 4 characters per token


def plan_cost(estimate: dict[str, Any], cfg: DictConfig, task: TaskSpec) -> dict[str, Any]:
    """Dollars for a plan's calls: generation calls (tree + leaves, or the baselines' calls) priced with
    llm's price, teacher calls with the teacher's. Input tokens are estimated from this task's rendered
    requests; output tokens are the plan's max_tokens bounds (`upper_bound_usd`) or LIKELY_FILL of them
    (`likely_usd`). In batch mode (llm.runtime.mode=batch) every call but tree building is priced at the
    batch discount."""
    tree = estimate.get("tree") or {}
    k = int(estimate.get("samples_per_call") or task.profile.samples_per_call)
    gen_calls_max = int(tree.get("calls_max", 0)) + int(estimate.get("leaf_calls", 0)) or int(
        (estimate.get("generation_calls") or {}).get("expected", 0))
    gen_out_max = int(tree.get("completion_tokens_max", 0)) + int(estimate.get("leaf_completion_tokens_max", 0)) or (
        gen_calls_max * task.sample_max_tokens(k))
    teacher_calls = estimate.get("teacher_calls") or {}
    t_expected = int(teacher_calls.get("expected", 0))
    t_max = int(teacher_calls.get("max", t_expected * (1 + task.teacher_profile.response_retries)))
    t_out_max = int(estimate.get("teacher_completion_tokens_max", t_max * task.teacher_profile.response_max_tokens))
    sample = {f.name: "word " * 40 for f in task.fields}  # a typical ~200-character field
    gen_in = _request_tokens(task.sample_request([], k, seed=0, temperature=1.0, max_tokens=1))
    t_in = _request_tokens(task.response_request(task.build_prompt(sample), sample, seed=0))
    gen_price = price_of(cfg.llm)
    t_price = price_of(cfg.teacher) if cfg.get("teacher") is not None else gen_price
    tree_calls, tree_out = int(tree.get("calls_max", 0)), int(tree.get("completion_tokens_max", 0))

    def generation(fill: float) -> float:  # tree building online, the rest batchable
        return (gen_price.cost(tree_calls * gen_in, tree_out * fill)
                + gen_price.cost((gen_calls_max - tree_calls) * gen_in, (gen_out_max - tree_out) * fill, batched=True))

    upper = generation(1.0) + t_price.cost(t_max * t_in, t_out_max, batched=True)
    likely = generation(LIKELY_FILL) + t_price.cost(
        t_expected * t_in, t_expected * task.teacher_profile.response_max_tokens * LIKELY_FILL, batched=True)
    return {"likely_usd": round(likely, 2), "upper_bound_usd": round(upper, 2),
            "price_per_million_tokens": {"generator": gen_price.as_dict(), "teacher": t_price.as_dict()},
            "prompt_tokens_per_call": {"generation": gen_in, "teacher": t_in}, "likely_fill": LIKELY_FILL}


def plan(cls: type[Method], cfg: DictConfig, task: Any, size: int, out: Path) -> dict[str, Any]:
    """method.plan_only: the method's estimate of calls and tokens for `size` records, priced, in plan.json."""
    env = MethodEnv(llm=None, task=task, cfg=cfg.method, seed=int(cfg.seed), work_dir=out, root_cfg=cfg)  # type: ignore[arg-type]
    estimate = cls(env).plan(size)
    if estimate is None:
        raise TreesynthError(f"method {cfg.method.name!r} has no plan mode; drop method.plan_only")
    estimate["cost"] = plan_cost(estimate, cfg, task)
    atomic_write_json(out / "plan.json", estimate)
    print(f"[plan] {cfg.method.name} on {task.name}, data.size={size}: nothing was run")
    print(json.dumps(estimate, indent=2))
    c = estimate["cost"]
    print(f"[plan] expected cost: ${c['likely_usd']:,.2f} (upper bound ${c['upper_bound_usd']:,.2f}) at "
          f"${c['price_per_million_tokens']['generator']['input']:g}/${c['price_per_million_tokens']['generator']['output']:g}"
          f" per million input/output tokens ({cfg.llm.get('model')})"
          + (f"; batch mode: all but tree building at {d:.0%} off" if (d := price_of(cfg.llm).batch_discount) else ""))
    return {"plan": estimate}
