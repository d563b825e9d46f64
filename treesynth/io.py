"""Atomic file writes, JSONL checkpoint logs and the file lock: nothing already written is ever
half-overwritten, and one process at a time computes what several may ask for.

A write that fails (full disk, read-only or unwritable folder) raises `WriteFailed`, one line naming the
file, and leaves the file as it was: no temp file, no torn content a rerun could take for finished work.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from treesynth.errors import TreesynthError

# mkstemp creates 0600 files; artifacts on a shared cluster filesystem should follow the umask instead.
_UMASK = os.umask(0)
os.umask(_UMASK)


class WriteFailed(TreesynthError):
    """A file could not be written (run.py prints the one line and exits 2)."""


def write_failed(path: str | Path, err: OSError) -> WriteFailed:
    return WriteFailed(f"cannot write {path}: {err.strerror or err}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # a short write (disk filling up) is followed by the call that raises ENOSPC
        view = view[os.write(fd, view):]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same directory and an atomic rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_failed(path, e) from e
    try:
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise write_failed(path, e) from e
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    return list(iter_jsonl(path))


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    """Yield rows; a torn last line (a process killed mid-append) is skipped, not fatal."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def encode_line(row: dict) -> bytes:
    """One JSONL checkpoint line, as `JsonlAppender` writes it."""
    return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")


class JsonlAppender:
    """Append-only checkpoint log. Each row is one line written unbuffered, then fsync'd, so a SIGKILL or a
    full disk leaves at most one torn trailing line, which `iter_jsonl` skips and the next open cuts off."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._repair()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as e:
            raise write_failed(self.path, e) from e

    def _repair(self) -> None:
        # Drop a torn trailing line so the next append starts on a fresh line. Only the tail is read (a log
        # reopened per chunk of a million-record run must not be read whole each time).
        if not self.path.exists():
            return
        with open(self.path, "r+b") as f:
            end = f.seek(0, os.SEEK_END)
            pos = end
            while pos > 0:
                step = min(pos, 1 << 16)
                f.seek(pos - step)
                block = f.read(step)
                if pos == end and block.endswith(b"\n"):
                    return  # the common case: one 64 KiB read
                if (nl := block.rfind(b"\n")) >= 0:
                    f.truncate(pos - step + nl + 1)
                    return
                pos -= step
            if end:
                f.truncate(0)  # one torn line and nothing before it

    def append(self, row: dict) -> None:
        self.append_lines([encode_line(row)])

    def append_lines(self, lines: list[bytes]) -> None:
        """Several encoded rows (`encode_line`) as one write and one fsync: a group commit."""
        try:
            _write_all(self._fd, b"".join(lines))
            os.fsync(self._fd)
        except OSError as e:
            raise write_failed(self.path, e) from e

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Checkpoint:
    """An append-only event log in a work dir: `rows()` replays what a killed run already wrote."""

    def __init__(self, path: Path):
        self.path = path
        self._appender: JsonlAppender | None = None

    def rows(self) -> Iterator[dict]:
        return iter_jsonl(self.path) if self.path.exists() else iter(())

    def append(self, row: dict) -> None:
        if self._appender is None:
            self._appender = JsonlAppender(self.path)
        self._appender.append(row)

    def close(self) -> None:
        if self._appender is not None:
            self._appender.close()
            self._appender = None


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing, left in place) for the block, waiting for it
    when another process holds it: parallel sweep jobs never compute the same artifact twice.
    flock(2) is stdlib and what the `filelock` package itself uses on POSIX; the lock goes with the
    process, so a killed holder never leaves a stale lock behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# errnos that mean the filesystem takes no more writes, whichever library was writing
FULL_OR_READONLY = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
LOW_SPACE_BYTES = 1 << 20


def filesystem_problem(path: str | Path) -> str | None:
    """Why writes under `path` fail, if its filesystem says so: read-only, or (almost) no space left."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:  # a stage dir not created yet: its filesystem
        path = path.parent
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return "Read-only file system"
    if st.f_bavail * st.f_frsize < LOW_SPACE_BYTES:
        return "No space left on device"
    return None


@contextmanager
def reporting_write_failures(where: str | Path) -> Iterator[None]:
    """Turn a full or read-only filesystem under `where` into one WriteFailed line. Writers we do not own
    report it their own way: OSError (named file, else `where`), SQLite's OperationalError, torch's
    RuntimeError; the last two carry no errno, so the filesystem itself is asked."""
    try:
        yield
    except TreesynthError:
        raise
    except Exception as e:
        if isinstance(e, OSError) and e.errno in FULL_OR_READONLY:
            raise write_failed(e.filename or where, e) from e
        if (reason := filesystem_problem(where)) is not None:
            detail = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise WriteFailed(f"cannot write under {where}: {reason} ({detail})") from e
        raise
