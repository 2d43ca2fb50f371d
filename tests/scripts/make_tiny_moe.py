#!/usr/bin/env python3
"""Generate tiny random-weight models with reference outputs, each as a
Hugging Face folder and the GGUF llama.cpp's converter makes of it.

Writes tests/fixtures/tiny-deepseek-{v3,v2,v2-lite}/, tiny-mixtral/,
tiny-qwen2-moe/, tiny-qwen3/, tiny-qwen3-moe/ and tiny-gemma3/ (all of them, or
those named on the command line), each holding
- config.json and model.safetensors (float32) in the Hugging Face hub layout
  (one tensor per routed expert, `kv_b_proj` unsplit), with `scoring_func` and
  `topk_method` written out (transformers 5 leaves them out of saved configs);
- model.gguf: the same weights converted by llama.cpp's convert_hf_to_gguf.py
  (`--outtype f32`), which stacks the experts and splits kv_b into k_b / v_b;
- tokenizer.json / tokenizer_config.json: the tiny byte-level BPE of tiny-llama
  (the qwen3 models' chat template gains Qwen3's thinking switch: an empty
  <think></think> block after the generation prompt when enable_thinking is
  false);
- expected.json: transformers' float32 logits at every prompt position, a greedy
  continuation with each step's top-2 margin, the chat template rendered by
  transformers with and without template variables, and, for the MoE models, router
  cases (random hidden states through the first MoE layer's router: its chosen
  experts and weights).

The three models:
- v3: q-LoRA, YaRN (factor 4, mscale = mscale_all_dim = 0.707), sigmoid routing
  with a non-zero random correction bias, 8 experts in 4 groups (best 2 kept),
  top-2, normalised weights × 2.5, one shared expert, first layer dense;
- v2: no q-LoRA, softmax routing, `group_limited_greedy` over 4 groups (best 2);
- v2-lite: no q-LoRA, softmax, plain greedy top-k (one group), like V2-Lite;
- mixtral: llama attention (GQA), softmax top-2 of 4 experts, renormalised;
- qwen2-moe: qwen2 attention (q/k/v bias), softmax top-2 of 8 without
  renormalisation, a sigmoid-gated shared expert (every layer sparse: llama.cpp's
  qwen2moe converter cannot map the dense layers of decoder_sparse_step > 1);
- qwen3: per-head RMSNorm on q and k, no q/k/v bias, a head_dim (32) that is
  not hidden / heads (16), GQA, rope theta 1e6;
- qwen3-moe: qwen3 attention, softmax top-2 of 8 experts renormalised
  (norm_topk_prob, which llama.cpp's qwen3moe always applies), no shared expert;
- gemma3: six layers, five sliding-window (window 6, shorter than the prompt;
  rope theta 1e4) and the sixth global (1e6), llama.cpp's default pattern of 6;
  q/k norms, four norms a layer stored as transformers has them (w, applied as
  1 + w; the converter writes 1 + w), GeGLU with tanh GELU, √hidden embedding
  scale, tied embeddings, head_dim 32 = query_pre_attn_scalar (llama.cpp scales
  by 1/√head_dim).

Needs the fixtures venv (requirements-fixtures.txt) and llama.cpp's converter
from the llama-cpp-python sdist:
    pip download --no-deps --no-binary :all: --no-build-isolation llama-cpp-python==0.3.36  # or fetch the .tar.gz
    tar xzf llama_cpp_python-0.3.36.tar.gz
    LLAMA_CPP=llama_cpp_python-0.3.36/vendor/llama.cpp python tests/scripts/make_tiny_deepseek.py
"""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys

import torch
from safetensors.torch import save_file

import transformers
from transformers import (AutoModelForCausalLM, AutoTokenizer, DeepseekV2Config, DeepseekV3Config, Gemma3TextConfig, MixtralConfig, Qwen2MoeConfig,
                          Qwen3Config, Qwen3MoeConfig)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
TOKENIZER_FROM = os.path.join(FIXTURES, "tiny-llama")
SEED = 20261129
PROMPT = [1, 17, 200, 45, 300, 12, 99, 7, 150, 260, 33, 81, 5, 240, 120, 64, 310, 2, 18, 77]
GREEDY = 16
# tiny-llama's template plus Qwen3's switch (transformers passes
# apply_chat_template's keyword arguments to the template).
THINK_TEMPLATE = (
    "{%- for message in messages -%}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}{%- endif -%}"
)
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]

BASE = dict(
    vocab_size=384,
    hidden_size=64,
    num_hidden_layers=3,
    rms_norm_eps=1e-6,
    max_position_embeddings=256,
    tie_word_embeddings=False,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=0,
)

