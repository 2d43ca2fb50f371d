#!/usr/bin/env python3
"""Generate tiny random Hugging Face model folders with reference outputs.

Writes tests/fixtures/tiny-llama/ and tests/fixtures/tiny-qwen2/, each holding
config.json, model.safetensors (float32), tokenizer.json, tokenizer_config.json
(with a ChatML chat_template) and expected.json with transformers' own logits,
greedy continuation, tokenizations and rendered chat prompts. tiny-llama also
gets config.hub-style.json, the same config spelled with the classic
`rope_theta` + `rope_scaling` keys.

Both models share one byte-level BPE tokenizer (vocab 384) trained here on a few
paragraphs of text. Its tokenizer.json uses the same pipeline that transformers'
Qwen2Tokenizer rebuilds for itself (NFC normaliser, regex Split, ByteLevel
without regex), so transformers and a plain tokenizer.json reader agree; the
script asserts that agreement.

Run with the fixtures venv (see requirements-fixtures.txt):
    python tests/scripts/make_tiny_models.py
"""

import importlib.metadata
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

import transformers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

TRANSFORMERS_VERSION = "5.23.0"
TORCH_VERSION = "2.15.0"
SEED = 12  # picked so every greedy step of both models has a top1-top2 margin > 0.015
VOCAB_SIZE = 384
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BOS, EOS, PAD, UNK = "<|endoftext|>", "<|im_end|>", "<|endoftext|>", "<|endoftext|>"

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")

# Same split pattern as Qwen2's tokenizer (letters/numbers/punctuation/space runs).
SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# ChatML. Renders `<|im_start|>role\ncontent<|im_end|>\n` per message and, when
# asked, opens an assistant turn.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

# Training text for the toy tokenizer. Written for this script.
CORPUS = [
    "The lighthouse keeper climbed the stairs every evening at seven. He wound the "
    "clockwork, trimmed the wick, and wrote the weather in a small green book. On "
    "clear nights the beam reached eleven miles out to sea; in fog it reached "
    "almost nothing, and he rang the bell instead.",
    "Bread needs four things: flour, water, salt and time. Mix 500 grams of flour "
    "with 350 grams of water, add 10 grams of salt and a pinch of yeast, then let "
    "the dough rest overnight. In the morning, shape it gently and bake it for 40 "
    "minutes in a very hot oven.",
    "A river does not run in a straight line. It bends around hard rock, cuts "
    "through soft clay, and slowly moves its banks from one side of the valley to "
    "the other. Over thousands of years the loops grow wider until the water "
    "finds a shorter path and leaves a quiet lake behind.",
    "When the train stopped at the small station, nobody got off. The conductor "
    "looked at his watch, waved a yellow flag, and the carriages rolled on toward "
    "the mountains. Snow was falling on the platform, covering the bench, the "
    "timetable and the red post box.",
    "Computers store numbers as bits. A byte holds eight bits, so it can count "
    "from 0 to 255. Two bytes can count to 65535, and four bytes to more than four "
    "billion. Floating point numbers spend some bits on the exponent and the rest "
    "on the fraction.",
    "Question: What is the tallest animal?\nAnswer: The giraffe is the tallest "
    "animal on land. Its neck alone can be two metres long.\n\nQuestion: Why is "
    "the sky blue?\nAnswer: Sunlight is scattered by the air, and blue light is "
    "scattered the most.",
    "user: hello there!\nassistant: Hello! How can I help you today?\nuser: tell "
    "me a short story about a cat.\nassistant: Once upon a time, a cat named Miso "
    "lived in a bookshop and slept on the warmest shelf.",
]


def check_versions():
    have_tf = importlib.metadata.version("transformers")
    have_torch = torch.__version__.split("+")[0]
    if have_tf != TRANSFORMERS_VERSION or have_torch != TORCH_VERSION:
        sys.exit(f"need transformers {TRANSFORMERS_VERSION} / torch {TORCH_VERSION}, "
                 f"have {have_tf} / {torch.__version__}")


def train_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i
    return tok


def save_tokenizer(tok, out_dir, tokenizer_class):
    """Write tokenizer.json + tokenizer_config.json (chat_template inline)."""
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=256,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir, save_jinja_files=False)
    # Make the class explicit and keep the template inside tokenizer_config.json,
    # as most hub checkpoints do.
    cfg_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["tokenizer_class"] = tokenizer_class
    cfg["chat_template"] = CHAT_TEMPLATE
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")
    for extra in ("chat_template.jinja", "special_tokens_map.json"):
        p = os.path.join(out_dir, extra)
        if os.path.exists(p):
            os.remove(p)


