//! `baleen bench-kernels`: each kernel's achieved bandwidth beside a plain
//! copy kernel's on the same adapter. Timing is wall-clock over several
//! submits of many dispatches each (no timestamp queries needed). The copy
//! is timed again beside every kernel, and each kernel's fraction is of that
//! copy: on a shared CPU (lavapipe) the whole machine's speed drifts by half
//! within a minute, and one copy figure at the start would carry that drift
//! into every ratio.

use super::ops::Ctx;
use super::weights::{GpuMatrix, Placement};
use super::{Gpu, Grid, Op, PipelineKey, Step};
use crate::support::now_ms;
use crate::error::Result;
use crate::quant::{random_blocks, DType};
use baleen_shaders::shape;
use serde::Serialize;

#[derive(Serialize)]
pub struct KernelFigure {
    pub name: String,
    pub shape: String,
    pub gbps: f64,
    pub fraction_of_copy: f64,
    /// Matmuls: arithmetic rate (2 · rows · cols · tokens per run), the
    /// measure of a GEMM, which reuses each weight for every token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gflops: Option<f64>,
}

#[derive(Serialize)]
pub struct KernelReport {
    pub adapter: serde_json::Value,
    pub copy_gbps: f64,
    pub kernels: Vec<KernelFigure>,
}

/// Seconds per run of `ops` (median of `reps` submits of `per_submit` runs).
fn time_ops(gpu: &Gpu, step_buf: &wgpu::Buffer, step: &Step, ops: &[&Op], per_submit: usize, reps: usize) -> Result<f64> {
    let mut all: Vec<&Op> = Vec::new();
    for _ in 0..per_submit {
        all.extend(ops);
    }
    gpu.run(step_buf, step, &all)?; // warm-up (pipelines, caches)
    gpu.device.poll(wgpu::PollType::Wait { submission_index: None, timeout: None }).ok();
    let mut times = Vec::new();
    for _ in 0..reps {
        let t0 = now_ms();
        gpu.run(step_buf, step, &all)?;
        gpu.device
            .poll(wgpu::PollType::Wait { submission_index: None, timeout: None })
            .map_err(|e| crate::Error::Gpu(format!("{e}")))?;
        times.push((now_ms() - t0) / 1000.0 / per_submit as f64);
    }
    gpu.check()?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Kernels timed one by one, each against the copy timed just before and after it.
struct Bench<'a> {
    gpu: &'a Gpu,
    step_buf: &'a wgpu::Buffer,
    copy: Op,
    copy_bytes: u64,
    copies: Vec<f64>,
    kernels: Vec<KernelFigure>,
}

impl Bench<'_> {
    fn copy_gbps(&mut self) -> Result<f64> {
        let one = Step { n_tokens: 1, ..Default::default() };
        let gbps = 2.0 * self.copy_bytes as f64 / time_ops(self.gpu, self.step_buf, &one, &[&self.copy], 4, 3)? / 1e9;
        self.copies.push(gbps);
        Ok(gbps)
    }

    /// Time `ops` (a pass of `step`), which move `moved` bytes, between two
    /// copies. Returns seconds per run.
    fn measure(&mut self, name: String, shape: String, ops: &[Op], step: Step, per_submit: usize, moved: u64) -> Result<f64> {
        let refs: Vec<&Op> = ops.iter().collect();
        let before = self.copy_gbps()?;
        let secs = time_ops(self.gpu, self.step_buf, &step, &refs, per_submit, 5)?;
        let after = self.copy_gbps()?;
        let gbps = moved as f64 / secs / 1e9;
        self.kernels.push(KernelFigure { name, shape, gbps, fraction_of_copy: gbps / ((before + after) / 2.0), gflops: None });
        Ok(secs)
    }
}

