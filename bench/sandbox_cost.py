"""Cost of the bubblewrap sandbox per program: `run_program` in mode bwrap (namespaces, read-only system
view, tmpfs workspace, waiting for the PID namespace to be empty) against mode guard_only (the former
path: a plain `python -I` subprocess with the guard prelude), on the same programs in one run.

Programs: the 164 HumanEval canonical solutions with their tests (TREESYNTH_DATA_DIR/humaneval/
HumanEval.jsonl), or, without local data, a few small stand-ins. One program at a time, the two modes
interleaved program by program (order alternating), so machine load hits both alike. Budget: bwrap may add
at most 50 ms per program.

    .venv/bin/python bench/sandbox_cost.py [--n 164] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a checkout without install

from evaluation.sandbox import require_sandbox, run_program  # noqa: E402
from evaluation.tasks.utils import humaneval_program  # noqa: E402

MODES = ("guard_only", "bwrap")
BUDGET_MS = 50.0
STAND_INS = [
    "def add(a, b):\n    return a + b\nassert add(2, 3) == 5\n",
    "import re\nassert re.findall(r'\\d+', 'a1b22') == ['1', '22']\n",
    "from collections import Counter\nassert Counter('abca')['a'] == 2\n",
    "import math, random\nrandom.seed(0)\nassert math.isclose(sum(random.random() for _ in range(1000)) / 1000, 0.5, abs_tol=0.05)\n",
]


def programs(n: int) -> tuple[list[str], str]:
    path = Path(os.environ.get("TREESYNTH_DATA_DIR", REPO.parent / "shared" / "data")) / "humaneval" / "HumanEval.jsonl"
    if path.exists():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][:n]
        return [humaneval_program(r, r["canonical_solution"]) for r in rows], f"HumanEval canonical solutions ({path})"
    return (STAND_INS * (n // len(STAND_INS) + 1))[:n], "stand-in programs (no local HumanEval)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=164, help="programs")
    ap.add_argument("--repeats", type=int, default=1, help="passes over the programs")
    args = ap.parse_args()
    require_sandbox("bwrap")  # one line on what to install when bwrap is missing
    progs, source = programs(args.n)
    ms: dict[str, list[float]] = {m: [] for m in MODES}
    failed: dict[str, int] = {m: 0 for m in MODES}
    run_program(progs[0], mode="bwrap")  # warm-up: the page cache, bwrap's one-time probe
    for rep in range(args.repeats):
        for i, prog in enumerate(progs):
            for mode in (MODES if (i + rep) % 2 == 0 else MODES[::-1]):
                t0 = time.perf_counter()
                res = run_program(prog, mode=mode)
                ms[mode].append((time.perf_counter() - t0) * 1000)
                failed[mode] += not res.passed
    print(f"{len(progs)} programs x {args.repeats}: {source}; os.cpu_count()={os.cpu_count()}")
    print(f"{'mode':<12}{'mean ms':>10}{'median ms':>11}{'p90 ms':>9}{'failed':>8}")
    for mode in MODES:
        xs = sorted(ms[mode])
        print(f"{mode:<12}{statistics.fmean(xs):>10.1f}{statistics.median(xs):>11.1f}"
              f"{xs[int(0.9 * (len(xs) - 1))]:>9.1f}{failed[mode]:>8}")
    diff = [b - g for g, b in zip(ms["guard_only"], ms["bwrap"], strict=True)]
    mean_diff = statistics.fmean(diff)
    print(f"bwrap - guard_only per program: mean {mean_diff:+.1f} ms, median {statistics.median(diff):+.1f} ms; "
          f"ratio {statistics.fmean(ms['bwrap']) / statistics.fmean(ms['guard_only']):.2f}; "
          f"budget +{BUDGET_MS:.0f} ms: {'within' if mean_diff <= BUDGET_MS else 'OVER'}")


if __name__ == "__main__":
    main()
