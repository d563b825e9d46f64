"""Diversity metrics against naive O(n^2) definitions, hand-made cases, the stage, and the compare CLI."""

from __future__ import annotations

import csv
import json
import math
import random
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from treesynth.errors import TreesynthError
from treesynth.io import write_jsonl
from treesynth.metrics import diversity as dv
from treesynth.metrics.stage import record_texts, tree_index

# ---------------------------------------------------------------- naive references


def naive_mean_cos(e: np.ndarray) -> float:
    u = e / np.linalg.norm(e, axis=1, keepdims=True)
    s = u @ u.T
    n = len(u)
    return float((s.sum() - np.trace(s)) / (n * (n - 1)))


def naive_vendi(e: np.ndarray) -> float:
    u = e / np.linalg.norm(e, axis=1, keepdims=True)
    lam = np.clip(np.linalg.eigvalsh(u @ u.T / len(u)), 0, None)  # n x n kernel, as the definition says
    lam = lam[lam > 1e-15]
    return float(np.exp(-(lam * np.log(lam)).sum()))


@pytest.fixture(scope="module")
def rand500() -> np.ndarray:
    rng = np.random.default_rng(0)
    # A shared component makes similarities non-trivial (random 384-d vectors are nearly orthogonal).
    return (rng.standard_normal((500, 384)) + 0.7 * rng.standard_normal(384)).astype(np.float64)


def test_embedding_metrics_match_naive_pairwise(rand500):
    got = dv.embedding_metrics(rand500)
    assert got["mean_cosine_similarity"] == pytest.approx(naive_mean_cos(rand500), abs=1e-6)
    assert got["vendi_score"] == pytest.approx(naive_vendi(rand500), abs=1e-6)
    assert dv.mean_cosine_similarity(rand500) == got["mean_cosine_similarity"]
    assert dv.vendi_score(rand500) == got["vendi_score"]
    assert 0.2 < got["mean_cosine_similarity"] < 0.5 and 1 < got["vendi_score"] < 384


def test_large_input_path_float32_chunks_stays_close(rand500, monkeypatch):
    # The million-row path (float32 chunks, float64 accumulation), forced on n=500 with small chunks.
    monkeypatch.setattr(dv, "FLOAT64_MAX_ROWS", 100)
    monkeypatch.setattr(dv, "CHUNK_ROWS", 64)
    got = dv.embedding_metrics(rand500.astype(np.float16))
    assert got["mean_cosine_similarity"] == pytest.approx(naive_mean_cos(rand500), abs=1e-3)
    assert got["vendi_score"] == pytest.approx(naive_vendi(rand500), rel=1e-3)


def test_hand_made_embedding_cases():
    same = np.tile(np.array([[0.3, -1.0, 2.0]]), (50, 1))
    assert dv.mean_cosine_similarity(same) == pytest.approx(1.0, abs=1e-9)
    assert dv.vendi_score(same) == pytest.approx(1.0, abs=1e-9)
    ortho = np.eye(10, 16) * 3.0
    assert dv.mean_cosine_similarity(ortho) == pytest.approx(0.0, abs=1e-12)
    assert dv.vendi_score(ortho) == pytest.approx(10.0, abs=1e-9)
    opposite = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert dv.mean_cosine_similarity(opposite) == pytest.approx(-1.0)
    with pytest.raises(TreesynthError, match="n >= 2"):
        dv.vendi_score(np.ones((1, 4)))
    with pytest.raises(TreesynthError, match="all zeros"):
        dv.mean_cosine_similarity(np.zeros((3, 4)))


def _random_texts(n: int, seed: int = 0) -> list[str]:
    rnd = random.Random(seed)
    words = "apple pear train car sum total each more less than buys sells has gives".split()
    return [" ".join(rnd.choice(words) for _ in range(rnd.randint(3, 12))) + "?" for _ in range(n)]


def test_distinct_n_matches_naive():
    texts = _random_texts(500)
    for n in (1, 2):
        grams = [g for t in texts for g in zip(*(dv.tokenize(t)[i:] for i in range(n)), strict=False)]
        assert dv.distinct_n(texts, n) == pytest.approx(len(set(grams)) / len(grams), abs=1e-12)
    assert dv.distinct_n(["a b c", "a b c"], 1) == pytest.approx(0.5)
    assert dv.distinct_n(["A b, c."], 2) == 1.0  # tokens: a b , c .
    assert dv.distinct_n([""], 2) == 0.0


def test_self_bleu_hand_cases_and_subsample():
    assert dv.self_bleu(["the cat sat on the mat today"] * 5, sample=10)[0] == pytest.approx(100.0)
    disjoint = ["alpha beta gamma delta", "one two three four", "red green blue cyan"]
    assert dv.self_bleu(disjoint, sample=10) == (0.0, 3)
    texts = _random_texts(300)
    a, m = dv.self_bleu(texts, sample=40, seed=1)
    assert m == 40 and a == dv.self_bleu(texts, sample=40, seed=1)[0]  # seeded subsample
    assert 0 < a < 100
    # Reference value by the definition: each sampled text vs all the other sampled ones.
    from sacrebleu.metrics import BLEU

    chosen = [texts[i] for i in dv.sample_indices(len(texts), 40, 1)]
    ref = np.mean([BLEU(effective_order=True).sentence_score(h, [r for j, r in enumerate(chosen) if j != i]).score
                   for i, h in enumerate(chosen)])
    assert a == pytest.approx(ref, abs=1e-9)