def init_weights(model, gen):
    """Large-ish random weights so logits are spread out and greedy is non-trivial."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=gen))


def f32_list(a):
    return [float(np.float32(x)) for x in np.asarray(a, dtype=np.float32).reshape(-1)]


TEXT_CASES = [
    "The keeper wound the clock and rang the bell.",
    "Mix 500 grams of flour with 350 grams of water; bake 40 minutes at 230C in 2024.",
    "Café crème, naïve résumé, Ærøskøbing — and a cat 🐈 on the shelf.",
    "   leading spaces\n\nand two newlines\n\tthen a tab   and trailing  ",
    "user: hello there! <|im_start|> is plain text here",
]

CHAT_CASES = [
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Why is the sky blue?"},
    ],
    [
        {"role": "user", "content": "Tell me a short story about a cat."},
        {"role": "assistant", "content": "Once upon a time, a cat named Miso lived in a bookshop."},
        {"role": "user", "content": "What did Miso eat?"},
    ],
    [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "What is the tallest animal?"},
        {"role": "assistant", "content": "Giraffe."},
        {"role": "user", "content": "And the fastest?"},
    ],
]


def greedy(model, prompt_ids, n_new):
    """Manual argmax loop with the KV cache; also returns the top1-top2 margins."""
    ids = torch.tensor([prompt_ids])
    out = model(input_ids=ids, use_cache=True)
    past = out.past_key_values
    logits = out.logits[0, -1]
    new_ids, margins = [], []
    for _ in range(n_new):
        top2 = torch.topk(logits, 2)
        nxt = int(top2.indices[0])
        new_ids.append(nxt)
        margins.append(float(np.float32(top2.values[0] - top2.values[1])))
        out = model(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits = out.logits[0, -1]
    # Cross-check against recomputing the whole sequence without a cache.
    full = model(input_ids=torch.tensor([prompt_ids + new_ids]), use_cache=False).logits[0]
    check = full[len(prompt_ids) - 1:-1].argmax(-1).tolist()
    assert check == new_ids, (check, new_ids)
    return new_ids, margins


def build(kind, tok, gen):
    out_dir = os.path.join(FIXTURES, f"tiny-{kind}")
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)

    tokenizer_class = "PreTrainedTokenizerFast" if kind == "llama" else "Qwen2Tokenizer"
    save_tokenizer(tok, out_dir, tokenizer_class)
    hf_tok = AutoTokenizer.from_pretrained(out_dir)
    n_tok = len(hf_tok)
    vocab_size = max(VOCAB_SIZE, n_tok)
    bos_id, eos_id, pad_id = (hf_tok.convert_tokens_to_ids(t) for t in (BOS, EOS, PAD))

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="float32",
    )
    if kind == "llama":
        rope = {
            "rope_type": "llama3",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        }
        config = LlamaConfig(head_dim=16, tie_word_embeddings=False, rope_parameters=rope,
                             attention_bias=False, mlp_bias=False, **common)
        model = LlamaForCausalLM(config)
    else:
        rope = {"rope_type": "default", "rope_theta": 1000000.0}
        config = Qwen2Config(tie_word_embeddings=True, rope_parameters=rope,
                             use_sliding_window=False, **common)
        model = Qwen2ForCausalLM(config)
    init_weights(model, gen)
    model.eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    for extra in ("generation_config.json",):
        p = os.path.join(out_dir, extra)
        if os.path.exists(p):
            os.remove(p)

    with open(os.path.join(out_dir, "config.json")) as f:
        written_cfg = json.load(f)

    if kind == "llama":
        # Classic hub spelling: rope_theta at top level, rope_scaling without theta.
        hub = {k: v for k, v in written_cfg.items() if k not in ("rope_parameters", "rope_scaling")}
        rp = dict(written_cfg.get("rope_parameters") or written_cfg.get("rope_scaling"))
        hub["rope_theta"] = rp.pop("rope_theta")
        hub["rope_scaling"] = rp
        with open(os.path.join(out_dir, "config.hub-style.json"), "w") as f:
            json.dump(hub, f, indent=2)
            f.write("\n")

    # Reload from disk exactly as a user would, in eager f32.
    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    hf_tok = AutoTokenizer.from_pretrained(out_dir)
    raw_tok = Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))

    text_cases = []
    for text in TEXT_CASES:
        ids = hf_tok.encode(text, add_special_tokens=False)
        raw = raw_tok.encode(text, add_special_tokens=False).ids
        assert ids == raw, (kind, text, ids, raw)
        assert hf_tok.decode(ids) == __import__("unicodedata").normalize("NFC", text), (kind, text)
        text_cases.append({"text": text, "ids": ids})

    chat_cases = []
    for msgs in CHAT_CASES:
        text = hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        ids = hf_tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=False)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        ids = list(ids)
        assert ids == raw_tok.encode(text, add_special_tokens=False).ids, (kind, msgs)
        chat_cases.append({"messages": msgs, "text": text, "ids": ids})

    # Prompt: the first chat case's ids would be long; use 12 ids of plain text
    # that include a special token so embedding lookup of specials is covered.
    prompt_ids = (hf_tok.encode("<|im_start|>user\nThe river bends around hard rock",
                                add_special_tokens=False))[:12]
    assert len(prompt_ids) == 12, prompt_ids

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids]), use_cache=False).logits[0]
        greedy_ids, margins = greedy(model, prompt_ids, 20)
        # Same via generate(), to be sure there is no hidden processing.
        gen_ids = model.generate(
            torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            do_sample=False, max_new_tokens=20, min_new_tokens=20, eos_token_id=None, pad_token_id=pad_id,
        )[0, len(prompt_ids):].tolist()
        if gen_ids != greedy_ids:
            print(f"  note: generate() gave {gen_ids}, manual loop {greedy_ids}", file=sys.stderr)
    if min(margins) < 0.01:
        sys.exit(f"tiny-{kind}: a greedy step has margin {min(margins):.5f} < 0.01; pick another SEED")
    logits = logits.float().numpy()
    assert np.all(np.isfinite(logits))
    assert logits.shape == (12, vocab_size)

    expected = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "seed": SEED,
        "vocab_size": vocab_size,
        "tokenizer_len": n_tok,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "prompt_ids": prompt_ids,
        "logits": [f32_list(row) for row in logits],
        "greedy_ids": greedy_ids,
        "greedy_margins": margins,
        "text_cases": text_cases,
        "chat_cases": chat_cases,
    }
    with open(os.path.join(out_dir, "expected.json"), "w") as f:
        json.dump(expected, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")

    std = float(logits.std())
    print(f"tiny-{kind}: tokenizer len {n_tok} (added: {n_tok - VOCAB_SIZE}), vocab_size {vocab_size}, "
          f"logit std {std:.3f}, greedy {greedy_ids}, min margin {min(margins):.4f}")
    print(f"  config rope keys: " + ", ".join(
        f"{k}={written_cfg[k]}" for k in ("rope_parameters", "rope_scaling", "rope_theta") if k in written_cfg))
    return out_dir


def main():
    check_versions()
    torch.manual_seed(SEED)
    tok = train_tokenizer()
    gen = torch.Generator().manual_seed(SEED)
    for kind in ("llama", "qwen2"):
        build(kind, tok, gen)

    # The hub-style config must load to the same rope settings.
    d = os.path.join(FIXTURES, "tiny-llama")
    with tempfile.TemporaryDirectory() as tmp:
        for name in os.listdir(d):
            shutil.copy(os.path.join(d, name), tmp)
        shutil.copy(os.path.join(d, "config.hub-style.json"), os.path.join(tmp, "config.json"))
        a = AutoConfig.from_pretrained(d)
        b = AutoConfig.from_pretrained(tmp)
        assert a.rope_parameters == b.rope_parameters, (a.rope_parameters, b.rope_parameters)
        with open(os.path.join(d, "expected.json")) as f:
            exp = json.load(f)
        m = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32, attn_implementation="eager").eval()
        with torch.no_grad():
            got = m(input_ids=torch.tensor([exp["prompt_ids"]]), use_cache=False).logits[0]
        diff = (got - torch.tensor(exp["logits"])).abs().max().item()
        assert diff == 0.0, f"hub-style config gives different logits (max diff {diff})"
        print("config.hub-style.json: same rope parameters and identical logits")
    for kind in ("llama", "qwen2"):
        d = os.path.join(FIXTURES, f"tiny-{kind}")
        total = sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d))
        print(f"tiny-{kind}: {total} bytes in {sorted(os.listdir(d))}")


if __name__ == "__main__":
    main()
