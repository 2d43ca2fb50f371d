//! The reference: a plain-Rust f32 forward pass, written to be read.
//!
//! It is the oracle for every GPU kernel and every model, so clarity wins over
//! speed everywhere except the one hot loop (the matrix product), which splits
//! rows across threads. Weights stay in their file's block format and are
//! dequantised a row at a time, so memory is the file's size, not 4 bytes a weight.

use crate::config::{ModelConfig, RopePairing};
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

struct LayerWeights {
    attn_norm: Vec<f32>, // [hidden]
    wq: Matrix,          // [n_heads * head_dim, hidden]
    wk: Matrix,          // [n_kv_heads * head_dim, hidden]
    wv: Matrix,          // [n_kv_heads * head_dim, hidden]
    bq: Option<Vec<f32>>, // [n_heads * head_dim] (qwen2)
    bk: Option<Vec<f32>>, // [n_kv_heads * head_dim]
    bv: Option<Vec<f32>>, // [n_kv_heads * head_dim]
    wo: Matrix,          // [hidden, n_heads * head_dim]
    ffn_norm: Vec<f32>,  // [hidden]
    w_gate: Matrix,      // [ffn, hidden]
    w_up: Matrix,        // [ffn, hidden]
    w_down: Matrix,      // [hidden, ffn]
}

/// The dense transformer (llama, qwen2) on the CPU, with its KV cache.
pub struct Reference {
    pub cfg: ModelConfig,
    token_embd: Matrix,  // [vocab, hidden]
    layers: Vec<LayerWeights>,
    output_norm: Vec<f32>, // [hidden]
    output: Option<Matrix>, // [vocab, hidden]; None when tied to token_embd
    inv_freq: Vec<f32>,     // [head_dim / 2]
    k_cache: Vec<Vec<f32>>, // per layer [pos, n_kv_heads * head_dim]
    v_cache: Vec<Vec<f32>>, // per layer [pos, n_kv_heads * head_dim]
    /// Tokens in the cache.
    pub len: usize,
}


impl Reference {
    pub fn load(m: &ModelFiles) -> Result<Self> {
        let (cfg, index) = (&m.config, &m.index);
        let kind = index.kind;
        let (h, hd, q_dim, kv_dim) = (cfg.hidden, cfg.head_dim, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim);
        let mat = |name: &str, shape: [usize; 2]| Matrix::load(index, name, shape);
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let n = |w| names::layer(kind, i, w);
            let bias = |w, len| if cfg.qkv_bias { index.read_vector(&n(w), len as u64).map(Some) } else { Ok(None) };
            layers.push(LayerWeights {
                attn_norm: index.read_vector(&n(Layer::AttnNorm), h as u64)?,
                wq: mat(&n(Layer::Q), [q_dim, h])?,
                wk: mat(&n(Layer::K), [kv_dim, h])?,
                wv: mat(&n(Layer::V), [kv_dim, h])?,
                bq: bias(Layer::QBias, q_dim)?,
                bk: bias(Layer::KBias, kv_dim)?,
                bv: bias(Layer::VBias, kv_dim)?,
                wo: mat(&n(Layer::O), [h, q_dim])?,
                ffn_norm: index.read_vector(&n(Layer::FfnNorm), h as u64)?,
                w_gate: mat(&n(Layer::Gate), [cfg.ffn, h])?,
                w_up: mat(&n(Layer::Up), [cfg.ffn, h])?,
                w_down: mat(&n(Layer::Down), [h, cfg.ffn])?,
            });
        }
        let _ = hd;
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

