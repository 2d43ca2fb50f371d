//! The dense transformer (llama, qwen2) as a list of GPU ops, and its
//! [`Backend`]. Every buffer and bind group is made at load; a pass writes the
//! token ids and one `Step` uniform, encodes the ops into one command buffer
//! and submits it once. A decode step reads back only the sampled id.

use super::ops::{AttentionShape, Ctx, GateUp};
use super::weights::{GpuMatrix, Placement};
use super::{Gpu, GpuOptions, Op, Passes, Step};
use crate::config::ModelConfig;
#[cfg(not(target_arch = "wasm32"))]
use crate::engine::Backend;
use crate::error::{Error, Result};
use crate::model::names::{self, Global, Layer};
use crate::format::TensorReader;
use crate::model::ModelFiles;
use crate::sample::SamplingParams;
use baleen_shaders::shape;
use std::sync::Arc;

pub struct GpuModel {
    pub gpu: Arc<Gpu>,
    pub cfg: ModelConfig,
    /// Positions the KV cache holds.
    context: usize,
    /// The KV cache is f16.
    pub kv_f16: bool,
    /// Most tokens one pass runs.
    max_pass: usize,
    step: wgpu::Buffer,
    ids: wgpu::Buffer,    // [max_pass] u32: the pass's input ids; ids[0] ← sampled token
    logits: wgpu::Buffer, // [vocab] f32: the last token's logits
    /// Embedding and layers: every pass.
    body: Vec<Op>,
    /// Final norm, LM head, sampling: passes whose last token is wanted.
    head: Vec<Op>,
    len: usize,
    /// Weights and activations the bind groups use.
    weights: Vec<GpuMatrix>,
    _buffers: Vec<wgpu::Buffer>,
}

/// The attention kernel's sizes: grouped-query heads, or MLA's latent rows
/// (one shared "kv head" of rank + rope, the first rank values the value).
fn attention_shape(cfg: &ModelConfig) -> AttentionShape {
    match &cfg.mla {
        None => AttentionShape::gqa(cfg.n_heads as u32, cfg.n_kv_heads as u32, cfg.head_dim as u32),
        Some(a) => AttentionShape {
            n_heads: cfg.n_heads as u32,
            n_kv_heads: 1,
            head_dim: (a.kv_lora_rank + a.qk_rope) as u32,
            v_dim: a.kv_lora_rank as u32,
            scale: (a.softmax_mscale / ((a.qk_nope + a.qk_rope) as f64).sqrt()) as f32,
            latent: true,
        },
    }
}

/// Bytes of the attention scratch per pass token (one value row per head and split).
fn attention_scratch_per_token(a: &AttentionShape, max_splits: usize) -> u64 {
    a.n_heads as u64 * max_splits as u64 * a.v_dim as u64 * 4
}

impl GpuModel {
    /// Load a model from its own files.
    pub fn load(gpu: Arc<Gpu>, m: &ModelFiles, opts: &GpuOptions) -> Result<Self> {
        crate::engine::run_ready(Self::load_from(gpu, m, &m.index, opts))
    }

