"""Space partitioning (TreeSynth stage 1): pivots -> criterion -> coverage -> children, recursively.

Criterion determination has two forms (method.criterion_mode, defaulting to the generator's profile):
- `stepwise` (the constrained profile; works on the embedded 135M model): (a) propose a dimension and 2-4 values under a
  bounded schema, (b) assign each pivot to one value with an enum schema, so every pivot lands in
  exactly one value by construction. Placeholder, "other", combined and near-duplicate values are
  dropped or merged; an attempt with fewer than 2 values left, or a dimension an ancestor already
  used, is re-sampled with a new seed.
- `one_call` (the paper's form; the open profile): one call returns the dimension and a map from
  values to pivot indices; it is validated (indices in range, every pivot exactly once, disjoint values,
  no "other"/combined values, dimension unused). A node whose one-call attempts all fail tries the
  stepwise form before giving up.
A node whose criterion fails `criterion_retries` times (per form) becomes a leaf and records why.
Dimension and value names are bounded by the generator's profile (short ASCII when constrained).

Scheduling: every node expands as soon as its parent is done (no level barrier); the LLM layer bounds
and batches concurrency. Each finished node is appended to an event log (`tree_events.jsonl`); a rerun
replays it and expands only the nodes still pending (their LLM calls hit the request cache).
"""

from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path

from treesynth.io import Checkpoint
from treesynth.llm import LLM, ChatRequest, Completion, derive_seed, online_requests
from treesynth.progress import Progress
from treesynth.prompts import render
from treesynth.tasks import TaskSpec, format_attributes
from treesynth.tree.config import TreeConfig
from treesynth.tree.criterion import (
    CriterionError,
    assign_schema,
    clean_values,
    coverage_schema,
    dimension_problem,
    one_call_schema,
    propose_schema,
    validate_one_call,
)
from treesynth.tree.node import EXPANDED, LEAF, PENDING, Node, Tree

log = logging.getLogger("treesynth")

# ---- the builder --------------------------------------------------------------------------------

