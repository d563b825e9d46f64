"""Persona-conditioned synthesis (Persona Hub, Ge et al. 2024): one persona per sample; the prompt asks
for a task sample that persona would create.

Persona source, first that works (recorded in `personas.json` and the stage metrics):
1. `file`: method.persona_file (jsonl with a `persona` field, or plain text, one persona a line);
2. `hub`: proj-persona/PersonaHub (config `persona`) on the Hugging Face hub;
3. `llm`: a pool written by the generator itself (text-to-persona: "who would write/ask this text?"
   over the task's training questions when they load, else over the task description); written
   lazily: only the personas the generated calls use.
A seeded subsample of `pool_size` personas is the pool; generation call c uses persona c % pool_size
(one sample per call by default, so every sample has its own persona while the pool lasts).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from pathlib import Path
from typing import Any

from treesynth.datasets import DataUnavailable, Source, load_human, load_source
from treesynth.errors import TreesynthError
from treesynth.io import atomic_write_json
from treesynth.llm import ChatRequest, derive_seed
from treesynth.methods.base import MethodEnv
from treesynth.methods.temperature import CallStream, templated_sample_request
from treesynth.prompts import render
from treesynth.settings import PersonaHubMethod, load
from treesynth.tasks import TaskSpec

PERSONA_HUB = Source("persona_hub", None, {"path": "proj-persona/PersonaHub", "name": "persona", "split": "train"})
PERSONA_TOKENS = 200  # one sentence; a grammar-constrained model stops at its schema's bound anyway


def persona_schema(task: TaskSpec) -> dict:
    """One persona sentence, bounded like the generator profile's text fields."""
    return {"title": "persona", "type": "object", "properties": {"persona": task.profile.text_schema("text")},
            "required": ["persona"], "additionalProperties": False}


def read_persona_file(path: Path) -> list[str]:
    if not path.is_file():
        raise TreesynthError(f"method.persona_file={path} does not exist")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if path.suffix == ".jsonl":
        return [str(json.loads(ln).get("persona", "")).strip() for ln in lines]
    return lines


class PersonaHub(CallStream):
    name = "persona_hub"
    input_files = ("persona_file",)

    def __init__(self, env: MethodEnv):
        super().__init__(env)
        s = load(env.cfg, PersonaHubMethod, "method")
        self.pool_size, self.persona_file = s.pool_size, s.persona_file
        self.pool_path = env.work_dir / "personas.json"
        self.source: str | None = None
        self.pool: list[str | None] = []
        self.tried: set[int] = set()  # LLM pool: indices already asked for (a failed one stays None)
        self.texts: list[str] | None = None  # LLM pool: what text-to-persona reads (loaded once)
        if self.pool_path.exists():  # resume: the same pool, not a fresh draw
            doc = json.loads(self.pool_path.read_text(encoding="utf-8"))
            self.source, self.pool, self.tried = doc["source"], doc["personas"], set(doc.get("tried", []))
        self._lock = asyncio.Lock()

    async def _ensure_pool(self, calls: list[int] = ()) -> None:
        """Pick the source once; an LLM pool is written lazily, only the personas `calls` use. A chunk whose
        personas all exist costs nothing here (personas.json is rewritten only when the pool changed)."""
        async with self._lock:
            changed = self.source is None
            if self.source is None:
                source, pool = self._given_pool()
                self.source, self.pool = source, pool if pool is not None else [None] * self.pool_size
            todo = sorted({c % len(self.pool) for c in calls} - self.tried) if self.source == "llm" else []
            if todo:
                for i, persona in zip(todo, await self._llm_personas(todo), strict=True):
                    self.pool[i] = persona
                    self.tried.add(i)
            if changed or todo:
                atomic_write_json(self.pool_path, {"source": self.source, "personas": self.pool,
                                                   "tried": sorted(self.tried)})

    def _given_pool(self) -> tuple[str, list[str | None] | None]:
        rng = random.Random(derive_seed(self.env.seed, "personas"))
        file = self.persona_file
        if file:
            personas, source = read_persona_file(Path(file)), "file"
        else:
            try:
                personas = [str(r.get("persona", "")).strip() for r in load_source(PERSONA_HUB)]
                source = "hub"
            except DataUnavailable:
                return "llm", None
        personas = [p for p in personas if p]
        if not personas:
            raise TreesynthError(f"no personas in the {source} source")
        return source, list(rng.sample(personas, min(self.pool_size, len(personas))))

    def _persona_texts(self) -> list[str]:
        """What text-to-persona reads: a seeded sample of the task's training questions, else its description."""
        task = self.env.task
        if task.human:
            try:
                rows = load_human(task.name, task.human, self.env.root_cfg.data.dir)
                rng = random.Random(derive_seed(self.env.seed, "persona_texts"))
                picked = rng.sample(rows, min(self.pool_size, len(rows)))
                texts = [task.build_prompt({f.name: str(r.get(f.name, "")) for f in task.fields}) for r in picked]
                return [t for t in texts if t.strip()] or [task.description]
            except DataUnavailable:
                pass
        return [task.description]

    async def _llm_personas(self, indices: list[int]) -> list[str | None]:
        """Text-to-persona over the task's training questions (or its description); a failed call
        leaves None (calls using that persona are skipped and refilled)."""
        task = self.env.task
        if self.texts is None:
            self.texts = self._persona_texts()
        texts = self.texts

        async def one(i: int) -> str | None:
            req = ChatRequest.user(render("persona_from_text", text=texts[i % len(texts)]), temperature=1.0,
                                   max_tokens=PERSONA_TOKENS, seed=derive_seed(self.env.seed, "persona", i),
                                   json_schema=persona_schema(task))
            c = await self.env.llm.complete(req)
            return str(c.data["persona"]).strip() if c.ok and isinstance(c.data, dict) else None

        return list(await asyncio.gather(*(one(i) for i in indices)))

    async def call(self, c: int) -> dict:
        persona = self.pool[c % len(self.pool)]
        seed = self.seed_of(c)
        row = {"call": c, "seed": seed, "persona": persona, "persona_source": self.source, "samples": []}
        if persona:
            req = templated_sample_request(self.env.task, "persona_generate", self.k, seed=seed,
                                           temperature=self.temperature, persona=persona)
            row["samples"] = self.env.task.parse_samples(await self.env.llm.complete(req), self.k)
        return row

    async def ensure(self, n: int, start: int = 0) -> None:
        # the personas these calls use, before the calls run concurrently
        await self._ensure_pool([c for c in range(start // self.k, math.ceil(n / self.k)) if c not in self.calls])
        await super().ensure(n, start)

    def plan(self, size: int) -> dict[str, Any]:
        out = super().plan(size)
        out["persona_calls_if_llm_pool"] = self.pool_size
        return out

    def finalize(self, records: list[dict]) -> dict[str, Any]:
        return {"persona_source": self.source, "persona_pool": sum(1 for p in self.pool if p),
                "personas_used": len({r["meta"].get("persona") for r in records})}
