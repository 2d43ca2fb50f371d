//! Every WGSL kernel against the plain-Rust reference, on whatever adapter
//! wgpu finds (Mesa lavapipe here and in CI), on shapes that straddle the
//! workgroup and tile sizes, for both matrix kernel shapes, with NaN/Inf inputs.

mod common;
use baleen::config::RopePairing;
use baleen::gpu::ops::{AttentionBuffers, AttentionShape, Combine, Ctx, ExpertMatmul, GateUp, Matmul, RopeScatter};
use baleen::gpu::weights::{GpuMatrix, Placement};
use baleen::gpu::{Gpu, MatmulShape, Op, Step};
use baleen::quant::{dequantize, random_blocks, DType};
use baleen::reference;
use baleen::sample::{self, SamplingParams};

/// Attention's buffers, in the order the kernel lists them.
fn bufs<'a>(q: &'a wgpu::Buffer, k: &'a wgpu::Buffer, v: &'a wgpu::Buffer, ml: &'a wgpu::Buffer, po: &'a wgpu::Buffer, out: &'a wgpu::Buffer) -> AttentionBuffers<'a> {
    AttentionBuffers { q, k_cache: k, v_cache: v, part_ml: ml, part_o: po, out }
}

/// Every type the kernels read (the block-format table's rows with a GPU layout).
fn formats() -> impl Iterator<Item = DType> {
    DType::ALL.into_iter().filter(|d| d.is_supported())
}

/// One matmul path: the kernel shape, subgroups, and (thread per row)
/// weights in textures or in buffers.
#[derive(Debug, Clone, Copy)]
struct Path {
    shape: MatmulShape,
    subgroups: bool,
    textures: bool,
}

impl Path {
    fn place(&self, gpu: &Gpu, max_binding: u64) -> Placement {
        Placement::for_gpu(gpu, self.shape, max_binding, self.textures)
    }

    fn ctx<'a>(&self, gpu: &'a Gpu, step: &'a wgpu::Buffer) -> Ctx<'a> {
        Ctx { gpu, step, shape: self.shape, subgroups: self.subgroups }
    }
}

/// Every kernel shape this device can run, each with subgroups when the
/// device has them (thread per row shares x across 8 lanes).
fn shapes(gpu: &Gpu) -> Vec<(MatmulShape, bool)> {
    let mut v = vec![(MatmulShape::RowPerThread, false), (MatmulShape::RowPerWorkgroup, false)];
    if gpu.has_subgroups() {
        v.push((MatmulShape::RowPerWorkgroup, true));
        if gpu.info.subgroup_min_size >= 8 {
            v.push((MatmulShape::RowPerThread, true));
        }
    }
    v
}

/// Whether textures hold `dtype` (placed so): the quantised formats.
fn quantised(dtype: DType) -> bool {
    dtype.format().quantised()
}

