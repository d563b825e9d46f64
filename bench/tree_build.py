"""Tree-building schedule: our TreeBuilder (a node expands as soon as its parent is done) against a
level-by-level barrier (all nodes of depth k, wait for every one, then depth k+1), same tree.

Both builds use the openai backend without a request cache against one loopback stub server, so every
call really goes over HTTP. Each chat request sleeps a latency uniform in [lo, hi] drawn from a hash of
(request, --seed): the same request gets the same latency in both builds, so the only difference is
the schedule. The stub scripts the criterion steps so the tree is full and known: every proposal names
a dimension with exactly --branch values and coverage answers "complete" (still one sequential call);
pivots and assignments are the stub's schema-valid defaults.

Sequential rounds per node (criterion_mode=stepwise, method.coverage_rounds=1):
    pivots (ceil(pivots / samples_per_call) calls in parallel) -> propose (1 call)
    -> assign (one call per pivot, in parallel) -> coverage (1 call)      = 4 rounds
so the critical path is about depth x 4 x per-round latency. Under a barrier, each level waits for its
slowest node; without one, only the slowest root-to-leaf path counts. The bench prints, per schedule,
the measured wall (min of --repeats, alternating) and its latency-only ideal computed from the per-request
latencies (ours: slowest path of node times; barrier: sum of level maxima); wall - ideal is client
overhead (CPU on the event loop), which at the time of writing was dominated by per-call JSON-schema
validation in treesynth/llm/client.py (see cpu_ms_per_call).

    .venv/bin/python bench/tree_build.py [--depth 3] [--pivots 4] [--branch 3] [--lo 0.05] [--hi 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a checkout without install

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from treesynth.llm import build_llm  # noqa: E402
from treesynth.profiles import profile_for  # noqa: E402
from treesynth.tasks import task_of  # noqa: E402
from treesynth.testing.scripted import WORDS  # noqa: E402
from treesynth.testing.stub_server import StubServer  # noqa: E402
from treesynth.tree.builder import TreeBuilder  # noqa: E402
from treesynth.tree.config import TreeConfig  # noqa: E402
from treesynth.tree.node import Node, Tree  # noqa: E402


class LevelBarrierBuilder(TreeBuilder):
    """The same node expansion, scheduled level by level: depth k+1 starts when all of depth k is done.

    TreeBuilder._expand finishes a node and then awaits self._expand(child) for its children; here that
    recursive call only queues the child for the next level (no engine change needed)."""

    async def build(self) -> Tree:
        level = [self.tree.root]
        try:
            while level:
                self._level = {n.id for n in level}
                self._next: list[Node] = []
                await asyncio.gather(*(self._expand(n) for n in level))
                level = sorted(self._next, key=lambda n: tuple(int(p) for p in n.id.split(".")))
        finally:
            self.events.close()
        return self.tree

    async def _expand(self, node: Node) -> None:
        if node.id in self._level:
            await super()._expand(node)
        else:
            self._next.append(node)


def node_latency(b: TreeBuilder, node: Node, lat: dict[int, float]) -> float:
    """A node's expansion time if only server latency counted: the sum over its sequential rounds of
    the slowest call in the round (requests are found by the seeds the builder gives them)."""
    t = b.t
    seeds = [[b._seed(node, "pivots", c) for c in range(math.ceil(t.pivots / t.samples_per_call))]]
    for attempt in range(t.criterion_retries):  # a rejected proposal costs another propose + assign
        seeds += [[b._seed(node, "propose", attempt)], [b._seed(node, "assign", attempt, i) for i in range(t.pivots)]]
    seeds += [[b._seed(node, "coverage", r)] for r in range(t.coverage_rounds)]
    return sum(max((lat[s] for s in rnd if s in lat), default=0.0) for rnd in seeds) if node.calls else 0.0


def ideal_makespans(tree: Tree, durations: dict[str, float]) -> tuple[float, float]:
    """From node expansion times: (no barrier: the slowest root-to-leaf path, barrier: sum over levels
    of the slowest node), i.e. what each schedule takes with zero client/scheduling overhead."""
    path: dict[str, float] = {}
    for n in tree.sorted_nodes():  # parents before children
        path[n.id] = durations.get(n.id, 0.0) + (path[n.parent] if n.parent else 0.0)
    levels: dict[int, float] = {}
    for n in tree.nodes.values():
        levels[n.depth] = max(levels.get(n.depth, 0.0), durations.get(n.id, 0.0))
    return max(path.values()), sum(levels.values())


def _digest(body: dict, seed: int) -> bytes:
    return hashlib.sha256(json.dumps([body.get("messages"), body.get("seed"), seed], sort_keys=True).encode()).digest()


class Script:
    """The stub's `respond` hook: a per-request latency, and full, valid criterion answers."""

    def __init__(self, lo: float, hi: float, branch: int, seed: int, reject: float = 0.0):
        self.lo, self.hi, self.branch, self.seed, self.reject = lo, hi, branch, seed, reject
        self.latencies: dict[int, float] = {}  # request seed -> latency (same request, same latency)

    async def __call__(self, body: dict) -> dict | None:
        rng = random.Random(_digest(body, self.seed))
        delay = rng.uniform(self.lo, self.hi)
        self.latencies[body.get("seed")] = delay
        await asyncio.sleep(delay)
        title = ((body.get("response_format") or {}).get("json_schema") or {}).get("name")
        if title == "propose" and rng.random() < self.reject:
            # A weak model's placeholder values: the builder rejects them and proposes again.
            return {"dimension": "difficulty level", "values": ["value1", "value2"]}
        if title == "propose":
            # Distinct words everywhere: no value is a duplicate of, or overlaps, another.
            w = rng.sample(WORDS, 2 + 2 * self.branch)
            return {"dimension": f"{w[0]} {w[1]}", "values": [f"{w[i]} {w[i + 1]}" for i in range(2, len(w), 2)]}
        if title == "coverage":
            return {"complete": True, "new_values": []}
        return None  # pivots, assignments: the stub's schema-valid default drawn from the request


