"""LLM layer behaviour around any backend: request cache, failures, truncation, JSON-schema retries.
A tiny scripted Backend (defined here) stands in for a model; no network, no weights."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from treesynth.llm import LLM, Backend, ChatRequest, Completion, LLMError, RequestCache

SCHEMA = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "blue"]}},
    "required": ["color"],
    "additionalProperties": False,
}


class Script(Backend):
    """Answers with `answer(request, call_no)`; records every request that reached it."""

    model = "script-model"

    def __init__(self, answer: Callable[[ChatRequest, int], Completion | Exception]):
        self.answer = answer
        self.seen: list[ChatRequest] = []

    async def complete(self, request: ChatRequest) -> Completion:
        self.seen.append(request)
        out = self.answer(request, len(self.seen))
        if isinstance(out, Exception):
            raise out
        return out


def ok(text: str = "hello") -> Completion:
    return Completion(text=text, prompt_tokens=3, completion_tokens=len(text.split()))


def run(llm: LLM, *requests: ChatRequest) -> list[Completion]:
    return asyncio.run(llm.generate(list(requests)))


@pytest.fixture
def cache(tmp_path: Path) -> RequestCache:
    c = RequestCache(tmp_path / "requests.sqlite")
    yield c
    c.close()


def test_same_request_twice_costs_one_backend_call(cache: RequestCache) -> None:
    backend = Script(lambda r, n: ok(f"answer {r.seed}"))
    llm = LLM(backend, cache)
    req = ChatRequest.user("What is 2+2?", seed=7)
    first, = run(llm, req)
    second, = run(llm, req)
    assert len(backend.seen) == 1
    assert first.text == second.text == "answer 7"
    assert not first.cached and second.cached
    assert llm.stats.calls == 1 and llm.stats.cache_hits == 1 and llm.stats.requests == 2
    # A different seed (or prompt) is a different key.
    run(llm, ChatRequest.user("What is 2+2?", seed=8))
    assert len(backend.seen) == 2


def test_cache_persists_across_processes(tmp_path: Path) -> None:
    req = ChatRequest.user("persist me", seed=1)
    c1 = RequestCache(tmp_path / "c.sqlite")
    run(LLM(Script(lambda r, n: ok("stored")), c1), req)
    c1.close()
    c2 = RequestCache(tmp_path / "c.sqlite")
    backend = Script(lambda r, n: ok("fresh"))
    assert run(LLM(backend, c2), req)[0].text == "stored"
    assert backend.seen == []
    c2.close()


def test_failed_request_is_not_cached_and_retried_next_time(cache: RequestCache) -> None:
    backend = Script(lambda r, n: LLMError("http://x/v1 failed; last: HTTP 500") if n == 1 else ok("recovered"))
    llm = LLM(backend, cache)
    req = ChatRequest.user("flaky", seed=1)
    first = run(llm, req)[0]
    assert first.error and "HTTP 500" in first.error and first.finish_reason == "error"
    assert not first.ok and len(cache) == 0 and llm.stats.errors == 1
    second = run(llm, req)[0]  # never raises; the next run asks the backend again
    assert second.ok and second.text == "recovered" and not second.cached
    assert len(backend.seen) == 2 and len(cache) == 1


def test_truncated_response_is_not_cached(cache: RequestCache) -> None:
    backend = Script(lambda r, n: Completion(text="cut off mid", finish_reason="length", completion_tokens=512))
    llm = LLM(backend, cache)
    req = ChatRequest.user("long answer", seed=3)
    a, = run(llm, req)
    b, = run(llm, req)
    assert a.finish_reason == b.finish_reason == "length" and not b.cached
    assert len(backend.seen) == 2 and len(cache) == 0
    assert llm.stats.truncated == 2


def test_invalid_json_is_retried_with_derived_seeds_then_recorded_as_error(cache: RequestCache) -> None:
    backend = Script(lambda r, n: ok('{"color": "green"}'))  # parses, but violates the enum
    llm = LLM(backend, cache, json_retries=2)
    req = ChatRequest.user("pick a color", seed=11, json_schema=SCHEMA)
    c, = run(llm, req)  # does not raise
    assert c.error and c.error.startswith("invalid JSON") and c.data is None
    seeds = [r.seed for r in backend.seen]
    assert len(seeds) == 3 and seeds[0] == 11 and len(set(seeds)) == 3  # each retry samples anew
    assert llm.stats.invalid_json == 3 and llm.stats.errors == 1
    assert len(cache) == 0  # invalid answers are never cached


def test_json_retry_success_is_parsed_and_cached(cache: RequestCache) -> None:
    answers = {1: ok("not json at all"), 2: ok('Sure! ```json\n{"color": "blue"}\n```')}
    backend = Script(lambda r, n: answers.get(n, ok('{"color": "red"}')))
    llm = LLM(backend, cache, json_retries=2)
    req = ChatRequest.user("pick a color", seed=5, json_schema=SCHEMA)
    c, = run(llm, req)
    assert c.ok and c.data == {"color": "blue"}  # prose and fences around JSON are tolerated
    assert len(backend.seen) == 2 and len(cache) == 1 and llm.stats.invalid_json == 1


def test_cached_text_that_no_longer_validates_is_not_served(cache: RequestCache) -> None:
    # The cache key includes the schema, but an entry written by older code must still be checked.
    req = ChatRequest.user("pick a color", seed=5, json_schema=SCHEMA)
    cache.put(req.cache_key("script-model"), ok(json.dumps({"color": "purple"})))
    backend = Script(lambda r, n: ok('{"color": "red"}'))
    c, = run(LLM(backend, cache), req)
    assert c.data == {"color": "red"} and len(backend.seen) == 1


def test_generate_preserves_order_and_counts_tokens() -> None:
    async def slow_first(r: ChatRequest) -> Completion:
        await asyncio.sleep(0.05 if r.seed == 0 else 0)
        return ok(f"n{r.seed}")

    class Reordering(Script):
        async def complete(self, request: ChatRequest) -> Completion:
            return await slow_first(request)

    llm = LLM(Reordering(lambda r, n: ok()))
    out = run(llm, *(ChatRequest.user("q", seed=i) for i in range(5)))
    assert [c.text for c in out] == [f"n{i}" for i in range(5)]
    assert llm.stats.prompt_tokens == 15 and llm.stats.completion_tokens == 5


def test_schema_verdicts_are_jsonschemas() -> None:
    """The compiled fast check only short-cuts acceptance: what it rejects jsonschema judges, so every
    verdict (and its message) is jsonschema's, also where the two differ (Python's `$` allows a final
    newline, the Rust regex does not)."""
    import jsonschema

    from treesynth.llm import parse_json

    schema = {"type": "object", "properties": {"q": {"type": "string", "pattern": "^[a-z ]{2,20}$"},
                                               "n": {"type": "integer"}}, "required": ["q"]}
    for data in ({"q": "two words"}, {"q": "ends in newline\n"}, {"q": "x"}, {"q": "UPPER"}, {"n": 3},
                 {"q": "ok", "n": 1.0}, {"q": "ok", "n": "3"}, [1]):
        expected = jsonschema.Draft202012Validator(schema).is_valid(data)
        if expected:
            assert parse_json(json.dumps(data), schema) == data
        else:
            with pytest.raises(jsonschema.ValidationError) as e:
                parse_json(json.dumps(data), schema)
            assert e.value.message == jsonschema.exceptions.best_match(
                jsonschema.Draft202012Validator(schema).iter_errors(data)).message


def test_cache_puts_are_grouped_yet_read_back_and_kept(tmp_path: Path) -> None:
    """Puts are held and written in one transaction per group: the same cache answers them at once, a
    second connection to the file is never blocked (it sees them after the flush), close() keeps them."""
    path = tmp_path / "c.sqlite"
    a, b = RequestCache(path), RequestCache(path)
    a.put("k1", ok("one"))
    assert a.get("k1").text == "one" and b.get("k1") is None  # held, not yet written
    b.put("k2", ok("two"))
    b.flush()  # a holds no open transaction: b's write goes through at once
    a.flush()
    assert b.get("k1").text == "one" and a.get("k2").text == "two"
    a.put("k3", ok("three"))
    a.close()
    b.close()
    assert RequestCache(path).get("k3").text == "three"


def test_admission_bounds_a_fan_out_and_nests() -> None:
    """A backend that serves `parallel` requests at once gets at most 2x that many admitted; work that
    holds an admission place (render, then ask) is not gated again inside, so it cannot deadlock."""

    class Slots(Backend):
        model, parallel = "slots-model", 3

        def __init__(self) -> None:
            self.now = self.peak = 0

        async def complete(self, request: ChatRequest) -> Completion:
            self.now += 1
            self.peak = max(self.peak, self.now)
            await asyncio.sleep(0.001)
            self.now -= 1
            return ok()

    backend = Slots()
    llm = LLM(backend)

    async def held(i: int) -> Completion:
        async with llm.admission():
            return await llm.complete(ChatRequest.user(f"q{i}", seed=i))

    async def go() -> list[Completion]:
        return await asyncio.gather(*(held(i) for i in range(40)), *(llm.complete(ChatRequest.user(f"r{i}")) for i in range(40)))

    assert all(c.ok for c in asyncio.run(go()))
    assert backend.peak == 6 and llm.stats.requests == 80
    assert all(c.ok for c in asyncio.run(go()))  # a second event loop gets its own gate


def test_admitted_first_waiters_go_before_the_others() -> None:
    """The gate hands a freed place to a waiter of `admitted_first()` before any other, whatever came first."""
    from treesynth.llm.admission import AdmissionGate, admitted_first

    async def go() -> list[str]:
        gate, order = AdmissionGate(1), []
        await gate.acquire()  # the one place is taken: everyone below waits

        async def wait(name: str) -> None:
            await gate.acquire()
            order.append(name)
            gate.release()

        others = [asyncio.create_task(wait(f"other{i}")) for i in range(3)]
        await asyncio.sleep(0)
        with admitted_first():
            first = [asyncio.create_task(wait(f"first{i}")) for i in range(2)]
        await asyncio.sleep(0)
        cancelled = asyncio.create_task(wait("gone"))
        await asyncio.sleep(0)
        cancelled.cancel()  # a cancelled waiter is skipped, its place not lost
        gate.release()
        await asyncio.gather(*others, *first)
        assert gate.free == 1
        return order

    assert asyncio.run(go()) == ["first0", "first1", "other0", "other1", "other2"]


def test_gather_starts_calls_only_once_admitted_and_keeps_their_order() -> None:
    """LLM.gather: results (and exceptions) in call order; never more calls started than admission places."""

    class Slots(Backend):
        model, parallel = "slots-model", 2

        async def complete(self, request: ChatRequest) -> Completion:
            return ok()

    llm = LLM(Slots())
    started = running = peak = 0

    async def call(i: int) -> int:
        nonlocal started, running, peak
        started += 1
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001 * (i % 3))
        running -= 1
        if i == 5:
            raise ValueError("five")
        return i

    out = asyncio.run(llm.gather(call(i) for i in range(30)))
    assert [x for x in out if not isinstance(x, BaseException)] == [i for i in range(30) if i != 5]
    assert isinstance(out[5], ValueError) and started == 30 and peak == llm.admission_limit == 4


def test_cache_key_is_the_sha256_of_the_sorted_request_json() -> None:
    """The key's definition is fixed (a changed one would re-pay every cached call of a resumed run), and
    it tells apart what changes an answer."""
    import hashlib
    from dataclasses import fields

    import orjson

    schema = {"title": "x", "type": "object", "properties": {"b": {"enum": ["é", 1.5, None]}, "a": {"pattern": "^\\s$"}}}
    reqs = [ChatRequest.user('hi "q"\n', seed=3), ChatRequest(messages=(("system", "s"), ("user", "u")), json_schema={}),
            ChatRequest.user("x", json_schema=schema, stop=("\n\n",), temperature=0.0, top_p=0.9, max_tokens=7)]
    for req in reqs:
        payload = {"model": "m", **{f.name: getattr(req, f.name) for f in fields(req)}}
        assert req.cache_key("m") == hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()
    same_schema_reordered = dict(reversed(list(schema.items())))
    assert reqs[2].cache_key("m") == ChatRequest.user("x", json_schema=same_schema_reordered, stop=("\n\n",),
                                                      temperature=0.0, top_p=0.9, max_tokens=7).cache_key("m")
    assert len({r.cache_key("m") for r in reqs} | {reqs[0].cache_key("other")}) == 4
