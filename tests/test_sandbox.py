"""The code-execution sandbox: model-written code runs behind bubblewrap namespaces (default) and cannot
touch the host; hostile code is contained and scored as failed; benchmark reference solutions still pass.

The escapes are the ones that got through the former guard-only sandbox. Each program exits 0 only when
its escape worked, and each is also run in `guard_only` mode, where it must reach the host: proof that the
program is a real escape, so its failing under bwrap means the boundary held."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import compose_config

from evaluation import sandbox
from evaluation.sandbox import run_program
from evaluation.tasks import utils
from treesynth.errors import TreesynthError

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TREESYNTH_DATA_DIR", REPO.parent / "shared" / "data"))
HUMANEVAL = DATA / "humaneval" / "HumanEval.jsonl"
MODES = ("bwrap", "guard_only")


def test_correct_solution_passes_and_wrong_one_fails():
    ok = run_program("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\n")
    bad = run_program("def add(a, b):\n    return a * b\nassert add(2, 3) == 5\n")
    assert ok.passed and ok.status == "passed"
    assert not bad.passed and bad.status == "failed" and "AssertionError" in bad.output


def test_infinite_loop_is_stopped_by_the_wall_clock():
    t0 = time.time()
    res = run_program("while True:\n    pass\n", timeout_s=1.5)
    assert res.status == "timeout" and not res.passed
    assert time.time() - t0 < 6


def test_sleeping_program_is_killed_with_its_children():
    # Sleep uses no CPU, so only the wall-clock timeout stops it.
    res = run_program("import time\ntime.sleep(60)\n", timeout_s=1.0)
    assert res.status == "timeout"


def test_allocating_8gb_is_contained():
    res = run_program("x = bytearray(8 * 1024 ** 3)\nprint(len(x))\n", memory_mb=512)
    assert not res.passed and "MemoryError" in res.output


def test_the_guard_still_blocks_the_usual_calls(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    res = run_program(f"import os\nos.remove({str(victim)!r})\n", mode="guard_only")
    assert not res.passed and "sandbox: os.remove is disabled" in res.output
    assert victim.read_text() == "keep me"


@pytest.mark.parametrize("mode", MODES)
def test_writes_land_in_a_throwaway_workspace(mode):
    name = f"ts-out-{uuid.uuid4().hex}.txt"
    res = run_program(f"import os\nopen({name!r}, 'w').write('x')\nprint(os.getcwd())\n", mode=mode)
    assert res.passed, res.output
    cwd = res.output.strip()
    if mode == "bwrap":  # a tmpfs of its own: nothing reached the host's temp directory
        assert cwd == sandbox.INSIDE_DIR and not list(Path(tempfile.gettempdir()).rglob(name))
    else:
        assert "ts-sandbox-" in cwd and not Path(cwd).exists()  # removed after the run


def test_bwrap_workspace_is_capped_and_the_rest_is_read_only():
    res = run_program(
        "import sys\n"
        "for p in ['/x', '/usr/x', '/dev/x', sys.prefix + '/x']:\n"
        "    try:\n"
        "        open(p, 'w')\n"
        "        print('WROTE', p)\n"
        "    except OSError:\n"
        "        pass\n"
        "with open('big', 'wb') as f:\n"
        f"    for _ in range({sandbox.WORKSPACE_MB + 16}):\n"
        "        f.write(b'x' * 1024 * 1024)\n")
    assert not res.passed and "WROTE" not in res.output
    assert "No space left on device" in res.output or "File too large" in res.output, res.output


# ---------------------------------------------------------------- the escapes of issue #12


@pytest.fixture
def listeners():
    """A TCP listener on the host's 127.0.0.1 and a Unix socket in a host directory."""
    tcp, unix = socket.socket(), socket.socket(socket.AF_UNIX)
    tcp.bind(("127.0.0.1", 0))
    short = Path(tempfile.mkdtemp(prefix="ts-sock-"))  # a Unix socket path has at most 107 bytes
    unix.bind(str(short / "s.sock"))
    for s in (tcp, unix):
        s.listen(4)
    yield tcp, unix
    tcp.close()
    unix.close()
    (short / "s.sock").unlink()
    short.rmdir()


def _connected(server: socket.socket) -> bool:
    """A connection that reached the listener sits in its backlog even when nobody accepted it."""
    server.settimeout(0.2)
    try:
        server.accept()[0].close()
        return True
    except OSError:
        return False


