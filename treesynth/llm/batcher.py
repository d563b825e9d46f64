"""Micro-batching for in-process engines (embedded transformers, vLLM offline): many concurrent
`await submit(item)` calls are gathered into batches that one worker thread runs, so the event loop
stays free while the model computes and the model sees full batches."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from typing import Any, Generic, TypeVar

from treesynth.errors import TreesynthError

T = TypeVar("T")
D = TypeVar("D")
R = TypeVar("R")

# run_batch returns one entry per item: a result, or an exception that only that item's caller sees
# (one bad request must not fail the 15 others it happened to be batched with).
RunBatch = Callable[[list[T]], Sequence["R | BaseException"]]


class MicroBatcher(Generic[T, R]):
    """Collects pending items for up to `max_wait_ms` (or until `batch_size` are waiting) and runs
    them with `run_batch` on a single worker thread; batches run one at a time, in arrival order."""

    def __init__(self, run_batch: RunBatch, batch_size: int, max_wait_ms: float = 20, name: str = "batcher"):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.run_batch = run_batch
        self.batch_size = batch_size
        self.max_wait = max_wait_ms / 1000
        # One thread: the model is not re-entrant and a second batch would only fight for the cores.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[tuple[T, asyncio.Future]] = []
        self._full: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self.batches_run = 0  # for tests and throughput logs
        self.batch_sizes: list[int] = []

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A new event loop (each asyncio.run): state bound to the old loop is unusable.
            self._loop, self._pending, self._worker = loop, [], None
            self._full = asyncio.Event()
        assert self._full is not None
        fut: asyncio.Future = loop.create_future()
        self._pending.append((item, fut))
        if len(self._pending) >= self.batch_size:
            self._full.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        assert self._loop is not None and self._full is not None
        while self._pending:
            if len(self._pending) < self.batch_size:
                # Give concurrent callers a moment to join this batch.
                try:
                    await asyncio.wait_for(self._full.wait(), self.max_wait)
                except asyncio.TimeoutError:
                    pass
            batch = [(i, f) for i, f in self._pending[: self.batch_size] if not f.done()]
            self._pending = self._pending[self.batch_size :]
            if len(self._pending) < self.batch_size:
                self._full.clear()
            if not batch:
                continue
            self.batches_run += 1
            self.batch_sizes.append(len(batch))
            try:
                results = await self._loop.run_in_executor(self._executor, self.run_batch, [i for i, _ in batch])
            except asyncio.CancelledError:
                for _, f in batch:
                    f.cancel()
                raise
            except Exception as e:  # a failure of the whole batch goes to every caller in it
                for _, f in batch:
                    if not f.done():
                        f.set_exception(e)
                continue
            for (_, f), r in zip(batch, results, strict=True):
                if f.done():
                    continue
                if isinstance(r, BaseException):
                    f.set_exception(r)
                else:
                    f.set_result(r)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def parse_runtime(cls: type[D], llm_cfg: dict) -> D:
    """`llm.runtime` as the backend's runtime dataclass: every field from
    the config (conf/llm/<backend>.yaml holds the values, never the dataclass); a missing or unknown key is
    a one-line error."""
    given: dict[str, Any] = dict(llm_cfg.get("runtime") or {})
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    backend = llm_cfg.get("backend")
    if unknown := sorted(set(given) - known):
        raise TreesynthError(f"unknown llm.runtime keys {unknown} for backend {backend!r}; known: {sorted(known)}")
    if missing := sorted(known - set(given)):
        raise TreesynthError(f"llm.runtime is missing {', '.join(missing)} for backend {backend!r} "
                             f"(conf/llm/{backend}.yaml sets every key)")
    return cls(**given)
