"""t-SNE figures of each method's data, from the diversity stage's cached embeddings where they exist."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from treesynth.io import iter_jsonl
from treesynth.paths import artifact_cache
from treesynth.report.collect import Run, generator_name
from treesynth.report.layout import ANY, method_rank, row_label
from treesynth.report.plots import safe_name

TSNE_MAX_PER_METHOD = 1000  # t-SNE is O(n log n) but slow on CPU; a sample shows the spread


def _embeddings(run: Run, data: Path) -> Any:
    """Embeddings of a run's records for the t-SNE: the diversity stage's cached file when one exists
    for exactly these texts, else a sample of TSNE_MAX_PER_METHOD embedded now (cached in the store)."""
    import numpy as np

    from treesynth.metrics.diversity import sample_indices
    from treesynth.metrics.embed import cache_key, cached_embeddings
    from treesynth.metrics.stage import record_texts

    model = str(run.cfg("diversity.embedding_model", "embedded"))
    texts = record_texts(list(iter_jsonl(data / "data.jsonl")), str(run.cfg("diversity.text", "prompt")))
    if not texts:
        return np.zeros((0, 1), dtype=np.float32)
    keep = sample_indices(len(texts), TSNE_MAX_PER_METHOD, 0)
    store = artifact_cache(str(run.cfg("paths.artifacts", data.parent.parent)), "embeddings")
    whole = store / f"{cache_key(texts, model)}.f16.npy"  # what the diversity stage embedded
    if whole.exists():
        return np.load(whole)[keep]
    return cached_embeddings([texts[i] for i in keep], model, store)[0]


def tsne_figures(runs: list[Run], out: Path) -> tuple[list[Path], str | None]:
    """t-SNE of each method's data per (generator, task), at the size with the most methods (vanilla
    included). Uses treesynth.metrics.plots / embed; returns (figures, why none were made)."""
    try:
        from treesynth.metrics.plots import plot_tsne
    except ImportError as e:
        return [], f"t-SNE skipped: {e}"
    by_key: dict[tuple[str, str, Any], dict[str, tuple[Run, Path]]] = defaultdict(dict)
    for run in runs:
        data_dir = (run.summary.get("artifacts") or {}).get("synthesize")
        if data_dir and (Path(data_dir) / "data.jsonl").exists():
            method = str(run.cfg("method.name", "?"))
            gen = ANY if method == "human" else generator_name(run)
            by_key[(gen, str(run.cfg("task.name", "?")), run.cfg("data.size"))][method] = (run, Path(data_dir))
    made: list[Path] = []
    for gen, task in sorted({(g, t) for g, t, _ in by_key if g != ANY}):
        sizes = {s for g, t, s in by_key if g == gen and t == task}
        size = max(sizes, key=lambda s: (len(by_key[(gen, task, s)]) + len(by_key.get((ANY, task, s), {})), s or 0))
        methods = {**by_key.get((ANY, task, size), {}), **by_key[(gen, task, size)]}
        groups = {row_label(m): _embeddings(run, data) for m, (run, data) in sorted(methods.items(),
                                                                                    key=lambda kv: method_rank(kv[0]))}
        groups = {k: v for k, v in groups.items() if len(v)}
        if groups:
            path = out / f"tsne_{safe_name(gen)}_{safe_name(task)}.png"
            plot_tsne(groups, path, title=f"t-SNE of {task} data ({size} records), generator {gen}")
            made.append(path)
    if not made:
        return [], "t-SNE skipped: no run's synthesize artifact (data.jsonl) is reachable from here"
    return made, None

