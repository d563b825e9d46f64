"""Fail fast: what run.py checks about its input before any model loads or any request is sent.

`preflight(cfg)` raises one TreesynthError (one line; run.py exits 2) for settings missing, of the wrong
type or out of range (treesynth/settings/), a data.dir that is not a folder, a file the method reads (its
`input_files`: method.file, seed_file, persona_file, source, tree) that is missing, empty or not valid
JSON / JSONL (file and line named), and an artifacts root that cannot be written. It imports nothing
heavy, so a mistake costs about a second, not a model load or the hub client's minute of retries.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path
from typing import IO

from omegaconf import DictConfig, OmegaConf

from treesynth.datasets import benchmark_sources, data_dir, human_source, local_path
from treesynth.errors import TreesynthError
from treesynth.io import write_failed
from treesynth.profiles import profile_for
from treesynth.settings import check_settings
from treesynth.tasks import task_of


def preflight(cfg: DictConfig) -> None:
    profile_for(cfg)  # first: the method configs' ${profile:...} defaults resolve through it
    problems = check_settings(cfg)
    if problems:
        raise TreesynthError("; ".join(problems))
    task_of(cfg)  # the task YAML under the generator's and teacher's profiles
    if (root := data_dir(cfg.data.dir)) is not None:
        for path in task_data_files(cfg, root):
            check_input_file(path, f"{path} (under data.dir)")
    from treesynth.methods import method_class  # the registry: one import of the method's module, no model

    for key in method_class(str(cfg.method.name)).input_files:
        if value := cfg.method.get(key):
            check_input_file(Path(str(value)), f"method.{key}={value}")
    check_writable(Path(str(cfg.paths.artifacts)), "paths.artifacts")


def task_data_files(cfg: DictConfig, root: Path) -> list[Path]:
    """The files under data.dir this task reads: its training set and its benchmarks' test sets."""
    human = OmegaConf.select(cfg, "task.human", default=None)
    sources = [human_source(str(cfg.task.name), human)] if human and human.get("file") else []
    sources += [s for b in OmegaConf.select(cfg, "task.benchmarks", default=None) or [] for s in benchmark_sources(b)]
    paths = (local_path(s, root) for s in sources)
    return sorted({p for p in paths if p is not None and p.is_relative_to(root)})


def check_input_file(path: Path, name: str) -> None:
    """A file the run reads exists and holds something; `.jsonl` is one JSON object per line and `.json`
    one JSON document (also gzipped). Other files (a persona per line) are read as text. `name` is how
    errors call it (`method.file=rows.jsonl`)."""
    if not path.is_file():
        raise TreesynthError(f"{name} does not exist" if not path.exists() else f"{name} is not a file")
    kind = path.suffixes[-2] if path.suffix == ".gz" and len(path.suffixes) > 1 else path.suffix
    count_rows = {".jsonl": _jsonl_rows, ".json": _json_rows}.get(kind, _text_rows)
    try:
        with _open(path) as f:
            rows = count_rows(f, name)
    except (OSError, EOFError) as e:
        raise TreesynthError(f"{name} cannot be read ({e})") from None
    if not rows:
        raise TreesynthError(f"{name} is empty")


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def _text(raw: bytes, name: str, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TreesynthError(f"{name} line {lineno}: not UTF-8 text (byte {e.start + 1})") from None


def _jsonl_rows(f: IO[bytes], name: str) -> int:
    rows = 0
    for lineno, raw in enumerate(f, 1):
        line = _text(raw, name, lineno).strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TreesynthError(f"{name} line {lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(row, dict):
            raise TreesynthError(f"{name} line {lineno}: a JSON object per line expected, got {type(row).__name__}")
        rows += 1
    return rows


def _text_rows(f: IO[bytes], name: str) -> int:
    return sum(1 for raw in f if raw.strip())


def _json_rows(f: IO[bytes], name: str) -> int:
    text = _text(f.read(), name, 1)
    try:
        doc = json.loads(text) if text.strip() else None
    except json.JSONDecodeError as e:
        raise TreesynthError(f"{name} line {e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
    return len(doc) if isinstance(doc, (list, dict)) else int(doc is not None)


def check_writable(root: Path, setting: str) -> None:
    """Create `root` and write (and remove) one byte there: a read-only or full filesystem fails here,
    naming the setting, instead of after a model has loaded."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=root, prefix=".writable.", suffix=".tmp")
        try:
            os.write(fd, b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise TreesynthError(f"{setting}: {write_failed(root, e)} (point it at a writable folder)") from None
