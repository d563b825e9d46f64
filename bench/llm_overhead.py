"""Overhead of the LLM layer + `openai` backend against a fixed-latency stub server.

A stub with `latency` seconds per request and `concurrency` slots can at best finish n requests in
n * latency / concurrency seconds. We push n requests through build_llm(openai cfg, no cache) with
max_concurrency = concurrency and report ideal / actual wall time (1.0 = no overhead; target >= 0.9).

    .venv/bin/python bench/llm_overhead.py [--n 5000] [--latency 0.2] [--concurrency 64]

The stub runs in a child process by default so that client and server do not share one GIL
(as with a real server); --in-process keeps it in a thread of this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without install

from treesynth.llm import ChatRequest, build_llm  # noqa: E402
from treesynth.testing.stub_server import StubServer  # noqa: E402


@contextmanager
def stub_url(latency: float, slots: int, in_process: bool) -> Iterator[str]:
    if in_process:
        with StubServer(latency=latency, slots=slots) as srv:
            yield srv.base_url
        return
    import socket

    with socket.socket() as s:  # a free port for the child
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "treesynth.testing.stub_server", "--port", str(port),
           "--latency", str(latency), "--slots", str(slots)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        line = proc.stdout.readline()  # "stub server at URL" once it listens
        if "stub server at" not in line:
            raise RuntimeError(f"stub server did not start: {line!r}")
        yield line.rsplit(" ", 1)[-1].strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def run(base_url: str, n: int, concurrency: int) -> tuple[float, float]:
    cfg = {"backend": "openai", "model": "stub-model", "api_key_env": None,
           "runtime": {"base_urls": [base_url], "max_concurrency": concurrency, "max_retries": 0, "timeout_s": 60}}
    llm = build_llm(cfg)  # no cache_dir: every request reaches the server
    await llm.backend.health_check()
    # Warm the connection pool so the measurement is steady state, as in a long run.
    await llm.generate([ChatRequest.user(f"warm {i}", seed=i) for i in range(concurrency)])
    requests = [ChatRequest.user(f"question {i}", seed=i, max_tokens=64) for i in range(n)]
    t0, cpu0 = time.perf_counter(), time.process_time()
    out = await llm.generate(requests)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await llm.aclose()
    errors = sum(1 for c in out if c.error)
    if errors:
        raise SystemExit(f"{errors} of {n} requests failed, e.g. {next(c.error for c in out if c.error)}")
    return wall, cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--latency", type=float, default=0.2)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--in-process", action="store_true", help="stub in a thread of this process")
    a = p.parse_args()
    with stub_url(a.latency, a.concurrency, a.in_process) as url:
        wall, cpu = asyncio.run(run(url, a.n, a.concurrency))
    ideal = a.n * a.latency / a.concurrency
    result = {"n": a.n, "latency_s": a.latency, "concurrency": a.concurrency, "in_process": a.in_process,
              "ideal_s": round(ideal, 3), "actual_s": round(wall, 3), "efficiency": round(ideal / wall, 4),
              "requests_per_s": round(a.n / wall, 1),
              "client_cpu_ms_per_request": round(1000 * cpu / a.n, 3)}  # this process: LLM layer + backend
    print(json.dumps(result))
    print(f"ideal/actual = {ideal / wall:.3f} ({'OK' if ideal / wall >= 0.9 else 'BELOW'} target 0.9)")


if __name__ == "__main__":
    main()
