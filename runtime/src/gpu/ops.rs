//! Kernel launchers: each builds the ops (pipeline + bind group + grid) for
//! one kernel family. Every family binds the pass's `Step` at 0 and its own
//! `Params` (mirrored in `baleen_shaders::kernels`, checked against the WGSL
//! by naga) at 1; its buffers at the numbers `kernels::binding` names.

use super::weights::{format_flag, Chunk, GpuMatrix, Planes};
use super::{Flag, Gpu, Grid, Kernel, MatmulShape, Op, Passes, PipelineKey};
use crate::config::{GroupScore, Moe, RopePairing, Scoring};
use crate::error::{Error, Result};
use baleen_shaders::kernels::{binding, AttentionParams, ElementwiseParams, EmbedParams, MatmulParams, MlaParams, MoeParams, NormParams, RopeParams, SampleParams, Uniform};
use baleen_shaders::shape;
use wgpu::Buffer;

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
    /// A query sees its latest `window` positions; 0: all before it.
    pub window: u32,
}

impl AttentionShape {
    /// Grouped-query attention: values as wide as keys, scale 1/√head_dim.
    pub fn gqa(n_heads: u32, n_kv_heads: u32, head_dim: u32) -> Self {
        let scale = 1.0 / (head_dim as f32).sqrt();
        AttentionShape { n_heads, n_kv_heads, head_dim, v_dim: head_dim, scale, latent: false, window: 0 }
    }
}

/// Rows of a cache buffer of `row_bytes` a position: the context, or a
/// sliding window's ring (position p in row p % rows).
fn cache_rows(name: &str, cache: &Buffer, row_bytes: u64) -> Result<u32> {
    let size = cache.size();
    if row_bytes == 0 || size % row_bytes != 0 || size / row_bytes > u32::MAX as u64 {
        return Err(Error::Gpu(format!("{name}: a cache of {size} bytes does not hold whole rows of {row_bytes} bytes")));
    }
    Ok((size / row_bytes) as u32)
}

/// Attention's buffers: queries `[n, heads · head_dim]`, the caches
/// `[context, kv_heads · head_dim]`, the splits' partials, the output.
pub struct AttentionBuffers<'a> {
    pub q: &'a Buffer,
    pub k_cache: &'a Buffer,
    pub v_cache: &'a Buffer,
    pub part_ml: &'a Buffer,
    pub part_o: &'a Buffer,
    pub out: &'a Buffer,
}

/// SwiGLU's inputs: gate and up in two buffers, or side by side in each row
/// of one (a stacked matmul's output: a row's gate, then its up).
#[derive(Clone, Copy)]
pub enum GateUp<'a> {
    Apart(&'a Buffer, &'a Buffer),
    Stacked(&'a Buffer),
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
    pub pairing: RopePairing,
}

impl MlaShape {
    fn params(&self) -> MlaParams {
        MlaParams { heads: self.heads, rank: self.rank, rope: self.rope, nope: self.nope, v_dim: self.v_dim, eps: self.eps, rope_factor: self.rope_factor, pad0: 0 }
    }
    fn key(&self, entry: &'static str) -> PipelineKey {
        PipelineKey::new(Kernel::Mla, entry, vec![Flag::Pairing(self.pairing)])
    }
}

/// `y (+)= W x (+ b)` over `x` rows `x_stride` apart into `y` rows
/// `y_stride` apart, from column `row_offset` (one part of a row holding
/// several matrices' outputs); `single`: one token, x row 0 → y row 0.
#[derive(Clone, Copy)]
pub struct Matmul<'a> {
    pub x: &'a Buffer,
    pub x_stride: u32,
    pub y: &'a Buffer,
    pub y_stride: u32,
    pub row_offset: u32,
    pub bias: Option<&'a Buffer>,
    pub acc: bool,
    pub single: bool,
}

impl<'a> Matmul<'a> {
    /// `y = W x` for every token of the pass.
    pub fn new(x: &'a Buffer, x_stride: u32, y: &'a Buffer, y_stride: u32) -> Self {
        Matmul { x, x_stride, y, y_stride, row_offset: 0, bias: None, acc: false, single: false }
    }
    pub fn at(self, row_offset: u32) -> Self {
        Matmul { row_offset, ..self }
    }
    pub fn bias(self, bias: Option<&'a Buffer>) -> Self {
        Matmul { bias, ..self }
    }
    /// Add into y.
    pub fn acc(self, acc: bool) -> Self {
        Matmul { acc, ..self }
    }
    pub fn single(self, single: bool) -> Self {
        Matmul { single, ..self }
    }
}

