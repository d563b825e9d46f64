"""The OpenAI Batch API protocol (treesynth/llm/batch.py's client): a JSONL of {custom_id, method, url,
body} lines uploaded to /v1/files (purpose=batch), POST /v1/batches (endpoint /v1/chat/completions,
completion_window), GET /v1/batches/<id> until a terminal status, and the output / error files read back
into answers and per-line errors by custom_id. Calls are retried with the online backend's policy."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from treesynth.llm.base import Completion
from treesynth.llm.openai_compat import OpenAIBackend, parse_completion, retry_after_s

ENDPOINT = "/v1/chat/completions"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
# validating, in_progress, finalizing, cancelling: keep polling
ACTIVE = frozenset({"validating", "in_progress", "finalizing", "cancelling"})


class BatchAPIError(Exception):
    """A batch API call failed for good (refused, or still failing after the retries)."""


class BatchAPI:
    """The batch endpoints of the online backend's first base URL (a batch lives on one account), over
    one aiohttp session: create it inside the event loop that uses it."""

    def __init__(self, online: OpenAIBackend):
        self.online = online
        self.base_url = online.base_urls[0]
        self.session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {online.api_key()}"},
                                             trust_env=False)

    async def upload(self, payload: bytes, name: str) -> dict:
        return await self._call("POST", "/files", form=lambda: _form(payload, name))

    async def create(self, input_file_id: str, completion_window: str, metadata: dict) -> dict:
        return await self._call("POST", "/batches", json_body={
            "input_file_id": input_file_id, "endpoint": ENDPOINT, "completion_window": completion_window,
            "metadata": metadata,
        })

    async def status(self, batch_id: str) -> dict:
        return await self._call("GET", f"/batches/{batch_id}")

    async def content(self, file_id: str) -> str:
        return await self._call("GET", f"/files/{file_id}/content", raw=True)

    async def close(self) -> None:
        await self.session.close()

    async def _call(self, method: str, path: str, json_body: dict | None = None, form: Any = None,
                    raw: bool = False) -> Any:
        """One batch API call with the online backend's retry policy (5xx, 408/409/429, timeouts)."""
        on = self.online
        last = ""
        for attempt in range(on.max_retries + 1):
            pause = None
            try:
                data = form() if form is not None else None
                timeout = aiohttp.ClientTimeout(total=max(on.timeout_s, 600 if form is not None or raw else 0))
                async with self.session.request(method, self.base_url + path, json=json_body, data=data,
                                                timeout=timeout) as r:
                    body = await r.read()
                    if r.status < 400:
                        return body.decode() if raw else json.loads(body)
                    last = f"HTTP {r.status}: {body[:200].decode(errors='replace')}"
                    if r.status < 500 and r.status not in (408, 409, 429):
                        raise BatchAPIError(f"{method} {path}: {last}")
                    pause = retry_after_s(r.headers) if r.status == 429 else None
            except (asyncio.TimeoutError, aiohttp.ClientError, ValueError) as e:
                last = f"{type(e).__name__}: {e}"
            if attempt < on.max_retries:
                await asyncio.sleep(pause if pause is not None else on.backoff_s(attempt))
        raise BatchAPIError(f"{method} {path} failed after {on.max_retries + 1} attempts; last: {last}")


def jsonl_line(key: str, body: dict) -> str:
    """One line of a batch input file; custom_id is the request's cache key."""
    return json.dumps({"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body}) + "\n"


def _form(payload: bytes, name: str) -> aiohttp.FormData:
    """A fresh multipart body per attempt (aiohttp consumes a FormData once)."""
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", payload, filename=f"treesynth-{name}.jsonl", content_type="application/jsonl")
    return form


def read_results(text: str, answers: dict[str, Completion], errors: dict[str, str]) -> None:
    """Output / error file lines: {custom_id, response: {status_code, body}, error}."""
    for raw in text.splitlines():
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError:
            continue
        key = row.get("custom_id")
        resp = row.get("response") or {}
        if not key:
            continue
        if row.get("error") is None and resp.get("status_code") == 200 and isinstance(resp.get("body"), dict):
            try:
                answers[key] = parse_completion(resp["body"])
                continue
            except (KeyError, IndexError, TypeError):
                errors[key] = "batch line: malformed response body"
                continue
        err = row.get("error") or (resp.get("body") or {}).get("error") or {}
        code = err.get("code") if isinstance(err, dict) else None
        msg = err.get("message") if isinstance(err, dict) else str(err)
        errors[key] = f"batch line failed ({code or resp.get('status_code')}): {str(msg)[:200]}"
