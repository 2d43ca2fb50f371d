//! The reference: a plain-Rust f32 forward pass, written to be read.
//!
//! It is the oracle for every GPU kernel and every model, so clarity wins over
//! speed everywhere except the one hot loop (the matrix product), which splits
//! rows across threads. Weights stay in their file's block format and are
//! dequantised a row at a time, so memory is the file's size, not 4 bytes a weight.

use crate::config::{Arch, GroupScore, Mla, ModelConfig, Moe, RopePairing, Scoring};
use crate::engine::Backend;
use crate::error::{Error, Result};
use crate::format::TensorIndex;
use crate::model::names::{self, Global, Layer};
use crate::model::ModelFiles;
use crate::quant::{dequantize, DType};

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
        let data = crate::engine::run_ready(crate::format::TensorReader::read_range(index, t, part as u64 * slab, slab))?;
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

/// Grouped-query attention's projections (llama, qwen2).
struct Gqa {
    wq: Matrix,           // [n_heads * head_dim, hidden]
    wk: Matrix,           // [n_kv_heads * head_dim, hidden]
    wv: Matrix,           // [n_kv_heads * head_dim, hidden]
    bq: Option<Vec<f32>>, // [n_heads * head_dim] (qwen2)
    bk: Option<Vec<f32>>, // [n_kv_heads * head_dim]
    bv: Option<Vec<f32>>, // [n_kv_heads * head_dim]
}

/// Multi-head latent attention's projections (DeepSeek).
struct MlaWeights {
    /// `W_q`, or `W_qa`, its norm and `W_qb`.
    q: Result<Matrix, (Matrix, Vec<f32>, Matrix)>, // → [n_heads * (nope + rope)]
    kv_a: Matrix,        // [rank + rope, hidden]
    kv_a_norm: Vec<f32>, // [rank]
    kv_b: Matrix,        // [n_heads * (nope + v), rank]
}

enum Attention {
    Gqa(Gqa),
    Mla(MlaWeights),
}

/// A SwiGLU MLP: gate [ffn, hidden], up [ffn, hidden], down [hidden, ffn].
struct Mlp {
    gate: Matrix,
    up: Matrix,
    down: Matrix,
}

impl Mlp {
    fn load(index: &TensorIndex, names: [String; 3], hidden: usize, ffn: usize) -> Result<Self> {
        let [g, u, d] = names;
        Ok(Mlp { gate: Matrix::load(index, &g, [ffn, hidden])?, up: Matrix::load(index, &u, [ffn, hidden])?, down: Matrix::load(index, &d, [hidden, ffn])? })
    }

    /// `down(silu(gate x) ⊙ up x)` for `n` rows of `x`.
    fn forward(&self, x: &[f32], n: usize) -> Vec<f32> {
        let gate = self.gate.matmul(x, n);
        let up = self.up.matmul(x, n);
        let act: Vec<f32> = gate.iter().zip(&up).map(|(g, u)| silu(*g) * u).collect();
        self.down.matmul(&act, n)
    }
}

/// A mixture-of-experts block.
struct MoeWeights {
    router: Matrix,         // [experts, hidden]
    bias: Option<Vec<f32>>, // [experts]: added to scores for selection only
    experts: Vec<Mlp>,
    shared: Option<Mlp>,
    /// Qwen2-MoE: the shared expert's output times `sigmoid(gate · x)`.
    shared_gate: Option<Vec<f32>>, // [hidden]
}

enum Ffn {
    Dense(Mlp),
    Moe(MoeWeights),
}

