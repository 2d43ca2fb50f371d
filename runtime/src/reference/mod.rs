//! The reference: the model graphs of [`crate::model`] executed in plain-Rust
//! f32, written to be read.
//!
//! It is the oracle for every GPU kernel and every model, so clarity wins over
//! speed everywhere except the one hot loop (the matrix product), which splits
//! rows across threads. Weights stay in their file's block format and are
//! dequantised a row at a time, so memory is the file's size, not 4 bytes a weight.

use crate::config::{Arch, GroupScore, ModelConfig, Moe, RopePairing, Scoring};
use crate::engine::Backend;
use crate::error::{Error, Result};
use crate::format::TensorIndex;
use crate::model::names;
use crate::model::ops::{Activation, ExpertsDecl, Gqa, Latent, LinearDecl, Load, Ops, QkNorm, Rope, Weights};
use crate::model::{Model, ModelFiles};
use crate::quant::{dequantize, DType};
use crate::support::run_ready;

/// A weight matrix `[rows, cols]` in its stored block format.
pub struct Matrix {
    pub name: String,
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    data: Vec<u8>,
}

impl Matrix {
    fn load(index: &TensorIndex, name: &str, [rows, cols]: [usize; 2]) -> Result<Self> {
        let t = index.require_matrix(name, rows as u64, cols as u64)?;
        t.dtype.check_supported(&format!("tensor {:?}", t.name))?;
        Ok(Matrix { name: t.name.clone(), dtype: t.dtype, rows, cols, data: index.read(t)? })
    }

    /// Slab `part` of a `[parts, rows, cols]` tensor (one expert of a stacked GGUF tensor).
    fn load_part(index: &TensorIndex, name: &str, part: usize, parts: usize, [rows, cols]: [usize; 2]) -> Result<Self> {
        let t = index.require(name)?;
        if t.shape != [parts as u64, rows as u64, cols as u64] {
            return Err(Error::Config(format!("tensor {name:?} has shape {:?}; expected [{parts}, {rows}, {cols}]", t.shape)));
        }
        t.dtype.check_supported(&format!("tensor {:?}", t.name))?;
        let slab = t.nbytes / parts as u64;
        let data = run_ready(crate::format::TensorReader::read_range(index, t, part as u64 * slab, slab))?;
        Ok(Matrix { name: format!("{name}[{part}]"), dtype: t.dtype, rows, cols, data })
    }

    /// A routed expert's weight, stacked (GGUF) or on its own (Hugging Face).
    #[allow(clippy::too_many_arguments)]
    fn load_expert(index: &TensorIndex, arch: Arch, i: usize, e: usize, n_experts: usize, w: names::Expert, shape: [usize; 2]) -> Result<Self> {
        match names::expert(index.kind, arch, i, e, w) {
            (name, Some(part)) => Self::load_part(index, &name, part, n_experts, shape),
            (name, None) => Self::load(index, &name, shape),
        }
    }

    /// An f32 matrix from values.
    fn from_f32(name: &str, rows: usize, cols: usize, values: &[f32]) -> Self {
        debug_assert_eq!(values.len(), rows * cols);
        Matrix { name: name.into(), dtype: DType::F32, rows, cols, data: bytemuck::cast_slice(values).to_vec() }
    }

    fn row_bytes(&self) -> usize {
        (self.cols as u64 / self.dtype.block_size() * self.dtype.block_bytes()) as usize
    }

