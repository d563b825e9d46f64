"""Part 2 of bench/faults.py: SIGKILL a TreeSynth synthesis at moments drawn over the phases of a run
(the k-th request at the stub, hygiene, a file rename, a torn checkpoint line), rerun it, compare with
the fault-free run. The child side (`bench/faults.py child SPEC`) installs the kill hook and runs."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.fault_runs import RunState, compose_cfg, fault_free_answer, run_in_process, synthesis_overrides
from treesynth.testing.stub_server import StubServer

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "faults.py"  # the child runs through the bench's own command line

# TreeSynth small enough for many runs: depth 2, 3 pivots (see tests/test_synthesize_openai.py).
TREE = ["method=treesynth", "method.max_depth=2", "method.pivots=3"]
PHASES = ("tree", "leaves", "responses", "hygiene", "writing")


# ---- part 2: SIGKILL at random moments -------------------------------------------------------
@dataclass(frozen=True)
class Moment:
    """When a run is killed: at the k-th request to arrive (tree, leaves, responses), on entering or
    leaving hygiene, before a file is renamed into place, or half-way through a checkpoint line."""

    phase: str
    request: int = 0  # 1-based arrival index at the stub
    hook: str = ""  # child-side: "hygiene:enter", "hygiene:leave", "replace:<file>", "torn:<file>:<n>"

    def describe(self) -> str:
        return f"request {self.request}" if self.request else self.hook


def phase_ranges(bodies: list[dict]) -> dict[str, tuple[int, int]]:
    """1-based request ranges [lo, hi] of tree building, leaf generation and responses in a run's
    arrival order: the tree ends with its last criterion call (propose/assign/coverage/criterion),
    responses start with the first teacher request (schema `response`, or free text)."""
    names = [((b.get("response_format") or {}).get("json_schema") or {}).get("name") for b in bodies]
    tree_end = max(i for i, n in enumerate(names, 1) if n in ("propose", "assign", "coverage", "criterion"))
    first_response = min(i for i, n in enumerate(names, 1) if n in ("response", None))
    return {"tree": (1, tree_end), "leaves": (tree_end + 1, first_response - 1),
            "responses": (first_response, len(bodies))}


def draw_moments(n: int, ranges: dict[str, tuple[int, int]], ref: RunState, rng: random.Random) -> list[Moment]:
    """n moments, round robin over PHASES; inside a phase drawn at random without repeats (request
    phases: a request index; hygiene: entering, then leaving, in random order; writing: alternately a
    rename of a finished file and a torn checkpoint line)."""
    hygiene = rng.sample(["hygiene:enter", "hygiene:leave"], 2)
    files = ["data.jsonl", "data.parquet", "tree.json", "stage.json"]
    rng.shuffle(files)
    logs = [(name, len(rows)) for name, rows in sorted(ref.checkpoints.items()) if rows]
    taken: dict[str, set[int]] = {p: set() for p in ranges}
    out = []
    for i in range(n):
        phase, turn = PHASES[i % len(PHASES)], i // len(PHASES)
        if phase in ranges:
            lo, hi = ranges[phase]
            free = [k for k in range(lo, hi + 1) if k not in taken[phase]] or [lo]
            k = rng.choice(free)
            taken[phase].add(k)
            out.append(Moment(phase, request=k))
        elif phase == "hygiene":
            out.append(Moment(phase, hook=hygiene[turn % 2]))
        elif turn % 2 == 0:
            out.append(Moment(phase, hook=f"replace:{files[(turn // 2) % len(files)]}"))
        else:
            name, count = logs[rng.randrange(len(logs))]
            out.append(Moment(phase, hook=f"torn:{name}:{rng.randint(1, count)}"))
    return out


class KillSwitch:
    """A stub responder that SIGKILLs the child process when the k-th request arrives."""

    def __init__(self) -> None:
        self.pid = 0
        self.at = 0
        self.seen = 0
        self.killed = False
        self._lock = threading.Lock()

    def arm(self, pid: int, at: int) -> None:
        with self._lock:
            self.pid, self.at, self.seen, self.killed = pid, at, 0, False

    def __call__(self, body: dict) -> str:
        with self._lock:
            self.seen += 1
            if self.at and self.seen == self.at:
                os.kill(self.pid, signal.SIGKILL)
                self.killed = True
        return fault_free_answer(body)


def spawn(overrides: list[str], hook: str = "") -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    args = [sys.executable, str(SCRIPT), "child", json.dumps({"overrides": overrides, "hook": hook})]
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_case(moment: Moment, switch: KillSwitch, base_url: str, size: int, root: Path,
              extra: list[str] = ()) -> tuple[bool, int, Path, str]:
    """Run, kill at `moment`, rerun; (killed, rerun exit status, stage dir, rerun output tail)."""
    overrides = synthesis_overrides(base_url, size, root, TREE, list(extra))
    proc = spawn(overrides, moment.hook)
    switch.arm(proc.pid, moment.request)
    first_out, _ = proc.communicate(timeout=600)
    killed = proc.returncode == -signal.SIGKILL
    switch.arm(0, 0)
    rerun = spawn(overrides)
    out, _ = rerun.communicate(timeout=600)
    if not killed:
        out = f"not killed (exit {proc.returncode}): {first_out[-2000:]}\n{out}"
    from treesynth.pipeline import stage_dir

    return killed, rerun.returncode, stage_dir(compose_cfg(overrides), "synthesize"), out[-3000:]


def kill_loop(kills: int, size: int, seed: int, tmp: Path, extra: list[str] = ()) -> list[dict]:
    switch = KillSwitch()
    with StubServer(slots=64, respond=switch) as srv:
        proc = spawn(synthesis_overrides(srv.base_url, size, tmp / "reference", TREE, list(extra)))
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
        ref_stage = Path(json.loads(out.strip().splitlines()[-1])["stage"])
        ref = RunState.read(ref_stage)
        ranges = phase_ranges(srv.received)
        print(f"kill-loop reference: {len(ref.rows)} records, {len(srv.received)} requests, "
              f"phases {ranges}", flush=True)
        rows = []
        for i, moment in enumerate(draw_moments(kills, ranges, ref, random.Random(seed))):
            killed, rc, stage, tail = kill_case(moment, switch, srv.base_url, size, tmp / f"kill{i}", extra)
            state = RunState.read(stage) if rc == 0 else None
            rows.append({
                "phase": moment.phase, "moment": moment.describe(), "killed": killed, "rerun_rc": rc,
                "records": len(state.rows) if state else 0, "expected": size,
                "identical": bool(state) and state.rows == ref.rows,
                "duplicates": state.duplicates() if state else -1,
                "failures_kept": state.failures_kept(ref) if state else -1,
                "rerun_calls": state.metrics["llm"]["calls"] if state else -1,
                "reference_calls": ref.metrics["llm"]["calls"],
            })
            print(json.dumps(rows[-1]) + ("" if rc == 0 and killed else "\n" + tail), flush=True)
    return rows


def kill_ok(r: dict) -> bool:
    return (r["killed"] and r["rerun_rc"] == 0 and r["records"] == r["expected"] and r["identical"]
            and r["duplicates"] == 0 and r["failures_kept"] == 0)


# ---- the child: one synthesis run, optionally killing itself at a hook -----------------------
def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install_hook(hook: str) -> None:
    """Make this process SIGKILL itself at `hook` (see Moment.hook)."""
    if not hook:
        return
    what, _, arg = hook.partition(":")
    if what == "hygiene":
        import treesynth.fill as fill

        real = fill.apply_hygiene

        async def hygiene(*args: Any) -> Any:
            if arg == "enter":
                _die()
            out = await real(*args)
            _die()
            return out

        fill.apply_hygiene = hygiene
    elif what == "replace":
        real_replace = os.replace

        def replace(src: Any, dst: Any, **kw: Any) -> None:
            if Path(dst).name == arg:
                _die()  # the temp file is written and synced; the rename never happens
            real_replace(src, dst, **kw)

        os.replace = replace
    elif what == "torn":
        from treesynth.io import JsonlAppender

        name, _, nth = arg.partition(":")
        real_append_lines = JsonlAppender.append_lines
        count = Counter()

        def append_lines(self: JsonlAppender, lines: list[bytes]) -> None:
            # every append (one row, or a group commit of several) goes through here
            if self.path.name == name and count[name] < int(nth) <= count[name] + len(lines):
                k = int(nth) - count[name] - 1  # the torn one's place in this write
                os.write(self._fd, b"".join(lines[:k]) + lines[k][: len(lines[k]) // 2])
                os.fsync(self._fd)
                _die()
            if self.path.name == name:
                count[name] += len(lines)
            real_append_lines(self, lines)

        JsonlAppender.append_lines = append_lines
    else:
        raise SystemExit(f"unknown hook {hook!r}")


def child(spec: dict) -> None:
    logging.basicConfig(level=logging.WARNING)
    install_hook(spec["hook"])
    overrides = spec["overrides"]
    root = Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("paths.artifacts="))).parent
    stage = run_in_process(overrides, root / "run")
    print(json.dumps({"stage": str(stage)}), flush=True)


def print_kill_table(rows: list[dict]) -> None:
    ok = sum(kill_ok(r) for r in rows)
    print(f"\nSIGKILL loop: {ok} of {len(rows)} complete and identical")
    print(f"{'phase':<11}{'moment':<28}{'killed':>7}{'rerun':>6}{'records':>12}{'identical':>10}{'dups':>6}"
          f"{'kept':>6}{'rerun calls':>18}")
    for r in rows:
        print(f"{r['phase']:<11}{r['moment']:<28}{str(r['killed']):>7}{r['rerun_rc']:>6}"
              f"{r['records']:>6} / {r['expected']:<4}{str(r['identical']):>10}{r['duplicates']:>6}"
              f"{r['failures_kept']:>6}{r['rerun_calls']:>8} of {r['reference_calls']:<6}")


