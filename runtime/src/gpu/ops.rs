//! Kernel launchers: each builds the ops (pipeline + bind group + grid) for
//! one kernel family. Bindings follow the WGSL: 0 the pass's `Step`, 1 the
//! op's own parameters, then the buffers in the order the shader lists them.

use super::weights::{format_flag, Chunk, GpuMatrix, Planes};
use super::{Gpu, Grid, Op, Passes, PipelineKey};
use crate::error::{Error, Result};
use baleen_shaders::shape;

/// The sizes of one attention.
pub struct AttentionShape {
    pub n_heads: u32,
    pub n_kv_heads: u32,
    /// Width of a query and of a key row.
    pub head_dim: u32,
    /// Width of a value (the first `v_dim` elements of the value row).
    pub v_dim: u32,
    pub scale: f32,
    /// MLA's latent cache (a wider accumulator).
    pub latent: bool,
}

impl AttentionShape {
    /// Grouped-query attention: values as wide as keys, scale 1/√head_dim.
    pub fn gqa(n_heads: u32, n_kv_heads: u32, head_dim: u32) -> Self {
        let scale = 1.0 / (head_dim as f32).sqrt();
        AttentionShape { n_heads, n_kv_heads, head_dim, v_dim: head_dim, scale, latent: false }
    }
}

/// SwiGLU's inputs: gate and up in two buffers, or side by side in each row
/// of one (a stacked matmul's output: a row's gate, then its up).
#[derive(Clone, Copy)]
pub enum GateUp<'a> {
    Apart(&'a wgpu::Buffer, &'a wgpu::Buffer),
    Stacked(&'a wgpu::Buffer),
}

/// MLA's sizes, for its kernels (shaders/wgsl/mla.wgsl).
pub struct MlaShape {
    pub heads: u32,
    pub rank: u32,
    pub rope: u32,
    pub nope: u32,
    pub v_dim: u32,
    pub eps: f32,
    pub rope_factor: f32,
    pub pairing: crate::config::RopePairing,
}

impl MlaShape {
    fn params(&self) -> Vec<u8> {
        words(&[self.heads, self.rank, self.rope, self.nope, self.v_dim, self.eps.to_bits(), self.rope_factor.to_bits(), 0])
    }
    fn key(&self, entry: &'static str) -> PipelineKey {
        PipelineKey { family: "mla", entry, flags: vec![pairing_flag(self.pairing)] }
    }
}

/// What every launcher needs: the device and the shared step uniform.
pub struct Ctx<'a> {
    pub gpu: &'a Gpu,
    pub step: &'a wgpu::Buffer,
    pub shape: super::MatmulShape,
    /// Use subgroup operations (only when the device has them).
    pub subgroups: bool,
}

impl<'a> Ctx<'a> {
    /// The device's own choices: its matmul shape, subgroups when present.
    pub fn new(gpu: &'a Gpu, step: &'a wgpu::Buffer) -> Self {
        Ctx { gpu, step, shape: gpu.shape, subgroups: gpu.has_subgroups() }
    }
}

/// Mesa's llvmpipe (lavapipe) ends all of an invocation's loops, silently,
/// once they have run 65535 iterations together (gallivm's
/// LP_MAX_TGSI_LOOP_ITERATIONS, a guard against hangs). CPU adapters'
/// kernels keep within half of that.
pub const CPU_LOOP_BUDGET: u32 = 32768;

/// The kernel that computes attention's split partials (attention.wgsl).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttentionKernel {
    /// GPUs, and heads no multiple of 8 wide: a workgroup per split, a
    /// thread per position.
    Workgroup,
    /// CPU adapters with subgroups: a subgroup (`lanes` at most) per split.
    Subgroup { lanes: u32 },
    /// CPU adapters: a thread per split.
    Thread,
}

fn pairing_flag(pairing: crate::config::RopePairing) -> &'static str {
    match pairing {
        crate::config::RopePairing::Halves => "HALVES",
        crate::config::RopePairing::Adjacent => "ADJACENT",
    }
}

fn words(v: &[u32]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

/// matmul.wgsl's `Params`, field for field.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct MatmulParams {
    rows: u32,
    cols: u32,
    row_offset: u32,
    y_stride: u32,
    single: u32,
    x_stride: u32,
    pad1: u32,
    scale_offset: u32,
    expert_rows: u32,
    x_div: u32,
    top_k: u32,
    pad0: u32,
}

