"""Tree building on the deterministic scripted backend: criterion validation, retries, infinite
dimensions, caps, resume of the event log."""

from __future__ import annotations

import asyncio
import functools
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import compose_config

from treesynth.llm import LLM
from treesynth.profiles import profile_for
from treesynth.tasks import task_of
from treesynth.testing.scripted import ScriptedBackend, by_title
from treesynth.tree.builder import TreeBuilder
from treesynth.tree.config import TreeConfig
from treesynth.tree.criterion import CriterionError, clean_values, dimension_problem, validate_one_call


@pytest.fixture(scope="module")
def gsm8k(tmp_path_factory):
    return task_of(compose_config(["task=gsm8k", "llm=scripted"], tmp_path_factory.mktemp("cfg")))


@functools.cache
def shipped() -> TreeConfig:
    """method=treesynth's settings as shipped (the constrained profile of the scripted backend)."""
    cfg = compose_config(["method=treesynth", "llm=scripted"], Path(tempfile.gettempdir()))
    profile_for(cfg)
    return TreeConfig.from_cfg(cfg.method)


def build(task, tmp_path: Path, handlers: dict, **tcfg) -> tuple:
    """A tree under the shipped settings with a small shape on top (and the test's own `tcfg`)."""
    backend = ScriptedBackend(responder=by_title(handlers))
    cfg = replace(shipped(), **{"pivots": 3, "max_depth": 2, "samples_per_call": 1, "coverage_rounds": 0, **tcfg})
    tree = asyncio.run(TreeBuilder(LLM(backend), task, cfg, seed=0, work_dir=tmp_path).build())
    return tree, backend


def test_value_hygiene_rejects_placeholders_catchalls_combined_duplicates_overlaps():
    kept, dropped = clean_values(
        ["Addition", "<value1>", "value 2", "other", "addition and subtraction", "time/speed",
         "additions", "Money problems", "money", "Geometry"]
    )
    assert kept == ["Addition", "Money problems", "Geometry"]
    why = dict(dropped)
    assert why["<value1>"] == "placeholder" and why["value 2"] == "placeholder"
    assert why["other"].startswith("catch-all")
    assert why["addition and subtraction"] == "combined" and why["time/speed"] == "combined"
    assert why["additions"].startswith("duplicate") and why["money"].startswith("overlaps")
    # fragments a weak model emits, and a value that restates its own dimension
    kept, dropped = clean_values([", BQUICK_PINK", ")sort_by_x", "x1", "Word problems", "Fractions", "2-3"],
                                 dimension="word problem")
    assert kept == ["Fractions", "2-3"]
    why = dict(dropped)
    assert why[", BQUICK_PINK"].startswith("not a value") and why["x1"].startswith("not a value")
    assert why["Word problems"] == "restates the dimension"


def test_dimension_reuse_and_one_call_validation():
    assert "already used" in dimension_problem("Arithmetic operations", ["arithmetic operation"])
    assert dimension_problem("setting", ["arithmetic operation"]) is None
    ok = {"dimension": "setting", "attributes": [{"value": "school", "samples": [1, 3]}, {"value": "farm", "samples": [2]}]}
    assert validate_one_call(ok, 3, []) == ("setting", {"school": [1, 3], "farm": [2]})
    bad = [
        ({**ok, "attributes": [{"value": "school", "samples": [1, 2]}, {"value": "farm", "samples": [2, 3]}]}, "two values"),
        ({**ok, "attributes": [{"value": "school", "samples": [1]}, {"value": "farm", "samples": [2]}]}, "not assigned"),
        ({**ok, "attributes": [{"value": "school", "samples": [1, 9]}, {"value": "farm", "samples": [2, 3]}]}, "out of range"),
        ({**ok, "attributes": [{"value": "school", "samples": [1, 2]}, {"value": "other", "samples": [3]}]}, "catch-all"),
        (ok, "already used"),
    ]
    for data, why in bad:
        with pytest.raises(CriterionError, match=why):
            validate_one_call(data, 3, ["Setting"] if why == "already used" else [])


