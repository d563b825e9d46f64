"""`openai` backend: any OpenAI-compatible chat endpoint (OpenAI, a vLLM server, a llama.cpp server),
spread over one or several base URLs.

Per base URL: one HTTP client, a bound on parallel requests, and a 429 cooldown. The client is
`runtime.http`: `aiohttp` (default; a plain keep-alive session, ~0.6 ms CPU per request) or `openai`
(the official `AsyncOpenAI` SDK client, ~2.8 ms CPU per request, which on a few cores caps a
64-slot pool well below what the server could serve). Either way the SDK's own retries are off and ours
apply. Each attempt goes to the least busy URL that is not cooling
down; 429 pauses that URL (Retry-After honoured), 408/409/5xx, connection errors and timeouts are
retried with exponential backoff and full jitter, other 4xx fail at once. JSON-schema requests use
`response_format` {"type": "json_schema", ...} (OpenAI, vLLM, llama.cpp's llama-server), or with
schema_style=json_object {"type": "json_object", "schema": ...} (the llama-cpp-python server).

An answer that arrives but cannot be used (schema-invalid JSON, cut at max_tokens) is asked again with
the same request `runtime.answer_retries` times by the LLM layer (treesynth/llm/client.py) before any
derived seed: a server or proxy fault then costs a call, not a different record. Every failed attempt
is counted by kind in `transport_stats` (reported in the stage metrics' `llm` block).

Config (conf/llm/openai.yaml): backend, model, api_key_env (the NAME of the env var; null/"" for local
servers that need no key), schema_style, runtime.{base_urls, max_concurrency (per URL), timeout_s, max_retries,
answer_retries, backoff_base_s, backoff_max_s, cooldown_429_s, health_timeout_s, http}.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx2
import openai

from treesynth.errors import TreesynthError
from treesynth.llm.base import Backend, ChatRequest, Completion, LLMError

log = logging.getLogger("treesynth")

NO_KEY = "EMPTY"  # local servers ignore the key, but clients and some servers insist on one
_RETRY_STATUS = {408, 409}  # 4xx that are transient (request timeout, conflict); 429 handled apart
_SCHEMA_NAME = re.compile(r"[^a-zA-Z0-9_-]")


class _HTTPError(Exception):
    """A transport-neutral failure: `kind` is "status" (with status/retry_after), "timeout" or "connection"."""

    def __init__(self, kind: str, status: int = 0, message: str = "", retry_after: float | None = None):
        super().__init__(message or kind)
        self.kind, self.status, self.message, self.retry_after = kind, status, message, retry_after


class _AiohttpTransport:
    """POST/GET JSON on one base URL over a keep-alive aiohttp session."""

    def __init__(self, url: str, key: str, max_connections: int, timeout_s: float):
        self.url = url
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections),
            headers={"Authorization": f"Bearer {key}"},
            # No proxy/netrc lookup: aiohttp does it in a thread per request (two executor hops).
            # Behind an HTTP proxy, use runtime.http=openai, which honours HTTP(S)_PROXY.
            trust_env=False,
        )

    async def request(self, method: str, path: str, body: dict | None = None, timeout_s: float | None = None) -> Any:
        timeout = aiohttp.ClientTimeout(total=timeout_s) if timeout_s else self.timeout
        try:
            async with self.session.request(method, self.url + path, json=body, timeout=timeout) as r:
                raw = await r.read()
                if r.status >= 400:
                    raise _HTTPError("status", r.status, _error_message(raw), retry_after_s(r.headers))
        except asyncio.TimeoutError as e:
            raise _HTTPError("timeout") from e
        except aiohttp.ClientError as e:
            raise _HTTPError("connection", message=str(e) or type(e).__name__) from e
        try:
            return json.loads(raw)
        except ValueError as e:
            raise _HTTPError("connection", message=f"response is not JSON: {raw[:80]!r}") from e

    async def close(self) -> None:
        await self.session.close()


class _SDKTransport:
    """The same calls through the official `AsyncOpenAI` client (SDK retries off)."""

    def __init__(self, url: str, key: str, max_connections: int, timeout_s: float):
        limits = httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.client = openai.AsyncOpenAI(
            base_url=url, api_key=key, max_retries=0, timeout=timeout_s,
            # aiohttp under httpx: the default httpx pool scans every pooled connection per request.
            http_client=openai.DefaultAioHttpClient(limits=limits, timeout=timeout_s),
        )

    async def request(self, method: str, path: str, body: dict | None = None, timeout_s: float | None = None) -> Any:
        client = self.client.with_options(timeout=timeout_s) if timeout_s else self.client
        try:
            # Low-level calls: no per-request TypedDict transform or model construction.
            if method == "GET":
                return await client.get(path, cast_to=object)
            return await client.post(path, body=body, cast_to=object)
        except openai.APIStatusError as e:
            raise _HTTPError("status", e.status_code, _short(e.message), retry_after_s(e.response.headers)) from e
        except openai.APITimeoutError as e:
            raise _HTTPError("timeout") from e
        except openai.APIConnectionError as e:
            raise _HTTPError("connection", message=str(e.__cause__ or e)) from e

    async def close(self) -> None:
        await self.client.close()


TRANSPORTS = {"aiohttp": _AiohttpTransport, "openai": _SDKTransport}


@dataclass
class _Endpoint:
    """One base URL: its client, a slot bound, requests assigned to it, and a 429 pause."""

    url: str
    client: _AiohttpTransport | _SDKTransport
    slots: asyncio.Semaphore
    inflight: int = 0
    cooldown_until: float = 0.0  # loop.time() before which nothing is sent here
    sent: int = 0  # attempts sent here (any outcome); tests and benches read it


@dataclass
class _Pool:
    loop: asyncio.AbstractEventLoop
    endpoints: list[_Endpoint] = field(default_factory=list)
    turn: int = 0  # round-robin tie break among equally busy URLs


@dataclass
class TransportStats:
    """Failed HTTP attempts by kind, and the attempts re-sent after them (all requests of one backend)."""

    retries: int = 0
    http_429: int = 0
    http_5xx: int = 0
    http_4xx: int = 0  # other statuses: 408/409 are retried, the rest fail the request at once
    timeouts: int = 0
    connection_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class _Failure(Exception):
    """One failed attempt: where, why, its `TransportStats` counter, and whether another attempt may help."""

    def __init__(self, url: str, reason: str, kind: str, retryable: bool = True, cooled: bool = False):
        super().__init__(f"{url}: {reason}")
        self.url, self.reason, self.kind, self.retryable, self.cooled = url, reason, kind, retryable, cooled


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from Retry-After (seconds or HTTP date) or retry-after-ms; None when absent/garbled."""
    if headers is None:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (ValueError, TypeError):
        return None


