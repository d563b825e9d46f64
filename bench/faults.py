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
import hashlib
import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a checkout without install

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from treesynth.io import read_jsonl  # noqa: E402
from treesynth.testing.scripted import WORDS, instance  # noqa: E402
from treesynth.testing.stub_server import FAULT_KINDS, StubServer  # noqa: E402

# Where each fault kind shows in the stage metrics' `llm` block.
FAULT_METRIC = {"429": "http_429", "500": "http_5xx", "hang": "timeouts", "malformed": "invalid_json",
                "schema_invalid": "invalid_json", "truncated": "truncated"}
# TreeSynth small enough for many runs: depth 2, 3 pivots (see tests/test_synthesize_openai.py).
TREE = ["method=treesynth", "method.max_depth=2", "method.pivots=3"]
PHASES = ("tree", "leaves", "responses", "hygiene", "writing")
# How entries of a checkpoint log are identified (two rows for one identity = duplicated work).
CHECKPOINT_IDS: dict[str, Callable[[dict], Any]] = {
    "responses.jsonl": lambda r: r["id"],
    "calls.jsonl": lambda r: r["call"],
    "leaf_calls.jsonl": lambda r: (r["leaf"], r["call"]),
    "tree_events.jsonl": lambda r: r["node"]["id"],
}


# ---- the deterministic backend ---------------------------------------------------------------
def fault_free_answer(body: dict) -> str:
    """The stub's answer to a chat request, a function of (messages, seed) only: a schema-valid instance
    for JSON-schema requests (bounded strings as the stub's default; unbounded ones get a sentence of
    8-16 words, so unbounded samples stay distinct), else a short solution ending in "#### <n>"."""
    digest = hashlib.sha256(json.dumps([body.get("messages"), body.get("seed")], sort_keys=True).encode()).digest()
    rng = random.Random(digest)
    fmt = body.get("response_format") or {}
    schema = (fmt.get("json_schema") or {}).get("schema") if fmt.get("type") == "json_schema" else fmt.get("schema")
    if fmt and schema is not None:
        return json.dumps(_instance(schema, rng))
    n = rng.randint(1, 999)
    return f"Adding the {rng.choice(WORDS)} counts step by step gives {n}.\n#### {n}"


def _instance(schema: dict, rng: random.Random) -> Any:
    kind = schema.get("type")
    if "enum" in schema or kind not in ("object", "array", "string"):
        return instance(schema, rng)
    if kind == "object":
        return {k: _instance(v, rng) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        lo = int(schema.get("minItems", 1))
        hi = max(lo, min(int(schema.get("maxItems", lo + 2)), lo + 2))
        return [_instance(schema.get("items") or {"type": "string"}, rng) for _ in range(rng.randint(lo, hi))]
    if any(k in schema for k in ("pattern", "maxLength", "format")):
        return instance(schema, rng)
    words = [rng.choice(WORDS) for _ in range(rng.randint(8, 16))]
    return " ".join(words).capitalize() + f" {rng.randint(2, 99)}?"


# ---- runs ------------------------------------------------------------------------------------
def synthesis_overrides(base_url: str, size: int, root: Path, method: list[str], extra: list[str]) -> list[str]:
    """`run.py` overrides of one synthesis-only run over the stub, writing only under `root`."""
    return [
        # constrained: every request is a JSON-schema request with one sample, the setting the figures were
        # first measured in (the fault handling is the same for the open profile's free-text teacher)
        "stages=[synthesize]", "task=gsm8k", *method, "llm=openai", "llm.profile=constrained",
        "llm.model=stub-model", "llm.api_key_env=null", f"llm.runtime.base_urls=[{base_url}]",
        "llm.runtime.backoff_base_s=0.05", "llm.runtime.backoff_max_s=0.5",
        f"data.size={size}", f"paths.artifacts={root / 'artifacts'}", f"paths.results={root / 'results'}",
        "data.hygiene.decontaminate=false", "wandb.mode=disabled", "seed=0",  # no benchmark data needed
        *extra,
    ]


def compose_cfg(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return compose("config", overrides=overrides)


def run_in_process(overrides: list[str], run_dir: Path) -> Path:
    """Run the synthesize stage here; return its stage dir."""
    from treesynth.pipeline import run_pipeline, stage_dir

    cfg = compose_cfg(overrides)
    run_pipeline(cfg, run_dir)
    return stage_dir(cfg, "synthesize")


@dataclass
class RunState:
    """What a finished synthesis left on disk."""

    rows: list[dict]  # data.jsonl
    checkpoints: dict[str, list[dict]]  # checkpoint log name -> rows
    cache: dict[str, str]  # request cache: key -> stored completion (JSON text)
    metrics: dict  # stage.json metrics

    @classmethod
    def read(cls, stage: Path) -> RunState:
        cache_db = stage.parents[1] / ".cache" / "llm" / "requests.sqlite"  # synthesize.request_cache_dir
        db = sqlite3.connect(f"file:{cache_db}?mode=ro", uri=True)
        try:
            cache = dict(db.execute("SELECT key, value FROM completions").fetchall())
        finally:
            db.close()
        logs = {p.name: read_jsonl(p) for p in sorted(stage.glob("*.jsonl")) if p.name != "data.jsonl"}
        metrics = json.loads((stage / "stage.json").read_text())["metrics"]
        return cls(read_jsonl(stage / "data.jsonl"), logs, cache, metrics)

    def duplicates(self) -> int:
        n = _repeats([r["id"] for r in self.rows]) + _repeats([r["prompt"] for r in self.rows])
        for name, rows in self.checkpoints.items():
            ident = CHECKPOINT_IDS.get(name, lambda r: json.dumps(r, sort_keys=True))
            n += _repeats([json.dumps(ident(r)) for r in rows])
        return n

    def failures_kept(self, ref: RunState) -> int:
        """Cache entries and checkpoint rows that the fault-free run does not have."""
        n = sum(1 for k, v in self.cache.items() if ref.cache.get(k) != v)
        for name, rows in self.checkpoints.items():
            extra = Counter(_canon(r) for r in rows) - Counter(_canon(r) for r in ref.checkpoints.get(name, []))
            n += sum(extra.values())
        return n


def _repeats(items: list) -> int:
    return len(items) - len(set(items))


def _canon(row: dict) -> str:
    return json.dumps(row, sort_keys=True)


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
    args = [sys.executable, str(Path(__file__).resolve()), "child", json.dumps({"overrides": overrides, "hook": hook})]
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
        import treesynth.synthesize as synth

        real = synth.apply_hygiene

        async def hygiene(*args: Any) -> Any:
            if arg == "enter":
                _die()
            out = await real(*args)
            _die()
            return out

        synth.apply_hygiene = hygiene
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


def print_kill_table(rows: list[dict]) -> None:
    ok = sum(kill_ok(r) for r in rows)
    print(f"\nSIGKILL loop: {ok} of {len(rows)} complete and identical")
    print(f"{'phase':<11}{'moment':<28}{'killed':>7}{'rerun':>6}{'records':>12}{'identical':>10}{'dups':>6}"
          f"{'kept':>6}{'rerun calls':>18}")
    for r in rows:
        print(f"{r['phase']:<11}{r['moment']:<28}{str(r['killed']):>7}{r['rerun_rc']:>6}"
              f"{r['records']:>6} / {r['expected']:<4}{str(r['identical']):>10}{r['duplicates']:>6}"
              f"{r['failures_kept']:>6}{r['rerun_calls']:>8} of {r['reference_calls']:<6}")


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
