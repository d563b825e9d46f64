"""Fault figures: synthesis over the loopback stub server (treesynth/testing/stub_server.py) with injected
faults, and SIGKILLs at random moments of a run, each compared with a fault-free run of the same seed.

Part 1 (method=temperature task=gsm8k llm=openai, --size records): one fault-free reference run, then
one run per fault kind in which --rate of the requests get that fault (429, 500, a hang past the
client's --timeout, malformed JSON, schema-invalid JSON, an answer cut at max_tokens) on their first
--attempts attempts and are answered normally after that. Printed per kind: records produced / expected,
whether they equal the reference run's, duplicates, failures kept, faults injected by the stub (of the
distinct requests the kind applies to), the same faults as counted in the stage metrics (stage.json
`llm`: http_429, http_5xx, timeouts, invalid_json, truncated), timeouts of answers that were not
hung but slow (the client's event loop busy past the timeout; 0 is expected), the re-sends that
recovered them (retries + answer_retries) and requests that failed for good (errors).

Part 2 (method=treesynth, small tree, --kill-size records, run as a child process): --kills runs, each
SIGKILLed once at a moment drawn at random, stratified over the phases of a run: tree building, leaf
generation and teacher responses (the k-th request to arrive at the stub, k drawn inside the phase's
request range of the reference run), hygiene (on entering or leaving it), file writing (before a
finished file is renamed into place, or mid-way through a checkpoint line). Each is followed by a
rerun; printed: whether the kill landed, the rerun's exit status, records, identical, duplicates,
failures kept, and the LLM calls the rerun made (fewer than the reference: finished work is reused).

Definitions (both parts): identical = data.jsonl equals the reference's row for row; duplicates =
repeated ids or prompts in data.jsonl plus repeated entries (same call / record / node) in the stage's
checkpoint logs; failures kept = what the faults left behind: request-cache entries and checkpoint rows
that the fault-free run does not have (a cached damaged answer, a logged failed call, a record answered
with another seed).

    OMP_NUM_THREADS=1 .venv/bin/python bench/faults.py [--size 2000] [--rate 0.2] [--kills 10]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a checkout without install

from bench.fault_kills import child, kill_loop, kill_ok, print_kill_table  # noqa: E402
from bench.fault_runs import RunState, fault_free_answer, run_in_process, synthesis_overrides  # noqa: E402
from treesynth.testing.stub_server import FAULT_KINDS, StubServer  # noqa: E402

# Where each fault kind shows in the stage metrics' `llm` block.
FAULT_METRIC = {"429": "http_429", "500": "http_5xx", "hang": "timeouts", "malformed": "invalid_json",
                "schema_invalid": "invalid_json", "truncated": "truncated"}


# ---- part 1: fault kinds ---------------------------------------------------------------------
@dataclass(frozen=True)
class FaultSetup:
    size: int  # records per run
    rate: float  # fraction of requests faulted
    attempts: int = 1  # attempts a faulted request fails
    timeout_s: float = 1.0  # the client's request timeout; a hang is answered a second after it
    extra: tuple[str, ...] = ()  # more overrides


def fault_run(kind: str | None, setup: FaultSetup, root: Path) -> tuple[RunState, StubServer, float]:
    """One temperature run against a fresh stub with `kind` faults (None: fault-free)."""
    with StubServer(slots=64, respond=fault_free_answer, fault_kind=kind, fault_rate=setup.rate if kind else 0.0,
                    fault_attempts=setup.attempts, hang_s=setup.timeout_s + 1, retry_after=0.2) as srv:
        extra = [f"llm.runtime.timeout_s={setup.timeout_s:g}", *setup.extra]
        t0 = time.perf_counter()
        stage = run_in_process(synthesis_overrides(srv.base_url, setup.size, root, ["method=temperature"], extra),
                               root / "run")
        wall = time.perf_counter() - t0
    return RunState.read(stage), srv, wall


def fault_row(kind: str, state: RunState, ref: RunState, srv: StubServer, size: int, wall: float) -> dict:
    llm = state.metrics["llm"]
    return {
        "kind": kind,
        "records": len(state.rows),
        "expected": size,
        "identical": state.rows == ref.rows,
        "duplicates": state.duplicates(),
        "failures_kept": state.failures_kept(ref),
        "requests": srv.requests,
        "candidates": srv.fault_candidates,  # distinct requests the kind applies to
        "injected": srv.faults[kind],
        "counted": llm.get(FAULT_METRIC[kind], 0),
        "metric": FAULT_METRIC[kind],
        "slow": 0 if kind == "hang" else llm.get("timeouts", 0),
        "retries": llm.get("retries", 0) + llm["answer_retries"],
        "errors": llm["errors"],
        "json_retries": llm["json_retries"],
        "wall_s": round(wall, 1),
    }


def fault_table(setup: FaultSetup, kinds: list[str], tmp: Path) -> list[dict]:
    ref, _, ref_wall = fault_run(None, setup, tmp / "reference")
    assert len(ref.rows) == setup.size, f"the fault-free run produced {len(ref.rows)} of {setup.size} records"
    print(f"fault-free reference: {len(ref.rows)} records in {ref_wall:.1f}s "
          f"(timeouts: {ref.metrics['llm']['timeouts']})", flush=True)
    rows = []
    for kind in kinds:
        state, srv, wall = fault_run(kind, setup, tmp / kind)
        rows.append(fault_row(kind, state, ref, srv, setup.size, wall))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def fault_ok(r: dict) -> bool:
    return (r["records"] == r["expected"] and r["identical"] and r["duplicates"] == 0 and r["failures_kept"] == 0
            and r["injected"] > 0 and r["counted"] == r["injected"] and r["slow"] == 0 and r["errors"] == 0
            and r["json_retries"] == 0)


# ---- report ----------------------------------------------------------------------------------
def print_fault_table(rows: list[dict], setup: FaultSetup) -> None:
    print(f"\nfaults: {setup.rate:.0%} of requests get the fault on their first {setup.attempts} attempt(s); "
          f"{setup.size} records per run; client timeout {setup.timeout_s:g}s")
    print(f"{'kind':<15}{'records':>12}{'identical':>10}{'dups':>6}{'kept':>6}{'faults injected':>17}"
          f"{'counted (metric)':>26}{'slow':>6}{'re-sent':>9}{'errors':>8}{'wall s':>8}")
    for r in rows:
        print(f"{r['kind']:<15}{r['records']:>6} / {r['expected']:<4}{str(r['identical']):>10}{r['duplicates']:>6}"
              f"{r['failures_kept']:>6}{r['injected']:>7} of {r['candidates']:<6}"
              f"{r['counted']:>8} ({r['metric']}){'':>{max(0, 15 - len(r['metric']))}}{r['slow']:>6}{r['retries']:>9}"
              f"{r['errors']:>8}{r['wall_s']:>8}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["child"]:
        child(json.loads(argv[1]))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=2000, help="records per fault run")
    p.add_argument("--rate", type=float, default=0.2, help="fraction of requests faulted")
    p.add_argument("--attempts", type=int, default=1, help="attempts a faulted request fails")
    p.add_argument("--timeout", type=float, default=2.0,
                   help="client timeout, s (1 s suits small runs; a 2,000-request burst can stall a loaded 2-core VM ~1 s)")
    p.add_argument("--kinds", nargs="+", default=list(FAULT_KINDS), choices=FAULT_KINDS)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--kill-size", type=int, default=120, help="records of each kill-loop run")
    p.add_argument("--seed", type=int, default=0, help="draws the kill moments")
    p.add_argument("--override", nargs="*", default=[], help="more run.py overrides for every run")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("WANDB_MODE", "disabled")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="treesynth-faults-") as tmp:
        setup = FaultSetup(a.size, a.rate, a.attempts, a.timeout, tuple(a.override))
        faults = fault_table(setup, a.kinds, Path(tmp) / "faults") if a.size else []
        kills = kill_loop(a.kills, a.kill_size, a.seed, Path(tmp) / "kills", a.override) if a.kills else []
    if faults:
        print_fault_table(faults, setup)
    if kills:
        print_kill_table(kills)
    print(f"\nwall time {time.perf_counter() - t0:.0f}s")
    if not all(map(fault_ok, faults)) or not all(map(kill_ok, kills)):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
