"""The HTTP transport of the `openai` backend: JSON over one keep-alive aiohttp session per base URL.

One transport, chosen by measurement: the official `AsyncOpenAI` client cost ~2.8 ms CPU per request
against ~0.6 ms for a plain aiohttp session, which on a few cores capped a 64-slot pool well below what
the server could serve. Every failure becomes an `HTTPError` of kind "status" (with the status and
Retry-After), "timeout" or "connection"; what to do about it is the URL pool's business (routing.py).
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson  # ~10x faster than json on request and response bodies: a twentieth of a request's CPU


class HTTPError(Exception):
    """A failed HTTP call: `kind` is "status" (with status/retry_after), "timeout" or "connection"."""

    def __init__(self, kind: str, status: int = 0, message: str = "", retry_after: float | None = None):
        super().__init__(message or kind)
        self.kind, self.status, self.message, self.retry_after = kind, status, message, retry_after


class Transport:
    """POST/GET JSON on one base URL over a keep-alive aiohttp session."""

    def __init__(self, url: str, key: str, max_connections: int, timeout_s: float):
        self.url = url
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            # No proxy/netrc lookup: aiohttp does it in a thread per request (two executor hops).
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),  # an API sets no cookies; the jar's bookkeeping is per request
        )

    async def request(self, method: str, path: str, body: dict | None = None, timeout_s: float | None = None) -> Any:
        timeout = aiohttp.ClientTimeout(total=timeout_s) if timeout_s else self.timeout
        try:
            data = None if body is None else orjson.dumps(body)
            async with self.session.request(method, self.url + path, data=data, timeout=timeout) as r:
                raw = await r.read()
                if r.status >= 400:
                    raise HTTPError("status", r.status, error_message(raw), retry_after_s(r.headers))
        except asyncio.TimeoutError as e:
            raise HTTPError("timeout") from e
        except aiohttp.ClientError as e:
            raise HTTPError("connection", message=str(e) or type(e).__name__) from e
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise HTTPError("connection", message=f"response is not JSON: {raw[:80]!r}") from e

    async def close(self) -> None:
        await self.session.close()


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from Retry-After (seconds or HTTP date) or retry-after-ms; None when absent/garbled.
    `headers` is looked up with lower-case names (aiohttp's headers are case-insensitive)."""
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


def error_message(raw: bytes) -> str:
    """The `error.message` of an error body (OpenAI's shape), else the body itself, shortened."""
    try:
        err = orjson.loads(raw).get("error")
        return short(err.get("message") if isinstance(err, dict) else err or raw.decode(errors="replace"))
    except (ValueError, AttributeError):
        return short(raw.decode(errors="replace"))


def short(text: str) -> str:
    """One line of at most 200 characters (for error messages)."""
    return " ".join(str(text).split())[:200]