def run_config(a: argparse.Namespace) -> DictConfig:
    """The real config (task=gsm8k, method=treesynth under an openai generator's profile), with the
    bench's tree shape on top."""
    shape = {"max_depth": a.depth, "pivots": a.pivots, "max_children": a.branch, "proposal_values": a.branch,
             "coverage_rounds": 1, "criterion_mode": "stepwise", "max_nodes": 100_000, "max_calls": 1_000_000}
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose("config", overrides=["task=gsm8k", "method=treesynth", "llm=openai",
                                           *(f"method.{k}={v}" for k, v in shape.items())])
    profile_for(cfg)  # registers the ${profile:...} resolver the method's values go through
    return cfg


def tree_config(a: argparse.Namespace) -> TreeConfig:
    return TreeConfig.from_cfg(run_config(a).method)


async def build(
    cls: type[TreeBuilder], url: str, a: argparse.Namespace, work: Path
) -> tuple[float, float, TreeBuilder, int]:
    """One build; returns (wall s, this process's CPU s, builder, LLM calls)."""
    llm_cfg = {"backend": "openai", "model": "stub-model", "api_key_env": None,
               "runtime": {"base_urls": [url], "max_concurrency": a.slots, "max_retries": 0, "timeout_s": 60}}
    llm = build_llm(llm_cfg)  # no cache_dir: every request reaches the server
    task = task_of(run_config(a))
    try:
        await llm.backend.health_check()
        builder = cls(llm, task, tree_config(a), a.seed, work)
        t0, cpu0 = time.perf_counter(), time.process_time()
        await builder.build()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        await llm.aclose()
    if llm.stats.errors:
        raise SystemExit(f"{cls.__name__}: {llm.stats.errors} LLM calls failed")
    return wall, cpu, builder, llm.stats.calls


