"""A strong-model test double: an OpenAI-compatible loopback server that answers like a capable model.

    with CapableServer(seed=0) as srv:       # srv.base_url, srv.model; srv.sent: every text it wrote
        python run.py llm=openai llm.model=capable llm.api_key_env=null 'llm.runtime.base_urls=[...]'

It is the test double of the `open` profile (treesynth/profiles/open.yaml): where the stub server
(treesynth/testing/stub_server.py) returns minimal schema instances, this one writes realistic content:
problems of 200 to 1,500 characters with Unicode (é ’ — × °), LaTeX ($\\frac{3}{4}$, \\sqrt{2}), `$`
amounts, quotes and newlines; Python code with indentation; valid one-call criterion answers
(every pivot in exactly one of 2-4 disjoint values, an unused dimension) and coverage answers; long
free-text solutions that end in the final-line form the prompt asks for. It reads only the request:
the JSON schema in `response_format` (json_schema or json_object style) or, without one, the prompt, so it
works for a task YAML it has never seen. Every string it writes into a sample field, and every free text,
is appended to `sent` (the tests check that data.jsonl holds exactly these texts).
Deterministic in (messages, seed), like a seeded model; `miscount` makes it return one sample too few
or too many now and then (a capable model miscounting); `plain_lists` makes it ignore the schema of
generation calls and answer with a numbered plain-text list, as servers without structured output do.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from typing import Any

from treesynth.testing.stub_server import StubServer

NAMES = ["Amélie", "José", "Zoë", "Chloé", "Mateo", "Priya", "Søren", "Anaïs", "Kwame", "Ngozi", "Björn", "Léa"]
PLACES = ["the café on Rue Saint-Honoré", "a farmers’ market", "the school’s science fair", "a bakery in Kraków",
          "the community garden", "a bookshop in São Paulo", "the museum’s gift shop", "an orchard near Zürich"]
THINGS = ["croissants", "jars of honey", "notebooks", "bicycle tyres", "packets of seeds", "ceramic mugs",
          "train tickets", "bags of crème brûlée mix"]
SENTENCES = [
    "{name} works at {place}, where each crate holds {a} {thing}.",
    "On Monday {name} sold {a} {thing}; on Tuesday — a rainy day — only {b} of them.",
    "Each of the {thing} costs ${price}, and a “bundle” of {b} costs ${bundle}.",
    "The thermometer read {deg}°C at noon, {b}° warmer than at dawn.",
    "A rectangular stall measures {a} m × {b} m, and its owner says, \"We need twice this space.\"",
    "{name}’s cousin bought {pct}% of the remaining stock for a school fête.",
    "She notes that $\\frac{{{b}}}{{{a}}}$ of the shelf is empty and the diagonal is $\\sqrt{{{b}}}$ metres.",
    "After paying a {pct}% tax, {name} keeps the rest and splits it evenly between {b} friends.",
    "Later the café’s manager adds {a} more {thing} to the display.",
    "The delivery van makes {b} round trips of {a} km each, at {price} km per litre of fuel.",
]
QUESTIONS = [
    "How many dollars does {name} earn in all?",
    "What is the total number of {thing} sold over the two days?",
    "How much money, in dollars, is left after the tax?",
    "What fraction of the {thing} remain unsold? Express your answer as a common fraction.",
]
CODE = [
    "def {fn}(values: list[int]) -> list[int]:\n    \"\"\"Return the running maximum of values.\"\"\"\n"
    "    out, best = [], None\n    for v in values:\n        best = v if best is None else max(best, v)\n"
    "        out.append(best)\n    return out",
    "def {fn}(text: str) -> dict[str, int]:\n    counts: dict[str, int] = {{}}\n    for word in text.split():\n"
    "        key = word.strip(\".,;:!?\").lower()\n        if key:\n            counts[key] = counts.get(key, 0) + 1\n"
    "    return counts",
]
INSTRUCTIONS = [
    "Write a Python function `{fn}` that takes a list of integers and returns the running maximum — the largest "
    "value seen so far at each position — without using itertools.",
    "Implement `{fn}(text)` in Python: count how often each word occurs (case-insensitive, ignoring the "
    "punctuation “.,;:!?”) and return a dictionary from word to count.",
]
# Dimensions a capable model might split a space by, each with disjoint values (no "other", no "a and b").
DIMENSIONS = {
    "everyday setting": ["grocery shopping", "school trip", "sports practice", "cooking", "travel", "gardening",
                         "saving money", "building a model", "a birthday party", "library visit", "farming",
                         "a music lesson"],
    "kind of quantity": ["money", "time", "distance", "weight", "volume", "temperature", "area", "counts of objects"],
    "number of steps": ["two steps", "three steps", "four steps", "five steps", "six steps", "seven steps"],
    "main operation": ["addition", "subtraction", "multiplication", "division"],
    "character of the story": ["a shopkeeper", "a student", "a farmer", "a chef", "a coach", "a traveller",
                               "a grandparent", "a scientist"],
    "presence of fractions": ["whole numbers only", "simple fractions", "percentages", "decimals"],
    "question form": ["direct question", "imperative instruction", "comparison question", "what-if scenario"],
    "difficulty": ["level 1", "level 2", "level 3", "level 4", "level 5"],
}


def _rng(body: dict) -> random.Random:
    digest = hashlib.sha256(json.dumps([body.get("messages"), body.get("seed")], sort_keys=True).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _prompt(body: dict) -> str:
    messages = body.get("messages") or []
    return str(messages[-1].get("content", "")) if messages else ""


def _schema(body: dict) -> dict | None:
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return (fmt.get("json_schema") or {}).get("schema")
    if fmt.get("type") == "json_object":
        return fmt.get("schema")
    return None


class CapableModel:
    """The responder: request body -> answer text (the server's `respond` hook)."""

    def __init__(self, miscount: float = 0.0, serve_first: list[str] | None = None, plain_lists: bool = False):
        self.miscount = miscount
        self.plain_lists = plain_lists  # ignore the schema of generation calls: a numbered plain-text list
        self.serve_first = list(serve_first or [])  # sample texts to write before any made-up one
        self.sent: list[str] = []

    def __call__(self, body: dict) -> str:
        rng, prompt, schema = _rng(body), _prompt(body), _schema(body)
        if schema is None:
            return self._remember(self.solution(prompt, rng))
        if self.plain_lists and schema.get("title") == "samples":
            return self.listed(schema, prompt, rng)
        handler = {"criterion": self.criterion, "coverage": self.coverage, "propose": self.propose}.get(
            str(schema.get("title")), self.instance)
        return json.dumps(handler(schema, prompt, rng), ensure_ascii=False)

    def listed(self, schema: dict, prompt: str, rng: random.Random) -> str:
        """The authors' answer format: "Question k:" items (multi-field: one "Field k:" line per field)."""
        samples = self.instance(schema, prompt, rng)["samples"]
        lines = ["Here are the samples you asked for:", ""]
        for k, sample in enumerate(samples, 1):
            names = list(sample)
            if len(names) == 1:
                lines.append(f"**Question {k}:** {sample[names[0]]}")
            else:
                lines += [f"{name.replace('_', ' ').title()} {k}: {sample[name]}" for name in names]
            lines.append("")
        return "\n".join(lines)

    def _remember(self, text: str) -> str:
        self.sent.append(text)
        return text

    # ---- content ---------------------------------------------------------------------------------
    def problem(self, rng: random.Random, lo: int = 200, hi: int = 1500) -> str:
        if self.serve_first:
            return self.serve_first.pop(0)
        values = {"name": rng.choice(NAMES), "place": rng.choice(PLACES), "thing": rng.choice(THINGS),
                  "a": rng.randint(3, 96), "b": rng.randint(2, 19), "price": f"{rng.randint(1, 40)}.{rng.randint(0, 99):02d}",
                  "bundle": rng.randint(20, 300), "deg": rng.randint(-5, 35), "pct": rng.choice([5, 12.5, 15, 20, 35])}
        latex = SENTENCES[6]  # every problem carries LaTeX (\frac, \sqrt), as MATH problems do
        sentences = rng.sample([s for s in SENTENCES if s != latex], k=rng.randint(2, len(SENTENCES) - 1))
        sentences.insert(rng.randint(0, len(sentences)), latex)
        parts = [s.format(**values) for s in sentences]
        text = " ".join(parts[: len(parts) // 2]) + "\n\n" + " ".join(parts[len(parts) // 2:])
        text += f" (Ref. #{rng.randint(1000, 99999)}.)\n" + rng.choice(QUESTIONS).format(**values)
        while len(text) < lo:
            text = text.replace("\n", f" Also, {rng.choice(SENTENCES).format(**values)}\n", 1)
        return text[:hi]

    def instruction(self, rng: random.Random) -> str:
        return rng.choice(INSTRUCTIONS).format(fn=f"{rng.choice(['running', 'word', 'tally', 'peak'])}_{rng.randint(1, 999)}")

    def text_for(self, name: str, schema: dict, rng: random.Random) -> str:
        """A field value: long and rich when unbounded, within the bounds when the schema has them."""
        if "pattern" in schema:  # a bounded (constrained-profile) field: plain ASCII words within its bounds
            m = re.search(r"\{(\d+),(\d+)\}\$?$", schema["pattern"])
            lo, hi = (int(m.group(1)), int(m.group(2))) if m else (3, 40)
            words = " ".join(rng.choice(["apples", "crates", "seven", "market", "trips", "shelf"]) for _ in range(40))
            return words[:hi].strip() if len(words[:hi].strip()) >= lo else words[:hi]
        lo, hi = int(schema.get("minLength", 1)), int(schema.get("maxLength", 4000))
        if name in ("input",):
            text = f"values = {[rng.randint(-9, 99) for _ in range(rng.randint(3, 8))]}\n# “edge case”: an empty list"
        elif name in ("instruction", "task"):
            text = self.instruction(rng)
        elif name in ("option_a", "option_b"):
            text = rng.choice(["Buy the carton of milk and go to the checkout", "Put the jar back on the shelf — "
                               "it’s “faulty”", "Wait for the 8:15 train", "Ask the café’s manager for a refund"])
        elif name in ("persona",):
            text = f"A {rng.choice(['retired', 'young', 'curious'])} {rng.choice(['baker', 'engineer', 'teacher'])} from " \
                   f"{rng.choice(['Montréal', 'Kraków', 'Osaka'])} who likes “real-world” puzzles."
        else:
            text = self.problem(rng, lo=max(lo, 200), hi=min(hi, 1500))
        return self._remember(text[:hi])

    def instance(self, schema: dict, prompt: str, rng: random.Random, name: str = "") -> Any:
        if "enum" in schema:
            return rng.choice(schema["enum"])
        kind = schema.get("type")
        if kind == "object":
            return {k: self.instance(v, prompt, rng, k) for k, v in schema.get("properties", {}).items()}
        if kind == "array":
            n = self.count(schema, prompt, rng)
            return [self.instance(schema.get("items", {"type": "string"}), prompt, rng, name) for _ in range(n)]
        if kind == "boolean":
            return rng.random() < 0.5
        if kind == "integer":
            return rng.randint(schema.get("minimum", 0), schema.get("maximum", 9))
        return self.text_for(name, schema, rng)

    def count(self, schema: dict, prompt: str, rng: random.Random) -> int:
        lo, hi = int(schema.get("minItems", 0)), int(schema.get("maxItems", 10))
        m = re.search(r"\b(\d+) new\b|\b(\d+) samples?\b", prompt)
        n = int(next(g for g in m.groups() if g)) if m else min(hi, max(lo, 3))
        if self.miscount and rng.random() < self.miscount:
            n += rng.choice([-1, 1])
        return max(lo, min(hi, n))

    # ---- tree steps ------------------------------------------------------------------------------
    @staticmethod
    def _used(prompt: str) -> str:
        m = re.search(r"already used: (.*)", prompt)
        return (m.group(1) if m else "").lower()

    def _dimension(self, prompt: str, rng: random.Random) -> tuple[str, list[str]]:
        used = self._used(prompt)
        free = [d for d in DIMENSIONS if d not in used and d not in prompt.lower().split("here are")[0]]
        dim = rng.choice(free or list(DIMENSIONS))
        return dim, DIMENSIONS[dim]

    def criterion(self, schema: dict, prompt: str, rng: random.Random) -> dict:
        """The paper's one call: a dimension and a partition of the numbered pivots into 2-4 values."""
        item = schema["properties"]["attributes"]["items"]["properties"]["samples"]["items"]
        n = len(item["enum"]) if "enum" in item else int(item.get("maximum", 10))
        dim, values = self._dimension(prompt, rng)
        k = max(2, min(len(values), 4, n))
        chosen = rng.sample(values, k)
        groups: dict[str, list[int]] = {v: [] for v in chosen}
        for i in range(1, n + 1):
            groups[chosen[(i - 1) % k] if i <= k else rng.choice(chosen)].append(i)
        return {"dimension": dim, "attributes": [{"value": v, "samples": s} for v, s in groups.items()]}

    def propose(self, schema: dict, prompt: str, rng: random.Random) -> dict:
        dim, values = self._dimension(prompt, rng)
        hi = int(schema["properties"]["values"].get("maxItems", 4))
        return {"dimension": dim, "values": rng.sample(values, min(hi, len(values), 4))}

    def coverage(self, schema: dict, prompt: str, rng: random.Random) -> dict:
        m = re.search(r"Dimension: (.*)\nValues so far: (.*)", prompt)
        dim, have = (m.group(1).strip(), [v.strip() for v in m.group(2).split(",")]) if m else ("", [])
        missing = [v for v in DIMENSIONS.get(dim, []) if v not in have]
        hi = int(schema["properties"]["new_values"].get("maxItems", 4))
        add = missing[: min(hi, 3)]
        return {"complete": len(add) == len(missing), "new_values": add}

    # ---- free text ---------------------------------------------------------------------------------
    def solution(self, prompt: str, rng: random.Random) -> str:
        """Step-by-step reasoning of 500+ characters, then the final line in the form the prompt shows."""
        a, b = rng.randint(3, 60), rng.randint(2, 12)
        steps = [
            f"Step 1 — read the problem carefully: there are {a} items at the start, and each “batch” holds {b}.",
            f"Step 2: {a} × {b} = {a * b}, so the café’s total is {a * b} before anything is sold.",
            f"Step 3: a quarter is set aside, i.e. $\\frac{{1}}{{4}} \\cdot {a * b} = {a * b / 4:g}$; the rest is "
            f"{a * b - a * b / 4:g}.",
            f"Step 4: checking with the other quantity, $\\sqrt{{{b * b}}} = {b}$, which is consistent (≈ {b}.0°).",
            f"Step 5: re-reading the question — it asks for one number — we combine the parts: {a * b} − {b} = "
            f"{a * b - b}, because the {b} items set aside at the end are not part of the “total” it wants.",
            "So every number in the story is accounted for, and nothing was counted twice; the units (dollars, "
            "metres, °C) agree with what the question asks for.",
        ]
        m = re.search(r"in this form:[ \t]*\n(.*?)\s*\Z", prompt, re.S)
        form = m.group(1) if m else (prompt.strip().splitlines() or ["<answer>"])[-1]
        if "<answer>" not in form:
            form = "<answer>"
        if "```" in form:
            answer = rng.choice(CODE).format(fn=f"solve_{rng.randint(1, 99)}")
        elif "boxed" in form:
            answer = rng.choice(["\\frac{3}{4}", "2\\sqrt{2}", "\\frac{\\pi}{6}", "17"])
        elif re.search(r"Answer:\s*<answer>", form):
            answer = rng.choice(["A", "B"])
        else:
            answer = str(a * b - b)
        return "\n".join(steps) + "\n" + form.replace("<answer>", answer)


class CapableServer(StubServer):
    """The loopback server with the capable model as its responder (model name `capable`)."""

    def __init__(self, seed: int = 0, miscount: float = 0.0, serve_first: list[str] | None = None,
                 plain_lists: bool = False, **kw: Any):
        self.capable = CapableModel(miscount=miscount, serve_first=serve_first, plain_lists=plain_lists)
        super().__init__(respond=self.capable, seed=seed, model="capable", **kw)

    @property
    def sent(self) -> list[str]:
        return self.capable.sent

    def llm_overrides(self) -> list[str]:
        """The run.py overrides that point llm=openai at this server."""
        return ["llm=openai", f"llm.model={self.model}", "llm.api_key_env=null",
                f"llm.runtime.base_urls=[{self.base_url}]"]

