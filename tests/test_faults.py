"""Faults against the loopback stub (treesynth/llm/stub_server.py): the openai backend's fault counters."""

from __future__ import annotations

import asyncio

from treesynth.llm import LLM, ChatRequest, Completion, build_llm
from treesynth.llm.stub_server import StubServer

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


# --- counters ----------------------------------------------------------------------------------
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