/// Every matmul path: each of `shapes`, thread per row with weights in
/// textures and in buffers.
fn paths(gpu: &Gpu) -> Vec<Path> {
    shapes(gpu)
        .into_iter()
        .flat_map(|(shape, subgroups)| {
            let textures: &[bool] = if shape == MatmulShape::RowPerThread { &[true, false] } else { &[false] };
            textures.iter().map(move |&textures| Path { shape, subgroups, textures })
        })
        .collect()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f32(&mut self) -> f32 {
        (self.next() % 20001) as f32 / 10000.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

fn gpu() -> Gpu {
    Gpu::new_blocking().expect("a wgpu adapter (install mesa-vulkan-drivers for lavapipe)")
}

fn upload(gpu: &Gpu, name: &str, v: &[f32]) -> wgpu::Buffer {
    gpu.storage_init(name, bytemuck::cast_slice(v)).unwrap()
}

fn download(gpu: &Gpu, b: &wgpu::Buffer, n: usize) -> Vec<f32> {
    bytemuck::cast_slice(&gpu.read(b, 0, n as u64 * 4).unwrap()).to_vec()
}

fn run(gpu: &Gpu, step_buf: &wgpu::Buffer, step: Step, ops: &[Op]) {
    let refs: Vec<&Op> = ops.iter().collect();
    gpu.run(step_buf, &step, &refs).unwrap();
}

fn step(n: u32, pos: u32) -> Step {
    Step { n_tokens: n, pos, ..Default::default() }
}

/// Dequantised rows of random blocks.
fn random_matrix(dtype: DType, rows: usize, cols: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let bytes = random_blocks(dtype, rows * cols / dtype.block_size() as usize, seed);
    let mut w = vec![0f32; rows * cols];
    dequantize(dtype, &bytes, &mut w).unwrap();
    (bytes, w)
}

struct MatmulCase {
    dtype: DType,
    path: Path,
    rows: usize,
    cols: usize,
    n: usize,
    bias: bool,
    acc: bool,
    max_binding: Option<u64>,
}

fn check_matmul(gpu: &Gpu, c: &MatmulCase, seed: u64) {
    let mut rng = Rng(seed);
    let (bytes, w) = random_matrix(c.dtype, c.rows, c.cols, seed);
    let x = rng.vec(c.n * c.cols);
    let b = rng.vec(c.rows);
    let y0 = rng.vec(c.n * c.rows);
    let mb = c.max_binding.unwrap_or(gpu.max_binding());
    let m = GpuMatrix::from_bytes(gpu, "w", c.dtype, c.rows as u64, c.cols as u64, &bytes, c.path.place(gpu, mb)).unwrap();
    if c.max_binding.is_some() {
        assert!(m.chunks.len() > 1, "the binding limit should split the matrix");
    }
    assert_eq!(m.quad_texture(), c.path.textures && quantised(c.dtype), "{:?} {:?}", c.dtype, c.path);
    let step_buf = gpu.uniform("step", bytemuck::bytes_of(&Step::default()));
    let ctx = c.path.ctx(gpu, &step_buf);
    let (xb, yb, bb) = (upload(gpu, "x", &x), upload(gpu, "y", &y0), upload(gpu, "b", &b));
    let ops = ctx
        .matmul(&m, Matmul::new(&xb, c.cols as u32, &yb, c.rows as u32).bias(c.bias.then_some(&bb)).acc(c.acc))
        .unwrap();
    run(gpu, &step_buf, step(c.n as u32, 0), &ops);
    let got = download(gpu, &yb, c.n * c.rows);
    for t in 0..c.n {
        for r in 0..c.rows {
            let row = &w[r * c.cols..(r + 1) * c.cols];
            let xt = &x[t * c.cols..(t + 1) * c.cols];
            let mut want: f64 = row.iter().zip(xt).map(|(a, b)| *a as f64 * *b as f64).sum();
            let scale: f64 = row.iter().zip(xt).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
            if c.bias {
                want += b[r] as f64;
            }
            if c.acc {
                want += y0[t * c.rows + r] as f64;
            }
            let g = got[t * c.rows + r] as f64;
            assert!(
                (g - want).abs() <= 1e-5 * scale + 1e-5 * want.abs() + 1e-6,
                "{:?} {:?} {}x{} n={} bias={} acc={}: y[{t},{r}] = {g}, want {want}",
                c.dtype, c.path, c.rows, c.cols, c.n, c.bias, c.acc
            );
        }
    }
}

#[test]
fn matmul_every_format_both_shapes() {
    let gpu = gpu();
    for (i, dtype) in formats().enumerate() {
        // K-quants need whole 256-value blocks; others straddle sub-blocks
        // and the textures' units of 4 blocks (3 blocks: one unit, its last
        // block past the row; 5: a whole unit and one block).
        let cols: &[usize] = if dtype.block_size() == 256 { &[512] } else { &[96, 160] };
        for path in paths(&gpu) {
            // Rows straddle the 64-thread workgroup and the GEMM's 64-row
            // tile; tokens straddle the 8-token tile and the GEMM's 64.
            for (rows, n) in [(1, 1), (65, 1), (130, 9), (130, 70)] {
                for &cols in cols {
                    let c = MatmulCase { dtype, path, rows, cols, n, bias: false, acc: false, max_binding: None };
                    check_matmul(&gpu, &c, 100 + i as u64);
                }
            }
        }
    }
}

#[test]
fn matmul_bias_accumulate_and_row_chunks() {
    let gpu = gpu();
    for path in paths(&gpu) {
        for dtype in [DType::Q4_1, DType::Q6_K, DType::F32] {
            let cols = if dtype.block_size() == 256 { 256 } else { 64 };
            let c = MatmulCase { dtype, path, rows: 70, cols, n: 3, bias: true, acc: true, max_binding: None };
            check_matmul(&gpu, &c, 7);
            check_matmul(&gpu, &MatmulCase { n: 67, ..c }, 9);
            // A binding limit of ~20 rows: four chunks, each its own dispatch.
            let row = baleen::gpu::weights::repacked_row_bytes(dtype, cols as u64);
            let c = MatmulCase { max_binding: Some(row * 20), ..c };
            check_matmul(&gpu, &c, 8);
        }
    }
}

#[test]
fn matmul_with_swiglu_equals_the_matmul_then_swiglu() {
    let gpu = gpu();
    for path in paths(&gpu) {
        let step_buf = gpu.uniform("step", bytemuck::bytes_of(&Step::default()));
        let ctx = path.ctx(&gpu, &step_buf);
        let shape = path.shape;
        for (i, dtype) in [DType::Q4_1, DType::Q6_K, DType::F16].into_iter().enumerate() {
            let cols = if dtype.block_size() == 256 { 256 } else { 96 };
            // Gate rows straddling a thread's (with subgroups 1, or 4 for the
            // K-quants, 8 in textures; 8 without), a group of 8 rows' and a
            // workgroup's.
            for f in [1usize, 9, 70] {
                let (bytes, w) = random_matrix(dtype, 2 * f, cols, 30 + i as u64);
                let x = Rng(31).vec(cols);
                let m = GpuMatrix::from_bytes(&gpu, "gate_up", dtype, 2 * f as u64, cols as u64, &bytes, path.place(&gpu, gpu.max_binding())).unwrap();
                let (xb, out) = (upload(&gpu, "x", &x), upload(&gpu, "out", &vec![0.0; f]));
                // Both shapes fuse them (one chunk, no bias).
                let op = ctx.matmul_swiglu("glu", &m, &xb, cols as u32, &out).unwrap().unwrap_or_else(|| panic!("{shape:?} did not fuse"));
                run(&gpu, &step_buf, step(1, 0), &[op]);
                let got = download(&gpu, &out, f);
                let dot = |r: usize| w[r * cols..(r + 1) * cols].iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>();
                for r in 0..f {
                    let (g, u) = (dot(r), dot(f + r));
                    let want = g / (1.0 + (-g).exp()) * u;
                    assert!((got[r] as f64 - want).abs() <= 1e-4 * want.abs() + 1e-4, "{dtype:?} {path:?} f={f} row {r}: {} vs {want}", got[r]);
                }
            }
        }
    }
}

#[test]
fn matmul_propagates_nan_and_inf() {
    let gpu = gpu();
    for (path, dtype) in paths(&gpu).into_iter().flat_map(|p| [(p, DType::F32), (p, DType::Q4_1)]) {
        let (rows, cols) = (8, 160);
        let (bytes, _) = random_matrix(dtype, rows, cols, 3);
        let m = GpuMatrix::from_bytes(&gpu, "w", dtype, rows as u64, cols as u64, &bytes, path.place(&gpu, gpu.max_binding())).unwrap();
        let step_buf = gpu.uniform("step", bytemuck::bytes_of(&Step::default()));
        let ctx = path.ctx(&gpu, &step_buf);
        let mut x = Rng(5).vec(2 * cols);
        x[3] = f32::NAN; // token 0
        x[cols + 7] = f32::INFINITY; // token 1
        let (xb, yb) = (upload(&gpu, "x", &x), gpu.storage("y", (2 * rows * 4) as u64).unwrap());
        let ops = ctx.matmul(&m, Matmul::new(&xb, cols as u32, &yb, rows as u32)).unwrap();
        run(&gpu, &step_buf, step(2, 0), &ops);
        let y = download(&gpu, &yb, 2 * rows);
        assert!(y.iter().all(|v| !v.is_finite()), "{dtype:?} {path:?}: a NaN or ∞ input must not come out finite: {y:?}");
    }
}

#[test]
fn a_matrix_placed_for_one_kernel_shape_is_refused_by_the_other() {
    let gpu = gpu();
    let (bytes, _) = random_matrix(DType::Q4_1, 16, 64, 4);
    let step_buf = gpu.uniform("step", bytemuck::bytes_of(&Step::default()));
    let (xb, yb) = (upload(&gpu, "x", &[0.0; 64]), upload(&gpu, "y", &[0.0; 16]));
    for (placed, run_as) in [(MatmulShape::RowPerWorkgroup, MatmulShape::RowPerThread), (MatmulShape::RowPerThread, MatmulShape::RowPerWorkgroup)] {
        let m = GpuMatrix::from_bytes(&gpu, "w", DType::Q4_1, 16, 64, &bytes, Placement::new(placed, gpu.max_binding())).unwrap();
        let ctx = Ctx { gpu: &gpu, step: &step_buf, shape: run_as, subgroups: false };
        let err = ctx.matmul(&m, Matmul::new(&xb, 64, &yb, 16).single(true)).err().expect("a layout mismatch is an error").to_string();
        assert!(err.contains("rows lie in groups of") && err.contains("Placement::new"), "{err}");
        let ids = gpu.storage_init("ids", bytemuck::cast_slice(&[0u32])).unwrap();
        assert!(ctx.embed(&m, &ids, &yb).is_err(), "the embedding lookup checks the layout too");
    }
}

#[test]
fn a_binding_smaller_than_a_group_of_rows_is_refused() {
    let gpu = gpu();
    let (bytes, _) = random_matrix(DType::Q4_1, 16, 64, 4);
    let row = baleen::gpu::weights::repacked_row_bytes(DType::Q4_1, 64);
    // Room for 4 rows: enough for whole rows, not for a group of 8.
    let place = |shape| Placement::new(shape, 4 * row);
    let m = GpuMatrix::from_bytes(&gpu, "w", DType::Q4_1, 16, 64, &bytes, place(MatmulShape::RowPerWorkgroup)).unwrap();
    assert_eq!(m.chunks.len(), 4);
    let err = GpuMatrix::from_bytes(&gpu, "w", DType::Q4_1, 16, 64, &bytes, place(MatmulShape::RowPerThread)).err().expect("8 rows do not fit").to_string();
    assert!(err.contains("8 rows of 64 Q4_1 values") && err.contains("binding limit"), "{err}");
}

#[test]
fn textures_hold_rows_in_bands_and_rows_past_the_side_stay_in_buffers() {
    let gpu = gpu();
    let step_buf = gpu.uniform("step", bytemuck::bytes_of(&Step::default()));
    let band = baleen_shaders::shape::TEXTURE_ROWS as usize;
    // Rows past a band of TEXTURE_ROWS go below it (5 blocks a row: a whole
    // unit and one block); with a side of TEXTURE_ROWS texels, rows of 4098
    // quads (Q8_0) do not fit and stay in buffers.
    for (dtype, rows, cols, side, textures) in [(DType::Q4_1, band + 70, 160usize, None, true), (DType::Q8_0, 3, 32 * 2049, Some(band as u32), false)] {
        let (bytes, w) = random_matrix(dtype, rows, cols, 12);
        let x = Rng(13).vec(cols);
        let xb = upload(&gpu, "x", &x);
        for path in paths(&gpu).into_iter().filter(|p| p.textures) {
            let place = path.place(&gpu, gpu.max_binding());
            let place = Placement { texture_side: side.or(place.texture_side), ..place };
            let m = GpuMatrix::from_bytes(&gpu, "w", dtype, rows as u64, cols as u64, &bytes, place).unwrap();
            assert_eq!((m.chunks.len(), m.quad_texture()), (1, textures), "{rows} × {cols}");
            let yb = gpu.storage("y", rows as u64 * 4).unwrap();
            run(&gpu, &step_buf, step(1, 0), &path.ctx(&gpu, &step_buf).matmul(&m, Matmul::new(&xb, cols as u32, &yb, rows as u32)).unwrap());
            let got = download(&gpu, &yb, rows);
            for (r, g) in got.iter().enumerate() {
                let want = reference::dot(&w[r * cols..(r + 1) * cols], &x);
                assert!((g - want).abs() <= 1e-4 * (1.0 + want.abs()), "{path:?} {rows} × {cols}, row {r}: {g} vs {want}");
            }
        }
    }
}

#[test]
fn embedding_rows_across_chunks() {
    let gpu = gpu();
    for (i, dtype) in formats().enumerate() {
        // 5 blocks a row (in textures, a second scale texel).
        let cols = 5 * dtype.block_size().max(32) as usize;
        let rows = 50;
        let (bytes, w) = random_matrix(dtype, rows, cols, 40 + i as u64);
        // Every layout: rows whole, in groups of 8 (chunks of 16 rows; the
        // last chunk's 2 rows in one group padded with zero rows), and in
        // textures.
        for (shape, textures) in [(MatmulShape::RowPerThread, false), (MatmulShape::RowPerThread, true), (MatmulShape::RowPerWorkgroup, false)] {
            let row = baleen::gpu::weights::repacked_row_bytes(dtype, cols as u64);
            let m = GpuMatrix::from_bytes(&gpu, "embd", dtype, rows as u64, cols as u64, &bytes, Placement::for_gpu(&gpu, shape, row * 16, textures)).unwrap();
            assert_eq!((m.chunks.len(), m.quad_texture()), (4, textures && quantised(dtype)));
            let step_buf = gpu.uniform("step", bytemuck::bytes_of(&Step::default()));
            let ctx = Ctx { gpu: &gpu, step: &step_buf, shape, subgroups: false };
            let ids: Vec<u32> = vec![0, 15, 16, 49, 31, 32, 7];
            let idb = gpu.storage_init("ids", bytemuck::cast_slice(&ids)).unwrap();
            let out = gpu.storage("out", (ids.len() * cols * 4) as u64).unwrap();
            run(&gpu, &step_buf, step(ids.len() as u32, 0), &ctx.embed(&m, &idb, &out).unwrap());
            let got = download(&gpu, &out, ids.len() * cols);
            for (t, &id) in ids.iter().enumerate() {
                let want = &w[id as usize * cols..(id as usize + 1) * cols];
                let g = &got[t * cols..(t + 1) * cols];
                assert!(common::max_abs_diff(g, want) <= 1e-6 * want.iter().fold(1f32, |a, v| a.max(v.abs())), "{dtype:?} {shape:?} textures {textures} id {id}");
            }
        }
    }
}

#[test]
fn rms_norm_all_rows_and_last_only() {
    let gpu = gpu();
    let mut rng = Rng(11);
    // A thread per row (CPU adapters) and a workgroup per row (GPUs).
    let cases = [(1usize, 64usize), (5, 576), (70, 96)];
    for ((n, cols), shape) in cases.into_iter().flat_map(|c| [(c, MatmulShape::RowPerThread), (c, MatmulShape::RowPerWorkgroup)]) {
        let x = rng.vec(n * cols);
        let w = rng.vec(cols);
        let step_buf = gpu.uniform("step", bytemuck::bytes_of(&Step::default()));
        let ctx = Ctx { gpu: &gpu, step: &step_buf, shape, subgroups: false };
        let (xb, wb) = (upload(&gpu, "x", &x), upload(&gpu, "w", &w));
        let out = gpu.storage("out", (n * cols * 4) as u64).unwrap();
        let mut want = x.clone();
        want.chunks_exact_mut(cols).for_each(|r| reference::rms_norm(r, &w, 1e-5));
        run(&gpu, &step_buf, step(n as u32, 0), &[ctx.rms_norm("n", &xb, &wb, &out, cols as u32, 1e-5, false).unwrap()]);
        assert!(common::max_abs_diff(&download(&gpu, &out, n * cols), &want) < 1e-5);
        let last = gpu.storage("last", (cols * 4) as u64).unwrap();
        run(&gpu, &step_buf, step(n as u32, 0), &[ctx.rms_norm("n", &xb, &wb, &last, cols as u32, 1e-5, true).unwrap()]);
        assert!(common::max_abs_diff(&download(&gpu, &last, cols), &want[(n - 1) * cols..]) < 1e-5);
        // Added into a residual stream (Gemma's post-norms).
        let r = rng.vec(n * cols);
        let rb = upload(&gpu, "residual", &r);
        run(&gpu, &step_buf, step(n as u32, 0), &[ctx.rms_norm_add("n+", &xb, &wb, &rb, cols as u32, 1e-5).unwrap()]);
        let want_sum: Vec<f32> = r.iter().zip(&want).map(|(r, y)| r + y).collect();
        assert!(common::max_abs_diff(&download(&gpu, &rb, n * cols), &want_sum) < 1e-5, "{shape:?}: residual += norm");
    }
}

#[test]
fn rope_both_pairings_at_offsets_with_and_without_qk_norm() {
    let gpu = gpu();
    let mut rng = Rng(12);
    for (pairing, qk_norm) in [(RopePairing::Halves, false), (RopePairing::Adjacent, false), (RopePairing::Halves, true), (RopePairing::Adjacent, true)] {
        // Angles to ~20000 rad: GPUs' own sin and cos drift far from zero.
        // Heads of 16 to 128 (Qwen3's), a tiny one (2).
        for (n, pos, hd, nq, nk) in [(1usize, 0usize, 16usize, 4usize, 2usize), (7, 300, 64, 9, 3), (2, 20000, 16, 2, 1), (3, 5, 128, 4, 2), (2, 1, 2, 3, 1)] {
            let inv: Vec<f32> = (0..hd / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32)).collect();
            let q = rng.vec(n * nq * hd);
            // The new tokens' k (rows pos.. of the cache once roped).
            let k = rng.vec((pos + n) * nk * hd);
            let step_buf = gpu.uniform("step", bytemuck::bytes_of(&Step::default()));
            let ctx = Ctx { gpu: &gpu, step: &step_buf, shape: gpu.shape, subgroups: false };
            let ib = upload(&gpu, "inv", &inv);
            let (mut wq, mut wk) = (q.clone(), k.clone());
            // Qwen3's per-head norms (weights around 1), before RoPE.
            let (qw, kw, eps) = (rng.vec(hd).iter().map(|v| 1.0 + v).collect::<Vec<f32>>(), rng.vec(hd).iter().map(|v| 1.0 + v).collect::<Vec<f32>>(), 1e-6);
            if qk_norm {
                wq.chunks_exact_mut(hd).for_each(|h| reference::rms_norm(h, &qw, eps));
                wk[pos * nk * hd..].chunks_exact_mut(hd).for_each(|h| reference::rms_norm(h, &kw, eps));
            }
            for t in 0..n {
                wq[t * nq * hd..(t + 1) * nq * hd].chunks_exact_mut(hd).for_each(|h| reference::rope(h, pos + t, &inv, pairing));
                let r = pos + t;
                wk[r * nk * hd..(r + 1) * nk * hd].chunks_exact_mut(hd).for_each(|h| reference::rope(h, pos + t, &inv, pairing));
            }
            // q, k, v side by side per token in one row; k and v go to the
            // caches' rows pos.., q to its own buffer. f32 sin/cos of the
            // same f32 angle.
            let (q_dim, kv_dim) = (nq * hd, nk * hd);
            let v = rng.vec(n * kv_dim);
            let qkv: Vec<f32> = (0..n)
                .flat_map(|t| q[t * q_dim..][..q_dim].iter().chain(&k[(pos + t) * kv_dim..][..kv_dim]).chain(&v[t * kv_dim..][..kv_dim]).copied())
                .collect();
            let (sb, qb) = (upload(&gpu, "qkv", &qkv), gpu.storage("q", (n * q_dim * 4) as u64).unwrap());
            let cache = rng.vec((pos + n) * kv_dim);
            let (kb, vb) = (upload(&gpu, "k cache", &cache), upload(&gpu, "v cache", &cache));
            let (qwb, kwb) = (upload(&gpu, "q norm", &qw), upload(&gpu, "k norm", &kw));
            let norm = qk_norm.then_some((&qwb, &kwb, eps));
            let r = RopeScatter { pairing, inv_freq: &ib, qkv: &sb, q: &qb, k_cache: &kb, v_cache: &vb, head_dim: hd as u32, n_q: nq as u32, n_k: nk as u32, half_kv: false, norm };
            let op = ctx.rope_scatter("scatter", r).unwrap();
            run(&gpu, &step_buf, step(n as u32, pos as u32), &[op]);
            let (mut want_k, mut want_v) = (cache.clone(), cache.clone());
            want_k[pos * kv_dim..].copy_from_slice(&wk[pos * kv_dim..]);
            want_v[pos * kv_dim..].copy_from_slice(&v);
            let what = format!("{pairing:?} qk_norm {qk_norm} head_dim {hd}");
            assert!(common::max_abs_diff(&download(&gpu, &qb, q.len()), &wq) < 2e-5, "{what}: q");
            assert!(common::max_abs_diff(&download(&gpu, &kb, cache.len()), &want_k) < 2e-5, "{what}: k");
            assert_eq!(download(&gpu, &vb, cache.len()), want_v, "{what}: v");
        }
    }
}

#[test]
fn attention_causal_gqa_across_splits() {
    let gpu = gpu();
    let mut rng = Rng(13);
    // With subgroups (on a CPU adapter) a subgroup per split: heads up to 128
    // wide, ones whose chunks of 8 do not fill the subgroup (16, 40), and
    // one that is no multiple of 8 (20: the thread kernel). Workgroup per
    // row (GPUs): a workgroup per split. Contexts of one split (no combining
    // pass) and of several.
    for (shape, subgroups) in shapes(&gpu) {
        let split_of = |hd: usize| {
            let step_buf = gpu.uniform("step", bytemuck::bytes_of(&Step::default()));
            Ctx { gpu: &gpu, step: &step_buf, shape, subgroups }.attention_split(&AttentionShape::gqa(4, 2, hd as u32)) as usize
        };
        // The shortest split of these heads: every case spans several of its splits or one.
        let split = [16, 20, 32, 40, 64, 128].map(split_of).into_iter().min().unwrap();
        let cases = [(1usize, 0usize, 4usize, 2usize, 16usize), (1, 2 * split + 5, 9, 3, 64), (6, split - 3, 4, 1, 32), (3, 5, 2, 1, 20), (2, split, 2, 2, 128), (3, split + 1, 4, 2, 40)];
        for (n, pos, h, kvh, hd) in cases {
            let ctx_len = pos + n;
            let max_splits = ctx_len.div_ceil(split) + 1;
            let q = rng.vec(n * h * hd);
            let k = rng.vec(ctx_len * kvh * hd);
            let v = rng.vec(ctx_len * kvh * hd);
            let step_buf = gpu.uniform("step", bytemuck::bytes_of(&Step::default()));
            let ctx = Ctx { gpu: &gpu, step: &step_buf, shape, subgroups };
            let (qb, kb, vb) = (upload(&gpu, "q", &q), upload(&gpu, "k", &k), upload(&gpu, "v", &v));
            let ml = gpu.storage("ml", (n * h * max_splits * 8) as u64).unwrap();
            let po = gpu.storage("po", (n * h * max_splits * hd * 4) as u64).unwrap();
            let out = gpu.storage("out", (n * h * hd * 4) as u64).unwrap();
            let ops = ctx.attention("attn", bufs(&qb, &kb, &vb, &ml, &po, &out), &AttentionShape::gqa(h as u32, kvh as u32, hd as u32), max_splits as u32, false).unwrap();
            run(&gpu, &step_buf, step(n as u32, pos as u32), &ops);
            let got = download(&gpu, &out, n * h * hd);
            let want = reference_attention(&q, &k, &v, n, pos, h, kvh, hd);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() < 1e-5, "n={n} pos={pos} hd={hd} {shape:?} subgroups={subgroups} element {i}: {g} vs {w}");
            }
        }
    }
}

