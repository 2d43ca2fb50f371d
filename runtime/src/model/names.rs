//! Weight names as each format spells them. Model code asks for a role; this
//! answers with the checkpoint's own name, so errors and dumps use real names.

use crate::config::Arch;
use crate::format::FileKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    TokenEmbd,
    OutputNorm,
    Output,
    /// Per-dimension RoPE frequency divisors (llama.cpp's Llama 3 scaling).
    RopeFreqs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    AttnNorm,
    Q,
    K,
    V,
    QBias,
    KBias,
    VBias,
    /// Per-head RMSNorm weights of q and k (`[head_dim]`; Qwen3).
    QNorm,
    KNorm,
    O,
    FfnNorm,
    // Gemma 3's four norms: AttnNorm, then these.
    /// On the attention's output, before the residual add.
    PostAttnNorm,
    /// Before the feed-forward block (Gemma's name for what FfnNorm is).
    PreFfnNorm,
    /// On the feed-forward block's output, before the residual add.
    PostFfnNorm,
    Gate,
    Up,
    Down,
    // Multi-head latent attention (DeepSeek).
    /// `W_qa` (with q-LoRA; else `Q` is `W_q`).
    QA,
    QANorm,
    QB,
    /// `W_kva`: `c_kv` and `k_pe` in one projection.
    KvA,
    KvANorm,
    /// `W_kvb` as one `[heads · (nope + v), rank]` matrix (Hugging Face,
    /// older GGUF files) …
    KvB,
    /// … or split, as llama.cpp writes it now: `[heads, rank, nope]`, `[heads, v, rank]`.
    KB,
    VB,
    // Mixture of experts.
    Router,
    /// DeepSeek-V3's `e_score_correction_bias`.
    RouterBias,
    SharedGate,
    SharedUp,
    SharedDown,
    /// Qwen2-MoE's `[1, hidden]` gate on the shared expert's output.
    SharedExpertGate,
}

/// One weight of the routed experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expert {
    Gate,
    Up,
    Down,
}

/// Where expert `e`'s weight is: GGUF stacks all experts of a layer in one
/// `[experts, rows, cols]` tensor (`(name, Some(e))`); Hugging Face has one
/// tensor per expert (`(name, None)`).
pub fn expert(kind: FileKind, arch: Arch, i: usize, e: usize, w: Expert) -> (String, Option<usize>) {
    match kind {
        FileKind::Gguf => {
            let s = match w {
                Expert::Gate => "ffn_gate_exps",
                Expert::Up => "ffn_up_exps",
                Expert::Down => "ffn_down_exps",
            };
            (format!("blk.{i}.{s}.weight"), Some(e))
        }
        // Mixtral's checkpoints name its experts' weights w1 (gate), w3 (up), w2 (down).
        FileKind::Safetensors if arch == Arch::Llama => {
            let s = match w {
                Expert::Gate => "w1",
                Expert::Up => "w3",
                Expert::Down => "w2",
            };
            (format!("model.layers.{i}.block_sparse_moe.experts.{e}.{s}.weight"), None)
        }
        FileKind::Safetensors => {
            let s = match w {
                Expert::Gate => "gate_proj",
                Expert::Up => "up_proj",
                Expert::Down => "down_proj",
            };
            (format!("model.layers.{i}.mlp.experts.{e}.{s}.weight"), None)
        }
    }
}

/// A mixture-of-experts weight other than the routed experts' (router, its
/// bias, shared experts): DeepSeek's names, with Mixtral's and Qwen2-MoE's own
/// in Hugging Face checkpoints.
pub fn moe(kind: FileKind, arch: Arch, i: usize, w: Layer) -> String {
    match (kind, arch, w) {
        (FileKind::Safetensors, Arch::Llama, Layer::Router) => format!("model.layers.{i}.block_sparse_moe.gate.weight"),
        (FileKind::Safetensors, Arch::Qwen2Moe, Layer::SharedGate | Layer::SharedUp | Layer::SharedDown) => {
            layer(kind, i, w).replace("shared_experts", "shared_expert")
        }
        _ => layer(kind, i, w),
    }
}

pub fn global(kind: FileKind, g: Global) -> &'static str {
    match (kind, g) {
        (FileKind::Gguf, Global::TokenEmbd) => "token_embd.weight",
        (FileKind::Gguf, Global::OutputNorm) => "output_norm.weight",
        (FileKind::Gguf, Global::Output) => "output.weight",
        (FileKind::Gguf, Global::RopeFreqs) => "rope_freqs.weight",
        (FileKind::Safetensors, Global::RopeFreqs) => "rope_freqs.weight",
        (FileKind::Safetensors, Global::TokenEmbd) => "model.embed_tokens.weight",
        (FileKind::Safetensors, Global::OutputNorm) => "model.norm.weight",
        (FileKind::Safetensors, Global::Output) => "lm_head.weight",
    }
}

