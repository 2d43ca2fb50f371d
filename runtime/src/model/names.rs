//! Weight names as each format spells them. Model code asks for a role; this
//! answers with the checkpoint's own name, so errors and dumps use real names.

use crate::format::FileKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    TokenEmbd,
    OutputNorm,
    Output,
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
    O,
    FfnNorm,
    Gate,
    Up,
    Down,
}

pub fn global(kind: FileKind, g: Global) -> &'static str {
    match (kind, g) {
        (FileKind::Gguf, Global::TokenEmbd) => "token_embd.weight",
        (FileKind::Gguf, Global::OutputNorm) => "output_norm.weight",
        (FileKind::Gguf, Global::Output) => "output.weight",
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
                Layer::O => "attn_output.weight",
                Layer::FfnNorm => "ffn_norm.weight",
                Layer::Gate => "ffn_gate.weight",
                Layer::Up => "ffn_up.weight",
                Layer::Down => "ffn_down.weight",
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
                Layer::O => "self_attn.o_proj.weight",
                Layer::FfnNorm => "post_attention_layernorm.weight",
                Layer::Gate => "mlp.gate_proj.weight",
                Layer::Up => "mlp.up_proj.weight",
                Layer::Down => "mlp.down_proj.weight",
            };
            format!("model.layers.{i}.{s}")
        }
    }
}
