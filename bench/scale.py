"""Synthesis at paper scale against the loopback stub server: throughput against the ideal, and memory.

For each --sizes N: one `run.py method=temperature task=gsm8k llm=openai llm.profile=constrained
stages=[synthesize] data.size=N` in a child process, against a stub server (treesynth/testing/stub_server.py)
in another child process with --latency seconds per request and --slots requests served at once (the
schema-instance stub answers the constrained profile's JSON requests). Printed per size:
- requests: chat requests the synthesis sent (stage.json `llm.calls`: generation + teacher);
- ideal s = requests x latency / slots: the stub's capacity, the fastest any client could be;
- stage s: the synthesize stage's own elapsed time (stage.json `progress.elapsed_s`), and wall s of
  the whole process (interpreter start, imports, config);
- achieved/ideal = ideal s / stage s (1.0 = the client kept every slot busy);
- client CPU ms/request: CPU seconds (user + system) of the synthesis process per request sent
  (interpreter start and imports included, ~3 s), and the same for the stub server process. On a shared
  machine the ratio falls with the load; the CPU per request much less (it still grows some under
  contention). The client runs on one core: at 256 slots and 200 ms it has 0.78 ms per request;
- peak RSS of the synthesis process (ru_maxrss of the child), and the growth per record between
  consecutive sizes ((RSS_b - RSS_a) / (N_b - N_a)): what each further record costs in memory.
Each size runs in a fresh artifacts dir (no cache hits). The stub process clears its request log
(`received`) every second, so its memory is not what grows.

    OMP_NUM_THREADS=1 .venv/bin/python bench/scale.py [--sizes 10000 100000] [--latency 0.2] [--slots 256]
        [--override progress.every_s=10]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(port: int, latency: float, slots: int) -> None:
    """The stub server child: serve until killed, dropping the request log every second."""
    from treesynth.testing.stub_server import StubServer

    srv = StubServer(latency=latency, slots=slots, port=port).start()
    print("ready", flush=True)
    while True:
        time.sleep(1.0)
        srv.received.clear()


def wait_ready(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline() if proc.stdout else ""
    if line.strip() != "ready":
        raise SystemExit(f"stub server did not start: {line!r}")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a running process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_size(size: int, port: int, slots: int, root: Path, extra: list[str]) -> dict:
    art = root / f"n{size}"
    args = [sys.executable, str(REPO / "run.py"), "method=temperature", "task=gsm8k", "llm=openai",
            "llm.profile=constrained", "llm.model=stub-model", "llm.api_key_env=null",
            f"llm.runtime.base_urls=[http://127.0.0.1:{port}/v1]", f"llm.runtime.max_concurrency={slots}",
            "stages=[synthesize]", f"data.size={size}", f"paths.artifacts={art}", f"hydra.run.dir={art}/run",
            "wandb.mode=disabled", *extra]
    # The hub is never asked (decontamination reads TREESYNTH_DATA_DIR's test sets when set): the bench
    # measures the client, not a network timeout.
    env = {"HF_HUB_OFFLINE": "1", **os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    t0 = time.monotonic()
    log_path = art.with_suffix(".log")
    art.mkdir(parents=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    wall = time.monotonic() - t0
    if status != 0:
        raise SystemExit(f"size {size} failed ({status}); see {log_path}:\n{log_path.read_text()[-2000:]}")
    stage = json.loads(next((art / "synthesize").glob("*/stage.json")).read_text())["metrics"]
    progress_lines = sum(1 for line in log_path.read_text().splitlines() if "[synthesize] records " in line)
    return {"size": size, "requests": stage["llm"]["calls"], "stage_s": stage["progress"]["elapsed_s"],
            "wall_s": wall, "rss_mb": usage.ru_maxrss / 1024, "records": stage["records"],
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "progress_lines": progress_lines}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--slots", type=int, default=256)
    ap.add_argument("--keep", action="store_true", help="keep the artifacts (default: a temp dir, removed)")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--override", action="append", default=[], help="a run.py override (repeatable), e.g. progress.every_s=10")
    a = ap.parse_args()
    if a.serve:
        serve(a.serve, a.latency, a.slots)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still stops the children (finally below)
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--latency", str(a.latency),
                               "--slots", str(a.slots)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    tmp = tempfile.mkdtemp(prefix="treesynth-scale-")
    rows = []
    try:
        wait_ready(server)
        for n in a.sizes:
            server_cpu = cpu_s(server.pid)
            rows.append(run_size(n, port, a.slots, Path(tmp), a.override))
            r = rows[-1]
            r["server_cpu_s"] = cpu_s(server.pid) - server_cpu
            print(f"  n={n}: {r['stage_s']:.1f} s stage, {r['rss_mb']:.0f} MB peak RSS", flush=True)
    finally:
        server.kill()
        server.wait()
        if not a.keep:
            threading.Thread(target=lambda: subprocess.run(["rm", "-rf", tmp]), daemon=False).start()
    print(f"\nstub: latency {a.latency:g} s, {a.slots} slots; method=temperature task=gsm8k llm.profile=constrained")
    print(f"{'records':>9}{'requests':>10}{'ideal s':>9}{'stage s':>9}{'wall s':>8}{'achieved/ideal':>16}"
          f"{'client CPU ms/req':>19}{'stub CPU ms/req':>17}{'peak RSS MB':>13}{'kB/record':>11}{'progress lines':>16}")
    prev = None
    for r in rows:
        ideal = r["requests"] * a.latency / a.slots
        growth = "-" if prev is None else f"{(r['rss_mb'] - prev['rss_mb']) * 1024 / (r['size'] - prev['size']):.2f}"
        print(f"{r['size']:>9}{r['requests']:>10}{ideal:>9.1f}{r['stage_s']:>9.1f}{r['wall_s']:>8.1f}"
              f"{ideal / r['stage_s']:>16.2f}{r['cpu_s'] * 1000 / r['requests']:>19.2f}"
              f"{r['server_cpu_s'] * 1000 / r['requests']:>17.2f}{r['rss_mb']:>13.0f}{growth:>11}{r['progress_lines']:>16}")
        prev = r
    print(f"(load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; client CPU includes "
          f"interpreter start and imports; at the ideal rate the client has {1000 * a.latency / a.slots:.2f} ms per request)")
    print(f"(peak RSS of this bench process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
