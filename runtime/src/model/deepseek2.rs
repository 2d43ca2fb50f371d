//! DeepSeek-V2, V2-Lite and V3: multi-head latent attention and DeepSeekMoE
//! (llama.cpp's `deepseek2`).
//!
//! Attention, per layer, of `xn = RMSNorm(x)`:
//! - queries `q = W_q xn`, or `W_qb · RMSNorm(W_qa xn)` with q-LoRA; per head
//!   `[q_nope ; q_pe]`, `q_pe` roped;
//! - `kv_a = W_kva xn` = `[c_kv ; k_pe]`: the cache keeps `RMSNorm(c_kv)` and
//!   the roped `k_pe` (one for all heads), `rank + rope` values a token;
//! - `[k_nope,h ; v_h] = W_kvb,h · c_kv`, scores `(q_nope·k_nope + q_pe·k_pe)
//!   · scale`, output `[Σ_t a_h,t v_h,t]_h`.
//!
//! The feed-forward block is dense below `first_k_dense_replace`, else routed
//! experts (softmax V2 / sigmoid + bias V3, group-limited) and shared experts:
//! the shared decoder's.

use super::decoder::{rope, Attention, Block, Decoder, Ends};
use super::names::{self, Layer};
use super::ops::{Latent, LinearDecl, Load, Ops, Weights};
use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// The queries' projection.
enum Query<W: Weights> {
    /// `W_q` `[heads · (nope + rope), hidden]`.
    Direct(W::Linear),
    /// `W_qa` `[q_rank, hidden]`, its norm `[q_rank]`, `W_qb` `[heads · (nope + rope), q_rank]`.
    LowRank(W::Linear, W::Vector, W::Linear),
}

pub struct LatentAttention<W: Weights> {
    q: Query<W>,
    kv_a: W::Linear,      // [rank + rope, hidden]
    kv_a_norm: W::Vector, // [rank]
    kv_b: W::Dense,       // [heads · (nope + v), rank] f32 (crate::model::mla_kv_b)
    shape: Latent,
}

impl<W: Weights> Attention<W> for LatentAttention<W> {
    fn forward<O: Ops<W = W>>(&self, o: &mut O, i: usize, xn: &O::Act) -> Result<O::Act> {
        let q = match &self.q {
            Query::Direct(wq) => o.linear(&format!("blk.{i}.q"), wq, xn)?,
            Query::LowRank(wqa, norm, wqb) => {
                let qa = o.linear(&format!("blk.{i}.q_a"), wqa, xn)?; // [n, q_rank]
                let qa = o.rms_norm(&format!("blk.{i}.q_a_norm"), &qa, norm, self.shape.eps)?;
                o.linear(&format!("blk.{i}.q"), wqb, &qa)?
            }
        }; // [n, heads · (nope + rope)]
        let kv_a = o.linear(&format!("blk.{i}.kv_a"), &self.kv_a, xn)?; // [n, rank + rope]
        o.latent_attention(&format!("blk.{i}.attn"), i, &q, &kv_a, &self.kv_a_norm, &self.kv_b, &self.shape) // [n, heads · v]
    }
}

pub type DeepSeek2<W> = Decoder<W, LatentAttention<W>>;

pub async fn load<W: Weights, L: Load<W = W>>(l: &mut L, cfg: &ModelConfig) -> Result<DeepSeek2<W>> {
    let m = cfg.mla.as_ref().ok_or_else(|| Error::Config("a deepseek2 model without latent-attention sizes".into()))?;
    let (kind, h, nh) = (l.index().kind, cfg.hidden, cfg.n_heads);
    let (qk, rank) = (m.qk_nope + m.qk_rope, m.kv_lora_rank);
    let shape = Latent {
        heads: nh,
        rank,
        rope_dim: m.qk_rope,
        nope: m.qk_nope,
        v_dim: m.v_head_dim,
        eps: cfg.rms_eps,
        scale: (m.softmax_mscale / (qk as f64).sqrt()) as f32,
        rope: rope(l, cfg).await?,
    };
    let ends = Ends::load(l, cfg).await?;
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let n = |w| names::layer(kind, i, w);
        let one = |w, rows, cols| LinearDecl::one(n(w), rows, cols);
        let q = match m.q_lora_rank {
            None => Query::Direct(l.linear(&one(Layer::Q, nh * qk, h)).await?),
            Some(r) => Query::LowRank(
                l.linear(&one(Layer::QA, r, h)).await?,
                l.vector(&n(Layer::QANorm), r).await?,
                l.linear(&one(Layer::QB, nh * qk, r)).await?,
            ),
        };
        let kv_b = super::mla_kv_b(l.index(), l.reader(), i, nh, m).await?;
        let attn = LatentAttention {
            q,
            kv_a: l.linear(&one(Layer::KvA, rank + m.qk_rope, h)).await?,
            kv_a_norm: l.vector(&n(Layer::KvANorm), rank).await?,
            kv_b: l.dense(&format!("blk.{i}.kv_b f32"), nh * (m.qk_nope + m.v_head_dim), rank, &kv_b)?,
            shape: shape.clone(),
        };
        blocks.push(Block::load(l, cfg, i, attn, nh * m.v_head_dim).await?);
    }
    Ok(Decoder { cfg: cfg.clone(), ends, blocks })
}