def _naive_near_dup_rate(texts: list[str], threshold: float) -> float:
    sets = [dv.shingles(t) for t in texts]
    uf = dv._UnionFind(len(texts))
    for i, j in combinations(range(len(texts)), 2):
        if len(sets[i] & sets[j]) / len(sets[i] | sets[j]) >= threshold:
            uf.union(i, j)
    return 1 - uf.n_sets() / len(texts)


def test_near_duplicate_rate_matches_exact_jaccard_on_clear_cases():
    base = _random_texts(150, seed=3)
    base = [f"{t} number {i}" for i, t in enumerate(base)]  # make the originals clearly distinct
    texts = base + base[:20] + [b.upper() + "  " for b in base[20:30]]  # 20 exact + 10 normalized copies
    got = dv.near_duplicate_rate(texts, threshold=0.85)
    assert got == pytest.approx(_naive_near_dup_rate(texts, 0.85), abs=1e-12)
    assert got == pytest.approx(30 / 180)
    assert dv.near_duplicate_rate(["x y z"] * 4) == pytest.approx(0.75)
    with pytest.raises(TreesynthError, match="threshold"):
        dv.near_duplicate_rate(["a", "b"], threshold=0)


def test_compression_ratio_orders_redundancy():
    repetitive = ["the same question about apples"] * 200
    varied = _random_texts(200)
    assert dv.compression_ratio(repetitive) > 20 > dv.compression_ratio(varied) > 1


def test_leaf_coverage_entropy():
    ids = ["a"] * 6 + ["b"] * 2 + ["c"] * 2 + [None]
    out = dv.leaf_coverage(ids, tree_leaves=["a", "b", "c", "d"])
    p = np.array([0.6, 0.2, 0.2])
    assert out["n_leaves"] == 3 and out["tree_leaves"] == 4 and out["leaf_coverage"] == 0.75
    assert out["leaf_entropy"] == pytest.approx(float(-(p * np.log(p)).sum()))
    assert out["leaf_entropy_normalized"] == pytest.approx(out["leaf_entropy"] / math.log(3))
    assert (out["records_per_leaf_max"], out["records_per_leaf_min"]) == (6, 2)
    assert dv.leaf_coverage([None, None]) == {}


TREE = {
    "nodes": [
        {"id": "0", "depth": 0, "dimension": None, "value": None, "children": ["0.0", "0.1"], "status": "expanded"},
        {"id": "0.0", "depth": 1, "dimension": "operation", "value": "addition", "children": ["0.0.0", "0.0.1"]},
        {"id": "0.1", "depth": 1, "dimension": "operation", "value": "division", "children": [], "status": "leaf"},
        {"id": "0.0.0", "depth": 2, "dimension": "setting", "value": "shop", "children": []},
        {"id": "0.0.1", "depth": 2, "dimension": "setting", "value": None, "values": ["farm", "school"],
         "children": []},
    ]
}


def _as_tree_module_writes_it() -> dict:
    """The same tree in treesynth.tree.Tree.to_dict()'s format (nodes keyed by id, explicit leaf list)."""
    from treesynth.tree.node import Node, Tree

    tree = Tree()
    for n in TREE["nodes"]:
        parent = n["id"].rpartition(".")[0] or None
        tree.add(Node(id=n["id"], depth=n["depth"], parent=parent, dimension=n["dimension"], value=n["value"],
                      values=n.get("values"), children=n["children"], status="leaf" if not n["children"] else "expanded"))
    return tree.to_dict()


def test_tree_index_flat_and_nested(tmp_path):
    p = tmp_path / "tree.json"
    p.write_text(json.dumps(TREE))
    leaves, branch = tree_index(p)
    assert leaves == {"0.1", "0.0.0", "0.0.1"}
    assert branch == {"0.1": "division", "0.0.0": "addition", "0.0.1": "addition"}
    p.write_text(json.dumps(_as_tree_module_writes_it()))
    assert tree_index(p) == (leaves, branch)
    nodes = {n["id"]: dict(n) for n in TREE["nodes"]}
    for n in nodes.values():
        n["children"] = [nodes[c] for c in n["children"]]
    p.write_text(json.dumps({"root": nodes["0"]}))
    assert tree_index(p) == (leaves, branch)
    p.write_text("{not json")
    assert tree_index(p) == (set(), {})


def test_record_texts_modes():
    rows = [{"prompt": "Q?", "completion": "A."}]
    assert record_texts(rows) == ["Q?"]
    assert record_texts(rows, "completion") == ["A."]
    assert record_texts(rows, "both") == ["Q?\nA."]
    with pytest.raises(TreesynthError, match="diversity.text"):
        record_texts(rows, "answer")


