"""A small HTTP/1.1 client for JSON APIs: keep-alive connections to one origin, one request per connection
at a time; how many requests run at once is the caller's bound (routing.py's slots per URL).

Why not aiohttp's ClientSession: against the loopback stub (200 ms, 256 slots) a bare loop of requests
through it kept 0.91 of the slots busy, and the same loop over this client 0.95; aiohttp's request path
(URL and header objects, timers, tracing hooks, the connector) was a fifth of the synthesis client's CPU.
What is here: http and https (the system's CA store; SSL_CERT_FILE / SSL_CERT_DIR are honoured),
request bodies as bytes with Content-Length, responses framed by Content-Length, chunked transfer coding
or the end of the connection, 1xx responses skipped, gzip/deflate bodies decoded (we ask for identity),
one total timeout per request, connection reuse. A request that fails on a reused connection before any
byte of its answer came (the server closed it while idle) is sent once more on a new connection.
What is not: proxies (never used: the aiohttp session had trust_env off too), redirects, HTTP/2, cookies.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import zlib
from dataclasses import dataclass
from urllib.parse import urlsplit


class HTTPConnectionError(Exception):
    """The connection failed or closed before a whole response came."""


class HTTPTimeout(Exception):
    """No whole response within the request's timeout."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes


class _Connection(asyncio.Protocol):
    """One socket. `send` writes a request; the response completes the waiter it was given."""

    def __init__(self, client: HTTPClient):
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future | None = None
        self.buf = bytearray()
        self.used = 0  # requests sent on it
        self.got_bytes = False  # some of the current answer came
        self.head: tuple[int, dict[str, str], bool] | None = None  # status, headers, keep-alive
        self.body_mode = ""  # "length" | "chunked" | "close"
        self.length = 0
        self.chunks: list[bytes] = []

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # nothing asked: a server that talks out of turn is not reused
            self.close()
            return
        self.got_bytes = True
        self.buf += data
        try:
            response = self._parse()
        except (ValueError, IndexError, zlib.error, OSError) as e:  # OSError: gzip's BadGzipFile
            self._fail(HTTPConnectionError(f"malformed HTTP response: {e}"))
            return
        if response is not None:
            self._done(response)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost finishes a read-to-close body

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._discard(self)
        if self.waiter is None or self.waiter.done():
            return
        if self.head is not None and self.body_mode == "close":
            status, headers, _ = self.head
            self._finish(Response(status, headers, _decoded(bytes(self.buf), headers)), keep=False)
            return
        why = str(exc) if exc else "connection closed before the whole response came"
        self._fail(HTTPConnectionError(why))

    # ------------------------------------------------------------------ requests
    def send(self, data: bytes, waiter: asyncio.Future) -> None:
        self.waiter, self.got_bytes, self.head, self.chunks = waiter, False, None, []
        self.buf.clear()
        self.used += 1
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def expire(self) -> None:
        """The request's deadline passed: fail it; the socket is not reused (its answer may still come)."""
        self._fail(HTTPTimeout("no whole response in time"))

    def _fail(self, e: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(e)

    def _done(self, response: Response) -> None:
        self._finish(response, keep=self.head[2] and not self.buf)

    def _finish(self, response: Response, keep: bool) -> None:
        waiter, self.waiter = self.waiter, None
        if keep:
            self.client._idle(self)
        else:
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    # ------------------------------------------------------------------ parsing
    def _parse(self) -> Response | None:
        while self.head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return None
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            del self.buf[: end + 4]
            version, status = lines[0].split(" ", 2)[:2]
            code = int(status)
            if 100 <= code < 200:
                continue  # 100 Continue, 103 Early Hints: the real answer follows
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            conn = headers.get("connection", "").lower()
            keep = "close" not in conn if version == "HTTP/1.1" else "keep-alive" in conn
            self.head = (code, headers, keep)
            if code in (204, 304):
                self.body_mode, self.length = "length", 0
            elif "chunked" in headers.get("transfer-encoding", "").lower():
                self.body_mode = "chunked"
            elif "content-length" in headers:
                self.body_mode, self.length = "length", int(headers["content-length"])
            else:
                self.body_mode = "close"
        status, headers, _ = self.head
        if self.body_mode == "length":
            if len(self.buf) < self.length:
                return None
            body = bytes(self.buf[: self.length])
            del self.buf[: self.length]
        elif self.body_mode == "chunked":
            body = self._chunked()
            if body is None:
                return None
        else:
            return None  # read to close: connection_lost finishes it
        return Response(status, headers, _decoded(body, headers))

    def _chunked(self) -> bytes | None:
        """The whole body once the last chunk (and the trailer) came, else None; consumed chunks leave buf."""
        while True:
            line_end = self.buf.find(b"\r\n")
            if line_end < 0:
                return None
            size = int(bytes(self.buf[:line_end]).split(b";", 1)[0].strip(), 16)
            if size == 0:  # the last chunk: trailer fields (skipped) up to an empty line
                pos = line_end + 2
                while (end := self.buf.find(b"\r\n", pos)) != pos:
                    if end < 0:
                        return None
                    pos = end + 2
                del self.buf[: pos + 2]
                return b"".join(self.chunks)
            start = line_end + 2
            if len(self.buf) < start + size + 2:
                return None
            self.chunks.append(bytes(self.buf[start : start + size]))
            del self.buf[: start + size + 2]


def _decoded(body: bytes, headers: dict[str, str]) -> bytes:
    coding = headers.get("content-encoding", "identity").lower()
    if coding == "gzip":
        return gzip.decompress(body)
    if coding == "deflate":
        return zlib.decompress(body)
    return body


class HTTPClient:
    """Requests to one origin (`base_url`'s scheme, host and port; its path prefixes every request path)
    over keep-alive connections, one per request in flight. Make and use it in one event loop."""

    def __init__(self, base_url: str, headers: dict[str, str]):
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if url.scheme == "https" else None
        self.prefix = url.path.rstrip("/")
        host = self.host if ":" not in self.host else f"[{self.host}]"  # IPv6 literal
        netloc = host if url.port is None else f"{host}:{url.port}"
        fixed = {"Host": netloc, "Accept-Encoding": "identity", "Accept": "application/json", **headers}
        self.fixed_head = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self.loop = asyncio.get_running_loop()
        self.idle: list[_Connection] = []
        self.open: set[_Connection] = set()

    async def request(self, method: str, path: str, body: bytes | None = None, timeout_s: float = 60.0,
                      headers: dict[str, str] | None = None) -> Response:
        head = f"{method} {self.prefix}{path} HTTP/1.1\r\n{self.fixed_head}"
        if headers:
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        if body is not None or method in ("POST", "PUT", "PATCH"):
            head += f"Content-Length: {len(body or b'')}\r\n"
        data = (head + "\r\n").encode("latin-1") + (body or b"")
        deadline = self.loop.time() + timeout_s
        conn = await self._connection(deadline)
        try:
            return await self._send(conn, data, deadline)
        except HTTPConnectionError:
            if conn.used > 1 and not conn.got_bytes:
                # a reused connection the server had closed while it idled: once more on a new one
                return await self._send(await self._connect(deadline), data, deadline)
            raise

    async def _send(self, conn: _Connection, data: bytes, deadline: float) -> Response:
        waiter = self.loop.create_future()
        conn.send(data, waiter)
        timer = self.loop.call_at(deadline, conn.expire)
        try:
            return await waiter
        except asyncio.CancelledError:  # the caller gave up: the answer may still come, so the socket goes
            conn.close()
            raise
        finally:
            timer.cancel()

    async def _connection(self, deadline: float) -> _Connection:
        while self.idle:
            conn = self.idle.pop()
            if not conn.transport.is_closing():
                return conn
        return await self._connect(deadline)

    async def _connect(self, deadline: float) -> _Connection:
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: _Connection(self), self.host, self.port, ssl=self.ssl),
                max(0.0, deadline - self.loop.time()))
        except asyncio.TimeoutError:
            raise HTTPTimeout(f"no connection to {self.host}:{self.port} in time") from None
        except (OSError, ssl.SSLError) as e:
            raise HTTPConnectionError(f"cannot connect to {self.host}:{self.port}: {e.strerror or e}") from e
        self.open.add(conn)
        return conn

    def _idle(self, conn: _Connection) -> None:
        self.idle.append(conn)

    def _discard(self, conn: _Connection) -> None:
        self.open.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)

    async def close(self) -> None:
        for conn in list(self.open):
            conn.close()
        self.idle.clear()
        await asyncio.sleep(0)  # let the transports run their close callbacks
