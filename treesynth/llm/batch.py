"""Batch mode for the `openai` backend (`llm.runtime.mode=batch`): requests without dependencies between
them (leaf samples, teacher answers) go through the OpenAI Batch API at its discount; the rest stays online.

`BatchBackend` wraps an `OpenAIBackend`. A request made inside `online_requests()` (tree building:
treesynth/tree/builder.py), or one whose schema is a tree-building step (`base.ONLINE_TITLES`), goes
straight to the online backend (`base.batchable`). Every other request is queued; when no new one has arrived for
`runtime.batch.window_s` (methods submit a step's requests together through asyncio.gather), or
`max_requests` are queued, the queue becomes one batch (treesynth/llm/batch_api.py: a JSONL uploaded to
/v1/files, POST /v1/batches; custom_id = the request's cache key, so answers map back through the request
cache). The batch is polled every `poll_s` until it reaches a terminal status (completed, failed, expired,
cancelled); its output file answers the lines that succeeded; lines in the error file, or missing from
the output (an expired or cancelled batch), go into a new batch, each at most `line_retries` times, then
fail as an `LLMError` (the LLM layer records the error).

Resume (treesynth/llm/batch_checkpoint.py, under `<cache_dir>/batches/`; cache_dir: the artifacts root's
.cache/llm/): a rerun after a kill attaches a request whose key belongs to a recorded unfinished batch to
that batch (polling it, never re-submitting), and answers a request whose key a finished batch answered
from the kept results, so no line is paid twice.

Accounting (`transport_stats`, reported in the stage metrics' `llm` block next to the online transport's
counts): batches created and resumed, lines submitted, answers served from batches, line retries, lines
failed for good, their tokens, and what the discount saved (tokens, USD at the model's price). The
LLM layer pays batched answers at the batch price (`client.Price.batch_discount`: runtime.batch.discount).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treesynth.errors import TreesynthError
from treesynth.llm.base import Backend, ChatRequest, Completion, LLMError, batchable
from treesynth.llm.batch_api import ACTIVE, TERMINAL, BatchAPI, BatchAPIError, jsonl_line, read_results
from treesynth.llm.batch_checkpoint import BatchCheckpoint, keys_digest
from treesynth.llm.client import Price, price_of
from treesynth.llm.openai_compat import OpenAIBackend, TransportStats

log = logging.getLogger("treesynth")

MODES = ("online", "batch")


@dataclass
class BatchSettings:
    window_s: float = 2.0  # queue quiet this long -> submit
    max_requests: int = 50_000  # lines per batch (OpenAI's limit)
    max_bytes: int = 190 * 2**20  # input file size per batch (OpenAI's limit is 200 MB)
    poll_s: float = 30.0
    completion_window: str = "24h"
    line_retries: int = 2  # a failed or expired line goes into a new batch this often

    @classmethod
    def of(cls, raw: dict | None) -> BatchSettings:
        raw = dict(raw or {})
        raw.pop("discount", None)  # the batch price: read with the online one, by client.price_of
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise TreesynthError(f"llm.runtime.batch: unknown keys {sorted(unknown)}; "
                                 f"known: {sorted(cls.__dataclass_fields__)}")
        s = cls(**raw)
        if s.window_s < 0 or s.max_requests < 1 or s.poll_s <= 0 or s.line_retries < 0:
            raise TreesynthError("llm.runtime.batch: window_s >= 0, max_requests >= 1, poll_s > 0 and "
                                 "line_retries >= 0 required")
        return s


@dataclass
class BatchStats:
    """Batch counters plus the online backend's transport counters (one `as_dict` for LLMStats)."""

    online: TransportStats
    price: Price  # the model's, with the batch discount (client.price_of)
    batches: int = 0  # batches this process created
    batches_resumed: int = 0  # recorded unfinished batches a rerun picked up
    batched_requests: int = 0  # lines submitted (retried lines counted again)
    batch_answers: int = 0  # requests answered from a batch's output
    batch_line_retries: int = 0  # failed / expired lines put into a new batch
    batch_failed_lines: int = 0  # lines that failed for good
    batch_prompt_tokens: int = 0
    batch_completion_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        d = self.price.batch_discount
        out: dict[str, Any] = {**self.online.as_dict(), **{
            k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("online", "price")}}
        # Saved = what these tokens would have cost online minus what they cost in a batch (the LLM
        # layer's cost_usd already counts the batch price).
        saved_p, saved_c = self.batch_prompt_tokens * d, self.batch_completion_tokens * d
        out["batch_discount"] = d
        out["batch_saved_prompt_tokens"] = round(saved_p)
        out["batch_saved_completion_tokens"] = round(saved_c)
        out["batch_saved_usd"] = round(self.price.cost(saved_p, saved_c), 6)
        return out


