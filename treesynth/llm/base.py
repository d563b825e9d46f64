"""The one LLM interface: a chat request in, a completion out. Backends implement `Backend.complete`."""

from __future__ import annotations

import contextvars
import functools
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

# llm.runtime keys the LLM layer reads (treesynth/llm/client.py: price, budget), whatever the backend
LLM_RUNTIME_KEYS = frozenset({"budget_usd", "price", "prices"})


class LLMError(Exception):
    """A request failed after the backend's own retries (transport error, HTTP error, timeout)."""


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[tuple[str, str], ...]  # ((role, content), ...): hashable and cheap to key
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int = 0
    json_schema: dict | None = field(default=None, hash=False)
    stop: tuple[str, ...] = ()

    @classmethod
    def user(cls, prompt: str, **kw: Any) -> ChatRequest:
        """One user message, no system prompt (the paper's setting)."""
        return cls(messages=(("user", prompt),), **kw)

    def chat(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]

    @functools.cached_property
    def schema_json(self) -> str:
        """The schema as sorted-key JSON, encoded once per request (cache key, validator lookup)."""
        return json.dumps(self.json_schema, sort_keys=True)

    def cache_key(self, model: str) -> str:
        """Everything that changes the output: model, messages, sampling, seed, schema: the sha256 of
        json.dumps({"model": model, **fields}, sort_keys=True), written with the schema's JSON spliced in
        first (its key sorts first), so the schema is encoded once per request."""
        rest = {"model": model, **{name: getattr(self, name) for name in _KEY_FIELDS}}
        text = '{"json_schema": ' + self.schema_json + ", " + json.dumps(rest, sort_keys=True)[1:]
        return hashlib.sha256(text.encode()).hexdigest()


_KEY_FIELDS = tuple(f.name for f in fields(ChatRequest) if f.name != "json_schema")
assert min(_KEY_FIELDS + ("model",)) > "json_schema", "cache_key splices json_schema in as the first key"


@dataclass
class Completion:
    text: str
    finish_reason: str = "stop"  # "stop" | "length" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    error: str | None = None
    data: Any = None  # parsed JSON when the request carried a schema and the text validated

    @property
    def ok(self) -> bool:
        return self.error is None and self.finish_reason == "stop"


_ONLINE = contextvars.ContextVar("treesynth_llm_online", default=False)


@contextmanager
def online_requests() -> Iterator[None]:
    """Requests made inside (and in tasks started inside) go to the online API even in batch mode:
    calls whose answers the next call depends on (tree building) cannot wait for a batch."""
    token = _ONLINE.set(True)
    try:
        yield
    finally:
        _ONLINE.reset(token)


def wants_online() -> bool:
    return _ONLINE.get()


class Backend(ABC):
    """A model behind one async call. Batching and concurrency are the backend's business:
    callers submit many requests concurrently and the backend batches (embedded, vLLM) or bounds
    parallel HTTP calls (openai)."""

    model: str  # identifies the weights; part of every cache key

    @abstractmethod
    async def complete(self, request: ChatRequest) -> Completion:
        """Return a completion or raise LLMError after retries."""

    async def health_check(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Raise TreesynthError with one line if the backend cannot serve (called before long runs)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release connections / engines."""