#[test]
fn windowed_attention_over_a_ring_cache_across_splits() {
    // Sliding-window attention (Gemma 3): a query sees its latest `window`
    // positions, held in a ring of `ring` rows (position p in row p % ring).
    // Windows shorter and longer than a split, passes straddling split
    // borders, rings wrapped several times, and a window wider than the
    // context so far.
    let gpu = gpu();
    let mut rng = Rng(23);
    for (shape, subgroups) in shapes(&gpu) {
        let step_buf = gpu.uniform("step", bytemuck::bytes_of(&Step::default()));
        let split = Ctx { gpu: &gpu, step: &step_buf, shape, subgroups }.attention_split(&AttentionShape::gqa(4, 2, 32)) as usize;
        // (tokens, position, window, heads, kv heads, head_dim)
        let cases = [(1usize, 100usize, 6usize, 4usize, 2usize, 32usize), (5, 37, 6, 4, 2, 32), (3, 3 * split + 2, split + 3, 2, 1, 16), (4, 2, 50, 4, 2, 32), (2, 5 * split, 2 * split, 4, 4, 64)];
        for (n, pos, window, h, kvh, hd) in cases {
            let ring = window + n - 1;
            let total = pos + n;
            // Every position's key and value; the ring holds the latest `ring`.
            let (k, v) = (rng.vec(total * kvh * hd), rng.vec(total * kvh * hd));
            let row = kvh * hd;
            let (mut kr, mut vr) = (vec![0f32; ring * row], vec![0f32; ring * row]);
            for p in total.saturating_sub(ring)..total {
                kr[(p % ring) * row..][..row].copy_from_slice(&k[p * row..][..row]);
                vr[(p % ring) * row..][..row].copy_from_slice(&v[p * row..][..row]);
            }
            let q = rng.vec(n * h * hd);
            let ctx = Ctx { gpu: &gpu, step: &step_buf, shape, subgroups };
            let max_splits = total.div_ceil(split) + 1;
            let (qb, kb, vb) = (upload(&gpu, "q", &q), upload(&gpu, "k ring", &kr), upload(&gpu, "v ring", &vr));
            let ml = gpu.storage("ml", (n * h * max_splits * 8) as u64).unwrap();
            let po = gpu.storage("po", (n * h * max_splits * hd * 4) as u64).unwrap();
            let out = gpu.storage("out", (n * h * hd * 4) as u64).unwrap();
            let a = AttentionShape { window: window as u32, ..AttentionShape::gqa(h as u32, kvh as u32, hd as u32) };
            let ops = ctx.attention("attn", bufs(&qb, &kb, &vb, &ml, &po, &out), &a, max_splits as u32, false).unwrap();
            run(&gpu, &step_buf, step(n as u32, pos as u32), &ops);
            let got = download(&gpu, &out, n * h * hd);
            let want = reference_window_attention(&q, &k, &v, n, pos, window, h, kvh, hd);
            let d = common::max_abs_diff(&got, &want);
            assert!(d < 1e-5, "n={n} pos={pos} window={window} hd={hd} {shape:?} subgroups={subgroups}: max |Δ| {d}");
        }
    }
}

