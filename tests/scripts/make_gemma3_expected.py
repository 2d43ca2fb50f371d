#!/usr/bin/env python3
"""Record transformers' reference outputs for Gemma 3 270M (Q4_K_M GGUF).

Needs models/gemma-3-270m-q4_k_m.gguf (run tests/scripts/fetch-models.sh).
transformers dequantises the GGUF to float32 (subtracting the 1 llama.cpp's
converter added to every norm weight) and runs it in eager attention; its
tokenizer is built from the GGUF's SentencePiece vocabulary (scores, byte
fallback, no space prefix). We record, into tests/fixtures/gemma3-270m/:
- tokenizer cases: ids with the BOS transformers adds, and decoded text;
- prompts (plain text: this is the base model, its GGUF has no chat
  template), one longer than the 512-token sliding window: the prompt ids,
  the top 256 of the last position's logits, the whole last-position logits
  of the first prompt (logits_0.bin, little-endian f32), and a greedy
  continuation with each step's top-2 margin.

Run with the fixtures venv (see requirements-fixtures.txt):
    python tests/scripts/make_gemma3_expected.py
"""

import hashlib
import importlib.metadata
import json
import os
import sys

import numpy as np
import torch

import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

TRANSFORMERS_VERSION = "5.23.0"
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
MODELS_DIR = os.path.join(ROOT, "models")
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "gemma3-270m")
TOP_K = 256

LONG = (
    "The lighthouse keeper kept a log of every ship that passed the point. "
    "Some nights the fog was so thick that the lamp seemed to light only the mist, "
    "and on those nights he rang the bell every minute until dawn. "
)
PROMPTS = [
    ("The capital of France is", 24),
    ("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n", 24),
    ("Once upon a time, in a village by the sea, there lived", 24),
    # Past the sliding window (512): the local layers must forget the start.
    (LONG * 14 + "The keeper's log recorded", 8),
]

TEXT_CASES = [
    "Small models can still write clear sentences about the weather.",
    "def add(a, b):\n    return a + b\n\nfor i in range(3):\n\tprint(add(i, 1))\n",
    "Call 1234567 today, or compute pi = 3.14159 and 2^10 = 1024.",
    "Crème brûlée in Zürich, 東京の天気は晴れ, and a party 🎉🚀!",
    "  two  spaces,\n\n\nthree newlines and   trailing   ",
    "<start_of_turn>user\nhello there<end_of_turn>\n<start_of_turn>model\n",
    "\u00a0non-breaking\u2009thin\u200bzero-width \x01 control",
]


def f32(x):
    return float(np.float32(x))


def greedy(model, prompt_ids, n_new):
    """Argmax loop with the KV cache; returns ids and top1-top2 margins."""
    out = model(input_ids=torch.tensor([prompt_ids]), use_cache=True)
    past, logits = out.past_key_values, out.logits[0, -1]
    first = logits.clone()
    ids, margins = [], []
    for _ in range(n_new):
        top2 = torch.topk(logits, 2)
        nxt = int(top2.indices[0])
        ids.append(nxt)
        margins.append(f32(top2.values[0] - top2.values[1]))
        out = model(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[0, -1]
    return first, ids, margins


def main():
    have = importlib.metadata.version("transformers")
    if have != TRANSFORMERS_VERSION:
        sys.exit(f"need transformers {TRANSFORMERS_VERSION}, have {have}")
    path = os.path.join(MODELS_DIR, GGUF_NAME)
    if not os.path.isfile(path):
        sys.exit(f"{path} missing: run tests/scripts/fetch-models.sh first")
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digest != GGUF_SHA256:
        sys.exit(f"{path} has sha256 {digest}, expected {GGUF_SHA256}")
    torch.set_grad_enabled(False)

    tok = AutoTokenizer.from_pretrained(MODELS_DIR, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(MODELS_DIR, gguf_file=GGUF_NAME, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    os.makedirs(OUT_DIR, exist_ok=True)

    text_cases = []
    for text in TEXT_CASES:
        ids = tok(text)["input_ids"]
        text_cases.append(dict(text=text, ids=ids, decoded=tok.decode(ids, skip_special_tokens=True)))

    prompts = []
    for i, (text, n_new) in enumerate(PROMPTS):
        ids = tok(text)["input_ids"]
        logits, gen, margins = greedy(model, ids, n_new)
        top = torch.topk(logits, TOP_K)
        entry = dict(
            text=text,
            prompt_ids=ids,
            top_ids=top.indices.tolist(),
            top_logits=[f32(v) for v in top.values],
            greedy_ids=gen,
            greedy_margins=margins,
        )
        if i == 0:
            entry["logits_file"] = "logits_0.bin"
            logits.numpy().astype("<f4").tofile(os.path.join(OUT_DIR, "logits_0.bin"))
        prompts.append(entry)
        print(f"prompt {i}: {len(ids)} tokens, greedy {tok.decode(gen)!r}, min margin {min(margins):.3f}")

    expected = dict(
        transformers=transformers.__version__,
        torch=torch.__version__,
        gguf=GGUF_NAME,
        gguf_sha256=GGUF_SHA256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        sliding_window=model.config.sliding_window,
        layer_types=model.config.layer_types,
        text_cases=text_cases,
        prompts=prompts,
    )
    with open(os.path.join(OUT_DIR, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
