//! Gemma 3 (270M … 27B, text): grouped-query attention with per-head q/k
//! norms, sliding-window attention on the local layers, and four norms a
//! layer, two of them on the branches' outputs.
//!
//! `x = √hidden · embed(ids)`; per layer
//! `x += PostAttnNorm(Wo · attention(AttnNorm(x)))`, the attention local
//! (a query sees its `window` latest positions, RoPE base `local_theta`,
//! unscaled) or global (all positions, `rope_theta` and its scaling);
//! `x += PostFfnNorm(down(gelu_tanh(gate xn) ⊙ up xn))` with
//! `xn = PreFfnNorm(x)`; `logits = head(Norm(x))`, the head tied to the
//! embedding. Every norm multiplies by `1 + w`: transformers' checkpoints
//! store `w`, llama.cpp's converter `1 + w`, so the loader adds 1 to the
//! former's. Scores are scaled by `query_pre_attn_scalar^-½`.

use super::decoder::{self, rope, Attention, Ends, Mlp};
use super::llama::GqaAttention;
use super::names::{self, Layer};
use super::ops::{Activation, Gqa, LinearDecl, Load, Ops, Weights};
use crate::config::{ModelConfig, RopeScaling};
use crate::error::Result;
use crate::format::FileKind;

/// One layer.
pub struct Block<W: Weights> {
    attn_norm: W::Vector,      // [hidden]
    attn: GqaAttention<W>,
    wo: W::Linear,             // [hidden, heads · head_dim]
    post_attn_norm: W::Vector, // [hidden]
    pre_ffn_norm: W::Vector,   // [hidden]
    mlp: Mlp<W>,               // GeGLU, [ffn] wide
    post_ffn_norm: W::Vector,  // [hidden]
}

pub struct Gemma3<W: Weights> {
    pub cfg: ModelConfig,
    ends: Ends<W>,
    blocks: Vec<Block<W>>,
}

impl<W: Weights> Gemma3<W> {
    /// Embedding and layers: the residual stream `x [n, hidden]`.
    pub fn body<O: Ops<W = W>>(&self, o: &mut O) -> Result<O::Act> {
        let eps = self.cfg.rms_eps;
        let mut x = self.ends.embed(o)?; // [n, hidden], scaled by √hidden
        for (i, b) in self.blocks.iter().enumerate() {
            // ---- attention
            let xn = o.rms_norm(&format!("blk.{i}.attn_norm"), &x, &b.attn_norm, eps)?;
            let attn = b.attn.forward(o, i, &xn)?; // [n, heads · head_dim]
            let y = o.linear(&format!("blk.{i}.attn_proj"), &b.wo, &attn)?; // [n, hidden]
            o.add_rms_norm(&format!("blk.{i}.attn_out"), &mut x, &y, &b.post_attn_norm, eps)?;
            // ---- feed-forward
            let xn = o.rms_norm(&format!("blk.{i}.ffn_norm"), &x, &b.pre_ffn_norm, eps)?;
            let y = b.mlp.forward(o, &format!("blk.{i}.ffn_act"), &xn, &format!("blk.{i}.ffn_proj"))?; // [n, hidden]
            o.add_rms_norm(&format!("blk.{i}.ffn_out"), &mut x, &y, &b.post_ffn_norm, eps)?;
        }
        Ok(x)
    }

    /// Final norm and LM head: `logits [rows, vocab]`.
    pub fn head<O: Ops<W = W>>(&self, o: &mut O, x: &O::Act) -> Result<O::Act> {
        self.ends.head(o, x)
    }
}

pub async fn load<W: Weights, L: Load<W = W>>(l: &mut L, cfg: &ModelConfig) -> Result<Gemma3<W>> {
    let kind = l.index().kind;
    let shift = if kind == FileKind::Safetensors { 1.0 } else { 0.0 };
    let (hd, h) = (cfg.head_dim, cfg.hidden);
    let scale = cfg.attn_scale.unwrap_or(1.0 / (hd as f32).sqrt());
    let global = Gqa { heads: cfg.n_heads, kv_heads: cfg.n_kv_heads, head_dim: hd, scale, rope: rope(l, cfg).await?, window: None };
    // Local layers: their own base, no scaling.
    let local = match &cfg.swa {
        Some(swa) => {
            let c = ModelConfig { rope_theta: swa.local_theta, rope_scaling: RopeScaling::None, ..cfg.clone() };
            Some(Gqa { rope: rope(l, &c).await?, window: Some(swa.window), ..global.clone() })
        }
        None => None,
    };
    // The embedding's scale as transformers rounds it: √hidden in f32.
    let ends = Ends::load_with(l, cfg, shift, Some((h as f32).sqrt())).await?;
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let n = |w| names::layer(kind, i, w);
        let shape = match (&local, &cfg.swa) {
            (Some(local), Some(swa)) if swa.is_local(i) => local.clone(),
            _ => global.clone(),
        };
        let attn = GqaAttention::load(l, cfg, i, shape, shift).await?;
        let mlp_names = [n(Layer::Gate), n(Layer::Up), n(Layer::Down)];
        blocks.push(Block {
            attn_norm: decoder::norm(l, &n(Layer::AttnNorm), h, shift).await?,
            attn,
            wo: l.linear(&LinearDecl::one(n(Layer::O), h, cfg.n_heads * hd)).await?,
            post_attn_norm: decoder::norm(l, &n(Layer::PostAttnNorm), h, shift).await?,
            pre_ffn_norm: decoder::norm(l, &n(Layer::PreFfnNorm), h, shift).await?,
            mlp: Mlp::load(l, format!("blk.{i}.ffn_gate_up"), mlp_names, h, cfg.ffn, Activation::GeluTanh).await?,
            post_ffn_norm: decoder::norm(l, &n(Layer::PostFfnNorm), h, shift).await?,
        });
    }
    Ok(Gemma3 { cfg: cfg.clone(), ends, blocks })
}
