"""`openai` backend: any OpenAI-compatible chat endpoint (OpenAI, a vLLM server, a llama.cpp server),
spread over one or several base URLs.

Three parts: the HTTP transport (transport.py: keep-alive connections per URL, llm/http.py), the URL pool
(routing.py: least-busy routing, a slot bound and a 429 cooldown per URL, failures classified), and
this backend: request bodies, the retry policy, health checks, parsing the answer. A failed attempt
that may help to repeat (429, 408/409/5xx, connection errors, timeouts) is sent again by tenacity up
to `runtime.max_retries` times, after exponential backoff with full jitter (after a 429 the URL's
cooldown, Retry-After honoured, is the wait); other 4xx fail at once. JSON-schema requests use
`response_format` {"type": "json_schema", ...} (OpenAI, vLLM, llama.cpp's llama-server), or with
schema_style=json_object {"type": "json_object", "schema": ...} (the llama-cpp-python server).

An answer that arrives but cannot be used (schema-invalid JSON, cut at max_tokens) is asked again with
the same request `runtime.answer_retries` times by the LLM layer (treesynth/llm/client.py) before any
derived seed: a server or proxy fault then costs a call, not a different record. Every failed attempt
is counted by kind in `transport_stats` (reported in the stage metrics' `llm` block).

Config (conf/llm/openai.yaml): backend, model, api_key_env (the NAME of the env var; null/"" for local
servers that need no key), schema_style, runtime.{base_urls, max_concurrency (per URL), timeout_s, max_retries,
answer_retries, backoff_base_s, backoff_max_s, cooldown_429_s, health_timeout_s}.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
from typing import Any

import tenacity

from treesynth.errors import TreesynthError
from treesynth.llm.base import Backend, ChatRequest, Completion, LLMError
from treesynth.llm.routing import Endpoint, Failure, TransportStats, URLPool
from treesynth.llm.transport import HTTPError, retry_after_s, short

__all__ = ["OpenAIBackend", "TransportStats", "parse_completion", "response_format", "retry_after_s"]

log = logging.getLogger("treesynth")

NO_KEY = "EMPTY"  # local servers ignore the key, but clients and some servers insist on one
_SCHEMA_NAME = re.compile(r"[^a-zA-Z0-9_-]")


SCHEMA_STYLES = ("json_schema", "json_object")


GBNF_MAX_REPEAT = 1000
_ANY_CLASS = re.compile(r"\[(\\s\\S|\\S\\s|\\w\\W|\\d\\D)\]")


def gbnf_safe(schema: Any) -> Any:
    """The schema as llama-cpp-python 0.3.x can turn it into a grammar. Its converter copies regex escapes
    such as `\\.` and `[\\s\\S]` into GBNF, whose parser rejects them, and the server process dies
    on the request ("unknown escape"). Same language, other spelling: `\\.` -> `[.]`; a pattern that is
    "any text" (`^[\\s\\S]+$`) is dropped for its min/maxLength; a maxLength above 1,000 (a runaway guard)
    is left to validation. Answers are always validated against the original schema."""
    if isinstance(schema, list):
        return [gbnf_safe(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: gbnf_safe(v) for k, v in schema.items() if k != "pattern"}
    if isinstance(out.get("maxLength"), int) and out["maxLength"] > GBNF_MAX_REPEAT:
        del out["maxLength"]  # a runaway guard, checked on the answer: as a grammar, 8,000 nested optionals
    pattern = schema.get("pattern")
    if isinstance(pattern, str) and not re.fullmatch(r"\^?" + _ANY_CLASS.pattern + r"[+*]\$?", pattern):
        out["pattern"] = _escaped_dots_as_classes(pattern)
    return out


def _escaped_dots_as_classes(pattern: str) -> str:
    out, i, in_class = [], 0, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            pair = pattern[i:i + 2]
            out.append("[.]" if pair == "\\." and not in_class else pair)
            i += 2
            continue
        in_class = (in_class or ch == "[") and ch != "]"
        out.append(ch)
        i += 1
    return "".join(out)


def response_format(schema: dict, style: str = "json_schema") -> dict:
    """`json_schema`: OpenAI's structured-output form, also taken by vLLM and llama.cpp's C++
    llama-server. `json_object`: {"type": "json_object", "schema": ...}, the only form the Python
    llama-cpp-python server (0.3.x) turns into a grammar (spelled the way its converter can)."""
    if style == "json_object":
        return {"type": "json_object", "schema": gbnf_safe(schema)}
    name = _SCHEMA_NAME.sub("_", str(schema.get("title") or "response"))[:64] or "response"
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


class OpenAIBackend(Backend):
    def __init__(self, cfg: dict):
        rt = dict(cfg.get("runtime") or {})
        self.model = str(cfg.get("model") or "")
        if not self.model:
            raise TreesynthError("llm.model is empty: set the model name the server serves (llm.model=...)")
        urls = rt.get("base_urls") or ["https://api.openai.com/v1"]
        self.base_urls = [str(u).rstrip("/") for u in ([urls] if isinstance(urls, str) else urls)]
        self.api_key_env = cfg.get("api_key_env") or None
        self.max_concurrency = int(rt.get("max_concurrency", 64))
        self.timeout_s = float(rt.get("timeout_s", 120))
        self.max_retries = int(rt.get("max_retries", 6))
        self.answer_retries = int(rt.get("answer_retries", 1))
        self.backoff_base_s = float(rt.get("backoff_base_s", 0.5))
        self.backoff_max_s = float(rt.get("backoff_max_s", 30))
        self.cooldown_429_s = float(rt.get("cooldown_429_s", 5))
        self.health_timeout_s = float(rt.get("health_timeout_s", 5))
        self.schema_style = str(cfg.get("schema_style") or "json_schema")
        if self.schema_style not in SCHEMA_STYLES:
            raise TreesynthError(f"llm.schema_style={self.schema_style!r}: choose from {list(SCHEMA_STYLES)}")
        if self.max_concurrency < 1 or self.max_retries < 0 or self.answer_retries < 0 or self.timeout_s <= 0:
            raise TreesynthError(
                "llm.runtime: max_concurrency >= 1, max_retries >= 0, answer_retries >= 0 and timeout_s > 0 required"
            )
        self.parallel = self.max_concurrency * len(self.base_urls)  # requests served at once (LLM admission)
        self.transport_stats = TransportStats()
        self._pool: URLPool | None = None
        self._rng = random.Random()  # jitter only; never affects outputs
        # The retry policy; tenacity keeps per-run state on the object, so each request gets a copy.
        self._retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.max_retries + 1),
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, Failure) and e.retryable),
            wait=self._backoff_s,
            before_sleep=self._count_retry,
            reraise=True,
        )

    # --- endpoints ---------------------------------------------------------------------------
    def api_key(self) -> str:
        if not self.api_key_env:
            return NO_KEY
        key = os.environ.get(self.api_key_env)
        if not key:
            raise TreesynthError(
                f"set {self.api_key_env} to the API key for {', '.join(self.base_urls)} "
                f"(or llm.api_key_env=null for a local server that needs none)"
            )
        return key

    def _endpoints(self) -> URLPool:
        # A new event loop (each asyncio.run) gets fresh endpoints: the old loop's sockets died with it.
        if self._pool is None or self._pool.loop is not asyncio.get_running_loop():
            self._pool = URLPool(self.base_urls, self.api_key(), self.max_concurrency, self.timeout_s,
                                 self.cooldown_429_s)
        return self._pool

    @property
    def sent(self) -> dict[str, int]:
        """Attempts sent per base URL in the current event loop (for tests and benches)."""
        return {e.url: e.sent for e in self._pool.endpoints} if self._pool else {}

    # --- requests ----------------------------------------------------------------------------
    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The /chat/completions body of a request (also a Batch API line's body)."""
        params: dict[str, Any] = {
            "model": self.model,
            "messages": request.chat(),
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
            "seed": request.seed,
        }
        if request.stop:
            params["stop"] = list(request.stop)
        if request.json_schema is not None:
            params["response_format"] = response_format(request.json_schema, self.schema_style)
        return params

    def _backoff_s(self, state: tenacity.RetryCallState) -> float:
        failure = state.outcome.exception() if state.outcome else None
        if isinstance(failure, Failure) and failure.cooled:
            return 0.0  # after a 429 the URL's cooldown is the wait
        return self.backoff_s(state.attempt_number - 1)

    def backoff_s(self, attempt: int) -> float:
        """The wait after failed attempt `attempt` (0-based); also the Batch API client's (batch_api.py).
        Full jitter: uniform over [0, capped exponential] spreads retries of a burst apart."""
        return self._rng.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2 ** attempt))

    def _count_retry(self, state: tenacity.RetryCallState) -> None:
        self.transport_stats.retries += 1

    async def complete(self, request: ChatRequest) -> Completion:
        pool, body = self._endpoints(), self.request_body(request)
        try:
            try:
                resp = await self._attempt(pool, body)
            except Failure as first:
                # Nearly every request succeeds at once and skips the retry machinery (~50 us of CPU, a
                # tenth of a request's); from the first failure on tenacity decides, that failure replayed
                # to it as its own first attempt.
                replay = [first]

                async def attempt() -> dict:
                    if replay:
                        raise replay.pop()
                    return await self._attempt(pool, body)

                resp = await self._retrying.copy()(attempt)
        except Failure as f:
            if not f.retryable:
                raise LLMError(f"{f.url} rejected the request ({f.reason})") from None
            raise LLMError(f"{f.url} failed after {self.max_retries + 1} attempts; last: {f.reason}") from None
        return parse_completion(resp)

    async def _attempt(self, pool: URLPool, body: dict[str, Any]) -> dict:
        """One attempt, its failure counted by kind."""
        try:
            return await pool.post("/chat/completions", body)
        except Failure as f:
            setattr(self.transport_stats, f.kind, getattr(self.transport_stats, f.kind) + 1)
            raise

    async def health_check(self) -> None:
        """GET {url}/models on every URL with a short timeout: a missing key or an unreachable URL
        fails in seconds with one line instead of hours into a run."""
        pool = self._endpoints()

        async def check(ep: Endpoint) -> None:
            try:
                listing = await ep.client.request("GET", "/models", timeout_s=self.health_timeout_s)
            except HTTPError as e:
                if e.kind != "status":
                    raise TreesynthError(
                        f"LLM endpoint {ep.url} unreachable ({e.kind}: {short(e.message or 'no answer')}); "
                        "start the server or fix llm.runtime.base_urls"
                    ) from e
                if e.status in (401, 403):
                    raise TreesynthError(f"{ep.url} rejected the API key from ${self.api_key_env} (HTTP {e.status})") from e
                if e.status == 404:
                    return  # reachable; some servers simply have no /models listing
                raise TreesynthError(f"LLM endpoint {ep.url} answered HTTP {e.status} to GET /models") from e
            data = listing.get("data") if isinstance(listing, dict) else None
            models = [m.get("id") for m in data or [] if isinstance(m, dict)]
            if models and self.model not in models:
                log.warning("%s does not list model %r (has: %s)", ep.url, self.model, ", ".join(models[:5]))

        await asyncio.gather(*(check(e) for e in pool.endpoints))

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None and pool.loop is asyncio.get_running_loop():
            await pool.close()


def parse_completion(resp: dict) -> Completion:
    """A chat.completion response body (online, or a Batch API output line's) as a `Completion`."""
    choice = resp["choices"][0]
    usage = resp.get("usage") or {}
    reason = choice.get("finish_reason") or "stop"
    error = None
    if reason not in ("stop", "length"):
        # content_filter and friends: no usable text; tool_calls never requested.
        error, reason = f"finish_reason {reason}", "error"
    return Completion(
        text=(choice.get("message") or {}).get("content") or "",
        finish_reason=reason,
        prompt_tokens=usage.get("prompt_tokens") or 0,
        completion_tokens=usage.get("completion_tokens") or 0,
        error=error,
    )