    /// Row `r`, dequantised into `out` (`cols` values).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        let rb = self.row_bytes();
        dequantize(self.dtype, &self.data[r * rb..(r + 1) * rb], out).expect("row of a validated matrix");
    }

    /// `W[r] · x[t]` for rows `r0..r1`, row-major `[r1 - r0, n]`.
    fn rows_times(&self, r0: usize, r1: usize, x: &[f32], n: usize) -> Vec<f32> {
        let mut w = vec![0f32; self.cols];
        let mut part = vec![0f32; r1.saturating_sub(r0) * n];
        for r in r0..r1 {
            self.row(r, &mut w);
            for i in 0..n {
                part[(r - r0) * n + i] = dot(&w, &x[i * self.cols..(i + 1) * self.cols]);
            }
        }
        part
    }

    /// `y[t] = W x[t]` for each of the `n` rows of `x` (`[n, cols]` → `[n, rows]`).
    pub fn matmul(&self, x: &[f32], n: usize) -> Vec<f32> {
        debug_assert_eq!(x.len(), n * self.cols);
        let threads = if cfg!(target_arch = "wasm32") {
            1 // no threads in wasm32-unknown-unknown
        } else {
            std::thread::available_parallelism().map_or(1, |p| p.get()).min(8)
        };
        // Each thread owns a range of output rows; y is [n, rows], so it
        // computes into its own buffer, scattered into y afterwards.
        let parts: Vec<(usize, Vec<f32>)> = if threads == 1 {
            vec![(0, self.rows_times(0, self.rows, x, n))]
        } else {
            let chunk = self.rows.div_ceil(threads);
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let (r0, r1) = (t * chunk, ((t + 1) * chunk).min(self.rows));
                        s.spawn(move || (r0, self.rows_times(r0, r1, x, n)))
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().expect("matmul thread")).collect()
            })
        };
        let mut y = vec![0f32; n * self.rows];
        for (r0, part) in parts {
            for (k, row) in part.chunks_exact(n.max(1)).enumerate() {
                for (i, v) in row.iter().enumerate() {
                    y[i * self.rows + r0 + k] = *v;
                }
            }
        }
        y
    }
}

/// Dot product with several accumulators (the compiler vectorises this).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `x / sqrt(mean(x²) + eps) * w`, in place.
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for (v, w) in x.iter_mut().zip(w) {
        *v = *v * inv * w;
    }
}

/// Rotate one head's vector `v` (`head_dim`) by position `pos`.
pub fn rope(v: &mut [f32], pos: usize, inv_freq: &[f32], pairing: RopePairing) {
    let half = v.len() / 2;
    for (i, &f) in inv_freq.iter().enumerate() {
        let angle = pos as f32 * f;
        let (sin, cos) = angle.sin_cos();
        let (a, b) = match pairing {
            RopePairing::Halves => (i, i + half),
            RopePairing::Adjacent => (2 * i, 2 * i + 1),
        };
        let (x0, x1) = (v[a], v[b]);
        v[a] = x0 * cos - x1 * sin;
        v[b] = x0 * sin + x1 * cos;
    }
}

pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU's tanh approximation (PyTorch's `gelu(approximate="tanh")`).
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
}

/// Choose the experts of one token from its router logits: `(expert, weight)`
/// pairs, best first. Scores are the softmax or sigmoid of the logits; the
/// correction `bias` (DeepSeek-V3) is added for choosing only. With groups,
/// only the best `topk_groups` groups compete (the others are excluded with
/// −∞, never 0: scores plus bias can be negative). Ties go to the lower index.
pub fn route(logits: &[f32], bias: Option<&[f32]>, m: &Moe) -> Vec<(usize, f32)> {
    let scores: Vec<f32> = match m.scoring {
        Scoring::Softmax => {
            let mut s = logits.to_vec();
            softmax(&mut s);
            s
        }
        Scoring::Sigmoid => logits.iter().map(|&l| 1.0 / (1.0 + (-l).exp())).collect(),
    };
    let mut choice: Vec<f32> = match bias {
        Some(b) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
        None => scores.clone(),
    };
    // Best first; NaN never wins; ties to the lower index.
    let ranked = |v: &[f32]| -> Vec<usize> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        let key = |i: usize| if v[i].is_nan() { f32::NEG_INFINITY } else { v[i] };
        idx.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
        idx
    };
    if m.groups > 1 && m.topk_groups < m.groups {
        let per = m.n_experts / m.groups;
        let group_scores: Vec<f32> = choice
            .chunks_exact(per)
            .map(|g| {
                let top = ranked(g);
                match m.group_score {
                    GroupScore::Max => g[top[0]],
                    GroupScore::TopTwoSum => top.iter().take(2).map(|&i| g[i]).sum(),
                }
            })
            .collect();
        let keep = &ranked(&group_scores)[..m.topk_groups];
        for (g, chunk) in choice.chunks_exact_mut(per).enumerate() {
            if !keep.contains(&g) {
                chunk.fill(f32::NEG_INFINITY);
            }
        }
    }
    let chosen: Vec<usize> = ranked(&choice).into_iter().take(m.top_k).collect();
    let mut weights: Vec<f32> = chosen.iter().map(|&e| scores[e]).collect();
    if m.norm_topk {
        let sum = weights.iter().sum::<f32>() + 1e-20;
        weights.iter_mut().for_each(|w| *w /= sum);
    }
    chosen.into_iter().zip(weights).map(|(e, w)| (e, w * m.scale)).collect()
}

