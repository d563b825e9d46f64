"""TreeSynth-guided balancing on the scripted backend: a deliberately skewed dataset is routed down a
hand-written tree, overfull leaves are downsampled, underfull ones get their deficit synthesized by the
TreeSynth leaf-synthesis step, unrouted records are kept, and the report shows before/after counts."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from conftest import compose_config

from treesynth.errors import TreesynthError
from treesynth.io import read_jsonl, write_jsonl
from treesynth.pipeline import run_stage, stage_dir
from treesynth.testing.scripted import ScriptedBackend

TOPICS = ["apples", "trains", "money"]
NAMES = "Ann Ben Cal Dee Eve Fay Gus Hal Ivy Jon".split()


def _tree() -> dict:
    nodes = {"0": {"id": "0", "depth": 0, "parent": None, "status": "expanded", "child_dimension": "topic",
                   "children": [f"0.{i}" for i in range(3)]}}
    for i, t in enumerate(TOPICS):
        nodes[f"0.{i}"] = {"id": f"0.{i}", "depth": 1, "parent": "0", "dimension": "topic", "value": t,
                           "status": "leaf", "leaf_reason": "max_depth"}
    return {"root": "0", "leaves": list(nodes)[1:], "nodes": nodes}


def _skewed() -> list[dict]:
    rows = [{"id": f"a{i}", "prompt": f"{n} buys {i + 3} apples at {2 * i + 1} dollars each for a pie contest "
             f"number {i}. How much does {n} spend?", "completion": f"Multiply.\n#### {(i + 3) * (2 * i + 1)}"}
            for i, n in enumerate(NAMES)]
    rows.append({"id": "t0", "prompt": "A train travels 60 miles per hour for 3 hours. How far does it go?",
                 "completion": "60*3.\n#### 180"})
    rows.append({"id": "m0", "prompt": "Sam saves money: 5 dollars a week for 8 weeks. How much money?",
                 "completion": "5*8.\n#### 40"})
    rows.append({"id": "w0", "prompt": "It rained 2 inches on Monday and 3 on Tuesday. How many inches fell?",
                 "completion": "2+3.\n#### 5"})
    return rows


def _router(request):
    schema = request.json_schema or {}
    if schema.get("title") != "route":
        return None
    text = request.messages[-1][1].split("Sample:")[1].lower()
    hit = [t for t in TOPICS if re.search(rf"\b{t[:-1]}", text)]
    return json.dumps({"value": hit[0] if hit else "none of these"})


@pytest.fixture
def routed_backend(monkeypatch):
    orig = ScriptedBackend.default_response
    monkeypatch.setattr(ScriptedBackend, "default_response",
                        lambda self, req: _router(req) or orig(self, req))


def test_skewed_dataset_is_balanced(tmp_path, routed_backend):
    src, tree = tmp_path / "skewed.jsonl", tmp_path / "tree.json"
    write_jsonl(src, _skewed())
    tree.write_text(json.dumps(_tree()))
    cfg = compose_config(["llm=scripted", "stages=[synthesize]", "method=treesynth_balance", f"method.source={src}",
                          f"method.tree={tree}", "method.target_per_leaf=4", "data.size=13"], tmp_path)
    metrics = run_stage(cfg, "synthesize")
    out = stage_dir(cfg, "synthesize")
    rows = read_jsonl(out / "data.jsonl")
    assert len(rows) == 13
    per_leaf = Counter(r["meta"]["leaf_id"] or "unrouted" for r in rows)
    assert per_leaf == {"0.0": 4, "0.1": 4, "0.2": 4, "unrouted": 1}
    # downsampled: only 4 of the 10 apple records survive; the others are synthesized in their leaf
    assert sum(1 for r in rows if r["id"].startswith("src/")) == 4 + 1 + 1 + 1
    synth = [r for r in rows if not r["id"].startswith("src/")]
    assert len(synth) == 6 and {r["meta"]["leaf_id"] for r in synth} == {"0.1", "0.2"}
    assert all(r["meta"]["path"] == [{"dimension": "topic", "value": TOPICS[int(r["meta"]["leaf_id"][-1])]}]
               for r in synth)
    assert all(r["completion"].rstrip().split("\n")[-1].startswith("####") for r in rows)
    report = json.loads((out / "balance_report.json").read_text())
    by = {b["bucket"]: b for b in report["buckets"]}
    assert (by["0.0"]["before"], by["0.0"]["after"], by["0.0"]["downsampled"]) == (10, 4, 6)
    assert (by["0.1"]["before"], by["0.1"]["synthesized"], by["0.1"]["after"]) == (1, 3, 4)
    assert (by["unrouted"]["before"], by["unrouted"]["after"]) == (1, 1)
    md = (out / "balance_report.md").read_text()
    assert "| 0.0 | topic=apples | 10 | 6 | 0 | 4 |" in md
    assert metrics["balance_after"] == {"0.0": 4, "0.1": 4, "0.2": 4, "unrouted": 1}
    assert json.loads((out / "tree.json").read_text())["nodes"]["0"]["records"] == 12  # unrouted is under no leaf


def test_balance_needs_a_source(tmp_path):
    cfg = compose_config(["llm=scripted", "stages=[synthesize]", "method=treesynth_balance",
                          f"method.source={tmp_path / 'missing.jsonl'}"], tmp_path)
    with pytest.raises(TreesynthError, match="method.source"):
        run_stage(cfg, "synthesize")


def test_balance_builds_its_tree_with_the_treesynth_engine(tmp_path):
    # No method.tree: the TreeSynth engine builds one (scripted), every record is routed down it.
    src = tmp_path / "skewed.jsonl"
    write_jsonl(src, _skewed())
    cfg = compose_config(["llm=scripted", "stages=[synthesize]", "method=treesynth_balance", f"method.source={src}",
                          "method.pivots=3", "method.max_depth=1", "method.max_children=3", "data.size=9"], tmp_path)
    metrics = run_stage(cfg, "synthesize")
    out = stage_dir(cfg, "synthesize")
    rows = read_jsonl(out / "data.jsonl")
    tree = json.loads((out / "tree.json").read_text())
    report = json.loads((out / "balance_report.json").read_text())
    cap = report["target_per_leaf"]
    assert len(rows) == 9 and cap == -(-9 // len(tree["leaves"]))
    assert {b["bucket"] for b in report["buckets"]} == {*tree["leaves"], "unrouted"}
    assert sum(b["before"] for b in report["buckets"]) == len(_skewed())
    assert all(b["after"] <= cap for b in report["buckets"]) and metrics["balance_after"]
    assert len(read_jsonl(out / "routing.jsonl")) == len(_skewed())
