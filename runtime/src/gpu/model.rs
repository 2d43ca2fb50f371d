//! A model on the GPU: the loader that places the weights a model file
//! declares ([`GpuWeights`]), the recorder that turns its graph into a list
//! of ops with every buffer and bind group made at load, and the
//! [`Backend`] that runs them. A pass writes the token ids and one `Step`
//! uniform, encodes the ops into one command buffer and submits it once; a
//! decode step reads back only the sampled id. Nothing here knows an
//! architecture: that is `crate::model`'s.

use super::ops::{AttentionBuffers, AttentionShape, Combine, Ctx, ExpertMatmul, GateUp, Matmul, MlaShape, RopeScatter};
use super::paging::{ExpertCache, ExpertSource, ExpertStats, ExpertTensors};
use super::weights::{GpuMatrix, Placement};
use super::{Gpu, GpuOptions, Mark, Op, Passes, Step};
use crate::config::{Arch, ModelConfig, Moe};
#[cfg(not(target_arch = "wasm32"))]
use crate::engine::Backend;
use crate::error::{Error, Result};
use crate::format::{TensorIndex, TensorInfo, TensorReader};
use crate::model::names;
use crate::model::ops::{Activation, ExpertsDecl, Gqa, Latent, LinearDecl, Load, Ops, QkNorm, Rope, Weights};
use crate::model::{Model, ModelFiles};
use crate::engine::Sampled;
use crate::sample::{Adjust, Logprobs, SamplingParams};
use baleen_shaders::shape;
use std::collections::HashMap;
use std::sync::Arc;

/// The GPU's weights: matrices in row chunks (buffers or textures, see
/// [`Placement`]), vectors in f32 buffers.
pub struct GpuWeights;

impl Weights for GpuWeights {
    type Linear = GpuLinear;
    type Vector = wgpu::Buffer;
    type Experts = GpuExperts;
    type Dense = wgpu::Buffer;
}

/// A linear layer: each run of parts of one type stacked into one matrix,
/// with the column its outputs start at, so one matmul computes a run.
pub struct GpuLinear {
    parts: Vec<(GpuMatrix, u32)>,
    bias: Option<wgpu::Buffer>, // [rows]
    rows: u32,
    cols: u32,
}

/// The routed experts' gate and up: one matrix (each expert's gate rows,
/// then its up rows) when their types agree, else apart.
pub enum ExpertGateUp {
    Stacked(GpuMatrix),
    Apart(GpuMatrix, GpuMatrix),
}

/// A layer's routed experts: all resident, or paged (layer `paged` of the
/// model's [`ExpertCache`]).
pub enum GpuExperts {
    Resident { gate_up: ExpertGateUp, down: GpuMatrix /* [experts · hidden, ffn] */, hidden: u32 },
    Paged { paged: usize, hidden: u32 },
}

/// Uploads the weights a model declares, read from `reader`, as `place` says.
struct Loader<'a, R> {
    gpu: &'a Gpu,
    index: &'a TensorIndex,
    reader: &'a R,
    place: Placement,
    arch: Arch,
    /// Matrices in textures, and all matrices.
    textures: (usize, usize),
    /// With an expert cache, the routed experts' tensors, layer by layer,
    /// instead of their weights.
    paged: Option<Vec<ExpertTensors>>,
}

impl<R: TensorReader> Loader<'_, R> {
    fn placed(&mut self, m: GpuMatrix) -> GpuMatrix {
        self.textures.0 += m.quad_texture() as usize;
        self.textures.1 += 1;
        m
    }

    fn expert_tensors(&self, d: &ExpertsDecl, which: names::Expert) -> Result<Vec<&TensorInfo>> {
        expert_tensors(self.index, self.arch, d.layer, d.n, which)
    }
}

/// Layer `layer`'s `n` experts' tensors of one kind: one holding every
/// expert, or one each.
pub(super) fn expert_tensors(index: &TensorIndex, arch: Arch, layer: usize, n: usize, which: names::Expert) -> Result<Vec<&TensorInfo>> {
    let names: Vec<(String, Option<usize>)> = (0..n).map(|e| names::expert(index.kind, arch, layer, e, which)).collect();
    match names.first() {
        Some((name, Some(_))) => Ok(vec![index.require(name)?]),
        _ => names.iter().map(|(n, _)| index.require(n)).collect(),
    }
}

impl<R: TensorReader> Load for Loader<'_, R> {
    type W = GpuWeights;
    type Reader = R;

    fn index(&self) -> &TensorIndex {
        self.index
    }
    fn reader(&self) -> &R {
        self.reader
    }

    async fn linear(&mut self, d: &LinearDecl) -> Result<GpuLinear> {
        let cols = d.cols as u64;
        let tensors: Vec<&TensorInfo> = d.parts.iter().map(|(n, rows)| self.index.require_matrix(n, *rows as u64, cols)).collect::<Result<_>>()?;
        let mut parts = Vec::new();
        let (mut i, mut offset) = (0, 0u32);
        while i < tensors.len() {
            let run = tensors[i..].iter().take_while(|t| t.dtype == tensors[i].dtype).count();
            let m = match run == tensors.len() {
                true if run == 1 => GpuMatrix::load(self.gpu, self.reader, tensors[0], self.place).await?,
                true => GpuMatrix::load_stacked(self.gpu, self.reader, &tensors, &d.name, self.place).await?,
                false => {
                    let label = format!("{} part {}", d.name, parts.len());
                    GpuMatrix::load_stacked(self.gpu, self.reader, &tensors[i..i + run], &label, self.place).await?
                }
            };
            let rows = m.rows;
            parts.push((self.placed(m), offset));
            offset += rows;
            i += run;
        }
        let bias = match d.read_bias(self.index, self.reader).await? {
            Some(b) => Some(self.gpu.storage_init(&format!("{} bias", d.name), bytemuck::cast_slice(&b))?),
            None => None,
        };
        Ok(GpuLinear { parts, bias, rows: offset, cols: d.cols as u32 })
    }

    async fn vector(&mut self, name: &str, len: usize) -> Result<wgpu::Buffer> {
        let v = self.index.read_vector_from(self.reader, name, len as u64).await?;
        self.gpu.storage_init(name, bytemuck::cast_slice(&v))
    }

    fn vector_of(&mut self, name: &str, values: &[f32]) -> Result<wgpu::Buffer> {
        self.gpu.storage_init(name, bytemuck::cast_slice(values))
    }

    async fn experts(&mut self, d: &ExpertsDecl) -> Result<GpuExperts> {
        let (e, f, h) = (d.n as u64, d.ffn as u64, d.hidden as u64);
        let (gate, up) = (self.expert_tensors(d, names::Expert::Gate)?, self.expert_tensors(d, names::Expert::Up)?);
        if self.paged.is_some() {
            let down = self.expert_tensors(d, names::Expert::Down)?;
            super::weights::check_experts(&gate, &up, e, f, h)?;
            super::weights::check_experts(&down, &[], e, h, f)?;
            let owned = |ts: &[&TensorInfo]| ts.iter().map(|t| (*t).clone()).collect();
            let t = ExpertTensors { layer: d.layer, gate: owned(&gate), up: owned(&up), down: owned(&down), n: e as u32, ffn: f as u32, hidden: h as u32 };
            let paged = self.paged.as_mut().expect("checked");
            paged.push(t);
            return Ok(GpuExperts::Paged { paged: paged.len() - 1, hidden: h as u32 });
        }
        let (g, r, p) = (self.gpu, self.reader, self.place);
        let gate_up = if gate[0].dtype == up[0].dtype {
            ExpertGateUp::Stacked(GpuMatrix::load_expert_pairs(g, r, &gate, &up, e, f, h, p).await?)
        } else {
            ExpertGateUp::Apart(GpuMatrix::load_experts(g, r, &gate, e, f, h, p).await?, GpuMatrix::load_experts(g, r, &up, e, f, h, p).await?)
        };
        let gate_up = match gate_up {
            ExpertGateUp::Stacked(m) => ExpertGateUp::Stacked(self.placed(m)),
            ExpertGateUp::Apart(a, b) => ExpertGateUp::Apart(self.placed(a), self.placed(b)),
        };
        let down = self.expert_tensors(d, names::Expert::Down)?;
        let down = GpuMatrix::load_experts(g, r, &down, e, h, f, p).await?;
        Ok(GpuExperts::Resident { gate_up, down: self.placed(down), hidden: h as u32 })
    }

    fn dense(&mut self, name: &str, _rows: usize, _cols: usize, values: &[f32]) -> Result<wgpu::Buffer> {
        self.gpu.storage_init(name, bytemuck::cast_slice(values))
    }
}

