"""Data hygiene for every method's output (the hook treesynth/synthesize.py calls):
exact and near-duplicate removal (MinHash LSH) and decontamination against the evaluation benchmarks'
test sets (word n-gram overlap, default 13-gram): every benchmark the registry resolves
(treesynth/benchmarks.py: built-ins, user benchmark files, lm-eval tasks by name), on the fields its
entry names (`text_fields`).

`Hygiene(cfg)` is the streaming form the stage uses: records go through `check(record)` one at a time in
stream order (a duplicate loses to its first occurrence, so records kept earlier stay kept when the stage
refills), and what it keeps per record is small: an 8-byte digest of the normalized prompt, the MinHash
signature (uint32 x num_perm) in fixed blocks and the LSH band buckets. `check` runs on the prompt
BEFORE the teacher is asked (dedup, and decontamination of the configured fields other than the
completion); `check_completion` applies decontamination to the completion when `fields` names it.
`filter_records(records, cfg)` is the same over a list. Config: `data.hygiene` (conf/config.yaml holds the
values; read through settings.load).

The benchmark n-gram index is built once per process and cached on disk under
`<paths.artifacts>/.cache/decontam/` keyed by its sources (a local file's content digest, or the hub id)
and n.
A benchmark whose test set cannot be loaded is recorded in the counts (`decontam_unavailable`) and
skipped, never a failure: offline runs of tasks without local test sets still work.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from treesynth.datasets import DataUnavailable, benchmark_sources, load_source, source_fingerprint
from treesynth.io import atomic_write_bytes
from treesynth.paths import artifact_cache
from treesynth.settings import Hygiene as HygieneSettings
from treesynth.settings import load

log = logging.getLogger("treesynth")

_WORD = re.compile(r"\w+")
_INDEX: dict[str, set[int]] = {}  # per-process cache: index key -> n-gram hashes
_UNAVAILABLE: dict[str, str] = {}  # per-process: index key -> why (no hub retry on every refill round)


class Hygiene:
    """Streaming dedup + decontamination (see the module docstring); `counts` for the stage metrics."""

    def __init__(self, cfg: DictConfig):
        h = load(cfg.data.hygiene, HygieneSettings, "data.hygiene")
        self.enabled = h.enabled
        self.dedup = NearDupIndex(h.near_dup_threshold) if self.enabled and h.dedup else None
        self.n = h.ngram
        self.prompt_fields = [f for f in h.fields if f != "completion"]
        self.completion_checked = "completion" in h.fields
        self.index: set[int] = set()
        self.counts: dict[str, Any] = {"hygiene_input": 0}
        if not self.enabled:
            self.counts["hygiene_enabled"] = 0
            return
        if self.dedup is not None:
            self.counts.update(exact_duplicates=0, near_duplicates=0)
        self.decontaminate = h.decontaminate
        if self.decontaminate:
            benchmarks = list(OmegaConf.select(cfg, "task.benchmarks", default=None) or [])
            self.index, loaded, unavailable = benchmark_index(benchmarks, self.n, data_dir_of(cfg), cache_dir_of(cfg))
            self.counts.update(contaminated=0, decontam_benchmarks=loaded, decontam_unavailable=unavailable,
                               decontam_ngrams=len(self.index))
        self.counts["hygiene_kept"] = 0

    def check(self, record: dict) -> str | None:
        """Why the record (prompt fields only; no completion yet) is dropped, or None to keep it."""
        self.counts["hygiene_input"] += 1
        if not self.enabled:
            return None
        if self.dedup is not None:
            why = self.dedup.add(str(record.get("prompt", "")))
            if why is not None:
                self.counts[f"{why}_duplicates"] += 1
                return f"{why}_duplicate"
        if self.decontaminate and self.prompt_fields and contaminated(record_text(record, self.prompt_fields),
                                                                      self.index, self.n):
            self.counts["contaminated"] += 1
            return "contaminated"
        self.counts["hygiene_kept"] += 1
        return None

    def check_completion(self, record: dict) -> str | None:
        """After the teacher: decontamination of the completion when data.hygiene.fields names it."""
        if not (self.enabled and self.decontaminate and self.completion_checked):
            return None
        if contaminated(str(record.get("completion", "")), self.index, self.n):
            self.counts["contaminated"] += 1
            self.counts["hygiene_kept"] -= 1
            return "contaminated"
        return None


def filter_records(records: list[dict], cfg: DictConfig) -> tuple[list[dict], dict[str, Any]]:
    h = Hygiene(cfg)
    kept = [r for r in records if h.check(r) is None and h.check_completion(r) is None]
    return kept, h.counts


def record_text(record: dict, fields: list[str]) -> str:
    return "\n".join(str(record.get(f, "")) for f in fields)


def data_dir_of(cfg: DictConfig) -> str | None:
    return cfg.data.dir


def cache_dir_of(cfg: DictConfig) -> Path:
    return artifact_cache(cfg.paths.artifacts, "decontam")


# ---------------------------------------------------------------- deduplication


def normalize(text: str) -> str:
    return " ".join(text.lower().split())


SHINGLE = 5  # characters per shingle (as the diversity metric's `shingles`)
_FNV_PRIME = np.uint64(0x100000001B3)  # mixes one more code point into a shingle's 64-bit value


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer, elementwise: every input bit affects every output bit."""
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


