"""Data hygiene for every method's output (the hook treesynth/synthesize.py calls):
exact and near-duplicate removal (MinHash LSH) and decontamination against the evaluation benchmarks'
test sets (word n-gram overlap, default 13-gram): every benchmark the registry resolves
(treesynth/benchmarks.py: built-ins, user benchmark files, lm-eval tasks by name), on the fields its
entry names (`text_fields`).

`filter_records(records, cfg)` keeps records in stream order (a duplicate loses to its first
occurrence), so when the stage refills, the records kept earlier stay kept. Config: `data.hygiene`.

The benchmark n-gram index is built once per process and cached on disk under
`<paths.artifacts>/.cache/decontam/` keyed by its sources (file path, size, mtime or hub id) and n.
A benchmark whose test set cannot be loaded is recorded in the counts (`decontam_unavailable`) and
skipped, never a failure: offline runs of tasks without local test sets still work.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from treesynth.datasets import DataUnavailable, benchmark_sources, load_source, source_fingerprint
from treesynth.errors import TreesynthError
from treesynth.io import atomic_write_bytes
from treesynth.metrics.diversity import shingles

log = logging.getLogger("treesynth")

DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "dedup": True,
    "near_dup_threshold": 0.85,
    "decontaminate": True,
    "ngram": 13,
    "fields": ["prompt"],  # record fields compared with the benchmark questions
}
_WORD = re.compile(r"\w+")
_INDEX: dict[str, set[int]] = {}  # per-process cache: index key -> n-gram hashes
_UNAVAILABLE: dict[str, str] = {}  # per-process: index key -> why (no hub retry on every refill round)


def settings(cfg: DictConfig) -> dict[str, Any]:
    raw = OmegaConf.select(cfg, "data.hygiene", default=None)
    h = {**DEFAULTS, **(OmegaConf.to_container(raw, resolve=True) if raw is not None else {})}
    if not 0.0 < float(h["near_dup_threshold"]) <= 1.0:
        raise TreesynthError(f"data.hygiene.near_dup_threshold must be in (0, 1], got {h['near_dup_threshold']}")
    if int(h["ngram"]) < 1:
        raise TreesynthError(f"data.hygiene.ngram must be >= 1, got {h['ngram']}")
    return h


def filter_records(records: list[dict], cfg: DictConfig) -> tuple[list[dict], dict[str, Any]]:
    h = settings(cfg)
    counts: dict[str, Any] = {"hygiene_input": len(records)}
    if not h["enabled"]:
        return records, {**counts, "hygiene_enabled": 0}
    kept = records
    if h["dedup"]:
        kept, exact, near = dedup(kept, float(h["near_dup_threshold"]))
        counts.update(exact_duplicates=exact, near_duplicates=near)
    if h["decontaminate"]:
        benchmarks = list(OmegaConf.select(cfg, "task.benchmarks", default=None) or [])
        index, loaded, unavailable = benchmark_index(benchmarks, int(h["ngram"]), data_dir_of(cfg), cache_dir_of(cfg))
        before = len(kept)
        kept = [r for r in kept if not contaminated(record_text(r, h["fields"]), index, int(h["ngram"]))]
        counts.update(contaminated=before - len(kept), decontam_benchmarks=loaded, decontam_unavailable=unavailable,
                      decontam_ngrams=len(index))
    counts["hygiene_kept"] = len(kept)
    return kept, counts


def record_text(record: dict, fields: list[str]) -> str:
    return "\n".join(str(record.get(f, "")) for f in fields)


def data_dir_of(cfg: DictConfig) -> str | None:
    return OmegaConf.select(cfg, "data.dir", default=None)


def cache_dir_of(cfg: DictConfig) -> Path | None:
    root = OmegaConf.select(cfg, "paths.artifacts", default=None)
    return Path(root) / ".cache" / "decontam" if root else None


# ---------------------------------------------------------------- deduplication


def normalize(text: str) -> str:
    return " ".join(text.lower().split())


def dedup(records: list[dict], threshold: float, field: str = "prompt", num_perm: int = 128) -> tuple[list[dict], int, int]:
    """(kept, exact duplicates, near duplicates): first occurrence wins; near = MinHash Jaccard of
    char 5-gram shingles (the same shingles the diversity metric uses) >= threshold."""
    from datasketch import MinHash, MinHashLSH

    seen: set[str] = set()
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    kept_hashes: dict[int, MinHash] = {}
    kept, exact, near = [], 0, 0
    for i, r in enumerate(records):
        text = normalize(str(r.get(field, "")))
        if text in seen:
            exact += 1
            continue
        m = MinHash(num_perm=num_perm, seed=1)
        m.update_batch(list(shingles(text)))
        if any(m.jaccard(kept_hashes[j]) >= threshold for j in lsh.query(m)):  # LSH gives candidates; confirm
            near += 1
            continue
        seen.add(text)
        lsh.insert(i, m)
        kept_hashes[i] = m
        kept.append(r)
    return kept, exact, near


# ---------------------------------------------------------------- decontamination


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _hash(gram: tuple[str, ...]) -> int:
    return int.from_bytes(hashlib.blake2b(" ".join(gram).encode(), digest_size=8).digest(), "big") >> 1


def ngram_hashes(text: str, n: int) -> set[int]:
    """Hashes of the text's word n-grams; a text shorter than n words contributes itself whole."""
    w = words(text)
    if not w:
        return set()
    if len(w) < n:
        return {_hash(tuple(w))}
    return {_hash(tuple(w[i : i + n])) for i in range(len(w) - n + 1)}