/// An activation buffer: `[max_pass, width]` f32, or one row (`single`:
/// the LM head's, the last token's).
#[derive(Clone)]
pub struct GpuAct {
    buf: wgpu::Buffer,
    width: u32,
    single: bool,
}

/// The chosen experts: ids `[n, top_k]` u32, weights `[n, top_k]`.
pub struct GpuRoutes {
    ids: wgpu::Buffer,
    weights: wgpu::Buffer,
}

/// The experts' outputs `[slots, hidden]`: per slot, or (passes of several
/// tokens, `slot_pos`) at the rows of their expert's tiles.
pub struct GpuSlots {
    out: wgpu::Buffer,
    slot_pos: Option<wgpu::Buffer>,
}

/// What an intermediate's name says about its buffer: the name without its
/// layer (`blk.3.qkv` → `qkv`). Layers run one after another, so one
/// buffer per role (and width) serves every layer.
fn role(name: &str) -> &str {
    match name.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
        Some((layer, rest)) if layer.chars().all(|c| c.is_ascii_digit()) => rest,
        _ => name,
    }
}

/// Records a graph into ops, making the buffers they need as it goes.
struct Recorder<'a> {
    gpu: &'a Gpu,
    ctx: Ctx<'a>,
    grouped: bool,
    /// The binding limit weights and activations are placed within.
    max_binding: u64,
    /// Tokens a pass holds: as many as the widest activation's binding does.
    max_pass: usize,
    /// Positions the KV cache holds.
    context: usize,
    /// The pass length the sliding windows' rings are sized for.
    ring_pass: usize,
    kv_half: bool,
    ids: wgpu::Buffer, // [max_pass] u32: the pass's input ids; ids[0] ← sampled token
    pool: HashMap<(String, u64), wgpu::Buffer>,
    /// Per layer: keys (GQA) or latent rows (MLA), and values (GQA).
    caches: Vec<Option<(wgpu::Buffer, Option<wgpu::Buffer>)>>,
    inv_freq: Vec<(Vec<f32>, wgpu::Buffer)>,
    ops: Vec<Op>,
    marks: Vec<Mark>,
    /// Test hook: multiply this intermediate by this factor.
    scale_output: Option<(String, f32)>,
    /// The paged experts' matrices, and where passes stop for them.
    experts: Option<&'a ExpertCache>,
    pauses: Vec<Pause>,
}

/// Where a pass stops for a paged layer's expert ids: ops `at..end` are
/// its expert matmuls, run once per round of uploads, rounds after the
/// first from `repeat` (past the grouped path's sort and gather).
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
struct Pause {
    paged: usize,
    ids: wgpu::Buffer, // [max_pass, top_k] u32: the router's choices
    top_k: u32,
    at: usize,
    repeat: usize,
    end: usize,
}