impl MatmulParams {
    /// Chunk `c` of `w`, x rows `x_stride` apart; the other fields zero
    /// (and one slot per token): each entry sets its own.
    fn chunk(w: &GpuMatrix, c: &Chunk, x_stride: u32) -> Self {
        MatmulParams { rows: c.rows, cols: w.cols, x_stride, scale_offset: c.scale_offset(), x_div: 1, top_k: 1, ..bytemuck::Zeroable::zeroed() }
    }

    fn bytes(&self) -> Vec<u8> {
        bytemuck::bytes_of(self).to_vec()
    }
}

/// A weight chunk's bindings: its quant plane at `quads` and its scale
/// plane, where the format has one (`has_scales`), at `scales` (a buffer's
/// two planes are the buffer twice); then `others`.
fn chunk_bindings<'b>(c: &'b Chunk, [quads, scales]: [u32; 2], has_scales: bool, others: &[(u32, &'b wgpu::Buffer)]) -> Vec<(u32, wgpu::BindingResource<'b>)> {
    let mut b = match &c.planes {
        Planes::Buffer { buffer, .. } => {
            let mut b = vec![(quads, buffer.as_entire_binding())];
            b.extend(has_scales.then(|| (scales, buffer.as_entire_binding())));
            b
        }
        Planes::Textures { quads: q, scales: s } => {
            let mut b = vec![(quads, wgpu::BindingResource::TextureView(q))];
            b.extend(s.as_ref().map(|s| (scales, wgpu::BindingResource::TextureView(s))));
            b
        }
    };
    b.extend(others.iter().map(|(i, buf)| (*i, buf.as_entire_binding())));
    b
}

/// A matmul's bindings for weight chunk `c`: its planes (2, 6), x (3), y (4).
fn matmul_bindings<'b>(c: &'b Chunk, x: &'b wgpu::Buffer, y: &'b wgpu::Buffer, has_scales: bool) -> Vec<(u32, wgpu::BindingResource<'b>)> {
    chunk_bindings(c, [2, 6], has_scales, &[(3, x), (4, y)])
}