/// Causal attention over every position, each query seeing its latest `window`.
#[allow(clippy::too_many_arguments)]
fn reference_window_attention(q: &[f32], k: &[f32], v: &[f32], n: usize, pos: usize, window: usize, h: usize, kvh: usize, hd: usize) -> Vec<f32> {
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; n * h * hd];
    for t in 0..n {
        let first = (pos + t + 1).saturating_sub(window);
        for head in 0..h {
            let kv = head / (h / kvh);
            let qh = &q[(t * h + head) * hd..][..hd];
            let mut s: Vec<f32> = (first..=pos + t).map(|p| reference::dot(qh, &k[(p * kvh + kv) * hd..][..hd]) * scale).collect();
            reference::softmax(&mut s);
            for d in 0..hd {
                out[(t * h + head) * hd + d] = s.iter().zip(first..).map(|(a, p)| a * v[(p * kvh + kv) * hd + d]).sum();
            }
        }
    }
    out
}

#[test]
fn attention_over_latent_rows_as_wide_as_deepseeks() {
    // DeepSeek-V2/V3's latent rows (512 + 64 keys, the first 512 the value)
    // over 150 positions: on lavapipe the thread kernel's loops for a split
    // of 64 such positions passed llvmpipe's 65535 iterations and ended early.
    let gpu = gpu();
    let mut rng = Rng(19);
    let (heads, rank, rope, pos, n) = (3usize, 512usize, 64usize, 148usize, 2usize);
    let row = rank + rope;
    let q = rng.vec(n * heads * row);
    let cache = rng.vec((pos + n) * row);
    let scale = 1.0 / (row as f32).sqrt();
    let mut want = vec![0f32; n * heads * rank];
    for t in 0..n {
        for h in 0..heads {
            let qh = &q[(t * heads + h) * row..][..row];
            let mut s: Vec<f32> = (0..=pos + t).map(|p| reference::dot(qh, &cache[p * row..][..row]) * scale).collect();
            reference::softmax(&mut s);
            let out = &mut want[(t * heads + h) * rank..][..rank];
            for (p, a) in s.iter().enumerate() {
                out.iter_mut().zip(&cache[p * row..][..rank]).for_each(|(o, c)| *o += a * c);
            }
        }
    }
    let a = AttentionShape { n_heads: heads as u32, n_kv_heads: 1, head_dim: row as u32, v_dim: rank as u32, scale, latent: true, window: 0 };
    for (shape, subgroups) in shapes(&gpu) {
        let step_buf = gpu.uniform("step", bytemuck::bytes_of(&Step::default()));
        let ctx = Ctx { gpu: &gpu, step: &step_buf, shape, subgroups };
        let max_splits = (pos + n).div_ceil(ctx.attention_split(&a) as usize);
        let (qb, cb) = (upload(&gpu, "q", &q), upload(&gpu, "cache", &cache));
        let ml = gpu.storage("ml", (n * heads * max_splits * 8) as u64).unwrap();
        let po = gpu.storage("po", (n * heads * max_splits * rank * 4) as u64).unwrap();
        let out = gpu.storage("out", (n * heads * rank * 4) as u64).unwrap();
        let ops = ctx.attention("attn", bufs(&qb, &cb, &cb, &ml, &po, &out), &a, max_splits as u32, false).unwrap();
        run(&gpu, &step_buf, step(n as u32, pos as u32), &ops);
        let d = common::max_abs_diff(&download(&gpu, &out, n * heads * rank), &want);
        assert!(d < 1e-5, "{shape:?} subgroups {subgroups}: max |Δ| {d}");
    }
}

/// Causal GQA attention of `n` queries at positions pos.. over a cache of
/// `pos + n` rows, written out plainly: `[n, h · hd]`.
#[allow(clippy::too_many_arguments)]
fn reference_attention(q: &[f32], k: &[f32], v: &[f32], n: usize, pos: usize, h: usize, kvh: usize, hd: usize) -> Vec<f32> {
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; n * h * hd];
    for t in 0..n {
        for head in 0..h {
            let kv = head / (h / kvh);
            let qh = &q[(t * h + head) * hd..][..hd];
            let mut s: Vec<f32> = (0..=pos + t).map(|p| reference::dot(qh, &k[(p * kvh + kv) * hd..][..hd]) * scale).collect();
            reference::softmax(&mut s);
            for d in 0..hd {
                out[(t * h + head) * hd + d] = s.iter().enumerate().map(|(p, a)| a * v[(p * kvh + kv) * hd + d]).sum();
            }
        }
    }
    out
}

#[test]
fn swiglu_matches() {
    let gpu = gpu();
    let mut rng = Rng(14);
    let (n, cols) = (3, 1000);
    let mut g = rng.vec(n * cols);
    g[0] = -100.0; // e^100 would overflow: the kernel clamps
    g[1] = 100.0;
    let u = rng.vec(n * cols);
    let step_buf = gpu.uniform("step", bytemuck::bytes_of(&Step::default()));
    let ctx = Ctx { gpu: &gpu, step: &step_buf, shape: gpu.shape, subgroups: false };
    let (gb, ub) = (upload(&gpu, "g", &g), upload(&gpu, "u", &u));
    let out = gpu.storage("out", (n * cols * 4) as u64).unwrap();
    run(&gpu, &step_buf, step(n as u32, 0), &[ctx.swiglu("s", GateUp::Apart(&gb, &ub), &out, cols as u32, 1).unwrap()]);
    let want: Vec<f32> = g.iter().zip(&u).map(|(g, u)| reference::silu(*g) * u).collect();
    let got = download(&gpu, &out, n * cols);
    assert!(got.iter().all(|v| v.is_finite()));
    assert!(common::max_abs_diff(&got, &want) < 1e-5);
    // Gate and up side by side in one row per token (a stacked matmul's output).
    let stacked: Vec<f32> = (0..n).flat_map(|t| g[t * cols..][..cols].iter().chain(&u[t * cols..][..cols]).copied()).collect();
    let sb = upload(&gpu, "gate up", &stacked);
    let out = gpu.storage("out", (n * cols * 4) as u64).unwrap();
    run(&gpu, &step_buf, step(n as u32, 0), &[ctx.swiglu("s", GateUp::Stacked(&sb), &out, cols as u32, 1).unwrap()]);
    assert!(common::max_abs_diff(&download(&gpu, &out, n * cols), &want) < 1e-5, "stacked");
    // GeGLU (Gemma): the tanh GELU of the gate, finite where tanh's argument is huge.
    let want: Vec<f32> = g.iter().zip(&u).map(|(g, u)| reference::gelu_tanh(*g) * u).collect();
    assert!(want.iter().all(|v| v.is_finite()));
    run(&gpu, &step_buf, step(n as u32, 0), &[ctx.geglu("g", GateUp::Stacked(&sb), &out, cols as u32).unwrap()]);
    let got = download(&gpu, &out, n * cols);
    assert!(got.iter().all(|v| v.is_finite()));
    assert!(common::max_abs_diff(&got, &want) < 1e-5, "geglu");
}