impl Recorder<'_> {
    /// A buffer of `per_token` bytes for each of a pass's tokens, one per role.
    fn buffer(&mut self, name: &str, per_token: u64) -> Result<wgpu::Buffer> {
        let fits = (self.max_binding / per_token.max(1)) as usize;
        if fits == 0 {
            return Err(Error::Unsupported(format!(
                "one token's {name} ({per_token} bytes, at a context of {}) exceeds the GPU's binding limit of {} bytes; use a shorter context",
                self.context, self.max_binding
            )));
        }
        // Earlier buffers, sized for more tokens, hold the fewer too.
        self.max_pass = self.max_pass.min(fits);
        self.fixed(name, self.max_pass as u64 * per_token)
    }

    /// A buffer of `bytes`, one per role and size.
    fn fixed(&mut self, name: &str, bytes: u64) -> Result<wgpu::Buffer> {
        if bytes > self.max_binding {
            return Err(Error::Unsupported(format!("{name} ({bytes} bytes) exceed the GPU's binding limit of {} bytes", self.max_binding)));
        }
        let key = (role(name).to_string(), bytes);
        if let Some(b) = self.pool.get(&key) {
            return Ok(b.clone());
        }
        let b = self.gpu.storage(role(name), bytes)?;
        self.pool.insert(key, b.clone());
        Ok(b)
    }

    fn act(&mut self, name: &str, width: u32, single: bool) -> Result<GpuAct> {
        let buf = if single { self.fixed(&format!("{name} (one row)"), width as u64 * 4)? } else { self.buffer(name, width as u64 * 4)? };
        Ok(GpuAct { buf, width, single })
    }

    /// `name` is `x`'s value once the ops so far have run.
    fn mark(&mut self, name: &str, x: &GpuAct) -> Result<()> {
        if let Some((target, factor)) = &self.scale_output {
            if target == name {
                let op = self.ctx.scale(&format!("{name} scaled"), &x.buf, x.width, x.single, *factor)?;
                self.ops.push(op);
            }
        }
        self.marks.push(Mark { at: self.ops.len(), name: name.to_string(), buf: x.buf.clone(), width: x.width, single: x.single });
        Ok(())
    }

    /// RoPE's inverse frequencies, one buffer for each set (Gemma's local
    /// and global layers have their own).
    fn inv_freq(&mut self, rope: &Rope) -> Result<wgpu::Buffer> {
        if let Some((_, b)) = self.inv_freq.iter().find(|(f, _)| *f == rope.inv_freq) {
            return Ok(b.clone());
        }
        let b = self.gpu.storage_init("rope inv_freq", bytemuck::cast_slice(&rope.inv_freq))?;
        self.inv_freq.push((rope.inv_freq.clone(), b.clone()));
        Ok(b)
    }

    /// Layer `l`'s cache: `[rows, width]` keys, and values with `values`
    /// (f16 with `half`); `rows` the context, or a sliding window's ring.
    fn cache(&mut self, l: usize, width: u32, values: bool, half: bool, rows: usize) -> Result<(wgpu::Buffer, Option<wgpu::Buffer>)> {
        if self.caches.len() <= l {
            self.caches.resize(l + 1, None);
        }
        if let Some(c) = &self.caches[l] {
            return Ok(c.clone());
        }
        let bytes = rows as u64 * width as u64 * if half { 2 } else { 4 };
        let k = self.gpu.storage(&format!("k cache {l}"), bytes)?;
        let v = if values { Some(self.gpu.storage(&format!("v cache {l}"), bytes)?) } else { None };
        self.caches[l] = Some((k.clone(), v.clone()));
        Ok((k, v))
    }

    /// Attention's split partials: `[max_pass, heads, splits]` (max, sum)
    /// and `[max_pass, heads, splits, v_dim]` outputs, and the splits.
    fn attention_scratch(&mut self, a: &AttentionShape) -> Result<(wgpu::Buffer, wgpu::Buffer, u32)> {
        let max_splits = self.context.div_ceil(self.ctx.attention_split(a) as usize) as u64;
        let per_head = a.n_heads as u64 * max_splits;
        let o = self.buffer("attention scratch", per_head * a.v_dim as u64 * 4)?;
        let ml = self.buffer("attention partial max/sum", per_head * 8)?;
        Ok((ml, o, max_splits as u32))
    }

    /// The ops and marks recorded since the last call.
    fn take(&mut self) -> (Vec<Op>, Vec<Mark>) {
        (std::mem::take(&mut self.ops), std::mem::take(&mut self.marks))
    }
}

/// Rows a sliding window's ring cache needs: a pass of up to `max_pass`
/// tokens writes its keys before attending, so its first token's oldest
/// position (`window − 1` before it) must survive the pass's last write.
/// Never more than the context.
pub fn ring_rows(window: usize, max_pass: usize, context: usize) -> usize {
    (window + max_pass.max(1) - 1).min(context)
}

fn single_row(name: &str) -> Error {
    Error::Gpu(format!("{name}: this op runs on every token's row, not on the LM head's one"))
}