/// A linear layer: matrices stacked by rows (their outputs side by side),
/// and a bias.
pub struct Linear {
    parts: Vec<Matrix>,
    bias: Option<Vec<f32>>, // [rows]
    rows: usize,
}

impl Linear {
    /// `W x (+ b)` for the `n` rows of `x`: `[n, rows]`.
    fn forward(&self, x: &[f32], n: usize) -> Vec<f32> {
        let mut y = match self.parts.as_slice() {
            [m] => m.matmul(x, n),
            parts => {
                let mut y = vec![0f32; n * self.rows];
                let mut at = 0;
                for m in parts {
                    let part = m.matmul(x, n); // [n, m.rows]
                    for (row, p) in y.chunks_exact_mut(self.rows).zip(part.chunks_exact(m.rows)) {
                        row[at..at + m.rows].copy_from_slice(p);
                    }
                    at += m.rows;
                }
                y
            }
        };
        if let Some(b) = &self.bias {
            y.chunks_exact_mut(self.rows).for_each(|r| r.iter_mut().zip(b).for_each(|(y, b)| *y += b));
        }
        y
    }
}

/// One routed expert: gate [ffn, hidden], up [ffn, hidden], down [hidden, ffn].
pub struct Expert {
    gate: Matrix,
    up: Matrix,
    down: Matrix,
}

impl Expert {
    /// `down(silu(gate x) ⊙ up x)` for `n` rows of `x`.
    fn forward(&self, x: &[f32], n: usize) -> Vec<f32> {
        let gate = self.gate.matmul(x, n);
        let up = self.up.matmul(x, n);
        let act: Vec<f32> = gate.iter().zip(&up).map(|(g, u)| silu(*g) * u).collect();
        self.down.matmul(&act, n)
    }
}

/// The reference's weights: matrices in their file's block format, vectors in f32.
pub struct RefWeights;

impl Weights for RefWeights {
    type Linear = Linear;
    type Vector = Vec<f32>;
    type Experts = Vec<Expert>;
    type Dense = Matrix;
}

/// Reads the weights a model declares straight from the tensor index.
struct Loader<'a> {
    index: &'a TensorIndex,
    arch: Arch,
}

impl Load for Loader<'_> {
    type W = RefWeights;
    type Reader = TensorIndex;

    fn index(&self) -> &TensorIndex {
        self.index
    }
    fn reader(&self) -> &TensorIndex {
        self.index
    }

    async fn linear(&mut self, d: &LinearDecl) -> Result<Linear> {
        let parts = d.parts.iter().map(|(name, rows)| Matrix::load(self.index, name, [*rows, d.cols])).collect::<Result<Vec<_>>>()?;
        let bias = d.read_bias(self.index, self.index).await?;
        Ok(Linear { parts, bias, rows: d.rows() })
    }

    async fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        self.index.read_vector(name, len as u64)
    }

    fn vector_of(&mut self, _name: &str, values: &[f32]) -> Result<Vec<f32>> {
        Ok(values.to_vec())
    }

    async fn experts(&mut self, d: &ExpertsDecl) -> Result<Vec<Expert>> {
        let (f, h) = (d.ffn, d.hidden);
        (0..d.n)
            .map(|e| {
                let w = |which, shape| Matrix::load_expert(self.index, self.arch, d.layer, e, d.n, which, shape);
                Ok(Expert { gate: w(names::Expert::Gate, [f, h])?, up: w(names::Expert::Up, [f, h])?, down: w(names::Expert::Down, [h, f])? })
            })
            .collect()
    }

    fn dense(&mut self, name: &str, rows: usize, cols: usize, values: &[f32]) -> Result<Matrix> {
        Ok(Matrix::from_f32(name, rows, cols, values))
    }
}