fn gpu_sample(gpu: &Gpu, logits: &[f32], p: &SamplingParams, draw: u32) -> u32 {
    gpu_sample_words(gpu, logits, p, draw)[0]
}

/// The GPU sampler's output words: ids[0] the token, then (with
/// `p.logprobs`) as GpuModel reads them: ids[1] the logsumexp, ids[2] the
/// chosen logit, then (id, logit) pairs.
fn gpu_sample_words(gpu: &Gpu, logits: &[f32], p: &SamplingParams, draw: u32) -> Vec<u32> {
    let step_buf = gpu.uniform("step", bytemuck::bytes_of(&Step::default()));
    let ctx = Ctx { gpu, step: &step_buf, shape: gpu.shape, subgroups: false };
    let lb = upload(gpu, "logits", logits);
    let words = 3 + 2 * sample::MAX_TOP_LOGPROBS as u64;
    let ids = gpu.storage("ids", 4 * words).unwrap();
    let st = Step {
        n_tokens: 1,
        seed_lo: p.seed as u32,
        seed_hi: (p.seed >> 32) as u32,
        draw,
        top_k: p.top_k as u32,
        temperature: p.temperature,
        top_p: p.top_p,
        logprobs: p.logprobs.map_or(0, |n| n as u32 + 1),
        ..Default::default()
    };
    run(gpu, &step_buf, st, &[ctx.sample(&lb, &ids, logits.len() as u32, 1).unwrap()]);
    gpu.read(&ids, 0, 4 * words).unwrap().chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect()
}

#[test]
fn penalties_on_the_gpu_equal_the_cpu_ones() {
    // Repetition (positive and negative logits, and 0), frequency and
    // presence over a window; the penalised logits in place, as
    // sample::apply_penalties leaves them, and ids past the vocabulary ignored.
    let gpu = gpu();
    let mut rng = Rng(31);
    let vocab = 1000;
    let mut l: Vec<f32> = rng.vec(vocab).iter().map(|v| v * 5.0).collect();
    l[10] = 0.0;
    let window: Vec<u32> = (0..300u32).map(|i| (i * 37 + i / 7) % 200).chain([10, 10, 999]).collect();
    let p = SamplingParams { repetition_penalty: 1.3, frequency_penalty: 0.4, presence_penalty: -0.2, penalty_last_n: 256, ..Default::default() };
    let mut pen = p.adjustments(&window, &[(3, -100.0), (10, 2.5), (500, 0.75)]).unwrap();
    let mut want = l.clone();
    sample::apply_penalties(&mut want, &p, &pen);
    pen.push(sample::Adjust { token: vocab as u32 + 5, count: 2, bias: 1.0 });
    let words: Vec<u32> = pen.iter().flat_map(|a| [a.token, a.count, a.bias.to_bits(), 0]).collect();
    let step_buf = gpu.uniform("step", bytemuck::bytes_of(&Step::default()));
    let ctx = Ctx { gpu: &gpu, step: &step_buf, shape: gpu.shape, subgroups: false };
    let lb = upload(&gpu, "logits", &l);
    let pb = gpu.storage_init("penalized", bytemuck::cast_slice(&words)).unwrap();
    let st = Step { n_tokens: 1, n_penalized: pen.len() as u32, repetition: 1.3, frequency: 0.4, presence: -0.2, ..Default::default() };
    run(&gpu, &step_buf, st, &[ctx.penalize(&lb, &pb, vocab as u32).unwrap()]);
    assert_eq!(download(&gpu, &lb, vocab), want);
}

/// The GPU sampler's token and log-probabilities.
fn gpu_sample_logprobs(gpu: &Gpu, logits: &[f32], p: &SamplingParams, draw: u32) -> (u32, sample::Logprobs) {
    let n = p.logprobs.unwrap();
    let w = gpu_sample_words(gpu, logits, p, draw);
    let top: Vec<(u32, f32)> = (0..n).map(|j| (w[3 + 2 * j], f32::from_bits(w[4 + 2 * j]))).collect();
    (w[0], sample::Logprobs::from_logits(w[0], f32::from_bits(w[2]), &top, f32::from_bits(w[1])))
}

#[test]
fn sampling_on_the_gpu_equals_the_cpu_sampler() {
    let gpu = gpu();
    let mut rng = Rng(15);
    // Greedy: argmax, first index on ties, NaNs skipped.
    for vocab in [1usize, 255, 257, 49152] {
        let mut l: Vec<f32> = rng.vec(vocab).iter().map(|v| v * 10.0).collect();
        if vocab > 300 {
            l[100] = 50.0;
            l[200] = 50.0; // a tie: the lower id wins
            l[7] = f32::NAN;
        }
        let want = sample::argmax(&l).unwrap() as u32;
        assert_eq!(gpu_sample(&gpu, &l, &SamplingParams::default(), 0), want, "vocab {vocab}");
    }
    // Infinite logits: the CPU rule (order decides), not NaN probabilities.
    let hot = SamplingParams { temperature: 0.8, top_k: 0, top_p: 0.9, seed: 1, ..Default::default() };
    for l in [vec![0.0, f32::INFINITY, 5.0], vec![f32::NEG_INFINITY; 3]] {
        assert_eq!(gpu_sample(&gpu, &l, &hot, 0), sample::sample(&l, &hot, 0).unwrap(), "{l:?}");
    }
    // Temperature, top-k, top-p: the same token for the same seed and draw.
    let l: Vec<f32> = rng.vec(3000).iter().map(|v| v * 4.0).collect();
    let cases = [
        SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 1, ..Default::default() },
        SamplingParams { temperature: 0.7, top_k: 40, top_p: 0.95, seed: 2, ..Default::default() },
        SamplingParams { temperature: 1.3, top_k: 5, top_p: 1.0, seed: 3, ..Default::default() },
        SamplingParams { temperature: 0.8, top_k: 0, top_p: 0.5, seed: u64::MAX - 5, ..Default::default() },
    ];
    for p in cases {
        for draw in 0..12 {
            let want = sample::sample(&l, &p, draw).unwrap();
            assert_eq!(gpu_sample(&gpu, &l, &p, draw), want, "{p:?} draw {draw}");
        }
    }
    // Log-probabilities: the device's logsumexp and top-n against the CPU's.
    for (p, n) in [(SamplingParams::default(), 5usize), (SamplingParams { temperature: 0.7, top_k: 3, seed: 4, ..Default::default() }, 20)] {
        let p = SamplingParams { logprobs: Some(n), ..p };
        let (token, lp) = gpu_sample_logprobs(&gpu, &l, &p, 2);
        assert_eq!(token, sample::sample(&l, &p, 2).unwrap());
        let want = sample::Logprobs::of(&l, token, n);
        assert!((lp.logprob - want.logprob).abs() < 1e-5, "{lp:?} vs {want:?}");
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), want.top.iter().map(|t| t.0).collect::<Vec<_>>());
        assert!(lp.top.iter().zip(&want.top).all(|(a, b)| (a.1 - b.1).abs() < 1e-5));
    }
    // Qwen2's vocabulary, all 256 candidates: on lavapipe the rounds' loops
    // must stay under llvmpipe's 65535 iterations per invocation.
    let l: Vec<f32> = rng.vec(151_936).iter().map(|v| v * 4.0).collect();
    let p = SamplingParams { temperature: 2.0, top_k: 0, top_p: 1.0, seed: 9, ..Default::default() };
    for draw in 0..4 {
        assert_eq!(gpu_sample(&gpu, &l, &p, draw), sample::sample(&l, &p, draw).unwrap(), "vocab 151936, draw {draw}");
    }
}

fn halves(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect()
}

fn read_halves(gpu: &Gpu, b: &wgpu::Buffer, n: usize) -> Vec<f32> {
    let bytes = gpu.read(b, 0, (n * 2).div_ceil(4) as u64 * 4).unwrap();
    bytes[..n * 2].chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
}

