"""Faults against the loopback stub (treesynth/testing/stub_server.py): the stub's seeded fault injection, the
openai backend's fault counters, the LLM layer's same-request re-ask of unusable answers, and the fast
version of bench/faults.py: 200-record syntheses with each fault kind at 20% of requests, and SIGKILLs
at three moments of a TreeSynth run, each compared with a fault-free run of the same seed."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from treesynth.llm import LLM, Backend, ChatRequest, Completion, build_llm
from treesynth.testing.stub_server import FAULT_KINDS, StubServer

sys.path.insert(0, str(REPO))
from bench import faults as bench  # noqa: E402

SCHEMA = {
    "title": "pick",
    "type": "object",
    "properties": {"color": {"enum": ["red", "green", "blue"]}, "n": {"type": "integer"}},
    "required": ["color", "n"],
    "additionalProperties": False,
}
FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 0.5, "max_retries": 3}


def openai_llm(url: str, **runtime: object) -> LLM:
    return build_llm({"backend": "openai", "model": "stub-model", "api_key_env": None,
                      "runtime": {"base_urls": [url], **FAST, **runtime}})


def ask(llm: LLM, requests: list[ChatRequest]) -> list[Completion]:
    async def go() -> list[Completion]:
        try:
            return await llm.generate(requests)
        finally:
            await llm.aclose()

    return asyncio.run(go())


def requests(n: int) -> list[ChatRequest]:
    return [ChatRequest.user(f"question {i}", seed=i, json_schema=SCHEMA if i % 2 else None) for i in range(n)]


# --- the stub's faults ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_stub_faults_are_seeded_bounded_and_recovered_by_the_same_request(kind: str) -> None:
    reqs = requests(40)
    with StubServer() as clean:  # the default answer is a function of (messages, seed)
        expected = ask(openai_llm(clean.base_url), reqs)
    with StubServer(fault_kind=kind, fault_rate=0.5, fault_attempts=2,
                    hang_s=0.8, retry_after=0.01) as srv:
        llm = openai_llm(srv.base_url, answer_retries=2)
        got = ask(llm, reqs)
    eligible = 20 if kind in ("malformed", "schema_invalid") else 40  # content faults: schema requests only
    faulted = srv.faults[kind] // 2  # each faulted request fails its first two attempts
    assert srv.fault_candidates == eligible and srv.faults[kind] % 2 == 0, srv.faults
    assert 0.25 * eligible <= faulted <= 0.75 * eligible, srv.faults
    assert srv.requests == 40 + srv.faults[kind]
    assert [(c.text, c.data, c.finish_reason) for c in got] == [(c.text, c.data, c.finish_reason) for c in expected]
    stats = llm.stats.as_dict()
    assert stats[bench.FAULT_METRIC[kind]] == srv.faults[kind] and stats["errors"] == 0
    assert stats["json_retries"] == 0  # no record was re-sampled with another seed


def test_stub_fault_choice_depends_on_the_request_and_the_seed() -> None:
    bodies = [{"messages": [{"role": "user", "content": f"q{i}"}], "seed": i} for i in range(400)]
    a, b, c = (StubServer(fault_kind="500", fault_rate=0.2, seed=s) for s in (0, 0, 1))
    picks = [[x._fault(body) for body in bodies] for x in (a, b, c)]
    assert picks[0] == picks[1] and picks[0] != picks[2]
    assert 40 <= picks[0].count("500") <= 120
    assert [a._fault(body) for body in bodies] == [None] * 400  # the second attempt is answered


def test_hang_is_answered_after_hang_s_and_never_holds_stop() -> None:
    with StubServer(fault_kind="hang", fault_rate=1.0, hang_s=0.6) as srv:
        llm = openai_llm(srv.base_url, timeout_s=0.3)
        t0 = time.perf_counter()
        c, = ask(llm, [ChatRequest.user("slow", seed=1)])
        assert c.ok and time.perf_counter() - t0 >= 0.3
        assert llm.stats.as_dict()["timeouts"] == 1 and srv.requests == 2
    srv = StubServer(fault_kind="hang", fault_rate=1.0, hang_s=60, fault_attempts=100).start()
    llm = openai_llm(srv.base_url, timeout_s=30, max_retries=0)

    async def stop_midway() -> Completion:
        task = asyncio.create_task(llm.complete(ChatRequest.user("stuck", seed=2)))
        await asyncio.sleep(0.3)
        t0 = time.perf_counter()
        await asyncio.to_thread(srv.stop)
        assert time.perf_counter() - t0 < 5
        try:
            return await task
        finally:
            await llm.aclose()

    assert not asyncio.run(stop_midway()).ok


# --- counters and the same-request re-ask -----------------------------------------------------------
def test_transport_failures_are_counted_by_kind_in_the_stage_metrics() -> None:
    with StubServer(fail_first=2, fail_status=429, retry_after=0.01) as srv:
        llm = openai_llm(srv.base_url)
        ask(llm, [ChatRequest.user("a", seed=1)])
        srv.fail_first, srv.fail_status, srv.requests = 1, 503, 0
        ask(llm, [ChatRequest.user("b", seed=2)])
        srv.fail_first, srv.fail_status, srv.requests = None, 400, 0
        c, = ask(llm, [ChatRequest.user("c", seed=3)])
    stats = llm.stats.as_dict()
    assert "HTTP 400" in c.error
    assert (stats["http_429"], stats["http_5xx"], stats["http_4xx"], stats["timeouts"]) == (2, 1, 1, 0)
    assert stats["retries"] == 3 and stats["errors"] == 1  # a 400 is not re-sent


class Flaky(Backend):
    """Answers the request's good answer (its seed inside), except for the very first call: `bad`."""

    model = "flaky"

    def __init__(self, bad: Completion, answer_retries: int):
        self.bad, self.answer_retries, self.seen = bad, answer_retries, []

    async def complete(self, request: ChatRequest) -> Completion:
        first = not self.seen
        self.seen.append(request)
        if first:
            return Completion(self.bad.text, self.bad.finish_reason)
        return Completion(json.dumps({"color": "red", "n": request.seed}) if request.json_schema else f"#### {request.seed}")


