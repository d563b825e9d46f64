"""TreeSynth: build the space tree (treesynth/tree/builder.py), then synthesize inside every leaf.

Leaf quotas come from the stream order: position p goes to the leaf with the smallest
(count + 1) / weight (highest averages), so ANY prefix of n positions is spread as evenly as possible
over the leaves, weighted by `infinite_weight ** (infinite ancestors)` (the paper's 10^k calls for a
leaf under k infinite dimensions). A prefix property matters: when the teacher or hygiene drops records
the stage asks for more positions, and the first ones stay exactly what they were.

Every leaf generation call is appended to `leaf_calls.jsonl` (a leaf's samples are its calls'
samples in call order), so a rerun replays them and generates only what is missing. The stage streams
positions a chunk at a time: the schedule goes on from where the last chunk ended, the log is read by
(leaf, call) (`KeyedLog`), and memory holds per call its number and sample count, not its samples.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, bisect_right
from collections import Counter
from dataclasses import asdict
from itertools import accumulate
from typing import Any

from treesynth.io import atomic_write_json, atomic_write_text
from treesynth.llm import derive_seed
from treesynth.methods.base import KeyedLog, Method, MethodEnv, PromptRecord, gather_logged
from treesynth.tree.builder import TreeBuilder
from treesynth.tree.config import TreeConfig, plan
from treesynth.tree.node import Node, Tree
from treesynth.tree.render import render_html, render_text

# A leaf whose calls return no valid sample this many times in a row is exhausted: its later slots yield
# no record (the stage refills from other positions) and it is called no more.
EMPTY_CALLS_TO_EXHAUST = 3


class Schedule:
    """Leaf index and slot (the leaf's how-many-th position) of each stream position, highest averages:
    every prefix is near-proportional to the weights. Kept between chunks, so positions [start, stop)
    after [.., start) cost their own heap operations only."""

    def __init__(self, weights: list[float]):
        self.weights = weights
        self.reset()

    def reset(self) -> None:
        self.heap = [(1.0 / w, i) for i, w in enumerate(self.weights)]
        heapq.heapify(self.heap)
        self.counts = [0] * len(self.weights)
        self.pos = 0

    def take(self, start: int, stop: int) -> list[tuple[int, int]]:
        if start < self.pos:  # asked again for earlier positions: start over
            self.reset()
        while self.pos < start:
            self._next()
        return [self._next() for _ in range(start, stop)]

    def _next(self) -> tuple[int, int]:
        _, i = heapq.heappop(self.heap)
        slot = self.counts[i]
        self.counts[i] += 1
        heapq.heappush(self.heap, ((self.counts[i] + 1) / self.weights[i], i))
        self.pos += 1
        return i, slot


def schedule(n: int, weights: list[float]) -> list[int]:
    """Leaf index for stream positions 0..n-1."""
    return [i for i, _ in Schedule(weights).take(0, n)]


class LeafCalls:
    """A leaf's generation calls in call order, as numbers and running sample counts (not the samples).
    Only the calls up to the leaf's exhaustion (EMPTY_CALLS_TO_EXHAUST empty calls in a row) count: which
    sample a slot gets is then fixed by the seeded calls alone, not by how many calls a chunk happened
    to make, so any chunking of the stream gives the same records."""

    __slots__ = ("numbers", "ends", "usable", "empty_run")

    def __init__(self) -> None:
        self.numbers: list[int] = []  # call numbers, ascending
        self.ends: list[int] = []  # ends[j]: samples in the calls numbers[: j + 1]
        self.usable: int | None = None  # calls that count once exhausted (None: not exhausted)
        self.empty_run = 0  # empty calls at the end, while not exhausted

    @property
    def made(self) -> int:
        return len(self.numbers)

    @property
    def samples(self) -> int:
        """Samples the counting calls hold."""
        n = self.made if self.usable is None else self.usable
        return self.ends[n - 1] if n else 0

    def add(self, call: int, samples: int) -> None:
        j = bisect_left(self.numbers, call)
        if j == len(self.numbers):  # the usual case: the next call
            self.numbers.append(call)
            self.ends.append((self.ends[-1] if self.ends else 0) + samples)
            self._count(samples)
            return
        counts = [b - a for a, b in zip([0, *self.ends], self.ends, strict=False)]
        if self.numbers[j] == call:  # the same call again: the later row counts, as on replay
            counts[j] = samples
        else:
            self.numbers.insert(j, call)
            counts.insert(j, samples)
        self.ends, self.usable, self.empty_run = list(accumulate(counts)), None, 0
        for n in counts:
            self._count(n)

    def _count(self, samples: int) -> None:
        if self.usable is None:
            self.empty_run = 0 if samples else self.empty_run + 1
            if self.empty_run >= EMPTY_CALLS_TO_EXHAUST:
                self.usable = self.made

    def locate(self, slot: int) -> tuple[int, int] | None:
        """(call number, index in its samples) of the leaf's `slot`-th sample, None if it has none."""
        if slot >= self.samples:
            return None
        j = bisect_right(self.ends, slot)
        return self.numbers[j], slot - (self.ends[j - 1] if j else 0)


class TreeSynth(Method):
    name = "treesynth"

    def __init__(self, env: MethodEnv):
        super().__init__(env)
        self.t = TreeConfig.from_cfg(env.cfg)
        self.infinite_weight = float(env.cfg.infinite_weight)
        self.tree: Tree | None = None
        self._leaves: list[Node] = []
        self._schedule: Schedule | None = None
        self._calls: dict[str, LeafCalls] = {}
        self.log = KeyedLog(env.work_dir / "leaf_calls.jsonl", ("leaf", "call"), on_row=self._index)

    def _index(self, row: dict) -> None:
        self._leaf_calls(row["leaf"]).add(row["call"], len(row["samples"]))

    async def build_tree(self) -> Tree:
        if self.tree is None:
            builder = TreeBuilder(self.env.llm, self.env.task, self.t, self.env.seed, self.env.work_dir)
            self.tree = await builder.build()
        return self.tree

    def weight(self, leaf: Node) -> float:
        assert self.tree is not None
        return self.infinite_weight ** self.tree.infinite_depth(leaf.id)

    async def prompts(self, n: int) -> list[PromptRecord]:
        return await self.prompts_between(0, n)

    async def prompts_between(self, start: int, stop: int) -> list[PromptRecord]:
        tree = await self.build_tree()
        if self._schedule is None:
            self._leaves = tree.spread_leaves()
            self._schedule = Schedule([self.weight(leaf) for leaf in self._leaves])
        self.log.forget()  # the stage has moved on: earlier calls are read from disk if ever needed
        order = self._schedule.take(start, stop)
        need: dict[str, int] = {}
        for i, slot in order:
            need[self._leaves[i].id] = slot + 1
        await self.fill(need)
        picked = []  # (leaf, slot, call number, index in the call's samples); a slot without a sample is skipped
        for i, slot in order:
            leaf = self._leaves[i]
            at = self._leaf_calls(leaf.id).locate(slot)
            if at is not None:
                picked.append((leaf, slot, *at))
        rows = self.log.get_many((leaf.id, call) for leaf, _, call, _ in picked)
        return [self.leaf_record(tree, leaf, slot, rows[leaf.id, call]["samples"][j], rows[leaf.id, call])
                for leaf, slot, call, j in picked]

    def _leaf_calls(self, leaf_id: str) -> LeafCalls:
        return self._calls.setdefault(leaf_id, LeafCalls())

    def leaf_samples(self, leaf_id: str, count: int) -> list[tuple[dict, dict]]:
        """The leaf's first `count` (sample, call row) pairs generated so far, in call order (balancing's)."""
        calls = self._leaf_calls(leaf_id)
        at = [a for s in range(count) if (a := calls.locate(s)) is not None]
        rows = self.log.get_many((leaf_id, c) for c, _ in at)
        return [(rows[leaf_id, c]["samples"][j], rows[leaf_id, c]) for c, j in at]

    async def fill(self, need: dict[str, int]) -> None:
        """Make every leaf (id -> count) hold at least `count` samples, or be exhausted: the missing calls
        of all leaves run concurrently, in rounds (samples a round's calls did not bring are asked for by
        the next; a leaf whose calls bring fewer than samples_per_call gets as many more calls as its
        yield so far says it needs, so a weak generator costs few rounds)."""
        tree, k = self.tree, self.t.samples_per_call
        assert tree is not None
        while True:
            todo = []
            for leaf_id, count in need.items():
                calls = self._leaf_calls(leaf_id)
                if calls.usable is None and calls.samples < count:
                    per_call = calls.samples / calls.made if calls.samples else k
                    n = math.ceil((count - calls.samples) / per_call)
                    todo += [(leaf_id, calls.made + j) for j in range(n)]
            if not todo:
                return
            # appended in call order: the checkpoint replays the same sample order
            await gather_logged((self._call(tree.nodes[leaf], c) for leaf, c in todo), self.log, keep=self._index,
                                llm=self.env.llm)

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
