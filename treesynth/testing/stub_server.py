"""A scriptable OpenAI-compatible HTTP server on 127.0.0.1 for tests and benches.

    with StubServer(latency=(0.05, 0.5), slots=8, respond=lambda req: "hi") as srv:
        cfg = {"backend": "openai", "model": srv.model, "api_key_env": None,
               "runtime": {"base_urls": [srv.base_url]}}

Serves GET /v1/models and POST /v1/chat/completions from a background thread (aiohttp). Behaviour,
all plain attributes that may be changed while it runs:
- `latency`: seconds per chat request, fixed or (lo, hi) uniform, drawn from a RNG seeded by `seed`;
- `slots`: requests served at once (others queue, like a server's batch slots);
- `fail_first` / `fail_status` / `retry_after`: the first k chat requests get that HTTP status
  (429 carries Retry-After when `retry_after` is not None); `fail_first=None` fails forever;
- `hang`: chat requests are never answered (until stop);
- `fault_kind` / `fault_rate` / `fault_attempts` / `hang_s`: seeded, per-request faults (see `FAULT_KINDS`).
  A request is faulted when a hash of (its body, `seed`) falls under `fault_rate`; it then fails its
  first `fault_attempts` attempts (a retry sends the same body, so the stub counts attempts per body)
  and is answered normally after that, exactly as an unfaulted request. So a client that retries the
  same request recovers the fault-free answer, and one that changes the request (another seed) does not.
  `malformed` and `schema_invalid` apply to JSON-schema requests only (free text has no format a
  transport can break); a `hang` is answered after `hang_s` seconds (set it past the client's timeout)
  or at stop, whichever comes first;
- `respond(request_json) -> str | dict | list | StubReply` scripts the answer (dict/list are sent as
  JSON; may be async). Default: free text derived from prompt and seed, or, when the request carries
  response_format json_schema, a schema-valid instance drawn from the same seed.
Batch API (`/v1/files`, `/v1/batches`, `batch_*` arguments and attributes): treesynth/testing/stub_batches.py.
Counters: `requests` (chat requests received, faults included), `answered`, `max_inflight`,
`received` (request bodies, in arrival order), `last_authorization`, `faults` (kind -> faulted attempts),
`fault_candidates` (distinct requests the fault kind applies to, faulted or not).
Bodies are read and written with orjson: the stub's own CPU per request adds to the time every request
holds a client slot, which bench/scale.py counts against the client.
Standalone: `python -m treesynth.testing.stub_server --port 8000 --latency 0.2 --slots 64`
[--fault-kind 500 --fault-rate 0.2 --fault-attempts 1 --hang-s 5] [--batch-delay 5 --batch-expire-after N
--batch-error-rate 0.1].
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import inspect
import json
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from treesynth.testing.scripted import instance
from treesynth.testing.stub_batches import StubBatches

Latency = float | tuple[float, float]


@dataclass
class StubReply:
    text: str
    finish_reason: str = "stop"  # "length" scripts a truncation


Responder = Callable[[dict], Any]  # request json -> str | dict | list | StubReply (or an awaitable of it)

# 429 (with Retry-After = retry_after) and 500: HTTP errors; hang: answered after hang_s; malformed: the
# answer cut in half behind some prose; schema_invalid: valid JSON of the wrong shape; truncated: the answer
# cut in half with finish_reason "length".
FAULT_KINDS = ("429", "500", "hang", "malformed", "schema_invalid", "truncated")
_CONTENT_FAULTS = ("malformed", "schema_invalid")  # need a JSON-schema request


def _is_schema_request(body: dict) -> bool:
    return (body.get("response_format") or {}).get("type") in ("json_schema", "json_object")


def default_answer(body: dict) -> str:
    """Deterministic in (messages, seed): same request, same text; another seed, another text."""
    messages = body.get("messages") or []
    digest = hashlib.sha256(json.dumps([messages, body.get("seed")], sort_keys=True).encode()).digest()
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema") or {}
        return json.dumps(instance(schema, random.Random(digest)))
    prompt = str(messages[-1].get("content", "")) if messages else ""
    return f"stub answer {digest.hex()[:8]} to: {' '.join(prompt.split()[:12])}"


def _damaged(reply: StubReply, fault: str) -> StubReply:
    half = reply.text[: len(reply.text) // 2]
    if fault == "truncated":
        return StubReply(half, finish_reason="length")
    if fault == "malformed":
        return StubReply(f"Here is the JSON you asked for: {half}")
    # schema_invalid: every schema here is an object at the top (anything else gets an object)
    try:
        value = json.loads(reply.text)
    except ValueError:
        value = reply.text
    return StubReply(json.dumps({"stub_fault": value} if isinstance(value, list) else [value]))


@dataclass(eq=False)
class StubServer(StubBatches):
    """Options as keyword arguments (`StubServer(latency=0.2, slots=256, fault_kind="429")`)."""

    latency: Latency = 0.0
    slots: int = 64
    seed: int = 0
    respond: Responder | None = None
    fail_first: int | None = 0
    fail_status: int = 500
    retry_after: float | None = 1.0
    hang: bool = False
    fault_kind: str | None = None
    fault_rate: float = 0.0
    fault_attempts: int = 1
    hang_s: float = 5.0
    model: str = "stub-model"
    port: int = 0
    batch_delay: float = 0.0
    batch_expire_after: int | None = None
    batch_error_rate: float = 0.0
    batch_error_attempts: int = 1

    def __post_init__(self) -> None:
        if self.fault_kind is not None and self.fault_kind not in FAULT_KINDS:
            raise ValueError(f"fault_kind {self.fault_kind!r}: choose from {FAULT_KINDS}")
        self.requests = 0
        self.answered = 0
        self.inflight = 0
        self.max_inflight = 0
        self.received: list[dict] = []
        self.last_authorization: str | None = None  # the Authorization header of the last chat request
        self.faults: Counter[str] = Counter()
        self.fault_candidates = 0
        self._attempts: Counter[str] = Counter()  # body hash -> attempts seen
        self._init_batches()
        self._rng = random.Random(self.seed)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._sem: asyncio.Semaphore | None = None
        self._sem_size = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # --- handlers (run on the server's loop) -------------------------------------------------
    def _delay(self) -> float:
        lat = self.latency
        return self._rng.uniform(*lat) if isinstance(lat, tuple | list) else float(lat)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "stub"}]})

    def _fault(self, body: dict) -> str | None:
        """The fault this attempt of this request gets (None: answered normally)."""
        kind = self.fault_kind
        if kind is None or self.fault_rate <= 0 or (kind in _CONTENT_FAULTS and not _is_schema_request(body)):
            return None
        digest = hashlib.sha256(json.dumps([body, self.seed], sort_keys=True).encode()).digest()
        key = digest.hex()
        attempt = self._attempts[key]
        self._attempts[key] += 1
        self.fault_candidates += attempt == 0
        faulted = int.from_bytes(digest[:8], "big") / 2**64 < self.fault_rate
        if not faulted or attempt >= self.fault_attempts:
            return None
        self.faults[kind] += 1
        return kind

    def _error(self, status: int) -> web.Response:
        headers = {}
        if status == 429 and self.retry_after is not None:
            headers["Retry-After"] = f"{self.retry_after:g}"
        err = {"error": {"message": f"stub fault {status}", "type": "stub", "code": status}}
        return web.json_response(err, status=status, headers=headers)

    async def _chat(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.requests += 1
        self.received.append(body)
        self.last_authorization = request.headers.get("Authorization")
        if self.fail_first is None or self.requests <= self.fail_first:
            return self._error(self.fail_status)
        fault = self._fault(body)
        if fault in ("429", "500"):
            return self._error(int(fault))
        if self.hang or fault == "hang":
            # Released by stop(), so shutdown never waits on it; a hang fault is answered late.
            try:
                await asyncio.wait_for(self._stopping.wait(), None if self.hang else self.hang_s)
            except asyncio.TimeoutError:
                pass
            if self._stopping.is_set():
                raise web.HTTPServiceUnavailable()
        if self._sem is None or self._sem_size != self.slots:
            self._sem, self._sem_size = asyncio.Semaphore(self.slots), self.slots
        async with self._sem:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            try:
                if (d := self._delay()) > 0:
                    await asyncio.sleep(d)
                reply = await self._reply(body)
            finally:
                self.inflight -= 1
        if fault in ("malformed", "schema_invalid", "truncated"):
            reply = _damaged(reply, fault)
        self.answered += 1
        completion = orjson.dumps(self._chat_completion(body, reply, f"chatcmpl-stub-{self.requests}"))
        return web.Response(body=completion, content_type="application/json")

    async def _reply(self, body: dict) -> StubReply:
        reply = self.respond(body) if self.respond else None
        if inspect.isawaitable(reply):
            reply = await reply
        if reply is None:
            reply = default_answer(body)
        if not isinstance(reply, StubReply):
            reply = StubReply(reply if isinstance(reply, str) else json.dumps(reply))
        return reply

    def _chat_completion(self, body: dict, reply: StubReply, cid: str) -> dict:
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or [])
        completion_tokens = len(reply.text.split())
        return {
            "id": cid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                         "finish_reason": reply.finish_reason}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    # --- lifecycle ---------------------------------------------------------------------------
    async def _start(self, sock: socket.socket) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._add_batch_routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, backlog=1024).start()

    def start(self) -> StubServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._start(sock))
            except BaseException as e:  # surfaced in start(), not lost in the thread
                failure.append(e)
                started.set()
                return
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name=f"stub-server-{self.port}", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return

        async def shutdown() -> None:
            self._stopping.set()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._thread = self._loop = None

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="OpenAI-compatible stub server on 127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--latency", type=float, nargs="+", default=[0.0], help="seconds, or LO HI for uniform")
    p.add_argument("--slots", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fault-kind", choices=FAULT_KINDS, default=None)
    p.add_argument("--fault-rate", type=float, default=0.0, help="fraction of requests faulted")
    p.add_argument("--fault-attempts", type=int, default=1, help="attempts a faulted request fails")
    p.add_argument("--hang-s", type=float, default=5.0, help="a hang fault is answered after this long")
    p.add_argument("--batch-delay", type=float, default=0.0, help="seconds until a batch finishes")
    p.add_argument("--batch-expire-after", type=int, default=None, help="a batch answers this many lines, then expires")
    p.add_argument("--batch-error-rate", type=float, default=0.0, help="fraction of batch lines sent to the error file")
    a = p.parse_args(argv)
    lat: Latency = (a.latency[0], a.latency[1]) if len(a.latency) > 1 else a.latency[0]
    with StubServer(latency=lat, slots=a.slots, seed=a.seed, port=a.port, fault_kind=a.fault_kind,
                    fault_rate=a.fault_rate, fault_attempts=a.fault_attempts, hang_s=a.hang_s,
                    batch_delay=a.batch_delay, batch_expire_after=a.batch_expire_after,
                    batch_error_rate=a.batch_error_rate) as srv:
        print(f"stub server at {srv.base_url}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