/// An activation: `n` rows.
pub struct Act {
    n: usize,
    data: Vec<f32>, // [n, width]
}

impl Act {
    fn width(&self) -> usize {
        self.data.len() / self.n.max(1)
    }
}

/// Rotate every `hd`-wide head of `rows` (`[n, heads · hd]`) at positions
/// `start..`: its dims `at..at + 2 · inv_freq.len()`, times the attention factor.
fn rope_rows(r: &Rope, rows: &mut [f32], n: usize, hd: usize, at: usize, start: usize) {
    let width = rows.len() / n.max(1);
    for (i, row) in rows.chunks_exact_mut(width).enumerate() {
        for head in row.chunks_exact_mut(hd) {
            let part = &mut head[at..at + 2 * r.inv_freq.len()];
            rope(part, start + i, &r.inv_freq, r.pairing);
            if r.factor != 1.0 {
                part.iter_mut().for_each(|v| *v *= r.factor);
            }
        }
    }
}

/// The ops executed in plain Rust over one pass: the pass's tokens at
/// positions `start..`, the KV cache of every layer, and (for `compare`)
/// every named intermediate's last row.
#[derive(Default)]
pub struct RefOps {
    tokens: Vec<u32>,
    start: usize,
    /// The LM head runs on every row (else on the last).
    head_all: bool,
    /// Per layer `[pos, width]`: keys (GQA), or MLA's latent `c_kv`.
    k_cache: Vec<Vec<f32>>,
    /// Per layer `[pos, width]`: values (GQA), or MLA's roped `k_pe`.
    v_cache: Vec<Vec<f32>>,
    /// Per layer the (k, v) widths of one position.
    widths: Vec<(usize, usize)>,
    kept: Option<Vec<(String, Vec<f32>)>>,
}

impl RefOps {
    fn keep(&mut self, name: &str, x: &Act) {
        if let Some(kept) = &mut self.kept {
            let w = x.width();
            kept.push((name.to_string(), x.data[x.data.len() - w..].to_vec()));
        }
    }

    /// Layer `l`'s caches, `kw` and `vw` values a position.
    fn caches(&mut self, l: usize, kw: usize, vw: usize) -> (&mut Vec<f32>, &mut Vec<f32>) {
        if self.k_cache.len() <= l {
            self.k_cache.resize_with(l + 1, Vec::new);
            self.v_cache.resize_with(l + 1, Vec::new);
            self.widths.resize(l + 1, (0, 0));
        }
        self.widths[l] = (kw, vw);
        (&mut self.k_cache[l], &mut self.v_cache[l])
    }

    fn truncate(&mut self, len: usize) {
        for ((k, v), (kw, vw)) in self.k_cache.iter_mut().zip(&mut self.v_cache).zip(&self.widths) {
            k.truncate(len * kw);
            v.truncate(len * vw);
        }
    }
}

/// Each token's chosen (expert, weight) pairs.
pub struct Routes(Vec<Vec<(usize, f32)>>);

impl Ops for RefOps {
    type W = RefWeights;
    type Act = Act;
    type Routes = Routes;
    /// `[n · top_k, hidden]`: each token's chosen experts' outputs in order.
    type Slots = Vec<f32>;

    fn embed(&mut self, name: &str, w: &Linear) -> Result<Act> {
        let [m] = w.parts.as_slice() else { return Err(Error::Config("an embedding stacked from several tensors".into())) };
        let (n, h) = (self.tokens.len(), m.cols);
        let mut x = vec![0f32; n * h];
        for (i, &t) in self.tokens.iter().enumerate() {
            m.row(t as usize, &mut x[i * h..(i + 1) * h]);
        }
        let x = Act { n, data: x };
        self.keep(name, &x);
        Ok(x)
    }

