"""The `openai` backend against real HTTP servers on 127.0.0.1: the scriptable stub server (faults,
latency, several URLs) and, marked slow, llama-cpp-python's OpenAI-compatible server on SmolLM2."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from email.utils import formatdate
from pathlib import Path

import pytest
from multidict import CIMultiDict

from treesynth.errors import TreesynthError
from treesynth.llm import LLM, ChatRequest, Completion, LLMError, RequestCache, build_llm
from treesynth.llm.openai_compat import OpenAIBackend, retry_after_s
from treesynth.testing.stub_server import StubReply, StubServer

SCHEMA = {
    "title": "pick",
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "reason": {"type": "string", "maxLength": 40},
    },
    "required": ["color", "reason"],
    "additionalProperties": False,
}
FAST = {"backoff_base_s": 0.05, "backoff_max_s": 0.2, "cooldown_429_s": 0.2, "timeout_s": 5, "max_retries": 3}


def cfg(*urls: str, api_key_env: str | None = None, model: str = "stub-model", **runtime: object) -> dict:
    return {"backend": "openai", "model": model, "api_key_env": api_key_env,
            "runtime": {"base_urls": list(urls), **FAST, **runtime}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ask(llm: LLM, *requests: ChatRequest) -> list[Completion]:
    async def go() -> list[Completion]:
        try:
            return await llm.generate(list(requests))
        finally:
            await llm.aclose()

    return asyncio.run(go())


def health(backend: OpenAIBackend) -> None:
    async def go() -> None:
        try:
            await backend.health_check()
        finally:
            await backend.aclose()

    asyncio.run(go())


def with_cache(config: dict, tmp_path: Path) -> tuple[LLM, RequestCache]:
    llm = build_llm(config, cache_dir=tmp_path)
    assert llm.cache is not None
    return llm, llm.cache


# --- plain round trips ------------------------------------------------------------------------
def test_round_trip_sends_seed_schema_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TREESYNTH_TEST_KEY", "sk-test-123")
    with StubServer(respond=lambda body: {"color": "blue", "reason": "calm"} if body.get("response_format") else None) as srv:
        llm = build_llm(cfg(srv.base_url, api_key_env="TREESYNTH_TEST_KEY"))
        text, js = ask(llm, ChatRequest.user("say hi", seed=42, max_tokens=33, temperature=0.3, stop=("\n\n",)),
                       ChatRequest.user("pick one", seed=9, json_schema=SCHEMA))
    assert text.ok and text.text.startswith("stub answer") and text.completion_tokens > 0 and text.prompt_tokens == 2
    assert js.ok and js.data == {"color": "blue", "reason": "calm"}
    first, second = sorted(srv.received, key=lambda b: b["seed"], reverse=True)
    assert first["seed"] == 42 and first["max_tokens"] == 33 and first["temperature"] == 0.3
    assert first["stop"] == ["\n\n"] and first["model"] == "stub-model" and "response_format" not in first
    assert second["response_format"] == {"type": "json_schema",
                                         "json_schema": {"name": "pick", "schema": SCHEMA, "strict": True}}
    assert srv.last_authorization == "Bearer sk-test-123"


def test_truncation_and_two_event_loops() -> None:
    with StubServer(respond=lambda body: StubReply("partial", finish_reason="length")) as srv:
        llm = build_llm(cfg(srv.base_url))
        # each asyncio.run is a fresh event loop; the backend must rebuild its clients.
        a, = asyncio.run(llm.generate([ChatRequest.user("one", seed=1)]))
        b, = asyncio.run(llm.generate([ChatRequest.user("two", seed=2)]))
    assert a.finish_reason == b.finish_reason == "length" and a.text == "partial"
    assert srv.requests == 4  # a cut answer is asked again once (runtime.answer_retries) before it is returned


def test_concurrency_is_bounded_per_url() -> None:
    with StubServer(latency=0.05) as srv:
        llm = build_llm(cfg(srv.base_url, max_concurrency=3))
        out = ask(llm, *(ChatRequest.user(f"q{i}", seed=i) for i in range(12)))
    assert all(c.ok for c in out) and srv.max_inflight == 3


# --- faults -----------------------------------------------------------------------------------
def test_429_then_success_honours_retry_after(tmp_path: Path) -> None:
    with StubServer(fail_first=2, fail_status=429, retry_after=0.4) as srv:
        llm, cache = with_cache(cfg(srv.base_url, cooldown_429_s=5), tmp_path)
        t0 = time.perf_counter()
        c, = ask(llm, ChatRequest.user("rate limited", seed=1))
        elapsed = time.perf_counter() - t0
    assert c.ok and srv.requests == 3
    # Two cooldowns of Retry-After = 0.4 s each (not the 5 s default: the header wins).
    assert 0.8 <= elapsed < 3, elapsed
    assert len(cache) == 1  # only the success


def test_429_without_retry_after_uses_cooldown() -> None:
    with StubServer(fail_first=1, fail_status=429, retry_after=None) as srv:
        llm = build_llm(cfg(srv.base_url, cooldown_429_s=0.5))
        t0 = time.perf_counter()
        c, = ask(llm, ChatRequest.user("rate limited", seed=1))
        elapsed = time.perf_counter() - t0
    assert c.ok and srv.requests == 2 and 0.5 <= elapsed < 2.5, elapsed


def test_500s_then_success(tmp_path: Path) -> None:
    with StubServer(fail_first=2, fail_status=500) as srv:
        llm, cache = with_cache(cfg(srv.base_url), tmp_path)
        c, = ask(llm, ChatRequest.user("flaky", seed=1))
    assert c.ok and srv.requests == 3 and len(cache) == 1
    assert llm.stats.errors == 0


def test_500_forever_gives_clear_error_and_no_cache_entry(tmp_path: Path) -> None:
    with StubServer(fail_first=None, fail_status=503) as srv:
        llm, cache = with_cache(cfg(srv.base_url, max_retries=2), tmp_path)
        c, = ask(llm, ChatRequest.user("down", seed=1))
        assert srv.requests == 3  # 1 + max_retries
        assert c.finish_reason == "error" and srv.base_url in c.error and "HTTP 503" in c.error
        assert len(cache) == 0 and llm.stats.errors == 1
        # The backend itself raises LLMError (the LLM layer turns it into Completion.error).
        backend = OpenAIBackend(cfg(srv.base_url, max_retries=0))

        async def direct() -> None:
            try:
                await backend.complete(ChatRequest.user("down", seed=2))
            finally:
                await backend.aclose()

        with pytest.raises(LLMError, match=r"127\.0\.0\.1.*HTTP 503"):
            asyncio.run(direct())


def test_client_error_is_not_retried() -> None:
    with StubServer(fail_first=None, fail_status=400) as srv:
        c, = ask(build_llm(cfg(srv.base_url)), ChatRequest.user("bad", seed=1))
    assert srv.requests == 1 and "HTTP 400" in c.error and srv.base_url in c.error


def test_hang_times_out(tmp_path: Path) -> None:
    with StubServer(hang=True) as srv:
        llm, cache = with_cache(cfg(srv.base_url, timeout_s=0.5, max_retries=1), tmp_path)
        t0 = time.perf_counter()
        c, = ask(llm, ChatRequest.user("hang", seed=1))
        elapsed = time.perf_counter() - t0
    assert c.finish_reason == "error" and "timeout" in c.error and srv.base_url in c.error
    assert srv.requests == 2 and 1.0 <= elapsed < 4, elapsed
    assert len(cache) == 0


# --- health check -----------------------------------------------------------------------------
def test_health_check_unreachable_url_fails_fast() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    backend = OpenAIBackend(cfg(url))
    t0 = time.perf_counter()
    with pytest.raises(TreesynthError, match="unreachable") as e:
        health(backend)
    assert url in str(e.value) and "\n" not in str(e.value)
    assert time.perf_counter() - t0 < 5


def test_health_check_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TREESYNTH_NO_SUCH_KEY", raising=False)
    backend = OpenAIBackend(cfg("http://127.0.0.1:9/v1", api_key_env="TREESYNTH_NO_SUCH_KEY"))
    with pytest.raises(TreesynthError, match="set TREESYNTH_NO_SUCH_KEY"):
        health(backend)


def test_health_check_passes_on_live_servers() -> None:
    with StubServer() as a, StubServer() as b:
        health(OpenAIBackend(cfg(a.base_url, b.base_url)))


def test_bad_config_is_a_one_line_error() -> None:
    with pytest.raises(TreesynthError, match="llm.model"):
        OpenAIBackend({"backend": "openai", "model": "", "runtime": {}})
    with pytest.raises(TreesynthError, match="llm.schema_style"):
        OpenAIBackend({**cfg("http://127.0.0.1:9/v1"), "schema_style": "xml"})


# --- several base URLs ------------------------------------------------------------------------
def test_requests_spread_over_two_servers() -> None:
    with StubServer(latency=0.05) as a, StubServer(latency=0.05) as b:
        llm = build_llm(cfg(a.base_url, b.base_url, max_concurrency=4))
        out = ask(llm, *(ChatRequest.user(f"q{i}", seed=i) for i in range(40)))
    assert all(c.ok for c in out)
    assert a.requests + b.requests == 40 and min(a.requests, b.requests) >= 12, (a.requests, b.requests)
    assert a.max_inflight == b.max_inflight == 4  # both served in parallel, each within its bound


def test_rate_limited_url_is_avoided() -> None:
    with StubServer(fail_first=None, fail_status=429, retry_after=30) as limited, StubServer(latency=0.02) as good:
        llm = build_llm(cfg(limited.base_url, good.base_url, max_concurrency=4))
        t0 = time.perf_counter()
        out = ask(llm, *(ChatRequest.user(f"q{i}", seed=i) for i in range(20)))
    assert all(c.ok for c in out) and good.answered == 20
    assert limited.requests <= 4  # only those sent before the first 429 came back
    assert time.perf_counter() - t0 < 5  # nobody waited out the 30 s cooldown


# --- pure helpers -----------------------------------------------------------------------------
def test_retry_after_parsing() -> None:
    assert retry_after_s(CIMultiDict({"Retry-After": "2"})) == 2.0
    assert retry_after_s(CIMultiDict({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    in_3s = formatdate(time.time() + 3, usegmt=True)
    assert 1 <= retry_after_s(CIMultiDict({"retry-after": in_3s})) <= 3.5
    assert retry_after_s(CIMultiDict({"retry-after": "soon"})) is None
    assert retry_after_s(CIMultiDict({})) is None


# --- real llama.cpp server --------------------------------------------------------------------
BOUNDED = {
    "title": "animal",
    "type": "object",
    "properties": {
        "animal": {"enum": ["cat", "dog", "horse"]},
        "legs": {"enum": [2, 4]},
        "traits": {"type": "array", "items": {"enum": ["fast", "small", "loyal", "furry"]},
                   "minItems": 1, "maxItems": 2},
        "name": {"type": "string", "pattern": "^[A-Za-z ]{2,12}$", "maxLength": 12},
    },
    "required": ["animal", "legs", "traits", "name"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def llama_server() -> str:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama_cpp not importable: run `make install-llama` (make test does)")
    from treesynth.models import embedded_gguf

    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf()), "--model_alias", "smollm2",
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", "2", "--verbose", "False"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "2"})
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/models", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"llama_cpp.server exited: {proc.stderr.read()[-2000:]}")
                if time.time() > deadline:
                    pytest.fail("llama_cpp.server did not answer /v1/models within 60 s")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_llama_cpp_server_round_trip(llama_server: str, tmp_path: Path) -> None:
    config = {**cfg(llama_server, model="smollm2", max_concurrency=2, timeout_s=120, max_retries=1),
              "schema_style": "json_object"}  # the Python server's grammar form
    health(OpenAIBackend(config))
    llm, cache = with_cache(config, tmp_path)
    reqs = [ChatRequest.user("Name one fruit.", seed=1, max_tokens=24, temperature=0.7),
            ChatRequest.user("Describe one animal as JSON.", seed=2, max_tokens=80, temperature=0.7,
                             json_schema=BOUNDED),
            ChatRequest.user("Describe one animal as JSON.", seed=3, max_tokens=80, temperature=0.7,
                             json_schema=BOUNDED)]
    out = ask(llm, *reqs)
    text, *jsons = out
    assert text.error is None and text.text.strip() and text.completion_tokens > 0 and text.prompt_tokens > 0
    for c in jsons:
        assert c.ok, c.error  # the server's grammar made the answer valid; no retry needed
        assert c.data["animal"] in {"cat", "dog", "horse"} and 1 <= len(c.data["traits"]) <= 2
        assert json.loads(c.text) == c.data
    assert llm.stats.invalid_json == 0
    # Same seed, same answer: llama.cpp honours the per-request seed; the rerun is served from cache.
    llm2 = build_llm(config, cache_dir=tmp_path)
    again = ask(llm2, *reqs)
    assert [c.text for c in again] == [c.text for c in out] and all(c.cached for c in again if c.ok)
    assert len(cache) == sum(c.ok for c in out)


LLAMA_SYNTHESIS = [
    # the README's example: a small model behind llama-cpp-python's server gets the constrained profile
    ["llm.profile=constrained", "method=treesynth", "method.max_depth=1", "method.pivots=3", "data.size=4"],
    # the open profile on the same weak model still finishes (final-answer calls, refill); short budgets
    ["method=temperature", "method.samples_per_call=2", "data.size=2",
     "+llm.profile_overrides.response.max_tokens=200", "+llm.profile_overrides.response.retries=1"],
]


@pytest.mark.slow
@pytest.mark.parametrize("overrides", LLAMA_SYNTHESIS, ids=["constrained-treesynth", "open-temperature"])
def test_whole_synthesis_over_llama_cpp_server(llama_server: str, tmp_path: Path, overrides: list[str]) -> None:
    """A whole synthesis over the real server: exactly data.size records, each in the answer format. The
    harness sends schemas in a spelling the server's grammar converter handles (gbnf_safe) and validates
    every answer itself."""
    from conftest import compose_config

    from treesynth.io import read_jsonl
    from treesynth.pipeline import run_stage, stage_dir
    from treesynth.tasks import task_of

    cfg = compose_config(["stages=[synthesize]", "task=gsm8k", "llm=openai", "llm.model=smollm2", "llm.api_key_env=null",
                          "llm.schema_style=json_object", f"llm.runtime.base_urls=[{llama_server}]",
                          "llm.runtime.max_concurrency=2", "llm.runtime.timeout_s=300", *overrides], tmp_path)
    metrics = run_stage(cfg, "synthesize")
    rows = read_jsonl(stage_dir(cfg, "synthesize") / "data.jsonl")
    task = task_of(cfg)
    assert len(rows) == int(cfg.data.size) == metrics["records"]
    assert all(task.ends_in_answer_format(r["completion"]) for r in rows)
    assert metrics["llm"]["connection_errors"] == 0  # the server survived every grammar we sent


def test_schema_styles() -> None:
    from treesynth.llm.openai_compat import gbnf_safe, response_format

    assert response_format(SCHEMA, "json_object") == {"type": "json_object", "schema": gbnf_safe(SCHEMA)}
    # llama-cpp-python's converter: spellings its grammar parser rejects (they killed the server process)
    number = {"type": "string", "pattern": "^-?[0-9]{1,9}(\\.[0-9]{1,3})?$"}
    code = {"type": "string", "pattern": "^[\\s\\S]+$", "minLength": 10, "maxLength": 800}
    guard = {"type": "string", "minLength": 1, "maxLength": 8000}
    safe = gbnf_safe({"type": "object", "properties": {"n": number, "c": code, "g": guard,
                                                     "k": {"type": "string", "pattern": "^[a\\.b\\[\\]]{1,3}$"}}})
    assert safe["properties"] == {"n": {"type": "string", "pattern": "^-?[0-9]{1,9}([.][0-9]{1,3})?$"},
                                  "c": {"type": "string", "minLength": 10, "maxLength": 800},
                                  "g": {"type": "string", "minLength": 1},
                                  "k": {"type": "string", "pattern": "^[a\\.b\\[\\]]{1,3}$"}}
    for s in (number, safe["properties"]["n"]):  # the same language
        assert all(bool(re.fullmatch(s["pattern"], x)) == ok for x, ok in [("12.5", True), ("12x5", False), ("-3", True)])
    assert response_format({"title": "a b/c"})["json_schema"]["name"] == "a_b_c"
