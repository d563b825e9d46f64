"""The synthesis stage on the scripted backend: exact sizing with refills, artifacts, plan mode, the same
records whatever the chunking of the stream, and a SIGKILL mid-run followed by a rerun that matches an
uninterrupted run record for record."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO, compose_config

from treesynth.io import read_jsonl
from treesynth.methods.base import KeyedLog, gather_logged
from treesynth.methods.treesynth import LeafCalls, Schedule, schedule
from treesynth.pipeline import run_stage, stage_dir
from treesynth.tasks import task_of
from treesynth.testing.scripted import ScriptedBackend, request_rng

BASE = ["llm=scripted", "stages=[synthesize]", "method.pivots=3", "method.max_depth=2", "method.max_children=3"]


def test_schedule_prefixes_are_even_and_weighted():
    order = schedule(30, [1, 1, 1, 10])
    assert order[:13] == schedule(13, [1, 1, 1, 10])  # a longer stream starts with the shorter one
    c = Counter(order)
    assert c[3] > 3 * c[0] and max(c[0], c[1], c[2]) - min(c[0], c[1], c[2]) <= 1
    assert Counter(schedule(7, [1, 1, 1])) == {0: 3, 1: 2, 2: 2}


def test_schedule_goes_on_between_chunks():
    weights = [1, 2, 5]
    s = Schedule(weights)
    chunks = s.take(0, 5) + s.take(5, 12)
    assert chunks == Schedule(weights).take(0, 12) and [i for i, _ in chunks] == schedule(12, weights)
    assert s.take(3, 6) == chunks[3:6]  # earlier positions again: the same answer
    assert [slot for i, slot in chunks if i == 2] == list(range(sum(1 for i, _ in chunks if i == 2)))


def test_leaf_calls_locate_samples_and_exhaust_after_empty_calls():
    calls = LeafCalls()
    for c, n in [(0, 2), (2, 0), (1, 1)]:  # replayed out of order
        calls.add(c, n)
    assert calls.samples == 3 and calls.locate(1) == (0, 1) and calls.locate(2) == (1, 0) and calls.locate(3) is None
    calls.add(3, 0)
    calls.add(4, 0)  # calls 2-4 empty: exhausted, so later calls' samples never count
    calls.add(5, 4)
    assert calls.usable == 5 and calls.samples == 3 and calls.locate(3) is None


def test_gather_logged_logs_every_finished_call_in_call_order_then_raises(tmp_path):
    async def call(c: int) -> dict:
        await asyncio.sleep(0.01 * (4 - c))  # they finish in reverse order
        if c == 1:
            raise RuntimeError("budget")
        return {"call": c}

    log, kept = KeyedLog(tmp_path / "calls.jsonl", "call"), []
    with pytest.raises(RuntimeError, match="budget"):
        asyncio.run(gather_logged((call(c) for c in range(4)), log, keep=kept.append))
    # the calls that came back are on disk (the buffered log was closed), in call order
    assert [r["call"] for r in read_jsonl(tmp_path / "calls.jsonl")] == [0, 2, 3] == [r["call"] for r in kept]


def test_exact_size_with_teacher_failures_and_refill(tmp_path, monkeypatch):
    # The teacher answers only about 2 of 3 records (by the record's prompt, so every retry of a record
    # fails alike); the stage must still land exactly 10.
    orig = ScriptedBackend.default_response

    def flaky(self, request):
        if (request.json_schema or {}).get("title") == "response" and request_rng(request, seeded=False).random() < 0.34:
            return "{}"  # not schema-valid: re-sampled, then the record is dropped and refilled
        return orig(self, request)

    monkeypatch.setattr(ScriptedBackend, "default_response", flaky)
    cfg = compose_config([*BASE, "data.size=10", "+llm.profile_overrides.response.retries=0"], tmp_path)
    metrics = run_stage(cfg, "synthesize")
    out = stage_dir(cfg, "synthesize")
    rows = read_jsonl(out / "data.jsonl")
    assert len(rows) == 10 == metrics["records"] and len({r["id"] for r in rows}) == 10
    assert metrics["teacher_failed"] > 0 and metrics["prompts_generated"] > 10
    tree = json.loads((out / "tree.json").read_text())
    leaves = set(tree["leaves"])
    assert {r["meta"]["leaf_id"] for r in rows} <= leaves and len({r["meta"]["leaf_id"] for r in rows}) >= 2
    assert all(tree["nodes"][leaf]["is_leaf"] for leaf in leaves)
    task = task_of(cfg)
    for r in rows:
        assert set(r) == {"id", "task", "method", "prompt", "completion", "meta"}
        assert task.ends_in_answer_format(r["completion"]) and r["meta"]["seed"] == 0
        assert r["meta"]["generator"] == "scripted" and len(r["meta"]["path"]) == 2
    assert tree["nodes"]["0"]["records"] == 10
    assert pq.read_table(out / "data.parquet").num_rows == 10
    assert metrics["llm"]["calls"] > 0 and "tree_leaves" in metrics


def test_generation_runs_ahead_of_the_teacher_instead_of_waiting_for_its_stragglers(tmp_path, monkeypatch):
    # A backend with 4 slots (8 admitted), instant generation and a slow teacher (5-40 ms an answer), chunks
    # of 8 positions. The generator must not wait for a chunk's last teacher answers: chunk 3's first
    # generation call goes out before the teacher has answered all of chunk 1 (a chunk-by-chunk stage
    # started it only after).
    events: list[tuple[str, int]] = []
    plain = ScriptedBackend.complete

    async def complete(self, request):
        if (request.json_schema or {}).get("title") == "response":
            await asyncio.sleep(0.005 * (1 + request.seed % 8))
            out = await plain(self, request)
            events.append(("answered", sum(e[0] == "answered" for e in events) + 1))
            return out
        events.append(("generate", sum(e[0] == "generate" for e in events) + 1))
        return await plain(self, request)

    monkeypatch.setattr(ScriptedBackend, "parallel", 4, raising=False)
    monkeypatch.setattr(ScriptedBackend, "complete", complete)
    cfg = compose_config(["llm=scripted", "stages=[synthesize]", "method=temperature", "data.size=40",
                          "data.runtime.chunk=8", "data.hygiene.decontaminate=false"], tmp_path)
    metrics = run_stage(cfg, "synthesize")
    answered_before_chunk3 = max((n for kind, n in events[: events.index(("generate", 17))] if kind == "answered"),
                                 default=0)
    assert answered_before_chunk3 < 8
    assert metrics["records"] == 40 == metrics["teacher_asked"] and metrics["prompts_generated"] == 40


def test_plan_only_runs_nothing(tmp_path, capsys):
    cfg = compose_config([*BASE, "method.plan_only=true", "data.size=24", "llm.runtime.delay_s=100"], tmp_path)
    metrics = run_stage(cfg, "synthesize")
    plan = metrics["plan"]
    # depth 2, 3 children max, 3 pivots, 1 sample/call: 1 + 3 expanded nodes x (3 pivots + 1 + 3 assign + 1 cov)
    assert plan["tree"]["calls_max"] == 4 * 8 and plan["tree"]["leaves_max"] == 9
    assert plan["teacher_calls"]["expected"] == 24
    assert "nothing was run" in capsys.readouterr().out
    assert not (stage_dir(cfg, "synthesize") / "data.jsonl").exists()


STREAMING = {
    "temperature": ["method=temperature", "method.samples_per_call=2"],
    "treesynth": ["method=treesynth", *BASE[2:]],
    "evol_instruct": ["method=evol_instruct"],
    "persona_hub": ["method=persona_hub"],
}


@pytest.mark.parametrize("method", sorted(STREAMING))
def test_chunked_stream_gives_the_records_of_one_chunk(tmp_path, monkeypatch, method):
    # Half the generation calls bring no valid sample: leaves come up short and refill (some run
    # dry), evolutions are eliminated, positions are skipped; the chunks' edges must not show in the data.
    orig = ScriptedBackend.default_response
    lost = []

    def lossy(self, request):
        if (request.json_schema or {}).get("title") == "samples" and request_rng(request).random() < 0.5:
            lost.append(request)
            return "{}"
        return orig(self, request)

    monkeypatch.setattr(ScriptedBackend, "default_response", lossy)
    runs = {}
    for chunk in (3, 4096):
        cfg = compose_config(["llm=scripted", "stages=[synthesize]", *STREAMING[method], "data.size=30",
                              f"data.runtime.chunk={chunk}", "data.hygiene.decontaminate=false"], tmp_path / str(chunk))
        run_stage(cfg, "synthesize")
        runs[chunk] = read_jsonl(stage_dir(cfg, "synthesize") / "data.jsonl")
    assert lost and len(runs[3]) == 30 and runs[3] == runs[4096]


def test_verification_runs_once_per_record_across_batches_and_reruns(tmp_path, monkeypatch):
    # A teacher whose answers agree on every vote: records verify; chunks of 4 make several batches.
    orig = ScriptedBackend.default_response

    def agreeing(self, request):
        if (request.json_schema or {}).get("title") == "response":
            return json.dumps({"reasoning": "counting carefully", "answer": "7"})
        return orig(self, request)

    monkeypatch.setattr(ScriptedBackend, "default_response", agreeing)
    args = ["llm=scripted", "stages=[synthesize]", "method=temperature", "data.size=12", "data.runtime.chunk=4",
            "data.verify.enabled=true", "data.verify.k=2", "data.hygiene.decontaminate=false"]
    cfg = compose_config(args, tmp_path)
    metrics = run_stage(cfg, "synthesize")
    out = stage_dir(cfg, "synthesize")
    outcomes = read_jsonl(out / "verify.jsonl")
    assert metrics["verify_checked"] == len(outcomes) == len({o["id"] for o in outcomes}) >= 12
    (out / "stage.json").unlink()
    again = run_stage(compose_config(args, tmp_path), "synthesize")  # every outcome replayed, no call made
    assert again["llm"]["calls"] == 0 and again["verify_checked"] == metrics["verify_checked"]


def _run_py(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.Popen([sys.executable, str(REPO / "run.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_sigkill_midrun_then_rerun_equals_uninterrupted_run(tmp_path):
    args = [*BASE, "data.size=12", "wandb.mode=disabled", "llm.runtime.delay_s=0.2"]
    killed = [*args, f"paths.artifacts={tmp_path / 'a'}", f"hydra.run.dir={tmp_path / 'ha'}"]
    clean = [*args, f"paths.artifacts={tmp_path / 'b'}", f"hydra.run.dir={tmp_path / 'hb'}"]
    full = _run_py(clean, tmp_path)  # the uninterrupted reference runs alongside

    proc = _run_py(killed, tmp_path)
    deadline = time.time() + 120
    marker = None
    while time.time() < deadline and proc.poll() is None:
        marker = next((tmp_path / "a").glob("synthesize/*/leaf_calls.jsonl"), None)
        if marker is not None and marker.stat().st_size > 0:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out_dir = marker.parent
    assert not (out_dir / "data.jsonl").exists()
    events_before = len(read_jsonl(out_dir / "tree_events.jsonl"))

    rerun = _run_py(killed, tmp_path)
    assert rerun.wait(timeout=300) == 0, rerun.stdout.read()
    assert full.wait(timeout=300) == 0, full.stdout.read()

    a = read_jsonl(out_dir / "data.jsonl")
    b = read_jsonl(next((tmp_path / "b").glob("synthesize/*/data.jsonl")))
    assert len(a) == 12 and len({r["id"] for r in a}) == 12
    assert a == b
    # the tree log was continued, not restarted, and calls that returned before the kill were not repeated
    b_events = read_jsonl(next((tmp_path / "b").glob("synthesize/*/tree_events.jsonl")))
    assert events_before >= 1 and len(read_jsonl(out_dir / "tree_events.jsonl")) == len(b_events)
    stats_rerun = json.loads((out_dir / "stage.json").read_text())["metrics"]["llm"]
    stats_full = json.loads(next((tmp_path / "b").glob("synthesize/*/stage.json")).read_text())["metrics"]["llm"]
    assert stats_rerun["calls"] < stats_full["calls"]
