//! The interface every model graph is written against, once, and that both
//! backends implement: [`Load`] opens the weights a model file declares,
//! [`Ops`] runs (reference) or records (GPU) the forward pass.
//!
//! A model file knows its architecture and nothing of placement or kernels;
//! a backend knows ops and buffers and nothing of architectures. Every op
//! takes the name of what it produces (`blk.3.attn_norm`, `blk.3.qkv`, …):
//! both backends can keep the last position's value of each, so
//! `baleen compare` diffs them in graph order. An op that adds into the
//! residual stream names the stream after the addition.

use crate::config::{Moe, RopePairing};
use crate::error::Result;
use crate::format::{TensorIndex, TensorReader};

/// The types a backend holds weights in.
pub trait Weights {
    /// One matrix, or several of the same width stacked by rows (their
    /// outputs side by side in each token's row), with an optional bias.
    type Linear;
    /// An f32 vector (a norm's weight, a router's bias).
    type Vector;
    /// A layer's routed experts: each one's gate, up and down.
    type Experts;
    /// An f32 matrix the kernels read whole (MLA's `W_kvb`).
    type Dense;
}

/// A linear layer as the checkpoint stores it: `parts` (tensor name, rows),
/// each `[rows, cols]`, stacked in order; `bias`, when given, one vector per
/// part.
#[derive(Debug, Clone)]
pub struct LinearDecl {
    /// What the stacked matrix is called (its parts keep their own names).
    pub name: String,
    pub parts: Vec<(String, usize)>,
    pub cols: usize,
    pub bias: Option<Vec<String>>,
}

impl LinearDecl {
    /// One `[rows, cols]` tensor, no bias.
    pub fn one(name: String, rows: usize, cols: usize) -> Self {
        LinearDecl { name: name.clone(), parts: vec![(name, rows)], cols, bias: None }
    }

    /// Rows of all parts together.
    pub fn rows(&self) -> usize {
        self.parts.iter().map(|p| p.1).sum()
    }

    /// The parts' biases end to end (`[rows]`), if the layer has them.
    pub async fn read_bias(&self, index: &TensorIndex, reader: &impl TensorReader) -> Result<Option<Vec<f32>>> {
        let Some(names) = &self.bias else { return Ok(None) };
        let mut b = Vec::with_capacity(self.rows());
        for (name, (_, rows)) in names.iter().zip(&self.parts) {
            b.extend(index.read_vector_from(reader, name, *rows as u64).await?);
        }
        Ok(Some(b))
    }
}

/// The routed experts of layer `layer`: `n` SwiGLU experts of width `ffn`
/// over `hidden` (names: [`crate::model::names::expert`]).
#[derive(Debug, Clone, Copy)]
pub struct ExpertsDecl {
    pub layer: usize,
    pub n: usize,
    pub ffn: usize,
    pub hidden: usize,
}

/// Opening weights: what a model file asks of a backend while it loads.
#[allow(async_fn_in_trait)]
pub trait Load {
    type W: Weights;
    type Reader: TensorReader;
    fn index(&self) -> &TensorIndex;
    /// Where tensor bytes come from (a file; in the browser, a download).
    fn reader(&self) -> &Self::Reader;
    async fn linear(&mut self, d: &LinearDecl) -> Result<<Self::W as Weights>::Linear>;
    async fn vector(&mut self, name: &str, len: usize) -> Result<<Self::W as Weights>::Vector>;
    /// A vector from values the model computed (a norm's weight plus 1).
    fn vector_of(&mut self, name: &str, values: &[f32]) -> Result<<Self::W as Weights>::Vector>;
    async fn experts(&mut self, d: &ExpertsDecl) -> Result<<Self::W as Weights>::Experts>;
    /// A `[rows, cols]` f32 matrix from values the model computed.
    fn dense(&mut self, name: &str, rows: usize, cols: usize, values: &[f32]) -> Result<<Self::W as Weights>::Dense>;
}

/// Rotary position embedding: pairs of a head's dimensions rotated by
/// position × `inv_freq[i]`, then scaled by `factor` (YaRN's attention
/// factor; 1 otherwise).
#[derive(Debug, Clone)]
pub struct Rope {
    pub pairing: RopePairing,
    pub factor: f32,
    pub inv_freq: Vec<f32>,
}

/// Grouped-query attention's sizes: `heads` query heads share `kv_heads`
/// key/value heads, all `head_dim` wide. `window`: a query sees its own
/// position and the `window − 1` before it (sliding-window attention);
/// None: all positions before it.
#[derive(Debug, Clone)]
pub struct Gqa {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub rope: Rope,
    pub window: Option<usize>,
}

/// A gated linear unit's activation of the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x · sigmoid(x)` (SwiGLU).
    Silu,
    /// GELU's tanh approximation, `x/2 · (1 + tanh(√(2/π) · (x + 0.044715 x³)))` (GeGLU, Gemma).
    GeluTanh,
}

