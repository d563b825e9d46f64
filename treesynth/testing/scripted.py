"""A deterministic scripted backend for tests: no model, same answer for the same request.

By default it answers every JSON-schema request with a schema-valid instance drawn from a RNG seeded by
the request (so different seeds give different, distinct values and the tree branches), and free-text
requests with a fixed sentence. Tests pass `responder(request) -> str | Completion` to script exact
answers (invalid JSON, overlapping values, a reused dimension, ...). `delay_s` sleeps per call so a
test can kill a run midway. Config (conf/llm/scripted.yaml): backend, model, free_text, runtime.delay_s.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
from collections.abc import Callable
from typing import Any

from treesynth.llm.base import Backend, ChatRequest, Completion

WORDS = (
    "apple river stone cloud maple harbor lantern meadow copper violet orbit canyon ember falcon garden "
    "island jasper kettle lemon marble nectar olive pepper quartz raven saddle timber umber velvet willow "
    "yarrow zephyr amber birch cedar dune fern grove hazel iris juniper kelp lotus moss nova oak pine"
).split()

Responder = Callable[[ChatRequest], "str | Completion | None"]  # None: the default answer


def request_rng(request: ChatRequest, seeded: bool = True) -> random.Random:
    """A RNG from the request's messages (and seed, unless seeded=False: the same for every retry)."""
    key = [request.messages, request.seed] if seeded else [request.messages]
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _length_bounds(schema: dict) -> tuple[int, int]:
    lo, hi = schema.get("minLength", 3), schema.get("maxLength", 40)
    m = re.search(r"\{(\d+),(\d+)\}\$?$", schema.get("pattern", ""))
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
    return lo, hi


def instance(schema: dict, rng: random.Random) -> Any:
    """A schema-valid value for the bounded schemas this project uses (object/array/enum/string/...)."""
    if "enum" in schema:
        return rng.choice(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        return {k: instance(v, rng) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        n = rng.randint(schema.get("minItems", 1), max(schema.get("minItems", 1), min(schema.get("maxItems", 3), 4)))
        return [instance(schema.get("items", {"type": "string"}), rng) for _ in range(n)]
    if kind == "integer":
        return rng.randint(schema.get("minimum", 0), schema.get("maximum", 9))
    if kind == "boolean":
        return rng.random() < 0.5
    lo, hi = _length_bounds(schema)
    if "[0-9]" in schema.get("pattern", "")[:8]:  # numeric answer patterns
        return str(rng.randint(1, 999))
    text = " ".join(rng.choice(WORDS) for _ in range(max(2, lo // 5 + 1)))
    while len(text) < lo:
        text += " " + rng.choice(WORDS)
    return text[:hi].strip() if len(text[:hi].strip()) >= lo else text[:hi]


class ScriptedBackend(Backend):
    def __init__(self, cfg: dict | None = None, responder: Responder | None = None):
        cfg = cfg or {}
        self.model = str(cfg.get("model", "scripted"))
        self.delay_s = float((cfg.get("runtime") or {}).get("delay_s", 0.0))
        self.free_text = str(cfg.get("free_text", "Scripted answer.\n#### 42"))
        self.responder = responder
        self.calls = 0

    def default_response(self, request: ChatRequest) -> str:
        if request.json_schema is None:
            return self.free_text
        return json.dumps(instance(request.json_schema, request_rng(request)))

    async def complete(self, request: ChatRequest) -> Completion:
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        out = self.responder(request) if self.responder else None
        if out is None:
            out = self.default_response(request)
        if isinstance(out, Completion):
            return out
        prompt_tokens = sum(len(c.split()) for _, c in request.messages)
        return Completion(text=out, prompt_tokens=prompt_tokens, completion_tokens=len(out.split()))


def by_title(handlers: dict[str, Callable[[ChatRequest], str | Completion | None]]) -> Responder:
    """A responder that dispatches on the request schema's `title` (samples, propose, assign, coverage,
    criterion, response; "text" for schema-less requests); None or a missing title = default answer."""

    def respond(request: ChatRequest) -> str | Completion | None:
        title = (request.json_schema or {}).get("title", "text")
        handler = handlers.get(title)
        return handler(request) if handler else None

    return respond
