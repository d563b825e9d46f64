"""The HTTP/1.1 client under the openai backend (treesynth/llm/http.py), against a raw socket server that
answers with scripted bytes: framing (length, chunked, to close, 1xx first), keep-alive reuse and its
stale case, timeouts, refused connections, compressed bodies, TLS, and what the request looks like."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from treesynth.llm.http import HTTPClient, HTTPConnectionError, HTTPTimeout

CLOSE = b"<close without answering>"
Answer = Callable[[int, bytes], bytes | None]  # (request number, request bytes) -> response bytes (None: no answer)


def ok(body: bytes, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


class RawServer:
    """Reads whole requests (head + Content-Length body) and writes `answer(n, request)` back: one byte at a
    time when `trickle`; closes the connection after an answer when `close_after`."""

    def __init__(self, answer: Answer, trickle: bool = False, close_after: bool = False,
                 ssl_context: ssl.SSLContext | None = None):
        self.answer, self.trickle, self.close_after, self.ssl = answer, trickle, close_after, ssl_context
        self.requests: list[bytes] = []
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl)
        port = self.server.sockets[0].getsockname()[1]
        return f"{'https' if self.ssl else 'http'}://{'localhost' if self.ssl else '127.0.0.1'}:{port}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                out = self.answer(len(self.requests), request)
                if out is None:
                    await asyncio.sleep(3600)
                if out == CLOSE:
                    break
                for piece in ([out[i : i + 1] for i in range(len(out))] if self.trickle else [out]):
                    writer.write(piece)
                    await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        for w in self.writers:
            w.close()
        self.server.close()


def exchange(server: RawServer, *calls: tuple, **client_kw) -> tuple[list, RawServer]:
    """Run `calls` ((method, path[, body[, timeout_s]]) tuples, one after another; 5 s unless given) through
    one HTTPClient."""

    async def go() -> list:
        url = await server.start()
        client = HTTPClient(url, {"Authorization": "Bearer sk-test"}, **client_kw)
        out = []
        try:
            for method, path, *rest in calls:
                body = rest[0] if rest else None
                timeout_s = rest[1] if len(rest) > 1 else 5
                try:
                    out.append(await client.request(method, path, body, timeout_s))
                except (HTTPConnectionError, HTTPTimeout) as e:
                    out.append(e)
        finally:
            await client.close()
            await server.stop()
        return out

    return asyncio.run(go()), server


def test_request_head_and_keep_alive_reuse():
    server = RawServer(lambda n, req: ok(b'{"n": %d}' % n))
    (a, b), server = exchange(server, ("POST", "/chat/completions", b'{"x": 1}'), ("GET", "/models"))
    assert (a.status, a.body, b.body) == (200, b'{"n": 1}', b'{"n": 2}') and server.connections == 1
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/chat/completions HTTP/1.1" and body == b'{"x": 1}'
    assert {"Authorization: Bearer sk-test", "Content-Length: 8", "Accept-Encoding: identity"} <= set(lines)
    assert any(line.startswith("Host: 127.0.0.1:") for line in lines)
    assert "Content-Length" not in server.requests[1].decode()  # a GET without a body


def test_chunked_body_with_extensions_and_trailer_arriving_byte_by_byte():
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nRetry-After: 3\r\n\r\n"
               b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n")
    (a, b), server = exchange(RawServer(lambda n, req: chunked, trickle=True), ("GET", "/a"), ("GET", "/b"))
    assert a.body == b.body == b"hello, world" and a.headers["retry-after"] == "3" and server.connections == 1


def test_informational_response_first_then_the_answer():
    (a,), _ = exchange(RawServer(lambda n, req: b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"{}")), ("POST", "/x", b"{}"))
    assert (a.status, a.body) == (200, b"{}")


def test_body_read_to_close_and_connection_close():
    to_close = b"HTTP/1.0 200 OK\r\n\r\nall of it"
    (a, b), server = exchange(RawServer(lambda n, req: to_close, close_after=True), ("GET", "/a"), ("GET", "/b"))
    assert a.body == b.body == b"all of it" and server.connections == 2
    closing = RawServer(lambda n, req: ok(b"x", "Connection: close"), close_after=True)
    (a, b), server = exchange(closing, ("GET", "/a"), ("GET", "/b"))
    assert a.body == b.body == b"x" and server.connections == 2


def test_a_connection_the_server_closed_while_idle_is_replaced_without_an_error():
    server = RawServer(lambda n, req: ok(b"fine"))

    async def go() -> list:
        client = HTTPClient(await server.start(), {})
        first = await client.request("GET", "/a")
        for w in server.writers:  # the server's keep-alive timeout: it drops the idle connection
            w.transport.abort()
        await asyncio.sleep(0.05)
        second = await client.request("GET", "/b")
        await client.close()
        await server.stop()
        return [first, second]

    first, second = asyncio.run(go())
    assert first.body == second.body == b"fine" and server.connections == 2


def test_a_request_lost_on_a_reused_connection_is_sent_once_more_on_a_new_one():
    # the race a keep-alive timeout makes: the server closes the connection as the next request arrives
    server = RawServer(lambda n, req: CLOSE if n == 2 else ok(b"answer %d" % n))
    (a, b), server = exchange(server, ("POST", "/a", b"1"), ("POST", "/b", b"2"))
    assert (a.body, b.body) == (b"answer 1", b"answer 3") and server.connections == 2
    fresh = RawServer(lambda n, req: CLOSE)  # on a new connection the same loss is an error, not a loop
    (a,), server = exchange(fresh, ("POST", "/a", b"1"))
    assert isinstance(a, HTTPConnectionError) and len(server.requests) == 1


def test_timeout_and_the_timed_out_connection_is_not_reused():
    server = RawServer(lambda n, req: None if n == 1 else ok(b"late ok"))
    (a, b), server = exchange(server, ("GET", "/hang", None, 0.3), ("GET", "/b", None, 5))
    assert isinstance(a, HTTPTimeout) and b.body == b"late ok" and server.connections == 2


def test_refused_connection_and_malformed_answer_are_connection_errors():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed

    async def refused() -> Exception:
        client = HTTPClient(f"http://127.0.0.1:{port}/v1", {})
        try:
            await client.request("GET", "/models", timeout_s=5)
        except HTTPConnectionError as e:
            return e
        raise AssertionError("no error")

    assert "cannot connect" in str(asyncio.run(refused()))
    (a,), _ = exchange(RawServer(lambda n, req: b"HTTP/1.1 abc\r\n\r\n"), ("GET", "/x"))
    assert isinstance(a, HTTPConnectionError) and "malformed" in str(a)


def test_gzip_body_is_decoded():
    body = gzip.compress(b'{"ok": true}')
    (a,), _ = exchange(RawServer(lambda n, req: ok(body, "Content-Encoding: gzip")), ("GET", "/x"))
    assert a.body == b'{"ok": true}'


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not found")
def test_https_verifies_the_server_against_the_ca_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    (a,), _ = exchange(RawServer(lambda n, req: ok(b"secure"), ssl_context=server_ctx), ("GET", "/x"))
    assert isinstance(a, HTTPConnectionError)  # not in the CA store: refused
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted the way a user trusts a private CA
    (a,), _ = exchange(RawServer(lambda n, req: ok(b"secure"), ssl_context=server_ctx), ("GET", "/x"))
    assert a.body == b"secure"
