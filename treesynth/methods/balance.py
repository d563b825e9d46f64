"""TreeSynth-guided balancing (method=treesynth_balance): rebalance an existing dataset over a tree.

1. Source: `method.source` = a data.jsonl (any method's output or a user's file with prompt/completion).
2. Tree: `method.tree` = a tree.json (TreeSynth's artifact), or null = build one with the TreeSynth
   engine (the method's tree settings, as method=treesynth).
3. Routing: every record goes down the tree by LLM classification: at each expanded node, a JSON
   schema with an enum of the children's values plus "none of these" (an infinite dimension has one
   child: no question). A record that fits no child lands in the `unrouted` bucket (kept, reported).
4. Balancing: per-leaf cap = `method.target_per_leaf` or ceil(data.size / leaves). An overfull leaf is
   downsampled (seeded), an underfull one gets its deficit synthesized by the TreeSynth engine's leaf
   synthesis (the same calls, seeds and checkpoint as method=treesynth). Unrouted records form one more
   bucket under the same cap (never synthesized for).
The stream interleaves the buckets round-robin, so every prefix is balanced; refills (teacher or
hygiene drops) take more synthesized samples from the leaves that fell short.
Outputs: balance_report.json / .md (per-leaf counts before and after), routing.jsonl (checkpoint).
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from treesynth.errors import TreesynthError
from treesynth.io import Checkpoint, atomic_write_json, atomic_write_text, read_jsonl
from treesynth.llm import ChatRequest, derive_seed
from treesynth.methods.base import Method, MethodEnv, PromptRecord, gather_logged
from treesynth.methods.treesynth import TreeSynth
from treesynth.prompts import render
from treesynth.tree.node import Node, Tree

UNROUTED = "unrouted"
NONE_OF_THESE = "none of these"


def load_tree(path: str | Path) -> Tree:
    """A Tree from a tree.json artifact (`Tree.to_dict()` output)."""
    p = Path(path)
    if not p.is_file():
        raise TreesynthError(f"method.tree={path} does not exist (give a tree.json, or null to build one)")
    doc = json.loads(p.read_text(encoding="utf-8"))
    if "nodes" not in doc or "0" not in doc["nodes"]:
        raise TreesynthError(f"method.tree={path} is not a TreeSynth tree.json (no nodes / root '0')")
    tree = Tree()
    for d in doc["nodes"].values():
        tree.add(Node.from_dict(d))
    if not tree.leaves():
        raise TreesynthError(f"method.tree={path} has no leaves")
    return tree


def route_schema(values: list[str]) -> dict:
    return {"title": "route", "type": "object", "properties": {"value": {"enum": [*values, NONE_OF_THESE]}},
            "required": ["value"], "additionalProperties": False}


class TreeSynthBalance(Method):
    name = "treesynth_balance"
    input_files = ("source", "tree")

    def __init__(self, env: MethodEnv):
        super().__init__(env)
        src = env.cfg.get("source")
        if not src or not Path(src).is_file():
            raise TreesynthError(f"method.source={src} must be an existing data.jsonl to balance")
        self.source = [r for r in read_jsonl(src) if str(r.get("prompt", "")).strip()]
        if not self.source or not all("completion" in r for r in self.source):
            raise TreesynthError(f"method.source={src} needs records with prompt and completion")
        self.engine = TreeSynth(env)  # tree building and leaf synthesis: the TreeSynth engine itself
        if env.cfg.get("tree"):
            self.engine.tree = load_tree(env.cfg.tree)
        self.target = env.cfg.get("target_per_leaf")
        self.routes = Checkpoint(env.work_dir / "routing.jsonl")
        self.routed: dict[str, dict] = {r["id"]: r for r in self.routes.rows()}

    # ---- routing ------------------------------------------------------------------------------
    async def route(self, tree: Tree, rec: dict, key: str) -> dict:
        node, steps = tree.root, []
        while node.children:
            kids = [tree.nodes[c] for c in node.children]
            if len(kids) == 1 and kids[0].infinite:  # an infinite dimension does not partition
                node = kids[0]
                continue
            values = [str(k.value) for k in kids]
            req = ChatRequest.user(
                render("route", description=self.env.task.description, dimension=str(node.child_dimension),
                       values="; ".join(values), sample=rec["prompt"], none=NONE_OF_THESE),
                temperature=0.0, max_tokens=48, seed=derive_seed(self.env.seed, "route", key, node.id),
                json_schema=route_schema(values),
            )
            c = await self.env.llm.complete(req)
            value = c.data.get("value") if c.ok and isinstance(c.data, dict) else None
            steps.append({"node": node.id, "value": value})
            if value not in values:  # "none of these" or a failed call: stop here, keep the record
                return {"id": key, "leaf": None, "stopped_at": node.id, "steps": steps}
            node = kids[values.index(value)]
        return {"id": key, "leaf": node.id if node.is_leaf else None, "stopped_at": node.id, "steps": steps}

    def _key(self, i: int, rec: dict) -> str:
        return f"{i}:{rec.get('id', '')}"

    async def route_all(self, tree: Tree) -> None:
        todo = [(self._key(i, r), r) for i, r in enumerate(self.source) if self._key(i, r) not in self.routed]
        await gather_logged((self.route(tree, r, k) for k, r in todo), self.routes,
                            keep=lambda row: self.routed.update({row["id"]: row}), llm=self.env.llm)

    def buckets(self, tree: Tree) -> dict[str, list[int]]:
        """Bucket (leaf id or `unrouted`) -> source record indices, seeded order."""
        out: dict[str, list[int]] = {leaf.id: [] for leaf in tree.spread_leaves()}
        out[UNROUTED] = []
        for i, r in enumerate(self.source):
            out[self.routed[self._key(i, r)]["leaf"] or UNROUTED].append(i)
        rng = random.Random(derive_seed(self.env.seed, "balance"))
        for idx in out.values():
            rng.shuffle(idx)
        return out

    def cap(self, n_leaves: int) -> int:
        if self.target is not None:
            if int(self.target) < 1:
                raise TreesynthError("method.target_per_leaf must be >= 1 (or null)")
            return int(self.target)
        return math.ceil(int(self.env.root_cfg.data.size) / n_leaves)

    # ---- the stream ---------------------------------------------------------------------------
    async def prompts(self, n: int) -> list[PromptRecord]:
        tree = await self.engine.build_tree()
        await self.route_all(tree)
        buckets = self.buckets(tree)
        leaves = {leaf.id: leaf for leaf in tree.spread_leaves()}
        cap = self.cap(len(leaves))
        # Base plan: each bucket up to the cap (source first, then synthesized), round-robin.
        chosen = {b: idx[:cap] for b, idx in buckets.items()}
        deficit = {b: cap - len(chosen[b]) for b in leaves}
        base = sum(len(v) for v in chosen.values()) + sum(deficit.values())
        # Refill beyond the base plan: extra synthesized samples, spread over the leaves.
        extra = Counter(list(leaves)[j % len(leaves)] for j in range(max(0, n - base)))
        want = {b: deficit[b] + extra[b] for b in leaves}
        await self.engine.fill({b: want[b] for b in leaves if want[b] > 0})
        lanes: dict[str, list[PromptRecord]] = {}
        for b in [*leaves, UNROUTED]:
            lane = [self._source_record(i, b) for i in chosen[b]]
            if b in leaves:
                samples = self.engine.leaf_samples(b, want[b])
                lane += [self.engine.leaf_record(tree, leaves[b], s, sample, call)
                         for s, (sample, call) in enumerate(samples)]
            lanes[b] = lane
        out = [lane[j] for j in range(max(map(len, lanes.values()), default=0)) for lane in lanes.values()
               if j < len(lane)]
        self._plan = {"cap": cap, "before": {b: len(v) for b, v in buckets.items()}, "leaves": list(leaves)}
        return out[:n]

    def _source_record(self, i: int, bucket: str) -> PromptRecord:
        r = self.source[i]
        route = self.routed[self._key(i, r)]
        meta = {**(r.get("meta") or {}), "leaf_id": None if bucket == UNROUTED else bucket, "balance": "source",
                "source_id": r.get("id", i), "source_method": r.get("method"), "route": route["steps"]}
        return PromptRecord(id=f"src/{i}", prompt=r["prompt"], sample={}, completion=r["completion"], meta=meta)

    # ---- report -------------------------------------------------------------------------------
    def finalize(self, records: Iterable[dict]) -> dict[str, Any]:
        records = list(records)  # read several times below; a balanced set is human-data sized
        tree, plan = self.engine.tree, self._plan
        assert tree is not None
        after = Counter(r["meta"].get("leaf_id") or UNROUTED for r in records)
        synthesized = Counter(r["meta"].get("leaf_id") for r in records if r["meta"].get("balance") != "source")
        rows = []
        for b in [*plan["leaves"], UNROUTED]:
            label = " / ".join(f"{d}={v}" for d, v in tree.attributes(b)[0]) if b != UNROUTED else UNROUTED
            rows.append({"bucket": b, "path": label, "before": plan["before"][b], "after": after[b],
                         "synthesized": synthesized[b] if b != UNROUTED else 0,
                         "downsampled": max(0, plan["before"][b] - plan["cap"])})
        doc = {"source": str(self.env.cfg.source), "source_records": len(self.source), "target_per_leaf": plan["cap"],
               "leaves": len(plan["leaves"]), "records": len(records), "buckets": rows}
        out = self.env.work_dir
        atomic_write_json(out / "balance_report.json", doc)
        md = [f"# Balance report ({self.env.task.name})", "",
              f"source: `{doc['source']}` ({len(self.source)} records); target per leaf: {plan['cap']}; "
              f"output: {len(records)} records", "",
              "| bucket | path | before | downsampled | synthesized | after |", "|---|---|---:|---:|---:|---:|"]
        md += [f"| {r['bucket']} | {r['path']} | {r['before']} | {r['downsampled']} | {r['synthesized']} | {r['after']} |"
               for r in rows]
        atomic_write_text(out / "balance_report.md", "\n".join(md) + "\n")
        tree_metrics = self.engine.finalize(records)  # tree.json / .txt / .html with the balanced counts
        return {**tree_metrics, "balance_target_per_leaf": plan["cap"], "balance_unrouted_before": plan["before"][UNROUTED],
                "balance_synthesized": sum(synthesized.values()),
                "balance_before": {r["bucket"]: r["before"] for r in rows},
                "balance_after": {r["bucket"]: r["after"] for r in rows}}
