"""The `diversity` stage: embed one synthesized dataset and write diversity.json plus a t-SNE PNG.

Input: `<synthesize dir>/data.jsonl` (and `tree.json` for TreeSynth). Output in ctx.dir: diversity.json,
tsne.png, embeddings.f16.npy (a hard link to the content-keyed cache under `<artifacts>/embeddings/`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from treesynth.errors import TreesynthError
from treesynth.io import atomic_write_json, read_jsonl
from treesynth.metrics import diversity as dv
from treesynth.metrics.embed import cached_embeddings, model_name
from treesynth.metrics.plots import MAX_GROUPS, plot_tsne
from treesynth.paths import artifact_cache
from treesynth.settings import Diversity, load

log = logging.getLogger("treesynth")

TEXT_MODES = ("prompt", "completion", "both")


def record_texts(records: Sequence[dict], mode: str = "prompt") -> list[str]:
    """The text measured for each record: the prompt (paper: questions), the completion, or both."""
    if mode not in TEXT_MODES:
        raise TreesynthError(f"diversity.text={mode!r}: choose one of {', '.join(TEXT_MODES)}")
    out = []
    for r in records:
        prompt, completion = str(r.get("prompt") or ""), str(r.get("completion") or "")
        out.append(prompt if mode == "prompt" else completion if mode == "completion" else f"{prompt}\n{completion}")
    return out


# ---------------------------------------------------------------- tree.json


def _iter_nodes(obj: Any) -> Iterable[dict]:
    """Every node dict in tree.json, whether stored flat ({"nodes": [...]} / {"nodes": {id: node}}) or
    nested (children given as node dicts under "root" or at the top level)."""
    if isinstance(obj, list):
        for x in obj:
            yield from _iter_nodes(x)
    elif isinstance(obj, dict):
        if "nodes" in obj:
            nodes = obj["nodes"]
            yield from _iter_nodes(list(nodes.values()) if isinstance(nodes, dict) else nodes)
        elif "root" in obj and isinstance(obj["root"], dict):
            yield from _iter_nodes(obj["root"])
        elif "id" in obj:
            yield obj
            yield from _iter_nodes([c for c in obj.get("children") or [] if isinstance(c, dict)])


def _child_ids(node: dict) -> list[str]:
    return [str(c["id"] if isinstance(c, dict) else c) for c in node.get("children") or []]


def _label(node: dict) -> str:
    if node.get("infinite") or isinstance(node.get("values"), list) or isinstance(node.get("value"), list):
        return f"{node.get('dimension') or 'values'}: any"  # an infinite dimension: one child holds every value
    value = node.get("value")
    return str(value) if value not in (None, "") else str(node["id"])


def tree_index(path: str | Path) -> tuple[set[str], dict[str, str]]:
    """(leaf ids, leaf id -> label of its first-level branch) from a tree.json; empty when unreadable."""
    try:
        doc = json.loads(Path(path).read_text())
        nodes = {str(n["id"]): n for n in _iter_nodes(doc)}
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("diversity: cannot read %s (%s); leaf coverage uses records only", path, e)
        return set(), {}
    parent = {c: nid for nid, n in nodes.items() for c in _child_ids(n)}
    if isinstance(doc, dict) and isinstance(doc.get("leaves"), list):  # treesynth.tree.Tree.to_dict lists them
        leaves = {str(x) for x in doc["leaves"] if str(x) in nodes}
    else:
        leaves = {nid for nid, n in nodes.items() if not _child_ids(n) or n.get("is_leaf") or n.get("status") == "leaf"}
    branch = {}
    for leaf in leaves:
        node = leaf
        while node in parent and parent[node] in parent:  # climb to the root's child
            node = parent[node]
        branch[leaf] = _label(nodes[node]) if node in parent else "root"
    return leaves, branch


# ---------------------------------------------------------------- metrics


def dataset_metrics(texts: Sequence[str], emb: np.ndarray, *, self_bleu_sample: int = 200,
                    near_dup_threshold: float = 0.85, seed: int = 0) -> dict[str, float]:
    """Every per-dataset metric that needs only texts and their embeddings (used by stage and compare)."""
    return {"n": len(texts), **dv.embedding_metrics(emb),
            **dv.text_metrics(texts, self_bleu_sample, near_dup_threshold, seed)}


def _plot_groups(records: Sequence[dict], emb: np.ndarray, branch: dict[str, str]) -> tuple[dict[str, np.ndarray], str]:
    """Group this dataset's embeddings for its t-SNE: by first-level tree branch, else by leaf, else one group."""
    leaf_ids = [str((r.get("meta") or {}).get("leaf_id")) for r in records]
    if branch and any(x in branch for x in leaf_ids):
        labels, by = [branch.get(x, "unknown leaf") for x in leaf_ids], "first-level branch"
    elif any(x != "None" for x in leaf_ids):
        labels, by = leaf_ids, "leaf"
    else:
        labels, by = [str(r.get("method", "data")) for r in records], "method"
    arr = np.asarray(labels)
    return {lab: emb[arr == lab] for lab in dict.fromkeys(labels)}, by


def run(ctx: Any) -> dict:
    cfg: DictConfig = ctx.cfg
    src = Path(ctx.inputs["synthesize"])
    data = src / "data.jsonl"
    if not data.exists():
        raise TreesynthError(f"{data} is missing: run the synthesize stage first")
    records = read_jsonl(data)
    if len(records) < 2:
        raise TreesynthError(f"diversity needs at least 2 records; {data} has {len(records)}")
    d = load(cfg.diversity, Diversity, "diversity")
    texts = record_texts(records, d.text)
    seed = int(cfg.seed)
    name = d.embedding_model
    batch = d.runtime.batch_size

    t0 = time.time()
    emb, cache_file = cached_embeddings(texts, name, artifact_cache(cfg.paths.artifacts, "embeddings"), batch)
    seconds_embed = time.time() - t0
    link = ctx.dir / "embeddings.f16.npy"
    if not link.exists():
        try:
            os.link(cache_file, link)
        except OSError:  # another filesystem: the path in diversity.json is enough
            pass

    metrics: dict[str, Any] = {
        "embedding_model": model_name(name),
        "text": d.text,
        **dataset_metrics(texts, emb, self_bleu_sample=d.self_bleu_sample,
                          near_dup_threshold=d.near_dup_threshold, seed=seed),
    }
    leaves, branch = tree_index(src / "tree.json") if (src / "tree.json").exists() else (set(), {})
    metrics.update(dv.leaf_coverage([(r.get("meta") or {}).get("leaf_id") for r in records], leaves or None))
    metrics["seconds_embed"] = round(seconds_embed, 2)

    groups, by = _plot_groups(records, emb, branch)
    per_group = max(50, d.tsne_sample // min(len(groups), MAX_GROUPS))
    method = str(records[0].get("method", ""))
    plot_tsne(groups, ctx.dir / "tsne.png", title=f"{method} {cfg.task.get('name', '')} (n={len(records)}) by {by}".strip(),
              max_per_group=per_group, seed=seed)
    atomic_write_json(ctx.dir / "diversity.json", {**metrics, "embeddings_file": str(cache_file)})
    log.info("[diversity] n=%d mean cos %.4f, vendi %.2f, distinct-2 %.3f", metrics["n"],
             metrics["mean_cosine_similarity"], metrics["vendi_score"], metrics["distinct_2"])
    return metrics