#[test]
fn f16_kv_cache_kernels() {
    let gpu = gpu();
    if !gpu.has_f16() {
        eprintln!("{} has no shader-f16: the f16 KV cache is not used there, nothing to test", gpu.adapter_name());
        return;
    }
    let mut rng = Rng(16);
    let step_buf = gpu.uniform("step", bytemuck::bytes_of(&Step::default()));
    let ctx = Ctx { gpu: &gpu, step: &step_buf, shape: gpu.shape, subgroups: false };
    let (h, kvh, hd, pos, n) = (4usize, 2usize, 32usize, 70usize, 3usize);
    let kv_dim = kvh * hd;

    // q, k, v of the new tokens side by side per token: k roped and v into
    // f16 caches at the pass position, the rows before untouched.
    let inv: Vec<f32> = (0..hd / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32)).collect();
    let (q, k_new, v_new) = (rng.vec(n * h * hd), rng.vec(n * kv_dim), rng.vec(n * kv_dim));
    let qkv: Vec<f32> = (0..n)
        .flat_map(|t| q[t * h * hd..][..h * hd].iter().chain(&k_new[t * kv_dim..][..kv_dim]).chain(&v_new[t * kv_dim..][..kv_dim]).copied())
        .collect();
    let before: Vec<f32> = rng.vec((pos + n) * kv_dim).iter().map(|v| half::f16::from_f32(*v).to_f32()).collect();
    let (ib, sb, qb) = (upload(&gpu, "inv", &inv), upload(&gpu, "qkv", &qkv), gpu.storage("q", (n * h * hd * 4) as u64).unwrap());
    let (kb, vb) = (gpu.storage_init("k", &halves(&before)).unwrap(), gpu.storage_init("v", &halves(&before)).unwrap());
    let op = ctx.rope_scatter("rope", RopeScatter { pairing: RopePairing::Halves, inv_freq: &ib, qkv: &sb, q: &qb, k_cache: &kb, v_cache: &vb, head_dim: hd as u32, n_q: h as u32, n_k: kvh as u32, half_kv: true, norm: None }).unwrap();
    run(&gpu, &step_buf, step(n as u32, pos as u32), &[op]);
    let (mut wk, mut wv) = (before.clone(), before.clone());
    wk[pos * kv_dim..].copy_from_slice(&k_new);
    wv[pos * kv_dim..].copy_from_slice(&v_new);
    for t in 0..n {
        wk[(pos + t) * kv_dim..][..kv_dim].chunks_exact_mut(hd).for_each(|v| reference::rope(v, pos + t, &inv, RopePairing::Halves));
    }
    let (k, v) = (read_halves(&gpu, &kb, wk.len()), read_halves(&gpu, &vb, wv.len()));
    let close = |got: &[f32], want: &[f32]| got.iter().zip(want).all(|(g, w)| (g - w).abs() <= 1e-3 * w.abs().max(1.0));
    assert!(close(&k, &wk) && k[..pos * kv_dim] == before[..pos * kv_dim], "roped k into an f16 cache");
    assert!(close(&v, &wv) && v[..pos * kv_dim] == before[..pos * kv_dim], "v into an f16 cache");

    // Attention reading an f16 cache: exact against the reference on the same halves.
    let max_splits = (pos + n).div_ceil(baleen_shaders::shape::ATTENTION_SPLIT as usize);
    let ml = gpu.storage("ml", (n * h * max_splits * 8) as u64).unwrap();
    let po = gpu.storage("po", (n * h * max_splits * hd * 4) as u64).unwrap();
    let out = gpu.storage("out", (n * h * hd * 4) as u64).unwrap();
    let q_now = download(&gpu, &qb, q.len()); // rotated above
    let want = reference_attention(&q_now, &k, &v, n, pos, h, kvh, hd);
    for (shape, subgroups) in shapes(&gpu) {
        let ctx = Ctx { shape, subgroups, ..ctx };
        let ops = ctx.attention("attn", bufs(&qb, &kb, &vb, &ml, &po, &out), &AttentionShape::gqa(h as u32, kvh as u32, hd as u32), max_splits as u32, true).unwrap();
        run(&gpu, &step_buf, step(n as u32, pos as u32), &ops);
        let got = download(&gpu, &out, n * h * hd);
        assert!(common::max_abs_diff(&got, &want) < 1e-5, "attention over an f16 cache, {shape:?}, subgroups {subgroups}");
    }
}

fn moe_config(n_experts: usize, top_k: usize, scoring: baleen::config::Scoring, groups: usize, topk_groups: usize, group_score: baleen::config::GroupScore, norm_topk: bool) -> baleen::config::Moe {
    baleen::config::Moe {
        groups,
        topk_groups,
        group_score,
        scoring,
        scale: 1.5,
        ..baleen::config::Moe::softmax_top_k(n_experts, top_k, 32, norm_topk)
    }
}

#[test]
fn router_on_the_gpu_equals_the_reference_router() {
    use baleen::config::{GroupScore, Scoring};
    let gpu = gpu();
    let mut rng = Rng(21);
    let step_buf = gpu.uniform("step", bytemuck::bytes_of(&Step::default()));
    let ctx = Ctx { gpu: &gpu, step: &step_buf, shape: gpu.shape, subgroups: false };
    let cases = [
        moe_config(8, 2, Scoring::Softmax, 1, 1, GroupScore::Max, true),                 // Mixtral
        moe_config(64, 6, Scoring::Softmax, 8, 3, GroupScore::Max, false),               // V2
        moe_config(256, 8, Scoring::Sigmoid, 8, 4, GroupScore::TopTwoSum, true),         // V3
        moe_config(60, 4, Scoring::Softmax, 1, 1, GroupScore::Max, false),               // Qwen2-MoE
    ];
    for (ci, m) in cases.iter().enumerate() {
        let n = 7;
        let mut logits: Vec<f32> = (0..n * m.n_experts).map(|_| rng.f32() * 4.0).collect();
        // Ties (token 0) and, for sigmoid scores, a NaN (token 1) that must never
        // win. (A NaN logit poisons a softmax's normaliser: no defined choice.)
        logits[..m.n_experts].iter_mut().for_each(|v| *v = 0.5);
        if m.scoring == Scoring::Sigmoid {
            logits[m.n_experts + 3] = f32::NAN;
        }
        let bias: Option<Vec<f32>> = (m.scoring == Scoring::Sigmoid).then(|| (0..m.n_experts).map(|_| rng.f32() - 1.5).collect());
        let lb = upload(&gpu, "logits", &logits);
        let bb = bias.as_ref().map(|b| upload(&gpu, "bias", b));
        let ids = gpu.storage("ids", (n * m.top_k * 4) as u64).unwrap();
        let w = gpu.storage("weights", (n * m.top_k * 4) as u64).unwrap();
        run(&gpu, &step_buf, step(n as u32, 0), &[ctx.route("route", m, &lb, bb.as_ref(), &ids, &w).unwrap()]);
        let got_ids: Vec<u32> = bytemuck::cast_slice(&gpu.read(&ids, 0, (n * m.top_k * 4) as u64).unwrap()).to_vec();
        let got_w = download(&gpu, &w, n * m.top_k);
        for t in 0..n {
            let want = reference::route(&logits[t * m.n_experts..][..m.n_experts], bias.as_deref(), m);
            for (k, (e, wt)) in want.iter().enumerate() {
                assert_eq!(got_ids[t * m.top_k + k] as usize, *e, "case {ci} token {t} choice {k}");
                assert!((got_w[t * m.top_k + k] - wt).abs() < 1e-5, "case {ci} token {t} weight {k}");
            }
        }
    }
}

/// `e` random experts of `rows` × `cols` in `dtype`, loaded in chunks of two
/// whole experts (a small binding limit), and their dequantised values.
fn experts_matrix(gpu: &Gpu, path: Path, dtype: DType, e: usize, rows: usize, cols: usize, seed: u64) -> (GpuMatrix, Vec<f32>) {
    let (bytes, w) = random_matrix(dtype, e * rows, cols, seed);
    let row_bytes = baleen::gpu::weights::repacked_row_bytes(dtype, cols as u64) as usize;
    let tensor = baleen::format::TensorInfo {
        name: "experts".into(),
        dtype,
        shape: vec![e as u64, rows as u64, cols as u64],
        file: 0,
        offset: 0,
        nbytes: bytes.len() as u64,
    };
    let src: std::sync::Arc<dyn baleen::source::WeightSource> = std::sync::Arc::new(baleen::source::PrefixSource::whole("w", bytes));
    let index = baleen::format::TensorIndex::new(baleen::format::FileKind::Gguf, vec![src], vec![tensor.clone()], Default::default()).unwrap();
    let m = baleen::engine::run_ready(GpuMatrix::load_experts(gpu, &index, &[&tensor], e as u64, rows as u64, cols as u64, path.place(gpu, (2 * rows * row_bytes) as u64 + 64))).unwrap();
    assert_eq!(m.chunks.len(), e.div_ceil(2), "whole experts per chunk");
    (m, w)
}

/// Expert weights' formats in the tests: a float, 32-value formats with one
/// and two scale words a block, K-quants without and with a scale plane.
const EXPERT_FORMATS: [DType; 6] = [DType::F32, DType::Q8_0, DType::Q4_1, DType::Q5_0, DType::Q4_K, DType::Q6_K];

/// Their rows: 5 blocks (textures: a unit of 4 blocks, then one; a second
/// scale texel), the float's 2.
fn expert_cols(dtype: DType) -> usize {
    match dtype {
        DType::F32 => 64,
        d => 5 * d.block_size() as usize,
    }
}

#[test]
fn expert_matmul_reads_ids_from_the_gpu_across_chunks() {
    // 6 experts of 40 rows; 3 tokens × top 2; chunks of 2 experts.
    let gpu = gpu();
    let (e, rows, n, k) = (6usize, 40usize, 3usize, 2usize);
    for path in paths(&gpu) {
        for dtype in EXPERT_FORMATS {
            let cols = expert_cols(dtype);
            let (m, w) = experts_matrix(&gpu, path, dtype, e, rows, cols, 5);
            let step_buf = gpu.uniform("step", bytemuck::bytes_of(&Step::default()));
            let ctx = path.ctx(&gpu, &step_buf);
            let mut rng = Rng(9);
            let x = rng.vec(n * cols);
            let chosen: Vec<u32> = vec![5, 0, 2, 3, 1, 5];
            let ids = gpu.storage_init("ids", bytemuck::cast_slice(&chosen)).unwrap();
            let y = gpu.storage("y", (n * k * rows * 4) as u64).unwrap();
            let xb = upload(&gpu, "x", &x);
            run(&gpu, &step_buf, step(n as u32, 0), &ctx.experts(&m, ExpertMatmul { expert_rows: rows as u32, x: &xb, x_stride: cols as u32, y: &y, slot_of: None }, k as u32, &ids, k as u32).unwrap());
            let got = download(&gpu, &y, n * k * rows);
            for s in 0..n * k {
                let ex = chosen[s] as usize;
                for r in 0..rows {
                    let want = reference::dot(&w[(ex * rows + r) * cols..][..cols], &x[(s / k) * cols..][..cols]);
                    let g = got[s * rows + r];
                    assert!((g - want).abs() <= 1e-3 * (1.0 + want.abs()), "{dtype:?} {path:?} slot {s} row {r}: {g} vs {want}");
                }
            }
        }
    }
}

