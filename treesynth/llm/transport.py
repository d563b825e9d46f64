"""The HTTP transport of the `openai` backend: JSON over keep-alive connections to one base URL.

One transport, chosen by measurement: the official `AsyncOpenAI` client cost ~2.8 ms CPU per request and
an aiohttp session ~0.6 ms of the synthesis client's; this one rests on the small HTTP/1.1 client in
http.py (why: its docstring). Every failure becomes an `HTTPError` of kind "status" (with the status and
Retry-After), "timeout" or "connection"; what to do about it is the URL pool's business (routing.py).
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any

import orjson  # ~10x faster than json on request and response bodies: a twentieth of a request's CPU

from treesynth.llm.http import HTTPClient, HTTPConnectionError, HTTPTimeout, Response


class HTTPError(Exception):
    """A failed HTTP call: `kind` is "status" (with status/retry_after), "timeout" or "connection"."""

    def __init__(self, kind: str, status: int = 0, message: str = "", retry_after: float | None = None):
        super().__init__(message or kind)
        self.kind, self.status, self.message, self.retry_after = kind, status, message, retry_after


class Transport:
    """Calls on one base URL (an API key as the Bearer token): JSON in and out (`request`), or any body
    with its content type and the raw answer (`call`, for the Batch API's uploads and files)."""

    def __init__(self, url: str, key: str, timeout_s: float):
        self.url = url
        self.timeout_s = timeout_s
        self.http = HTTPClient(url, {"Authorization": f"Bearer {key}"})

    async def request(self, method: str, path: str, body: dict | None = None, timeout_s: float | None = None) -> Any:
        data = None if body is None else orjson.dumps(body)
        r = await self.call(method, path, data, "application/json", timeout_s)
        try:
            return orjson.loads(r.body)
        except orjson.JSONDecodeError as e:
            raise HTTPError("connection", message=f"response is not JSON: {r.body[:80]!r}") from e

    async def call(self, method: str, path: str, data: bytes | None = None, content_type: str | None = None,
                   timeout_s: float | None = None) -> Response:
        """One call; a status >= 400 raises HTTPError("status") with the error message and Retry-After."""
        headers = {"Content-Type": content_type} if data is not None and content_type else None
        try:
            r = await self.http.request(method, path, data, timeout_s or self.timeout_s, headers)
        except HTTPTimeout as e:
            raise HTTPError("timeout") from e
        except HTTPConnectionError as e:
            raise HTTPError("connection", message=str(e) or type(e).__name__) from e
        if r.status >= 400:
            raise HTTPError("status", r.status, error_message(r.body), retry_after_s(r.headers))
        return r

    async def close(self) -> None:
        await self.http.close()


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from Retry-After (seconds or HTTP date) or retry-after-ms; None when absent/garbled.
    `headers` is looked up with lower-case names (as http.py keeps them)."""
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