struct LayerWeights {
    attn_norm: Vec<f32>, // [hidden]
    attn: Attention,
    wo: Matrix,         // [hidden, n_heads * v_dim]
    ffn_norm: Vec<f32>, // [hidden]
    ffn: Ffn,
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

/// The transformer on the CPU, with its KV cache: llama and qwen2 (grouped-query
/// attention, SwiGLU), DeepSeek-V2/V3 (latent attention, mixture of experts).
pub struct Reference {
    pub cfg: ModelConfig,
    token_embd: Matrix,  // [vocab, hidden]
    layers: Vec<LayerWeights>,
    output_norm: Vec<f32>, // [hidden]
    output: Option<Matrix>, // [vocab, hidden]; None when tied to token_embd
    inv_freq: Vec<f32>,     // [rope_dim / 2]
    /// Per layer `[pos, k_width]`: keys (GQA), or MLA's latent `c_kv`.
    k_cache: Vec<Vec<f32>>,
    /// Per layer `[pos, v_width]`: values (GQA), or MLA's roped `k_pe`.
    v_cache: Vec<Vec<f32>>,
    /// Tokens in the cache.
    pub len: usize,
}

impl Reference {
    pub fn load(m: &ModelFiles) -> Result<Self> {
        let (cfg, index) = (&m.config, &m.index);
        let kind = index.kind;
        let (h, q_dim, kv_dim) = (cfg.hidden, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim);
        let mat = |name: &str, shape: [usize; 2]| Matrix::load(index, name, shape);
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let n = |w| names::layer(kind, i, w);
            let vector = |w, len: usize| index.read_vector(&n(w), len as u64);
            let (attn, v_dim) = match &cfg.mla {
                None => {
                    let bias = |w, len| if cfg.qkv_bias { vector(w, len).map(Some) } else { Ok(None) };
                    let gqa = Gqa {
                        wq: mat(&n(Layer::Q), [q_dim, h])?,
                        wk: mat(&n(Layer::K), [kv_dim, h])?,
                        wv: mat(&n(Layer::V), [kv_dim, h])?,
                        bq: bias(Layer::QBias, q_dim)?,
                        bk: bias(Layer::KBias, kv_dim)?,
                        bv: bias(Layer::VBias, kv_dim)?,
                    };
                    (Attention::Gqa(gqa), cfg.head_dim)
                }
                Some(mla) => (Attention::Mla(load_mla(index, cfg, mla, i)?), mla.v_head_dim),
            };
            let ffn = match &cfg.moe {
                Some(moe) if moe.is_moe_layer(i) => {
                    let experts = (0..moe.n_experts)
                        .map(|e| {
                            let w = |which, shape| Matrix::load_expert(index, cfg.arch, i, e, moe.n_experts, which, shape);
                            let f = moe.expert_ffn;
                            Ok(Mlp { gate: w(names::Expert::Gate, [f, h])?, up: w(names::Expert::Up, [f, h])?, down: w(names::Expert::Down, [h, f])? })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    let mn = |w| names::moe(kind, cfg.arch, i, w);
                    let shared = if moe.shared_ffn > 0 {
                        Some(Mlp::load(index, [mn(Layer::SharedGate), mn(Layer::SharedUp), mn(Layer::SharedDown)], h, moe.shared_ffn)?)
                    } else {
                        None
                    };
                    let shared_gate = if moe.shared_gate { Some(index.read_vector(&mn(Layer::SharedExpertGate), h as u64)?) } else { None };
                    let bias = match index.get(&mn(Layer::RouterBias)) {
                        Some(_) => Some(index.read_vector(&mn(Layer::RouterBias), moe.n_experts as u64)?),
                        None => None,
                    };
                    let router = mat(&mn(Layer::Router), [moe.n_experts, h])?;
                    Ffn::Moe(MoeWeights { router, bias, experts, shared, shared_gate })
                }
                _ => Ffn::Dense(Mlp::load(index, [n(Layer::Gate), n(Layer::Up), n(Layer::Down)], h, cfg.ffn)?),
            };
            layers.push(LayerWeights {
                attn_norm: vector(Layer::AttnNorm, h)?,
                attn,
                wo: mat(&n(Layer::O), [h, cfg.n_heads * v_dim])?,
                ffn_norm: vector(Layer::FfnNorm, h)?,
                ffn,
            });
        }
        Ok(Reference {
            token_embd: mat(names::global(kind, Global::TokenEmbd), [cfg.vocab, h])?,
            output_norm: index.read_vector(names::global(kind, Global::OutputNorm), h as u64)?,
            output: if cfg.tie_embeddings {
                None
            } else {
                Some(mat(names::global(kind, Global::Output), [cfg.vocab, h])?)
            },
            inv_freq: cfg.rope_inv_freq(),
            k_cache: vec![Vec::new(); cfg.n_layers],
            v_cache: vec![Vec::new(); cfg.n_layers],
            len: 0,
            cfg: cfg.clone(),
            layers,
        })
    }

    /// Widths of one position in the (k, v) caches.
    fn cache_widths(&self) -> (usize, usize) {
        match &self.cfg.mla {
            Some(m) => (m.kv_lora_rank, m.qk_rope),
            None => (self.cfg.n_kv_heads * self.cfg.head_dim, self.cfg.n_kv_heads * self.cfg.head_dim),
        }
    }

    /// Rotate every `hd`-wide head of `rows` (`[n, heads · hd]`) at positions
    /// `start..`: its dims `at..at + rope_dim`, times the YaRN attention factor.
    fn rope_rows(&self, rows: &mut [f32], n: usize, hd: usize, at: usize, start: usize) {
        let (factor, width) = (self.cfg.rope_attention_factor(), rows.len() / n.max(1));
        for (i, row) in rows.chunks_exact_mut(width).enumerate() {
            for head in row.chunks_exact_mut(hd) {
                let part = &mut head[at..at + 2 * self.inv_freq.len()];
                rope(part, start + i, &self.inv_freq, self.cfg.rope_pairing);
                if factor != 1.0 {
                    part.iter_mut().for_each(|v| *v *= factor);
                }
            }
        }
    }

    /// Grouped-query attention of `n` new rows `xn` at positions `start..`.
    fn gqa(&mut self, l: usize, xn: &[f32], n: usize, start: usize) -> Vec<f32> {
        let cfg = &self.cfg;
        let hd = cfg.head_dim;
        let (q_dim, kv_dim, group) = (cfg.n_heads * hd, cfg.n_kv_heads * hd, cfg.n_heads / cfg.n_kv_heads);
        let Attention::Gqa(w) = &self.layers[l].attn else { unreachable!("a GQA layer") };
        let mut q = w.wq.matmul(xn, n); // [n, n_heads * head_dim]
        let mut k = w.wk.matmul(xn, n); // [n, n_kv_heads * head_dim]
        let mut v = w.wv.matmul(xn, n); // [n, n_kv_heads * head_dim]
        for (t, b) in [(&mut q, &w.bq), (&mut k, &w.bk), (&mut v, &w.bv)] {
            if let Some(b) = b {
                t.chunks_exact_mut(b.len()).for_each(|r| r.iter_mut().zip(b).for_each(|(x, b)| *x += b));
            }
        }
        self.rope_rows(&mut q, n, hd, 0, start);
        self.rope_rows(&mut k, n, hd, 0, start);
        self.k_cache[l].extend_from_slice(&k);
        self.v_cache[l].extend_from_slice(&v);
        let (kc, vc) = (&self.k_cache[l], &self.v_cache[l]); // [start + n, kv_dim]
        let scale = 1.0 / (hd as f32).sqrt();
        let mut attn = vec![0f32; n * q_dim]; // [n, n_heads * head_dim]
        for i in 0..n {
            let visible = start + i + 1; // causal: positions 0..=start+i
            for head in 0..cfg.n_heads {
                let kvh = head / group;
                let qh = &q[i * q_dim + head * hd..][..hd];
                let mut scores: Vec<f32> = (0..visible).map(|p| dot(qh, &kc[p * kv_dim + kvh * hd..][..hd]) * scale).collect();
                softmax(&mut scores);
                let out = &mut attn[i * q_dim + head * hd..][..hd];
                for (p, a) in scores.iter().enumerate() {
                    let vp = &vc[p * kv_dim + kvh * hd..][..hd];
                    out.iter_mut().zip(vp).for_each(|(o, v)| *o += a * v);
                }
            }
        }
        attn
    }

    /// Multi-head latent attention of `n` new rows at positions `start..`:
    /// the cache keeps `c_kv` (normed latent) and the roped `k_pe`; keys and
    /// values of each head are decompressed from `c_kv` (the plain form; the
    /// GPU absorbs `W_kvb` into the query instead).
    fn mla(&mut self, l: usize, xn: &[f32], n: usize, start: usize) -> Vec<f32> {
        let cfg = &self.cfg;
        let m = cfg.mla.as_ref().expect("an MLA model");
        let (nh, nope, rope_d, vd, rank) = (cfg.n_heads, m.qk_nope, m.qk_rope, m.v_head_dim, m.kv_lora_rank);
        let qk = nope + rope_d;
        let Attention::Mla(w) = &self.layers[l].attn else { unreachable!("an MLA layer") };
        let mut q = match &w.q {
            Ok(wq) => wq.matmul(xn, n),
            Err((a, norm, b)) => {
                let mut qa = a.matmul(xn, n);
                qa.chunks_exact_mut(a.rows).for_each(|r| rms_norm(r, norm, cfg.rms_eps));
                b.matmul(&qa, n)
            }
        }; // [n, nh * qk]
        let kv_a = w.kv_a.matmul(xn, n); // [n, rank + rope]
        let mut c = Vec::with_capacity(n * rank);
        let mut pe = Vec::with_capacity(n * rope_d);
        for row in kv_a.chunks_exact(rank + rope_d) {
            let mut ck = row[..rank].to_vec();
            rms_norm(&mut ck, &w.kv_a_norm, cfg.rms_eps);
            c.extend(ck);
            pe.extend_from_slice(&row[rank..]);
        }
        let kv_b_rows = w.kv_b.rows;
        self.rope_rows(&mut q, n, qk, nope, start);
        self.rope_rows(&mut pe, n, rope_d, 0, start);
        self.k_cache[l].extend_from_slice(&c);
        self.v_cache[l].extend_from_slice(&pe);
        let total = start + n;
        let Attention::Mla(w) = &self.layers[l].attn else { unreachable!("an MLA layer") };
        let kv = w.kv_b.matmul(&self.k_cache[l], total); // [total, nh * (nope + v)]
        let pc = &self.v_cache[l]; // [total, rope]
        let scale = (m.softmax_mscale / (qk as f64).sqrt()) as f32;
        let mut attn = vec![0f32; n * nh * vd];
        for i in 0..n {
            let visible = start + i + 1;
            for h in 0..nh {
                let qh = &q[(i * nh + h) * qk..][..qk];
                let mut scores: Vec<f32> = (0..visible)
                    .map(|p| {
                        let k_nope = &kv[p * kv_b_rows + h * (nope + vd)..][..nope];
                        (dot(&qh[..nope], k_nope) + dot(&qh[nope..], &pc[p * rope_d..][..rope_d])) * scale
                    })
                    .collect();
                softmax(&mut scores);
                let out = &mut attn[(i * nh + h) * vd..][..vd];
                for (p, a) in scores.iter().enumerate() {
                    let v = &kv[p * kv_b_rows + h * (nope + vd) + nope..][..vd];
                    out.iter_mut().zip(v).for_each(|(o, v)| *o += a * v);
                }
            }
        }
        attn
    }

    /// The feed-forward block of layer `l` for `n` normed rows.
    fn ffn(&self, l: usize, xn: &[f32], n: usize) -> Vec<f32> {
        let h = self.cfg.hidden;
        match &self.layers[l].ffn {
            Ffn::Dense(mlp) => mlp.forward(xn, n),
            Ffn::Moe(w) => {
                let moe = self.cfg.moe.as_ref().expect("an MoE model");
                let logits = w.router.matmul(xn, n); // [n, experts]
                let mut y = match &w.shared {
                    Some(s) => s.forward(xn, n),
                    None => vec![0f32; n * h],
                };
                if let Some(g) = &w.shared_gate {
                    for (row, x) in y.chunks_exact_mut(h).zip(xn.chunks_exact(h)) {
                        let gate = 1.0 / (1.0 + (-dot(g, x)).exp());
                        row.iter_mut().for_each(|v| *v *= gate);
                    }
                }
                for i in 0..n {
                    let x = &xn[i * h..][..h];
                    for (e, weight) in route(&logits[i * moe.n_experts..][..moe.n_experts], w.bias.as_deref(), moe) {
                        let out = w.experts[e].forward(x, 1);
                        y[i * h..][..h].iter_mut().zip(&out).for_each(|(y, o)| *y += weight * o);
                    }
                }
                y
            }
        }
    }

    /// Run `tokens` at positions `len..len + n`, append them to the cache, and
    /// return the logits of every position (`[n, vocab]`) or only of the last.
    pub fn forward_tokens(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        let n = tokens.len();
        let (h, eps) = (self.cfg.hidden, self.cfg.rms_eps);
        let start = self.len;
        if n == 0 {
            return Err(Error::Input("forward: no tokens".into()));
        }
        if start + n > self.cfg.context_length {
            return Err(Error::Input(format!(
                "{} tokens do not fit the context of {} (already {start} in the cache)",
                n, self.cfg.context_length
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab) {
            return Err(Error::Input(format!("token id {bad} is outside the vocabulary of {}", self.cfg.vocab)));
        }

        // ---- embedding: x [n, hidden]
        let mut x = vec![0f32; n * h];
        for (i, &t) in tokens.iter().enumerate() {
            self.token_embd.row(t as usize, &mut x[i * h..(i + 1) * h]);
        }

        for l in 0..self.layers.len() {
            // ---- attention
            let mut xn = x.clone(); // [n, hidden]
            xn.chunks_exact_mut(h).for_each(|r| rms_norm(r, &self.layers[l].attn_norm, eps));
            let attn = if self.cfg.mla.is_some() { self.mla(l, &xn, n, start) } else { self.gqa(l, &xn, n, start) };
            let o = self.layers[l].wo.matmul(&attn, n); // [n, hidden]
            x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);

            // ---- feed-forward: SwiGLU, or routed experts (+ shared)
            let mut xn = x.clone();
            xn.chunks_exact_mut(h).for_each(|r| rms_norm(r, &self.layers[l].ffn_norm, eps));
            let y = self.ffn(l, &xn, n); // [n, hidden]
            x.iter_mut().zip(&y).for_each(|(x, d)| *x += d);
        }
        self.len += n;

        // ---- final norm and LM head
        let rows: Vec<f32> = if all_logits { x } else { x[(n - 1) * h..].to_vec() };
        let m = rows.len() / h;
        let mut xn = rows;
        xn.chunks_exact_mut(h).for_each(|r| rms_norm(r, &self.output_norm, eps));
        let head = self.output.as_ref().unwrap_or(&self.token_embd);
        Ok(head.matmul(&xn, m)) // [m, vocab]
    }
}

/// An MLA layer's weights; `W_kvb` as one f32 matrix ([`crate::model::mla_kv_b`]).
fn load_mla(index: &TensorIndex, cfg: &ModelConfig, m: &Mla, i: usize) -> Result<MlaWeights> {
    let n = |w| names::layer(index.kind, i, w);
    let (h, nh, qk) = (cfg.hidden, cfg.n_heads, m.qk_nope + m.qk_rope);
    let (nope, vd, rank) = (m.qk_nope, m.v_head_dim, m.kv_lora_rank);
    let q = match m.q_lora_rank {
        None => Ok(Matrix::load(index, &n(Layer::Q), [nh * qk, h])?),
        Some(r) => Err((
            Matrix::load(index, &n(Layer::QA), [r, h])?,
            index.read_vector(&n(Layer::QANorm), r as u64)?,
            Matrix::load(index, &n(Layer::QB), [nh * qk, r])?,
        )),
    };
    let kv_b = crate::engine::run_ready(crate::model::mla_kv_b(index, index, i, nh, m))?;
    let kv_b = Matrix::from_f32(&n(Layer::KvB), nh * (nope + vd), rank, &kv_b);
    Ok(MlaWeights {
        q,
        kv_a: Matrix::load(index, &n(Layer::KvA), [rank + m.qk_rope, h])?,
        kv_a_norm: index.read_vector(&n(Layer::KvANorm), rank as u64)?,
        kv_b,
    })
}

impl Backend for Reference {
    fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        self.forward_tokens(tokens, all_logits)
    }
    fn len(&self) -> usize {
        self.len
    }
    fn truncate(&mut self, len: usize) {
        let len = len.min(self.len);
        let (kw, vw) = self.cache_widths();
        self.k_cache.iter_mut().for_each(|c| c.truncate(len * kw));
        self.v_cache.iter_mut().for_each(|c| c.truncate(len * vw));
        self.len = len;
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