/// Per-head RMSNorm of q and k before RoPE (Qwen3): each `head_dim`-wide
/// head `h / sqrt(mean(h²) + eps) · w`, `q`'s weight on every query head,
/// `k`'s on every key head.
pub struct QkNorm<'a, V> {
    pub q: &'a V, // [head_dim]
    pub k: &'a V, // [head_dim]
    pub eps: f32,
}

/// Multi-head latent attention's sizes (DeepSeek): queries of `nope + rope`
/// per head, a shared latent `c_kv` of `rank` and a shared `k_pe` of `rope`,
/// values of `v_dim` per head.
#[derive(Debug, Clone)]
pub struct Latent {
    pub heads: usize,
    pub rank: usize,
    pub rope_dim: usize,
    pub nope: usize,
    pub v_dim: usize,
    pub eps: f32,
    pub scale: f32,
    pub rope: Rope,
}

/// The ops of a forward pass over the pass's tokens (the backend holds the
/// token ids, the position and the KV cache). `Act` is an activation, one
/// row per token (or, after [`Ops::rms_norm_head`], the rows the LM head
/// runs on).
pub trait Ops {
    type W: Weights;
    type Act;
    /// Each token's chosen experts and their weights.
    type Routes;
    /// Each chosen expert's output for its token.
    type Slots;

    /// `x[t] = token_embd[ids[t]]`.
    fn embed(&mut self, name: &str, w: &<Self::W as Weights>::Linear) -> Result<Self::Act>;
    /// `x / sqrt(mean(x²) + eps) · w`, each row.
    fn rms_norm(&mut self, name: &str, x: &Self::Act, w: &<Self::W as Weights>::Vector, eps: f32) -> Result<Self::Act>;
    /// [`Ops::rms_norm`] of the rows the LM head runs on (the last token's).
    fn rms_norm_head(&mut self, name: &str, x: &Self::Act, w: &<Self::W as Weights>::Vector, eps: f32) -> Result<Self::Act>;
    /// `W x (+ b)`.
    fn linear(&mut self, name: &str, w: &<Self::W as Weights>::Linear, x: &Self::Act) -> Result<Self::Act>;
    /// `residual += W x`.
    fn add_linear(&mut self, name: &str, residual: &mut Self::Act, w: &<Self::W as Weights>::Linear, x: &Self::Act) -> Result<()>;
    /// A gated linear unit's first half: `act(gate x) ⊙ (up x)`, `w`
    /// stacking gate's rows over up's.
    fn glu(&mut self, name: &str, w: &<Self::W as Weights>::Linear, x: &Self::Act, act: Activation) -> Result<Self::Act>;
    /// `x *= factor`.
    fn scale(&mut self, name: &str, x: &mut Self::Act, factor: f32) -> Result<()>;
    /// `residual += RMSNorm(y) · w` (Gemma's norms on a branch's output).
    fn add_rms_norm(&mut self, name: &str, residual: &mut Self::Act, y: &Self::Act, w: &<Self::W as Weights>::Vector, eps: f32) -> Result<()>;
    /// Causal grouped-query attention of layer `layer`: `qkv` each token's
    /// q, k, v side by side; q and k normed per head (with `norm`), roped
    /// at their positions, k and v appended to the layer's cache. Output
    /// `[n, heads · head_dim]`.
    fn attention(
        &mut self,
        name: &str,
        layer: usize,
        qkv: &Self::Act,
        norm: Option<QkNorm<'_, <Self::W as Weights>::Vector>>,
        a: &Gqa,
    ) -> Result<Self::Act>;
    /// Causal latent attention of layer `layer`: `q` `[n, heads · (nope +
    /// rope)]`, `kv_a` `[n, rank + rope]`; the cache keeps `RMSNorm(c_kv)`
    /// and the roped `k_pe`; keys and values of head h come from `kv_b`'s
    /// `[nope + v_dim, rank]` slice. Output `[n, heads · v_dim]`.
    #[allow(clippy::too_many_arguments)]
    fn latent_attention(
        &mut self,
        name: &str,
        layer: usize,
        q: &Self::Act,
        kv_a: &Self::Act,
        kv_a_norm: &<Self::W as Weights>::Vector,
        kv_b: &<Self::W as Weights>::Dense,
        a: &Latent,
    ) -> Result<Self::Act>;
    /// Choose each token's experts from its router logits
    /// ([`crate::reference::route`] is the definition).
    fn route(&mut self, name: &str, logits: &Self::Act, bias: Option<&<Self::W as Weights>::Vector>, m: &Moe) -> Result<Self::Routes>;
    /// Each chosen expert's SwiGLU MLP of its token's row of `x`.
    fn experts(&mut self, name: &str, w: &<Self::W as Weights>::Experts, x: &Self::Act, routes: &Self::Routes, m: &Moe) -> Result<Self::Slots>;
    /// `residual += Σ_k weight_k · slot_k (+ shared · sigmoid(shared_gate))`.
    #[allow(clippy::too_many_arguments)]
    fn moe_combine(
        &mut self,
        name: &str,
        residual: &mut Self::Act,
        slots: &Self::Slots,
        routes: &Self::Routes,
        shared: Option<&Self::Act>,
        shared_gate: Option<&Self::Act>,
        m: &Moe,
    ) -> Result<()>;
}
