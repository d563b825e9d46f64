"""Task specs: what the data space is, what one sample looks like, how a record's prompt and completion
are built, and which answer format the completion must end in (the one the evaluation extracts).

A task is ONE YAML file in conf/task/ (selected with `task=<name>`; docs/ARCHITECTURE.md lists every
key): no code change is needed to add one. The YAML says only what the task is; how its fields are
bounded and how the teacher answers come from the generator's and the teacher's capability profiles
(conf/profiles.yaml, treesynth/profiles.py). `task_of(cfg)` builds the `TaskSpec` every method and the
teacher step read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from omegaconf import DictConfig, OmegaConf

from treesynth.errors import TreesynthError
from treesynth.llm.base import ChatRequest, Completion
from treesynth.profiles import Profile, profile_for
from treesynth.prompts import fill, render
from treesynth.tasks.plain import parse_listed

ANSWER_KINDS = ("number", "expression", "code", "choice")


@dataclass(frozen=True)
class SampleField:
    """One field the generator writes for a sample (e.g. `question`; code_alpaca: `instruction`, `input`)."""

    name: str
    description: str
    schema: dict  # JSON schema of the value: the profile's string bounds for its size, or an enum
    required: bool = True  # optional fields may be empty strings


@dataclass(frozen=True)
class AnswerSpec:
    """How a completion ends: `format` is the regex it must end in (what the evaluation extracts; a named
    group `answer` marks the answer itself), `template` writes a final answer in that format, `kind`
    chooses the bounded schema a constrained teacher fills. `from_sample` pins the answer to a sample
    field (SimpleToM: the generated key), checked in both profiles."""

    format: str
    template: str
    kind: str
    choices: tuple[str, ...] = ()
    from_sample: str | None = None

    def instruction(self) -> str:
        """The final line shown to a free-text teacher, e.g. `#### <answer>`."""
        return fill(self.template, {"answer": "<answer>"})


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str  # the whole data space (the tree's root)
    sample: str  # what one sample is
    fields: tuple[SampleField, ...]
    prompt: tuple[str, ...]  # parts of the record prompt; a part is dropped if a field in it is empty
    solution: str  # instructions for the teacher ({prompt} is the record prompt)
    answer: AnswerSpec
    benchmarks: tuple[str, ...]
    profile: Profile  # the generator's
    teacher_profile: Profile
    role: str = ""  # the role line that opens generation prompts ("You are a math teacher ...")
    criteria: tuple[str, ...] = ()  # what every sample must satisfy (the authors' numbered lists)
    first_level: dict | None = None  # {dimension: str, values: [str, ...]}: a fixed first split
    human: dict | None = None  # where the real training set is (read by the `human` method)
    extra: dict = field(default_factory=dict)  # any other keys of the YAML, untouched

    @property
    def answer_format(self) -> str:
        return self.answer.format

    # ---- samples (generator side) -------------------------------------------------------------
    def sample_schema(self, k: int) -> dict:
        """Schema of one generation call that asks for k samples. It accepts 1 to 2k items (a model may
        miscount): extra items are dropped by `parse_samples`, missing ones refilled by the stage."""
        item = {
            "type": "object",
            "properties": {f.name: f.schema for f in self.fields},
            "required": [f.name for f in self.fields],
            "additionalProperties": False,
        }
        lo, hi = 1, (k if k == 1 else 2 * k)
        return {
            "title": "samples",
            "type": "object",
            "properties": {"samples": {"type": "array", "items": item, "minItems": lo, "maxItems": hi}},
            "required": ["samples"],
            "additionalProperties": False,
        }

    def sample_max_tokens(self, k: int) -> int:
        """Tokens for k samples: the profile's per-sample budget, or (bounded fields) enough for every
        field at its maximum length (about 3 characters a token), so a bounded answer is never cut off."""
        if self.profile.sample_tokens:
            return k * self.profile.sample_tokens + 16
        per = 0
        for f in self.fields:
            m = re.search(r"\{\d*,(\d+)\}\$?$", f.schema.get("pattern", ""))
            chars = int(m.group(1)) if m else int(f.schema.get("maxLength", 8 if "enum" in f.schema else 400))
            per += chars // 3 + 8  # + key, quotes, separators
        return k * per + 8

    def generation_prompt(self, attributes: list[tuple[str, str]], k: int) -> str:
        """The one base prompt of every generating method: TreeSynth adds its path's attributes; temperature
        sampling is the same prompt without them (as in the paper)."""
        criteria = self.criteria if self.profile.prompt_criteria else ()
        return render(
            "generate",
            role=f"{self.role}\n\n" if self.role and self.profile.prompt_criteria else "",
            description=self.description,
            sample=self.sample,
            k=str(k),
            criteria=("Requirements:\n" + "\n".join(f"{i}. {c}" for i, c in enumerate(criteria, 1)) + "\n\n")
            if criteria else "",
            attributes=("Every sample must have ALL of these attributes:\n" + format_attributes(attributes) + "\n\n")
            if attributes else "",
            fields="\n".join(f"- {f.name}: {f.description}" for f in self.fields),
        )

    def sample_request(
        self, attributes: list[tuple[str, str]], k: int, *, seed: int, temperature: float, max_tokens: int
    ) -> ChatRequest:
        """The request that asks for k samples inside the subspace given by (dimension, value) pairs."""
        return ChatRequest.user(self.generation_prompt(attributes, k), temperature=temperature,
                                max_tokens=max_tokens, seed=seed, json_schema=self.sample_schema(k))

    def parse_samples(self, c: Completion, k: int | None = None) -> list[dict[str, str]]:
        """Valid samples of one generation call (invalid or empty ones dropped; at most k kept). An answer
        that is not JSON at all (a server that ignored the schema) is read as a numbered plain-text list."""
        if c.ok and isinstance(c.data, dict):
            raw = c.data.get("samples", [])
        elif c.finish_reason == "stop" and (c.error or "").startswith("invalid JSON") and c.text.strip():
            raw = parse_listed(c.text, [f.name for f in self.fields])
        else:
            return []
        out = []
        for s in raw:
            if not isinstance(s, dict):
                continue
            s = {f.name: str(s.get(f.name, "")).strip() for f in self.fields}
            if all(s[f.name] for f in self.fields if f.required) and self._choices_ok(s):
                out.append(s)
        return out if k is None else out[:k]

    def _choices_ok(self, s: dict[str, str]) -> bool:
        return all(s[f.name] in f.schema["enum"] for f in self.fields if "enum" in f.schema and s[f.name])

    def build_prompt(self, sample: dict[str, str]) -> str:
        """The record's `prompt`: the prompt parts whose fields are all non-empty, joined by blank lines."""
        parts = []
        for part in self.prompt:
            names = re.findall(r"\{(\w+)\}", part)
            if all(str(sample.get(n, "")).strip() for n in names):
                parts.append(fill(part, {n: str(sample[n]).strip() for n in names}))
        return "\n\n".join(parts)

    # ---- completions (teacher side) ------------------------------------------------------------
    @property
    def structured(self) -> bool:
        return self.teacher_profile.response_mode == "structured"

    @property
    def answer_key(self) -> str:
        """The structured teacher's answer field: `code` for code (a small model writes code under that
        name more readily), else `answer`."""
        return "code" if self.answer.kind == "code" else "answer"

    def render_answer(self, reasoning: str | None, answer: str) -> str:
        """A completion from its parts: reasoning, then the answer written with the task's template."""
        final = fill(self.answer.template, {"answer": answer.strip()})
        return f"{reasoning.strip()}\n{final}" if reasoning else final

    def _answer_schema(self, sample: dict[str, str]) -> dict:
        """The schema of a final answer under the teacher's profile, by the task's answer kind."""
        p, a = self.teacher_profile, self.answer
        if a.from_sample:
            return {"enum": [sample[a.from_sample]]} if sample.get(a.from_sample) else {"enum": list(a.choices)}
        if a.kind == "choice" or p.answers.get(a.kind) is None:
            return {"enum": list(a.choices)}
        return dict(p.answers[a.kind])

    def response_schema(self, sample: dict[str, str]) -> dict:
        """Structured (constrained) teacher: bounded reasoning, then the answer by its kind."""
        p = self.teacher_profile
        props = {} if self.answer.kind == "code" else {"reasoning": p.string_schema(*p.reasoning_chars, charset=p.charset)}
        props[self.answer_key] = self._answer_schema(sample)
        return {"title": "response", "type": "object", "properties": props, "required": list(props),
                "additionalProperties": False}

    def final_answer_request(self, prompt: str, sample: dict[str, str], work: str, *, seed: int) -> ChatRequest | None:
        """A free-text teacher whose answers never ended in the format: one call for only its final answer
        (the profile's `final_answer_call`), written after its own text by `with_final_answer`. None when
        the profile or the answer kind has no such call (structured teachers, code)."""
        p = self.teacher_profile
        if self.structured or not p.final_answer_call or self.answer.kind == "code" or not work.strip():
            return None
        schema = {"title": "final_answer", "type": "object", "properties": {"answer": self._answer_schema(sample)},
                  "required": ["answer"], "additionalProperties": False}
        text = render("final_answer", solution=fill(self.solution, {"prompt": prompt}), work=work.strip())
        return ChatRequest.user(text, temperature=0.0, max_tokens=96, seed=seed, json_schema=schema)

    def with_final_answer(self, work: str, c: Completion, sample: dict[str, str] | None = None) -> str | None:
        if not c.ok or not isinstance(c.data, dict) or not str(c.data.get("answer", "")).strip():
            return None
        return self._checked(self.render_answer(work, str(c.data["answer"])), sample)

    def response_request(self, prompt: str, sample: dict[str, str], *, seed: int) -> ChatRequest:
        p = self.teacher_profile
        text = render(
            "respond_structured" if self.structured else "respond_free",
            solution=fill(self.solution, {"prompt": prompt}),
            fields="\n".join(f"- {n}" for n in self.response_schema(sample)["properties"]) if self.structured else "",
            final=self.answer.instruction(),
        )
        return ChatRequest.user(
            text, temperature=p.response_temperature, max_tokens=p.response_max_tokens, seed=seed,
            json_schema=self.response_schema(sample) if self.structured else None,
        )

    def completion_from(self, c: Completion, sample: dict[str, str] | None = None) -> str | None:
        """The completion text if it ends in the answer format (and, with `from_sample`, gives the sample's
        answer), else None (the caller re-samples)."""
        if not c.ok:
            return None
        if self.structured:
            if not isinstance(c.data, dict) or self.answer_key not in c.data:
                return None
            text = self.render_answer(c.data.get("reasoning"), str(c.data[self.answer_key]))
        else:
            text = c.text.strip()
        return self._checked(text, sample)

    def _checked(self, text: str, sample: dict[str, str] | None) -> str | None:
        if not self.ends_in_answer_format(text):
            return None
        pinned = self.answer.from_sample
        if pinned and sample and sample.get(pinned) and self.final_answer(text) != sample[pinned]:
            return None
        return text

    def _ending(self, text: str) -> re.Match | None:
        """The answer format where it ends the text (trailing whitespace allowed)."""
        return re.search(f"(?:{self.answer.format})\\s*\\Z", text, re.S)

    def final_answer(self, text: str) -> str | None:
        """The `answer` group of the answer format at the end of text (the whole match without one)."""
        m = self._ending(text)
        if m is None:
            return None
        return m.group("answer") if "answer" in m.re.groupindex else m.group(0)

    def ends_in_answer_format(self, text: str) -> bool:
        return self._ending(text) is not None