impl Ops for Recorder<'_> {
    type W = GpuWeights;
    type Act = GpuAct;
    type Routes = GpuRoutes;
    type Slots = GpuSlots;

    fn embed(&mut self, name: &str, w: &GpuLinear) -> Result<GpuAct> {
        let [(m, 0)] = w.parts.as_slice() else { return Err(Error::Config(format!("{name}: an embedding of several tensor types"))) };
        let x = self.act(name, w.cols, false)?;
        self.ops.extend(self.ctx.embed(m, &self.ids, &x.buf)?);
        self.mark(name, &x)?;
        Ok(x)
    }

    fn rms_norm(&mut self, name: &str, x: &GpuAct, w: &wgpu::Buffer, eps: f32) -> Result<GpuAct> {
        if x.single {
            return Err(single_row(name));
        }
        let y = self.act(name, x.width, false)?;
        self.ops.push(self.ctx.rms_norm(name, &x.buf, w, &y.buf, x.width, eps, false)?);
        self.mark(name, &y)?;
        Ok(y)
    }

    fn rms_norm_head(&mut self, name: &str, x: &GpuAct, w: &wgpu::Buffer, eps: f32) -> Result<GpuAct> {
        let y = self.act(name, x.width, true)?;
        self.ops.push(self.ctx.rms_norm(name, &x.buf, w, &y.buf, x.width, eps, true)?);
        self.mark(name, &y)?;
        Ok(y)
    }

    fn linear(&mut self, name: &str, w: &GpuLinear, x: &GpuAct) -> Result<GpuAct> {
        let y = self.act(name, w.rows, x.single)?;
        for (m, at) in &w.parts {
            self.ops.extend(self.ctx.matmul(m, Matmul::new(&x.buf, x.width, &y.buf, w.rows).at(*at).bias(w.bias.as_ref()).single(x.single))?);
        }
        self.mark(name, &y)?;
        Ok(y)
    }

    fn add_linear(&mut self, name: &str, residual: &mut GpuAct, w: &GpuLinear, x: &GpuAct) -> Result<()> {
        for (m, at) in &w.parts {
            let mm = Matmul::new(&x.buf, x.width, &residual.buf, residual.width).at(*at).bias(w.bias.as_ref()).acc(true).single(x.single);
            self.ops.extend(self.ctx.matmul(m, mm)?);
        }
        self.mark(name, residual)
    }

    fn scale(&mut self, name: &str, x: &mut GpuAct, factor: f32) -> Result<()> {
        self.ops.push(self.ctx.scale(name, &x.buf, x.width, x.single, factor)?);
        self.mark(name, x)
    }

    fn add_rms_norm(&mut self, name: &str, residual: &mut GpuAct, y: &GpuAct, w: &wgpu::Buffer, eps: f32) -> Result<()> {
        if y.single || residual.single {
            return Err(single_row(name));
        }
        self.ops.push(self.ctx.rms_norm_add(name, &y.buf, w, &residual.buf, y.width, eps)?);
        self.mark(name, residual)
    }

    fn glu(&mut self, name: &str, w: &GpuLinear, x: &GpuAct, act: Activation) -> Result<GpuAct> {
        if x.single {
            return Err(single_row(name));
        }
        let f = w.rows / 2;
        let out = self.act(name, f, false)?;
        let gate_up = self.act(&format!("{name} gate_up"), 2 * f, false)?;
        // Passes of one token on CPU adapters: the matmul applies SwiGLU
        // itself (a dispatch fewer), when gate and up are one matrix.
        // (GeGLU has no fused matmul yet.)
        let fused = match w.parts.as_slice() {
            [(m, 0)] if w.bias.is_none() && act == Activation::Silu => {
                self.ctx.matmul_swiglu(&format!("{name} gate_up+swiglu"), m, &x.buf, x.width, &out.buf)?
            }
            _ => None,
        };
        // With it, the separate matmul and SwiGLU run in passes of several tokens only.
        let unfused = |op: Op| match (fused.is_some(), op.passes) {
            (false, _) => Some(op),
            (true, Passes::All) => Some(op.only(Passes::Multi)),
            (true, Passes::Single) => None,
            (true, _) => Some(op),
        };
        for (m, at) in &w.parts {
            let ops = self.ctx.matmul(m, Matmul::new(&x.buf, x.width, &gate_up.buf, 2 * f).at(*at).bias(w.bias.as_ref()))?;
            self.ops.extend(ops.into_iter().filter_map(unfused));
        }
        let glu = match act {
            Activation::Silu => self.ctx.swiglu(&format!("{name} swiglu"), GateUp::Stacked(&gate_up.buf), &out.buf, f, 1)?,
            Activation::GeluTanh => self.ctx.geglu(&format!("{name} geglu"), GateUp::Stacked(&gate_up.buf), &out.buf, f)?,
        };
        self.ops.extend(unfused(glu));
        self.ops.extend(fused);
        self.mark(name, &out)?;
        Ok(out)
    }

    fn attention(&mut self, name: &str, l: usize, qkv: &GpuAct, norm: Option<QkNorm<'_, wgpu::Buffer>>, a: &Gqa) -> Result<GpuAct> {
        if a.head_dim as u32 > shape::MAX_HEAD_DIM {
            return Err(Error::Unsupported(format!("head dim {} (the GPU kernels hold up to {})", a.head_dim, shape::MAX_HEAD_DIM)));
        }
        if a.rope.factor != 1.0 {
            return Err(Error::Unsupported(format!("a RoPE attention factor of {} on grouped-query attention (GPU)", a.rope.factor)));
        }
        let (nh, nkv, hd) = (a.heads as u32, a.kv_heads as u32, a.head_dim as u32);
        let window = a.window.map_or(0, |w| w.min(self.context)) as u32;
        let shape = AttentionShape { n_heads: nh, n_kv_heads: nkv, head_dim: hd, v_dim: hd, scale: a.scale, latent: false, window };
        // (ring_rows of the pass length at load: ≥ any pass's after.)
        let rows = a.window.map_or(self.context, |w| ring_rows(w, self.ring_pass, self.context));
        let (k, v) = self.cache(l, nkv * hd, true, self.kv_half, rows)?;
        let v = v.ok_or_else(|| Error::Gpu(format!("{name}: layer {l}'s cache holds no values")))?;
        let q = self.act(&format!("{name} q"), nh * hd, false)?;
        let inv_freq = self.inv_freq(&a.rope)?;
        let kv_half = self.kv_half;
        let r = RopeScatter { pairing: a.rope.pairing, inv_freq: &inv_freq, qkv: &qkv.buf, q: &q.buf, k_cache: &k, v_cache: &v, head_dim: hd, n_q: nh, n_k: nkv, half_kv: kv_half, norm: norm.map(|n| (n.q, n.k, n.eps)) };
        self.ops.push(self.ctx.rope_scatter(&format!("{name} rope"), r)?);
        let out = self.act(name, nh * hd, false)?;
        let (ml, o, max_splits) = self.attention_scratch(&shape)?;
        let b = AttentionBuffers { q: &q.buf, k_cache: &k, v_cache: &v, part_ml: &ml, part_o: &o, out: &out.buf };
        self.ops.extend(self.ctx.attention(name, b, &shape, max_splits, kv_half)?);
        self.mark(name, &out)?;
        Ok(out)
    }

    fn latent_attention(&mut self, name: &str, l: usize, q: &GpuAct, kv_a: &GpuAct, norm: &wgpu::Buffer, kv_b: &wgpu::Buffer, a: &Latent) -> Result<GpuAct> {
        if a.rank as u32 > shape::MAX_LATENT_RANK {
            return Err(Error::Unsupported(format!("kv_lora_rank {} (the GPU latent attention holds up to {})", a.rank, shape::MAX_LATENT_RANK)));
        }
        let m = MlaShape {
            heads: a.heads as u32,
            rank: a.rank as u32,
            rope: a.rope_dim as u32,
            nope: a.nope as u32,
            v_dim: a.v_dim as u32,
            eps: a.eps,
            rope_factor: a.rope.factor,
            pairing: a.rope.pairing,
        };
        let row = m.rank + m.rope;
        // MLA's latent cache is f32 (its rows are few and small).
        let context = self.context;
        let (cache, _) = self.cache(l, row, false, false, context)?;
        let inv_freq = self.inv_freq(&a.rope)?;
        let q_lat = self.act(&format!("{name} q latent"), m.heads * row, false)?;
        self.ops.push(self.ctx.mla_kv_cache(&format!("{name} latent cache"), &m, &inv_freq, &kv_a.buf, norm, &cache)?);
        self.ops.push(self.ctx.mla_absorb_q(&format!("{name} absorb q"), &m, &inv_freq, &q.buf, kv_b, &q_lat.buf)?);
        let shape = AttentionShape { n_heads: m.heads, n_kv_heads: 1, head_dim: row, v_dim: m.rank, scale: a.scale, latent: true, window: 0 };
        let latent = self.act(&format!("{name} latent"), m.heads * m.rank, false)?;
        let (ml, o, max_splits) = self.attention_scratch(&shape)?;
        let b = AttentionBuffers { q: &q_lat.buf, k_cache: &cache, v_cache: &cache, part_ml: &ml, part_o: &o, out: &latent.buf };
        self.ops.extend(self.ctx.attention(name, b, &shape, max_splits, false)?);
        let out = self.act(name, m.heads * m.v_dim, false)?;
        self.ops.push(self.ctx.mla_v_up(&format!("{name} v up"), &m, &latent.buf, kv_b, &out.buf)?);
        self.mark(name, &out)?;
        Ok(out)
    }

    fn route(&mut self, name: &str, logits: &GpuAct, bias: Option<&wgpu::Buffer>, m: &Moe) -> Result<GpuRoutes> {
        if m.groups > shape::MAX_EXPERT_GROUPS as usize {
            return Err(Error::Unsupported(format!("{} expert groups (the GPU router holds up to {})", m.groups, shape::MAX_EXPERT_GROUPS)));
        }
        let k = m.top_k as u64;
        let routes = GpuRoutes { ids: self.buffer(&format!("{name} ids"), k * 4)?, weights: self.buffer(&format!("{name} weights"), k * 4)? };
        self.ops.push(self.ctx.route(name, m, &logits.buf, bias, &routes.ids, &routes.weights)?);
        Ok(routes)
    }

    fn experts(&mut self, name: &str, w: &GpuExperts, x: &GpuAct, routes: &GpuRoutes, m: &Moe) -> Result<GpuSlots> {
        let (gate_up, down, slot_of, hidden) = match w {
            GpuExperts::Resident { gate_up, down, hidden } => (gate_up, down, None, *hidden),
            GpuExperts::Paged { paged, hidden } => {
                let cache = self.experts.ok_or_else(|| Error::Gpu(format!("{name}: paged experts without an expert cache")))?;
                let (gate_up, down, slot_of) = cache.matrices(*paged);
                (gate_up, down, Some((slot_of, *paged, cache.pages(*paged))), *hidden)
            }
        };
        let (e, k, h) = (m.n_experts as u32, m.top_k as u32, hidden);
        let f = m.expert_ffn as u32;
        let t = self.max_pass as u64;
        // Grouped, every tile has TILE_T rows.
        let grouped = self.grouped;
        let tiles = if grouped { super::expert_tiles((t * k as u64) as u32, e) as u64 } else { 1 };
        let slots = (t * k as u64).max(if grouped { tiles * shape::TILE_T as u64 } else { 0 });
        let gate = self.fixed(&format!("{name} gate"), slots * 2 * f as u64 * 4)?; // [slots, 2 · ffn]: gate and up stacked, or gate alone
        let up = self.fixed(&format!("{name} up"), slots * f as u64 * 4)?; // [slots, ffn] (gate and up apart)
        let act = self.fixed(&format!("{name} act"), slots * f as u64 * 4)?; // [slots, ffn]
        let out = self.fixed(&format!("{name} out"), slots * h as u64 * 4)?; // [slots, hidden]; grouped: first the tiles' inputs
        let gu = match gate_up {
            ExpertGateUp::Stacked(_) => GateUp::Stacked(&gate),
            ExpertGateUp::Apart(..) => GateUp::Apart(&gate, &up),
        };
        let at = self.ops.len();
        // Grouped (passes of several tokens): see moe.wgsl's `sort`. Its
        // schedule comes first: paged rounds repeat only the matmuls.
        let grouped_bufs = if grouped {
            let slot_pos = self.buffer(&format!("{name} slot rows"), k as u64 * 4)?; // [t · top_k] u32
            let tile_list = self.fixed(&format!("{name} tiles"), tiles * 8)?; // [expert_tiles] × (expert, count) u32
            let counts = self.fixed(&format!("{name} counts"), e as u64 * 4)?; // [experts] u32
            let ctx = &self.ctx;
            let schedule = [ctx.moe_sort(&format!("{name} sort"), m, &routes.ids, &slot_pos, &tile_list, &counts)?, ctx.moe_gather(&format!("{name} gather"), &x.buf, &slot_pos, &out, h, k)?];
            self.ops.extend(schedule.map(|o| o.only(Passes::Multi)));
            Some((slot_pos, tile_list))
        } else {
            None
        };
        let repeat = self.ops.len();
        let so = slot_of.map(|s| s.0);
        let em = |expert_rows, x, x_stride, y| ExpertMatmul { expert_rows, x, x_stride, y, slot_of: so };
        let ctx = &self.ctx;
        // Each slot's expert rows: in every pass, or with `grouped` only for
        // one token, several tokens' slots grouped by expert.
        let per_slot = if grouped { Passes::Single } else { Passes::All };
        let mut routed = match gate_up {
            ExpertGateUp::Stacked(both) => ctx.experts(both, em(2 * f, &x.buf, h, &gate), k, &routes.ids, k)?,
            ExpertGateUp::Apart(eg, eu) => {
                let mut ops = ctx.experts(eg, em(f, &x.buf, h, &gate), k, &routes.ids, k)?;
                ops.extend(ctx.experts(eu, em(f, &x.buf, h, &up), k, &routes.ids, k)?);
                ops
            }
        };
        routed.push(ctx.swiglu(&format!("{name} swiglu"), gu, &act, f, k)?);
        routed.extend(ctx.experts(down, em(h, &act, f, &out), 1, &routes.ids, k)?);
        self.ops.extend(routed.into_iter().map(|o| o.only(per_slot)));
        if let Some((_, tile_list)) = &grouped_bufs {
            let mut routed = Vec::new();
            match gate_up {
                ExpertGateUp::Stacked(both) => routed.extend(ctx.grouped(both, em(2 * f, &out, h, &gate), tile_list, m)?),
                ExpertGateUp::Apart(eg, eu) => {
                    routed.extend(ctx.grouped(eg, em(f, &out, h, &gate), tile_list, m)?);
                    routed.extend(ctx.grouped(eu, em(f, &out, h, &up), tile_list, m)?);
                }
            }
            routed.push(ctx.swiglu_tiles(&format!("{name} swiglu"), gu, &act, f, m)?);
            routed.extend(ctx.grouped(down, em(h, &act, f, &out), tile_list, m)?);
            self.ops.extend(routed.into_iter().map(|o| o.only(Passes::Multi)));
        }
        if let Some((_, paged, true)) = slot_of {
            self.pauses.push(Pause { paged, ids: routes.ids.clone(), top_k: k, at, repeat, end: self.ops.len() });
        }
        Ok(GpuSlots { out, slot_pos: grouped_bufs.map(|(slot_pos, _)| slot_pos) })
    }

    fn moe_combine(&mut self, name: &str, x: &mut GpuAct, slots: &GpuSlots, routes: &GpuRoutes, shared: Option<&GpuAct>, gate: Option<&GpuAct>, m: &Moe) -> Result<()> {
        let (h, k) = (x.width, m.top_k as u32);
        let (shared, gate) = (shared.map(|s| &s.buf), gate.map(|g| &g.buf));
        let per_slot = if slots.slot_pos.is_some() { Passes::Single } else { Passes::All };
        let combine = |slot_pos| Combine { x: &x.buf, y: &slots.out, weights: &routes.weights, shared, gate, slot_pos, hidden: h, top_k: k };
        self.ops.push(self.ctx.moe_combine(name, combine(None))?.only(per_slot));
        if let Some(slot_pos) = &slots.slot_pos {
            self.ops.push(self.ctx.moe_combine(name, combine(Some(slot_pos)))?.only(Passes::Multi));
        }
        self.mark(name, x)
    }
}

