//! The pre-norm decoder every family here is, around its own attention:
//! `x = embed(ids)`; per layer `x += Wo · attention(RMSNorm(x))`, then
//! `x += FFN(RMSNorm(x))`; `logits = head(RMSNorm(x))`. The feed-forward
//! block is a SwiGLU MLP, or routed experts with optional shared experts.

use super::names::{self, Global, Layer};
use super::ops::{Activation, ExpertsDecl, LinearDecl, Load, Ops, Rope, Weights};
use crate::config::{ModelConfig, Moe, RopeScaling};
use crate::error::Result;

/// A family's attention: what it computes from a layer's normed input,
/// `[n, heads · v_dim]`, before the output projection.
pub trait Attention<W: Weights> {
    fn forward<O: Ops<W = W>>(&self, o: &mut O, layer: usize, xn: &O::Act) -> Result<O::Act>;
}

/// One layer.
pub struct Block<W: Weights, A> {
    pub attn_norm: W::Vector, // [hidden]
    pub attn: A,
    pub wo: W::Linear,        // [hidden, heads · v_dim]
    pub ffn_norm: W::Vector,  // [hidden]
    pub ffn: Ffn<W>,
}

impl<W: Weights, A> Block<W, A> {
    /// Layer `i`'s norms, output projection and feed-forward block, around
    /// the family's `attn`.
    pub async fn load<L: Load<W = W>>(l: &mut L, cfg: &ModelConfig, i: usize, attn: A, attn_width: usize) -> Result<Self> {
        let n = |w| names::layer(l.index().kind, i, w);
        let (attn_norm, ffn_norm, o) = (n(Layer::AttnNorm), n(Layer::FfnNorm), n(Layer::O));
        Ok(Block {
            attn_norm: l.vector(&attn_norm, cfg.hidden).await?,
            attn,
            wo: l.linear(&LinearDecl::one(o, cfg.hidden, attn_width)).await?,
            ffn_norm: l.vector(&ffn_norm, cfg.hidden).await?,
            ffn: Ffn::load(l, cfg, i).await?,
        })
    }
}

/// Embedding, layers, head.
pub struct Decoder<W: Weights, A> {
    pub cfg: ModelConfig,
    pub ends: Ends<W>,
    pub blocks: Vec<Block<W, A>>,
}

impl<W: Weights, A: Attention<W>> Decoder<W, A> {
    /// Embedding and layers: the residual stream `x [n, hidden]`.
    pub fn body<O: Ops<W = W>>(&self, o: &mut O) -> Result<O::Act> {
        let eps = self.cfg.rms_eps;
        let mut x = self.ends.embed(o)?;
        for (i, b) in self.blocks.iter().enumerate() {
            // ---- attention
            let xn = o.rms_norm(&format!("blk.{i}.attn_norm"), &x, &b.attn_norm, eps)?;
            let attn = b.attn.forward(o, i, &xn)?; // [n, heads · v_dim]
            o.add_linear(&format!("blk.{i}.attn_out"), &mut x, &b.wo, &attn)?;
            // ---- feed-forward
            let xn = o.rms_norm(&format!("blk.{i}.ffn_norm"), &x, &b.ffn_norm, eps)?;
            b.ffn.add_to(o, i, self.cfg.moe.as_ref(), &xn, &mut x)?;
        }
        Ok(x)
    }

    /// Final norm and LM head: `logits [rows, vocab]`.
    pub fn head<O: Ops<W = W>>(&self, o: &mut O, x: &O::Act) -> Result<O::Act> {
        self.ends.head(o, x)
    }
}

/// RoPE as the config and, for per-dimension divisors, the file say.
pub async fn rope<L: Load>(l: &L, cfg: &ModelConfig) -> Result<Rope> {
    let factors = match cfg.rope_scaling {
        RopeScaling::FreqFactors => {
            let name = names::global(l.index().kind, Global::RopeFreqs);
            Some(l.index().read_vector_from(l.reader(), name, (cfg.rope_dim() / 2) as u64).await?)
        }
        _ => None,
    };
    Ok(Rope { pairing: cfg.rope_pairing, factor: cfg.rope_attention_factor(), inv_freq: cfg.rope_inv_freq(factors.as_deref()) })
}

/// Token embedding, final norm and LM head.
pub struct Ends<W: Weights> {
    token_embd: W::Linear,      // [vocab, hidden]
    output_norm: W::Vector,     // [hidden]
    output: Option<W::Linear>,  // [vocab, hidden]; None: tied to token_embd
    eps: f32,
    /// Embeddings multiplied by this (Gemma: √hidden); None: as stored.
    embed_scale: Option<f32>,
}