def _error_message(raw: bytes) -> str:
    try:
        err = json.loads(raw).get("error")
        return _short(err.get("message") if isinstance(err, dict) else err or raw.decode(errors="replace"))
    except (ValueError, AttributeError):
        return _short(raw.decode(errors="replace"))


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
        self.http = str(rt.get("http", "aiohttp"))
        if self.http not in TRANSPORTS:
            raise TreesynthError(f"llm.runtime.http={self.http!r}: choose from {sorted(TRANSPORTS)}")
        if self.max_concurrency < 1 or self.max_retries < 0 or self.answer_retries < 0 or self.timeout_s <= 0:
            raise TreesynthError(
                "llm.runtime: max_concurrency >= 1, max_retries >= 0, answer_retries >= 0 and timeout_s > 0 required"
            )
        self.transport_stats = TransportStats()
        self._pool: _Pool | None = None
        self._rng = random.Random()  # jitter only; never affects outputs

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

    def _endpoints(self) -> _Pool:
        # HTTP sessions and semaphores belong to the loop that made them; generate_sync runs a fresh
        # loop per call, so a new loop gets fresh endpoints (the old loop's sockets died with it).
        loop = asyncio.get_running_loop()
        if self._pool is None or self._pool.loop is not loop:
            key, transport = self.api_key(), TRANSPORTS[self.http]
            self._pool = _Pool(loop, [
                _Endpoint(url, transport(url, key, self.max_concurrency, self.timeout_s),
                          asyncio.Semaphore(self.max_concurrency))
                for url in self.base_urls
            ])
        return self._pool

    def _pick(self, pool: _Pool) -> _Endpoint:
        """Least busy URL among those not cooling down (all cooling: the one free soonest)."""
        now = pool.loop.time()
        ready = [e for e in pool.endpoints if e.cooldown_until <= now] or [
            min(pool.endpoints, key=lambda e: e.cooldown_until)
        ]
        n = len(pool.endpoints)
        pool.turn += 1
        # Rotate the start so ties go round robin instead of always to the first URL.
        return min(ready, key=lambda e: (e.inflight, (pool.endpoints.index(e) - pool.turn) % n))

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

    def backoff_s(self, attempt: int) -> float:
        # Full jitter: uniform over [0, capped exponential] spreads retries of a burst apart.
        return self._rng.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2**attempt))

    async def complete(self, request: ChatRequest) -> Completion:
        pool = self._endpoints()
        params = self.request_body(request)
        last = _Failure(self.base_urls[0], "no attempt", "connection_errors")
        for attempt in range(self.max_retries + 1):
            try:
                return parse_completion(await self._attempt(pool, params))
            except _Failure as f:
                last = f
            stats = self.transport_stats
            setattr(stats, last.kind, getattr(stats, last.kind) + 1)
            if not last.retryable:
                raise LLMError(f"{last.url} rejected the request ({last.reason})")
            if attempt < self.max_retries:
                stats.retries += 1
                if not last.cooled:
                    await asyncio.sleep(self.backoff_s(attempt))  # after a 429 the cooldown is the wait
        raise LLMError(f"{last.url} failed after {self.max_retries + 1} attempts; last: {last.reason}")

    async def _attempt(self, pool: _Pool, params: dict[str, Any]) -> dict:
        """One HTTP attempt on the best URL; any failure becomes a `_Failure`."""
        while True:
            ep = self._pick(pool)
            ep.inflight += 1
            try:
                async with ep.slots:
                    now = pool.loop.time()
                    if ep.cooldown_until > now:
                        if any(e.cooldown_until <= now for e in pool.endpoints):
                            continue  # this URL got a 429 while we queued for it; another is free
                        await asyncio.sleep(ep.cooldown_until - now)
                    ep.sent += 1
                    return await ep.client.request("POST", "/chat/completions", params)
            except _HTTPError as e:
                raise self._failure(pool, ep, e) from e
            finally:
                ep.inflight -= 1

    def _failure(self, pool: _Pool, ep: _Endpoint, e: _HTTPError) -> _Failure:
        if e.kind == "timeout":
            return _Failure(ep.url, f"timeout after {self.timeout_s:g}s", "timeouts")
        if e.kind == "connection":
            return _Failure(ep.url, f"connection error: {_short(e.message)}", "connection_errors")
        if e.status == 429:
            pause = self.cooldown_429_s if e.retry_after is None else e.retry_after
            ep.cooldown_until = max(ep.cooldown_until, pool.loop.time() + pause)
            log.debug("HTTP 429 from %s: pausing it %.1fs", ep.url, pause)
            return _Failure(ep.url, "HTTP 429", "http_429", cooled=True)
        kind = "http_5xx" if e.status >= 500 else "http_4xx"
        transient = e.status >= 500 or e.status in _RETRY_STATUS
        return _Failure(ep.url, f"HTTP {e.status}: {_short(e.message)}", kind, retryable=transient)

    async def health_check(self) -> None:
        """GET {url}/models on every URL with a short timeout: a missing key or an unreachable URL
        fails in seconds with one line instead of hours into a run."""
        pool = self._endpoints()

        async def check(ep: _Endpoint) -> None:
            try:
                listing = await ep.client.request("GET", "/models", timeout_s=self.health_timeout_s)
            except _HTTPError as e:
                if e.kind != "status":
                    raise TreesynthError(
                        f"LLM endpoint {ep.url} unreachable ({e.kind}: {_short(e.message or 'no answer')}); "
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
            await asyncio.gather(*(e.client.close() for e in pool.endpoints), return_exceptions=True)


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


def _short(text: str) -> str:
    return " ".join(str(text).split())[:200]