/// What a loaded model is, for reports (the page's `info()`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub architecture: &'static str,
    pub layers: usize,
    /// Positions the KV cache holds (`--context`, `contextLength`, or
    /// the default: see [`super::choose_context`]) …
    pub context: usize,
    /// … of the model's own context length.
    pub model_context: usize,
    /// The KV cache's bytes, all layers.
    pub kv_cache_bytes: u64,
    pub vocab: usize,
    pub adapter: String,
    pub backend: String,
    pub gpu_bytes: u64,
    pub kv_f16: bool,
    /// The routed experts' cache, when they are paged.
    pub expert_cache: Option<ExpertStats>,
}

pub struct GpuModel {
    pub gpu: Arc<Gpu>,
    pub cfg: ModelConfig,
    /// Positions the KV cache holds.
    context: usize,
    kv_cache_bytes: u64,
    /// The KV cache is f16.
    pub kv_f16: bool,
    /// Most tokens one pass runs.
    max_pass: usize,
    step: wgpu::Buffer,
    ids: wgpu::Buffer,    // [max_pass] u32: the pass's input ids; ids[0] ← sampled token
    logits: wgpu::Buffer, // [vocab] f32: the last token's logits
    penalized: wgpu::Buffer, // [MAX_PENALTY_LAST_N] (token, count, bias): the step's penalties
    /// Where in `ids` the sampler writes log-probabilities.
    ids_out_at: usize,
    /// Embedding and layers: every pass.
    body: Vec<Op>,
    /// Final norm, LM head, sampling: passes whose last token is wanted.
    head: Vec<Op>,
    /// The named intermediates of `body` and of `head` (read natively, by
    /// `intermediates`).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    marks: [Vec<Mark>; 2],
    len: usize,
    /// Matrices in textures, and all matrices.
    textures: (usize, usize),
    /// The paged routed experts, and where passes stop for them.
    experts: Option<ExpertCache>,
    pauses: Vec<Pause>,
    /// The weights and activations the bind groups use.
    _model: Model<GpuWeights>,
    _buffers: Vec<wgpu::Buffer>,
}