COMMON = dict(
    vocab_size=384,
    hidden_size=64,
    intermediate_size=96,
    moe_intermediate_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=4,
    kv_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=16,
    n_routed_experts=8,
    num_experts_per_tok=2,
    n_shared_experts=1,
    first_k_dense_replace=1,
    rms_norm_eps=1e-6,
    max_position_embeddings=256,
    tie_word_embeddings=False,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=0,
)

MODELS = {
    "tiny-deepseek-v3": (
        DeepseekV3Config,
        dict(
            q_lora_rank=32,
            n_group=4,
            topk_group=2,
            norm_topk_prob=True,
            routed_scaling_factor=2.5,
            rope_parameters=dict(
                rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=64,
                beta_fast=32.0, beta_slow=1.0, mscale=0.707, mscale_all_dim=0.707,
            ),
        ),
        dict(scoring_func="sigmoid", topk_method="noaux_tc"),
    ),
    "tiny-deepseek-v2": (
        DeepseekV2Config,
        dict(
            q_lora_rank=None, n_group=4, topk_group=2, topk_method="group_limited_greedy",
            norm_topk_prob=False, routed_scaling_factor=1.5, rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        ),
        dict(scoring_func="softmax", topk_method="group_limited_greedy"),
    ),
    "tiny-deepseek-v2-lite": (
        DeepseekV2Config,
        dict(
            q_lora_rank=None, n_group=1, topk_group=1, topk_method="greedy",
            norm_topk_prob=False, routed_scaling_factor=1.0, rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        ),
        dict(scoring_func="softmax", topk_method="greedy"),
    ),
    "tiny-mixtral": (
        MixtralConfig,
        dict(
            BASE, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            num_local_experts=4, num_experts_per_tok=2, rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        ),
        {},
    ),
    "tiny-qwen2-moe": (
        Qwen2MoeConfig,
        dict(
            BASE, intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=64,
            num_attention_heads=4, num_key_value_heads=2, num_experts=8, num_experts_per_tok=2, norm_topk_prob=False,
            decoder_sparse_step=1, rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        ),
        {},
    ),
    "tiny-qwen3": (
        Qwen3Config,
        dict(
            BASE, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
            attention_bias=False, use_sliding_window=False, rope_parameters=dict(rope_type="default", rope_theta=1e6),
        ),
        {},
    ),
    "tiny-qwen3-moe": (
        Qwen3MoeConfig,
        dict(
            BASE, intermediate_size=96, moe_intermediate_size=32, num_attention_heads=4, num_key_value_heads=2,
            head_dim=32, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1,
            mlp_only_layers=[], attention_bias=False, use_sliding_window=False,
            rope_parameters=dict(rope_type="default", rope_theta=1e6),
        ),
        {},
    ),
    "tiny-gemma3": (
        Gemma3TextConfig,
        dict(
            BASE, num_hidden_layers=6, tie_word_embeddings=True, intermediate_size=96, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32, sliding_window=6, sliding_window_pattern=6,
            hidden_activation="gelu_pytorch_tanh", final_logit_softcapping=None, attn_logit_softcapping=None,
            rope_parameters=dict(
                sliding_attention=dict(rope_type="default", rope_theta=10000.0),
                full_attention=dict(rope_type="default", rope_theta=1e6),
            ),
        ),
        {},
    ),
}


def hub_state_dict(model, cfg):
    """transformers 5 keeps experts fused ([E, 2I, H] gate_up, [E, H, I] down);
    checkpoints on the hub (and llama.cpp's converter) have one tensor per
    expert, named as each architecture's own checkpoints name them."""
    mixtral = isinstance(cfg, MixtralConfig)
    inter = cfg.intermediate_size if mixtral else getattr(cfg, "moe_intermediate_size", None)
    names = ("w1", "w3", "w2") if mixtral else ("gate_proj", "up_proj", "down_proj")
    out = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # tied to the embedding: hub checkpoints leave it out
        t = t.detach().float().contiguous()
        if mixtral:
            name = name.replace(".mlp.", ".block_sparse_moe.")
        if name.endswith("experts.gate_up_proj"):
            base = name[: -len("gate_up_proj")]
            for e in range(t.shape[0]):
                out[f"{base}{e}.{names[0]}.weight"] = t[e, :inter].contiguous()
                out[f"{base}{e}.{names[1]}.weight"] = t[e, inter:].contiguous()
        elif name.endswith("experts.down_proj"):
            base = name[: -len("down_proj")]
            for e in range(t.shape[0]):
                out[f"{base}{e}.{names[2]}.weight"] = t[e].contiguous()
        else:
            out[name] = t
    return out


