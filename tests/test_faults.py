"""Faults against the loopback stub (treesynth/llm/stub_server.py): the openai backend's fault counters, and
the LLM layer's same-request re-ask of unusable answers."""

from __future__ import annotations

import asyncio
import json

import pytest

from treesynth.llm import LLM, Backend, ChatRequest, Completion, build_llm
from treesynth.llm.stub_server import StubServer

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