class TreeBuilder:
    def __init__(self, llm: LLM, task: TaskSpec, tcfg: TreeConfig, seed: int, work_dir: Path):
        self.llm, self.task, self.t, self.seed = llm, task, tcfg, seed
        self.events = Checkpoint(Path(work_dir) / "tree_events.jsonl")
        self.tree = Tree(Node(id="0", depth=0))
        self.calls_used = 0  # LLM requests spent on the tree (restored on resume)
        self._calls_reserved = 0
        self.progress: Progress | None = None

    # replay ------------------------------------------------------------------------------------
    def _replay(self) -> int:
        n = 0
        for row in self.events.rows():
            node = Node.from_dict(row["node"])
            self.tree.add(node)
            for child in row.get("children", []):
                self.tree.nodes.setdefault(child["id"], Node.from_dict(child))
            self.calls_used += node.calls
            n += 1
        return n

    async def build(self) -> Tree:
        replayed = self._replay()
        pending = [n for n in self.tree.sorted_nodes() if n.status == PENDING]
        if replayed:
            log.info("[tree] resumed: %d nodes done, %d pending", replayed, len(pending))
        if not pending:
            return self.tree
        self.progress = Progress("tree", None, "nodes", llms=(self.llm,), extra=lambda: {
            "pending": sum(1 for n in self.tree.nodes.values() if n.status == PENDING),
            "leaves": sum(1 for n in self.tree.nodes.values() if n.status == LEAF), "tree calls": self.calls_used})
        try:
            with online_requests():  # each call depends on the one before: never wait for a batch
                await asyncio.gather(*(self._expand(n) for n in pending))
        finally:
            self.events.close()
            self.progress.close()
        log.info("[tree] %s", self.progress.line())
        return self.tree

    async def _expand(self, node: Node) -> None:
        children = await self._split(node)
        if children:
            node.status = EXPANDED
            for c in children:
                self.tree.add(c)
        else:
            node.status = LEAF
        # One event per finished node (parent before children): the checkpoint a rerun replays.
        self.events.append({"node": node.to_dict(), "children": [c.to_dict() for c in children]})
        if self.progress is not None:
            self.progress.update()
        await asyncio.gather(*(self._expand(c) for c in children))

    def _leaf(self, node: Node, reason: str) -> list[Node]:
        node.leaf_reason = reason
        return []

    def _node_call_estimate(self) -> int:
        pivot_calls = math.ceil(self.t.pivots / self.t.samples_per_call)
        crit = 1 + (self.t.pivots if self.t.criterion_mode == "stepwise" else 0)
        return pivot_calls + crit + self.t.coverage_rounds

    async def _split(self, node: Node) -> list[Node]:
        if node.depth >= self.t.max_depth:
            return self._leaf(node, "max_depth")
        if len(self.tree.nodes) + 2 > self.t.max_nodes:
            return self._leaf(node, f"max_nodes ({self.t.max_nodes})")
        first = self.task.first_level if self.t.fixed_first_level else None
        if node.parent is None and first:
            node.child_dimension = first["dimension"]
            return self._children(node, list(first["values"]), fixed=True)
        estimate = self._node_call_estimate()
        if self.calls_used + self._calls_reserved + estimate > self.t.max_calls:
            return self._leaf(node, f"max_calls ({self.t.max_calls})")
        self._calls_reserved += estimate
        try:
            return await self._split_with_llm(node)
        finally:
            self._calls_reserved -= estimate

    async def _generate(self, node: Node, requests: list[ChatRequest], desc: str | None = None) -> list[Completion]:
        node.calls += len(requests)
        self.calls_used += len(requests)
        return await self.llm.generate(requests, desc=desc)

    async def _split_with_llm(self, node: Node) -> list[Node]:
        node.pivots = await self._pivots(node)
        if len(node.pivots) < 2:
            return self._leaf(node, f"only {len(node.pivots)} pivot(s) generated")
        used = self.tree.used_dimensions(node.id)
        errors: list[str] = []
        crit = None
        # one_call first when configured (the paper's form), then the stepwise form as the fallback.
        forms = [self._criterion_one_call, self._criterion_stepwise] if self.t.criterion_mode == "one_call" \
            else [self._criterion_stepwise]
        for form in forms:
            for attempt in range(self.t.criterion_retries):
                try:
                    crit = await form(node, used, attempt)
                    break
                except CriterionError as e:
                    errors.append(str(e))
            if crit is not None:
                break
            node.criterion_fallbacks += 1
        if crit is None:
            return self._leaf(node, f"criterion failed after {len(errors)} tries: {errors[-1]}")
        node.child_dimension, node.assignment = crit
        values = list(node.assignment)
        for rnd in range(self.t.coverage_rounds):
            if len(values) > self.t.max_values:
                break
            added, complete = await self._coverage(node, values, rnd)
            values += added
            node.coverage_added += added
            if complete or not added:
                break
        return self._children(node, values)

    def _children(self, node: Node, values: list[str], fixed: bool = False) -> list[Node]:
        dim = node.child_dimension
        # A task's fixed first level is an explicit partition: one child per value, whatever the caps.
        if not fixed and (len(values) > self.t.max_values or len(values) > self.t.max_children):
            # Infinite dimension (or more values than the cost cap): one child holding every value.
            kids = [Node(id=f"{node.id}.0", depth=node.depth + 1, parent=node.id, dimension=dim, values=values)]
        else:
            kids = [
                Node(id=f"{node.id}.{i}", depth=node.depth + 1, parent=node.id, dimension=dim, value=v)
                for i, v in enumerate(values)
            ]
        if len(self.tree.nodes) + len(kids) > self.t.max_nodes:
            node.child_dimension = None
            return self._leaf(node, f"max_nodes ({self.t.max_nodes})")
        node.children = [k.id for k in kids]
        return kids

    def _seed(self, node: Node, *parts: object) -> int:
        return derive_seed(self.seed, "tree", node.id, *parts)

    def description(self, node: Node) -> str:
        attrs, _ = self.tree.attributes(node.id, draw_seed=self._seed(node, "describe"))
        return f"{self.task.description}\nThis part of the space: {format_attributes(attrs)}"

    async def _pivots(self, node: Node) -> list[str]:
        k = self.t.samples_per_call
        reqs = []
        for call in range(math.ceil(self.t.pivots / k)):
            attrs, _ = self.tree.attributes(node.id, draw_seed=self._seed(node, "pivots", call))
            reqs.append(
                self.task.sample_request(
                    attrs, min(k, self.t.pivots - call * k), seed=self._seed(node, "pivots", call),
                    temperature=self.t.temperatures.pivot, max_tokens=self.task.sample_max_tokens(min(k, self.t.pivots)),
                )
            )
        out = []
        for c in await self._generate(node, reqs):  # a call's extra samples make up for another's shortfall
            out += [self.task.build_prompt(s) for s in self.task.parse_samples(c)]
        return out[: self.t.pivots]

    def _numbered(self, pivots: list[str]) -> str:
        return "\n".join(f"{i}. {' '.join(p.split())[:300]}" for i, p in enumerate(pivots, 1))

    async def _criterion_stepwise(self, node: Node, used: list[str], attempt: int) -> tuple[str, dict[str, list[int]]]:
        prompt = render(
            "propose", description=self.description(node), pivots=self._numbered(node.pivots),
            used=", ".join(used) or "(none)", max_values=str(self.t.proposal_values),
        )
        req = ChatRequest.user(
            prompt, temperature=self.t.temperatures.criterion, max_tokens=self.t.max_tokens.criterion,
            seed=self._seed(node, "propose", attempt), json_schema=propose_schema(self.t.proposal_values, self.task.profile.value_schema()),
        )
        (c,) = await self._generate(node, [req])
        if not c.ok or not isinstance(c.data, dict):
            raise CriterionError(f"proposal: {c.error or 'no JSON'}")
        dimension = " ".join(str(c.data["dimension"]).split())
        if problem := dimension_problem(dimension, used):
            raise CriterionError(problem)
        values, dropped = clean_values(c.data["values"], dimension=dimension)
        if len(values) < 2:
            raise CriterionError(f"fewer than 2 usable values (dropped: {dropped})")
        # Step (b): each pivot picks one value from an enum: exclusive and exhaustive by construction.
        reqs = [
            ChatRequest.user(
                render("assign", dimension=dimension, values=", ".join(values), pivot=p),
                temperature=self.t.temperatures.criterion, max_tokens=self.t.max_tokens.assign,
                seed=self._seed(node, "assign", attempt, i), json_schema=assign_schema(values),
            )
            for i, p in enumerate(node.pivots)
        ]
        assignment: dict[str, list[int]] = {v: [] for v in values}
        for i, a in enumerate(await self._generate(node, reqs), 1):
            if not a.ok or not isinstance(a.data, dict) or a.data.get("value") not in assignment:
                raise CriterionError(f"pivot {i} could not be assigned: {a.error or a.text[:80]}")
            assignment[a.data["value"]].append(i)
        return dimension, assignment

    async def _criterion_one_call(self, node: Node, used: list[str], attempt: int) -> tuple[str, dict[str, list[int]]]:
        n = len(node.pivots)
        prompt = render(
            "criterion_one_call", description=self.description(node), pivots=self._numbered(node.pivots),
            used=", ".join(used) or "(none)", n=str(n),
        )
        req = ChatRequest.user(
            prompt, temperature=self.t.temperatures.criterion, max_tokens=self.t.max_tokens.one_call,
            seed=self._seed(node, "criterion", attempt), json_schema=one_call_schema(n, self.t.max_values, self.task.profile.value_schema()),
        )
        (c,) = await self._generate(node, [req])
        if not c.ok:
            raise CriterionError(f"criterion: {c.error}")
        return validate_one_call(c.data, n, used)

    async def _coverage(self, node: Node, values: list[str], rnd: int) -> tuple[list[str], bool]:
        prompt = render(
            "coverage", description=self.description(node), dimension=str(node.child_dimension),
            values=", ".join(values), max_new=str(self.t.coverage_new_values),
        )
        req = ChatRequest.user(
            prompt, temperature=self.t.temperatures.coverage, max_tokens=self.t.max_tokens.coverage,
            seed=self._seed(node, "coverage", rnd), json_schema=coverage_schema(self.t.coverage_new_values, self.task.profile.value_schema()),
        )
        (c,) = await self._generate(node, [req])
        if not c.ok or not isinstance(c.data, dict):
            return [], True  # a failed coverage call ends coverage; the values found so far stand
        added, _ = clean_values(c.data.get("new_values", []), values, dimension=str(node.child_dimension))
        return added, bool(c.data.get("complete"))


