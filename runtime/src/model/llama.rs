//! Llama and its relatives: Llama 2/3, SmolLM2, DeepSeek-R1-Distill-Llama,
//! Qwen2 (q/k/v biases), Qwen3 (q/k norms), Mixtral (routed experts),
//! Qwen2-MoE (routed experts and a gated shared expert) and Qwen3-MoE.
//!
//! Attention, per layer, of `xn = RMSNorm(x)`: `[q ; k ; v] = W_qkv xn (+ b)`,
//! (Qwen3: each head of q and of k RMS-normed, `q_norm`/`k_norm`), q and k
//! roped at their positions, grouped-query heads (`heads / kv_heads` queries
//! share a key and value head) over the cache, causal, scaled by
//! `1/√head_dim`. The rest of the layer is the shared decoder's.

use super::decoder::{self, rope, Attention, Block, Decoder, Ends};
use super::names::{self, Layer};
use super::ops::{Gqa, LinearDecl, Load, Ops, QkNorm, Weights};
use crate::config::ModelConfig;
use crate::error::Result;

pub struct GqaAttention<W: Weights> {
    qkv: W::Linear, // [q_dim + 2 · kv_dim, hidden] (+ bias, qwen2): q, k, v stacked
    qk_norm: Option<(W::Vector, W::Vector)>, // [head_dim] each (qwen3): q's, k's
    eps: f32,
    shape: Gqa,
}

impl<W: Weights> Attention<W> for GqaAttention<W> {
    fn forward<O: Ops<W = W>>(&self, o: &mut O, i: usize, xn: &O::Act) -> Result<O::Act> {
        let qkv = o.linear(&format!("blk.{i}.qkv"), &self.qkv, xn)?; // [n, q_dim + 2 · kv_dim]
        let norm = self.qk_norm.as_ref().map(|(q, k)| QkNorm { q, k, eps: self.eps });
        o.attention(&format!("blk.{i}.attn"), i, &qkv, norm, &self.shape) // [n, q_dim]
    }
}

impl<W: Weights> GqaAttention<W> {
    /// Layer `i`'s q/k/v (and q/k norms, their weights shifted by
    /// `norm_shift`, see [`decoder::norm`]) for attention of `shape`.
    pub async fn load<L: Load<W = W>>(l: &mut L, cfg: &ModelConfig, i: usize, shape: Gqa, norm_shift: f32) -> Result<Self> {
        let (kind, hd) = (l.index().kind, shape.head_dim);
        let (q_dim, kv_dim) = (shape.heads * hd, shape.kv_heads * hd);
        let n = |w| names::layer(kind, i, w);
        let qkv = LinearDecl {
            name: format!("blk.{i}.attn_qkv"),
            parts: vec![(n(Layer::Q), q_dim), (n(Layer::K), kv_dim), (n(Layer::V), kv_dim)],
            cols: cfg.hidden,
            bias: cfg.qkv_bias.then(|| vec![n(Layer::QBias), n(Layer::KBias), n(Layer::VBias)]),
        };
        let qk_norm = match cfg.arch.qk_norm() {
            true => Some((decoder::norm(l, &n(Layer::QNorm), hd, norm_shift).await?, decoder::norm(l, &n(Layer::KNorm), hd, norm_shift).await?)),
            false => None,
        };
        Ok(GqaAttention { qkv: l.linear(&qkv).await?, qk_norm, eps: cfg.rms_eps, shape })
    }
}

pub type Llama<W> = Decoder<W, GqaAttention<W>>;

pub async fn load<W: Weights, L: Load<W = W>>(l: &mut L, cfg: &ModelConfig) -> Result<Llama<W>> {
    let hd = cfg.head_dim;
    let shape = Gqa { heads: cfg.n_heads, kv_heads: cfg.n_kv_heads, head_dim: hd, scale: 1.0 / (hd as f32).sqrt(), rope: rope(l, cfg).await?, window: None };
    let ends = Ends::load(l, cfg).await?;
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let attn = GqaAttention::load(l, cfg, i, shape.clone(), 0.0).await?;
        blocks.push(Block::load(l, cfg, i, attn, cfg.n_heads * hd).await?);
    }
    Ok(Decoder { cfg: cfg.clone(), ends, blocks })
}
