"""The one LLM interface: a chat request in, a completion out. Backends implement `Backend.complete`."""

from __future__ import annotations

import contextvars
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

import orjson


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

    def cache_key(self, model: str) -> str:
        """Everything that changes the output: model, messages, sampling, seed, schema; the sha256 of
        them as sorted-key JSON. orjson, not json: json.dumps of the schema and messages took a tenth of
        the client's CPU per request at 100k records."""
        payload = {"model": model, **{name: getattr(self, name) for name in _FIELDS}}
        return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


_FIELDS = tuple(f.name for f in fields(ChatRequest))  # by hand: asdict() deep-copies the schema


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


# Schema titles of tree-building calls (treesynth/tree/builder.py): online even outside online_requests().
ONLINE_TITLES = frozenset({"criterion", "propose", "assign", "coverage"})


def batchable(request: ChatRequest) -> bool:
    """Whether batch mode (treesynth/llm/batch.py) sends `request` to the Batch API, and so whether it is
    priced at the batch discount (treesynth/llm/client.py `Price`): False for requests that must be
    answered now, inside online_requests() or tree-building steps."""
    title = (request.json_schema or {}).get("title")
    return not wants_online() and title not in ONLINE_TITLES


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