@dataclass
class _Line:
    key: str
    jsonl: str  # its line of the batch input file
    future: asyncio.Future
    attempts: int = 0  # batches it was submitted in (one by an earlier run counts)


@dataclass
class _Loop:
    """State bound to one event loop (futures, tasks, the HTTP session)."""

    loop: asyncio.AbstractEventLoop
    api: BatchAPI
    queue: list[_Line] = field(default_factory=list)
    waiting: dict[str, _Line] = field(default_factory=dict)  # key -> line awaiting an answer
    pollers: dict[str, asyncio.Task] = field(default_factory=dict)  # batch id -> task
    flusher: asyncio.Task | None = None
    last_arrival: float = 0.0
    tasks: set[asyncio.Task] = field(default_factory=set)


class BatchBackend(Backend):
    def __init__(self, online: OpenAIBackend, cfg: dict, state_dir: str | Path | None):
        rt = dict(cfg.get("runtime") or {})
        self.online = online
        self.model = online.model
        self.answer_retries = online.answer_retries
        self.settings = BatchSettings.of(rt.get("batch"))
        self.transport_stats = BatchStats(online.transport_stats, price_of(cfg))
        self.checkpoint = BatchCheckpoint(state_dir)
        self._state: _Loop | None = None

    # --- the Backend surface -----------------------------------------------------------------
    async def complete(self, request: ChatRequest) -> Completion:
        if not batchable(request):
            return await self.online.complete(request)
        key = request.cache_key(self.model)
        if (kept := self.checkpoint.kept_answer(key)) is not None:
            return kept  # answered by a batch (this run or one before); a second ask goes to a new batch
        st = self._loop_state()
        if (line := st.waiting.get(key)) is not None:
            return await asyncio.shield(line.future)  # the same request twice at once: one line
        line = _Line(key, jsonl_line(key, self.online.request_body(request)), st.loop.create_future())
        st.waiting[key] = line
        if (bid := self.checkpoint.open.get(key)) is not None:
            line.attempts = 1  # submitted by an earlier run, in flight since: wait for that batch
            self._follow(st, bid, resumed=True)
        else:
            self._enqueue(st, line)
        try:
            return await line.future
        finally:
            if st.waiting.get(key) is line:
                del st.waiting[key]

    async def health_check(self) -> None:
        await self.online.health_check()

    async def aclose(self) -> None:
        st, self._state = self._state, None
        if st is not None and st.loop is asyncio.get_running_loop():
            for t in [*st.tasks, *st.pollers.values(), *([st.flusher] if st.flusher else [])]:
                t.cancel()
            await st.api.close()
        self.checkpoint.close()
        await self.online.aclose()

    # --- queue -> batches --------------------------------------------------------------------
    def _loop_state(self) -> _Loop:
        loop = asyncio.get_running_loop()
        if self._state is None or self._state.loop is not loop:
            # A new loop (generate_sync): the old loop's tasks died with it; recorded batches stay open.
            self._state = _Loop(loop, BatchAPI(self.online))
        return self._state

    def _spawn(self, st: _Loop, coro: Any) -> asyncio.Task:
        task = st.loop.create_task(coro)
        st.tasks.add(task)
        task.add_done_callback(st.tasks.discard)
        return task

    def _enqueue(self, st: _Loop, line: _Line) -> None:
        st.queue.append(line)
        st.last_arrival = st.loop.time()
        if len(st.queue) >= self.settings.max_requests:
            self._flush(st)
        elif st.flusher is None or st.flusher.done():
            st.flusher = st.loop.create_task(self._flush_when_quiet(st))

    async def _flush_when_quiet(self, st: _Loop) -> None:
        while st.queue:
            wait = st.last_arrival + self.settings.window_s - st.loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            self._flush(st)

    def _flush(self, st: _Loop) -> None:
        lines, st.queue = st.queue, []
        chunk: list[_Line] = []
        size = 0
        for line in lines:
            n = len(line.jsonl.encode())
            if chunk and (len(chunk) >= self.settings.max_requests or size + n > self.settings.max_bytes):
                self._spawn(st, self._submit(st, chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += n
        if chunk:
            self._spawn(st, self._submit(st, chunk))

    async def _submit(self, st: _Loop, lines: list[_Line]) -> None:
        keys = [ln.key for ln in lines]
        digest = keys_digest(keys)
        try:
            upload = await st.api.upload("".join(ln.jsonl for ln in lines).encode(), digest)
            batch = await st.api.create(upload["id"], self.settings.completion_window, {"treesynth_keys": digest})
        except (BatchAPIError, KeyError, TypeError) as e:  # the API refused: re-sending the same file would too
            for ln in lines:
                self._line_failed(st, ln, f"batch not created: {e}", retry=False)
            return
        bid = str(batch["id"])
        self.checkpoint.created(bid, upload["id"], keys)
        for ln in lines:
            ln.attempts += 1
        self.transport_stats.batches += 1
        self.transport_stats.batched_requests += len(lines)
        log.info("[batch] %s: %d requests submitted", bid, len(lines))
        self._follow(st, bid)

    def _follow(self, st: _Loop, bid: str, resumed: bool = False) -> None:
        if bid not in st.pollers:
            if resumed:
                self.transport_stats.batches_resumed += 1
                log.info("[batch] %s: picked up from %s", bid, self.checkpoint.path)
            st.pollers[bid] = st.loop.create_task(self._poll(st, bid))

    async def _poll(self, st: _Loop, bid: str) -> None:
        try:
            await self._poll_until_done(st, bid)
        except Exception as e:  # never leave a waiting request hanging on a lost task
            log.exception("[batch] %s: polling failed", bid)
            self._unreachable(st, bid, f"batch {bid}: {type(e).__name__}: {e}")
        finally:
            st.pollers.pop(bid, None)

    async def _poll_until_done(self, st: _Loop, bid: str) -> None:
        seen = None
        while True:
            try:
                batch = await st.api.status(bid)
            except BatchAPIError as e:
                self._unreachable(st, bid, f"batch status unavailable: {e}")
                return
            status = batch.get("status")
            if status != seen:  # a batch can take hours: say where it is when that changes
                log.info("[batch] %s: %s %s", bid, status, batch.get("request_counts") or "")
                seen = status
            if status in TERMINAL:
                break
            if status not in ACTIVE:
                log.warning("[batch] %s: unknown status %r, still polling", bid, status)
            await asyncio.sleep(self.settings.poll_s)
        answers: dict[str, Completion] = {}
        errors: dict[str, str] = {}
        for fid in (batch.get("output_file_id"), batch.get("error_file_id")):
            if fid:
                try:
                    read_results(await st.api.content(fid), answers, errors)
                except BatchAPIError as e:
                    self._unreachable(st, bid, f"batch file unavailable: {e}")
                    return
        reason = f"batch {bid} {status}"
        if status == "failed":
            errs = (batch.get("errors") or {}).get("data") or []
            reason += ": " + "; ".join(str(e.get("message", e)) for e in errs[:3]) if errs else ""
        self._finish(st, bid, status, answers, errors, reason)

    def _finish(self, st: _Loop, bid: str, status: str, answers: dict[str, Completion], errors: dict[str, str],
                reason: str) -> None:
        """Serve the answers, re-queue the failed lines; keep answers nobody waits for (a rerun's)."""
        keys = self.checkpoint.keys_of(bid)
        self.checkpoint.finished(bid, status, answers)
        log.info("[batch] %s %s: %d answered, %d to retry", bid, status, len(answers), len(keys) - len(answers))
        for k in keys:
            line = st.waiting.get(k)
            c = answers.get(k)
            if line is None:
                if c is not None:
                    self.checkpoint.keep(k, c)
            elif c is not None:
                self.transport_stats.batch_answers += 1
                self.transport_stats.batch_prompt_tokens += c.prompt_tokens
                self.transport_stats.batch_completion_tokens += c.completion_tokens
                if not line.future.done():
                    line.future.set_result(c)
            else:
                self._line_failed(st, line, errors.get(k) or f"{reason}: no answer for this line")

    def _unreachable(self, st: _Loop, bid: str, reason: str) -> None:
        """The batch's state is unknown: fail its waiting lines without retry; the batch stays open, so a
        later ask (or run) polls it again instead of paying twice."""
        for k in self.checkpoint.keys_of(bid):
            if (line := st.waiting.get(k)) is not None:
                self._line_failed(st, line, reason, retry=False)

    def _line_failed(self, st: _Loop, line: _Line, reason: str, retry: bool = True) -> None:
        if retry and line.attempts <= self.settings.line_retries:
            self.transport_stats.batch_line_retries += 1
            self._enqueue(st, line)
            return
        self.transport_stats.batch_failed_lines += 1
        if not line.future.done():
            line.future.set_exception(LLMError(reason))


def batch_mode(backend: Backend, cfg: dict, cache_dir: str | Path | None) -> Backend:
    """The backend for `llm.runtime.mode` (not "online"): batch wraps it in a `BatchBackend`."""
    mode = str((cfg.get("runtime") or {}).get("mode"))
    if mode not in MODES:
        raise TreesynthError(f"llm.runtime.mode={mode!r}: choose from {list(MODES)}")
    if mode == "online":
        return backend
    if not isinstance(backend, OpenAIBackend):
        raise TreesynthError(f"llm.runtime.mode=batch needs llm.backend=openai (an OpenAI-compatible Batch API), "
                             f"not {cfg.get('backend')!r}")
    return BatchBackend(backend, cfg, Path(cache_dir) / "batches" if cache_dir is not None else None)
