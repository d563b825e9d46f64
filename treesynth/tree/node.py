"""Tree nodes. A node is the subspace given by the (dimension, value) pairs on its path from the root.
Ids are paths ("0", "0.2", "0.2.1"), so a node's id, and every seed derived from it, is the same on a
rerun. An infinite dimension gives ONE child that holds the whole value list (`values`); a value is
drawn per generation call (with a recorded seed)."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

from treesynth.llm import derive_seed

PENDING, EXPANDED, LEAF = "pending", "expanded", "leaf"


@dataclass
class Node:
    id: str
    depth: int
    parent: str | None = None
    dimension: str | None = None  # the parent's split dimension, which this node's value belongs to
    value: str | None = None  # None for the root and for an infinite child
    values: list[str] | None = None  # infinite child: every value of the dimension
    status: str = PENDING  # pending | expanded | leaf
    leaf_reason: str | None = None  # why a leaf: max_depth, criterion failed, caps, ...
    child_dimension: str | None = None
    children: list[str] = field(default_factory=list)
    pivots: list[str] = field(default_factory=list)
    assignment: dict[str, list[int]] = field(default_factory=dict)  # value -> 1-based pivot indices
    coverage_added: list[str] = field(default_factory=list)
    criterion_fallbacks: int = 0  # criterion forms that failed on this node before one worked (one_call -> stepwise)
    calls: int = 0  # LLM requests this node's expansion made
    records: int = 0  # records under this node in the final dataset (filled at the end)

    @property
    def infinite(self) -> bool:
        return self.values is not None

    @property
    def is_leaf(self) -> bool:
        return self.status == LEAF

    def label(self) -> str:
        if self.parent is None:
            return "root"
        if self.infinite:
            return f"any of {len(self.values or [])} values"
        return str(self.value)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["infinite"] = self.infinite
        d["is_leaf"] = self.is_leaf
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Node:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})


class Tree:
    def __init__(self, root: Node | None = None):
        self.nodes: dict[str, Node] = {}
        if root is not None:
            self.add(root)

    def add(self, node: Node) -> None:
        self.nodes[node.id] = node

    @property
    def root(self) -> Node:
        return self.nodes["0"]

    def path(self, node_id: str) -> list[Node]:
        """Ancestors from the root's first child down to the node itself (the root defines nothing)."""
        out = []
        node = self.nodes[node_id]
        while node.parent is not None:
            out.append(node)
            node = self.nodes[node.parent]
        return out[::-1]

    def used_dimensions(self, node_id: str) -> list[str]:
        return [n.dimension for n in self.path(node_id) if n.dimension]

    def attributes(self, node_id: str, draw_seed: int | None = None) -> tuple[list[tuple[str, str]], dict]:
        """(dimension, value) pairs of a node's path. Infinite nodes draw one value with a seed derived
        from `draw_seed` and the node id; the draws are returned so records can record them."""
        attrs, draws = [], {}
        for n in self.path(node_id):
            if n.infinite:
                seed = derive_seed(draw_seed, n.id)
                value = random.Random(seed).choice(n.values or [""])
                draws[n.id] = {"value": value, "seed": seed}
                attrs.append((str(n.dimension), value))
            else:
                attrs.append((str(n.dimension), str(n.value)))
        return attrs, draws

    def leaves(self) -> list[Node]:
        return sorted((n for n in self.nodes.values() if n.is_leaf), key=lambda n: _id_key(n.id))

    def spread_leaves(self, node_id: str = "0") -> list[Node]:
        """Leaves interleaved across subtrees (first leaf of each child, then the second, ...), so when
        there are fewer records than leaves the ones that get a record span every branch."""
        node = self.nodes[node_id]
        if not node.children:
            return [node] if node.is_leaf else []
        groups = [self.spread_leaves(c) for c in node.children]
        return [g[i] for i in range(max(map(len, groups), default=0)) for g in groups if i < len(g)]

    def sorted_nodes(self) -> list[Node]:
        return sorted(self.nodes.values(), key=lambda n: _id_key(n.id))

    def infinite_depth(self, node_id: str) -> int:
        return sum(1 for n in self.path(node_id) if n.infinite)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": "0",
            "leaves": [n.id for n in self.leaves()],
            "nodes": {n.id: n.to_dict() for n in self.sorted_nodes()},
        }


def _id_key(node_id: str) -> tuple[int, ...]:
    return tuple(int(p) for p in node_id.split("."))