impl<W: Weights> Ends<W> {
    pub async fn load<L: Load<W = W>>(l: &mut L, cfg: &ModelConfig) -> Result<Self> {
        Self::load_with(l, cfg, 0.0, None).await
    }

    /// With the final norm's weight shifted by `norm_shift` and the
    /// embeddings scaled by `embed_scale` (Gemma).
    pub async fn load_with<L: Load<W = W>>(l: &mut L, cfg: &ModelConfig, norm_shift: f32, embed_scale: Option<f32>) -> Result<Self> {
        let kind = l.index().kind;
        let (vocab, h) = (cfg.vocab, cfg.hidden);
        let token_embd = l.linear(&LinearDecl::one(names::global(kind, Global::TokenEmbd).into(), vocab, h)).await?;
        let output_norm = norm(l, names::global(kind, Global::OutputNorm), h, norm_shift).await?;
        let output = if cfg.tie_embeddings {
            None
        } else {
            Some(l.linear(&LinearDecl::one(names::global(kind, Global::Output).into(), vocab, h)).await?)
        };
        Ok(Ends { token_embd, output_norm, output, eps: cfg.rms_eps, embed_scale })
    }

    /// The residual stream's start: `x [n, hidden]`.
    pub fn embed<O: Ops<W = W>>(&self, o: &mut O) -> Result<O::Act> {
        let mut x = o.embed("token_embd", &self.token_embd)?;
        if let Some(f) = self.embed_scale {
            o.scale("token_embd_scaled", &mut x, f)?;
        }
        Ok(x)
    }

    /// `logits [rows, vocab]` of the rows the head runs on.
    pub fn head<O: Ops<W = W>>(&self, o: &mut O, x: &O::Act) -> Result<O::Act> {
        let xn = o.rms_norm_head("output_norm", x, &self.output_norm, self.eps)?;
        o.linear("logits", self.output.as_ref().unwrap_or(&self.token_embd), &xn)
    }
}

/// A gated MLP: `down(act(gate x) ⊙ up x)` (SwiGLU; Gemma's GeGLU).
pub struct Mlp<W: Weights> {
    gate_up: W::Linear, // [2 · ffn, hidden]: gate's rows, then up's
    down: W::Linear,    // [hidden, ffn]
    act: Activation,
}

impl<W: Weights> Mlp<W> {
    /// Gate, up and down by their tensor names.
    pub async fn load<L: Load<W = W>>(
        l: &mut L,
        label: String,
        [gate, up, down]: [String; 3],
        hidden: usize,
        ffn: usize,
        act: Activation,
    ) -> Result<Self> {
        let gate_up = LinearDecl { name: label, parts: vec![(gate, ffn), (up, ffn)], cols: hidden, bias: None };
        Ok(Mlp { gate_up: l.linear(&gate_up).await?, down: l.linear(&LinearDecl::one(down, hidden, ffn)).await?, act })
    }

    /// `down(act(gate x) ⊙ up x)`; `what` names the activation
    /// (`blk.3.ffn_act`), `out` the result.
    pub fn forward<O: Ops<W = W>>(&self, o: &mut O, what: &str, x: &O::Act, out: &str) -> Result<O::Act> {
        let act = o.glu(what, &self.gate_up, x, self.act)?; // [n, ffn]
        o.linear(out, &self.down, &act)
    }

    /// `residual += down(act(gate x) ⊙ up x)`.
    fn add_to<O: Ops<W = W>>(&self, o: &mut O, what: &str, x: &O::Act, residual: &mut O::Act, out: &str) -> Result<()> {
        let act = o.glu(what, &self.gate_up, x, self.act)?; // [n, ffn]
        o.add_linear(out, residual, &self.down, &act)
    }
}

/// A norm's weight as the model applies it: the checkpoint's, plus `shift`
/// (Gemma's norms multiply by `1 + w`; llama.cpp's converter stores `1 + w`,
/// transformers' checkpoints `w`).
pub async fn norm<L: Load>(l: &mut L, name: &str, len: usize, shift: f32) -> Result<<L::W as Weights>::Vector> {
    if shift == 0.0 {
        return l.vector(name, len).await;
    }
    let w: Vec<f32> = l.index().read_vector_from(l.reader(), name, len as u64).await?.iter().map(|v| v + shift).collect();
    l.vector_of(name, &w)
}