def format_attributes(attributes: list[tuple[str, str]]) -> str:
    if not attributes:
        return "(no constraint: the whole space)"
    return "\n".join(f"- {d}: {v}" for d, v in attributes)


REQUIRED = ("name", "description", "sample", "fields", "prompt", "solution", "answer", "benchmarks")
KNOWN = {*REQUIRED, "role", "criteria", "first_level", "human"}


def _fields(name: str, d: dict, profile: Profile) -> list[SampleField]:
    out = []
    for fname, f in d["fields"].items():
        f = f if isinstance(f, dict) else {"description": str(f)}
        required = bool(f.get("required", True))
        if f.get("choices"):
            schema = {"enum": [str(c) for c in f["choices"]]}
        else:
            size = str(f.get("size", "text")) if required else "optional"
            schema = profile.text_schema(size)
        out.append(SampleField(fname, str(f.get("description", fname)), schema, required))
    return out


def _answer(name: str, a: Any, sample_names: set[str]) -> AnswerSpec:
    if not isinstance(a, dict) or not a.get("format") or not a.get("template"):
        raise TreesynthError(f"task {name!r}: answer needs format (a regex) and template (e.g. '#### {{answer}}')")
    try:
        compiled = re.compile(a["format"])
    except re.error as e:
        raise TreesynthError(f"task {name!r}: answer.format is not a valid regex ({e})") from None
    kind = a.get("kind", "expression")
    if kind not in ANSWER_KINDS:
        raise TreesynthError(f"task {name!r}: answer.kind must be one of {ANSWER_KINDS}, got {kind!r}")
    if "{answer}" not in a["template"]:
        raise TreesynthError(f"task {name!r}: answer.template must contain {{answer}}")
    pinned = a.get("from_sample")
    if pinned and pinned not in sample_names:
        raise TreesynthError(f"task {name!r}: answer.from_sample={pinned!r} is not a sample field")
    if pinned and "answer" not in compiled.groupindex:
        raise TreesynthError(f"task {name!r}: answer.from_sample needs a named group (?P<answer>...) in answer.format")
    choices = tuple(str(c) for c in a.get("choices") or ())
    if kind == "choice" and not choices and not pinned:
        raise TreesynthError(f"task {name!r}: answer.kind=choice needs answer.choices or answer.from_sample")
    return AnswerSpec(a["format"], a["template"], kind, choices, pinned)


