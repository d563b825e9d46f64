"""Batch mode (treesynth/llm/batch.py) against the loopback stub's /v1/files and /v1/batches: answers
equal the online API's, tree building stays online, expired and error-file lines are retried, a rerun
after a kill picks up the batch in flight instead of paying for a second one, and the stage metrics count
batches, batched requests and the discount."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, compose_config

from treesynth.errors import TreesynthError
from treesynth.io import read_jsonl
from treesynth.llm import LLM, Budget, BudgetExceeded, ChatRequest, build_backend, build_llm, online_requests
from treesynth.pipeline import run_pipeline, run_stage, stage_dir
from treesynth.testing.stub_server import StubServer

FAST = {"window_s": 0.1, "poll_s": 0.05}


def llm_cfg(srv: StubServer, mode: str = "batch", price: dict | None = None, **batch) -> dict:
    return {"backend": "openai", "model": srv.model, "api_key_env": None, "price": price,
            "runtime": {"base_urls": [srv.base_url], "mode": mode, "max_retries": 1, "backoff_base_s": 0.01,
                        "batch": {**FAST, "discount": 0.5, **batch}}}  # OpenAI's, as in openai.yaml


def requests(n: int, schema: dict | None = None) -> list[ChatRequest]:
    return [ChatRequest.user(f"question {i}", seed=i, json_schema=schema) for i in range(n)]


def run(llm, reqs: list[ChatRequest]) -> list:
    async def go() -> list:
        try:
            return await llm.generate(reqs)
        finally:
            await llm.aclose()
    return asyncio.run(go())


def batch_lines(srv: StubServer) -> list[str]:
    return [line["custom_id"] for b in srv.batches.values() for line in b["lines"]]


def test_batch_answers_equal_online_and_are_counted(tmp_path):
    schema = {"title": "samples", "type": "object", "properties": {"q": {"type": "string", "maxLength": 20}},
              "required": ["q"]}
    reqs = requests(15) + requests(5, schema)
    with StubServer(batch_delay=0.2) as srv:
        online = run(build_llm(llm_cfg(srv, "online")), reqs)
        assert srv.batches == {} and srv.requests == 20
        llm = build_llm(llm_cfg(srv, price={"input": 1.0, "output": 4.0}), tmp_path / "cache")
        batched = run(llm, reqs)
        assert srv.requests == 20  # nothing more went to the chat endpoint
    assert [c.text for c in batched] == [c.text for c in online]
    assert [c.data for c in batched[15:]] == [c.data for c in online[15:]] and batched[15].data is not None
    (batch,) = srv.batches.values()
    assert batch["status"] == "completed" and batch["endpoint"] == "/v1/chat/completions"
    assert batch["completion_window"] == "24h"
    assert sorted(batch_lines(srv)) == sorted(r.cache_key(srv.model) for r in reqs)  # custom_id = cache key
    m = llm.stats.as_dict()
    assert (m["batches"], m["batched_requests"], m["batch_answers"], m["errors"]) == (1, 20, 20, 0)
    p, c = sum(x.prompt_tokens for x in online), sum(x.completion_tokens for x in online)
    assert (m["batch_prompt_tokens"], m["batch_completion_tokens"]) == (p, c) and p > 0 and c > 0
    assert m["batch_saved_prompt_tokens"] == round(p / 2) and m["batch_saved_completion_tokens"] == round(c / 2)
    assert m["batch_saved_usd"] == pytest.approx((p / 2 * 1.0 + c / 2 * 4.0) / 1e6)
    # The answers went into the request cache under their custom_id: a second run asks nothing.
    again = build_llm(llm_cfg(srv), tmp_path / "cache")
    assert [x.text for x in run(again, reqs)] == [x.text for x in online] and again.stats.cache_hits == 20


def test_batch_answers_are_paid_at_the_batch_price(tmp_path):
    price = {"input": 1.0, "output": 4.0}
    reqs = requests(12)
    with StubServer() as srv:
        online = build_llm(llm_cfg(srv, "online", price), tmp_path / "online")
        run(online, reqs)
        batched = build_llm(llm_cfg(srv, "batch", price), tmp_path / "batch")
        run(batched, reqs)
    paid = online.stats.cost_usd
    assert paid > 0 and batched.stats.cost_usd == pytest.approx(paid / 2)
    assert batched.stats.as_dict()["batch_saved_usd"] == pytest.approx(paid / 2)


def test_a_budget_for_the_batch_price_completes_in_batch_mode(tmp_path):
    # Every answer is exactly max_tokens long (the stub counts words), so a call costs its worst case:
    # online 10 x 8 tokens at $1 a token = $80, in a batch $40. A $60 budget stops online, not in a batch.
    price = {"input": 0.0, "output": 1e6}
    reqs = [ChatRequest.user(f"question {i}", seed=i, max_tokens=8) for i in range(10)]
    eight_words = "one two three four five six seven eight"
    with StubServer(respond=lambda body: eight_words) as srv:
        online = build_llm(llm_cfg(srv, "online", price), tmp_path / "online", budget=Budget(60.0))
        with pytest.raises(BudgetExceeded, match="budget llm.budget_usd=60 reached"):
            run(online, reqs)
        budget = Budget(60.0)
        batched = build_llm(llm_cfg(srv, "batch", price), tmp_path / "batch", budget=budget)
        out = run(batched, reqs)
    assert all(c.ok for c in out) and budget.total == pytest.approx(40.0) and budget.refused == 0


@pytest.mark.parametrize("method", ["treesynth", "temperature"])
def test_plan_prices_batched_calls_at_the_discount(tmp_path, capsys, method):
    base = ["experiment=paper_main", "task=gsm8k", "llm=openai", "llm.model=gpt-4o", "stages=[synthesize]",
            f"method={method}", "method.plan_only=true"]
    cost = {mode: run_stage(compose_config([*base, f"llm.runtime.mode={mode}"], tmp_path / mode), "synthesize")
            ["plan"]["cost"] for mode in ("online", "batch")}
    assert cost["batch"]["price_per_million_tokens"]["teacher"] == {"input": 2.5, "output": 10.0, "batch_discount": 0.5}
    assert "batch mode: all but tree building at 50% off" in capsys.readouterr().out
    for bound in ("likely_usd", "upper_bound_usd"):
        online, batch = cost["online"][bound], cost["batch"][bound]
        if method == "temperature":  # every call batchable: half price
            assert batch == pytest.approx(online / 2, abs=0.01) and batch > 0
        else:  # tree building stays online at the full price
            assert online / 2 < batch < online


def test_tree_building_requests_stay_online(tmp_path):
    tree_schema = {"title": "coverage", "type": "object", "properties": {"complete": {"type": "boolean"}},
                   "required": ["complete"]}
    with StubServer() as srv:
        llm = build_llm(llm_cfg(srv), tmp_path / "cache")

        async def go() -> None:
            with online_requests():
                await llm.generate(requests(3))  # e.g. the pivots of a node
            await llm.generate(requests(2, tree_schema))  # a tree-building step, recognised by its schema
            await llm.generate([ChatRequest.user("a leaf", seed=9)])
            await llm.aclose()

        asyncio.run(go())
    assert srv.requests == 5 and len(srv.batches) == 1 and len(batch_lines(srv)) == 1


def test_expired_batch_retries_missing_lines(tmp_path):
    with StubServer(batch_expire_after=5) as srv:  # every batch answers 5 lines, the rest expire
        llm = build_llm(llm_cfg(srv, line_retries=2), tmp_path / "cache")
        out = run(llm, requests(12))
    assert all(c.ok for c in out)
    statuses = [b["status"] for b in srv.batches.values()]
    sizes = [len(b["lines"]) for b in srv.batches.values()]
    assert statuses == ["expired", "expired", "completed"] and sizes == [12, 7, 2]
    m = llm.stats.as_dict()
    assert (m["batches"], m["batch_line_retries"], m["batch_answers"], m["batch_failed_lines"]) == (3, 9, 12, 0)


def test_error_file_lines_are_retried_then_fail(tmp_path):
    with StubServer(batch_error_rate=0.5, batch_error_attempts=1, seed=3) as srv:
        llm = build_llm(llm_cfg(srv), tmp_path / "a")
        out = run(llm, requests(16))
    faulted = srv.batch_line_errors
    assert 0 < faulted < 16 and all(c.ok for c in out)
    assert llm.stats.as_dict()["batch_line_retries"] == faulted and len(srv.batches) == 2
    assert len(srv.batches[list(srv.batches)[1]]["lines"]) == faulted

    # Lines that keep failing end as errors once line_retries are used up (no endless re-batching).
    with StubServer(batch_error_rate=1.0, batch_error_attempts=99) as srv:
        llm = build_llm(llm_cfg(srv, line_retries=1), tmp_path / "b")
        out = run(llm, requests(3))
    assert all(not c.ok and "batch line failed" in c.error for c in out) and len(srv.batches) == 2
    assert llm.stats.as_dict()["batch_failed_lines"] == 3 and llm.stats.errors == 3


def test_failed_batch_ends_in_errors_with_the_reason(tmp_path):
    with StubServer() as srv:  # the stub, like the API, accepts only completion_window=24h
        llm = build_llm(llm_cfg(srv, completion_window="48h", line_retries=1), tmp_path / "cache")
        out = run(llm, requests(2))
    assert [b["status"] for b in srv.batches.values()] == ["failed", "failed"]
    assert all("failed: completion_window must be 24h" in c.error for c in out)


def test_rerun_picks_up_a_batch_in_flight(tmp_path):
    reqs = requests(10)
    with StubServer(batch_delay=3600) as srv:
        llm = build_llm(llm_cfg(srv), tmp_path / "cache")

        async def killed() -> None:  # the run ends while its batch is in progress
            task = asyncio.ensure_future(llm.generate(reqs))
            while not any(b["status"] == "in_progress" for b in srv.batches.values()):
                await asyncio.sleep(0.02)
            task.cancel()
            await llm.aclose()

        asyncio.run(killed())
        srv.batch_delay = 0
        rerun = build_llm(llm_cfg(srv), tmp_path / "cache")  # a new process: state from the checkpoint
        out = run(rerun, reqs)
    assert all(c.ok for c in out) and len(srv.batches) == 1
    m = rerun.stats.as_dict()
    assert (m["batches"], m["batches_resumed"], m["batch_answers"]) == (0, 1, 10)


def test_answers_of_a_finished_batch_serve_the_rerun(tmp_path):
    # Killed after the batch finished but before its answers reached the request cache: the rerun
    # answers from the kept results file, without a new batch; a second ask of a key goes to a new one.
    reqs = requests(6)
    with StubServer() as srv:
        backend = build_backend(llm_cfg(srv), tmp_path / "cache")

        async def first() -> list:
            try:
                return await asyncio.gather(*(backend.complete(r) for r in reqs))
            finally:
                await backend.aclose()

        answers = [c.text for c in asyncio.run(first())]
        assert len(srv.batches) == 1
        rerun = LLM(build_backend(llm_cfg(srv), tmp_path / "cache"))  # no request cache to answer from
        assert [c.text for c in run(rerun, reqs)] == answers and len(srv.batches) == 1
        again = build_backend(llm_cfg(srv), tmp_path / "cache")

        async def twice() -> None:
            try:
                await again.complete(reqs[0])
                await again.complete(reqs[0])
            finally:
                await again.aclose()

        asyncio.run(twice())
        assert len(srv.batches) == 2 and len(batch_lines(srv)) == 7


def test_bad_mode_is_one_line_error(tmp_path):
    with pytest.raises(TreesynthError, match="llm.runtime.mode='bulk'"):
        build_llm({"backend": "openai", "model": "m", "runtime": {"mode": "bulk"}})
    with pytest.raises(TreesynthError, match="needs llm.backend=openai"):
        build_llm({"backend": "treesynth.testing.scripted:ScriptedBackend", "model": "m", "runtime": {"mode": "batch"}})
    with pytest.raises(TreesynthError, match="unknown keys"):
        build_llm({"backend": "openai", "model": "m", "runtime": {"mode": "batch", "batch": {"windows": 1}}})
    with pytest.raises(TreesynthError, match=r"^llm.runtime.batch.discount must be in \[0, 1\), got 1.5$"):
        build_llm({"backend": "openai", "model": "m", "runtime": {"mode": "batch", "batch": {"discount": 1.5}}})


# ---- the synthesis stage ---------------------------------------------------------------------
TREE = ["method=treesynth", "method.max_depth=2", "method.pivots=3"]


def stage_overrides(srv: StubServer, root: Path, mode: str, size: int = 10) -> list[str]:
    return [
        "stages=[synthesize]", "task=gsm8k", *TREE, "llm=openai", "llm.profile=constrained", "seed=0",
        "llm.model=stub-model", "llm.api_key_env=null", f"llm.runtime.base_urls=[{srv.base_url}]",
        "llm.runtime.max_retries=1", f"llm.runtime.mode={mode}", "llm.runtime.batch.window_s=0.2",
        "llm.runtime.batch.poll_s=0.05", "llm.price.input=1", "llm.price.output=4",
        f"data.size={size}", "data.hygiene.decontaminate=false",
        f"paths.artifacts={root / 'artifacts'}", f"paths.results={root / 'results'}", "wandb.mode=disabled",
    ]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return hydra_compose("config", overrides=overrides)


def test_synthesis_in_batch_mode_equals_online(tmp_path):
    with StubServer(seed=1) as srv:
        cfg = compose(stage_overrides(srv, tmp_path / "online", "online"))
        online_summary = run_pipeline(cfg, tmp_path / "online" / "run")
        online_rows = read_jsonl(stage_dir(cfg, "synthesize") / "data.jsonl")
        online_requests_sent = srv.requests

        cfg = compose(stage_overrides(srv, tmp_path / "batch", "batch"))
        summary = run_pipeline(cfg, tmp_path / "batch" / "run")
        rows = read_jsonl(stage_dir(cfg, "synthesize") / "data.jsonl")
    assert stage_dir(cfg, "synthesize").name == stage_dir(compose(stage_overrides(srv, tmp_path, "online")),
                                                          "synthesize").name  # mode is not in the key
    assert rows == online_rows and len(rows) == 10
    tree_calls = srv.requests - online_requests_sent  # what batch mode still sent online
    lines = [line["body"] for b in srv.batches.values() for line in b["lines"]]
    titles = {(b.get("response_format") or {}).get("json_schema", {}).get("name") for b in lines}
    assert titles == {"samples", "response"}, titles  # leaves and teacher answers only
    online_titles = {(b.get("response_format") or {}).get("json_schema", {}).get("name")
                     for b in srv.received[online_requests_sent:]}
    # pivots ("samples" inside the tree builder), proposals and assignments went online
    assert {"samples", "propose", "assign"} <= online_titles and "response" not in online_titles
    leaf_calls = read_jsonl(stage_dir(cfg, "synthesize") / "leaf_calls.jsonl")
    assert sum(1 for b in lines if b["response_format"]["json_schema"]["name"] == "samples") == len(leaf_calls)
    m = summary["stages"]["synthesize"]["llm"]
    assert m["batches"] == len(srv.batches) >= 2 and m["batched_requests"] == len(lines) >= 10
    assert m["calls"] == tree_calls + m["batch_answers"] and m["batch_saved_completion_tokens"] > 0
    # What was paid: tree building at the online price, the batched leaves and answers at half of it.
    paid_online, paid = online_summary["stages"]["synthesize"]["cost_usd"], summary["stages"]["synthesize"]["cost_usd"]
    assert paid == pytest.approx(m["cost_usd"], abs=1e-6) and m["batch_saved_usd"] > 0
    assert paid == pytest.approx(paid_online - m["batch_saved_usd"], abs=1e-5)


def test_sigkill_while_batch_in_progress_then_rerun_pays_nothing_twice(tmp_path):
    """run.py in a child process, SIGKILLed while its first batch is in_progress; the rerun attaches to
    that batch: no custom_id is ever submitted twice."""
    with StubServer(seed=2, batch_delay=3600) as srv:
        args = [*stage_overrides(srv, tmp_path, "batch", size=6), f"hydra.run.dir={tmp_path / 'h'}"]
        env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, str(REPO / "run.py"), *args], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while not any(b["status"] == "in_progress" for b in srv.batches.values()):
                assert proc.poll() is None and time.monotonic() < deadline, "child ended before its batch ran"
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert len(srv.batches) == 1
        checkpoint = tmp_path / "artifacts" / ".cache" / "llm" / "batches" / "batches.jsonl"
        assert [json.loads(x)["event"] for x in checkpoint.read_text().splitlines()] == ["created"]

        srv.batch_delay = 0
        cfg = compose(stage_overrides(srv, tmp_path, "batch", size=6))
        summary = run_pipeline(cfg, tmp_path / "rerun")
    ids = batch_lines(srv)
    assert len(ids) == len(set(ids))  # nothing paid twice
    m = summary["stages"]["synthesize"]["llm"]
    assert m["batches_resumed"] == 1 and m["batches"] == len(srv.batches) - 1
    assert summary["stages"]["synthesize"]["records"] == 6


def test_a_transient_batch_endpoint_failure_is_retried():
    """A 500 from /v1/batches is waited out with the online backend's backoff and retried (the Batch API
    client called a backoff the backend no longer had, so its first retry raised AttributeError)."""
    from aiohttp import web

    from treesynth.llm.batch_api import BatchAPI
    from treesynth.llm.openai_compat import OpenAIBackend

    calls = []

    async def batches(request: web.Request) -> web.Response:
        calls.append(await request.json())
        if len(calls) == 1:
            return web.Response(status=500, text="try again")
        return web.json_response({"id": "batch_1", "status": "validating"})

    async def go() -> dict:
        app = web.Application()
        app.router.add_post("/v1/batches", batches)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        backend = OpenAIBackend({"backend": "openai", "model": "m", "api_key_env": None, "runtime": {
            "base_urls": [f"http://127.0.0.1:{port}/v1"], "max_retries": 2, "backoff_base_s": 0.01}})
        api = BatchAPI(backend)
        try:
            return await api.create("file_1", "24h", {})
        finally:
            await api.close()
            await runner.cleanup()

    assert asyncio.run(go())["id"] == "batch_1" and len(calls) == 2
