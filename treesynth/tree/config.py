"""The tree builder's settings (`TreeConfig`: method.* of conf/method/treesynth.yaml, typed by
treesynth/settings/schema.py's `TreeShape`) and `plan`, the LLM calls and tokens they can cost."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from treesynth.settings import TreeShape, load
from treesynth.tasks import TaskSpec


@dataclass
class TreeConfig(TreeShape):
    """The tree settings as read from the method node: every value from the YAML (and the generator's
    profile through `${profile:...}`), none written here."""

    @classmethod
    def from_cfg(cls, method: DictConfig) -> TreeConfig:
        return load(method, cls, "method")

    def criterion_tokens(self) -> int:
        return self.max_tokens.criterion if self.criterion_mode == "stepwise" else self.max_tokens.one_call


def plan(tcfg: TreeConfig, task: TaskSpec, size: int) -> dict[str, Any]:
    """Expected LLM calls and tokens (upper bounds without retries) for the configured caps and size."""
    first = task.first_level if tcfg.fixed_first_level else None
    max_branch = min(tcfg.max_children, tcfg.max_values)
    node_calls = math.ceil(tcfg.pivots / tcfg.samples_per_call) + 1 + (
        tcfg.pivots if tcfg.criterion_mode == "stepwise" else 0
    ) + tcfg.coverage_rounds
    call_tokens = task.sample_max_tokens(tcfg.samples_per_call)
    node_tokens = (
        math.ceil(tcfg.pivots / tcfg.samples_per_call) * task.sample_max_tokens(min(tcfg.samples_per_call, tcfg.pivots))
        + tcfg.criterion_tokens()
        + (tcfg.pivots * tcfg.max_tokens.assign if tcfg.criterion_mode == "stepwise" else 0)
        + tcfg.coverage_rounds * tcfg.max_tokens.coverage
    )
    expanded, calls, tokens, width = 0, 0, 0, 1
    leaves = 1
    for depth in range(tcfg.max_depth):
        if expanded + width > tcfg.max_nodes:
            break
        branch = len(first["values"]) if (depth == 0 and first) else max_branch
        llm_nodes = 0 if (depth == 0 and first) else width
        expanded += width
        calls += llm_nodes * node_calls
        tokens += llm_nodes * node_tokens
        width *= branch
        leaves = width
    leaves = min(leaves, tcfg.max_nodes)
    calls = min(calls, tcfg.max_calls)
    leaf_calls = math.ceil(size / tcfg.samples_per_call) + min(leaves, size)  # at least one call per leaf used
    teacher_calls = size * (1 + task.teacher_profile.response_retries)
    return {
        "tree": {"expanded_nodes_max": expanded, "leaves_max": leaves, "calls_max": calls,
                 "completion_tokens_max": tokens, "calls_per_node": node_calls},
        "leaf_calls": leaf_calls,
        "leaf_completion_tokens_max": leaf_calls * call_tokens,
        "teacher_calls": {"expected": size, "max": teacher_calls},
        "teacher_completion_tokens_max": teacher_calls * task.teacher_profile.response_max_tokens,
        "total_calls_max": calls + leaf_calls + teacher_calls,
    }