@torch.no_grad()
def make(name, config_cls, extra, routing):
    torch.manual_seed(SEED)
    cfg = config_cls(**extra) if "hidden_size" in extra else config_cls(**COMMON, **extra)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    # Wider weights than the default init, so logits and routing are far from uniform.
    for pname, p in model.named_parameters():
        if p.dim() >= 2:
            p.normal_(0.0, 0.15)
        elif "norm" in pname:
            # Gemma's norms multiply by 1 + w: weights near 0 are near 1.
            base = 0.0 if isinstance(cfg, Gemma3TextConfig) else 1.0
            p.copy_(base + 0.1 * torch.randn_like(p))
    moe_layer = next((i for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "experts")), None)
    for layer in model.model.layers:
        gate = getattr(layer.mlp, "gate", None) if hasattr(layer.mlp, "experts") else None
        if gate is not None and hasattr(gate, "e_score_correction_bias"):
            gate.e_score_correction_bias.copy_(0.3 * torch.randn_like(gate.e_score_correction_bias))

    ids = torch.tensor([PROMPT])
    logits = model(ids).logits[0]
    seq = list(PROMPT)
    greedy, margins = [], []
    for _ in range(GREEDY):
        last = model(torch.tensor([seq])).logits[0, -1]
        top = torch.topk(last, 2)
        greedy.append(int(top.indices[0]))
        margins.append(float(top.values[0] - top.values[1]))
        seq.append(greedy[-1])

    # Router cases: random hidden states through the first MoE layer's router.
    router = model.model.layers[moe_layer].mlp.gate if moe_layer is not None else None
    hidden = torch.randn(12, cfg.hidden_size) * 3.0
    r_logits, r_weights, r_indices = router(hidden) if router is not None else (None, None, [])
    router_cases = []
    for i in range(len(r_indices)):
        order = torch.argsort(r_indices[i])
        router_cases.append(
            dict(
                logits=r_logits[i].tolist(),
                experts=r_indices[i][order].tolist(),
                weights=r_weights[i][order].tolist(),
            )
        )

    out = os.path.join(FIXTURES, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    save_file(hub_state_dict(model, cfg), os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    config = cfg.to_dict()
    config.update(routing)
    config["architectures"] = [type(model).__name__]
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(TOKENIZER_FROM, f), out)
    chat_cases = []
    if name.startswith("tiny-qwen3"):
        with open(os.path.join(out, "tokenizer_config.json")) as f:
            tc = json.load(f)
        tc["chat_template"] = THINK_TEMPLATE
        with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
            json.dump(tc, f, indent=2)
        tok = AutoTokenizer.from_pretrained(out)
        for kwargs in ({}, {"enable_thinking": False}, {"enable_thinking": True}):
            text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True, **kwargs)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            chat_cases.append(dict(messages=CHAT, kwargs=kwargs, text=text, ids=ids))
    expected = dict(
        transformers=transformers.__version__,
        torch=torch.__version__,
        llama_cpp_converter=os.environ.get("LLAMA_CPP", ""),
        seed=SEED,
        prompt_ids=PROMPT,
        logits=[row.tolist() for row in logits],
        greedy_ids=greedy,
        greedy_margins=margins,
        router_layer=moe_layer,
        router_bias=(router.e_score_correction_bias.tolist() if hasattr(router, "e_score_correction_bias") else None),
        router_cases=router_cases,
        chat_cases=chat_cases,
    )
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f)
    convert(out)
    print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters, greedy {greedy}, min margin {min(margins):.3f}")


def convert(folder):
    """llama.cpp's converter; the tiny tokenizer's pre-tokenizer is Qwen2's
    regex, which the converter cannot recognise by hash, so name it (and make
    the llama and qwen2/qwen3 converters, which try sentencepiece first, take
    the BPE path)."""
    llama_cpp = os.environ.get("LLAMA_CPP")
    if not llama_cpp:
        sys.exit("set LLAMA_CPP to the llama.cpp folder of the llama-cpp-python sdist (see the docstring)")
    code = (
        "import sys\n"
        f"sys.path[:0] = [{os.path.join(llama_cpp, 'gguf-py')!r}, {llama_cpp!r}]\n"
        "from conversion import base\n"
        "base.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'qwen2'\n"
        "from conversion import llama\n"
        "llama.LlamaModel.set_vocab = lambda self: self._set_vocab_gpt2()\n"
        "from conversion import qwen\n"
        "qwen.Qwen2Model.set_vocab = lambda self: self._set_vocab_gpt2()\n"
        "import convert_hf_to_gguf\n"
        f"sys.argv = ['convert', {folder!r}, '--outfile', {os.path.join(folder, 'model.gguf')!r}, '--outtype', 'f32']\n"
        "convert_hf_to_gguf.main()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, safetensors {importlib.metadata.version('safetensors')}")
    names = sys.argv[1:] or list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        sys.exit(f"no fixture {unknown}; these are made here: {list(MODELS)}")
    for name in names:
        make(name, *MODELS[name])