    /// Run `tokens` at positions `len..len + n`, append them to the cache, and
    /// return the logits of every position (`[n, vocab]`) or only of the last.
    pub fn forward_tokens(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        let n = tokens.len();
        let (h, hd) = (cfg.hidden, cfg.head_dim);
        let (q_dim, kv_dim) = (cfg.n_heads * hd, cfg.n_kv_heads * hd);
        let group = cfg.n_heads / cfg.n_kv_heads;
        let start = self.len;
        if n == 0 {
            return Err(Error::Input("forward: no tokens".into()));
        }
        if start + n > cfg.context_length {
            return Err(Error::Input(format!(
                "{} tokens do not fit the context of {} (already {start} in the cache)",
                n, cfg.context_length
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.vocab) {
            return Err(Error::Input(format!("token id {bad} is outside the vocabulary of {}", cfg.vocab)));
        }

        // ---- embedding: x [n, hidden]
        let mut x = vec![0f32; n * h];
        for (i, &t) in tokens.iter().enumerate() {
            self.token_embd.row(t as usize, &mut x[i * h..(i + 1) * h]);
        }

        let scale = 1.0 / (hd as f32).sqrt();
        for (l, w) in self.layers.iter().enumerate() {
            // ---- attention
            let mut xn = x.clone(); // [n, hidden]
            xn.chunks_exact_mut(h).for_each(|r| rms_norm(r, &w.attn_norm, cfg.rms_eps));
            let mut q = w.wq.matmul(&xn, n); // [n, n_heads * head_dim]
            let mut k = w.wk.matmul(&xn, n); // [n, n_kv_heads * head_dim]
            let mut v = w.wv.matmul(&xn, n); // [n, n_kv_heads * head_dim]
            for (t, b) in [(&mut q, &w.bq), (&mut k, &w.bk), (&mut v, &w.bv)] {
                if let Some(b) = b {
                    t.chunks_exact_mut(b.len()).for_each(|r| r.iter_mut().zip(b).for_each(|(x, b)| *x += b));
                }
            }
            for i in 0..n {
                for head in q[i * q_dim..(i + 1) * q_dim].chunks_exact_mut(hd) {
                    rope(head, start + i, &self.inv_freq, cfg.rope_pairing);
                }
                for head in k[i * kv_dim..(i + 1) * kv_dim].chunks_exact_mut(hd) {
                    rope(head, start + i, &self.inv_freq, cfg.rope_pairing);
                }
            }
            self.k_cache[l].extend_from_slice(&k);
            self.v_cache[l].extend_from_slice(&v);
            let (kc, vc) = (&self.k_cache[l], &self.v_cache[l]); // [start + n, kv_dim]

            let mut attn = vec![0f32; n * q_dim]; // [n, n_heads * head_dim]
            for i in 0..n {
                let visible = start + i + 1; // causal: positions 0..=start+i
                for head in 0..cfg.n_heads {
                    let kvh = head / group;
                    let qh = &q[i * q_dim + head * hd..][..hd];
                    let mut scores: Vec<f32> =
                        (0..visible).map(|p| dot(qh, &kc[p * kv_dim + kvh * hd..][..hd]) * scale).collect();
                    softmax(&mut scores);
                    let out = &mut attn[i * q_dim + head * hd..][..hd];
                    for (p, a) in scores.iter().enumerate() {
                        let vp = &vc[p * kv_dim + kvh * hd..][..hd];
                        out.iter_mut().zip(vp).for_each(|(o, v)| *o += a * v);
                    }
                }
            }
            let o = w.wo.matmul(&attn, n); // [n, hidden]
            x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);

            // ---- SwiGLU MLP: down(silu(gate x) ⊙ up x)
            let mut xn = x.clone();
            xn.chunks_exact_mut(h).for_each(|r| rms_norm(r, &w.ffn_norm, cfg.rms_eps));
            let gate = w.w_gate.matmul(&xn, n); // [n, ffn]
            let up = w.w_up.matmul(&xn, n); // [n, ffn]
            let act: Vec<f32> = gate.iter().zip(&up).map(|(g, u)| silu(*g) * u).collect();
            let down = w.w_down.matmul(&act, n); // [n, hidden]
            x.iter_mut().zip(&down).for_each(|(x, d)| *x += d);
        }
        self.len += n;

        // ---- final norm and LM head
        let rows: Vec<f32> = if all_logits { x } else { x[(n - 1) * h..].to_vec() };
        let m = rows.len() / h;
        let mut xn = rows;
        xn.chunks_exact_mut(h).for_each(|r| rms_norm(r, &self.output_norm, cfg.rms_eps));
        let head = self.output.as_ref().unwrap_or(&self.token_embd);
        Ok(head.matmul(&xn, m)) // [m, vocab]
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
        let len = len.min(self.len);
        let kv_dim = self.cfg.n_kv_heads * self.cfg.head_dim;
        for c in self.k_cache.iter_mut().chain(self.v_cache.iter_mut()) {
            c.truncate(len * kv_dim);
        }
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