@pytest.mark.parametrize("bad", [Completion('{"color": "red", "n":'), Completion('["wrong shape"]'),
                                 Completion('{"color": "red"', finish_reason="length")])
def test_unusable_answer_is_asked_again_with_the_same_seed_first(bad: Completion) -> None:
    req = ChatRequest.user("pick", seed=7, json_schema=SCHEMA)
    backend = Flaky(bad, answer_retries=1)
    llm = LLM(backend)
    c = asyncio.run(llm.complete(req))
    assert c.ok and c.data == {"color": "red", "n": 7}  # the answer a fault-free server gives seed 7
    assert [r.seed for r in backend.seen] == [7, 7]
    assert llm.stats.answer_retries == 1 and llm.stats.json_retries == 0
    # A backend without answer_retries (an in-process model would repeat itself) samples another seed.
    backend = Flaky(bad, answer_retries=0)
    c = asyncio.run(LLM(backend).complete(req))
    assert backend.seen[0].seed == 7 and backend.seen[-1].seed != 7 and c.data["n"] != 7


def test_truncated_free_text_is_asked_again_with_the_same_seed() -> None:
    backend = Flaky(Completion("Cut off mid", finish_reason="length"), answer_retries=1)
    llm = LLM(backend)
    c = asyncio.run(llm.complete(ChatRequest.user("solve", seed=3)))
    assert c.ok and c.text == "#### 3" and len(backend.seen) == 2 and llm.stats.truncated == 1


# --- the fast bench ----------------------------------------------------------------------------
SIZE = 200
# 3 s: on a loaded 2-core machine the first wave of 200 requests alone took over 1 s (spurious timeouts)
SETUP = bench.FaultSetup(size=SIZE, rate=0.2, timeout_s=3.0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> bench.RunState:
    state, _, _ = bench.fault_run(None, SETUP, tmp_path_factory.mktemp("reference"))
    assert len(state.rows) == SIZE and state.duplicates() == 0
    return state


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_synthesis_under_faults_equals_the_fault_free_run(kind: str, reference: bench.RunState, tmp_path: Path) -> None:
    state, srv, wall = bench.fault_run(kind, SETUP, tmp_path)
    row = bench.fault_row(kind, state, reference, srv, SIZE, wall)
    assert bench.fault_ok(row), row
    assert 0.15 * row["candidates"] <= row["injected"] <= 0.25 * row["candidates"], row
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stages"]["synthesize"]["llm"][bench.FAULT_METRIC[kind]] == row["injected"]


def test_fault_table_fails_when_records_differ(reference: bench.RunState) -> None:
    # The checks are not vacuous: a record answered with another seed is caught.
    other = bench.RunState([*reference.rows[:-1], {**reference.rows[-1], "completion": "#### 0"}],
                           reference.checkpoints, {**reference.cache, "k": "v"}, reference.metrics)
    assert other.rows != reference.rows and other.failures_kept(reference) == 1
    doubled = bench.RunState(reference.rows, {"responses.jsonl": [*reference.checkpoints["responses.jsonl"]] * 2},
                             reference.cache, reference.metrics)
    assert doubled.duplicates() == len(reference.checkpoints["responses.jsonl"])  # every row once more


def test_sigkill_at_moments_of_a_treesynth_run_then_rerun_equals_the_fault_free_run(tmp_path: Path) -> None:
    size = 30
    switch = bench.KillSwitch()
    with StubServer(slots=64, respond=switch) as srv:
        ref_proc = bench.spawn(bench.synthesis_overrides(srv.base_url, size, tmp_path / "ref", bench.TREE, []))
        out, _ = ref_proc.communicate(timeout=300)
        assert ref_proc.returncode == 0, out[-3000:]
        ref = bench.RunState.read(Path(json.loads(out.strip().splitlines()[-1])["stage"]))
        ranges = bench.phase_ranges(srv.received)
        lo, hi = ranges["leaves"]
        moments = [bench.Moment("leaves", request=(lo + hi) // 2), bench.Moment("hygiene", hook="hygiene:enter"),
                   bench.Moment("writing", hook="torn:responses.jsonl:5")]
        for i, m in enumerate(moments):
            killed, rc, stage, tail = bench.kill_case(m, switch, srv.base_url, size, tmp_path / f"k{i}")
            assert killed and rc == 0, (m, tail)
            state = bench.RunState.read(stage)
            assert len(state.rows) == size and state.rows == ref.rows, m
            assert state.duplicates() == 0 and state.failures_kept(ref) == 0, m
            assert state.metrics["llm"]["calls"] < ref.metrics["llm"]["calls"], m  # finished work reused
