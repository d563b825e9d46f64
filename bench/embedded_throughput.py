"""Embedded backend throughput: our batched generation (per-row seeded Gumbel-max sampling, per-row stop
criteria, optional xgrammar JSON masks) against plain `model.generate(do_sample=True)` on the same batch
of prompts, same model, same threads. The reference is what a user would write by hand; it has no
per-request seeds (its samples depend on the batch) and no schema support, so the ratio is the price
of those features.

Tokens/s counts useful tokens only (each row up to its eos or max_tokens), over the wall time of the
generate call, so padding steps of rows that finished early count as cost for both. Runs alternate
(ours, reference, ours, ...) and the best of --repeats is kept.

    .venv/bin/python bench/embedded_throughput.py [--batch 16] [--max-tokens 128] [--repeats 3] [--schema]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a checkout without install

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from treesynth.llm.base import ChatRequest  # noqa: E402
from treesynth.llm.embedded import EmbeddedBackend  # noqa: E402

TOPICS = ["apples", "trains", "a bakery", "savings", "a garden", "paint", "a library", "bicycles",
          "a school trip", "marbles", "a farm", "tickets", "rain", "a bookshop", "pizza", "a zoo"]
SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}}, "required": ["question"],
          "additionalProperties": False}


def requests(n: int, max_tokens: int, schema: bool) -> list[ChatRequest]:
    fmt = ' Answer as JSON: {"question": "..."}' if schema else ""
    return [ChatRequest.user(f"Write one grade-school math word problem about {TOPICS[i % len(TOPICS)]}.{fmt}",
                             temperature=0.7, max_tokens=max_tokens, seed=i, json_schema=SCHEMA if schema else None)
            for i in range(n)]


def ours(backend: EmbeddedBackend, reqs: list[ChatRequest]) -> tuple[int, float]:
    before_tokens, before_s = backend.generated_tokens, backend.generate_seconds
    results = backend._run_batch(reqs)
    assert not any(isinstance(r, BaseException) for r in results), results
    return backend.generated_tokens - before_tokens, backend.generate_seconds - before_s


def reference(backend: EmbeddedBackend, reqs: list[ChatRequest]) -> tuple[int, float]:
    m = backend.loaded()
    tok, lm = m.tok, m.lm
    texts = [tok.apply_chat_template(r.chat(), add_generation_prompt=True, tokenize=False) for r in reqs]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(backend.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = lm.generate(**enc, do_sample=True, temperature=0.7, top_p=1.0, top_k=0,
                          max_new_tokens=reqs[0].max_tokens, eos_token_id=m.eos_ids, pad_token_id=tok.pad_token_id)
    dt = time.perf_counter() - t0
    eos = set(m.eos_ids)
    useful = 0
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        useful += next((j for j, t in enumerate(row) if t in eos), len(row))
    return useful, dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--schema", action="store_true", help="ours with a JSON schema (xgrammar masks); the reference has none")
    a = ap.parse_args()
    shipped = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "llm" / "embedded.yaml").runtime)
    backend = EmbeddedBackend({"model": "embedded", "runtime": {**shipped, "batch_size": a.batch, "device": "cpu"}})
    reqs = requests(a.batch, a.max_tokens, a.schema)
    torch.manual_seed(0)
    ours(backend, reqs[:2])  # warm-up: load, compile the grammar, first-call allocations
    best = {"ours": 0.0, "reference": 0.0}
    for k in range(a.repeats):
        for name, fn in (("ours", ours), ("reference", reference)):
            tokens, seconds = fn(backend, reqs)
            rate = tokens / seconds
            best[name] = max(best[name], rate)
            print(f"{name:9s} run {k}: {tokens} tokens in {seconds:.2f} s = {rate:.1f} tok/s")
    print(f"threads={torch.get_num_threads()} batch={a.batch} max_tokens={a.max_tokens} schema={a.schema}")
    print(f"best: ours {best['ours']:.1f} tok/s, reference {best['reference']:.1f} tok/s, "
          f"ours/reference = {best['ours'] / best['reference']:.3f}")


if __name__ == "__main__":
    main()
