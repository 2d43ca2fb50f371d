//! `baleen bench-kernels`: each kernel's achieved bandwidth beside a plain
//! copy kernel's on the same adapter. Timing is wall-clock over several
//! submits of many dispatches each (no timestamp queries needed). The copy
//! is timed again beside every kernel, and each kernel's fraction is of that
//! copy: on a shared CPU (lavapipe) the whole machine's speed drifts by half
//! within a minute, and one copy figure at the start would carry that drift
//! into every ratio.

use super::ops::Ctx;
use super::weights::GpuMatrix;
use super::{Gpu, Grid, Op, PipelineKey, Step};
use crate::engine::now_ms;
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

pub fn run(gpu: &Gpu, target_bytes: u64, only: Option<&str>) -> Result<KernelReport> {
    let step_buf = gpu.uniform("step", bytemuck::bytes_of(&Step::default()));
    let ctx = Ctx::new(gpu, &step_buf);
    let one = Step { n_tokens: 1, ..Default::default() };

    // ---- copy baseline
    let bytes = target_bytes.min(gpu.max_binding()) / 16 * 16;
    if bytes < 1 << 16 {
        return Err(crate::Error::Input(format!("--bytes {target_bytes}: give at least 65536 bytes of weights per kernel")));
    }
    let src = gpu.storage("copy src", bytes)?;
    let dst = gpu.storage("copy dst", bytes)?;
    let key = PipelineKey { family: "copy", entry: "main", flags: vec![] };
    let pipeline = gpu.pipeline(&key)?;
    let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("copy"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry { binding: 0, resource: src.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 1, resource: dst.as_entire_binding() },
        ],
    });
    let grid = Grid::Fixed(super::flat((bytes / 16) as u32, shape::COPY_WG));
    let copy = Op { name: "copy".into(), pipeline, bind_group, grid, passes: Default::default() };
    let copy_gbps = || -> Result<f64> { Ok(2.0 * bytes as f64 / time_ops(gpu, &step_buf, &one, &[&copy], 4, 3)? / 1e9) };
    let mut copies = vec![copy_gbps()?];

    // ---- matmul per format: decode GEMV (1 token) and prefill GEMM (64 tokens)
    let mut kernels = Vec::new();
    let cols: u64 = 4096;
    for &format in baleen_shaders::WEIGHT_FORMATS.iter().filter(|f| only.is_none_or(|o| o.split(',').any(|o| o == **f))) {
        let dtype = [DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q4_K, DType::Q5_K, DType::Q6_K]
            .into_iter()
            .find(|d| d.name() == format)
            .expect("every weight format is a DType");
        let row_bytes = cols / dtype.block_size() * dtype.block_bytes();
        let rows = (target_bytes / row_bytes).clamp(64, 65535);
        let data = random_blocks(dtype, (rows * cols / dtype.block_size()) as usize, 7);
        let m = GpuMatrix::from_bytes(gpu, format, dtype, rows, cols, &data, gpu.max_binding())?;
        for (n, label) in [(1u32, "gemv"), (64, "gemm")] {
            let x = gpu.storage("x", n as u64 * cols * 4)?;
            let y = gpu.storage("y", n as u64 * rows * 4)?;
            let ops = ctx.matmul(&m, &x, cols as u32, &y, rows as u32, None, false, false)?;
            let refs: Vec<&Op> = ops.iter().collect();
            let step = Step { n_tokens: n, ..Default::default() };
            let per_submit = if n == 1 { 8 } else { 1 };
            // Copy, kernel, copy: the kernel against the mean of its neighbours.
            let before = copy_gbps()?;
            let secs = time_ops(gpu, &step_buf, &step, &refs, per_submit, 5)?;
            let after = copy_gbps()?;
            copies.extend([before, after]);
            let moved = data.len() as u64 + n as u64 * (cols + rows) * 4;
            let gbps = moved as f64 / secs / 1e9;
            kernels.push(KernelFigure {
                name: format!("matmul_{label}_{format}"),
                shape: format!("{rows}x{cols}, {n} token{}", if n == 1 { "" } else { "s" }),
                gbps,
                fraction_of_copy: gbps / ((before + after) / 2.0),
            });
        }
    }
    copies.sort_by(f64::total_cmp);
    Ok(KernelReport {
        adapter: serde_json::json!({ "name": gpu.adapter_name(), "backend": gpu.backend_name() }),
        copy_gbps: copies[copies.len() / 2],
        kernels,
    })
}
