"""TreeSynth: build the space tree (treesynth/tree/builder.py), then synthesize inside every leaf.

Leaf quotas come from the stream order: position p goes to the leaf with the smallest
(count + 1) / weight (highest averages), so ANY prefix of n positions is spread as evenly as possible
over the leaves, weighted by `infinite_weight ** (infinite ancestors)` (the paper's 10^k calls for a
leaf under k infinite dimensions). A prefix property matters: when the teacher or hygiene drops records
the stage asks for more positions, and the first ones stay exactly what they were.

Every leaf generation call is appended to `leaf_calls.jsonl` (a leaf's samples are its calls'
samples in call order), so a rerun replays them and generates only what is missing.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections import Counter
from dataclasses import asdict
from typing import Any

from treesynth.io import atomic_write_json, atomic_write_text
from treesynth.llm import derive_seed
from treesynth.methods.base import Checkpoint, Method, MethodEnv, PromptRecord
from treesynth.tree.builder import TreeBuilder
from treesynth.tree.config import TreeConfig, plan
from treesynth.tree.node import Node, Tree
from treesynth.tree.render import render_html, render_text

EXTRA_LEAF_CALLS = 3  # calls a leaf may spend beyond its need when calls return no valid sample


def schedule(n: int, weights: list[float]) -> list[int]:
    """Leaf index for stream positions 0..n-1 (highest averages): every prefix is near-proportional."""
    heap = [(1.0 / w, i) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    counts = [0] * len(weights)
    out = []
    for _ in range(n):
        _, i = heapq.heappop(heap)
        out.append(i)
        counts[i] += 1
        heapq.heappush(heap, ((counts[i] + 1) / weights[i], i))
    return out


class TreeSynth(Method):
    name = "treesynth"

    def __init__(self, env: MethodEnv):
        super().__init__(env)
        self.t = TreeConfig.from_cfg(env.cfg)
        self.infinite_weight = float(env.cfg.infinite_weight)
        self.tree: Tree | None = None
        self.log = Checkpoint(env.work_dir / "leaf_calls.jsonl")
        self._calls: dict[str, dict[int, dict]] = {}  # leaf -> call index -> {samples, draws, seed}
        for row in self.log.rows():
            self._calls.setdefault(row["leaf"], {})[row["call"]] = row

    async def build_tree(self) -> Tree:
        if self.tree is None:
            builder = TreeBuilder(self.env.llm, self.env.task, self.t, self.env.seed, self.env.work_dir)
            self.tree = await builder.build()
        return self.tree

    def weight(self, leaf: Node) -> float:
        assert self.tree is not None
        return self.infinite_weight ** self.tree.infinite_depth(leaf.id)

    async def prompts(self, n: int) -> list[PromptRecord]:
        tree = await self.build_tree()
        leaves = tree.spread_leaves()
        order = schedule(n, [self.weight(leaf) for leaf in leaves])
        need = Counter(order)
        try:
            await asyncio.gather(*(self.fill_leaf(leaves[i], need[i]) for i in need))
        finally:
            self.log.close()
        samples = {leaf.id: self.leaf_samples(leaf.id) for leaf in leaves}
        out, slot = [], Counter()
        for i in order:
            leaf = leaves[i]
            s = slot[leaf.id]
            slot[leaf.id] += 1
            if s < len(samples[leaf.id]):
                sample, call = samples[leaf.id][s]
                out.append(self.leaf_record(tree, leaf, s, sample, call))
        return out

    def leaf_samples(self, leaf_id: str) -> list[tuple[dict, dict]]:
        """(sample, call row) pairs generated for a leaf so far, in call order (also used by balancing)."""
        calls = self._calls.get(leaf_id, {})
        return [(s, calls[c]) for c in sorted(calls) for s in calls[c]["samples"]]

    async def fill_leaf(self, leaf: Node, count: int) -> None:
        """Make the leaf hold at least `count` samples (bounded number of calls)."""
        k = self.t.samples_per_call
        budget = math.ceil(count / k) + EXTRA_LEAF_CALLS
        while True:
            calls = self._calls.setdefault(leaf.id, {})
            have = sum(len(c["samples"]) for c in calls.values())
            if have >= count or len(calls) >= budget:
                return
            start = len(calls)
            todo = range(start, min(budget, start + math.ceil((count - have) / k)))
            rows = await asyncio.gather(*(self._call(leaf, c) for c in todo))
            for row in rows:  # appended in call order: the checkpoint replays the same sample order
                calls[row["call"]] = row
                self.log.append(row)

    async def _call(self, leaf: Node, call: int) -> dict:
        assert self.tree is not None
        seed = derive_seed(self.env.seed, "leaf", leaf.id, call)
        attrs, draws = self.tree.attributes(leaf.id, draw_seed=seed)
        req = self.env.task.sample_request(
            attrs, self.t.samples_per_call, seed=seed, temperature=self.t.temperatures.leaf,
            max_tokens=self.env.task.sample_max_tokens(self.t.samples_per_call),
        )
        c = await self.env.llm.complete(req)
        return {
            "leaf": leaf.id,
            "call": call,
            "seed": seed,
            "draws": [{"node": k, **v} for k, v in draws.items()],
            "attributes": [{"dimension": d, "value": v} for d, v in attrs],
            "samples": self.env.task.parse_samples(c, self.t.samples_per_call),
        }

    def leaf_record(self, tree: Tree, leaf: Node, slot: int, sample: dict, call: dict) -> PromptRecord:
        """The prompt record for a leaf's `slot`-th sample, with its path and draws in meta."""
        return PromptRecord(
            id=f"{leaf.id}/{slot}",
            prompt=self.env.task.build_prompt(sample),
            sample=sample,
            meta={
                "leaf_id": leaf.id,
                "path": call["attributes"],
                "draws": call["draws"],
                "call": call["call"],
                "call_seed": call["seed"],
            },
        )

    def plan(self, size: int) -> dict[str, Any]:
        return plan(self.t, self.env.task, size)

    def finalize(self, records: list[dict]) -> dict[str, Any]:
        tree = self.tree
        assert tree is not None
        for node in tree.nodes.values():
            node.records = 0
        for r in records:
            node_id: str | None = r["meta"]["leaf_id"]
            while node_id is not None:
                tree.nodes[node_id].records += 1
                node_id = tree.nodes[node_id].parent
        out = self.env.work_dir
        doc = {**tree.to_dict(), "task": self.env.task.name, "config": asdict(self.t)}
        atomic_write_json(out / "tree.json", doc)
        atomic_write_text(out / "tree.txt", render_text(tree))
        atomic_write_text(out / "tree.html", render_html(tree, title=f"TreeSynth tree: {self.env.task.name}"))
        leaves = tree.leaves()
        reasons = Counter((n.leaf_reason or "").split(" (")[0].split(":")[0] for n in leaves)
        return {
            "tree_nodes": len(tree.nodes),
            "tree_leaves": len(leaves),
            "tree_depth": max(n.depth for n in tree.nodes.values()),
            "leaves_with_records": sum(1 for n in leaves if n.records),
            "leaf_reasons": dict(reasons),
            "criterion_fallbacks": sum(n.criterion_fallbacks for n in tree.nodes.values()),
        }