/// The routed experts' matmul: `expert_rows` rows of each expert (all
/// experts stacked in `W`) over `x` rows `x_stride` apart, into `y`.
#[derive(Clone, Copy)]
pub struct ExpertMatmul<'a> {
    pub expert_rows: u32,
    pub x: &'a Buffer,
    pub x_stride: u32,
    pub y: &'a Buffer,
    /// `W` is an expert cache: `[n_experts]` u32, each expert's slot
    /// (`paging`).
    pub slot_of: Option<&'a Buffer>,
}

/// [`Ctx::moe_combine`]'s inputs: `x[t] += Σ_k weights[t, k] ·
/// y[t · top_k + k]` (at row `slot_pos[s]` when permuted) plus `shared`,
/// gated by `sigmoid(gate[t])`.
pub struct Combine<'a> {
    pub x: &'a Buffer,
    pub y: &'a Buffer,
    pub weights: &'a Buffer,
    pub shared: Option<&'a Buffer>,
    pub gate: Option<&'a Buffer>,
    pub slot_pos: Option<&'a Buffer>,
    pub hidden: u32,
    pub top_k: u32,
}

/// [`Ctx::rope_scatter`]'s buffers and sizes.
pub struct RopeScatter<'a> {
    pub pairing: RopePairing,
    pub inv_freq: &'a Buffer,
    /// `[n, (n_q + 2 · n_k) · head_dim]`: a stacked matmul's output.
    pub qkv: &'a Buffer,
    pub q: &'a Buffer,
    pub k_cache: &'a Buffer,
    pub v_cache: &'a Buffer,
    pub head_dim: u32,
    pub n_q: u32,
    pub n_k: u32,
    /// The caches are f16.
    pub half_kv: bool,
    /// q's and k's per-head RMSNorm weights (`[head_dim]` each), and epsilon.
    pub norm: Option<(&'a Buffer, &'a Buffer, f32)>,
}

/// What every launcher needs: the device and the shared step uniform.
pub struct Ctx<'a> {
    pub gpu: &'a Gpu,
    pub step: &'a Buffer,
    pub shape: MatmulShape,
    /// Use subgroup operations (only when the device has them).
    pub subgroups: bool,
}