impl GpuModel {
    /// Load a model from its own files.
    pub fn load(gpu: Arc<Gpu>, m: &ModelFiles, opts: &GpuOptions) -> Result<Self> {
        crate::support::run_ready(Self::load_from(gpu, m, &m.index, opts))
    }

    /// Load a model whose tensor bytes come from `reader` (in the browser, a
    /// download): one tensor, or one chunk of a large one, at a time.
    pub async fn load_from(gpu: Arc<Gpu>, m: &ModelFiles, reader: &impl TensorReader, opts: &GpuOptions) -> Result<Self> {
        Self::load_with(gpu, m, reader, opts, None).await
    }

    /// The expert cache's budget a load of `m` with `opts` takes: the one
    /// asked for, or for routed experts over the default budget that one
    /// (see [`super::paging::default_budget`]); None: no paging.
    pub fn expert_budget(m: &ModelFiles, opts: &GpuOptions) -> Result<Option<u64>> {
        Ok(match (&m.config.moe, opts.expert_cache) {
            (Some(moe), None) => super::paging::default_budget(super::paging::routed_bytes(&m.index, &m.config, moe)?),
            (_, asked) => asked,
        })
    }

    /// [`GpuModel::load_from`], paged experts (`opts.expert_cache`) read
    /// from `experts_from` (None: the model's files).
    pub async fn load_with(gpu: Arc<Gpu>, m: &ModelFiles, reader: &impl TensorReader, opts: &GpuOptions, experts_from: Option<Box<dyn ExpertSource>>) -> Result<Self> {
        let cfg = m.config.clone();
        let shape = opts.shape.unwrap_or(gpu.shape);
        let grouped = opts.grouped_experts.unwrap_or(gpu.grouped_experts);
        let max_binding = opts.max_binding.unwrap_or(gpu.max_binding()).min(gpu.max_binding());
        let chunk_bytes = max_binding.min(opts.max_staging.unwrap_or(u64::MAX));
        let place = Placement::for_gpu(&gpu, shape, chunk_bytes, opts.quad_textures.unwrap_or(gpu.quad_textures));
        if opts.kv_f16 == Some(true) && !gpu.has_f16() {
            return Err(Error::Unsupported(format!("an f16 KV cache on {}, which lacks shader-f16; use an f32 cache", gpu.adapter_name())));
        }
        // MLA's latent cache is f32 (its rows are few and small).
        let kv_half = opts.kv_f16.unwrap_or(true) && gpu.has_f16() && cfg.mla.is_none();
        // Each layer's K (and V) cache is one binding: the context fits it.
        let kv_row = match &cfg.mla {
            Some(a) => (a.kv_lora_rank + a.qk_rope) as u64 * 4,
            None => (cfg.n_kv_heads * cfg.head_dim) as u64 * if kv_half { 2 } else { 4 },
        };
        let fits = (gpu.max_binding() / kv_row.max(1)) as usize;
        // Sliding-window layers hold a ring of a fixed size: only the
        // others' caches grow with the context.
        let local = cfg.swa.as_ref().map_or(0, |s| (0..cfg.n_layers).filter(|&i| s.is_local(i)).count());
        let caches = if cfg.mla.is_some() { 1 } else { 2 };
        let per_token = kv_row * (cfg.n_layers - local) as u64 * caches;
        let asked = opts.context.map(|n| cfg.check_context(n)).transpose()?;
        let context = super::choose_context(cfg.context_length, asked, fits, per_token, gpu.max_binding())?;
        let ring = cfg.swa.as_ref().map_or(0, |s| ring_rows(s.window, opts.max_pass_tokens, context));
        let kv_cache_bytes = per_token * context as u64 + kv_row * local as u64 * caches * ring as u64;
        if opts.expert_cache.is_some() && cfg.moe.is_none() {
            return Err(Error::Unsupported(format!("an expert cache for {}, which has no routed experts; leave --expert-cache out", cfg.arch.name())));
        }
        let expert_cache = Self::expert_budget(m, opts)?;
        let paged = expert_cache.map(|_| Vec::new());
        let mut loader = Loader { gpu: &gpu, index: &m.index, reader, place, arch: cfg.arch, textures: (0, 0), paged };
        let model = Model::load(&mut loader, &cfg).await?;
        let textures = loader.textures;
        let experts = match (loader.paged, expert_cache, &cfg.moe) {
            (Some(layers), Some(budget), Some(moe)) => {
                let source = experts_from.unwrap_or_else(|| Box::new(crate::format::Sources(m.index.sources.clone())));
                Some(ExpertCache::new(&gpu, layers, budget, moe.top_k as u32, place, source).await?)
            }
            _ => None,
        };

        let step = gpu.uniform("step", bytemuck::bytes_of(&Step::default()));
        let ctx = Ctx { gpu: &gpu, step: &step, shape, subgroups: opts.subgroups && gpu.has_subgroups() };
        let max_pass = opts.max_pass_tokens.max(1);
        // The pass's ids, then the sampler's log-probabilities.
        let ids = gpu.storage("ids", (max_pass + 2 + 2 * crate::sample::MAX_TOP_LOGPROBS) as u64 * 4)?;
        let mut rec = Recorder {
            gpu: &gpu,
            ctx,
            grouped,
            max_binding,
            max_pass,
            context,
            ring_pass: opts.max_pass_tokens,
            kv_half,
            ids: ids.clone(),
            pool: HashMap::new(),
            caches: Vec::new(),
            inv_freq: Vec::new(),
            ops: Vec::new(),
            marks: Vec::new(),
            scale_output: opts.scale_output.clone(),
            experts: experts.as_ref(),
            pauses: Vec::new(),
        };
        let x = model.body(&mut rec)?;
        let (body, body_marks) = rec.take();
        let logits = model.head(&mut rec, &x)?;
        if !logits.single || logits.width as usize != cfg.vocab {
            return Err(Error::Gpu(format!("the LM head made {} values a row, not the vocabulary's {}", logits.width, cfg.vocab)));
        }
        let penalized = gpu.storage("penalized tokens", crate::sample::MAX_PENALTY_LAST_N as u64 * 16)?;
        rec.ops.push(rec.ctx.penalize(&logits.buf, &penalized, logits.width)?);
        rec.ops.push(rec.ctx.sample(&logits.buf, &ids, logits.width, max_pass as u32)?);
        let (head, head_marks) = rec.take();
        let max_pass = rec.max_pass;
        let pauses = std::mem::take(&mut rec.pauses);
        let mut buffers: Vec<wgpu::Buffer> = rec.pool.into_values().collect();
        buffers.extend(rec.caches.into_iter().flatten().flat_map(|(k, v)| std::iter::once(k).chain(v)));
        buffers.extend(rec.inv_freq.into_iter().map(|(_, b)| b));
        buffers.push(step.clone());
        gpu.check()?;
        Ok(GpuModel {
            gpu,
            cfg,
            context,
            kv_cache_bytes,
            kv_f16: kv_half,
            max_pass,
            step,
            ids,
            penalized,
            ids_out_at: opts.max_pass_tokens.max(1),
            logits: logits.buf,
            body,
            head,
            marks: [body_marks, head_marks],
            len: 0,
            textures,
            experts,
            pauses,
            _model: model,
            _buffers: buffers,
        })
    }