def _escapes(tmp: Path, tcp: socket.socket, unix: socket.socket) -> dict[str, tuple[str, Callable[[], bool]]]:
    """name -> (program that exits 0 only when it reached the host, did it reach the host?)"""
    target, victim = tmp / "written", tmp / "victim"
    victim.write_text("keep me")
    port, path = tcp.getsockname()[1], unix.getsockname()
    return {
        "posix.system": (f"import posix\nassert posix.system('touch {target}') == 0\n", target.exists),
        "open host path": (f"open({str(target)!r}, 'w').write('x')\n", target.exists),
        "posix.unlink": (f"import posix\nposix.unlink({str(victim)!r})\n", lambda: not victim.exists()),
        "reload os": ("import importlib, os\nos = importlib.reload(os)\n"
                      f"assert os.system('touch {target}') == 0\n", target.exists),
        "_socket tcp": (f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))\n",
                        lambda: _connected(tcp)),
        "_socket unix": (f"import _socket\ns = _socket.socket(_socket.AF_UNIX)\ns.connect({path!r})\n",
                         lambda: _connected(unix)),
    }


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["posix.system", "open host path", "posix.unlink", "reload os", "_socket tcp",
                                  "_socket unix"])
def test_escape_is_contained_by_bwrap_and_not_by_the_guard(name, mode, tmp_path, listeners):
    program, reached = _escapes(tmp_path, *listeners)[name]
    res = run_program(program, mode=mode)
    if mode == "bwrap":
        assert not res.passed and res.status == "failed"
        assert not reached() and (tmp_path / "victim").read_text() == "keep me"
    else:
        assert reached(), f"the test program is no escape: {res.output}"


def test_writing_into_the_python_installation_fails():
    target = Path(sys.prefix) / f"ts-escape-{uuid.uuid4().hex}"
    try:
        res = run_program(f"open({str(target)!r}, 'w').write('x')\n")
        assert not res.passed and "Read-only file system" in res.output
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)