#[test]
fn paged_expert_matmul_reads_slots_and_skips_experts_not_resident() {
    // An expert cache of 4 slots (chunks of 2) holding 3 of 6 experts in
    // another order (write_slot), slot_of mapping them and NO_SLOT the
    // rest: the resident experts' rows equal the resident matrix's bit for
    // bit; the others' outputs are left as they were (NaN here).
    use baleen::gpu::paging::NO_SLOT;
    let gpu = gpu();
    let (e, rows, n, k) = (6usize, 40usize, 3usize, 2usize);
    let slot_of_host = [NO_SLOT, 3, 0, NO_SLOT, NO_SLOT, 1];
    let chosen: Vec<u32> = vec![5, 0, 2, 3, 1, 5];
    for path in paths(&gpu) {
        for dtype in EXPERT_FORMATS {
            let cols = expert_cols(dtype);
            let (m, _) = experts_matrix(&gpu, path, dtype, e, rows, cols, 5);
            let (bytes, _) = random_matrix(dtype, e * rows, cols, 5);
            let row_bytes = baleen::gpu::weights::repacked_row_bytes(dtype, cols as u64);
            let cache = GpuMatrix::slots(&gpu, "cache", dtype, 4, rows as u64, cols as u64, path.place(&gpu, 2 * rows as u64 * row_bytes + 64)).unwrap();
            assert_eq!((cache.chunks.len(), cache.quad_texture()), (2, m.quad_texture()), "{dtype:?} {path:?}");
            let per = bytes.len() / e;
            for (ex, &s) in slot_of_host.iter().enumerate().filter(|(_, &s)| s != NO_SLOT) {
                cache.write_slot(&gpu, s, rows as u32, &bytes[ex * per..][..per]).unwrap();
            }
            let step_buf = gpu.uniform("step", bytemuck::bytes_of(&Step::default()));
            let ctx = path.ctx(&gpu, &step_buf);
            let x = Rng(9).vec(n * cols);
            let (ids, xb) = (gpu.storage_init("ids", bytemuck::cast_slice(&chosen)).unwrap(), upload(&gpu, "x", &x));
            let slot_of = gpu.storage_init("slot_of", bytemuck::cast_slice(&slot_of_host)).unwrap();
            let resident = gpu.storage("y", (n * k * rows * 4) as u64).unwrap();
            let paged = upload(&gpu, "paged y", &vec![f32::NAN; n * k * rows]);
            let em = |y, slot_of| ExpertMatmul { expert_rows: rows as u32, x: &xb, x_stride: cols as u32, y, slot_of };
            let mut ops = ctx.experts(&m, em(&resident, None), k as u32, &ids, k as u32).unwrap();
            ops.extend(ctx.experts(&cache, em(&paged, Some(&slot_of)), k as u32, &ids, k as u32).unwrap());
            run(&gpu, &step_buf, step(n as u32, 0), &ops);
            let (want, got) = (download(&gpu, &resident, n * k * rows), download(&gpu, &paged, n * k * rows));
            for s in 0..n * k {
                let (want, got) = (&want[s * rows..][..rows], &got[s * rows..][..rows]);
                if slot_of_host[chosen[s] as usize] == NO_SLOT {
                    assert!(got.iter().all(|v| v.is_nan()), "{dtype:?} {path:?} slot {s}: an expert not resident was computed");
                } else {
                    let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(got), bits(want), "{dtype:?} {path:?} slot {s}");
                }
            }
        }
    }
}

#[test]
fn grouped_experts_sort_gather_matmul_swiglu_and_combine() {
    // A prefill pass's experts grouped: 7 tokens × top 3 over 6 experts (21
    // slots), with expert 4 chosen by every token and expert 2 by none;
    // weights in chunks of 2 experts.
    use baleen::gpu::{expert_tiles, Grid};
    let gpu = gpu();
    let (e, rows, cols, n, k) = (6usize, 40usize, 64usize, 7usize, 3usize);
    let slots = n * k;
    let chosen: Vec<u32> = (0..n).flat_map(|t| [4, [0, 1, 3, 5][t % 4], [5, 0, 1][t % 3]]).collect();
    let m = moe_config(e, k, baleen::config::Scoring::Softmax, 1, 1, baleen::config::GroupScore::Max, true);
    let n_tiles = expert_tiles(slots as u32, e as u32) as usize;
    let tile_rows = n_tiles * 8;
    let mut rng = Rng(41);
    let x = rng.vec(n * cols);
    for path in paths(&gpu) {
        let shape = path.shape;
        let step_buf = gpu.uniform("step", bytemuck::bytes_of(&Step::default()));
        let ctx = path.ctx(&gpu, &step_buf);
        let ids = gpu.storage_init("ids", bytemuck::cast_slice(&chosen)).unwrap();
        let slot_pos = gpu.storage("slot rows", slots as u64 * 4).unwrap();
        let tiles = gpu.storage("tiles", n_tiles as u64 * 8).unwrap();
        let counts = gpu.storage("counts", e as u64 * 4).unwrap();
        let xb = upload(&gpu, "x", &x);
        let xs = upload(&gpu, "sorted x", &vec![f32::NAN; tile_rows * cols]);
        let sort = ctx.moe_sort("sort", &m, &ids, &slot_pos, &tiles, &counts).unwrap();
        let gather = ctx.moe_gather("gather", &xb, &slot_pos, &xs, cols as u32, k as u32).unwrap();
        run(&gpu, &step_buf, step(n as u32, 0), &[sort, gather]);

        // The schedule: tiles of one expert in expert order, ≤ 8 slots each,
        // every slot once, at its expert's tile rows, in token order.
        let tl: Vec<u32> = bytemuck::cast_slice(&gpu.read(&tiles, 0, n_tiles as u64 * 8).unwrap()).to_vec();
        let pos: Vec<u32> = bytemuck::cast_slice(&gpu.read(&slot_pos, 0, slots as u64 * 4).unwrap()).to_vec();
        let mut want_tiles = Vec::new();
        for ex in 0..e as u32 {
            let c = chosen.iter().filter(|&&c| c == ex).count() as u32;
            want_tiles.extend((0..c).step_by(8).map(|j| [ex, (c - j).min(8)]));
        }
        want_tiles.resize(n_tiles, [0, 0]);
        assert_eq!(tl.chunks(2).map(|t| [t[0], t[1]]).collect::<Vec<_>>(), want_tiles, "{shape:?} tiles");
        let mut seen = vec![false; tile_rows];
        for s in 0..slots {
            let (tile, j) = (pos[s] as usize / 8, pos[s] as usize % 8);
            assert_eq!(tl[2 * tile], chosen[s], "slot {s} sits in a tile of its expert");
            assert!((j as u32) < tl[2 * tile + 1] && !seen[pos[s] as usize], "slot {s}: row {}", pos[s]);
            seen[pos[s] as usize] = true;
            if let Some(prev) = (0..s).rev().find(|&p| chosen[p] == chosen[s]) {
                assert!(pos[prev] < pos[s], "an expert's slots keep token order");
            }
        }
        let gathered = download(&gpu, &xs, tile_rows * cols);
        for s in 0..slots {
            assert_eq!(&gathered[pos[s] as usize * cols..][..cols], &x[(s / k) * cols..][..cols], "slot {s} gathered");
        }

        // The grouped matmul in three formats, chunked by whole experts; then
        // SwiGLU over the tile rows and the weighted sum back per token.
        for dtype in EXPERT_FORMATS {
            let cols = expert_cols(dtype);
            let x = rng.vec(n * cols);
            let xb = upload(&gpu, "x", &x);
            let xs = gpu.storage("sorted x", (tile_rows * cols * 4) as u64).unwrap();
            let (wm, w) = experts_matrix(&gpu, path, dtype, e, rows, cols, 6);
            let y = gpu.storage("y", (tile_rows * rows * 4) as u64).unwrap();
            let mut ops = vec![ctx.moe_gather("gather", &xb, &slot_pos, &xs, cols as u32, k as u32).unwrap()];
            ops.extend(ctx.grouped(&wm, ExpertMatmul { expert_rows: rows as u32, x: &xs, x_stride: cols as u32, y: &y, slot_of: None }, &tiles, &m).unwrap());
            assert!(matches!(ops[1].grid, Grid::ExpertTiles { .. }));
            run(&gpu, &step_buf, step(n as u32, 0), &ops);
            let got = download(&gpu, &y, tile_rows * rows);
            for s in 0..slots {
                for r in 0..rows {
                    let want = reference::dot(&w[(chosen[s] as usize * rows + r) * cols..][..cols], &x[(s / k) * cols..][..cols]);
                    let g = got[pos[s] as usize * rows + r];
                    assert!((g - want).abs() <= 1e-3 * (1.0 + want.abs()), "{dtype:?} {path:?} slot {s} row {r}: {g} vs {want}");
                }
            }
        }
        let (g, u) = (rng.vec(tile_rows * rows), rng.vec(tile_rows * rows));
        let (gb, ub) = (upload(&gpu, "gate", &g), upload(&gpu, "up", &u));
        let act = gpu.storage("act", (tile_rows * rows * 4) as u64).unwrap();
        run(&gpu, &step_buf, step(n as u32, 0), &[ctx.swiglu_tiles("swiglu", GateUp::Apart(&gb, &ub), &act, rows as u32, &m).unwrap()]);
        let got = download(&gpu, &act, tile_rows * rows);
        for i in 0..tile_rows * rows {
            let want = g[i] / (1.0 + (-g[i]).exp()) * u[i];
            assert!((got[i] - want).abs() <= 1e-5 * (1.0 + want.abs()), "swiglu over tile row {}", i / rows);
        }
        let h = rows;
        let (res, wts) = (rng.vec(n * h), rng.vec(slots));
        let (rb, wb) = (upload(&gpu, "x", &res), upload(&gpu, "weights", &wts));
        run(&gpu, &step_buf, step(n as u32, 0), &[ctx.moe_combine("combine", Combine { x: &rb, y: &gb, weights: &wb, shared: None, gate: None, slot_pos: Some(&slot_pos), hidden: h as u32, top_k: k as u32 }).unwrap()]);
        let got = download(&gpu, &rb, n * h);
        for t in 0..n {
            for d in 0..h {
                let want = res[t * h + d] + (0..k).map(|j| wts[t * k + j] * g[pos[t * k + j] as usize * h + d]).sum::<f32>();
                assert!((got[t * h + d] - want).abs() < 1e-5, "combine token {t} [{d}]");
            }
        }
    }
}