pub fn run(gpu: &Gpu, target_bytes: u64, only: Option<&str>) -> Result<KernelReport> {
    let step_buf = gpu.uniform("step", bytemuck::bytes_of(&Step::default()));
    let ctx = Ctx::new(gpu, &step_buf);
    let wanted = |name: &str| only.is_none_or(|o| o.split(',').any(|o| o == name));

    // ---- copy baseline
    let bytes = target_bytes.min(gpu.max_binding()) / 16 * 16;
    if bytes < 1 << 16 {
        return Err(crate::Error::Input(format!("--bytes {target_bytes}: give at least 65536 bytes of weights per kernel")));
    }
    let src = gpu.storage("copy src", bytes)?;
    let dst = gpu.storage("copy dst", bytes)?;
    let key = PipelineKey::new(super::Kernel::Copy, "main", vec![]);
    let pipeline = gpu.pipeline(&key)?;
    let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("copy"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry { binding: baleen_shaders::kernels::binding::copy::SRC, resource: src.as_entire_binding() },
            wgpu::BindGroupEntry { binding: baleen_shaders::kernels::binding::copy::DST, resource: dst.as_entire_binding() },
        ],
    });
    let grid = Grid::Fixed(super::flat((bytes / 16) as u32, shape::COPY_WG));
    let copy = Op { name: "copy".into(), pipeline, bind_group, grid, passes: Default::default() };
    let mut b = Bench { gpu, step_buf: &step_buf, copy, copy_bytes: bytes, copies: Vec::new(), kernels: Vec::new() };
    b.copy_gbps()?;
    let pass = |n: u32, pos: u32| Step { n_tokens: n, pos, ..Default::default() };

    // ---- matmul per format: decode GEMV (1 token) and prefill GEMM (64 tokens)
    let cols: u64 = 4096;
    for dtype in DType::ALL.into_iter().filter(|d| d.is_supported() && wanted(d.name())) {
        let format = dtype.name();
        let row_bytes = cols / dtype.block_size() * dtype.block_bytes();
        let rows = (target_bytes / row_bytes).clamp(64, 65535);
        let data = random_blocks(dtype, (rows * cols / dtype.block_size()) as usize, 7);
        let m = GpuMatrix::from_bytes(gpu, format, dtype, rows, cols, &data, Placement::for_gpu(gpu, gpu.shape, gpu.max_binding(), gpu.quad_textures))?;
        for (n, label) in [(1u32, "gemv"), (64, "gemm")] {
            let x = gpu.storage("x", n as u64 * cols * 4)?;
            let y = gpu.storage("y", n as u64 * rows * 4)?;
            let ops = ctx.matmul(&m, super::ops::Matmul::new(&x, cols as u32, &y, rows as u32))?;
            let moved = data.len() as u64 + n as u64 * (cols + rows) * 4;
            let shape = format!("{rows}x{cols}, {n} token{}", if n == 1 { "" } else { "s" });
            let secs = b.measure(format!("matmul_{label}_{format}"), shape, &ops, pass(n, 0), if n == 1 { 8 } else { 1 }, moved)?;
            if let Some(k) = b.kernels.last_mut() {
                k.gflops = Some(2.0 * (rows * cols * n as u64) as f64 / secs / 1e9);
            }
        }
    }

    // ---- the other kernels, at a Llama-3-8B layer's sizes (hidden 4096, ffn
    // 14336, 32 heads of 128, 8 kv heads), a prefill pass of 64 tokens.
    let (h, ffn, heads, kv_heads, hd, n) = (4096u32, 14336u32, 32u32, 8u32, 128u32, 64u32);
    let (q_dim, kv_dim) = (heads * hd, kv_heads * hd);
    let f32s = |len: u32| len as u64 * 4;
    if wanted("rms_norm") {
        let (x, w, out) = (gpu.storage("x", f32s(n * h))?, gpu.storage("w", f32s(h))?, gpu.storage("out", f32s(n * h))?);
        let ops = [ctx.rms_norm("rms_norm", &x, &w, &out, h, 1e-5, false)?];
        b.measure("rms_norm".into(), format!("{n}x{h}"), &ops, pass(n, 0), 4, 2 * f32s(n * h) + f32s(h))?;
    }
    if wanted("swiglu") {
        let (gate_up, out) = (gpu.storage("gate up", f32s(n * 2 * ffn))?, gpu.storage("out", f32s(n * ffn))?);
        let ops = [ctx.swiglu("swiglu", super::ops::GateUp::Stacked(&gate_up), &out, ffn, 1)?];
        b.measure("swiglu".into(), format!("{n}x{ffn}"), &ops, pass(n, 0), 4, f32s(n * 3 * ffn))?;
    }
    let half_kv = gpu.has_f16();
    let kv_bytes: u64 = if half_kv { 2 } else { 4 };
    let context = 2048u32;
    let k_cache = gpu.storage("k cache", context as u64 * kv_dim as u64 * kv_bytes)?;
    let v_cache = gpu.storage("v cache", context as u64 * kv_dim as u64 * kv_bytes)?;
    let q = gpu.storage("q", f32s(n * q_dim))?;
    if wanted("rope") {
        let (inv, qkv) = (gpu.storage("inv_freq", f32s(hd / 2))?, gpu.storage("qkv", f32s(n * (q_dim + 2 * kv_dim)))?);
        let r = super::ops::RopeScatter {
            pairing: crate::config::RopePairing::Halves,
            inv_freq: &inv,
            qkv: &qkv,
            q: &q,
            k_cache: &k_cache,
            v_cache: &v_cache,
            head_dim: hd,
            n_q: heads,
            n_k: kv_heads,
            half_kv,
            norm: None,
        };
        let ops = [ctx.rope_scatter("rope", r)?];
        let moved = f32s(n * (2 * q_dim + 2 * kv_dim)) + 2 * (n * kv_dim) as u64 * kv_bytes;
        b.measure("rope_scatter".into(), format!("{n} tokens, {heads}+{kv_heads} heads of {hd}"), &ops, pass(n, 0), 4, moved)?;
    }
    if wanted("attention") {
        let a = super::ops::AttentionShape::gqa(heads, kv_heads, hd);
        let max_splits = context.div_ceil(ctx.attention_split(&a));
        let part_ml = gpu.storage("part ml", (n * heads * max_splits) as u64 * 8)?;
        let part_o = gpu.storage("part o", f32s(n * heads * max_splits * hd))?;
        let out = gpu.storage("out", f32s(n * q_dim))?;
        let bufs = super::ops::AttentionBuffers { q: &q, k_cache: &k_cache, v_cache: &v_cache, part_ml: &part_ml, part_o: &part_o, out: &out };
        let ops = ctx.attention("attention", bufs, &a, max_splits, half_kv)?;
        // The cache rows read (once per kv head), q and the output.
        for (tokens, ctx_len) in [(1u32, context), (n, 512)] {
            let moved = 2 * (ctx_len * kv_dim) as u64 * kv_bytes + 2 * f32s(tokens * q_dim);
            let shape = format!("{tokens} token{} over {ctx_len}", if tokens == 1 { "" } else { "s" });
            let per_submit = if tokens == 1 { 4 } else { 1 };
            b.measure(format!("attention_{}", if tokens == 1 { "decode" } else { "prefill" }), shape, &ops, pass(tokens, ctx_len - tokens), per_submit, moved)?;
        }
    }
    if wanted("embed") {
        let rows = 32000u64;
        let data = random_blocks(DType::Q4_1, (rows * h as u64 / 32) as usize, 9);
        let m = GpuMatrix::from_bytes(gpu, "token_embd", DType::Q4_1, rows, h as u64, &data, Placement::for_gpu(gpu, gpu.shape, gpu.max_binding(), gpu.quad_textures))?;
        let ids: Vec<u32> = (0..n).map(|i| (i * 7919 + 13) % rows as u32).collect();
        let (ids, out) = (gpu.storage_init("ids", bytemuck::cast_slice(&ids))?, gpu.storage("out", f32s(n * h))?);
        let ops = ctx.embed(&m, &ids, &out)?;
        let moved = n as u64 * (h as u64 / 32 * 20) + f32s(n * h);
        b.measure("embed_Q4_1".into(), format!("{n} rows of {h}"), &ops, pass(n, 0), 4, moved)?;
    }
    if wanted("sample") {
        let vocab = 128256u32;
        let (logits, ids) = (gpu.storage("logits", f32s(vocab))?, gpu.storage("ids", 4 * (3 + 2 * crate::sample::MAX_TOP_LOGPROBS as u64))?);
        let ops = [ctx.sample(&logits, &ids, vocab, 1)?];
        b.measure("sample_greedy".into(), format!("vocab {vocab}"), &ops, pass(1, 0), 4, f32s(vocab))?;
    }

    let mut copies = b.copies;
    copies.sort_by(f64::total_cmp);
    Ok(KernelReport {
        adapter: serde_json::json!({ "name": gpu.adapter_name(), "backend": gpu.backend_name() }),
        copy_gbps: copies[copies.len() / 2],
        kernels: b.kernels,
    })
}