    fn rms_norm(&mut self, name: &str, x: &Act, w: &Vec<f32>, eps: f32) -> Result<Act> {
        let mut y = Act { n: x.n, data: x.data.clone() };
        y.data.chunks_exact_mut(x.width()).for_each(|r| rms_norm(r, w, eps));
        self.keep(name, &y);
        Ok(y)
    }

    fn rms_norm_head(&mut self, name: &str, x: &Act, w: &Vec<f32>, eps: f32) -> Result<Act> {
        let last = Act { n: 1, data: x.data[x.data.len() - x.width()..].to_vec() };
        self.rms_norm(name, if self.head_all { x } else { &last }, w, eps)
    }

    fn linear(&mut self, name: &str, w: &Linear, x: &Act) -> Result<Act> {
        let y = Act { n: x.n, data: w.forward(&x.data, x.n) };
        self.keep(name, &y);
        Ok(y)
    }

    fn add_linear(&mut self, name: &str, residual: &mut Act, w: &Linear, x: &Act) -> Result<()> {
        let y = w.forward(&x.data, x.n);
        residual.data.iter_mut().zip(&y).for_each(|(r, y)| *r += y);
        self.keep(name, residual);
        Ok(())
    }

    fn glu(&mut self, name: &str, w: &Linear, x: &Act, act: Activation) -> Result<Act> {
        let gate_up = w.forward(&x.data, x.n); // [n, 2 · ffn]
        let f = w.rows / 2;
        let act = match act {
            Activation::Silu => silu,
            Activation::GeluTanh => gelu_tanh,
        };
        let data = gate_up.chunks_exact(2 * f).flat_map(|r| r[..f].iter().zip(&r[f..]).map(|(g, u)| act(*g) * u)).collect();
        let y = Act { n: x.n, data };
        self.keep(name, &y);
        Ok(y)
    }

    fn scale(&mut self, name: &str, x: &mut Act, factor: f32) -> Result<()> {
        x.data.iter_mut().for_each(|v| *v *= factor);
        self.keep(name, x);
        Ok(())
    }

    fn add_rms_norm(&mut self, name: &str, residual: &mut Act, y: &Act, w: &Vec<f32>, eps: f32) -> Result<()> {
        let width = y.width();
        for (r, y) in residual.data.chunks_exact_mut(width).zip(y.data.chunks_exact(width)) {
            let mut yn = y.to_vec();
            rms_norm(&mut yn, w, eps);
            r.iter_mut().zip(&yn).for_each(|(r, y)| *r += y);
        }
        self.keep(name, residual);
        Ok(())
    }

    fn attention(&mut self, name: &str, l: usize, qkv: &Act, norm: Option<QkNorm<'_, Vec<f32>>>, a: &Gqa) -> Result<Act> {
        let (n, hd, start) = (qkv.n, a.head_dim, self.start);
        let (q_dim, kv_dim, group) = (a.heads * hd, a.kv_heads * hd, a.heads / a.kv_heads);
        let (mut q, mut k, mut v) = (Vec::with_capacity(n * q_dim), Vec::with_capacity(n * kv_dim), Vec::with_capacity(n * kv_dim));
        for row in qkv.data.chunks_exact(q_dim + 2 * kv_dim) {
            q.extend_from_slice(&row[..q_dim]);
            k.extend_from_slice(&row[q_dim..q_dim + kv_dim]);
            v.extend_from_slice(&row[q_dim + kv_dim..]);
        }
        if let Some(nm) = norm {
            q.chunks_exact_mut(hd).for_each(|h| rms_norm(h, nm.q, nm.eps));
            k.chunks_exact_mut(hd).for_each(|h| rms_norm(h, nm.k, nm.eps));
        }
        rope_rows(&a.rope, &mut q, n, hd, 0, start);
        rope_rows(&a.rope, &mut k, n, hd, 0, start);
        let (kc, vc) = self.caches(l, kv_dim, kv_dim); // [start + n, kv_dim]
        kc.extend_from_slice(&k);
        vc.extend_from_slice(&v);
        let (kc, vc) = (&*kc, &*vc);
        let mut attn = vec![0f32; n * q_dim]; // [n, heads · head_dim]
        for i in 0..n {
            // Causal: positions first..=start+i, all of them or the window's.
            let visible = start + i + 1;
            let first = a.window.map_or(0, |w| visible.saturating_sub(w));
            for head in 0..a.heads {
                let kvh = head / group;
                let qh = &q[i * q_dim + head * hd..][..hd];
                let mut scores: Vec<f32> = (first..visible).map(|p| dot(qh, &kc[p * kv_dim + kvh * hd..][..hd]) * a.scale).collect();
                softmax(&mut scores);
                let out = &mut attn[i * q_dim + head * hd..][..hd];
                for (p, s) in (first..).zip(&scores) {
                    let vp = &vc[p * kv_dim + kvh * hd..][..hd];
                    out.iter_mut().zip(vp).for_each(|(o, v)| *o += s * v);
                }
            }
        }
        let y = Act { n, data: attn };
        self.keep(name, &y);
        Ok(y)
    }

