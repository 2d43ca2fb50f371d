#!/usr/bin/env python3
"""Record transformers' reference outputs for SmolLM2-135M-Instruct (Q4_1 GGUF).

Needs models/SmolLM2-135M-Instruct.Q4_1.gguf (run tests/scripts/fetch-models.sh).
transformers dequantises the GGUF to float32 and runs it in eager attention; we
record, for a few chat prompts, the templated prompt ids, the full last-position
logits (tests/fixtures/smollm2/logits_<i>.bin, little-endian f32), the top-10
of those logits, and a 40-token greedy continuation with the top1-top2 margin of
every step. Plus tokenizer cases and the special token ids.

transformers builds the tokenizer from the GGUF with a plain ByteLevel
pre-tokenizer, while llama.cpp's "smollm" pre-type first splits every digit
(\\p{N}). Each text case and prompt therefore also carries `ids_split_digits`,
the encoding with Digits(individual_digits=True) + ByteLevel over the same
vocab/merges; the script prints whether the two ever differ.

Run with the fixtures venv (see requirements-fixtures.txt):
    python tests/scripts/make_smollm2_expected.py
"""

import importlib.metadata
import json
import os
import sys

import numpy as np
import torch
from tokenizers import pre_tokenizers

import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

TRANSFORMERS_VERSION = "5.23.0"
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
MODELS_DIR = os.path.join(ROOT, "models")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "smollm2")
N_GREEDY = 40
TOP_K = 10

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Write a haiku about the sea."},
    ],
    [{"role": "user", "content": "What is 12 times 7? Reply with the number only."}],
    [
        {"role": "user", "content": "Hi! My name is Ana and I grow tomatoes."},
        {"role": "assistant", "content": "Nice to meet you, Ana! Tomatoes are a great crop. How can I help?"},
        {"role": "user", "content": "What is my name, and what do I grow?"},
    ],
]

TEXT_CASES = [
    "Small models can still write clear sentences about the weather.",
    "def add(a, b):\n    return a + b\n\nfor i in range(3):\n\tprint(add(i, 1))\n",
    "Call 1234567 today, or compute pi = 3.14159 and 2^10 = 1024.",
    "Crème brûlée in Zürich, 東京の天気は晴れ, and a party 🎉🚀!",
    "  two  spaces,\n\n\nthree newlines and   trailing   ",
    "<|im_start|>user\nhello there<|im_end|>\n",
]


def f32(x):
    return float(np.float32(x))


def split_digits_encoder(tok):
    """A copy of the backend tokenizer with llama.cpp's 'smollm' digit split."""
    backend = tok.backend_tokenizer
    clone = type(backend).from_str(backend.to_str())
    clone.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    return lambda text: clone.encode(text, add_special_tokens=False).ids