def test_invalid_criterion_json_retries_then_leaf(gsm8k, tmp_path):
    tree, backend = build(gsm8k, tmp_path, {"propose": lambda r: "not json at all"}, criterion_retries=3)
    root = tree.root
    assert root.is_leaf and root.children == []
    assert root.leaf_reason.startswith("criterion failed after 3 tries") and "invalid JSON" in root.leaf_reason
    # 3 pivot calls + 3 attempts x (1 + 2 JSON re-samples in the LLM layer)
    assert backend.calls == 3 + 3 * 3


def test_overlapping_values_rejected_then_resampled(gsm8k, tmp_path):
    proposals = iter([
        {"dimension": "topic", "values": ["fractions", "fractions with decimals"]},  # overlap -> 1 value left
        {"dimension": "topic", "values": ["shopping", "travel", "shopping trips"]},  # overlap dropped, 2 left
    ])
    tree, _ = build(gsm8k, tmp_path, {"propose": lambda r: json.dumps(next(proposals))}, max_depth=1)
    assert tree.root.child_dimension == "topic"
    assert [tree.nodes[c].value for c in tree.root.children] == ["shopping", "travel"]
    # stepwise assignment: each pivot in exactly one value (by construction)
    assert sorted(i for idx in tree.root.assignment.values() for i in idx) == [1, 2, 3]


def test_reused_ancestor_dimension_rejected(gsm8k, tmp_path):
    same = json.dumps({"dimension": "topic", "values": ["shopping", "travel"]})
    tree, _ = build(gsm8k, tmp_path, {"propose": lambda r: same}, max_depth=3, criterion_retries=2)
    assert len(tree.root.children) == 2
    for c in tree.root.children:
        child = tree.nodes[c]
        assert child.is_leaf and "already used by an ancestor" in child.leaf_reason


def test_infinite_dimension_one_child_with_values(gsm8k, tmp_path):
    many = "Paris Tokyo Lagos Lima Oslo Quito Delhi Cairo".split()
    handlers = {
        "propose": lambda r: json.dumps({"dimension": "city", "values": many[:2]}),
        "coverage": lambda r: json.dumps({"complete": True, "new_values": many[2:]}),
    }
    tree, _ = build(gsm8k, tmp_path, handlers, max_depth=1, coverage_rounds=1, coverage_new_values=8, max_values=5)
    (child_id,) = tree.root.children
    child = tree.nodes[child_id]
    assert child.infinite and child.values == many and child.value is None
    attrs, draws = tree.attributes(child_id, draw_seed=7)
    assert attrs[0][0] == "city" and attrs[0][1] in many and draws[child_id]["value"] == attrs[0][1]
    assert tree.attributes(child_id, draw_seed=7) == (attrs, draws)  # the draw is reproducible


def test_caps_bound_the_tree(gsm8k, tmp_path):
    tree, _ = build(gsm8k, tmp_path / "a", {}, max_depth=3, max_nodes=6, max_children=4)
    assert len(tree.nodes) <= 6 and any("max_nodes" in (n.leaf_reason or "") for n in tree.leaves())
    tree, backend = build(gsm8k, tmp_path / "b", {}, max_depth=3, max_calls=9)
    assert backend.calls <= 9 and tree.root.leaf_reason is None
    assert all(tree.nodes[c].leaf_reason.startswith("max_calls") for c in tree.root.children)


def test_fixed_first_level_and_no_level_barrier_resume(tmp_path):
    math_task = task_of(compose_config(["task=math", "llm=scripted"], tmp_path))
    tree, backend = build(math_task, tmp_path, {}, max_depth=2)
    assert tree.root.child_dimension == "subject" and len(tree.root.children) == 7
    assert tree.root.pivots == []  # fixed first level: no LLM call at the root
    spread = tree.spread_leaves()
    assert {n.id.split(".")[1] for n in spread[:7]} == {str(i) for i in range(7)}  # first 7 span all subjects
    assert sorted(n.id for n in spread) == sorted(n.id for n in tree.leaves())
    first_calls = backend.calls
    # Replaying the event log rebuilds the same tree without a single call.
    again, backend2 = build(math_task, tmp_path, {}, max_depth=2)
    assert backend2.calls == 0 and first_calls > 0
    assert again.to_dict() == tree.to_dict()
