"""The base URLs of the `openai` backend: least-busy routing, a slot bound and a 429 cooldown per URL.

Each attempt goes to the least busy URL that is not cooling down (ties round robin). A 429 pauses that
URL for its Retry-After (else `cooldown_429_s`); a request queued for a URL that starts cooling goes
to another free one, or waits the pause out when all are cooling. Every failed attempt becomes a
`Failure` that names its `TransportStats` counter and whether another attempt may help: 429, 5xx,
408/409, timeouts and connection errors may; other 4xx fail the request at once. When to try again is
the backend's retry policy (openai_compat.py).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from treesynth.llm.transport import HTTPError, Transport, short

log = logging.getLogger("treesynth")

RETRY_STATUS = frozenset({408, 409})  # 4xx that are transient (request timeout, conflict); 429 handled apart


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


class Failure(Exception):
    """One failed attempt: where, why, its `TransportStats` counter, and whether another attempt may help
    (`cooled`: the URL is paused, so the pause is the wait before the next attempt)."""

    def __init__(self, url: str, reason: str, kind: str, retryable: bool = True, cooled: bool = False):
        super().__init__(f"{url}: {reason}")
        self.url, self.reason, self.kind, self.retryable, self.cooled = url, reason, kind, retryable, cooled


@dataclass
class Endpoint:
    """One base URL: its transport, a slot bound, requests assigned to it, and a 429 pause."""

    url: str
    client: Transport
    slots: asyncio.Semaphore
    inflight: int = 0
    cooldown_until: float = 0.0  # loop.time() before which nothing is sent here
    sent: int = 0  # attempts sent here (any outcome); tests and benches read it


class URLPool:
    """The endpoints of one event loop (HTTP sessions and semaphores belong to the loop that made them)."""

    def __init__(self, urls: list[str], key: str, max_concurrency: int, timeout_s: float, cooldown_429_s: float):
        self.loop = asyncio.get_running_loop()
        self.timeout_s, self.cooldown_429_s = timeout_s, cooldown_429_s
        self.endpoints = [Endpoint(url, Transport(url, key, timeout_s), asyncio.Semaphore(max_concurrency))
                          for url in urls]
        self.turn = 0  # round-robin tie break among equally busy URLs

    def pick(self) -> Endpoint:
        """Least busy URL among those not cooling down (all cooling: the one free soonest)."""
        eps = self.endpoints
        if len(eps) == 1:
            return eps[0]
        now = self.loop.time()
        ready = [(i, e) for i, e in enumerate(eps) if e.cooldown_until <= now] or [
            min(enumerate(eps), key=lambda ie: ie[1].cooldown_until)]
        self.turn += 1
        # Rotate the start so ties go round robin instead of always to the first URL.
        return min(ready, key=lambda ie: (ie[1].inflight, (ie[0] - self.turn) % len(eps)))[1]

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        """One attempt on the best URL; any failure becomes a `Failure`."""
        while True:
            ep = self.pick()
            ep.inflight += 1
            try:
                async with ep.slots:
                    now = self.loop.time()
                    if ep.cooldown_until > now:
                        if any(e.cooldown_until <= now for e in self.endpoints):
                            continue  # this URL got a 429 while we queued for it; another is free
                        await asyncio.sleep(ep.cooldown_until - now)
                    ep.sent += 1
                    return await ep.client.request("POST", path, body)
            except HTTPError as e:
                raise self.failure(ep, e) from e
            finally:
                ep.inflight -= 1

    def failure(self, ep: Endpoint, e: HTTPError) -> Failure:
        if e.kind == "timeout":
            return Failure(ep.url, f"timeout after {self.timeout_s:g}s", "timeouts")
        if e.kind == "connection":
            return Failure(ep.url, f"connection error: {short(e.message)}", "connection_errors")
        if e.status == 429:
            pause = self.cooldown_429_s if e.retry_after is None else e.retry_after
            ep.cooldown_until = max(ep.cooldown_until, self.loop.time() + pause)
            log.debug("HTTP 429 from %s: pausing it %.1fs", ep.url, pause)
            return Failure(ep.url, "HTTP 429", "http_429", cooled=True)
        kind = "http_5xx" if e.status >= 500 else "http_4xx"
        transient = e.status >= 500 or e.status in RETRY_STATUS
        return Failure(ep.url, f"HTTP {e.status}: {short(e.message)}", kind, retryable=transient)

    async def close(self) -> None:
        await asyncio.gather(*(e.client.close() for e in self.endpoints), return_exceptions=True)