    /// The plain form: each head's keys and values decompressed from the
    /// cached `c_kv` (the GPU absorbs `W_kvb` into the query instead).
    fn latent_attention(&mut self, name: &str, l: usize, q: &Act, kv_a: &Act, norm: &Vec<f32>, kv_b: &Matrix, a: &Latent) -> Result<Act> {
        let (n, start) = (q.n, self.start);
        let (nh, nope, rope_d, vd, rank) = (a.heads, a.nope, a.rope_dim, a.v_dim, a.rank);
        let qk = nope + rope_d;
        let mut q = q.data.clone(); // [n, nh · qk]
        let (mut c, mut pe) = (Vec::with_capacity(n * rank), Vec::with_capacity(n * rope_d));
        for row in kv_a.data.chunks_exact(rank + rope_d) {
            let mut ck = row[..rank].to_vec();
            rms_norm(&mut ck, norm, a.eps);
            c.extend(ck);
            pe.extend_from_slice(&row[rank..]);
        }
        rope_rows(&a.rope, &mut q, n, qk, nope, start);
        rope_rows(&a.rope, &mut pe, n, rope_d, 0, start);
        let (kc, pc) = self.caches(l, rank, rope_d);
        kc.extend_from_slice(&c);
        pc.extend_from_slice(&pe);
        let total = start + n;
        let kv = kv_b.matmul(kc, total); // [total, nh · (nope + v)]
        let pc = &*pc; // [total, rope]
        let mut attn = vec![0f32; n * nh * vd];
        for i in 0..n {
            let visible = start + i + 1;
            for h in 0..nh {
                let qh = &q[(i * nh + h) * qk..][..qk];
                let mut scores: Vec<f32> = (0..visible)
                    .map(|p| {
                        let k_nope = &kv[p * kv_b.rows + h * (nope + vd)..][..nope];
                        (dot(&qh[..nope], k_nope) + dot(&qh[nope..], &pc[p * rope_d..][..rope_d])) * a.scale
                    })
                    .collect();
                softmax(&mut scores);
                let out = &mut attn[(i * nh + h) * vd..][..vd];
                for (p, s) in scores.iter().enumerate() {
                    let v = &kv[p * kv_b.rows + h * (nope + vd) + nope..][..vd];
                    out.iter_mut().zip(v).for_each(|(o, v)| *o += s * v);
                }
            }
        }
        let y = Act { n, data: attn };
        self.keep(name, &y);
        Ok(y)
    }

    fn route(&mut self, _name: &str, logits: &Act, bias: Option<&Vec<f32>>, m: &Moe) -> Result<Routes> {
        Ok(Routes(logits.data.chunks_exact(m.n_experts).map(|l| route(l, bias.map(|b| b.as_slice()), m)).collect()))
    }

    fn experts(&mut self, _name: &str, w: &Vec<Expert>, x: &Act, routes: &Routes, _m: &Moe) -> Result<Vec<f32>> {
        let h = x.width();
        let mut out = Vec::new();
        for (xt, chosen) in x.data.chunks_exact(h).zip(&routes.0) {
            for &(e, _) in chosen {
                out.extend(w[e].forward(xt, 1));
            }
        }
        Ok(out)
    }

