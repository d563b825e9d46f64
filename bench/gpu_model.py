"""The GPU check's model and data (bench/gpu_check.py): a GSM8K-style fixture written for the check, a
byte-level BPE tokenizer trained on this repository's prompt texts, and a random-weight Llama of a chosen
shape, saved as a normal Hugging Face directory. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# Llama shapes (hidden, intermediate, layers, heads, kv heads). The vocabulary is the trained tokenizer's.
SHAPES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (64, 128, 2, 4, 2),  # CPU smoke: seconds
    "135m": (576, 1536, 30, 9, 3),  # SmolLM2-135M's layers and widths (~107M parameters with this vocabulary)
    "1b": (2048, 8192, 16, 32, 8),  # Llama-3.2-1B's shape
}


# A GSM8K-style fixture, written for this check (never the benchmark's own items): the `human` method
# trains on TRAIN and lm-eval scores TEST, both read from a local data dir as on an offline node.
TRAIN = [
    ("Mia has 4 red pens and 7 blue pens. She gives away 3 pens. How many pens does she have left?",
     "Mia has 4 + 7 = <<4+7=11>>11 pens.\nAfter giving 3 away she has 11 - 3 = <<11-3=8>>8 pens.\n#### 8"),
    ("A bus carries 32 people. At the first stop 9 get off and 5 get on. How many people are on the bus now?",
     "After 9 get off there are 32 - 9 = <<32-9=23>>23.\nThen 5 get on: 23 + 5 = <<23+5=28>>28.\n#### 28"),
    ("Leo bakes 3 trays of cookies with 12 cookies each and eats 4. How many cookies remain?",
     "He bakes 3 * 12 = <<3*12=36>>36 cookies.\n36 - 4 = <<36-4=32>>32 remain.\n#### 32"),
    ("A rope is 45 meters long. It is cut into 5 equal pieces. How long is each piece?",
     "Each piece is 45 / 5 = <<45/5=9>>9 meters.\n#### 9"),
    ("Nora earns 15 dollars an hour and works 6 hours on Saturday. How much does she earn?",
     "She earns 15 * 6 = <<15*6=90>>90 dollars.\n#### 90"),
    ("A garden has 8 rows of tulips with 14 tulips in each row. How many tulips are there?",
     "There are 8 * 14 = <<8*14=112>>112 tulips.\n#### 112"),
    ("Sam had 120 stickers and put them equally into 8 albums. How many stickers went into each album?",
     "Each album got 120 / 8 = <<120/8=15>>15 stickers.\n#### 15"),
    ("A shop sold 23 kites on Monday and twice as many on Tuesday. How many kites did it sell in both days?",
     "On Tuesday it sold 2 * 23 = <<2*23=46>>46.\nIn total 23 + 46 = <<23+46=69>>69 kites.\n#### 69"),
    ("Ivy runs 3 km every morning for 2 weeks. How many kilometers does she run?",
     "Two weeks have 2 * 7 = <<2*7=14>>14 days.\nShe runs 14 * 3 = <<14*3=42>>42 km.\n#### 42"),
    ("A box of 24 apples costs 6 dollars. What does one apple cost in cents?",
     "One apple costs 6 / 24 = <<6/24=0.25>>0.25 dollars, which is 25 cents.\n#### 25"),
    ("Tom reads 18 pages a day. How many days does he need for a book of 126 pages?",
     "He needs 126 / 18 = <<126/18=7>>7 days.\n#### 7"),
    ("A farmer has 56 hens and sells a quarter of them. How many hens does he keep?",
     "He sells 56 / 4 = <<56/4=14>>14 hens.\nHe keeps 56 - 14 = <<56-14=42>>42.\n#### 42"),
]
TEST = [
    ("Ana buys 5 notebooks at 3 dollars each and a bag for 12 dollars. How much does she spend?",
     "Notebooks cost 5 * 3 = <<5*3=15>>15.\nShe spends 15 + 12 = <<15+12=27>>27 dollars.\n#### 27"),
    ("A class of 28 students splits into teams of 4. How many teams are there?",
     "There are 28 / 4 = <<28/4=7>>7 teams.\n#### 7"),
    ("Ben has 50 marbles, loses 12 and then finds 7. How many marbles does he have?",
     "50 - 12 = <<50-12=38>>38, and 38 + 7 = <<38+7=45>>45.\n#### 45"),
    ("A car uses 6 liters of fuel per 100 km. How many liters does it use for 350 km?",
     "It uses 6 * 350 / 100 = <<6*350/100=21>>21 liters.\n#### 21"),
    ("Zoe saves 9 dollars a week. How many weeks until she has 81 dollars?",
     "She needs 81 / 9 = <<81/9=9>>9 weeks.\n#### 9"),
    ("A baker makes 144 rolls and packs them in bags of 12. How many bags does he fill?",
     "He fills 144 / 12 = <<144/12=12>>12 bags.\n#### 12"),
    ("A pool holds 900 liters and a hose fills 30 liters a minute. How many minutes does filling take?",
     "It takes 900 / 30 = <<900/30=30>>30 minutes.\n#### 30"),
    ("Kim has 3 times as many shells as Lee, who has 16. How many shells do they have together?",
     "Kim has 3 * 16 = <<3*16=48>>48.\nTogether 48 + 16 = <<48+16=64>>64.\n#### 64"),
]

CHAT_TEMPLATE = (  # ChatML, as SmolLM2 and Qwen use; TRL's completion-only loss relies on prefix stability
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def write_fixture(data_dir: Path) -> None:
    from treesynth.io import write_jsonl

    for name, items in (("train", TRAIN), ("test", TEST)):
        write_jsonl(data_dir / "gsm8k" / f"{name}.jsonl", [{"question": q, "answer": a} for q, a in items])


def tokenizer_corpus() -> list[str]:
    """What the model will read: our prompt templates, task YAMLs and the fixture."""
    texts = [p.read_text() for p in sorted((REPO / "treesynth" / "prompts").glob("*.txt"))]
    texts += [p.read_text() for p in sorted((REPO / "conf" / "task").glob("*.yaml"))]
    texts += [f"{q}\n{a}" for q, a in TRAIN + TEST]
    return texts


def build_tokenizer(vocab_size: int) -> Any:
    """A byte-level BPE (every byte is a token, so any text and any JSON grammar can be encoded) with
    SmolLM2's special tokens and ChatML template; trained in about a second, no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(out: Path, shape: str) -> dict[str, Any]:
    """Random-weight Llama of `shape` + tokenizer, saved as a normal HF directory (fp32 weights)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    tok = build_tokenizer(2048)
    hidden, inter, layers, heads, kv = SHAPES[shape]
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"shape": shape, "params": sum(p.numel() for p in model.parameters()), "vocab": len(tok),
            "hidden": hidden, "layers": layers}