def contaminated(text: str, index: set[int], n: int) -> bool:
    return bool(index) and not ngram_hashes(text, n).isdisjoint(index)


def benchmark_texts(row: dict, fields: tuple[str, ...]) -> list[str]:
    """The texts of a test row that decontamination compares: the registry's `text_fields`, or (an lm-eval
    task whose prompt is not a plain template) every string field of the row."""
    if fields:
        return [str(row.get(f, "")) for f in fields]
    return [v for v in row.values() if isinstance(v, str)]


def benchmark_index(
    benchmarks: list[str], n: int, data_dir: str | None, cache_dir: Path | None
) -> tuple[set[int], list[str], list[str]]:
    """(n-gram hashes of every loadable benchmark test set, benchmarks loaded, benchmarks unavailable)."""
    index: set[int] = set()
    loaded, unavailable = [], []
    for b in benchmarks:
        try:
            index |= _source_index(b, n, data_dir, cache_dir)
            loaded.append(b)
        except DataUnavailable as e:
            log.warning("[hygiene] decontamination skips %s: %s", b, e)
            unavailable.append(b)
    return index, loaded, unavailable


def _source_index(benchmark: str, n: int, data_dir: str | None, cache_dir: Path | None) -> set[int]:
    sources = benchmark_sources(benchmark)
    key_src = json.dumps([n, [source_fingerprint(s, data_dir) for s in sources]])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    if key in _INDEX:
        return _INDEX[key]
    if key in _UNAVAILABLE:
        raise DataUnavailable(_UNAVAILABLE[key])
    path = cache_dir / f"{benchmark}-{n}gram-{key}.npy" if cache_dir else None
    if path is not None and path.exists():
        index = set(np.load(path).tolist())
    else:
        index = set()
        for src in sources:
            try:
                rows = load_source(src, data_dir)
            except DataUnavailable as e:
                _UNAVAILABLE[key] = str(e)
                raise
            for row in rows:
                for text in benchmark_texts(row, src.text_fields):
                    index |= ngram_hashes(text, n)
        if path is not None:
            buf = io.BytesIO()
            np.save(buf, np.array(sorted(index), dtype=np.int64))
            atomic_write_bytes(path, buf.getvalue())
    _INDEX[key] = index
    return index