    /// Load a model whose tensor bytes come from `reader` (in the browser, a
    /// download): one tensor, or one chunk of a large one, at a time.
    pub async fn load_from(gpu: Arc<Gpu>, m: &ModelFiles, reader: &impl TensorReader, opts: &GpuOptions) -> Result<Self> {
        let cfg = m.config.clone();
        let index = &m.index;
        let kind = index.kind;
        if let Some(a) = &cfg.mla {
            if a.kv_lora_rank as u32 > shape::MAX_LATENT_RANK {
                return Err(Error::Unsupported(format!(
                    "kv_lora_rank {} (the GPU latent attention holds up to {})",
                    a.kv_lora_rank,
                    shape::MAX_LATENT_RANK
                )));
            }
        }
        if let Some(m) = &cfg.moe {
            if m.groups > shape::MAX_EXPERT_GROUPS as usize {
                return Err(Error::Unsupported(format!(
                    "{} expert groups (the GPU router holds up to {})",
                    m.groups,
                    shape::MAX_EXPERT_GROUPS
                )));
            }
        }
        if cfg.mla.is_none() && cfg.head_dim as u32 > shape::MAX_HEAD_DIM {
            return Err(Error::Unsupported(format!("head dim {} (the GPU kernels hold up to {})", cfg.head_dim, shape::MAX_HEAD_DIM)));
        }
        let shape = opts.shape.unwrap_or(gpu.shape);
        let grouped = opts.grouped_experts.unwrap_or(gpu.grouped_experts);
        let max_binding = opts.max_binding.unwrap_or(gpu.max_binding()).min(gpu.max_binding());
        let place = Placement::for_gpu(&gpu, shape, max_binding, opts.quad_textures.unwrap_or(gpu.quad_textures));
        // MLA's latent cache is f32 (its rows are few and small).
        let kv_half = opts.kv_f16.unwrap_or(true) && gpu.has_f16() && cfg.mla.is_none();
        let kv_bytes: u64 = if kv_half { 2 } else { 4 };
        let kv_dim64 = match &cfg.mla {
            Some(a) => (a.kv_lora_rank + a.qk_rope) as u64,
            None => (cfg.n_kv_heads * cfg.head_dim) as u64,
        };
        // Each layer's K (and V) cache is one binding: the context fits it.
        let fits = (gpu.max_binding() / (kv_dim64 * kv_bytes).max(1)) as usize;
        let context = cfg.context_length.min(opts.max_context.max(1)).min(fits);
        if context == 0 {
            return Err(Error::Unsupported(format!("one token of KV cache ({} bytes) exceeds the GPU's binding limit", kv_dim64 * kv_bytes)));
        }
        // Validated config sizes (≤ 2^24 each, head_dim ≤ 256): products fit u32
        // only when checked.
        let dim = |v: usize| u32::try_from(v).map_err(|_| Error::Config(format!("dimension {v} too large")));
        if cfg.n_heads * cfg.head_dim > u32::MAX as usize / 4 {
            return Err(Error::Config(format!("{} heads of {} are too large", cfg.n_heads, cfg.head_dim)));
        }
        let (h, hd) = (dim(cfg.hidden)?, dim(cfg.head_dim)?);
        let (nh, nkv) = (cfg.n_heads as u32, cfg.n_kv_heads as u32);
        let (q_dim, kv_dim, ffn, vocab) = (nh * hd, nkv * hd, cfg.ffn as u32, cfg.vocab as u32);
        // [t, q_dim + 2 · kv_dim]: q, k and v side by side (one stacked matmul)
        let qkv_width = q_dim + 2 * kv_dim;

        let step = gpu.uniform("step", bytemuck::bytes_of(&Step::default()));
        let ctx = Ctx { gpu: &gpu, step: &step, shape, subgroups: opts.subgroups && gpu.has_subgroups() };
        let attn_shape = attention_shape(&cfg);
        let split = ctx.attention_split(&attn_shape);
        let max_splits = context.div_ceil(split as usize);
        // Activations are bound whole: a pass holds as many tokens as the
        // widest one's binding does.
        let attn_scratch = attention_scratch_per_token(&attn_shape, max_splits);
        let per_token = [
            ("attention scratch", attn_scratch),
            ("q, k and v", qkv_width as u64 * 4),
            ("ffn activations", 2 * ffn as u64 * 4),
        ];
        let (widest, per_token_bytes) = per_token.into_iter().max_by_key(|w| w.1).expect("three widths");
        let max_pass = opts.max_pass_tokens.max(1).min((max_binding / per_token_bytes.max(1)) as usize);
        if max_pass == 0 {
            return Err(Error::Unsupported(format!(
                "one token's {widest} ({per_token_bytes} bytes, at a context of {context}) exceeds the GPU's binding limit of {max_binding} bytes; use a shorter context"
            )));
        }
        if vocab as u64 * 4 > max_binding {
            return Err(Error::Unsupported(format!("the logits ({} bytes) exceed the GPU's binding limit of {max_binding} bytes", vocab as u64 * 4)));
        }
        let t = max_pass as u64;

        let mut buffers = Vec::new();
        let mut act = |name: &str, bytes: u64| -> Result<wgpu::Buffer> {
            let b = gpu.storage(name, bytes)?;
            buffers.push(b.clone());
            Ok(b)
        };
        let ids = act("ids", t * 4)?;
        let x = act("x", t * h as u64 * 4)?; // [t, hidden] residual stream
        let xn = act("xn", t * h as u64 * 4)?; // [t, hidden] normed
        let q = act("q", t * q_dim as u64 * 4)?; // [t, n_heads · head_dim]
        let qkv = act("qkv", t * qkv_width as u64 * 4)?;
        // [t, n_heads · head_dim]; with MLA [t, n_heads · rank] (the latent output)
        let attn_width = cfg.mla.as_ref().map_or(q_dim, |a| nh * a.kv_lora_rank as u32);
        let attn = act("attn", t * attn_width as u64 * 4)?;
        // MLA: q-LoRA's bottleneck, kv_a, the absorbed queries, the heads' v outputs.
        struct MlaBufs {
            qa: wgpu::Buffer,    // [t, q_lora_rank]
            qan: wgpu::Buffer,   // [t, q_lora_rank] normed
            kv_a: wgpu::Buffer,  // [t, rank + rope]
            q_lat: wgpu::Buffer, // [t, n_heads · (rank + rope)]
            o: wgpu::Buffer,     // [t, n_heads · v]
        }
        let mla_bufs = match &cfg.mla {
            None => None,
            Some(a) => {
                let (rq, row) = (a.q_lora_rank.unwrap_or(1) as u64, (a.kv_lora_rank + a.qk_rope) as u64);
                if t * nh as u64 * row * 4 > max_binding {
                    return Err(Error::Unsupported("the absorbed MLA queries exceed the GPU's binding limit".into()));
                }
                Some(MlaBufs {
                    qa: act("q_a", t * rq * 4)?,
                    qan: act("q_a normed", t * rq * 4)?,
                    kv_a: act("kv_a", t * row * 4)?,
                    q_lat: act("q latent", t * nh as u64 * row * 4)?,
                    o: act("mla o", t * nh as u64 * a.v_head_dim as u64 * 4)?,
                })
            }
        };
        let gate_up = act("gate up", t * 2 * ffn as u64 * 4)?; // [t, 2 · ffn]: gate then up (one stacked matmul)
        let mlp = act("mlp", t * ffn as u64 * 4)?; // [t, ffn]
        // Mixture of experts: router logits, the chosen ids and weights, the
        // experts' activations per slot (top_k per token), the shared expert's.
        struct MoeBufs {
            logits: wgpu::Buffer,   // [t, experts]
            ids: wgpu::Buffer,      // [t, top_k] u32
            weights: wgpu::Buffer,  // [t, top_k]
            // Rows: slots (one token), or TILE_T per tile (grouped).
            gate: wgpu::Buffer,     // [t · top_k, 2 · expert_ffn]: gate and up stacked, or gate alone
            up: wgpu::Buffer,       // [t · top_k, expert_ffn] (gate and up apart)
            act: wgpu::Buffer,      // [t · top_k, expert_ffn]
            out: wgpu::Buffer,      // [t · top_k, hidden]; grouped: first the tiles' inputs
            shared: Option<[wgpu::Buffer; 3]>, // gate and up [t, 2 · shared_ffn]; act [t, shared_ffn]; out [t, hidden]
            shared_gate: wgpu::Buffer, // [t] logits of the shared expert's gate
            // Grouped (passes of several tokens): see moe.wgsl's `sort`.
            slot_pos: wgpu::Buffer, // [t · top_k] u32
            tiles: wgpu::Buffer,    // [expert_tiles] × (expert, count) u32
            counts: wgpu::Buffer,   // [experts] u32
        }
        let moe_bufs = match &cfg.moe {
            None => None,
            Some(m) => {
                let (e, k, f, fs) = (m.n_experts as u64, m.top_k as u64, m.expert_ffn as u64, m.shared_ffn as u64);
                // Grouped, every tile has TILE_T rows.
                let tiles = if grouped { super::expert_tiles((t * k) as u32, e as u32) as u64 } else { 1 };
                let slots = (t * k).max(if grouped { tiles * shape::TILE_T as u64 } else { 0 });
                for (what, bytes) in [("expert activations", slots * (2 * f).max(h as u64) * 4), ("router logits", t * e * 4)] {
                    if bytes > max_binding {
                        return Err(Error::Unsupported(format!("{what} ({bytes} bytes) exceed the GPU's binding limit")));
                    }
                }
                Some(MoeBufs {
                    logits: act("router logits", t * e * 4)?,
                    ids: act("expert ids", t * k * 4)?,
                    weights: act("expert weights", t * k * 4)?,
                    gate: act("expert gate", slots * 2 * f * 4)?,
                    up: act("expert up", slots * f * 4)?,
                    act: act("expert act", slots * f * 4)?,
                    out: act("expert out", slots * h as u64 * 4)?,
                    shared: if fs > 0 {
                        Some([
                            act("shared gate up", t * 2 * fs * 4)?,
                            act("shared act", t * fs * 4)?,
                            act("shared out", t * h as u64 * 4)?,
                        ])
                    } else {
                        None
                    },
                    shared_gate: act("shared expert gate", t * 4)?,
                    slot_pos: act("expert slot rows", t * k * 4)?,
                    tiles: act("expert tiles", tiles * 8)?,
                    counts: act("expert counts", e * 4)?,
                })
            }
        };
        let part_ml = act("attn partial max/sum", t * (nh as u64) * max_splits as u64 * 8)?;
        let part_o = act("attn partial out", t * attn_scratch)?;
        let logits = act("logits", vocab as u64 * 4)?;
        let inv_freq_data: Vec<f32> = cfg.rope_inv_freq();
        let inv_freq = gpu.storage_init("rope inv_freq", bytemuck::cast_slice(&inv_freq_data))?;
        buffers.push(inv_freq.clone());

        let g: &Gpu = &gpu;
        let vector = |name: String, len: u32| async move {
            let v = index.read_vector_from(reader, &name, len as u64).await?;
            g.storage_init(&name, bytemuck::cast_slice(&v))
        };
        let mut weights = Vec::new();
        // A layer's experts' tensors of one kind: one holding every expert, or one each.
        let expert_tensors = |i: usize, which: names::Expert, e: u64| -> Result<Vec<&crate::format::TensorInfo>> {
            let names: Vec<(String, Option<usize>)> = (0..e as usize).map(|x| names::expert(kind, cfg.arch, i, x, which)).collect();
            if names[0].1.is_some() {
                Ok(vec![index.require(&names[0].0)?])
            } else {
                names.iter().map(|(n, _)| index.require(n)).collect()
            }
        };
        let experts = |i: usize, which: names::Expert, e: u64, rows: u32, cols: u32| async move {
            GpuMatrix::load_experts(g, reader, &expert_tensors(i, which, e)?, e, rows as u64, cols as u64, place).await
        };
        // The routed experts' gate and up as one matrix (each expert's gate
        // rows, then its up rows), or apart when their types differ.
        let expert_gate_up = |i: usize, e: u64, rows: u32, cols: u32| async move {
            let (gate, up) = (expert_tensors(i, names::Expert::Gate, e)?, expert_tensors(i, names::Expert::Up, e)?);
            if gate[0].dtype == up[0].dtype {
                Ok::<_, Error>(Ok(GpuMatrix::load_expert_pairs(g, reader, &gate, &up, e, rows as u64, cols as u64, place).await?))
            } else {
                let gate = GpuMatrix::load_experts(g, reader, &gate, e, rows as u64, cols as u64, place).await?;
                Ok(Err((gate, GpuMatrix::load_experts(g, reader, &up, e, rows as u64, cols as u64, place).await?)))
            }
        };
        let matrix = |name: String, rows: u32, cols: u32| async move {
            let t = index.require_matrix(&name, rows as u64, cols as u64)?;
            GpuMatrix::load(g, reader, t, place).await
        };
        // Matrices whose outputs lie side by side in one row per token (q, k,
        // v; gate, up): each run of one type stacked into one matrix, so one
        // matmul computes it. Each with the column its outputs start at.
        let stack = |name: String, parts: Vec<(String, u32)>, cols: u32| async move {
            let tensors: Vec<&crate::format::TensorInfo> =
                parts.iter().map(|(n, rows)| index.require_matrix(n, *rows as u64, cols as u64)).collect::<Result<_>>()?;
            let mut out = Vec::new();
            let (mut i, mut offset) = (0, 0u32);
            while i < tensors.len() {
                let run = tensors[i..].iter().take_while(|t| t.dtype == tensors[i].dtype).count();
                let label = if run == tensors.len() { name.clone() } else { format!("{name} part {}", out.len()) };
                let m = GpuMatrix::load_stacked(g, reader, &tensors[i..i + run], &label, place).await?;
                let rows = m.rows;
                out.push((m, offset));
                offset += rows;
                i += run;
            }
            Ok::<_, Error>(out)
        };

        // Load everything first (indices into `weights`), then build ops.
        enum Ffn {
            /// `gate_up`: stacked parts and the column each starts at.
            Dense { gate_up: Vec<(usize, u32)>, down: usize },
            /// `gate_up`: the routed experts' gate and up stacked (each
            /// expert's gate rows, then its up rows), or apart. `shared`:
            /// the shared expert's stacked gate and up parts, and its down.
            Moe {
                router: usize,
                bias: Option<wgpu::Buffer>,
                gate_up: std::result::Result<usize, (usize, usize)>,
                down: usize,
                shared: Option<(Vec<(usize, u32)>, usize)>,
                shared_gate: Option<usize>,
            },
        }
        enum Attn {
            Gqa {
                /// Stacked parts of [q; k; v] and the column each starts at.
                qkv: Vec<(usize, u32)>,
                bias: Option<wgpu::Buffer>, // [q_dim + 2 · kv_dim]
                v_cache: wgpu::Buffer, // [context, kv_dim] f32, or f16 with kv_half
            },
            Mla {
                /// `W_q`, or `W_qa`, its norm and `W_qb`.
                q: std::result::Result<usize, (usize, wgpu::Buffer, usize)>,
                kv_a: usize,
                kv_a_norm: wgpu::Buffer,
                kv_b: wgpu::Buffer, // [heads · (nope + v), rank] f32
            },
        }
        struct L {
            attn_norm: wgpu::Buffer,
            attn: Attn,
            wo: usize,
            ffn_norm: wgpu::Buffer,
            ffn: Ffn,
            /// [context, kv_dim] (f16 with kv_half); MLA: [context, rank + rope] latent rows.
            k_cache: wgpu::Buffer,
        }
        weights.push(matrix(names::global(kind, Global::TokenEmbd).into(), vocab, h).await?);
        let embd = 0;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let n = |w| names::layer(kind, i, w);
            let mut w = |m: GpuMatrix| {
                weights.push(m);
                weights.len() - 1
            };
            let (attn_l, o_cols) = match &cfg.mla {
                None => {
                    let bias = if cfg.qkv_bias {
                        let mut b = Vec::with_capacity(qkv_width as usize);
                        for (part, len) in [(Layer::QBias, q_dim), (Layer::KBias, kv_dim), (Layer::VBias, kv_dim)] {
                            b.extend(index.read_vector_from(reader, &n(part), len as u64).await?);
                        }
                        Some(gpu.storage_init(&format!("blk.{i}.qkv bias"), bytemuck::cast_slice(&b))?)
                    } else {
                        None
                    };
                    let qkv_parts = vec![(n(Layer::Q), q_dim), (n(Layer::K), kv_dim), (n(Layer::V), kv_dim)];
                    let a = Attn::Gqa {
                        qkv: stack(format!("blk.{i}.attn_qkv"), qkv_parts, h).await?.into_iter().map(|(m, at)| (w(m), at)).collect(),
                        bias,
                        v_cache: gpu.storage(&format!("v cache {i}"), context as u64 * kv_dim as u64 * kv_bytes)?,
                    };
                    (a, q_dim)
                }
                Some(a) => {
                    let (rank, rope, vd) = (a.kv_lora_rank as u32, a.qk_rope as u32, a.v_head_dim as u32);
                    let q = match a.q_lora_rank {
                        None => Ok(w(matrix(n(Layer::Q), q_dim, h).await?)),
                        Some(rq) => {
                            let qa = w(matrix(n(Layer::QA), rq as u32, h).await?);
                            let norm = vector(n(Layer::QANorm), rq as u32).await?;
                            Err((qa, norm, w(matrix(n(Layer::QB), q_dim, rq as u32).await?)))
                        }
                    };
                    let kv_b = crate::model::mla_kv_b(index, reader, i, nh as usize, a).await?;
                    let a = Attn::Mla {
                        q,
                        kv_a: w(matrix(n(Layer::KvA), rank + rope, h).await?),
                        kv_a_norm: vector(n(Layer::KvANorm), rank).await?,
                        kv_b: gpu.storage_init(&format!("blk.{i}.kv_b f32"), bytemuck::cast_slice(&kv_b))?,
                    };
                    (a, nh * vd)
                }
            };
            layers.push(L {
                attn_norm: vector(n(Layer::AttnNorm), h).await?,
                attn: attn_l,
                wo: w(matrix(n(Layer::O), h, o_cols).await?),
                ffn_norm: vector(n(Layer::FfnNorm), h).await?,
                ffn: match &cfg.moe {
                    Some(m) if m.is_moe_layer(i) => {
                        let mn = |w| names::moe(kind, cfg.arch, i, w);
                        let (e, f, fs) = (m.n_experts as u64, m.expert_ffn as u32, m.shared_ffn as u32);
                        let bias = if index.get(&mn(Layer::RouterBias)).is_some() {
                            Some(vector(mn(Layer::RouterBias), e as u32).await?)
                        } else {
                            None
                        };
                        let shared = if fs > 0 {
                            let parts = vec![(mn(Layer::SharedGate), fs), (mn(Layer::SharedUp), fs)];
                            let gate_up = stack(format!("blk.{i}.shared_gate_up"), parts, h).await?.into_iter().map(|(m, at)| (w(m), at)).collect();
                            Some((gate_up, w(matrix(mn(Layer::SharedDown), h, fs).await?)))
                        } else {
                            None
                        };
                        let shared_gate = if m.shared_gate { Some(w(matrix(mn(Layer::SharedExpertGate), 1, h).await?)) } else { None };
                        Ffn::Moe {
                            router: w(matrix(mn(Layer::Router), e as u32, h).await?),
                            bias,
                            gate_up: match expert_gate_up(i, e, f, h).await? {
                                Ok(both) => Ok(w(both)),
                                Err((gate, up)) => Err((w(gate), w(up))),
                            },
                            down: w(experts(i, names::Expert::Down, e, h, f).await?),
                            shared,
                            shared_gate,
                        }
                    }
                    _ => Ffn::Dense {
                        gate_up: stack(format!("blk.{i}.ffn_gate_up"), vec![(n(Layer::Gate), ffn), (n(Layer::Up), ffn)], h)
                            .await?
                            .into_iter()
                            .map(|(m, at)| (w(m), at))
                            .collect(),
                        down: w(matrix(n(Layer::Down), h, ffn).await?),
                    },
                },
                k_cache: gpu.storage(&format!("k cache {i}"), context as u64 * kv_dim64 * kv_bytes)?,
            });
        }
        let output_norm = vector(names::global(kind, Global::OutputNorm).into(), h).await?;
        let output = if cfg.tie_embeddings {
            embd
        } else {
            weights.push(matrix(names::global(kind, Global::Output).into(), vocab, h).await?);
            weights.len() - 1
        };