# ---------------------------------------------------------------- end to end on the real embedding model

QUESTIONS = {
    "0.1": ["Tom has 12 apples and shares them among 3 friends. How many does each get?",
            "A baker splits 40 rolls into bags of 8. How many bags?",
            "Sara divides 90 stickers among 5 pages. How many per page?",
            "A farmer packs 56 eggs into cartons of 7. How many cartons?"],
    "0.0.0": ["A shop sells 5 pens on Monday and 9 on Tuesday. How many pens in total?",
              "Lia buys a 4 dollar toy and a 7 dollar book. What does she pay?",
              "The store had 30 shirts and got 25 more. How many shirts now?",
              "Max spends 3 dollars, then 8 dollars at the shop. How much in all?"],
    "0.0.1": ["A farm has 14 cows and 9 goats. How many animals?",
              "A class has 12 girls and 15 boys. How many students?",
              "Ann picks 20 apples and Ben picks 17. How many together?",
              "The school bus carries 23 kids in the morning and 19 later. How many rides?"],
}


def write_dataset(path: Path, method: str, questions: dict[str, list[str]]) -> None:
    rows = [{"id": f"{method}-{i}", "task": "gsm8k", "method": method, "prompt": q, "completion": "#### 1",
             "meta": {"leaf_id": leaf, "seed": 0}}
            for i, (leaf, q) in enumerate((leaf, q) for leaf, qs in questions.items() for q in qs)]
    write_jsonl(path, rows)


@pytest.mark.slow
def test_stage_and_compare_on_real_minilm(make_cfg, tmp_path, monkeypatch):
    from treesynth.metrics import compare, embed
    from treesynth.pipeline import run_stage, stage_dir

    cfg = make_cfg("stages=[diversity]", "diversity.self_bleu_sample=8")
    syn = stage_dir(cfg, "synthesize")
    write_dataset(syn / "data.jsonl", "treesynth", QUESTIONS)
    (syn / "tree.json").write_text(json.dumps(_as_tree_module_writes_it()))
    (syn / "stage.json").write_text("{}")

    metrics = run_stage(cfg, "diversity")
    out = stage_dir(cfg, "diversity")
    saved = json.loads((out / "diversity.json").read_text())
    for key in ("n", "embedding_model", "mean_cosine_similarity", "vendi_score", "distinct_1", "distinct_2",
                "self_bleu", "self_bleu_sample", "near_duplicate_rate", "compression_ratio", "n_leaves",
                "leaf_entropy", "tree_leaves", "leaf_coverage"):
        assert key in saved, key
    assert saved["n"] == 12 and saved["self_bleu_sample"] == 8 and saved["leaf_coverage"] == 1.0
    assert saved["embedding_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert saved["leaf_entropy"] == pytest.approx(math.log(3))
    emb = np.load(out / "embeddings.f16.npy")
    assert emb.shape == (12, 384) and emb.dtype == np.float16
    # the stored metric is the one the embeddings give, and MiniLM sees these questions as related
    assert metrics["mean_cosine_similarity"] == pytest.approx(naive_mean_cos(emb.astype(np.float64)), abs=1e-6)
    assert 0.05 < metrics["mean_cosine_similarity"] < 0.8
    assert (out / "tsne.png").read_bytes()[:4] == b"\x89PNG"

    # A different metric setting re-runs the stage but reuses the cached embeddings.
    monkeypatch.setattr(embed, "encode", lambda *a, **k: pytest.fail("embeddings should come from the cache"))
    again = run_stage(make_cfg("stages=[diversity]", "diversity.self_bleu_sample=4"), "diversity")
    assert again["mean_cosine_similarity"] == metrics["mean_cosine_similarity"] and again["self_bleu_sample"] == 4
    monkeypatch.undo()

    # compare: two datasets, labelled by method; the repetitive one is less diverse.
    other = {"x": [QUESTIONS["0.1"][0], QUESTIONS["0.1"][0].replace("12", "15")] * 3}
    write_dataset(tmp_path / "temp.jsonl", "temperature", other)
    rc = compare.main([str(tmp_path / "cmp"), str(syn / "data.jsonl"), str(tmp_path / "temp.jsonl"),
                       "--self-bleu-sample", "6", "--cache-dir", str(tmp_path / "artifacts" / ".cache" / "embeddings")])
    assert rc == 0
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "cmp" / "diversity.csv").open())}
    assert set(rows) == {"treesynth", "temperature"}
    assert float(rows["temperature"]["mean_cosine_similarity"]) > float(rows["treesynth"]["mean_cosine_similarity"])
    assert float(rows["treesynth"]["mean_cosine_similarity"]) == pytest.approx(metrics["mean_cosine_similarity"])
    assert float(rows["temperature"]["near_duplicate_rate"]) == pytest.approx(4 / 6)
    for png in ("tsne.png", "similarity.png"):
        assert (tmp_path / "cmp" / png).read_bytes()[:4] == b"\x89PNG"
    assert compare.main([str(tmp_path / "cmp2"), str(tmp_path / "missing.jsonl")]) == 2