pub fn layer(kind: FileKind, i: usize, w: Layer) -> String {
    match kind {
        FileKind::Gguf => {
            let s = match w {
                Layer::AttnNorm => "attn_norm.weight",
                Layer::Q => "attn_q.weight",
                Layer::K => "attn_k.weight",
                Layer::V => "attn_v.weight",
                Layer::QBias => "attn_q.bias",
                Layer::KBias => "attn_k.bias",
                Layer::VBias => "attn_v.bias",
                Layer::QNorm => "attn_q_norm.weight",
                Layer::KNorm => "attn_k_norm.weight",
                Layer::O => "attn_output.weight",
                Layer::FfnNorm | Layer::PreFfnNorm => "ffn_norm.weight",
                Layer::PostAttnNorm => "post_attention_norm.weight",
                Layer::PostFfnNorm => "post_ffw_norm.weight",
                Layer::Gate => "ffn_gate.weight",
                Layer::Up => "ffn_up.weight",
                Layer::Down => "ffn_down.weight",
                Layer::QA => "attn_q_a.weight",
                Layer::QANorm => "attn_q_a_norm.weight",
                Layer::QB => "attn_q_b.weight",
                Layer::KvA => "attn_kv_a_mqa.weight",
                Layer::KvANorm => "attn_kv_a_norm.weight",
                Layer::KvB => "attn_kv_b.weight",
                Layer::KB => "attn_k_b.weight",
                Layer::VB => "attn_v_b.weight",
                Layer::Router => "ffn_gate_inp.weight",
                Layer::RouterBias => "exp_probs_b.bias",
                Layer::SharedGate => "ffn_gate_shexp.weight",
                Layer::SharedUp => "ffn_up_shexp.weight",
                Layer::SharedDown => "ffn_down_shexp.weight",
                Layer::SharedExpertGate => "ffn_gate_inp_shexp.weight",
            };
            format!("blk.{i}.{s}")
        }
        FileKind::Safetensors => {
            let s = match w {
                Layer::AttnNorm => "input_layernorm.weight",
                Layer::Q => "self_attn.q_proj.weight",
                Layer::K => "self_attn.k_proj.weight",
                Layer::V => "self_attn.v_proj.weight",
                Layer::QBias => "self_attn.q_proj.bias",
                Layer::KBias => "self_attn.k_proj.bias",
                Layer::VBias => "self_attn.v_proj.bias",
                Layer::QNorm => "self_attn.q_norm.weight",
                Layer::KNorm => "self_attn.k_norm.weight",
                Layer::O => "self_attn.o_proj.weight",
                // Llama's pre-feed-forward norm is "post_attention_layernorm";
                // Gemma's "post_attention_layernorm" is on the attention's output.
                Layer::FfnNorm | Layer::PostAttnNorm => "post_attention_layernorm.weight",
                Layer::PreFfnNorm => "pre_feedforward_layernorm.weight",
                Layer::PostFfnNorm => "post_feedforward_layernorm.weight",
                Layer::Gate => "mlp.gate_proj.weight",
                Layer::Up => "mlp.up_proj.weight",
                Layer::Down => "mlp.down_proj.weight",
                Layer::QA => "self_attn.q_a_proj.weight",
                Layer::QANorm => "self_attn.q_a_layernorm.weight",
                Layer::QB => "self_attn.q_b_proj.weight",
                Layer::KvA => "self_attn.kv_a_proj_with_mqa.weight",
                Layer::KvANorm => "self_attn.kv_a_layernorm.weight",
                Layer::KvB => "self_attn.kv_b_proj.weight",
                Layer::KB => "self_attn.k_b_proj.weight",
                Layer::VB => "self_attn.v_b_proj.weight",
                Layer::Router => "mlp.gate.weight",
                Layer::RouterBias => "mlp.gate.e_score_correction_bias",
                Layer::SharedGate => "mlp.shared_experts.gate_proj.weight",
                Layer::SharedUp => "mlp.shared_experts.up_proj.weight",
                Layer::SharedDown => "mlp.shared_experts.down_proj.weight",
                Layer::SharedExpertGate => "mlp.shared_expert_gate.weight",
            };
            format!("model.layers.{i}.{s}")
        }
    }
}
