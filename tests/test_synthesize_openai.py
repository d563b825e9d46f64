"""The TreeSynth synthesis stage end to end over HTTP: llm=openai against the loopback stub server
(treesynth/testing/stub_server.py). The stub answers every JSON-schema request with a schema-valid instance
drawn from (messages, seed), so the tree branches, pivots/leaf samples parse, and the teacher's
structured answer renders into the GSM8K answer format ("#### <number>"): the constrained profile over a
server (llm.profile=constrained). The open profile's double is treesynth/testing/capable.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, compose_config

from treesynth.io import read_jsonl
from treesynth.pipeline import run_pipeline, stage_dir
from treesynth.tasks import task_of
from treesynth.testing.stub_server import StubServer

# Small tree: depth 2, 3 pivots. max_children stays at its default 6 = proposal (<= 4) + coverage (<= 2)
# values, so the stub's dimensions stay finite and the root's children branch again.
TREE = ["method=treesynth", "method.max_depth=2", "method.pivots=3"]


def overrides(base_url: str, size: int = 12) -> list[str]:
    return [
        "stages=[synthesize]", "task=gsm8k", *TREE, "llm=openai", "llm.profile=constrained",
        "llm.model=stub-model", "llm.api_key_env=null",
        f"llm.runtime.base_urls=[{base_url}]", "llm.runtime.max_retries=1", f"data.size={size}",
    ]


def check_stage_output(out: Path, cfg, size: int) -> list[dict]:
    rows = read_jsonl(out / "data.jsonl")
    assert len(rows) == size and len({r["id"] for r in rows}) == size
    tree = json.loads((out / "tree.json").read_text())
    leaves = set(tree["leaves"])
    assert all(tree["nodes"][leaf]["is_leaf"] for leaf in leaves)
    used = {r["meta"]["leaf_id"] for r in rows}
    assert used <= leaves and len(used) >= 2
    task = task_of(cfg)
    answer = re.compile(task.answer_format + r"\s*$")
    for r in rows:
        assert r["task"] == "gsm8k" and r["method"] == "treesynth" and r["meta"]["generator"] == "stub-model"
        assert task.ends_in_answer_format(r["completion"]) and answer.search(r["completion"]), r["completion"]
    return rows


def test_treesynth_stage_over_openai_stub_and_rerun_reuses(make_cfg, tmp_path):
    with StubServer(latency=(0.0, 0.01), slots=32, seed=1) as srv:
        cfg = make_cfg(*overrides(srv.base_url))
        summary = run_pipeline(cfg, tmp_path / "run1")
        out = stage_dir(cfg, "synthesize")
        rows = check_stage_output(out, cfg, 12)
        sent = srv.requests
        # tree (pivots, propose, assign, coverage) + leaf samples + one teacher answer per record
        assert sent >= 12 + 4 and srv.answered == sent
        titles = {(b.get("response_format") or {}).get("json_schema", {}).get("name") for b in srv.received}
        assert {"propose", "assign", "coverage", "response"} <= titles, titles
        metrics = summary["stages"]["synthesize"]
        assert metrics["records"] == 12 and metrics["tree_depth"] == 2 and metrics["llm"]["calls"] > 0

        # Same config again: the stage artifact is reused, the server sees nothing new.
        again = run_pipeline(cfg, tmp_path / "run2")
        assert srv.requests == sent
        assert read_jsonl(out / "data.jsonl") == rows
        assert again["artifacts"]["synthesize"] == str(out)


@pytest.mark.slow
def test_run_py_cli_over_openai_stub(tmp_path):
    # The CLI path (Hydra + run.py) with the same overrides; the stub runs in this process.
    with StubServer(latency=0.0, slots=32, seed=2) as srv:
        args = [*overrides(srv.base_url, size=6), f"paths.artifacts={tmp_path / 'a'}",
                f"hydra.run.dir={tmp_path / 'h'}", "wandb.mode=disabled"]
        env = {**os.environ, "WANDB_MODE": "disabled"}
        proc = subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert srv.requests > 6
    out = next((tmp_path / "a").glob("synthesize/*/data.jsonl")).parent
    check_stage_output(out, compose_config(["task=gsm8k", "llm=openai", "llm.profile=constrained"], tmp_path), 6)
    assert json.loads((tmp_path / "h" / "summary.json").read_text())["stages"]["synthesize"]["records"] == 6