class NearDupIndex:
    """The texts kept so far, compactly: `add(text)` says "exact" / "near" (a duplicate of a kept text; not
    added) or None (new; added). Near = MinHash Jaccard of char 5-gram shingles >= threshold, found through
    LSH band buckets (datasketch's optimal bands for the threshold) and confirmed on the signatures.

    The signature is computed in numpy for the whole text at once: each shingle's code points folded into
    64 bits and mixed (`_fmix64`, 32 bits kept), then num_perm multiply-shift hashes ((a*x + b) >> 32, a
    2-independent family) and their minimum per hash. datasketch's MinHash hashed every shingle with its
    own SHA-1 call in Python: ~130 us a short prompt, the largest share of the stream's CPU after HTTP;
    this is a few times faster and estimates the Jaccard as well (unbiased; the same spread on one-word
    edits of GSM8K questions)."""

    BLOCK = 8192

    def __init__(self, threshold: float, num_perm: int = 128):
        from datasketch.lsh import _optimal_param

        self.threshold, self.num_perm = threshold, num_perm
        bands, rows = _optimal_param(threshold, num_perm, 0.5, 0.5)
        self.bands = [(i * rows, (i + 1) * rows) for i in range(bands)]
        self.exact: set[int] = set()
        # signatures in fixed blocks of BLOCK rows: growing never copies (a doubling array would hold the
        # old and the new copy at once, 1.5x the index at the peak)
        self.blocks: list[np.ndarray] = []
        self.size = 0
        # band content -> text index(es); keyed by hash(), not the bytes (64 bytes a band): collisions
        # only add candidates, which the signature comparison then rejects
        self.buckets: list[dict[int, int | list[int]]] = [{} for _ in self.bands]
        rng = np.random.default_rng(1)  # fixed: the same text always has the same signature
        self.a = rng.integers(1, 2**63, num_perm, dtype=np.uint64) | np.uint64(1)  # odd multipliers
        self.b = rng.integers(0, 2**63, num_perm, dtype=np.uint64)

    def signature(self, text: str) -> np.ndarray:
        """The uint32 MinHash signature of the character 5-grams of `text`, already `normalize`d (`add`
        does it once for the digest and this); a text of 5 characters or fewer is one shingle."""
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        if len(points) < SHINGLE:
            points = np.concatenate([points, np.zeros(SHINGLE - len(points), np.uint64)])
        n = len(points) - SHINGLE + 1
        with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as intended
            h = points[:n].copy()
            for j in range(1, SHINGLE):
                h = h * _FNV_PRIME + points[j : j + n]
            x = np.unique(_fmix64(h)) >> np.uint64(32)  # a set of shingles: duplicates count once
            return ((x[:, None] * self.a + self.b) >> np.uint64(32)).min(axis=0).astype(np.uint32)

    def add(self, text: str) -> str | None:
        text = normalize(text)
        digest = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
        if digest in self.exact:
            return "exact"
        sig = self.signature(text)
        keys = [hash(sig[a:b].tobytes()) for a, b in self.bands]
        candidates: set[int] = set()
        for bucket, key in zip(self.buckets, keys, strict=True):
            hit = bucket.get(key)
            if hit is not None:
                candidates.update(hit if isinstance(hit, list) else (hit,))
        if candidates:
            found = np.stack([self.blocks[j // self.BLOCK][j % self.BLOCK] for j in sorted(candidates)])
            if float(np.max(np.mean(found == sig, axis=1))) >= self.threshold:
                return "near"
        self.exact.add(digest)
        i = self.size
        if i % self.BLOCK == 0:
            self.blocks.append(np.empty((self.BLOCK, self.num_perm), dtype=np.uint32))
        self.blocks[-1][i % self.BLOCK] = sig
        self.size += 1
        for bucket, key in zip(self.buckets, keys, strict=True):
            hit = bucket.get(key)
            if hit is None:
                bucket[key] = i  # most buckets hold one text: an int, not a list
            elif isinstance(hit, list):
                hit.append(i)
            else:
                bucket[key] = [hit, i]
        return None


def dedup(records: list[dict], threshold: float, field: str = "prompt", num_perm: int = 128) -> tuple[list[dict], int, int]:
    """(kept, exact duplicates, near duplicates) over a list: first occurrence wins (`NearDupIndex`)."""
    index = NearDupIndex(threshold, num_perm)
    kept, why = [], Counter()
    for r in records:
        reason = index.add(str(r.get(field, "")))
        if reason is None:
            kept.append(r)
        else:
            why[reason] += 1
    return kept, why["exact"], why["near"]


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
