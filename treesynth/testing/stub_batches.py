"""The Batch API half of the loopback stub (`StubServer`, treesynth/testing/stub_server.py): `/v1/files`
(upload, content) and `/v1/batches` (create, status, cancel), answered like chat requests through the
server's `_reply`, without latency or chat faults. Behaviour, plain attributes that may change while the
server runs:
- `batch_delay`: seconds from creation until a batch finishes (before: "validating", then
  "in_progress"; the poll that finishes it sees "finalizing", the next one the terminal status);
- `batch_expire_after`: a batch answers only its first k lines and ends "expired" (the rest are in the
  error file with code batch_expired); None: never expires;
- `batch_error_rate` / `batch_error_attempts`: a line whose (body, seed) hash falls under the rate goes to
  the error file (status 500) the first `batch_error_attempts` times it is submitted;
- `batches` (batch id -> batch object as served, plus "lines": its input lines), `files` (id -> bytes) and
  `batch_line_errors` (lines sent to an error file: error rate or expiry).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from typing import Any

from aiohttp import web

BATCH_ENDPOINT = "/v1/chat/completions"


def _validate_batch(body: dict, data: bytes) -> tuple[list[dict], list[dict]]:
    """(errors, lines) of a batch input file, checked as the Batch API does before it runs anything."""
    errors: list[dict] = []
    if body.get("endpoint") != BATCH_ENDPOINT:
        errors.append({"code": "invalid_endpoint", "message": f"endpoint must be {BATCH_ENDPOINT}", "line": None})
    if body.get("completion_window") != "24h":
        errors.append({"code": "invalid_completion_window", "message": "completion_window must be 24h", "line": None})
    lines, seen = [], set()
    for n, raw in enumerate(data.decode(errors="replace").splitlines(), 1):
        try:
            line = json.loads(raw)
            ok = (isinstance(line, dict) and isinstance(line.get("custom_id"), str) and line.get("method") == "POST"
                  and line.get("url") == BATCH_ENDPOINT and isinstance(line.get("body"), dict))
        except ValueError:
            ok = False
        if not ok or line["custom_id"] in seen or len(line["custom_id"]) > 64:
            errors.append({"code": "invalid_request", "message": "bad or duplicate line", "line": n})
            continue
        seen.add(line["custom_id"])
        lines.append(line)
    if not lines and not errors:
        errors.append({"code": "empty_file", "message": "the input file has no lines", "line": None})
    return errors, lines


def _public(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "lines" and not k.startswith("_")}


class StubBatches:
    """Mixed into `StubServer`, which provides `seed`, `_reply(body)` and `_chat_completion(body, reply, id)`."""

    seed: int

    def _init_batches(self) -> None:  # batch_delay / _expire_after / _error_rate / _error_attempts: StubServer's options
        self.batches: dict[str, dict] = {}
        self.files: dict[str, bytes] = {}
        self.batch_line_errors = 0
        self._batch_attempts: Counter[str] = Counter()  # line body hash -> batches it was in

    def _add_batch_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{fid}/content", self._file_content)
        app.router.add_post("/v1/batches", self._create_batch)
        app.router.add_get("/v1/batches/{bid}", self._get_batch)
        app.router.add_post("/v1/batches/{bid}/cancel", self._cancel_batch)

    def _new_id(self, kind: str) -> str:
        # Unique across stub instances too: a batch checkpoint outlives the server that made it.
        n = len(self.files if kind == "file" else self.batches) + 1
        return f"{kind}-stub-{n}-{random.getrandbits(32):08x}"

    def _api_error(self, status: int, message: str) -> web.Response:
        return web.json_response({"error": {"message": message, "type": "invalid_request_error"}}, status=status)

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form.get("file")
        if form.get("purpose") != "batch" or not isinstance(upload, web.FileField):
            return self._api_error(400, "multipart form with purpose=batch and a file expected")
        data = upload.file.read()
        fid = self._new_id("file")
        self.files[fid] = data
        return web.json_response({"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                                  "filename": upload.filename, "purpose": "batch"})

    async def _file_content(self, request: web.Request) -> web.Response:
        data = self.files.get(request.match_info["fid"])
        if data is None:
            return self._api_error(404, "no such file")
        return web.Response(body=data, content_type="application/octet-stream")

    async def _create_batch(self, request: web.Request) -> web.Response:
        body = await request.json()
        data = self.files.get(str(body.get("input_file_id")))
        if data is None:
            return self._api_error(400, "input_file_id: no such file")
        now = int(time.time())
        bid = self._new_id("batch")
        batch: dict[str, Any] = {
            "id": bid, "object": "batch", "endpoint": body.get("endpoint"), "errors": None,
            "input_file_id": body["input_file_id"], "completion_window": body.get("completion_window"),
            "status": "validating", "output_file_id": None, "error_file_id": None, "created_at": now,
            "in_progress_at": None, "expires_at": now + 86400, "finalizing_at": None, "completed_at": None,
            "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": body.get("metadata"),
        }
        errors, lines = _validate_batch(body, data)
        batch["lines"] = lines
        batch["request_counts"]["total"] = len(lines)
        if errors:
            batch.update(status="failed", failed_at=now, errors={"object": "list", "data": errors})
        self.batches[bid] = batch
        batch["_created"] = time.monotonic()
        return web.json_response(_public(batch))

    async def _get_batch(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["bid"])
        if batch is None:
            return self._api_error(404, "no such batch")
        now = int(time.time())
        if batch["status"] == "finalizing":
            batch["status"] = batch.pop("_final")
            batch[f"{batch['status']}_at"] = now
        elif batch["status"] == "cancelling":
            await self._run_batch(batch, answer=0)
            batch.update(status="cancelled", cancelled_at=now)
        elif batch["status"] in ("validating", "in_progress"):
            if time.monotonic() - batch["_created"] < self.batch_delay:
                batch.update(status="in_progress", in_progress_at=batch["in_progress_at"] or now)
            else:
                k = self.batch_expire_after
                await self._run_batch(batch, answer=len(batch["lines"]) if k is None else k)
                expired = k is not None and k < len(batch["lines"])
                batch.update(status="finalizing", finalizing_at=now, _final="expired" if expired else "completed")
        return web.json_response(_public(batch))

    async def _cancel_batch(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["bid"])
        if batch is None:
            return self._api_error(404, "no such batch")
        if batch["status"] in ("validating", "in_progress"):
            batch.update(status="cancelling", cancelling_at=int(time.time()))
        return web.json_response(_public(batch))

    async def _run_batch(self, batch: dict, answer: int) -> None:
        """Answer the first `answer` lines (error-rate lines go to the error file), the rest expire."""
        out, err = [], []
        code = "batch_cancelled" if batch["status"] == "cancelling" else "batch_expired"
        for i, line in enumerate(batch["lines"]):
            rid = f"batch_req_{batch['id']}_{i}"
            if i >= answer:
                err.append({"id": rid, "custom_id": line["custom_id"], "response": None, "error": {
                    "code": code, "message": "This request could not be executed before the batch ended."}})
                continue
            digest = hashlib.sha256(json.dumps([line["body"], self.seed], sort_keys=True).encode()).hexdigest()
            attempt = self._batch_attempts[digest]
            self._batch_attempts[digest] += 1
            if int(digest[:16], 16) / 2**64 < self.batch_error_rate and attempt < self.batch_error_attempts:
                err.append({"id": rid, "custom_id": line["custom_id"], "error": None, "response": {
                    "status_code": 500, "request_id": rid,
                    "body": {"error": {"message": "stub batch line fault", "type": "server_error"}}}})
                continue
            reply = await self._reply(line["body"])
            out.append({"id": rid, "custom_id": line["custom_id"], "error": None, "response": {
                "status_code": 200, "request_id": rid, "body": self._chat_completion(line["body"], reply, rid)}})
        self.batch_line_errors += len(err)
        batch["request_counts"].update(completed=len(out), failed=len(err))
        for name, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                fid = self._new_id("file")
                self.files[fid] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                batch[name] = fid