    fn moe_combine(&mut self, name: &str, x: &mut Act, slots: &Vec<f32>, routes: &Routes, shared: Option<&Act>, gate: Option<&Act>, _m: &Moe) -> Result<()> {
        let h = x.width();
        let mut slot = slots.chunks_exact(h);
        for (t, chosen) in routes.0.iter().enumerate() {
            let mut y = match shared {
                Some(s) => s.data[t * h..][..h].to_vec(),
                None => vec![0f32; h],
            };
            if let Some(g) = gate {
                let g = 1.0 / (1.0 + (-g.data[t]).exp());
                y.iter_mut().for_each(|v| *v *= g);
            }
            for &(_, weight) in chosen {
                let out = slot.next().ok_or_else(|| Error::Config("fewer expert outputs than chosen experts".into()))?;
                y.iter_mut().zip(out).for_each(|(y, o)| *y += weight * o);
            }
            x.data[t * h..][..h].iter_mut().zip(&y).for_each(|(x, y)| *x += y);
        }
        self.keep(name, x);
        Ok(())
    }
}

/// The transformer on the CPU, with its KV cache: every architecture of
/// [`crate::model`], its graph run by [`RefOps`].
pub struct Reference {
    pub cfg: ModelConfig,
    model: Model<RefWeights>,
    ops: RefOps,
    /// Tokens in the cache.
    pub len: usize,
}

impl Reference {
    pub fn load(m: &ModelFiles) -> Result<Self> {
        let mut loader = Loader { index: &m.index, arch: m.config.arch };
        let model = run_ready(Model::load(&mut loader, &m.config))?;
        Ok(Reference { cfg: m.config.clone(), model, ops: RefOps::default(), len: 0 })
    }

    /// Hold at most `n` positions (checked by [`ModelConfig::check_context`])
    /// instead of the model's own context length.
    pub fn with_context(mut self, n: usize) -> Result<Self> {
        self.cfg.context_length = self.cfg.check_context(n)?;
        Ok(self)
    }

    /// Run `tokens` at positions `len..len + n`, append them to the cache, and
    /// return the logits of every position (`[n, vocab]`) or only of the last.
    pub fn forward_tokens(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        let n = tokens.len();
        if n == 0 {
            return Err(Error::Input("forward: no tokens".into()));
        }
        if self.len + n > self.cfg.context_length {
            return Err(Error::Input(format!(
                "{} tokens do not fit the context of {} (already {} in the cache)",
                n, self.cfg.context_length, self.len
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab) {
            return Err(Error::Input(format!("token id {bad} is outside the vocabulary of {}", self.cfg.vocab)));
        }
        self.ops.tokens = tokens.to_vec();
        self.ops.start = self.len;
        self.ops.head_all = all_logits;
        let x = self.model.body(&mut self.ops)?;
        let logits = self.model.head(&mut self.ops, &x)?;
        self.len += n;
        Ok(logits.data)
    }

    /// Run `tokens` as [`Reference::forward_tokens`] does and return, in
    /// graph order, every named intermediate's value at the last position.
    pub fn intermediates(&mut self, tokens: &[u32]) -> Result<Vec<(String, Vec<f32>)>> {
        self.ops.kept = Some(Vec::new());
        let r = self.forward_tokens(tokens, false);
        let kept = self.ops.kept.take().unwrap_or_default();
        r.map(|_| kept)
    }
}

impl Backend for Reference {
    fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        self.forward_tokens(tokens, all_logits)
    }
    fn len(&self) -> usize {
        self.len
    }
    fn truncate(&mut self, len: usize) {
        self.len = len.min(self.len);
        self.ops.truncate(self.len);
    }
    fn context_length(&self) -> usize {
        self.cfg.context_length
    }
    fn vocab(&self) -> usize {
        self.cfg.vocab
    }
    fn describe(&self) -> (String, String) {
        ("reference (CPU, f32)".into(), "cpu".into())
    }
}
