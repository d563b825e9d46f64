"""Embedded backend (real SmolLM2-135M on CPU), its sampler and micro-batcher, and the lazy vLLM backend.

Model tests share one loaded model (the process-wide cache in treesynth.llm.embedded) and keep
max_tokens small; the converted model dir is cached in $TREESYNTH_CACHE (~/.cache/treesynth)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading

import jsonschema
import pytest
import torch

from treesynth.errors import TreesynthError
from treesynth.llm import ChatRequest, build_backend, build_llm
from treesynth.llm.batcher import MicroBatcher
from treesynth.llm.embedded import sample_rows, step_seed

NAME = {"type": "string", "pattern": "^[A-Za-z0-9 ,._()-]{3,40}$"}
CRITERION = {
    "type": "object",
    "properties": {"dimension": NAME, "values": {"type": "array", "items": NAME, "minItems": 2, "maxItems": 4}},
    "required": ["dimension", "values"],
    "additionalProperties": False,
}
LLM_CFG = {"backend": "embedded", "model": "embedded", "runtime": {"batch_size": 16, "device": "cpu", "max_wait_ms": 50}}


def run(coro):
    return asyncio.run(coro)


# -- sampler (no model) -----------------------------------------------------------------------------
def test_sampler_is_per_row_and_batch_independent():
    torch.manual_seed(0)
    scores = torch.randn(3, 1000)
    alone = sample_rows(scores[1:2].clone(), [0.8], [1.0], [42], step=5)
    batched = sample_rows(scores.clone(), [0.7, 0.8, 0.0], [1.0, 1.0, 1.0], [7, 42, 9], step=5)
    assert torch.equal(alone[0], batched[1])  # same (seed, step) -> same noise, whatever the neighbours
    assert torch.equal(batched[2], scores[2])  # temperature 0: raw scores, i.e. greedy
    other_step = sample_rows(scores[1:2].clone(), [0.8], [1.0], [42], step=6)
    assert not torch.equal(alone, other_step)
    assert step_seed(1, 2) != step_seed(2, 1)


def test_sampler_top_p_and_mask():
    scores = torch.zeros(1, 50)
    scores[0, 3] = 10.0  # holds > 99.9% of the mass
    scores[0, 7] = float("-inf")  # a grammar-masked token stays impossible
    picks = {int(sample_rows(scores.clone(), [1.0], [0.5], [s], 0).argmax()) for s in range(30)}
    assert picks == {3}
    out = sample_rows(scores.clone(), [1.0], [1.0], [1], 0)
    assert out[0, 7] == float("-inf")
    # Sampling is real: at temperature 1 over a flat distribution the argmax varies with the seed.
    flat = torch.zeros(1, 50)
    assert len({int(sample_rows(flat.clone(), [1.0], [1.0], [s], 0).argmax()) for s in range(30)}) > 10


# -- micro-batcher (no model) ------------------------------------------------------------------------
def test_batcher_batches_concurrent_calls_and_isolates_errors():
    threads = set()

    def run_batch(items: list[int]) -> list:
        threads.add(threading.current_thread().name)
        return [ValueError(f"bad {i}") if i == 13 else i * 10 for i in items]

    b: MicroBatcher[int, int] = MicroBatcher(run_batch, batch_size=4, max_wait_ms=50)

    async def go(n: int) -> list:
        return await asyncio.gather(*(b.submit(i) for i in range(n)), return_exceptions=True)

    out = run(go(16))
    assert out[:13] == [i * 10 for i in range(13)] and out[14:] == [140, 150]
    assert isinstance(out[13], ValueError)  # only the bad item fails, not its batch mates
    assert b.batch_sizes == [4, 4, 4, 4]
    assert run(go(3)) == [0, 10, 20]  # a second event loop (asyncio.run) works too
    assert b.batch_sizes[-1] == 3
    assert len(threads) == 1  # one worker thread: the event loop never runs the model
    b.close()


def test_batcher_batch_failure_reaches_every_caller():
    def boom(items: list[int]) -> list:
        raise RuntimeError("engine died")

    b: MicroBatcher[int, int] = MicroBatcher(boom, batch_size=8, max_wait_ms=10)

    async def go() -> list:
        return await asyncio.gather(*(b.submit(i) for i in range(3)), return_exceptions=True)

    assert all(isinstance(e, RuntimeError) for e in run(go()))
    b.close()


# -- vLLM (not installed here) -----------------------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_backend_missing_package_is_a_one_line_error():
    with pytest.raises(TreesynthError, match=r"pip install -e \.\[vllm\]") as e:
        build_backend({"backend": "vllm", "model": "embedded", "runtime": {}})
    assert "\n" not in str(e.value)


def test_vllm_structured_output_kwargs_for_both_api_generations():
    from types import SimpleNamespace

    from treesynth.llm.vllm_engine import structured_output_kwargs

    new = SimpleNamespace(StructuredOutputsParams=lambda json: ("so", json))
    old = SimpleNamespace(GuidedDecodingParams=lambda json: ("gd", json))
    assert structured_output_kwargs(new, CRITERION) == {"structured_outputs": ("so", CRITERION)}
    assert structured_output_kwargs(old, CRITERION) == {"guided_decoding": ("gd", CRITERION)}


# -- the real model ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def backend():
    b = build_backend(LLM_CFG)
    yield b
    run(b.aclose())


def gather(b, reqs):
    async def go():
        return await asyncio.gather(*(b.complete(r) for r in reqs))

    return run(go())


@pytest.mark.slow
def test_schema_rows_are_valid_json_and_plain_rows_stay_free(backend):
    topics = ["shopping", "travel", "cooking", "sports", "school", "weather", "music", "gardening"]
    reqs = [
        ChatRequest.user(
            f"Name one dimension along which math word problems about {t} differ, and 2-4 of its values. Answer in JSON.",
            # 256 covers the schema's longest possible answer (5 strings of 40 one-token characters),
            # so the grammar always closes the JSON before max_tokens.
            seed=i, temperature=0.7, max_tokens=256, json_schema=CRITERION,
        )
        for i, t in enumerate(topics)
    ]
    free = [ChatRequest.user("Say hello to a friend in one sentence.", seed=s, max_tokens=12) for s in range(2)]
    out = gather(backend, reqs + free)
    for c in out[:8]:
        assert c.finish_reason == "stop", c.text
        jsonschema.validate(json.loads(c.text), CRITERION)
    assert all(not c.text.lstrip().startswith("{") for c in out[8:])  # no schema -> no JSON forced
    assert max(backend.batcher.batch_sizes) == 10  # all ten went through one generate call


@pytest.mark.slow
def test_seed_fixes_text_whatever_the_batch(backend):
    target = ChatRequest.user("Write a one-line poem about rain.", seed=123, temperature=1.0, max_tokens=16)
    alone = gather(backend, [target])[0].text
    others = [
        ChatRequest.user("List three colours." + " Please." * k, seed=k, temperature=1.0, max_tokens=8 + k)
        for k in range(3)
    ]
    batched = gather(backend, [others[0], target, *others[1:]])
    assert batched[1].text == alone
    reseeded = gather(backend, [ChatRequest.user(target.messages[0][1], seed=s, temperature=1.0, max_tokens=16)
                                for s in (1, 2, 3)])
    assert len({alone, *(c.text for c in reseeded)}) >= 3


@pytest.mark.slow
def test_max_tokens_and_stop_strings(backend):
    prompt = "Count from 1 to 20, separated by commas."
    long, short = gather(backend, [ChatRequest.user(prompt, temperature=0, max_tokens=24),
                                   ChatRequest.user(prompt, temperature=0, max_tokens=5)])
    assert short.finish_reason == "length" and short.completion_tokens == 5
    assert long.text.startswith(short.text)  # greedy rows agree however long they run
    assert short.prompt_tokens == long.prompt_tokens > 0
    # A stop string taken from the greedy text: generation ends there and the string is trimmed.
    stop = long.text[len(long.text) // 2 :][:3]
    cut = gather(backend, [ChatRequest.user(prompt, temperature=0, max_tokens=24, stop=(stop,))])[0]
    assert cut.finish_reason == "stop"
    assert cut.text == long.text[: long.text.find(stop)]


@pytest.mark.slow
def test_build_llm_cache_hit_skips_the_backend(tmp_path):
    llm = build_llm(LLM_CFG, cache_dir=tmp_path)  # same process-wide model as the fixture
    # A tiny enum schema: the answer always ends well within max_tokens (truncations are never cached).
    schema = {"type": "object", "properties": {"word": {"enum": ["hat", "bat", "mat"]}},
              "required": ["word"], "additionalProperties": False}
    req = ChatRequest.user("Give one word that rhymes with cat.", seed=5, max_tokens=32, json_schema=schema)
    first = run(llm.generate([req]))[0]
    second = run(llm.generate([req]))[0]
    assert first.ok and first.data["word"] in {"hat", "bat", "mat"}
    assert not first.cached and second.cached and second.text == first.text
    assert llm.stats.calls == 1 and llm.stats.cache_hits == 1
    run(llm.aclose())


def test_unknown_runtime_key_is_a_one_line_error():
    with pytest.raises(TreesynthError, match="unknown llm.runtime keys \\['batchsize'\\]"):
        build_backend({**LLM_CFG, "runtime": {"batchsize": 4}})
    with pytest.raises(TreesynthError, match="^llm.runtime is missing device, max_wait_ms for backend 'embedded' "):
        build_backend({**LLM_CFG, "runtime": {"batch_size": 4}})  # the values live in conf/llm/embedded.yaml only