def _processes_with(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("hang", [False, True], ids=["exits", "times_out"])
def test_a_daemonized_child_does_not_outlive_the_program(mode, hang):
    # fork + setsid leaves the program's process group: the former sandbox's group kill missed it.
    marker = f"ts-daemon-{uuid.uuid4().hex}"
    program = (
        "import posix, sys, time\n"
        "if posix.fork() == 0:\n"
        "    posix.setsid()\n"
        "    null = posix.open('/dev/null', posix.O_RDWR)\n"  # off the program's output pipe
        "    posix.dup2(null, 1)\n"
        "    posix.dup2(null, 2)\n"
        f"    posix.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(30)', {marker!r}])\n"
        "time.sleep(0.5)\n"
        + ("time.sleep(60)\n" if hang else ""))
    res = run_program(program, timeout_s=2.0, mode=mode)
    alive = _processes_with(marker)
    for pid in alive:  # the guard_only control leaves it running: clean up
        os.kill(pid, signal.SIGKILL)
    assert res.status == ("timeout" if hang else "passed")
    if mode == "bwrap":
        assert alive == []
    else:
        assert alive, "the test program did not daemonize"


def test_harness_environment_is_not_inherited(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-should-not-leak")
    res = run_program("import os\nprint(os.environ.get('OPENAI_API_KEY'))\n")
    assert res.output.strip() == "None"
    assert os.environ["OPENAI_API_KEY"] == "sk-should-not-leak"


def test_host_files_are_invisible_under_bwrap(tmp_path):
    secret = tmp_path / "token"
    secret.write_text("hf_secret")
    res = run_program(f"print(open({str(secret)!r}).read())\n")
    assert not res.passed and "hf_secret" not in res.output and "FileNotFoundError" in res.output


# ---------------------------------------------------------------- settings and a missing bwrap


def test_bad_limits_and_modes_are_user_errors():
    with pytest.raises(TreesynthError):
        run_program("pass", timeout_s=0)
    with pytest.raises(TreesynthError, match="eval.sandbox='docker'"):
        run_program("pass", mode="docker")


def test_missing_bwrap_refuses_with_one_line_unless_guard_only(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on PATH
    with pytest.raises(TreesynthError) as e:
        run_program("pass")
    msg = str(e.value)
    assert "\n" not in msg and "apt-get install bubblewrap" in msg and "eval.sandbox=guard_only" in msg
    assert run_program("pass", mode="guard_only").passed


def test_bwrap_that_cannot_create_namespaces_is_explained(tmp_path, monkeypatch):
    fake = tmp_path / "bwrap"  # what bwrap prints where unprivileged user namespaces are off
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TreesynthError, match="No permissions to creating new namespace.*user namespaces"):
        run_program("pass")


def test_code_evaluation_refuses_before_the_model_loads(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from evaluation.harness import run_eval

    monkeypatch.setenv("PATH", str(tmp_path))
    cfg = OmegaConf.load(REPO / "conf" / "eval" / "default.yaml")
    with pytest.raises(TreesynthError, match="bubblewrap"):  # a model that does not exist is never opened
        run_eval(cfg, ["mbpp"], str(tmp_path / "no-model"), None, None, tmp_path / "out")


# ---------------------------------------------------------------- the callers go through the boundary


def test_lm_eval_scoring_runs_code_in_bwrap(tmp_path, monkeypatch):
    # process_results_mbpp is what lm-eval calls for each MBPP response (evaluation/tasks/*.yaml).
    monkeypatch.delenv("TREESYNTH_CODE_SANDBOX", raising=False)
    target = tmp_path / "written"
    doc = {"test_list": ["assert f(2) == 4"], "test_setup_code": ""}
    hostile = f"```python\nopen({str(target)!r}, 'w').write('x')\ndef f(x):\n    return 2 * x\n```"
    assert utils.process_results_mbpp(doc, [hostile]) == {"pass_at_1": 0}
    assert not target.exists()
    monkeypatch.setenv("TREESYNTH_CODE_SANDBOX", "guard_only")  # what the harness sets for eval.sandbox=guard_only
    assert utils.process_results_mbpp(doc, [hostile]) == {"pass_at_1": 1} and target.exists()


def test_verify_runs_executed_tests_in_bwrap(tmp_path):
    from treesynth.llm import LLM
    from treesynth.methods.verify import Verifier
    from treesynth.tasks import task_of
    from treesynth.testing.scripted import ScriptedBackend

    target = tmp_path / "written"
    code = f"open({str(target)!r}, 'w').write('x')\ndef add(a, b):\n    return a + b\nassert add(2, 3) == 5"
    rec = {"id": "0", "task": "code_alpaca", "method": "t", "prompt": "add", "meta": {},
           "completion": f"```python\n{code}\n```"}
    cfg = compose_config(["task=code_alpaca", "data.verify.enabled=true"], tmp_path)
    kept, counts = asyncio.run(Verifier(LLM(ScriptedBackend()), task_of(cfg), cfg, tmp_path).run([rec]))
    assert kept == [] and counts["verify_fail_reasons"] == {"tests_failed": 1} and not target.exists()


@pytest.mark.skipif(not HUMANEVAL.exists(), reason="no local HumanEval (TREESYNTH_DATA_DIR)")
def test_all_humaneval_canonical_solutions_pass_in_bwrap():
    rows = [json.loads(line) for line in HUMANEVAL.read_text().splitlines() if line.strip()]
    with ThreadPoolExecutor(4) as pool:  # each program is its own subprocess; threads only wait on them
        results = list(pool.map(run_program, [utils.humaneval_program(r, r["canonical_solution"]) for r in rows]))
    failed = [r["task_id"] for r, res in zip(rows, results, strict=True) if not res.passed]
    assert len(rows) == 164 and failed == []


@pytest.mark.skipif(not (DATA / "mbpp" / "mbpp.jsonl").exists(), reason="no local MBPP (TREESYNTH_DATA_DIR)")
def test_eval_json_states_the_sandbox_of_code_benchmarks(tmp_path):
    from test_eval_tasks import ScriptedLM, eval_cfg

    from evaluation.harness import run_eval

    doc = next(r for r in map(json.loads, (DATA / "mbpp" / "mbpp.jsonl").read_text().splitlines()) if r["task_id"] == 11)
    lm = ScriptedLM({doc["text"]: f"```python\n{doc['code']}\n```"})
    for mode in MODES:
        res = run_eval(eval_cfg(limit=1, sandbox=mode), ["mbpp"], "scripted", None, str(DATA), tmp_path / mode, lm=lm)
        b = res["benchmarks"]["mbpp"]
        assert b["settings"]["sandbox"] == mode and b["metrics"]["pass_at_1"] == 1.0


def test_a_venv_under_the_workspace_path_stays_visible(monkeypatch, tmp_path):
    """CI clones into /tmp: the workspace tmpfs at /tmp must not hide a venv there (mounted first, bound after)."""
    from evaluation import sandbox

    monkeypatch.setattr(sandbox, "_python_dirs", lambda: ["/tmp/clone/.venv"])
    argv = sandbox._bwrap_argv("bwrap", tmp_path / "p.py")
    tmpfs = argv.index("--tmpfs")
    assert argv[tmpfs + 1] == sandbox.INSIDE_DIR
    assert argv.index("/tmp/clone/.venv") > tmpfs
