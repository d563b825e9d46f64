"""Persistent request cache (SQLite, WAL). Only successful, untruncated completions are stored.

Puts are group-committed: held in memory (and answered from there) and written in one transaction per
FLUSH_ROWS rows or FLUSH_S seconds, and on flush/close; a commit per put cost about a tenth of a
request's CPU. No transaction stays open between flushes, so other connections to the same file (a
teacher's, a parallel run's) never wait on one. A SIGKILL loses at most the unflushed rows: those calls
are asked again on the rerun."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from treesynth.llm.base import Completion


class RequestCache:
    FLUSH_ROWS = 64  # as the checkpoint logs (KeyedLog): a SIGKILL costs at most this many calls again
    FLUSH_S = 0.2

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.commit()
        self._pending: dict[str, str] = {}  # key -> value not yet written
        self._last_flush = time.monotonic()

    def get(self, key: str) -> Completion | None:
        with self._lock:
            value = self._pending.get(key)
            if value is None:
                row = self._db.execute("SELECT value FROM completions WHERE key = ?", (key,)).fetchone()
                value = row[0] if row else None
        if value is None:
            return None
        v = json.loads(value)
        return Completion(
            text=v["text"],
            finish_reason=v["finish_reason"],
            prompt_tokens=v["prompt_tokens"],
            completion_tokens=v["completion_tokens"],
            cached=True,
        )

    def put(self, key: str, c: Completion) -> None:
        if not c.ok:  # failures and truncated responses are never cached
            return
        value = json.dumps(
            {
                "text": c.text,
                "finish_reason": c.finish_reason,
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
            }
        )
        with self._lock:
            self._pending[key] = value
        if len(self._pending) >= self.FLUSH_ROWS or time.monotonic() - self._last_flush >= self.FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Write the pending puts (one transaction)."""
        with self._lock:
            if self._pending:
                self._db.executemany("INSERT OR REPLACE INTO completions (key, value) VALUES (?, ?)",
                                     list(self._pending.items()))
                self._db.commit()
                self._pending.clear()
            self._last_flush = time.monotonic()

    def __len__(self) -> int:
        self.flush()
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._db.close()
