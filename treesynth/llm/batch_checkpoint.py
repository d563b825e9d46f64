"""Which batch holds which request, kept across runs (treesynth/llm/batch.py's resume state).

`<state_dir>/batches.jsonl` records each batch when created (id, input file, digest and list of its
request keys) and when finished (status); the successful answers of a finished batch are kept in
`<batch id>.results.jsonl`. On load, the latest batch holding a key decides where its answer comes from:
a recorded unfinished batch (`open`: poll it, never re-submit) or a finished one (`kept_answer`: its
results file, read on first need). So a rerun after a kill pays for no line twice. (The one gap: a kill
between the server creating a batch and the record's fsync.) Without a state_dir nothing is written and
`open` only tracks this process's batches."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from treesynth.io import JsonlAppender, atomic_write_text, iter_jsonl
from treesynth.llm.base import Completion

CHECKPOINT = "batches.jsonl"


def keys_digest(keys: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:32]


class BatchCheckpoint:
    def __init__(self, state_dir: str | Path | None):
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.open: dict[str, str] = {}  # key -> unfinished batch holding it
        self._answered_by: dict[str, str] = {}  # key -> recorded finished batch holding it (not yet read)
        self._read: set[str] = set()  # finished batches whose results file this process has read
        self._answers: dict[str, Completion] = {}  # kept answers not yet served in this process
        self._log: JsonlAppender | None = None
        self._load()

    @property
    def path(self) -> Path | None:
        return self.state_dir / CHECKPOINT if self.state_dir is not None else None

    def _load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        latest: dict[str, str] = {}
        finished: set[str] = set()
        for row in iter_jsonl(self.path):
            if row.get("event") == "created":
                for k in row["keys"]:
                    latest[k] = row["batch_id"]
            elif row.get("event") == "finished":
                finished.add(row["batch_id"])
        self.open = {k: b for k, b in latest.items() if b not in finished}
        self._answered_by = {k: b for k, b in latest.items() if b in finished}

    def kept_answer(self, key: str) -> Completion | None:
        """A finished batch's answer to `key` not yet served by this process (results read on first need:
        most keys of old batches are in the request cache and never reach the backend). Served once: a
        second ask of the key goes to a new batch."""
        bid = self._answered_by.pop(key, None)
        if bid is not None and bid not in self._read and self.state_dir is not None:
            self._read.add(bid)
            for row in iter_jsonl(self.state_dir / f"{bid}.results.jsonl"):
                if self._answered_by.get(row["key"]) == bid or row["key"] == key:
                    self._answers[row["key"]] = Completion(**row["completion"])
        return self._answers.pop(key, None)

    def keep(self, key: str, completion: Completion) -> None:
        """An answer nobody in this process waits for (a rerun's, or a cancelled caller's)."""
        self._answers[key] = completion

    def created(self, batch_id: str, input_file_id: str, keys: list[str]) -> None:
        self._record({"event": "created", "batch_id": batch_id, "input_file_id": input_file_id,
                      "keys_digest": keys_digest(keys), "keys": keys, "at": time.time()})
        for k in keys:
            self.open[k] = batch_id

    def keys_of(self, batch_id: str) -> list[str]:
        return [k for k, b in self.open.items() if b == batch_id]

    def finished(self, batch_id: str, status: str, answers: dict[str, Completion]) -> None:
        """Keep the answers, record the batch as done: its keys are no longer open."""
        if self.state_dir is not None:
            rows = [{"key": k, "completion": _completion_row(c)} for k, c in answers.items()]
            atomic_write_text(self.state_dir / f"{batch_id}.results.jsonl",
                              "".join(json.dumps(r) + "\n" for r in rows))
            self._record({"event": "finished", "batch_id": batch_id, "status": status, "answered": len(answers),
                          "at": time.time()})
        for k in self.keys_of(batch_id):
            del self.open[k]

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _record(self, row: dict) -> None:
        if self.path is None:
            return
        if self._log is None:
            self._log = JsonlAppender(self.path)
        self._log.append(row)


def _completion_row(c: Completion) -> dict:
    return {"text": c.text, "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens, "error": c.error}