def expected_max(k: int, lo: float, hi: float) -> float:
    """E[max of k independent uniform(lo, hi)]: one round of k parallel calls."""
    return lo + (hi - lo) * k / (k + 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--pivots", type=int, default=4)
    p.add_argument("--branch", type=int, default=3, help="values per dimension (= method.max_children)")
    p.add_argument("--lo", type=float, default=0.05)
    p.add_argument("--hi", type=float, default=0.5)
    p.add_argument("--slots", type=int, default=256, help="stub slots = client max_concurrency")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2, help="builds per schedule (alternating); min wall reported")
    p.add_argument("--reject", type=float, default=0.0,
                   help="share of proposals answered with placeholders (each costs the node one more round)")
    a = p.parse_args()
    if a.branch < 2 or a.branch > (len(WORDS) - 2) // 2:
        raise SystemExit("--branch must be in 2..24")

    script = Script(a.lo, a.hi, a.branch, a.seed, a.reject)
    results = {}
    with StubServer(latency=0.0, slots=a.slots, respond=script) as srv, tempfile.TemporaryDirectory() as tmp:
        # Alternate the two schedules; the minimum wall of --repeats is the least disturbed by other load.
        for rep in range(a.repeats):
            for name, cls in (("ours", TreeBuilder), ("barrier", LevelBarrierBuilder)):
                before = srv.requests
                wall, cpu, builder, calls = asyncio.run(build(cls, srv.base_url, a, Path(tmp) / f"{name}{rep}"))
                tree = builder.tree
                lat = {n.id: node_latency(builder, n, script.latencies) for n in tree.nodes.values()}
                no_barrier, barrier = ideal_makespans(tree, lat)
                r = results.setdefault(name, {"walls_s": [], "cpu_ms_per_call": []})
                r["walls_s"].append(round(wall, 3))
                r["cpu_ms_per_call"].append(round(1000 * cpu / calls, 2))  # client + stub thread
                r.update({"wall_s": min(r["walls_s"]), "nodes": len(tree.nodes), "leaves": len(tree.leaves()),
                          "llm_calls": calls, "server_requests": srv.requests - before,
                          # this schedule with server latency only (ours: the slowest root-to-leaf path;
                          # barrier: the sum of each level's slowest node); wall - ideal = overhead
                          "ideal_s": round(no_barrier if name == "ours" else barrier, 3)})
                tree_json = json.dumps(tree.to_dict(), sort_keys=True)
                if r.setdefault("tree", tree_json) != tree_json:
                    raise SystemExit(f"{name}: repeat {rep} built another tree")
        peak = srv.max_inflight
    ours, barrier = results["ours"], results["barrier"]
    same = ours.pop("tree") == barrier.pop("tree")

    t = tree_config(a)
    pivot_calls = math.ceil(t.pivots / t.samples_per_call)
    rounds = [pivot_calls, 1, t.pivots, 1]  # calls per sequential round: pivots, propose, assign, coverage
    mean = sum(script.latencies.values()) / len(script.latencies)
    bound = a.depth * len(rounds) * mean
    per_node = sum(expected_max(k, a.lo, a.hi) for k in rounds)
    out = {
        "config": {"task": "gsm8k", "depth": a.depth, "pivots": a.pivots, "branch": a.branch,
                   "samples_per_call": t.samples_per_call, "latency_s": [a.lo, a.hi], "slots": a.slots,
                   "seed": a.seed, "reject": a.reject, "repeats": a.repeats},
        "ours": ours, "barrier": barrier, "same_tree": same,
        "ratio_ours_over_barrier": round(ours["wall_s"] / barrier["wall_s"], 3),
        "ideal_ratio_ours_over_barrier": round(ours["ideal_s"] / barrier["ideal_s"], 3),
        "server_max_inflight": peak,
        "mean_latency_s": round(mean, 4),
        "sequential_rounds_per_node": len(rounds), "calls_per_round": rounds,  # + 1 per rejected proposal
        "critical_path_bound_s": round(bound, 3),  # depth x rounds x mean latency
        "critical_path_expected_node_s": round(a.depth * per_node, 3),  # depth x sum of E[max of a round]
    }
    print(json.dumps(out, indent=2))
    print(f"ours {ours['wall_s']:.2f}s vs barrier {barrier['wall_s']:.2f}s: ratio {out['ratio_ours_over_barrier']:.3f} "
          f"(latency-only ideal {ours['ideal_s']:.2f}s vs {barrier['ideal_s']:.2f}s: {out['ideal_ratio_ours_over_barrier']:.3f}); "
          f"nodes {ours['nodes']} = {barrier['nodes']}, same tree: {same}; critical path bound "
          f"{a.depth} levels x {len(rounds)} rounds x {mean * 1000:.0f} ms = {bound:.2f}s "
          f"(with parallel rounds' max: {a.depth * per_node:.2f}s)")
    if not same or ours["nodes"] != barrier["nodes"]:
        raise SystemExit("the two schedules built different trees")


if __name__ == "__main__":
    main()