impl<'a> Ctx<'a> {
    /// The device's own choices: its matmul shape, subgroups when present.
    pub fn new(gpu: &'a Gpu, step: &'a Buffer) -> Self {
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

/// The matmul parameters of chunk `c` of `w`, x rows `x_stride` apart; the
/// other fields zero (and one slot per token): each entry sets its own.
fn chunk_params(w: &GpuMatrix, c: &Chunk, x_stride: u32) -> MatmulParams {
    MatmulParams { rows: c.rows, cols: w.cols, x_stride, scale_offset: c.scale_offset(), x_div: 1, top_k: 1, ..Default::default() }
}

/// A weight chunk's bindings: its quant plane at `quads` and its scale
/// plane, where the format has one (`has_scales`), at `scales` (a buffer's
/// two planes are the buffer twice); then `others`.
fn chunk_bindings<'b>(c: &'b Chunk, [quads, scales]: [u32; 2], has_scales: bool, others: &[(u32, &'b Buffer)]) -> Vec<(u32, wgpu::BindingResource<'b>)> {
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

/// A matmul's bindings for weight chunk `c`: its planes, x, y.
fn matmul_bindings<'b>(c: &'b Chunk, x: &'b Buffer, y: &'b Buffer, has_scales: bool) -> Vec<(u32, wgpu::BindingResource<'b>)> {
    use binding::matmul::{SCALES, W, X, Y};
    chunk_bindings(c, [W, SCALES], has_scales, &[(X, x), (Y, y)])
}

impl Ctx<'_> {
    /// Thread-per-row kernels with subgroups of at least 8 lanes, which share
    /// loads across a subgroup (CPU adapters: a subgroup is one SIMD
    /// register's lanes; see matmul_thread.wgsl and attention.wgsl).
    fn lane_subgroups(&self) -> bool {
        self.subgroups && self.shape == MatmulShape::RowPerThread && self.gpu.info.subgroup_min_size >= 8
    }

    fn attention_kernel(&self, a: &AttentionShape) -> AttentionKernel {
        let (min_sg, max_sg) = (self.gpu.info.subgroup_min_size, self.gpu.info.subgroup_max_size);
        // The CPU adapters' kernels read heads in chunks of 8 elements.
        let chunked = a.head_dim % 8 == 0 && a.v_dim % 8 == 0;
        if self.shape == MatmulShape::RowPerWorkgroup || !chunked {
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

    /// An op binding `buffers` at their numbers.
    fn op(&self, name: String, key: PipelineKey, params: &impl Uniform, buffers: &[(u32, &Buffer)], grid: Grid) -> Result<Op> {
        let bound: Vec<_> = buffers.iter().map(|(i, b)| (*i, b.as_entire_binding())).collect();
        self.op_bound(name, key, params, bound, grid)
    }

    /// As `op`, with any binding resources (a weight's texture).
    fn op_bound(&self, name: String, key: PipelineKey, params: &impl Uniform, bound: Vec<(u32, wgpu::BindingResource<'_>)>, grid: Grid) -> Result<Op> {
        let pipeline = self.gpu.pipeline(&key)?;
        let params = self.gpu.uniform(&format!("{name} params"), params.bytes());
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

    /// `w` must have been placed for the kernel shape it runs on: its rows
    /// in the layout that shape reads.
    fn check_layout(&self, w: &GpuMatrix) -> Result<()> {
        if !w.quad_texture() && w.row_group != self.shape.row_group(w.dtype) {
            return Err(Error::Gpu(format!(
                "{}: its rows lie in groups of {}, but the {:?} kernels read groups of {}; place it with Placement::new for the shape it runs on",
                w.name,
                w.row_group,
                self.shape,
                self.shape.row_group(w.dtype)
            )));
        }
        Ok(())
    }

    /// A weight's format flag (and textures'), once its layout is checked
    /// against the kernel shape.
    fn weight_flags(&self, w: &GpuMatrix) -> Result<Vec<Flag>> {
        format_flag(w.dtype)?;
        self.check_layout(w)?;
        let mut flags = vec![Flag::Format(w.dtype)];
        if w.quad_texture() {
            flags.push(Flag::QuadTexture);
        }
        Ok(flags)
    }

    /// What every matmul over `w` shares: its flags (format, subgroups; the
    /// kernel shape is the family, `Kernel::Matmul(self.shape)`), threads
    /// per workgroup, and whether the weight has a scale plane to bind.
    fn matmul_variant(&self, w: &GpuMatrix) -> Result<(Vec<Flag>, u32, bool)> {
        let mut flags = self.weight_flags(w)?;
        if (self.subgroups && self.shape == MatmulShape::RowPerWorkgroup) || self.lane_subgroups() {
            flags.push(Flag::Subgroups);
            if cfg!(target_arch = "wasm32") {
                flags.push(Flag::EnableSubgroups);
            }
        }
        let wg = match self.shape {
            MatmulShape::RowPerThread => baleen_shaders::thread_wg(self.lane_subgroups()),
            MatmulShape::RowPerWorkgroup => 1,
        };
        Ok((flags, wg, super::weights::layout(w.dtype)?.scale_words > 0))
    }

    /// Rows a thread of the single-token matmul over `w` computes.
    fn shared_rows(&self, w: &GpuMatrix) -> u32 {
        match self.shape {
            MatmulShape::RowPerThread => baleen_shaders::shared_rows(self.lane_subgroups(), w.quad_texture(), w.dtype.name()),
            MatmulShape::RowPerWorkgroup => 1,
        }
    }

    /// Passes of one token: `out = swiglu(W x)` in one dispatch, W stacking
    /// the gate's rows over the up projection's, in one chunk (the matmul's
    /// `glu` entry, on either shape). `None` where that does not hold: the
    /// caller runs the matmul and `swiglu`.
    pub fn matmul_swiglu(&self, name: &str, w: &GpuMatrix, x: &Buffer, x_stride: u32, out: &Buffer) -> Result<Option<Op>> {
        let [c] = w.chunks.as_slice() else { return Ok(None) };
        if w.rows % 2 != 0 {
            return Ok(None);
        }
        let (flags, wg, has_scales) = self.matmul_variant(w)?;
        let params = MatmulParams { y_stride: w.rows / 2, single: 1, ..chunk_params(w, c, x_stride) };
        let bound = matmul_bindings(c, x, out, has_scales);
        let key = PipelineKey::new(Kernel::Matmul(self.shape), "glu", flags);
        let grid = Grid::PerToken { x: w.rows / 2, wg, tile: 1, single: true, shared_rows: (self.shared_rows(w) / 2).max(1) };
        Ok(Some(self.op_bound(name.into(), key, &params, bound, grid)?.only(Passes::Single)))
    }

    /// [`Matmul`] over `w`: one op per row chunk (and per kind of pass).
    pub fn matmul(&self, w: &GpuMatrix, m: Matmul) -> Result<Vec<Op>> {
        let (mut flags, wg, has_scales) = self.matmul_variant(w)?;
        if m.bias.is_some() {
            flags.push(Flag::Bias);
        }
        if m.acc {
            flags.push(Flag::Acc);
        }
        let shared_rows = self.shared_rows(w);
        // Passes of several tokens take a GEMM entry: on the workgroup shape
        // a tiled one, on the thread shape with subgroups 4 rows × 4 tokens
        // a thread, without them the decode GEMV per token. `gemm_tile`:
        // its (rows, tokens) per workgroup.
        let gemm_tile = if m.single {
            None
        } else if self.shape == MatmulShape::RowPerWorkgroup {
            Some((shape::GEMM_ROWS, shape::GEMM_TOKENS))
        } else if self.lane_subgroups() {
            Some((wg * shape::LANE_TILE, shape::LANE_TILE))
        } else {
            Some((wg * shared_rows, 1))
        };
        let mut ops = Vec::new();
        for c in &w.chunks {
            let params = MatmulParams {
                row_offset: m.row_offset + c.row_start,
                y_stride: m.y_stride,
                single: m.single as u32,
                ..chunk_params(w, c, m.x_stride)
            };
            let mut bound = matmul_bindings(c, m.x, m.y, has_scales);
            bound.extend(m.bias.map(|b| (binding::matmul::BIAS, b.as_entire_binding())));
            let name = format!("{} rows {}..", w.name, c.row_start);
            // `main` computes one token (passes of one, or `single`).
            let main = self.op_bound(
                name.clone(),
                PipelineKey::new(Kernel::Matmul(self.shape), "main", flags.clone()),
                &params,
                bound.clone(),
                Grid::PerToken { x: c.rows, wg, tile: 1, single: m.single, shared_rows },
            )?;
            let Some((tile_rows, tile_tokens)) = gemm_tile else {
                ops.push(main);
                continue;
            };
            ops.push(main.only(Passes::Single));
            ops.push(
                self.op_bound(
                    format!("{name} (tiled)"),
                    PipelineKey::new(Kernel::Matmul(self.shape), "gemm", flags.clone()),
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
    /// `y[s] = W[ids[s]] · x[s / x_div]`; one op per chunk (chunks hold
    /// whole experts).
    pub fn experts(&self, w: &GpuMatrix, e: ExpertMatmul, x_div: u32, ids: &Buffer, top_k: u32) -> Result<Vec<Op>> {
        let grid = |wg| Grid::PerSlot { x: e.expert_rows, wg, slots_per_token: top_k };
        self.expert_chunks(w, "experts", e, MatmulParams { x_div, top_k, ..Default::default() }, (binding::matmul::IDS, ids), grid)
    }

    /// The routed experts of a pass of several tokens, grouped: tile i of
    /// `tiles` (from [`Ctx::moe_sort`]) runs its expert's rows over rows
    /// `TILE_T·i …` of `x` into the same rows of `y`. One op per chunk
    /// (chunks hold whole experts).
    pub fn grouped(&self, w: &GpuMatrix, e: ExpertMatmul, tiles: &Buffer, m: &Moe) -> Result<Vec<Op>> {
        let grid = |wg| Grid::ExpertTiles { x: e.expert_rows, wg, slots_per_token: m.top_k as u32, experts: m.n_experts as u32 };
        let params = MatmulParams { x_div: 0, top_k: m.top_k as u32, ..Default::default() };
        self.expert_chunks(w, "grouped", e, params, (binding::matmul::TILES, tiles), grid)
    }

    /// One op per chunk of an experts' weight for the matmul's `entry`:
    /// `slots` gives the entry's `x_div` and `top_k`; `schedule` binds the
    /// expert ids or the tiles.
    fn expert_chunks(&self, w: &GpuMatrix, entry: &'static str, e: ExpertMatmul, slots: MatmulParams, schedule: (u32, &Buffer), grid: impl Fn(u32) -> Grid) -> Result<Vec<Op>> {
        let (mut flags, wg, has_scales) = self.matmul_variant(w)?;
        if e.slot_of.is_some() {
            flags.push(Flag::Paged);
        }
        w.chunks
            .iter()
            .map(|c| {
                let params = MatmulParams {
                    row_offset: c.row_start,
                    expert_rows: e.expert_rows,
                    x_div: slots.x_div,
                    top_k: slots.top_k,
                    ..chunk_params(w, c, e.x_stride)
                };
                let mut bound = matmul_bindings(c, e.x, e.y, has_scales);
                bound.push((schedule.0, schedule.1.as_entire_binding()));
                bound.extend(e.slot_of.map(|b| (binding::matmul::SLOT_OF, b.as_entire_binding())));
                let key = PipelineKey::new(Kernel::Matmul(self.shape), entry, flags.clone());
                self.op_bound(format!("{} {entry} rows {}..", w.name, c.row_start), key, &params, bound, grid(wg))
            })
            .collect()
    }

    /// The grouped experts' schedule: the pass's slots by expert in `tiles`
    /// `[expert_tiles]` of (expert, count), slot s at row `slot_pos[s]`;
    /// `counts` `[n_experts]` is scratch.
    pub fn moe_sort(&self, name: &str, m: &Moe, ids: &Buffer, slot_pos: &Buffer, tiles: &Buffer, counts: &Buffer) -> Result<Op> {
        use binding::moe::{COUNTS, IDS, SLOT_POS, TILES};
        let params = MoeParams { n_experts: m.n_experts as u32, top_k: m.top_k as u32, ..Default::default() };
        let key = PipelineKey::new(Kernel::Moe, "sort", vec![]);
        self.op(name.into(), key, &params, &[(IDS, ids), (SLOT_POS, slot_pos), (TILES, tiles), (COUNTS, counts)], Grid::Fixed([1, 1, 1]))
    }

    /// `y[slot_pos[s]] = x[s / top_k]`: each slot's token row, at its row.
    pub fn moe_gather(&self, name: &str, x: &Buffer, slot_pos: &Buffer, y: &Buffer, hidden: u32, top_k: u32) -> Result<Op> {
        use binding::moe::{SLOT_POS, SORTED, X};
        let params = MoeParams { top_k, hidden, ..Default::default() };
        let key = PipelineKey::new(Kernel::Moe, "gather", vec![]);
        self.op(name.into(), key, &params, &[(X, x), (SLOT_POS, slot_pos), (SORTED, y)], Grid::Flat { per_token: hidden * top_k, wg: shape::ELEMENTWISE_WG })
    }

    /// Choose each token's experts: `ids`, `weights` `[n_tokens, top_k]` from
    /// the router's `logits` `[n_tokens, n_experts]`.
    pub fn route(&self, name: &str, m: &Moe, logits: &Buffer, bias: Option<&Buffer>, ids: &Buffer, weights: &Buffer) -> Result<Op> {
        use binding::moe::{BIAS, IDS, LOGITS, WEIGHTS};
        let flags = if bias.is_some() { vec![Flag::Bias] } else { vec![] };
        let params = MoeParams {
            n_experts: m.n_experts as u32,
            top_k: m.top_k as u32,
            groups: m.groups as u32,
            topk_groups: m.topk_groups as u32,
            sigmoid: (m.scoring == Scoring::Sigmoid) as u32,
            top_two_sum: (m.group_score == GroupScore::TopTwoSum) as u32,
            norm_topk: m.norm_topk as u32,
            scale: m.scale,
            ..Default::default()
        };
        let mut bufs = vec![(LOGITS, logits), (IDS, ids), (WEIGHTS, weights)];
        bufs.extend(bias.map(|b| (BIAS, b)));
        let key = PipelineKey::new(Kernel::Moe, "route", flags);
        self.op(name.into(), key, &params, &bufs, Grid::Flat { per_token: 1, wg: shape::ELEMENTWISE_WG })
    }

    /// [`Combine`]: the routed (and shared) experts' outputs into `x`.
    pub fn moe_combine(&self, name: &str, c: Combine) -> Result<Op> {
        use binding::moe::{GATE, SHARED_OUT, SLOT_POS, WEIGHTS, X, Y};
        let mut flags = if c.gate.is_some() { vec![Flag::SharedGate] } else { vec![] };
        if c.slot_pos.is_some() {
            flags.push(Flag::Permuted);
        }
        let params = MoeParams { top_k: c.top_k, hidden: c.hidden, has_shared: c.shared.is_some() as u32, ..Default::default() };
        // Without a shared expert the binding still needs a buffer; it is not read.
        let mut bufs = vec![(WEIGHTS, c.weights), (X, c.x), (Y, c.y), (SHARED_OUT, c.shared.unwrap_or(c.y))];
        bufs.extend(c.gate.map(|g| (GATE, g)));
        bufs.extend(c.slot_pos.map(|s| (SLOT_POS, s)));
        let key = PipelineKey::new(Kernel::Moe, "combine", flags);
        self.op(name.into(), key, &params, &bufs, Grid::Flat { per_token: c.hidden, wg: shape::ELEMENTWISE_WG })
    }

    /// MLA: the latent cache row of each new token, `[RMSNorm(c) ; RoPE(k_pe)]`
    /// from `kv_a` `[n_tokens, rank + rope]`.
    pub fn mla_kv_cache(&self, name: &str, m: &MlaShape, inv_freq: &Buffer, kv_a: &Buffer, norm: &Buffer, cache: &Buffer) -> Result<Op> {
        use binding::mla::{DST, INV_FREQ, SRC, W};
        // A thread per token on CPU adapters, a workgroup per token on GPUs.
        let mut key = m.key("kv_cache");
        let per_token = if self.shape == MatmulShape::RowPerWorkgroup {
            key.flags.push(Flag::Workgroup);
            shape::ELEMENTWISE_WG
        } else {
            1
        };
        let bufs = [(INV_FREQ, inv_freq), (SRC, kv_a), (W, norm), (DST, cache)];
        self.op(name.into(), key, &m.params(), &bufs, Grid::Flat { per_token, wg: shape::ELEMENTWISE_WG })
    }

    /// MLA: absorbed queries `q_lat` `[n_tokens, heads, rank + rope]` from `q`
    /// `[n_tokens, heads, nope + rope]` and `W_kvb` (f32, [`crate::model::mla_kv_b`]).
    pub fn mla_absorb_q(&self, name: &str, m: &MlaShape, inv_freq: &Buffer, q: &Buffer, kv_b: &Buffer, q_lat: &Buffer) -> Result<Op> {
        use binding::mla::{DST, INV_FREQ, SRC, W};
        let grid = Grid::AttnCombine { heads: m.heads, head_dim: m.rank + m.rope, wg: shape::ELEMENTWISE_WG };
        self.op(name.into(), m.key("absorb_q"), &m.params(), &[(INV_FREQ, inv_freq), (SRC, q), (W, kv_b), (DST, q_lat)], grid)
    }

    /// MLA: each head's output `W_uv,h · õ_h` `[n_tokens, heads · v]` from the
    /// latent attention output `[n_tokens, heads · rank]` and `W_kvb` (f32).
    pub fn mla_v_up(&self, name: &str, m: &MlaShape, o_lat: &Buffer, kv_b: &Buffer, out: &Buffer) -> Result<Op> {
        use binding::mla::{DST, SRC, W};
        let grid = Grid::AttnCombine { heads: m.heads, head_dim: m.v_dim, wg: shape::ELEMENTWISE_WG };
        self.op(name.into(), m.key("v_up"), &m.params(), &[(SRC, o_lat), (W, kv_b), (DST, out)], grid)
    }

    /// `out[t] = W[ids[t]]`, one op per row chunk of the embedding.
    pub fn embed(&self, w: &GpuMatrix, ids: &Buffer, out: &Buffer) -> Result<Vec<Op>> {
        use binding::embed::{IDS, OUT, SCALES, W};
        // embed.wgsl's shape flag names the layout of the rows.
        let mut flags = self.weight_flags(w)?;
        flags.push(Flag::Shape(self.shape));
        let has_scales = super::weights::layout(w.dtype)?.scale_words > 0;
        w.chunks
            .iter()
            .map(|c| {
                let params = EmbedParams { rows: c.rows, cols: w.cols, row_start: c.row_start, scale_offset: c.scale_offset() };
                self.op_bound(
                    format!("{} rows {}..", w.name, c.row_start),
                    PipelineKey::new(Kernel::Embed, "main", flags.clone()),
                    &params,
                    chunk_bindings(c, [W, SCALES], has_scales, &[(IDS, ids), (OUT, out)]),
                    Grid::PerToken { x: w.cols / 32, wg: shape::ELEMENTWISE_WG, tile: 1, single: false, shared_rows: 1 },
                )
            })
            .collect()
    }

    /// RMSNorm of each token's row (or only the last token's, into row 0).
    pub fn rms_norm(&self, name: &str, x: &Buffer, w: &Buffer, out: &Buffer, cols: u32, eps: f32, last_only: bool) -> Result<Op> {
        self.norm_op(name, x, w, out, cols, eps, last_only, vec![])
    }

    /// `out += RMSNorm(x) · w`, each token's row.
    pub fn rms_norm_add(&self, name: &str, x: &Buffer, w: &Buffer, out: &Buffer, cols: u32, eps: f32) -> Result<Op> {
        self.norm_op(name, x, w, out, cols, eps, false, vec![Flag::Acc])
    }

    #[allow(clippy::too_many_arguments)]
    fn norm_op(&self, name: &str, x: &Buffer, w: &Buffer, out: &Buffer, cols: u32, eps: f32, last_only: bool, mut flags: Vec<Flag>) -> Result<Op> {
        use binding::norm::{OUT, W, X};
        // A thread per row on CPU adapters, a workgroup per row on GPUs.
        let per_row = if self.shape == MatmulShape::RowPerWorkgroup {
            flags.push(Flag::Workgroup);
            shape::ELEMENTWISE_WG
        } else {
            1
        };
        let grid = if last_only { Grid::Fixed([1, 1, 1]) } else { Grid::Flat { per_token: per_row, wg: shape::ELEMENTWISE_WG } };
        let params = NormParams { cols, last_only: last_only as u32, eps, pad: 0 };
        self.op(name.into(), PipelineKey::new(Kernel::Norm, "main", flags), &params, &[(X, x), (W, w), (OUT, out)], grid)
    }

    /// q, k and v of each token from one row of `qkv` (a stacked matmul's
    /// output): q roped into `q`, k roped into the k cache, v copied into the
    /// v cache, at the pass position (the caches f16 with `half_kv`).
    pub fn rope_scatter(&self, name: &str, r: RopeScatter) -> Result<Op> {
        use binding::rope::{INV_FREQ, K, K_NORM, Q, QKV, Q_NORM, V};
        let mut flags = vec![Flag::Pairing(r.pairing)];
        if r.half_kv {
            flags.push(Flag::HalfK);
        }
        let mut bufs = vec![(INV_FREQ, r.inv_freq), (Q, r.q), (K, r.k_cache), (V, r.v_cache), (QKV, r.qkv)];
        let mut eps = 0.0;
        if let Some((q_norm, k_norm, e)) = r.norm {
            flags.push(Flag::QkNorm);
            bufs.extend([(Q_NORM, q_norm), (K_NORM, k_norm)]);
            eps = e;
        }
        let ring = cache_rows(name, r.k_cache, (r.n_k * r.head_dim) as u64 * if r.half_kv { 2 } else { 4 })?;
        let params = RopeParams { head_dim: r.head_dim, n_q_heads: r.n_q, n_k_heads: r.n_k, eps, ring, ..Default::default() };
        let x = (r.n_q + r.n_k) * r.head_dim / 2 + r.n_k * r.head_dim;
        let grid = Grid::PerToken { x, wg: shape::ELEMENTWISE_WG, tile: 1, single: false, shared_rows: 1 };
        self.op(name.into(), PipelineKey::new(Kernel::Rope, "scatter", flags), &params, &bufs, grid)
    }

    /// Causal attention over the cache: split partials, then combine. With
    /// MLA the latent row is the key and its first `rank` values the value.
    pub fn attention(&self, name: &str, b: AttentionBuffers, a: &AttentionShape, max_splits: u32, half_kv: bool) -> Result<[Op; 2]> {
        use binding::attention::{K_CACHE, OUT, PART_ML, PART_O, Q, V_CACHE};
        let mut flags = if half_kv { vec![Flag::HalfKv] } else { vec![] };
        if a.latent {
            flags.push(Flag::Latent);
        }
        let (per_item, wg) = match self.attention_kernel(a) {
            AttentionKernel::Workgroup => {
                flags.push(Flag::Workgroup);
                (shape::ATTENTION_SPLIT, shape::ATTENTION_SPLIT)
            }
            AttentionKernel::Subgroup { lanes } => {
                flags.push(Flag::Subgroups);
                (lanes, shape::ATTENTION_WG)
            }
            AttentionKernel::Thread => (1, shape::ATTENTION_WG),
        };
        let split = self.attention_split(a);
        let params = AttentionParams {
            n_heads: a.n_heads,
            n_kv_heads: a.n_kv_heads,
            head_dim: a.head_dim,
            split_len: split,
            max_splits,
            scale: a.scale,
            v_dim: a.v_dim,
            window: a.window,
            ring: cache_rows(name, b.k_cache, (a.n_kv_heads * a.head_dim) as u64 * if half_kv { 2 } else { 4 })?,
            ..Default::default()
        };
        Ok([
            self.op(
                format!("{name} partial"),
                PipelineKey::new(Kernel::Attention, "partial", flags.clone()),
                &params,
                &[(Q, b.q), (K_CACHE, b.k_cache), (V_CACHE, b.v_cache), (PART_ML, b.part_ml), (PART_O, b.part_o), (OUT, b.out)],
                Grid::AttnPartial { heads: a.n_heads, wg, split, per_item, window: a.window },
            )?,
            self.op(
                format!("{name} combine"),
                PipelineKey::new(Kernel::Attention, "combine", flags),
                &params,
                &[(PART_ML, b.part_ml), (PART_O, b.part_o), (OUT, b.out)],
                Grid::AttnCombine { heads: a.n_heads, head_dim: a.v_dim, wg },
            )?
            // One split holds the whole context: `partial` wrote the output.
            .only(Passes::AttnSplits { split, window: a.window }),
        ])
    }

    /// out = silu(gate) ⊙ up over `rows_per_token` rows of `cols` per token
    /// (1, or the routed experts' slots).
    pub fn swiglu(&self, name: &str, gate_up: GateUp, out: &Buffer, cols: u32, rows_per_token: u32) -> Result<Op> {
        let grid = Grid::Flat { per_token: cols * rows_per_token, wg: shape::ELEMENTWISE_WG };
        self.swiglu_op(name, gate_up, out, cols, rows_per_token, grid)
    }

    /// SwiGLU over the grouped experts' tile rows (as many as `out` holds,
    /// launched for the pass's tiles).
    pub fn swiglu_tiles(&self, name: &str, gate_up: GateUp, out: &Buffer, cols: u32, m: &Moe) -> Result<Op> {
        let grid = Grid::TileRows { per_row: cols, wg: shape::ELEMENTWISE_WG, slots_per_token: m.top_k as u32, experts: m.n_experts as u32 };
        self.swiglu_op(name, gate_up, out, cols, 0, grid)
    }

    /// out = gelu_tanh(gate) ⊙ up over each token's row of `cols` (GeGLU).
    pub fn geglu(&self, name: &str, gate_up: GateUp, out: &Buffer, cols: u32) -> Result<Op> {
        let grid = Grid::Flat { per_token: cols, wg: shape::ELEMENTWISE_WG };
        self.glu_op(name, gate_up, out, cols, 1, grid, vec![Flag::Gelu])
    }

    fn swiglu_op(&self, name: &str, gate_up: GateUp, out: &Buffer, cols: u32, rows_per_token: u32, grid: Grid) -> Result<Op> {
        self.glu_op(name, gate_up, out, cols, rows_per_token, grid, vec![])
    }

    #[allow(clippy::too_many_arguments)]
    fn glu_op(&self, name: &str, gate_up: GateUp, out: &Buffer, cols: u32, rows_per_token: u32, grid: Grid, flags: Vec<Flag>) -> Result<Op> {
        use binding::elementwise::{GATE, OUT, UP};
        let (gate, up, stacked) = match gate_up {
            GateUp::Apart(gate, up) => (gate, up, 0),
            GateUp::Stacked(both) => (both, both, 1),
        };
        let params = ElementwiseParams { cols, rows_per_token, stacked, factor: 0.0 };
        let key = PipelineKey::new(Kernel::Elementwise, "swiglu", flags);
        self.op(name.into(), key, &params, &[(GATE, gate), (UP, up), (OUT, out)], grid)
    }

    /// `x *= factor` over each token's row of `cols` (or row 0 only, `single`).
    pub fn scale(&self, name: &str, x: &Buffer, cols: u32, single: bool, factor: f32) -> Result<Op> {
        let key = PipelineKey::new(Kernel::Elementwise, "scale", vec![]);
        let grid = if single { Grid::Fixed([cols.div_ceil(shape::ELEMENTWISE_WG), 1, 1]) } else { Grid::Flat { per_token: cols, wg: shape::ELEMENTWISE_WG } };
        let params = ElementwiseParams { cols, rows_per_token: !single as u32, stacked: 0, factor };
        self.op(name.into(), key, &params, &[(binding::elementwise::OUT, x)], grid)
    }

    /// The step's penalties and biases on `logits`, in place, from
    /// `penalized`'s (token, count, bias) entries (in steps that have some).
    pub fn penalize(&self, logits: &Buffer, penalized: &Buffer, vocab: u32) -> Result<Op> {
        use binding::sample::{LOGITS, PENALIZED};
        let params = SampleParams { vocab, ..Default::default() };
        let grid = Grid::Fixed([shape::MAX_PENALIZED.div_ceil(shape::SAMPLE_WG), 1, 1]);
        let op = self.op("penalize".into(), PipelineKey::new(Kernel::Sample, "penalize", vec![]), &params, &[(LOGITS, logits), (PENALIZED, penalized)], grid)?;
        Ok(op.only(Passes::Penalized))
    }

    /// Choose the next token from `logits` into `ids[0]` (and, in steps
    /// that ask, log-probabilities into `ids[out_at..]`).
    pub fn sample(&self, logits: &Buffer, ids: &Buffer, vocab: u32, out_at: u32) -> Result<Op> {
        use binding::sample::{IDS, LOGITS};
        let need = (out_at as u64 + 2 + 2 * crate::sample::MAX_TOP_LOGPROBS as u64) * 4;
        if ids.size() < need {
            return Err(Error::Gpu(format!("sample: the ids buffer holds {} bytes, its log-probabilities need {need}", ids.size())));
        }
        let params = SampleParams { vocab, out_at, ..Default::default() };
        self.op("sample".into(), PipelineKey::new(Kernel::Sample, "main", vec![]), &params, &[(LOGITS, logits), (IDS, ids)], Grid::Fixed([1, 1, 1]))
    }
}