/// Routed experts, with DeepSeek's and Qwen2-MoE's shared experts.
pub struct MoeBlock<W: Weights> {
    router: W::Linear,                      // [experts, hidden]
    bias: Option<W::Vector>,                // [experts]: added to scores for choosing only (V3)
    experts: W::Experts,                    // each [ffn, hidden] gate and up, [hidden, ffn] down
    shared: Option<(W::Linear, W::Linear)>, // gate+up [2 · shared_ffn, hidden], down [hidden, shared_ffn]
    shared_gate: Option<W::Linear>,         // [1, hidden]: Qwen2-MoE's sigmoid gate on the shared output
}

/// A layer's feed-forward block.
pub enum Ffn<W: Weights> {
    Dense(Mlp<W>),
    Moe(MoeBlock<W>),
}

impl<W: Weights> Ffn<W> {
    pub async fn load<L: Load<W = W>>(l: &mut L, cfg: &ModelConfig, i: usize) -> Result<Self> {
        let (kind, h) = (l.index().kind, cfg.hidden);
        let n = |w| names::layer(kind, i, w);
        let m = match &cfg.moe {
            Some(m) if m.is_moe_layer(i) => m,
            _ => {
                let names = [n(Layer::Gate), n(Layer::Up), n(Layer::Down)];
                return Ok(Ffn::Dense(Mlp::load(l, format!("blk.{i}.ffn_gate_up"), names, h, cfg.ffn, Activation::Silu).await?));
            }
        };
        let mn = |w| names::moe(kind, cfg.arch, i, w);
        let router = l.linear(&LinearDecl::one(mn(Layer::Router), m.n_experts, h)).await?;
        let bias = match l.index().get(&mn(Layer::RouterBias)) {
            Some(_) => Some(l.vector(&mn(Layer::RouterBias), m.n_experts).await?),
            None => None,
        };
        let experts = l.experts(&ExpertsDecl { layer: i, n: m.n_experts, ffn: m.expert_ffn, hidden: h }).await?;
        let shared = if m.shared_ffn > 0 {
            let label = format!("blk.{i}.shared_gate_up");
            let names = [mn(Layer::SharedGate), mn(Layer::SharedUp), mn(Layer::SharedDown)];
            let mlp = Mlp::load(l, label, names, h, m.shared_ffn, Activation::Silu).await?;
            Some((mlp.gate_up, mlp.down))
        } else {
            None
        };
        let shared_gate = match m.shared_gate {
            true => Some(l.linear(&LinearDecl::one(mn(Layer::SharedExpertGate), 1, h)).await?),
            false => None,
        };
        Ok(Ffn::Moe(MoeBlock { router, bias, experts, shared, shared_gate }))
    }

    /// `x += FFN(xn)` for layer `i`.
    pub fn add_to<O: Ops<W = W>>(&self, o: &mut O, i: usize, moe: Option<&Moe>, xn: &O::Act, x: &mut O::Act) -> Result<()> {
        let out = format!("blk.{i}.ffn_out");
        let (w, m) = match (self, moe) {
            (Ffn::Dense(mlp), _) => return mlp.add_to(o, &format!("blk.{i}.ffn_act"), xn, x, &out),
            (Ffn::Moe(w), Some(m)) => (w, m),
            (Ffn::Moe(_), None) => return Err(crate::Error::Config(format!("layer {i} has experts but the model no MoE configuration"))),
        };
        // ---- routed experts: each token's top-k of the router's scores
        let logits = o.linear(&format!("blk.{i}.router_logits"), &w.router, xn)?; // [n, experts]
        let routes = o.route(&format!("blk.{i}.route"), &logits, w.bias.as_ref(), m)?;
        let slots = o.experts(&format!("blk.{i}.experts"), &w.experts, xn, &routes, m)?; // [n · top_k, hidden]
        // ---- shared experts: every token, (gated by sigmoid(w · x) in Qwen2-MoE)
        let shared = match &w.shared {
            Some((gate_up, down)) => {
                let act = o.glu(&format!("blk.{i}.shared_act"), gate_up, xn, Activation::Silu)?; // [n, shared_ffn]
                Some(o.linear(&format!("blk.{i}.shared_out"), down, &act)?) // [n, hidden]
            }
            None => None,
        };
        let gate = match &w.shared_gate {
            Some(g) => Some(o.linear(&format!("blk.{i}.shared_gate"), g, xn)?), // [n, 1]
            None => None,
        };
        o.moe_combine(&out, x, &slots, &routes, shared.as_ref(), gate.as_ref(), m)
    }
}
