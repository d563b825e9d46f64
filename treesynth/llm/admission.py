"""Admission to a backend's request slots: a bounded number of requests at a time, with two queues.

A backend that serves a fixed number of requests at once (`parallel`: HTTP slots) gets at most a few times
that many requests keyed, looked up and queued at a time (`LLM`, treesynth/llm/client.py). Thousands
started together would otherwise do that work in one event-loop turn, during which no answer is read and
the slots stand idle.

The gate has two queues. Requests made inside `admitted_first()` (and in tasks started inside it) go before
the others that wait; within a queue, first come first served. The synthesis stage (treesynth/fill.py) runs
the generator inside it: the generator's chunk then runs at full speed, and the teacher's answers fill the
slots the chunk's last, slowest calls leave free. With one first-come queue the two took turns, and at
the end of every generation chunk the slots emptied while its stragglers came back.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

_FIRST = contextvars.ContextVar("treesynth_llm_admitted_first", default=False)


@contextmanager
def admitted_first() -> Iterator[None]:
    """Requests made inside, and in tasks started inside, are admitted before those made elsewhere."""
    token = _FIRST.set(True)
    try:
        yield
    finally:
        _FIRST.reset(token)


class AdmissionGate:
    """At most `limit` holders at once (one event loop's); waiters of `admitted_first()` go first."""

    def __init__(self, limit: int):
        self.loop = asyncio.get_running_loop()
        self.free = limit
        self.queues: tuple[deque[asyncio.Future], deque[asyncio.Future]] = (deque(), deque())  # first, others

    def reserve(self) -> asyncio.Future:
        """A place in the queue: the future is done (at once, when one is free) once the place is held."""
        waiter = self.loop.create_future()
        if self.free > 0 and not (self.queues[0] or self.queues[1]):
            self.free -= 1
            waiter.set_result(None)
        else:
            self.queues[0 if _FIRST.get() else 1].append(waiter)
        return waiter

    def give_up(self, waiter: asyncio.Future) -> None:
        """Drop a reservation: a held place is released, a queued one is cancelled (release() skips it)."""
        if waiter.done() and not waiter.cancelled():
            self.release()
        else:
            waiter.cancel()

    async def acquire(self) -> None:
        waiter = self.reserve()
        try:
            await waiter
        except asyncio.CancelledError:
            self.give_up(waiter)  # granted just as it was cancelled: the place is passed on
            raise

    def release(self) -> None:
        """Hand the place to the next waiter (the first queue before the other), else free it."""
        for queue in self.queues:
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self.free += 1

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()