impl Ctx<'_> {
    /// Thread-per-row kernels with subgroups of at least 8 lanes, which share
    /// loads across a subgroup (CPU adapters: a subgroup is one SIMD
    /// register's lanes; see matmul.wgsl and attention.wgsl).
    fn lane_subgroups(&self) -> bool {
        self.subgroups && self.shape == super::MatmulShape::RowPerThread && self.gpu.info.subgroup_min_size >= 8
    }

    fn attention_kernel(&self, a: &AttentionShape) -> AttentionKernel {
        let (min_sg, max_sg) = (self.gpu.info.subgroup_min_size, self.gpu.info.subgroup_max_size);
        // The CPU adapters' kernels read heads in chunks of 8 elements.
        let chunked = a.head_dim % 8 == 0 && a.v_dim % 8 == 0;
        if self.shape == super::MatmulShape::RowPerWorkgroup || !chunked {
            AttentionKernel::Workgroup
        } else if self.lane_subgroups() && max_sg <= shape::ATTENTION_WG && a.head_dim.max(a.v_dim) <= min_sg * shape::ATTENTION_SG_DIMS {
            AttentionKernel::Subgroup { lanes: max_sg }
        } else {
            AttentionKernel::Thread
        }
    }

    /// Positions one attention split covers. GPUs: a thread each. CPU
    /// adapters need no more parallelism than their cores, so a chat's
    /// context usually fits one split (and needs no combining pass), as far
    /// as their loops allow (see [`CPU_LOOP_BUDGET`]): a position costs a
    /// loop iteration per chunk of 8 elements of the key and of the value
    /// (thread kernel), or the subgroup kernel's fixed few.
    pub fn attention_split(&self, a: &AttentionShape) -> u32 {
        let per_position = match self.attention_kernel(a) {
            AttentionKernel::Workgroup => return shape::ATTENTION_SPLIT,
            // Its key and value loops run SG_DIMS / 8 each (unrolled, none),
            // then the sum's halvings.
            AttentionKernel::Subgroup { .. } => shape::ATTENTION_SG_DIMS / 4 + self.gpu.info.subgroup_max_size.max(1).ilog2() + 2,
            AttentionKernel::Thread => (a.head_dim + a.v_dim) / 8 + 2,
        };
        (CPU_LOOP_BUDGET / per_position).clamp(8, shape::ATTENTION_SPLIT_CPU)
    }

    fn op(&self, name: String, key: PipelineKey, params: &[u8], buffers: &[&wgpu::Buffer], grid: Grid) -> Result<Op> {
        let numbered: Vec<(u32, &wgpu::Buffer)> = buffers.iter().enumerate().map(|(i, b)| (2 + i as u32, *b)).collect();
        self.op_at(name, key, params, &numbered, grid)
    }

    /// As `op`, with explicit binding numbers (for entry points that use only
    /// some of a file's bindings: the automatic layout holds just those).
    fn op_at(&self, name: String, key: PipelineKey, params: &[u8], buffers: &[(u32, &wgpu::Buffer)], grid: Grid) -> Result<Op> {
        let bound: Vec<_> = buffers.iter().map(|(i, b)| (*i, b.as_entire_binding())).collect();
        self.op_bound(name, key, params, bound, grid)
    }

    /// As `op_at`, with any binding resources (a weight's texture).
    fn op_bound(&self, name: String, key: PipelineKey, params: &[u8], bound: Vec<(u32, wgpu::BindingResource<'_>)>, grid: Grid) -> Result<Op> {
        let pipeline = self.gpu.pipeline(&key)?;
        let params = self.gpu.uniform(&format!("{name} params"), params);
        let mut entries = vec![
            wgpu::BindGroupEntry { binding: 0, resource: self.step.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 1, resource: params.as_entire_binding() },
        ];
        for (i, resource) in bound {
            entries.push(wgpu::BindGroupEntry { binding: i, resource });
        }
        let bind_group = self.gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&name),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        Ok(Op { name, pipeline, bind_group, grid, passes: Passes::All })
    }

    /// The kernel shape's flag, which also names the weight layout that
    /// shape reads: `w` must have been placed for it.
    fn layout_flag(&self, w: &GpuMatrix) -> Result<&'static str> {
        if !w.quad_texture() && w.row_group != self.shape.row_group(w.dtype) {
            return Err(Error::Gpu(format!(
                "{}: its rows lie in groups of {}, but the {:?} kernels read groups of {}; place it with Placement::new for the shape it runs on",
                w.name,
                w.row_group,
                self.shape,
                self.shape.row_group(w.dtype)
            )));
        }
        Ok(self.shape.flag())
    }

    /// What every matmul over `w` shares: its flags (format, kernel shape,
    /// subgroups), threads per workgroup, and whether the weight has a
    /// scale plane to bind.
    fn matmul_variant(&self, w: &GpuMatrix) -> Result<(Vec<&'static str>, u32, bool)> {
        let mut flags = vec![format_flag(w.dtype)?, self.layout_flag(w)?];
        if w.quad_texture() {
            flags.push("QUAD_TEXTURE");
        }
        if (self.subgroups && self.shape == super::MatmulShape::RowPerWorkgroup) || self.lane_subgroups() {
            flags.push("SUBGROUPS");
            if cfg!(target_arch = "wasm32") {
                flags.push("ENABLE_SUBGROUPS");
            }
        }
        let wg = match self.shape {
            super::MatmulShape::RowPerThread => baleen_shaders::thread_wg(self.lane_subgroups()),
            super::MatmulShape::RowPerWorkgroup => 1,
        };
        Ok((flags, wg, super::weights::layout(w.dtype)?.scale_words > 0))
    }

    /// Rows a thread of the single-token matmul over `w` computes.
    fn shared_rows(&self, w: &GpuMatrix) -> u32 {
        match self.shape {
            super::MatmulShape::RowPerThread => baleen_shaders::shared_rows(self.lane_subgroups(), w.quad_texture(), w.dtype.name()),
            super::MatmulShape::RowPerWorkgroup => 1,
        }
    }

    /// Passes of one token on the thread-per-row shape: `out = swiglu(W x)`
    /// in one dispatch, W stacking the gate's rows over the up
    /// projection's, in one chunk (the matmul's `glu` entry). `None` where
    /// that does not hold: the caller runs the matmul and `swiglu`.
    pub fn matmul_swiglu(&self, name: &str, w: &GpuMatrix, x: &wgpu::Buffer, x_stride: u32, out: &wgpu::Buffer) -> Result<Option<Op>> {
        let [c] = w.chunks.as_slice() else { return Ok(None) };
        if self.shape != super::MatmulShape::RowPerThread || w.rows % 2 != 0 {
            return Ok(None);
        }
        let (flags, wg, has_scales) = self.matmul_variant(w)?;
        let params = MatmulParams { y_stride: w.rows / 2, single: 1, ..MatmulParams::chunk(w, c, x_stride) }.bytes();
        let bound = matmul_bindings(c, x, out, has_scales);
        let key = PipelineKey { family: "matmul", entry: "glu", flags };
        let grid = Grid::PerToken { x: w.rows / 2, wg, tile: 1, single: true, shared_rows: self.shared_rows(w) / 2 };
        Ok(Some(self.op_bound(name.into(), key, &params, bound, grid)?.only(Passes::Single)))
    }

    /// `y (+)= W x (+ b)`, one op per row chunk of W.
    /// `single`: one token, x row 0 → y row 0.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &self,
        w: &GpuMatrix,
        x: &wgpu::Buffer,
        x_stride: u32,
        y: &wgpu::Buffer,
        y_stride: u32,
        bias: Option<&wgpu::Buffer>,
        acc: bool,
        single: bool,
    ) -> Result<Vec<Op>> {
        self.matmul_at(w, x, x_stride, y, y_stride, 0, bias, acc, single)
    }

    /// [`Ctx::matmul`] into columns `row_offset..` of each y row (and of the
    /// bias): one part of a row of several matrices' outputs.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_at(
        &self,
        w: &GpuMatrix,
        x: &wgpu::Buffer,
        x_stride: u32,
        y: &wgpu::Buffer,
        y_stride: u32,
        row_offset: u32,
        bias: Option<&wgpu::Buffer>,
        acc: bool,
        single: bool,
    ) -> Result<Vec<Op>> {
        let (mut flags, wg, has_scales) = self.matmul_variant(w)?;
        if bias.is_some() {
            flags.push("BIAS");
        }
        if acc {
            flags.push("ACC");
        }
        let shared_rows = self.shared_rows(w);
        // Passes of several tokens take a GEMM entry: on the workgroup shape
        // a tiled one, on the thread shape with subgroups 4 rows × 4 tokens
        // a thread, without them the decode GEMV per token. `gemm_tile`:
        // its (rows, tokens) per workgroup.
        let gemm_tile = if single {
            None
        } else if self.shape == super::MatmulShape::RowPerWorkgroup {
            Some((shape::GEMM_ROWS, shape::GEMM_TOKENS))
        } else if self.lane_subgroups() {
            Some((wg * shape::LANE_TILE, shape::LANE_TILE))
        } else {
            Some((wg * shared_rows, 1))
        };
        let mut ops = Vec::new();
        for c in &w.chunks {
            let params = MatmulParams { row_offset: row_offset + c.row_start, y_stride, single: single as u32, ..MatmulParams::chunk(w, c, x_stride) }.bytes();
            let mut bound = matmul_bindings(c, x, y, has_scales);
            bound.extend(bias.map(|b| (5, b.as_entire_binding())));
            let name = format!("{} rows {}..", w.name, c.row_start);
            // `main` computes one token (passes of one, or `single`).
            let main = self.op_bound(
                name.clone(),
                PipelineKey { family: "matmul", entry: "main", flags: flags.clone() },
                &params,
                bound.clone(),
                Grid::PerToken { x: c.rows, wg, tile: 1, single, shared_rows },
            )?;
            let Some((tile_rows, tile_tokens)) = gemm_tile else {
                ops.push(main);
                continue;
            };
            ops.push(main.only(Passes::Single));
            ops.push(
                self.op_bound(
                    format!("{name} (tiled)"),
                    PipelineKey { family: "matmul", entry: "gemm", flags: flags.clone() },
                    &params,
                    bound,
                    Grid::PerToken { x: c.rows, wg: tile_rows, tile: tile_tokens, single: false, shared_rows: 1 },
                )?
                .only(Passes::Multi),
            );
        }
        Ok(ops)
    }

    /// The routed experts: slot s (`top_k` per token) computes
    /// `y[s] = W[ids[s]] · x[s / x_div]` with `W` every expert's `expert_rows`
    /// rows stacked; one op per chunk (chunks hold whole experts).
    #[allow(clippy::too_many_arguments)]
    pub fn experts(
        &self,
        w: &GpuMatrix,
        expert_rows: u32,
        x: &wgpu::Buffer,
        x_stride: u32,
        x_div: u32,
        ids: &wgpu::Buffer,
        y: &wgpu::Buffer,
        top_k: u32,
    ) -> Result<Vec<Op>> {
        let grid = |wg| Grid::PerSlot { x: expert_rows, wg, slots_per_token: top_k };
        self.expert_chunks(w, "experts", [expert_rows, x_stride, x_div, top_k], x, y, (7, ids), grid)
    }

    /// The routed experts of a pass of several tokens, grouped: tile i of
    /// `tiles` (from [`Ctx::moe_sort`]) runs its expert's rows over rows
    /// `TILE_T·i …` of `x` into the same rows of `y`. One op per chunk
    /// (chunks hold whole experts).
    #[allow(clippy::too_many_arguments)]
    pub fn grouped(&self, w: &GpuMatrix, expert_rows: u32, x: &wgpu::Buffer, x_stride: u32, tiles: &wgpu::Buffer, y: &wgpu::Buffer, m: &crate::config::Moe) -> Result<Vec<Op>> {
        let grid = |wg| Grid::ExpertTiles { x: expert_rows, wg, slots_per_token: m.top_k as u32, experts: m.n_experts as u32 };
        self.expert_chunks(w, "grouped", [expert_rows, x_stride, 0, m.top_k as u32], x, y, (8, tiles), grid)
    }

    /// One op per chunk of an experts' weight for matmul.wgsl's `entry`;
    /// `shape` = (expert_rows, x_stride, x_div, top_k); `schedule` binds the
    /// expert ids or the tiles.
    #[allow(clippy::too_many_arguments)]
    fn expert_chunks(
        &self,
        w: &GpuMatrix,
        entry: &'static str,
        [expert_rows, x_stride, x_div, top_k]: [u32; 4],
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        schedule: (u32, &wgpu::Buffer),
        grid: impl Fn(u32) -> Grid,
    ) -> Result<Vec<Op>> {
        let (flags, wg, has_scales) = self.matmul_variant(w)?;
        w.chunks
            .iter()
            .map(|c| {
                let params = MatmulParams { row_offset: c.row_start, expert_rows, x_div, top_k, ..MatmulParams::chunk(w, c, x_stride) }.bytes();
                let mut bound = matmul_bindings(c, x, y, has_scales);
                bound.push((schedule.0, schedule.1.as_entire_binding()));
                self.op_bound(
                    format!("{} {entry} rows {}..", w.name, c.row_start),
                    PipelineKey { family: "matmul", entry, flags: flags.clone() },
                    &params,
                    bound,
                    grid(wg),
                )
            })
            .collect()
    }

    /// The grouped experts' schedule: the pass's slots by expert in `tiles`
    /// `[expert_tiles]` of (expert, count), slot s at row `slot_pos[s]`;
    /// `counts` `[n_experts]` is scratch.
    pub fn moe_sort(&self, name: &str, m: &crate::config::Moe, ids: &wgpu::Buffer, slot_pos: &wgpu::Buffer, tiles: &wgpu::Buffer, counts: &wgpu::Buffer) -> Result<Op> {
        let params = words(&[m.n_experts as u32, m.top_k as u32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        self.op_at(
            name.into(),
            PipelineKey { family: "moe", entry: "sort", flags: vec![] },
            &params,
            &[(3, ids), (11, slot_pos), (12, tiles), (13, counts)],
            Grid::Fixed([1, 1, 1]),
        )
    }

    /// `y[slot_pos[s]] = x[s / top_k]`: each slot's token row, at its row.
    pub fn moe_gather(&self, name: &str, x: &wgpu::Buffer, slot_pos: &wgpu::Buffer, y: &wgpu::Buffer, hidden: u32, top_k: u32) -> Result<Op> {
        let params = words(&[0, top_k, 0, 0, 0, 0, 0, 0, hidden, 0, 0, 0]);
        self.op_at(
            name.into(),
            PipelineKey { family: "moe", entry: "gather", flags: vec![] },
            &params,
            &[(6, x), (11, slot_pos), (14, y)],
            Grid::Flat { per_token: hidden * top_k, wg: shape::ELEMENTWISE_WG },
        )
    }

    /// Choose each token's experts: `ids`, `weights` `[n_tokens, top_k]` from
    /// the router's `logits` `[n_tokens, n_experts]`.
    pub fn route(
        &self,
        name: &str,
        m: &crate::config::Moe,
        logits: &wgpu::Buffer,
        bias: Option<&wgpu::Buffer>,
        ids: &wgpu::Buffer,
        weights: &wgpu::Buffer,
    ) -> Result<Op> {
        use crate::config::{GroupScore, Scoring};
        let flags = if bias.is_some() { vec!["BIAS"] } else { vec![] };
        let params = words(&[
            m.n_experts as u32,
            m.top_k as u32,
            m.groups as u32,
            m.topk_groups as u32,
            (m.scoring == Scoring::Sigmoid) as u32,
            (m.group_score == GroupScore::TopTwoSum) as u32,
            m.norm_topk as u32,
            m.scale.to_bits(),
            0,
            0,
            0,
            0,
        ]);
        let mut bufs = vec![(2, logits), (3, ids), (4, weights)];
        bufs.extend(bias.map(|b| (5, b)));
        self.op_at(
            name.into(),
            PipelineKey { family: "moe", entry: "route", flags },
            &params,
            &bufs,
            Grid::Flat { per_token: 1, wg: shape::ELEMENTWISE_WG },
        )
    }

    /// `x[t] += Σ_k weights[t, k] · y[t · top_k + k]` plus the shared expert's
    /// output (`shared`), gated by `sigmoid(gate[t])` when there is a gate.
    /// With `slot_pos`, slot s's row of y is `slot_pos[s]` (grouped order).
    #[allow(clippy::too_many_arguments)]
    pub fn moe_combine(
        &self,
        name: &str,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        weights: &wgpu::Buffer,
        shared: Option<&wgpu::Buffer>,
        gate: Option<&wgpu::Buffer>,
        slot_pos: Option<&wgpu::Buffer>,
        hidden: u32,
        top_k: u32,
    ) -> Result<Op> {
        let mut flags = if gate.is_some() { vec!["SHARED_GATE"] } else { vec![] };
        if slot_pos.is_some() {
            flags.push("PERMUTED");
        }
        let params = words(&[0, top_k, 0, 0, 0, 0, 0, 0, hidden, shared.is_some() as u32, 0, 0]);
        // Without a shared expert the binding still needs a buffer; it is not read.
        let mut bufs = vec![(4, weights), (6, x), (7, y), (8, shared.unwrap_or(y))];
        bufs.extend(gate.map(|g| (9, g)));
        bufs.extend(slot_pos.map(|s| (11, s)));
        self.op_at(
            name.into(),
            PipelineKey { family: "moe", entry: "combine", flags },
            &params,
            &bufs,
            Grid::Flat { per_token: hidden, wg: shape::ELEMENTWISE_WG },
        )
    }

    /// MLA: the latent cache row of each new token, `[RMSNorm(c) ; RoPE(k_pe)]`
    /// from `kv_a` `[n_tokens, rank + rope]`.
    pub fn mla_kv_cache(&self, name: &str, m: &MlaShape, inv_freq: &wgpu::Buffer, kv_a: &wgpu::Buffer, norm: &wgpu::Buffer, cache: &wgpu::Buffer) -> Result<Op> {
        // A thread per token on CPU adapters, a workgroup per token on GPUs.
        let mut key = m.key("kv_cache");
        let per_token = if self.shape == super::MatmulShape::RowPerWorkgroup {
            key.flags.push("WORKGROUP");
            shape::ELEMENTWISE_WG
        } else {
            1
        };
        self.op(name.into(), key, &m.params(), &[inv_freq, kv_a, norm, cache], Grid::Flat { per_token, wg: shape::ELEMENTWISE_WG })
    }

    /// MLA: absorbed queries `q_lat` `[n_tokens, heads, rank + rope]` from `q`
    /// `[n_tokens, heads, nope + rope]` and `W_kvb` (f32, [`crate::model::mla_kv_b`]).
    pub fn mla_absorb_q(&self, name: &str, m: &MlaShape, inv_freq: &wgpu::Buffer, q: &wgpu::Buffer, kv_b: &wgpu::Buffer, q_lat: &wgpu::Buffer) -> Result<Op> {
        let grid = Grid::AttnCombine { heads: m.heads, head_dim: m.rank + m.rope, wg: shape::ELEMENTWISE_WG };
        self.op(name.into(), m.key("absorb_q"), &m.params(), &[inv_freq, q, kv_b, q_lat], grid)
    }

    /// MLA: each head's output `W_uv,h · õ_h` `[n_tokens, heads · v]` from the
    /// latent attention output `[n_tokens, heads · rank]` and `W_kvb` (f32).
    pub fn mla_v_up(&self, name: &str, m: &MlaShape, o_lat: &wgpu::Buffer, kv_b: &wgpu::Buffer, out: &wgpu::Buffer) -> Result<Op> {
        let grid = Grid::AttnCombine { heads: m.heads, head_dim: m.v_dim, wg: shape::ELEMENTWISE_WG };
        self.op_at(name.into(), m.key("v_up"), &m.params(), &[(3, o_lat), (4, kv_b), (5, out)], grid)
    }

    /// `out[t] = W[ids[t]]`, one op per row chunk of the embedding.
    pub fn embed(&self, w: &GpuMatrix, ids: &wgpu::Buffer, out: &wgpu::Buffer) -> Result<Vec<Op>> {
        let mut flags = vec![format_flag(w.dtype)?, self.layout_flag(w)?];
        if w.quad_texture() {
            flags.push("QUAD_TEXTURE");
        }
        let has_scales = super::weights::layout(w.dtype)?.scale_words > 0;
        w.chunks
            .iter()
            .map(|c| {
                self.op_bound(
                    format!("{} rows {}..", w.name, c.row_start),
                    PipelineKey { family: "embed", entry: "main", flags: flags.clone() },
                    &words(&[c.rows, w.cols, c.row_start, c.scale_offset()]),
                    chunk_bindings(c, [2, 5], has_scales, &[(3, ids), (4, out)]),
                    Grid::PerToken { x: w.cols / 32, wg: shape::ELEMENTWISE_WG, tile: 1, single: false, shared_rows: 1 },
                )
            })
            .collect()
    }

    /// RMSNorm of each token's row (or only the last token's, into row 0).
    pub fn rms_norm(&self, name: &str, x: &wgpu::Buffer, w: &wgpu::Buffer, out: &wgpu::Buffer, cols: u32, eps: f32, last_only: bool) -> Result<Op> {
        // A thread per row on CPU adapters, a workgroup per row on GPUs.
        let (per_row, flags) = if self.shape == super::MatmulShape::RowPerWorkgroup { (shape::ELEMENTWISE_WG, vec!["WORKGROUP"]) } else { (1, vec![]) };
        let grid = if last_only { Grid::Fixed([1, 1, 1]) } else { Grid::Flat { per_token: per_row, wg: shape::ELEMENTWISE_WG } };
        let params = words(&[cols, last_only as u32, eps.to_bits(), 0]);
        self.op(name.into(), PipelineKey { family: "norm", entry: "main", flags }, &params, &[x, w, out], grid)
    }

    /// q, k and v of each token from one row of `qkv` (a stacked matmul's
    /// output): q roped into `q`, k roped into the k cache, v copied into the
    /// v cache, at the pass position (the caches f16 with `half_kv`).
    #[allow(clippy::too_many_arguments)]
    pub fn rope_scatter(
        &self,
        name: &str,
        pairing: crate::config::RopePairing,
        inv_freq: &wgpu::Buffer,
        qkv: &wgpu::Buffer,
        q: &wgpu::Buffer,
        k_cache: &wgpu::Buffer,
        v_cache: &wgpu::Buffer,
        head_dim: u32,
        n_q: u32,
        n_k: u32,
        half_kv: bool,
    ) -> Result<Op> {
        let mut flags = vec![pairing_flag(pairing)];
        if half_kv {
            flags.push("HALF_K");
        }
        self.op_at(
            name.into(),
            PipelineKey { family: "rope", entry: "scatter", flags },
            &words(&[head_dim, n_q, n_k, 0]),
            &[(2, inv_freq), (3, q), (4, k_cache), (5, v_cache), (6, qkv)],
            Grid::PerToken { x: (n_q + n_k) * head_dim / 2 + n_k * head_dim, wg: shape::ELEMENTWISE_WG, tile: 1, single: false, shared_rows: 1 },
        )
    }

    /// Causal attention over the cache: split partials, then combine. With
    /// MLA the latent row is the key and its first `rank` values the value.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        name: &str,
        q: &wgpu::Buffer,
        k_cache: &wgpu::Buffer,
        v_cache: &wgpu::Buffer,
        part_ml: &wgpu::Buffer,
        part_o: &wgpu::Buffer,
        out: &wgpu::Buffer,
        a: &AttentionShape,
        max_splits: u32,
        half_kv: bool,
    ) -> Result<[Op; 2]> {
        let (n_heads, n_kv_heads, head_dim) = (a.n_heads, a.n_kv_heads, a.head_dim);
        let mut flags = if half_kv { vec!["HALF_KV"] } else { vec![] };
        if a.latent {
            flags.push("LATENT");
        }
        let (per_item, wg) = match self.attention_kernel(a) {
            AttentionKernel::Workgroup => {
                flags.push("WORKGROUP");
                (shape::ATTENTION_SPLIT, shape::ATTENTION_SPLIT)
            }
            AttentionKernel::Subgroup { lanes } => {
                flags.push("SUBGROUPS");
                (lanes, shape::ATTENTION_WG)
            }
            AttentionKernel::Thread => (1, shape::ATTENTION_WG),
        };
        let split = self.attention_split(a);
        let params = words(&[n_heads, n_kv_heads, head_dim, split, max_splits, a.scale.to_bits(), a.v_dim, 0]);
        let head_dim = a.v_dim;
        Ok([
            self.op_at(
                format!("{name} partial"),
                PipelineKey { family: "attention", entry: "partial", flags: flags.clone() },
                &params,
                &[(2, q), (3, k_cache), (4, v_cache), (5, part_ml), (6, part_o), (7, out)],
                Grid::AttnPartial { heads: n_heads, wg, split, per_item },
            )?,
            self.op_at(
                format!("{name} combine"),
                PipelineKey { family: "attention", entry: "combine", flags },
                &params,
                &[(5, part_ml), (6, part_o), (7, out)],
                Grid::AttnCombine { heads: n_heads, head_dim, wg },
            )?
            // One split holds the whole context: `partial` wrote the output.
            .only(Passes::Beyond(split)),
        ])
    }

    /// out = silu(gate) ⊙ up over `rows_per_token` rows of `cols` per token
    /// (1, or the routed experts' slots).
    pub fn swiglu(&self, name: &str, gate_up: GateUp, out: &wgpu::Buffer, cols: u32, rows_per_token: u32) -> Result<Op> {
        let grid = Grid::Flat { per_token: cols * rows_per_token, wg: shape::ELEMENTWISE_WG };
        self.swiglu_op(name, gate_up, out, [cols, rows_per_token], grid)
    }

    /// SwiGLU over the grouped experts' tile rows (as many as `out` holds,
    /// launched for the pass's tiles).
    pub fn swiglu_tiles(&self, name: &str, gate_up: GateUp, out: &wgpu::Buffer, cols: u32, m: &crate::config::Moe) -> Result<Op> {
        let grid = Grid::TileRows { per_row: cols, wg: shape::ELEMENTWISE_WG, slots_per_token: m.top_k as u32, experts: m.n_experts as u32 };
        self.swiglu_op(name, gate_up, out, [cols, 0], grid)
    }

    fn swiglu_op(&self, name: &str, gate_up: GateUp, out: &wgpu::Buffer, [cols, rows_per_token]: [u32; 2], grid: Grid) -> Result<Op> {
        let (gate, up, stacked) = match gate_up {
            GateUp::Apart(gate, up) => (gate, up, 0),
            GateUp::Stacked(both) => (both, both, 1),
        };
        let key = PipelineKey { family: "elementwise", entry: "swiglu", flags: vec![] };
        self.op(name.into(), key, &words(&[cols, rows_per_token, stacked, 0]), &[gate, up, out], grid)
    }

    /// `x *= factor` over each token's row of `cols` (or row 0 only, `single`).
    pub fn scale(&self, name: &str, x: &wgpu::Buffer, cols: u32, single: bool, factor: f32) -> Result<Op> {
        let key = PipelineKey { family: "elementwise", entry: "scale", flags: vec![] };
        let grid = if single { Grid::Fixed([cols.div_ceil(shape::ELEMENTWISE_WG), 1, 1]) } else { Grid::Flat { per_token: cols, wg: shape::ELEMENTWISE_WG } };
        self.op_at(name.into(), key, &words(&[cols, !single as u32, 0, factor.to_bits()]), &[(4, x)], grid)
    }

    /// Choose the next token from `logits` into `ids[0]`.
    pub fn sample(&self, logits: &wgpu::Buffer, ids: &wgpu::Buffer, vocab: u32) -> Result<Op> {
        self.op(
            "sample".into(),
            PipelineKey { family: "sample", entry: "main", flags: vec![] },
            &words(&[vocab, 0, 0, 0]),
            &[logits, ids],
            Grid::Fixed([1, 1, 1]),
        )
    }
}