        // ---- the graph
        let w = |i: usize| &weights[i];
        let mut body = ctx.embed(w(embd), &ids, &x)?;
        for (i, l) in layers.iter().enumerate() {
            body.push(ctx.rms_norm(&format!("blk.{i}.attn_norm"), &x, &l.attn_norm, &xn, h, cfg.rms_eps, false)?);
            match (&l.attn, &cfg.mla, &mla_bufs) {
                (Attn::Gqa { qkv: parts, bias, v_cache }, _, _) => {
                    for (wi, at) in parts {
                        body.extend(ctx.matmul_at(w(*wi), &xn, h, &qkv, qkv_width, *at, bias.as_ref(), false, false)?);
                    }
                    let name = format!("blk.{i}.rope");
                    body.push(ctx.rope_scatter(&name, cfg.rope_pairing, &inv_freq, &qkv, &q, &l.k_cache, v_cache, hd, nh, nkv, kv_half)?);
                    body.extend(ctx.attention(
                        &format!("blk.{i}.attn"),
                        &q,
                        &l.k_cache,
                        v_cache,
                        &part_ml,
                        &part_o,
                        &attn,
                        &attn_shape,
                        max_splits as u32,
                        kv_half,
                    )?);
                    body.extend(ctx.matmul(w(l.wo), &attn, q_dim, &x, h, None, true, false)?);
                }
                (Attn::Mla { q: wq, kv_a, kv_a_norm, kv_b }, Some(a), Some(mb)) => {
                    let m = super::ops::MlaShape {
                        heads: nh,
                        rank: a.kv_lora_rank as u32,
                        rope: a.qk_rope as u32,
                        nope: a.qk_nope as u32,
                        v_dim: a.v_head_dim as u32,
                        eps: cfg.rms_eps,
                        rope_factor: cfg.rope_attention_factor(),
                        pairing: cfg.rope_pairing,
                    };
                    match wq {
                        Ok(wq) => body.extend(ctx.matmul(w(*wq), &xn, h, &q, q_dim, None, false, false)?),
                        Err((qa, norm, qb)) => {
                            let rq = w(*qa).rows;
                            body.extend(ctx.matmul(w(*qa), &xn, h, &mb.qa, rq, None, false, false)?);
                            body.push(ctx.rms_norm(&format!("blk.{i}.q_a_norm"), &mb.qa, norm, &mb.qan, rq, cfg.rms_eps, false)?);
                            body.extend(ctx.matmul(w(*qb), &mb.qan, rq, &q, q_dim, None, false, false)?);
                        }
                    }
                    let row = m.rank + m.rope;
                    body.extend(ctx.matmul(w(*kv_a), &xn, h, &mb.kv_a, row, None, false, false)?);
                    body.push(ctx.mla_kv_cache(&format!("blk.{i}.latent cache"), &m, &inv_freq, &mb.kv_a, kv_a_norm, &l.k_cache)?);
                    body.push(ctx.mla_absorb_q(&format!("blk.{i}.absorb q"), &m, &inv_freq, &q, kv_b, &mb.q_lat)?);
                    body.extend(ctx.attention(
                        &format!("blk.{i}.attn"),
                        &mb.q_lat,
                        &l.k_cache,
                        &l.k_cache,
                        &part_ml,
                        &part_o,
                        &attn,
                        &attn_shape,
                        max_splits as u32,
                        false,
                    )?);
                    body.push(ctx.mla_v_up(&format!("blk.{i}.v up"), &m, &attn, kv_b, &mb.o)?);
                    body.extend(ctx.matmul(w(l.wo), &mb.o, nh * m.v_dim, &x, h, None, true, false)?);
                }
                _ => unreachable!("MLA buffers exist whenever an MLA layer does"),
            }
            body.push(ctx.rms_norm(&format!("blk.{i}.ffn_norm"), &x, &l.ffn_norm, &xn, h, cfg.rms_eps, false)?);
            match (&l.ffn, &cfg.moe, &moe_bufs) {
                (Ffn::Moe { router, bias, gate_up, down: ed, shared, shared_gate }, Some(m), Some(mb)) => {
                    let (e, k, f) = (m.n_experts as u32, m.top_k as u32, m.expert_ffn as u32);
                    body.extend(ctx.matmul(w(*router), &xn, h, &mb.logits, e, None, false, false)?);
                    body.push(ctx.route(&format!("blk.{i}.route"), m, &mb.logits, bias.as_ref(), &mb.ids, &mb.weights)?);
                    // Each slot's expert rows: in every pass, or with `grouped`
                    // only for one token, several tokens' slots grouped by expert.
                    let per_slot = if grouped { Passes::Single } else { Passes::All };
                    let gu = match gate_up {
                        Ok(_) => GateUp::Stacked(&mb.gate),
                        Err(_) => GateUp::Apart(&mb.gate, &mb.up),
                    };
                    let mut routed = match gate_up {
                        Ok(both) => ctx.experts(w(*both), 2 * f, &xn, h, k, &mb.ids, &mb.gate, k)?,
                        Err((eg, eu)) => {
                            let mut ops = ctx.experts(w(*eg), f, &xn, h, k, &mb.ids, &mb.gate, k)?;
                            ops.extend(ctx.experts(w(*eu), f, &xn, h, k, &mb.ids, &mb.up, k)?);
                            ops
                        }
                    };
                    routed.push(ctx.swiglu(&format!("blk.{i}.experts swiglu"), gu, &mb.act, f, k)?);
                    routed.extend(ctx.experts(w(*ed), h, &mb.act, f, 1, &mb.ids, &mb.out, k)?);
                    body.extend(routed.into_iter().map(|o| o.only(per_slot)));
                    if grouped {
                        let mut routed = vec![
                            ctx.moe_sort(&format!("blk.{i}.experts sort"), m, &mb.ids, &mb.slot_pos, &mb.tiles, &mb.counts)?,
                            ctx.moe_gather(&format!("blk.{i}.experts gather"), &xn, &mb.slot_pos, &mb.out, h, k)?,
                        ];
                        match gate_up {
                            Ok(both) => routed.extend(ctx.grouped(w(*both), 2 * f, &mb.out, h, &mb.tiles, &mb.gate, m)?),
                            Err((eg, eu)) => {
                                routed.extend(ctx.grouped(w(*eg), f, &mb.out, h, &mb.tiles, &mb.gate, m)?);
                                routed.extend(ctx.grouped(w(*eu), f, &mb.out, h, &mb.tiles, &mb.up, m)?);
                            }
                        }
                        routed.push(ctx.swiglu_tiles(&format!("blk.{i}.experts swiglu"), gu, &mb.act, f, m)?);
                        routed.extend(ctx.grouped(w(*ed), h, &mb.act, f, &mb.tiles, &mb.out, m)?);
                        body.extend(routed.into_iter().map(|o| o.only(Passes::Multi)));
                    }
                    let mut shared_out = None;
                    if let (Some((parts, sd)), Some([bgu, ba, bo])) = (shared, &mb.shared) {
                        let fs = m.shared_ffn as u32;
                        for (wi, at) in parts {
                            body.extend(ctx.matmul_at(w(*wi), &xn, h, bgu, 2 * fs, *at, None, false, false)?);
                        }
                        body.push(ctx.swiglu(&format!("blk.{i}.shared swiglu"), GateUp::Stacked(bgu), ba, fs, 1)?);
                        body.extend(ctx.matmul(w(*sd), ba, fs, bo, h, None, false, false)?);
                        shared_out = Some(bo);
                    }
                    if let Some(sgw) = shared_gate {
                        body.extend(ctx.matmul(w(*sgw), &xn, h, &mb.shared_gate, 1, None, false, false)?);
                    }
                    let gate_logit = shared_gate.map(|_| &mb.shared_gate);
                    let name = format!("blk.{i}.experts combine");
                    body.push(ctx.moe_combine(&name, &x, &mb.out, &mb.weights, shared_out, gate_logit, None, h, k)?.only(per_slot));
                    if grouped {
                        body.push(ctx.moe_combine(&name, &x, &mb.out, &mb.weights, shared_out, gate_logit, Some(&mb.slot_pos), h, k)?.only(Passes::Multi));
                    }
                }
                (Ffn::Dense { gate_up: parts, down: wd }, _, _) => {
                    // Decode on CPU adapters: the matmul applies SwiGLU itself
                    // (a dispatch fewer), when gate and up are one matrix.
                    let fused = match parts.as_slice() {
                        [(wi, 0)] => ctx.matmul_swiglu(&format!("blk.{i}.ffn_gate_up+swiglu"), w(*wi), &xn, h, &mlp)?,
                        _ => None,
                    };
                    // With it, the separate matmul and SwiGLU run in passes of several tokens only.
                    let unfused = |op: Op| match (fused.is_some(), op.passes) {
                        (false, _) => Some(op),
                        (true, Passes::All) => Some(op.only(Passes::Multi)),
                        (true, Passes::Single) => None,
                        (true, _) => Some(op),
                    };
                    for (wi, at) in parts {
                        body.extend(ctx.matmul_at(w(*wi), &xn, h, &gate_up, 2 * ffn, *at, None, false, false)?.into_iter().filter_map(unfused));
                    }
                    body.extend(unfused(ctx.swiglu(&format!("blk.{i}.swiglu"), GateUp::Stacked(&gate_up), &mlp, ffn, 1)?));
                    body.extend(fused);
                    body.extend(ctx.matmul(w(*wd), &mlp, ffn, &x, h, None, true, false)?);
                }
                _ => unreachable!("MoE buffers exist whenever an MoE layer does"),
            }
        }
        let mut head = vec![ctx.rms_norm("output_norm", &x, &output_norm, &xn, h, cfg.rms_eps, true)?];
        head.extend(ctx.matmul(w(output), &xn, h, &logits, vocab, None, false, true)?);
        head.push(ctx.sample(&logits, &ids, vocab)?);
        for l in layers {
            if let Ffn::Moe { bias: Some(b), .. } = &l.ffn {
                buffers.push(b.clone());
            }
            match l.attn {
                Attn::Gqa { bias, v_cache, .. } => {
                    buffers.push(v_cache);
                    buffers.extend(bias);
                }
                Attn::Mla { q, kv_a_norm, kv_b, .. } => {
                    buffers.extend([kv_a_norm, kv_b]);
                    if let Err((_, norm, _)) = q {
                        buffers.push(norm);
                    }
                }
            }
            buffers.extend([l.attn_norm, l.ffn_norm, l.k_cache]);
        }
        buffers.extend([output_norm, step.clone(), inv_freq]);
        gpu.check()?;
        Ok(GpuModel {
            gpu,
            cfg,
            context,
            kv_f16: kv_half,
            max_pass,
            step,
            ids,
            logits,
            body,
            head,
            len: 0,
            weights,
            _buffers: buffers,
        })
    }

    /// Run `tokens` (≤ max_pass) at the cache's end; with `head`, also the
    /// LM head and sampling of the last token.
    fn pass(&mut self, tokens: &[u32], head: bool, sampling: &SamplingParams, draw: u32) -> Result<()> {
        debug_assert!(!tokens.is_empty() && tokens.len() <= self.max_pass);
        self.gpu.queue.write_buffer(&self.ids, 0, bytemuck::cast_slice(tokens));
        let step = Step {
            n_tokens: tokens.len() as u32,
            pos: self.len as u32,
            seed_lo: sampling.seed as u32,
            seed_hi: (sampling.seed >> 32) as u32,
            draw,
            top_k: sampling.top_k.min(u32::MAX as usize) as u32,
            temperature: sampling.temperature,
            top_p: sampling.top_p,
        };
        let ops: Vec<&Op> = if head { self.body.iter().chain(&self.head).collect() } else { self.body.iter().collect() };
        self.gpu.run(&self.step, &step, &ops)?;
        self.len += tokens.len();
        Ok(())
    }

    fn check_input(&self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::Input("forward: no tokens".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab) {
            return Err(Error::Input(format!("token id {bad} is outside the vocabulary of {}", self.cfg.vocab)));
        }
        if self.len + tokens.len() > self.context {
            return Err(Error::Input(format!(
                "{} tokens do not fit the context of {} (already {} in the cache)",
                tokens.len(),
                self.context,
                self.len
            )));
        }
        Ok(())
    }

    /// Run all tokens, in chunks; the last chunk runs the head.
    fn run_all(&mut self, tokens: &[u32], sampling: &SamplingParams, draw: u32) -> Result<()> {
        self.check_input(tokens)?;
        let chunks: Vec<&[u32]> = tokens.chunks(self.max_pass).collect();
        for (i, c) in chunks.iter().enumerate() {
            self.pass(c, i + 1 == chunks.len(), sampling, draw)?;
        }
        Ok(())
    }

    /// Wall time of each op of a pass of `n_tokens` (1: a decode step; the
    /// token ids are the last prompt's) at the current position, run alone
    /// `reps` times: where a step's time goes. Leaves the cache as it was.
    pub async fn profile(&mut self, n_tokens: usize, reps: usize) -> Result<Vec<(String, f64)>> {
        let n = n_tokens.clamp(1, self.max_pass);
        if self.len + n > self.context {
            return Err(Error::Input(format!("a pass of {n} tokens at position {} does not fit the context of {}", self.len, self.context)));
        }
        let step = Step { n_tokens: n as u32, pos: self.len as u32, ..Default::default() };
        if n == 1 {
            self.gpu.queue.write_buffer(&self.ids, 0, bytemuck::cast_slice(&[1u32]));
        }
        let mut out = Vec::new();
        for op in self.body.iter().chain(&self.head) {
            if !op.passes.runs(&step) {
                continue;
            }
            // The warm-up run also sizes the timed one: enough repeats for
            // ~5 ms, so a submit's own cost (tens of µs) does not swamp a
            // GPU's few-µs kernels.
            let ops = vec![op; reps];
            let t0 = crate::engine::now_ms();
            self.gpu.run(&self.step, &step, &ops)?;
            self.finished().await?;
            let per_op = ((crate::engine::now_ms() - t0) / reps as f64).max(1e-3);
            let ops = vec![op; reps.max((5.0 / per_op) as usize).min(500)];
            let t0 = crate::engine::now_ms();
            self.gpu.run(&self.step, &step, &ops)?;
            self.finished().await?;
            out.push((op.name.clone(), (crate::engine::now_ms() - t0) / ops.len() as f64));
        }
        Ok(out)
    }

    /// [`GpuModel::profile`] summed by kind of op (`attn_q`, `rope`, …),
    /// largest first: milliseconds per pass.
    pub async fn profile_by_kind(&mut self, n_tokens: usize, reps: usize) -> Result<Vec<(String, f64)>> {
        let mut by_kind: std::collections::BTreeMap<String, f64> = Default::default();
        for (name, ms) in self.profile(n_tokens, reps).await? {
            let words = name.split(['.', ' ']).filter(|w| !w.is_empty() && !w.chars().all(|c| c.is_ascii_digit()) && *w != "blk");
            *by_kind.entry(words.take(2).collect::<Vec<_>>().join(" ")).or_default() += ms;
        }
        let mut v: Vec<_> = by_kind.into_iter().collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(v)
    }

    /// Resolves once the GPU has run everything submitted so far.
    async fn finished(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            self.gpu
                .device
                .poll(wgpu::PollType::Wait { submission_index: None, timeout: None })
                .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
            self.gpu.check()
        }
        #[cfg(target_arch = "wasm32")]
        {
            self.gpu.read_async(&self.ids, 0, 4).await.map(|_| ())
        }
    }

    /// How many of the model's matrices lie in textures, of all of them
    /// (see `weights::Placement`).
    pub fn matrices_in_textures(&self) -> (usize, usize) {
        (self.weights.iter().filter(|m| m.quad_texture()).count(), self.weights.len())
    }

    /// The last pass's logits (`[vocab]`), once the GPU is done.
    pub fn read_logits_async(&self) -> impl std::future::Future<Output = Result<Vec<f32>>> {
        let f = self.gpu.read_async(&self.logits, 0, self.cfg.vocab as u64 * 4);
        async move { Ok(bytemuck::cast_slice(&f.await?).to_vec()) }
    }

    /// The token the last pass sampled, once the GPU is done.
    pub fn read_token_async(&self) -> impl std::future::Future<Output = Result<u32>> {
        let f = self.gpu.read_async(&self.ids, 0, 4);
        let vocab = self.cfg.vocab;
        async move {
            let bytes = f.await?;
            let id = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
            if id as usize >= vocab {
                return Err(Error::Gpu("the model produced only NaN logits (numerical failure on this GPU)".into()));
            }
            Ok(id)
        }
    }

    /// Run `tokens` (in chunks) and sample the next token on the GPU, without
    /// waiting: read the result with `read_token_async` / `read_logits_async`.
    pub fn submit(&mut self, tokens: &[u32], sampling: &SamplingParams, draw: u32) -> Result<()> {
        self.run_all(tokens, sampling, draw)
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn wait<T>(&self, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        self.gpu
            .device
            .poll(wgpu::PollType::Wait { submission_index: None, timeout: None })
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        self.gpu.check()?;
        pollster::block_on(f)
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn read_logits(&self) -> Result<Vec<f32>> {
        self.wait(self.read_logits_async())
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn read_token(&self) -> Result<u32> {
        self.wait(self.read_token_async())
    }
}

/// In the browser every readback is awaited.
#[cfg(target_arch = "wasm32")]
impl crate::engine::AsyncBackend for GpuModel {
    fn len(&self) -> usize {
        self.len
    }
    fn truncate(&mut self, len: usize) {
        // Positions past `len` are simply overwritten by later passes.
        self.len = self.len.min(len);
    }
    fn context_length(&self) -> usize {
        self.context
    }
    async fn forward_sample(
        &mut self,
        tokens: &[u32],
        sampling: &SamplingParams,
        draw: u32,
        want_logits: bool,
    ) -> Result<(u32, Option<Vec<f32>>)> {
        self.run_all(tokens, sampling, draw)?;
        let logits = if want_logits { Some(self.read_logits_async().await?) } else { None };
        let token = self.read_token_async().await?;
        self.gpu.check()?;
        Ok((token, logits))
    }
}

/// Natively the GPU model is a synchronous [`Backend`]; in the browser it is
/// an [`AsyncBackend`](crate::engine::AsyncBackend).
#[cfg(not(target_arch = "wasm32"))]
impl Backend for GpuModel {
    fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        let greedy = SamplingParams::default();
        if all_logits {
            // Position by position through the decode path.
            self.check_input(tokens)?;
            let mut out = Vec::with_capacity(tokens.len() * self.cfg.vocab);
            for &t in tokens {
                self.pass(&[t], true, &greedy, 0)?;
                out.extend(self.read_logits()?);
            }
            return Ok(out);
        }
        self.run_all(tokens, &greedy, 0)?;
        self.read_logits()
    }

    fn forward_sample(
        &mut self,
        tokens: &[u32],
        sampling: &SamplingParams,
        draw: u32,
        want_logits: bool,
    ) -> Result<(u32, Option<Vec<f32>>)> {
        self.run_all(tokens, sampling, draw)?;
        let logits = if want_logits { Some(self.read_logits()?) } else { None };
        Ok((self.read_token()?, logits))
    }

    fn len(&self) -> usize {
        self.len
    }
    fn truncate(&mut self, len: usize) {
        // Positions past `len` are simply overwritten by later passes.
        self.len = self.len.min(len);
    }
    fn context_length(&self) -> usize {
        self.context
    }
    fn vocab(&self) -> usize {
        self.cfg.vocab
    }
    fn describe(&self) -> (String, String) {
        (self.gpu.adapter_name(), self.gpu.backend_name())
    }
    fn gpu_bytes(&self) -> u64 {
        self.gpu.allocated_bytes()
    }
}
