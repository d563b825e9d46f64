"""The OpenAI Batch API protocol (treesynth/llm/batch.py's client): a JSONL of {custom_id, method, url,
body} lines uploaded to /v1/files (purpose=batch), POST /v1/batches (endpoint /v1/chat/completions,
completion_window), GET /v1/batches/<id> until a terminal status, and the output / error files read back
into answers and per-line errors by custom_id. Calls are retried with the online backend's policy."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from treesynth.llm.base import Completion
from treesynth.llm.openai_compat import OpenAIBackend, parse_completion
from treesynth.llm.routing import RETRY_STATUS
from treesynth.llm.transport import HTTPError, Transport

ENDPOINT = "/v1/chat/completions"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
# validating, in_progress, finalizing, cancelling: keep polling
ACTIVE = frozenset({"validating", "in_progress", "finalizing", "cancelling"})


class BatchAPIError(Exception):
    """A batch API call failed for good (refused, or still failing after the retries)."""


class BatchAPI:
    """The batch endpoints of the online backend's first base URL (a batch lives on one account), over the
    backend's transport (transport.py), one call at a time: create it inside the event loop that uses it."""

    def __init__(self, online: OpenAIBackend):
        self.online = online
        self.base_url = online.base_urls[0]
        self.transport = Transport(self.base_url, online.api_key(), online.timeout_s)

    async def upload(self, payload: bytes, name: str) -> dict:
        body, content_type = _form(payload, name)
        return await self._call("POST", "/files", body, content_type, slow=True)

    async def create(self, input_file_id: str, completion_window: str, metadata: dict) -> dict:
        return await self._call("POST", "/batches", json.dumps({
            "input_file_id": input_file_id, "endpoint": ENDPOINT, "completion_window": completion_window,
            "metadata": metadata,
        }).encode(), "application/json")

    async def status(self, batch_id: str) -> dict:
        return await self._call("GET", f"/batches/{batch_id}")

    async def content(self, file_id: str) -> str:
        return await self._call("GET", f"/files/{file_id}/content", raw=True, slow=True)

    async def close(self) -> None:
        await self.transport.close()

    async def _call(self, method: str, path: str, data: bytes | None = None, content_type: str | None = None,
                    raw: bool = False, slow: bool = False) -> Any:
        """One batch API call with the online backend's retry policy (5xx, 408/409/429, timeouts, connection
        errors); `slow`: a file upload or download, allowed 10 minutes."""
        on = self.online
        last = ""
        for attempt in range(on.max_retries + 1):
            pause = None
            try:
                r = await self.transport.call(method, path, data, content_type, max(on.timeout_s, 600 if slow else 0))
                return r.body.decode() if raw else json.loads(r.body)
            except HTTPError as e:
                last = f"HTTP {e.status}: {e.message}" if e.kind == "status" else f"{e.kind}: {e.message}"
                if e.kind == "status" and e.status < 500 and e.status not in RETRY_STATUS | {429}:
                    raise BatchAPIError(f"{method} {path}: {last}") from None
                pause = e.retry_after if e.status == 429 else None
            except ValueError as e:  # an answer that is not JSON
                last = f"{type(e).__name__}: {e}"
            if attempt < on.max_retries:
                await asyncio.sleep(pause if pause is not None else on.backoff_s(attempt))
        raise BatchAPIError(f"{method} {path} failed after {on.max_retries + 1} attempts; last: {last}")


def jsonl_line(key: str, body: dict) -> str:
    """One line of a batch input file; custom_id is the request's cache key."""
    return json.dumps({"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body}) + "\n"


def _form(payload: bytes, name: str) -> tuple[bytes, str]:
    """The multipart/form-data body of a batch input upload (purpose=batch, the JSONL as `file`) and its
    content type."""
    boundary = f"treesynth-{uuid.uuid4().hex}"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="treesynth-{name}.jsonl"\r\n'
            f"Content-Type: application/jsonl\r\n\r\n")
    return head.encode() + payload + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


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
