"""What one chunk of the synthesis stream costs each method as the stream grows.

A streaming method's chunk should cost its own positions only, whatever came before it (one that
rebuilds its prefix per chunk gets slower with every chunk and holds the whole prefix). For each method
a child process runs the method alone, `Method.prompts_between` chunk by chunk as the synthesize stage
calls it, on the scripted backend (no network, instant answers: what is timed is the method's own work
plus the request cache), for N positions in chunks of --chunk. Printed per method and size:
- early s: the median time of chunks 2-4 (the first one also builds the tree or the persona pool);
- late s: the median time of the last three chunks;
- late/early: 1.0 is the ideal (a chunk costs its own positions); prefix rebuilding grows with N;
- peak RSS of the child, and with two sizes its growth per position between them.
With --reference DIR (another checkout, e.g. `git worktree add /tmp/ref main`) every row is measured
there too, side by side in the same run, with the ratio ours/reference.

    OMP_NUM_THREADS=1 .venv/bin/python bench/method_stream.py [--sizes 5000 20000] [--chunk 1024]
        [--methods temperature treesynth evol_instruct persona_hub] [--reference DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ["temperature", "treesynth", "evol_instruct", "persona_hub"]


async def _stream(cfg, method: str, size: int, chunk: int, work: Path) -> tuple[int, list[float]]:
    from treesynth.llm import build_llm
    from treesynth.methods import MethodEnv, method_class
    from treesynth.tasks import task_of

    llm = build_llm(cfg.llm, work / "cache")
    env = MethodEnv(llm=llm, task=task_of(cfg), cfg=cfg.method, seed=0, work_dir=work / "stage", root_cfg=cfg)
    env.work_dir.mkdir(parents=True)
    m = method_class(method)(env)
    records, times = 0, []
    try:
        for start in range(0, size, chunk):
            t0 = time.perf_counter()
            records += len(await m.prompts_between(start, min(size, start + chunk)))
            times.append(time.perf_counter() - t0)
    finally:
        await llm.aclose()
    return records, times


def child(repo: str, method: str, size: int, chunk: int) -> None:
    """One measurement, in the checkout `repo` (its code and its conf/)."""
    sys.path.insert(0, repo)
    from hydra import compose, initialize_config_dir

    work = Path(tempfile.mkdtemp(prefix="treesynth-stream-"))
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(Path(repo) / "conf")):
            cfg = compose("config", overrides=["llm=scripted", f"method={method}", "task=gsm8k",
                                               f"paths.artifacts={work}", "wandb.mode=disabled"])
        records, times = asyncio.run(_stream(cfg, method, size, chunk, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"records": records, "times": times}))


def measure(repo: Path, method: str, size: int, chunk: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, __file__, "--child", str(repo), method, str(size), str(chunk)],
                                cwd=repo, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own peak RSS
        out.seek(0)
        err.seek(0)
        text = out.read()
        if status != 0 or not text.strip():
            raise SystemExit(f"{method} n={size} in {repo} failed:\n{err.read()[-2000:]}")
    doc = json.loads(text.strip().splitlines()[-1])
    t = doc["times"]
    return {"records": doc["records"], "early": statistics.median(t[1:4] or t), "late": statistics.median(t[-3:]),
            "total": sum(t), "rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--reference", type=Path, help="another checkout to measure side by side")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        repo, method, size, chunk = a.child
        child(repo, method, int(size), int(chunk))
        return
    sides = [("ours", REPO)] + ([("ref", a.reference.resolve())] if a.reference else [])
    print(f"scripted backend, task=gsm8k, chunks of {a.chunk} positions")
    print(f"{'method':>14}{'code':>6}{'positions':>11}{'records':>9}{'early s':>9}{'late s':>8}{'late/early':>12}"
          f"{'total s':>9}{'peak RSS MB':>13}{'kB/position':>13}")
    for method in a.methods:
        rows: dict[str, list[dict]] = {}
        for name, repo in sides:
            prev = None
            for n in a.sizes:
                r = measure(repo, method, n, a.chunk)
                growth = "-" if prev is None else f"{(r['rss_mb'] - prev[1]) * 1024 / (n - prev[0]):.2f}"
                prev = (n, r["rss_mb"])
                rows.setdefault(name, []).append(r)
                print(f"{method:>14}{name:>6}{n:>11}{r['records']:>9}{r['early']:>9.3f}{r['late']:>8.3f}"
                      f"{r['late'] / r['early']:>12.2f}{r['total']:>9.1f}{r['rss_mb']:>13.0f}{growth:>13}", flush=True)
        if a.reference:
            ours, ref = rows["ours"][-1], rows["ref"][-1]
            print(f"{method:>14}  ours/ref at {a.sizes[-1]} positions: total time {ours['total'] / ref['total']:.2f}x, "
                  f"late chunk {ours['late'] / ref['late']:.2f}x, peak RSS {ours['rss_mb'] / ref['rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