def greedy(model, prompt_ids, n_new):
    """Manual argmax loop with the KV cache; returns ids and top1-top2 margins."""
    out = model(input_ids=torch.tensor([prompt_ids]), use_cache=True)
    past, logits = out.past_key_values, out.logits[0, -1]
    ids, margins = [], []
    for _ in range(n_new):
        top2 = torch.topk(logits, 2)
        nxt = int(top2.indices[0])
        ids.append(nxt)
        margins.append(f32(top2.values[0] - top2.values[1]))
        out = model(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[0, -1]
    # Cross-check with one uncached pass over the whole sequence.
    full = model(input_ids=torch.tensor([prompt_ids + ids]), use_cache=False).logits[0]
    again = full[len(prompt_ids) - 1:-1].argmax(-1).tolist()
    if again != ids:
        print(f"  warning: cached and uncached greedy differ: {ids} vs {again}", file=sys.stderr)
    return ids, margins


def main():
    have = importlib.metadata.version("transformers")
    if have != TRANSFORMERS_VERSION:
        sys.exit(f"need transformers {TRANSFORMERS_VERSION}, have {have}")
    path = os.path.join(MODELS_DIR, GGUF_NAME)
    if not os.path.isfile(path):
        sys.exit(f"{path} missing: run tests/scripts/fetch-models.sh first")
    torch.manual_seed(0)
    torch.set_grad_enabled(False)

    tok = AutoTokenizer.from_pretrained(MODELS_DIR, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(
        MODELS_DIR, gguf_file=GGUF_NAME, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    enc_split = split_digits_encoder(tok)
    os.makedirs(OUT_DIR, exist_ok=True)

    differ = []
    text_cases = []
    for text in TEXT_CASES:
        ids = tok.encode(text, add_special_tokens=False)
        alt = enc_split(text)
        if alt != ids:
            differ.append(text)
        text_cases.append({"text": text, "ids": ids, "ids_split_digits": alt})

    prompts = []
    for i, msgs in enumerate(PROMPTS):
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        enc = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
        prompt_ids = list(enc["input_ids"] if hasattr(enc, "keys") else enc)
        assert prompt_ids == tok.encode(text, add_special_tokens=False), i
        alt = enc_split(text)
        if alt != prompt_ids:
            differ.append(text)

        logits = model(input_ids=torch.tensor([prompt_ids]), use_cache=False).logits[0, -1]
        logits = logits.float().numpy().astype("<f4")
        assert logits.shape == (model.config.vocab_size,) and np.all(np.isfinite(logits))
        bin_name = f"logits_{i}.bin"
        logits.tofile(os.path.join(OUT_DIR, bin_name))
        order = np.argsort(-logits, kind="stable")[:TOP_K]
        top = [[int(j), f32(logits[j])] for j in order]

        greedy_ids, margins = greedy(model, prompt_ids, N_GREEDY)
        assert greedy_ids[0] == top[0][0]
        prompts.append({
            "messages": msgs,
            "prompt_text": text,
            "prompt_ids": prompt_ids,
            "prompt_ids_split_digits": alt,
            "logits_file": bin_name,
            "top10": top,
            "greedy_ids": greedy_ids,
            "greedy_margins": margins,
            "greedy_text": tok.decode(greedy_ids),
        })
        print(f"prompt {i}: {len(prompt_ids)} ids, top1 {top[0]}, min margin {min(margins):.4f}, "
              f"greedy {tok.decode(greedy_ids)!r}")

    cfg = model.config
    expected = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "gguf": importlib.metadata.version("gguf"),
        "model_file": GGUF_NAME,
        "model_sha256": GGUF_SHA256,
        "dtype": "float32",
        "attn_implementation": "eager",
        "vocab_size": cfg.vocab_size,
        "tokenizer_len": len(tok),
        "bos_token": tok.bos_token, "bos_token_id": tok.bos_token_id,
        "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id,
        "pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id,
        "unk_token": tok.unk_token, "unk_token_id": tok.unk_token_id,
        "special_tokens": {str(k): v.content for k, v in sorted(tok.added_tokens_decoder.items())},
        "chat_template": tok.chat_template,
        "config": {
            "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
            "rms_norm_eps": cfg.rms_norm_eps, "rope_parameters": cfg.rope_parameters,
            "tie_word_embeddings": cfg.tie_word_embeddings, "max_position_embeddings": cfg.max_position_embeddings,
        },
        "n_greedy": N_GREEDY,
        "prompts": prompts,
        "text_cases": text_cases,
    }
    with open(os.path.join(OUT_DIR, "expected.json"), "w") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
        f.write("\n")
    if differ:
        print(f"note: digit-splitting changes the ids of {len(differ)} string(s): {differ!r}")
    else:
        print("note: digit-splitting gives the same ids for every text case and prompt")
    for name in sorted(os.listdir(OUT_DIR)):
        print(f"  {name}: {os.path.getsize(os.path.join(OUT_DIR, name))} bytes")


if __name__ == "__main__":
    main()
