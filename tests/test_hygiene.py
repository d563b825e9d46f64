"""Data hygiene: exact/near-duplicate removal, n-gram decontamination against benchmark test sets (with
the on-disk index cache and unavailable benchmarks recorded), refill to exactly data.size, and answer
verification (self-consistency for math, sandboxed tests for code)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from conftest import REPO, compose_config

from treesynth.benchmarks import benchmark
from treesynth.io import read_jsonl
from treesynth.llm import LLM
from treesynth.methods import hygiene
from treesynth.methods.verify import Verifier, extract_answer
from treesynth.pipeline import run_stage, stage_dir
from treesynth.tasks import task_of
from treesynth.testing.scripted import ScriptedBackend

BENCH = REPO / "tests" / "fixtures" / "benchdata"
LEAKED = json.loads((BENCH / "gsm8k" / "test.jsonl").read_text().splitlines()[0])["question"]


def _rec(i: int, prompt: str, completion: str = "x\n#### 1") -> dict:
    return {"id": str(i), "task": "gsm8k", "method": "t", "prompt": prompt, "completion": completion, "meta": {}}


def test_dedup_keeps_first_of_exact_and_near_duplicates():
    base = "A farmer has 17 sheep and buys 5 more each week for 9 weeks. How many sheep does he have now?"
    recs = [_rec(0, base), _rec(1, "  " + base.upper()), _rec(2, base.replace("17", "18")),
            _rec(3, "Lena paints 4 fences a day. How many fences does she paint in a fortnight?")]
    kept, exact, near = hygiene.dedup(recs, 0.85)
    assert [r["id"] for r in kept] == ["0", "3"] and (exact, near) == (1, 1)


def test_decontamination_index_is_cached_on_disk_and_unavailable_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(hygiene, "_INDEX", {})  # as in a fresh process: earlier tests filled the memory cache
    monkeypatch.setattr(hygiene, "_UNAVAILABLE", {})
    cfg = compose_config([f"data.dir={BENCH}", "task=gsm8k", "task.benchmarks=[gsm8k,simpletom]"], tmp_path)
    recs = [_rec(0, "Tell me: " + LEAKED), _rec(1, "How many legs do 3 spiders and 2 ants have in total together?"),
            _rec(2, " ".join(LEAKED.split()[5:18]) + " and then what?")]  # a 13-word window is enough
    kept, counts = hygiene.filter_records(recs, cfg)
    assert [r["id"] for r in kept] == ["1"]
    assert counts["contaminated"] == 2 and counts["decontam_benchmarks"] == ["gsm8k"]
    assert counts["decontam_unavailable"] == ["simpletom"]  # hub-only, offline: recorded, not fatal
    cached = list((tmp_path / "artifacts" / ".cache" / "decontam").glob("gsm8k-13gram-*.npy"))
    assert len(cached) == 1
    # A fresh process (empty memory cache) reads the disk index instead of the benchmark files.
    monkeypatch.setattr(hygiene, "_INDEX", {})
    monkeypatch.setattr(hygiene, "load_source", lambda *a, **k: (_ for _ in ()).throw(AssertionError("reloaded")))
    assert hygiene.filter_records(recs, cfg)[1]["contaminated"] == 2


def test_hygiene_can_be_switched_off(tmp_path):
    cfg = compose_config([f"data.dir={BENCH}", "data.hygiene.enabled=false"], tmp_path)
    recs = [_rec(0, LEAKED), _rec(1, LEAKED)]
    assert hygiene.filter_records(recs, cfg)[0] == recs


def test_copied_benchmark_questions_are_removed_and_refilled(tmp_path, monkeypatch):
    # Every third generation call copies a benchmark test question (and two calls repeat each other).
    orig = ScriptedBackend.default_response

    def leaky(self, request):
        if (request.json_schema or {}).get("title") == "samples" and request.seed % 3 == 0:
            return json.dumps({"samples": [{"question": LEAKED}]})
        return orig(self, request)

    monkeypatch.setattr(ScriptedBackend, "default_response", leaky)
    cfg = compose_config(["llm=scripted", "stages=[synthesize]", "method=temperature", f"data.dir={BENCH}",
                          "data.size=12"], tmp_path)
    metrics = run_stage(cfg, "synthesize")
    rows = read_jsonl(stage_dir(cfg, "synthesize") / "data.jsonl")
    assert len(rows) == 12 and all(LEAKED not in r["prompt"] for r in rows)
    assert metrics["contaminated"] + metrics["exact_duplicates"] >= 2 and metrics["contaminated"] >= 1
    assert metrics["prompts_generated"] > 12 and metrics["decontam_benchmarks"] == ["gsm8k"]


def test_extract_answer_normalizes():
    assert extract_answer("so\n#### 1,200", benchmark("gsm8k")) == "1200" == extract_answer("#### 1200.0", benchmark("gsm8k"))
    assert extract_answer("The final answer is $\\boxed{\\frac{1}{2}}$.", benchmark("math")) == "\\frac{1}{2}"
    assert extract_answer("no answer", benchmark("math")) is None
    assert extract_answer("so\n#### 1,200", None) == "1200"  # a task without a verified benchmark


def test_self_consistency_keeps_majority_agreement(tmp_path):
    # The teacher's votes: 7 for prompts mentioning "seven", else 3. Record 0 agrees, record 1 does not.
    def teacher(request):
        if (request.json_schema or {}).get("title") != "response":
            return None
        ans = "7" if "seven" in request.messages[-1][1] else "3"
        return json.dumps({"reasoning": "counting carefully", "answer": ans})

    cfg = compose_config(["task=gsm8k", "data.verify.enabled=true", "data.verify.k=3"], tmp_path)
    llm = LLM(ScriptedBackend(responder=teacher))
    recs = [_rec(0, "What is three plus four, spelled seven?", "x\n#### 7"), _rec(1, "What is one plus two?", "x\n#### 4")]
    kept, counts = asyncio.run(Verifier(llm, task_of(cfg), cfg, tmp_path).run(recs))
    assert [r["id"] for r in kept] == ["0"]
    assert counts["verify_kind"] == "self_consistency" and counts["verify_fail_reasons"] == {"majority_disagrees": 1}
    calls = llm.backend.calls
    asyncio.run(Verifier(llm, task_of(cfg), cfg, tmp_path).run(recs))  # replayed from verify.jsonl
    assert llm.backend.calls == calls and (tmp_path / "verify.jsonl").exists()


def test_code_verification_runs_asserts_in_the_sandbox(tmp_path):
    # Record 0 brings its own passing assert; 1 its own failing one; 2 has none: the teacher writes tests.
    def teacher(request):
        if (request.json_schema or {}).get("title") == "tests":
            return json.dumps({"tests": ["assert double(4) == 8", "assert double(0) == 0"]})
        return None

    cfg = compose_config(["task=code_alpaca", "data.verify.enabled=true"], tmp_path)
    block = "```python\n{}\n```".format
    recs = [_rec(0, "add", block("def add(a, b):\n    return a + b\nassert add(2, 3) == 5")),
            _rec(1, "sub", block("def sub(a, b):\n    return a + b\nassert sub(5, 3) == 2")),
            _rec(2, "double", block("def double(x):\n    return 2 * x"))]
    kept, counts = asyncio.run(Verifier(LLM(ScriptedBackend(responder=teacher)), task_of(cfg), cfg,
                                        Path(tmp_path)).run(recs))
    assert [r["id"] for r in kept] == ["0", "2"]
    assert counts["verify_kind"] == "execute" and counts["verify_fail_reasons"] == {"tests_failed": 1}