    /// Run `tokens` (≤ max_pass) at the cache's end; with `head`, also the
    /// LM head and sampling of the last token.
    #[cfg(not(target_arch = "wasm32"))]
    fn pass(&mut self, tokens: &[u32], head: bool, sampling: &SamplingParams, draw: u32) -> Result<()> {
        crate::support::run_ready(self.pass_penalized(tokens, head, sampling, draw, 0))
    }

    /// [`GpuModel::pass`] whose sampling first applies the penalties of the
    /// first `n_penalized` entries of the penalised-token list. It waits
    /// only where paged experts' ids come back (natively a blocking read,
    /// so the future is ready; in the browser awaited).
    async fn pass_penalized(&mut self, tokens: &[u32], head: bool, sampling: &SamplingParams, draw: u32, n_penalized: u32) -> Result<()> {
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
            n_penalized: if head { n_penalized } else { 0 },
            logprobs: sampling.logprobs.map_or(0, |n| n as u32 + 1),
            repetition: sampling.repetition_penalty,
            frequency: sampling.frequency_penalty,
            presence: sampling.presence_penalty,
            ..Default::default()
        };
        let ops: Vec<&Op> = if head { self.body.iter().chain(&self.head).collect() } else { self.body.iter().collect() };
        let (gpu, step_buf) = (&self.gpu, &self.step);
        submit_paged(gpu, self.experts.as_mut(), &self.pauses, &step, ops.len(), |r, _| gpu.run(step_buf, &step, &ops[r])).await?;
        self.len += tokens.len();
        Ok(())
    }

    /// The expert cache's counts, when the routed experts are paged.
    pub fn expert_stats(&self) -> Option<ExpertStats> {
        self.experts.as_ref().map(|c| c.stats())
    }

    /// Compute dispatches of one decode step (embedding to sampling) with
    /// `pos` positions already in the cache.
    pub fn dispatches_per_token(&self, pos: usize) -> usize {
        let step = Step { n_tokens: 1, pos: pos as u32, ..Default::default() };
        self.body.iter().chain(&self.head).filter(|op| op.dispatches(&step)).count()
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
    #[cfg(not(target_arch = "wasm32"))]
    fn run_all(&mut self, tokens: &[u32], sampling: &SamplingParams, draw: u32) -> Result<()> {
        crate::support::run_ready(self.run_penalized(tokens, sampling, draw, &[]))
    }

    /// [`GpuModel::run_all`], the last pass's sampling after the penalties
    /// on `penalized` (token, count) pairs.
    async fn run_penalized(&mut self, tokens: &[u32], sampling: &SamplingParams, draw: u32, penalized: &[Adjust]) -> Result<()> {
        self.check_input(tokens)?;
        if penalized.len() > crate::sample::MAX_PENALTY_LAST_N {
            return Err(Error::Input(format!("{} penalised tokens; at most {} are counted", penalized.len(), crate::sample::MAX_PENALTY_LAST_N)));
        }
        if !penalized.is_empty() {
            let words: Vec<u32> = penalized.iter().flat_map(|a| [a.token, a.count, a.bias.to_bits(), 0]).collect();
            self.gpu.queue.write_buffer(&self.penalized, 0, bytemuck::cast_slice(&words));
        }
        let chunks: Vec<&[u32]> = tokens.chunks(self.max_pass).collect();
        for (i, c) in chunks.iter().enumerate() {
            self.pass_penalized(c, i + 1 == chunks.len(), sampling, draw, penalized.len() as u32).await?;
        }
        Ok(())
    }

    /// Run `tokens` (in chunks) and return, in graph order, every named
    /// intermediate's value at the last position (the last pass copies
    /// each one's row aside as the op that made it finishes).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn intermediates(&mut self, tokens: &[u32]) -> Result<Vec<(String, Vec<f32>)>> {
        self.check_input(tokens)?;
        let greedy = SamplingParams::default();
        let chunks: Vec<&[u32]> = tokens.chunks(self.max_pass).collect();
        let Some((last, rest)) = chunks.split_last() else { return Ok(Vec::new()) };
        for c in rest {
            self.pass(c, false, &greedy, 0)?;
        }
        let bytes: u64 = self.marks.iter().flatten().map(|m| m.width as u64 * 4).sum();
        let dump = self.gpu.storage("intermediates", bytes)?;
        self.gpu.check()?;
        self.gpu.queue.write_buffer(&self.ids, 0, bytemuck::cast_slice(last));
        let step = Step { n_tokens: last.len() as u32, pos: self.len as u32, ..Default::default() };
        self.gpu.queue.write_buffer(&self.step, 0, bytemuck::bytes_of(&step));
        let (body, head): (Vec<&Op>, Vec<&Op>) = (self.body.iter().collect(), self.head.iter().collect());
        // The body up to each paged layer's expert ids, then the rest; the
        // marks so far copied at each final submit.
        let (gpu, marks) = (&self.gpu, &self.marks);
        let (mut at, mut copied) = (0u64, 0usize);
        let submitted = submit_paged(gpu, self.experts.as_mut(), &self.pauses, &step, body.len(), |r, last_round| {
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            let pending: Vec<Mark> = match last_round {
                true => marks[0][copied..].iter().take_while(|m| m.at <= r.end).map(|m| Mark { at: m.at.saturating_sub(r.start), name: m.name.clone(), buf: m.buf.clone(), width: m.width, single: m.single }).collect(),
                false => Vec::new(),
            };
            copied += pending.len();
            at = super::encode_keeping(&mut enc, &step, &body[r], &pending, &dump, at);
            gpu.queue.submit([enc.finish()]);
            Ok(())
        });
        crate::support::run_ready(submitted)?;
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        super::encode_keeping(&mut enc, &step, &head, &self.marks[1], &dump, at);
        self.gpu.queue.submit([enc.finish()]);
        self.len += last.len();
        let values: Vec<f32> = bytemuck::cast_slice(&self.gpu.read(&dump, 0, bytes)?).to_vec();
        let mut at = 0;
        Ok(self
            .marks
            .iter()
            .flatten()
            .map(|m| {
                at += m.width as usize;
                (m.name.clone(), values[at - m.width as usize..at].to_vec())
            })
            .collect())
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
            let t0 = crate::support::now_ms();
            self.gpu.run(&self.step, &step, &ops)?;
            self.finished().await?;
            let per_op = ((crate::support::now_ms() - t0) / reps as f64).max(1e-3);
            let ops = vec![op; reps.max((5.0 / per_op) as usize).min(500)];
            let t0 = crate::support::now_ms();
            self.gpu.run(&self.step, &step, &ops)?;
            self.finished().await?;
            out.push((op.name.clone(), (crate::support::now_ms() - t0) / ops.len() as f64));
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

    pub fn info(&self) -> ModelInfo {
        ModelInfo {
            architecture: self.cfg.arch.name(),
            layers: self.cfg.n_layers,
            context: self.context,
            model_context: self.cfg.context_length,
            kv_cache_bytes: self.kv_cache_bytes,
            vocab: self.cfg.vocab,
            adapter: self.gpu.adapter_name(),
            backend: self.gpu.backend_name(),
            gpu_bytes: self.gpu.allocated_bytes(),
            kv_f16: self.kv_f16,
            expert_cache: self.expert_stats(),
        }
    }

    /// How many of the model's matrices lie in textures, of all of them
    /// (see `weights::Placement`).
    pub fn matrices_in_textures(&self) -> (usize, usize) {
        self.textures
    }

    /// The last pass's logits (`[vocab]`), once the GPU is done.
    pub fn read_logits_async(&self) -> impl std::future::Future<Output = Result<Vec<f32>>> {
        let f = self.gpu.read_async(&self.logits, 0, self.cfg.vocab as u64 * 4);
        async move { Ok(bytemuck::cast_slice(&f.await?).to_vec()) }
    }

    /// The token the last pass sampled, once the GPU is done.
    pub fn read_token_async(&self) -> impl std::future::Future<Output = Result<u32>> {
        let f = self.read_sampled_async(None);
        async move { Ok(f.await?.0) }
    }

    /// The sampled token, and with `logprobs` (its alternatives, as the
    /// step asked) its log-probabilities: one readback either way.
    pub fn read_sampled_async(&self, logprobs: Option<usize>) -> impl std::future::Future<Output = Result<(u32, Option<Logprobs>)>> {
        let at = self.ids_out_at;
        let words = logprobs.map_or(1, |n| at + 2 + 2 * n);
        let f = self.gpu.read_async(&self.ids, 0, words as u64 * 4);
        let vocab = self.cfg.vocab;
        async move {
            let bytes = f.await?;
            let w: &[u32] = bytemuck::cast_slice(&bytes[..words * 4]);
            let id = w[0];
            if id as usize >= vocab {
                return Err(Error::Gpu("the model produced only NaN logits (numerical failure on this GPU)".into()));
            }
            let lp = logprobs.map(|n| {
                let top: Vec<(u32, f32)> = (0..n).map(|j| (w[at + 2 + 2 * j], f32::from_bits(w[at + 3 + 2 * j]))).filter(|&(t, _)| (t as usize) < vocab).collect();
                Logprobs::from_logits(id, f32::from_bits(w[at + 1]), &top, f32::from_bits(w[at]))
            });
            Ok((id, lp))
        }
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
}

/// Submit `n_ops` ops of a pass of `step` (`submit(range, last_round)`):
/// at once, or, with paged experts, up to each paged layer's router, whose
/// expert ids come back; then its expert matmuls once per round of uploads
/// ([`ExpertCache::rounds`]), the last round's submit `last_round`.
async fn submit_paged(gpu: &Gpu, cache: Option<&mut ExpertCache>, pauses: &[Pause], step: &Step, n_ops: usize, mut submit: impl FnMut(std::ops::Range<usize>, bool) -> Result<()>) -> Result<()> {
    let Some(cache) = cache.filter(|_| !pauses.is_empty()) else { return submit(0..n_ops, true) };
    let mut done = 0;
    for p in pauses.iter().filter(|p| p.end <= n_ops) {
        submit(done..p.at, true)?;
        let bytes = read_expert_ids(gpu, p, step).await?;
        let rounds = cache.rounds(p.paged, bytemuck::cast_slice(&bytes))?;
        for (i, round) in rounds.iter().enumerate() {
            cache.load(gpu, p.paged, round).await?;
            submit(if i == 0 { p.at } else { p.repeat }..p.end, i + 1 == rounds.len())?;
        }
        // While the GPU runs them (in the page, while it awaits the next
        // readback), the next layer's likely misses are fetched.
        cache.prefetch_next(p.paged);
        done = p.end;
    }
    submit(done..n_ops, true)
}

/// A paged layer's expert ids of the pass, once the GPU has run its router.
async fn read_expert_ids(gpu: &Gpu, p: &Pause, step: &Step) -> Result<Vec<u8>> {
    let bytes = (step.n_tokens * p.top_k) as u64 * 4;
    #[cfg(not(target_arch = "wasm32"))]
    return gpu.read(&p.ids, 0, bytes);
    #[cfg(target_arch = "wasm32")]
    return gpu.read_async(&p.ids, 0, bytes).await;
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
        penalized: &[Adjust],
    ) -> Result<Sampled> {
        self.run_penalized(tokens, sampling, draw, penalized).await?;
        let logits = if want_logits { Some(self.read_logits_async().await?) } else { None };
        let (token, logprobs) = self.read_sampled_async(sampling.logprobs).await?;
        self.gpu.check()?;
        Ok(Sampled { token, logits, logprobs })
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
        penalized: &[Adjust],
    ) -> Result<Sampled> {
        crate::support::run_ready(self.run_penalized(tokens, sampling, draw, penalized))?;
        let logits = if want_logits { Some(self.read_logits()?) } else { None };
        let (token, logprobs) = self.wait(self.read_sampled_async(sampling.logprobs))?;
        Ok(Sampled { token, logits, logprobs })
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
    fn expert_cache(&self) -> Option<serde_json::Value> {
        self.expert_stats().and_then(|s| serde_json::to_value(s).ok())
    }
}