def load_task(cfg: DictConfig | dict, profile: Profile, teacher_profile: Profile | None = None) -> TaskSpec:
    """Validate a task config (conf/task/<name>.yaml) into a TaskSpec under the generator's (and the
    teacher's) profile; bad input -> one-line error."""
    d: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    name = d.get("name", "?")
    # benchmarks may be [] (a task nobody evaluates yet); everything else must be non-empty
    missing = [k for k in REQUIRED if d.get(k) is None or (k != "benchmarks" and not d.get(k))]
    if missing:
        raise TreesynthError(f"task {name!r}: missing {missing} in conf/task/{name}.yaml")
    fields = _fields(name, d, profile)
    sample_names = {f.name for f in fields}
    prompt = tuple([d["prompt"]] if isinstance(d["prompt"], str) else d["prompt"])
    for part in prompt:
        unknown = set(re.findall(r"\{(\w+)\}", part)) - sample_names
        if unknown:
            raise TreesynthError(f"task {name!r}: prompt uses {sorted(unknown)}, which are not in fields")
    answer = _answer(name, d["answer"], sample_names)
    if answer.from_sample and not answer.choices:  # the pinned field's own choices (SimpleToM: A, B)
        pinned = next(f for f in fields if f.name == answer.from_sample)
        answer = replace(answer, choices=tuple(pinned.schema.get("enum", ())))
    first = d.get("first_level")
    if first is not None and (not first.get("dimension") or len(first.get("values") or []) < 2):
        raise TreesynthError(f"task {name!r}: first_level needs a dimension and at least 2 values")
    criteria = d.get("criteria") or []
    if not isinstance(criteria, list):
        raise TreesynthError(f"task {name!r}: criteria must be a list of strings")
    return TaskSpec(
        name=name,
        description=d["description"].strip(),
        sample=d["sample"].strip(),
        fields=tuple(fields),
        prompt=prompt,
        solution=d["solution"].strip(),
        answer=answer,
        benchmarks=tuple(d["benchmarks"]),
        profile=profile,
        teacher_profile=teacher_profile or profile,
        role=str(d.get("role") or "").strip(),
        criteria=tuple(str(c).strip() for c in criteria),
        first_level=first,
        human=d.get("human"),
        extra={k: v for k, v in d.items() if k not in KNOWN},
    )


def task_of(cfg: DictConfig) -> TaskSpec:
    """The run's task under its generator's profile and its teacher's (cfg.teacher; null = the generator)."""
    teacher = cfg.get("teacher")
    return load_task(cfg.task, profile_for(cfg), profile_for(cfg, teacher) if teacher is not None else None)