#[test]
fn moe_combine_weights_experts_and_gates_the_shared_one() {
    let gpu = gpu();
    let mut rng = Rng(33);
    let (n, k, h) = (3usize, 2usize, 70usize);
    let (x, y, wts, shared, gate) = (rng.vec(n * h), rng.vec(n * k * h), rng.vec(n * k), rng.vec(n * h), rng.vec(n));
    let step_buf = gpu.uniform("step", bytemuck::bytes_of(&Step::default()));
    let ctx = Ctx { gpu: &gpu, step: &step_buf, shape: gpu.shape, subgroups: false };
    for gated in [false, true] {
        let (xb, yb, wb, sb, gb) = (upload(&gpu, "x", &x), upload(&gpu, "y", &y), upload(&gpu, "w", &wts), upload(&gpu, "s", &shared), upload(&gpu, "g", &gate));
        let op = ctx.moe_combine("c", Combine { x: &xb, y: &yb, weights: &wb, shared: Some(&sb), gate: gated.then_some(&gb), slot_pos: None, hidden: h as u32, top_k: k as u32 }).unwrap();
        run(&gpu, &step_buf, step(n as u32, 0), &[op]);
        let got = download(&gpu, &xb, n * h);
        for t in 0..n {
            let g = if gated { 1.0 / (1.0 + (-gate[t]).exp()) } else { 1.0 };
            for d in 0..h {
                let want = x[t * h + d] + (0..k).map(|j| wts[t * k + j] * y[(t * k + j) * h + d]).sum::<f32>() + g * shared[t * h + d];
                assert!((got[t * h + d] - want).abs() < 1e-5);
            }
        }
    }
}

#[test]
fn latent_attention_kernels_match_the_plain_math() {
    // MLA's kernels one by one against the reference's pieces: the latent
    // cache row, the absorbed queries, attention over latent rows (value =
    // the row's first `rank` values) across splits, and the per-head v_up.
    use baleen::gpu::ops::MlaShape;
    let gpu = gpu();
    let mut rng = Rng(77);
    let (heads, rank, rope, nope, vd) = (3usize, 40usize, 8usize, 12usize, 10usize);
    let (n, pos) = (3usize, 70usize); // straddles the 64-position attention split
    let inv: Vec<f32> = (0..rope / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / rope as f32)).collect();
    let factor = 1.3f32;
    for pairing in [RopePairing::Adjacent, RopePairing::Halves] {
        let m = MlaShape {
            heads: heads as u32,
            rank: rank as u32,
            rope: rope as u32,
            nope: nope as u32,
            v_dim: vd as u32,
            eps: 1e-6,
            rope_factor: factor,
            pairing,
        };
        let row = rank + rope;
        let step_buf = gpu.uniform("step", bytemuck::bytes_of(&Step::default()));
        let ctx = Ctx { gpu: &gpu, step: &step_buf, shape: gpu.shape, subgroups: false };
        let rotate = |v: &mut [f32], p: usize| {
            reference::rope(v, p, &inv, pairing);
            v.iter_mut().for_each(|x| *x *= factor);
        };
        // The cache: earlier rows random, the new ones from kv_a.
        let mut cache = rng.vec((pos + n) * row);
        let (kv_a, norm) = (rng.vec(n * row), rng.vec(rank));
        let (ib, kab, nb) = (upload(&gpu, "inv", &inv), upload(&gpu, "kv_a", &kv_a), upload(&gpu, "norm", &norm));
        let before = cache.clone();
        for t in 0..n {
            let r = &mut cache[(pos + t) * row..][..row];
            r.copy_from_slice(&kv_a[t * row..][..row]);
            reference::rms_norm(&mut r[..rank], &norm, 1e-6);
            rotate(&mut r[rank..], pos + t);
        }
        // A thread per token (CPU adapters) and a workgroup per token (GPUs).
        for kernel_shape in [MatmulShape::RowPerWorkgroup, MatmulShape::RowPerThread] {
            let ctx = Ctx { shape: kernel_shape, ..ctx };
            let cb = upload(&gpu, "cache", &before);
            run(&gpu, &step_buf, step(n as u32, pos as u32), &[ctx.mla_kv_cache("kv", &m, &ib, &kab, &nb, &cb).unwrap()]);
            let got_cache = download(&gpu, &cb, (pos + n) * row);
            assert!(common::max_abs_diff(&got_cache, &cache) < 1e-4, "{pairing:?} latent cache, {kernel_shape:?}");
        }
        let cb = upload(&gpu, "cache", &cache);

        // Absorbed queries: [W_ukᵀ q_nope ; RoPE(q_pe)] per head.
        // W_kvb [heads · (nope + v), rank]: per head W_uk's nope rows, then W_uv's v rows.
        let (q, kv_b) = (rng.vec(n * heads * (nope + rope)), rng.vec(heads * (nope + vd) * rank));
        let (qb, kbb) = (upload(&gpu, "q", &q), upload(&gpu, "kv_b", &kv_b));
        let w_row = |h: usize, r: usize| &kv_b[(h * (nope + vd) + r) * rank..][..rank];
        let q_lat_b = gpu.storage("q_lat", (n * heads * row * 4) as u64).unwrap();
        run(&gpu, &step_buf, step(n as u32, pos as u32), &[ctx.mla_absorb_q("absorb", &m, &ib, &qb, &kbb, &q_lat_b).unwrap()]);
        let mut q_lat = vec![0f32; n * heads * row];
        for t in 0..n {
            for h in 0..heads {
                let qh = &q[(t * heads + h) * (nope + rope)..][..nope + rope];
                let out = &mut q_lat[(t * heads + h) * row..][..row];
                for j in 0..rank {
                    out[j] = (0..nope).map(|i| w_row(h, i)[j] * qh[i]).sum();
                }
                out[rank..].copy_from_slice(&qh[nope..]);
                rotate(&mut out[rank..], pos + t);
            }
        }
        assert!(common::max_abs_diff(&download(&gpu, &q_lat_b, n * heads * row), &q_lat) < 1e-4, "{pairing:?} absorbed q");

        // Attention over the latent rows, one shared "kv head".
        let scale = 0.37f32;
        let max_splits = (pos + n).div_ceil(64);
        let ml = gpu.storage("ml", (n * heads * max_splits * 8) as u64).unwrap();
        let po = gpu.storage("po", (n * heads * max_splits * rank * 4) as u64).unwrap();
        let o_lat_b = gpu.storage("o_lat", (n * heads * rank * 4) as u64).unwrap();
        let shape = AttentionShape { n_heads: heads as u32, n_kv_heads: 1, head_dim: row as u32, v_dim: rank as u32, scale, latent: true, window: 0 };
        let mut o_lat = vec![0f32; n * heads * rank];
        for t in 0..n {
            for h in 0..heads {
                let qh = &q_lat[(t * heads + h) * row..][..row];
                let mut s: Vec<f32> = (0..=pos + t).map(|p| reference::dot(qh, &cache[p * row..][..row]) * scale).collect();
                reference::softmax(&mut s);
                let out = &mut o_lat[(t * heads + h) * rank..][..rank];
                for (p, a) in s.iter().enumerate() {
                    out.iter_mut().zip(&cache[p * row..][..rank]).for_each(|(o, c)| *o += a * c);
                }
            }
        }
        // A thread or a subgroup per split (CPU adapters), a workgroup per split (GPUs).
        for kernel_shape in [MatmulShape::RowPerThread, MatmulShape::RowPerWorkgroup] {
            let ctx = Ctx { shape: kernel_shape, ..ctx };
            let ops = ctx.attention("attn", bufs(&q_lat_b, &cb, &cb, &ml, &po, &o_lat_b), &shape, max_splits as u32, false).unwrap();
            run(&gpu, &step_buf, step(n as u32, pos as u32), &ops);
            assert!(common::max_abs_diff(&download(&gpu, &o_lat_b, n * heads * rank), &o_lat) < 1e-4, "{pairing:?} latent attention, {kernel_shape:?}");
        }

        // v_up: W_uv,h õ_h.
        let ob = gpu.storage("o", (n * heads * vd * 4) as u64).unwrap();
        run(&gpu, &step_buf, step(n as u32, pos as u32), &[ctx.mla_v_up("v_up", &m, &o_lat_b, &kbb, &ob).unwrap()]);
        let mut o = vec![0f32; n * heads * vd];
        for t in 0..n {
            for h in 0..heads {
                for j in 0..vd {
                    o[(t * heads + h) * vd + j] = reference::dot(w_row(h, nope + j), &o_lat[(t * heads + h) * rank..][..rank]);
                }
            }
        }
        assert!(common::max_abs_diff(&download(&gpu, &ob, n * heads * vd), &o) < 1e-4, "{pairing:?} v_up");
    }
}
