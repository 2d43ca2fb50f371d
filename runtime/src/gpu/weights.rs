//! Weights on the GPU: each block format split into a quant plane of aligned
//! 16-byte quads and a scale plane of u32 words (see `BlockLayout` in the
//! shaders crate and `dequant32` in shaders/wgsl/dequant.wgsl), so every
//! quant load is one aligned 16-byte read whatever the block size; rows split
//! into chunks that fit one binding.
//!
//! Which of a block's file bytes go to scale words, each its own, and which
//! to quads (the rest, in order) is the format's row of the block-format
//! table (`GpuBlock::scales` in the shaders crate): F32, F16, BF16 (groups
//! of 32 values), Q4_K and Q5_K have no scale words; Q6_K's is d, the
//! 32-value formats' d (and m, qh).
//!
//! Each plane holds a chunk's rows in groups of `row_group` rows (the last
//! padded with zero rows), item-major within a group: quad k of each of the
//! group's rows side by side, then quad k + 1; in the scale plane an item is
//! a block's scale words, read with one load ([`Placement`]). GPUs
//! (workgroup per row) take groups of 1, rows whole, so a workgroup's
//! threads read one row's quads side by side. CPU adapters (thread per row)
//! take groups of 8, a subgroup's lanes, so at each step the lanes read
//! neighbouring rows' quads from 128 contiguous bytes; Q6_K, which measured
//! slower so, keeps its rows whole there too (`row_group` in the shaders
//! crate). Quad k of every row of the matrix together, each load `rows`
//! quads from the last, was 2-3x slower.
//!
//! The thread-per-row kernels read quantised matrices from textures instead,
//! where the device allows ([`Placement`], [`Planes::Textures`]): on CPU
//! adapters a texel fetch serves every lane at once, where a storage load
//! is a loop over the lanes. There the layout is block-major, quad k of row
//! r at texel (r, k) (in bands of 4096 rows): at one step a subgroup's 8
//! lanes, 16 rows each, read 2 KiB that lie together. With the kernels' x
//! held in registers for 16 rows a thread (matmul_thread.wgsl), lavapipe's
//! decode GEMV of copy went Q4_0 0.53 → 0.82, Q4_K 0.53 → 0.96, Q6_K 0.56 →
//! 0.84; textures holding rows in groups of 8, as the buffers do, helped Q4_K
//! alone (BENCHMARKS.md, session 9).

use super::Gpu;
use crate::error::{Error, Result};
use crate::format::{TensorInfo, TensorReader};
use crate::quant::DType;
use baleen_shaders::shape::TEXTURE_ROWS;
use baleen_shaders::BlockLayout;
use std::ops::Range;

/// The WGSL flag naming a weight format (its name).
pub fn format_flag(dtype: DType) -> Result<&'static str> {
    layout(dtype).map(|_| dtype.name())
}

pub fn layout(dtype: DType) -> Result<BlockLayout> {
    dtype.format().layout().ok_or_else(|| Error::Unsupported(format!("tensor type {} on the GPU", dtype.name())))
}

/// Byte ranges of a block that are scale words (`GpuBlock::scales`).
fn scale_ranges(dtype: DType) -> &'static [Range<u32>] {
    dtype.format().gpu.map_or(&[], |g| g.scales)
}

/// File bytes of one layout block (32 values for the float types).
fn file_block_bytes(dtype: DType, l: &BlockLayout) -> usize {
    (l.block_values as u64 / dtype.block_size() * dtype.block_bytes()) as usize
}

/// Bytes of one repacked row of `cols` values (both planes).
pub fn repacked_row_bytes(dtype: DType, cols: u64) -> u64 {
    let l = layout(dtype).expect("a GPU weight format");
    cols / l.block_values as u64 * (l.quads as u64 * 16 + l.scale_words as u64 * 4)
}

/// Split one block's file bytes into its quads and scale words: each of
/// `scale_at` (ascending byte ranges) one word, zero-padded (an f16 d takes a
/// word); the bytes around them, in order, the quads.
fn split_block(scale_at: &[Range<u32>], b: &[u8], quads: &mut Vec<u8>, scales: &mut Vec<u8>) {
    let mut at = 0;
    for r in scale_at {
        let (start, end) = (r.start as usize, r.end as usize);
        quads.extend(&b[at..start]);
        let mut word = [0u8; 4];
        word[..end - start].copy_from_slice(&b[start..end]);
        scales.extend(word);
        at = end;
    }
    quads.extend(&b[at..]);
}

/// Repack `rows` whole rows: the quant plane, then the scale plane, each in
/// groups of `row_group` rows, the last padded with zero rows (see the
/// module's comment). Returns the bytes and the scale plane's offset in u32
/// words.
pub fn repack(dtype: DType, bytes: &[u8], rows: usize, row_group: usize) -> Result<(Vec<u8>, u32)> {
    let l = layout(dtype)?;
    let bb = file_block_bytes(dtype, &l);
    let (mut quads, mut scales) = (Vec::with_capacity(bytes.len()), Vec::new());
    let scale_at = scale_ranges(dtype);
    for block in bytes.chunks_exact(bb) {
        split_block(scale_at, block, &mut quads, &mut scales);
    }
    let mut packed = group_rows(quads, rows, 16, row_group);
    let offset = (packed.len() / 4) as u32;
    // A block's scale words stay together (one load: dequant.wgsl's ScaleUnit).
    packed.extend(group_rows(scales, rows, 4 * l.scale_words as usize, row_group));
    Ok((packed, offset))
}

/// A plane of `rows` rows of `unit`-byte items, item-major within each
/// group of `group` rows (item k of the group's rows side by side, then
/// item k + 1), the last group padded with zero rows.
fn group_rows(plane: Vec<u8>, rows: usize, unit: usize, group: usize) -> Vec<u8> {
    if group <= 1 || plane.is_empty() {
        return plane;
    }
    let row_bytes = plane.len() / rows;
    let padded = rows.div_ceil(group) * group;
    let mut out = Vec::with_capacity(padded * row_bytes);
    for first in (0..rows).step_by(group) {
        for k in (0..row_bytes).step_by(unit) {
            for r in first..first + group {
                if r < rows {
                    out.extend_from_slice(&plane[r * row_bytes + k..][..unit]);
                } else {
                    out.extend(std::iter::repeat_n(0u8, unit));
                }
            }
        }
    }
    out
}

/// A plane of `rows` whole rows as 16-byte texels, block-major in bands of
/// `TEXTURE_ROWS` rows ([`Planes::Textures`]): row r's bytes 16·j … (its
/// last texel zero-padded) at texel (r % TEXTURE_ROWS, (r / TEXTURE_ROWS) ·
/// h + j), h a row's texels. Returns the texels row by row and the width
/// and height.
fn texel_columns(plane: &[u8], rows: usize) -> (Vec<u8>, u32, u32) {
    let row_bytes = plane.len() / rows.max(1);
    let h = row_bytes.div_ceil(16);
    let width = rows.min(TEXTURE_ROWS as usize);
    let height = rows.div_ceil(width.max(1)) * h;
    let mut out = vec![0u8; width * height * 16];
    for r in 0..rows {
        let (x, y0) = (r % width, r / width * h);
        for (j, part) in plane[r * row_bytes..(r + 1) * row_bytes].chunks(16).enumerate() {
            out[((y0 + j) * width + x) * 16..][..part.len()].copy_from_slice(part);
        }
    }
    (out, width as u32, height as u32)
}

/// Where a matrix goes on the GPU: rows split into chunks of at most
/// `max_binding` bytes, laid out for the matmul `shape` that will read them
/// (rows grouped [`super::MatmulShape::row_group`] at a time).
///
/// With `texture_side`, a chunk's planes go to Rgba32Uint textures instead
/// ([`Planes::Textures`]), when the matrix fits textures of that side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub max_binding: u64,
    pub shape: super::MatmulShape,
    pub texture_side: Option<u32>,
}

impl Placement {
    /// Chunks in buffers only.
    pub fn new(shape: super::MatmulShape, max_binding: u64) -> Self {
        Placement { max_binding, shape, texture_side: None }
    }

    /// As `gpu` reads weights for `shape`: in textures for the
    /// thread-per-row kernels when `textures` (the device's choice,
    /// [`super::Gpu::quad_textures`], unless overridden).
    pub fn for_gpu(gpu: &Gpu, shape: super::MatmulShape, max_binding: u64, textures: bool) -> Self {
        let texture_side = (textures && shape == super::MatmulShape::RowPerThread).then_some(gpu.limits.max_texture_dimension_2d);
        Placement { max_binding, shape, texture_side }
    }

    /// The most rows of a `dtype` matrix of `cols` columns one texture
    /// holds (bands of `TEXTURE_ROWS` rows, as many as its side holds),
    /// where such matrices go to textures: placed so, quantised (F32, F16
    /// and BF16 read faster from buffers: lavapipe, decode GEMV of copy F32
    /// 1.15 → 0.59, F16 0.95 → 0.85 in textures), and a row's quads within
    /// the side. None: buffers.
    pub fn texture_rows(&self, dtype: DType, cols: u64) -> Option<u64> {
        let l = layout(dtype).ok()?;
        let quantised = dtype.format().quantised();
        let side = self.texture_side.filter(|&side| side >= TEXTURE_ROWS)? as u64;
        let height = cols / l.block_values as u64 * l.quads as u64;
        (quantised && height > 0 && height <= side).then(|| side / height * TEXTURE_ROWS as u64)
    }
}

/// File bytes of one row of `cols` values, once the GPU layout can hold such rows.
fn file_row_bytes(name: &str, dtype: DType, cols: u64) -> Result<u64> {
    let l = layout(dtype)?;
    if cols % l.block_values as u64 != 0 {
        return Err(Error::Unsupported(format!(
            "{name}: rows of {cols} values; the GPU kernels read {} in blocks of {} values",
            dtype.name(),
            l.block_values
        )));
    }
    Ok(cols / dtype.block_size() * dtype.block_bytes())
}

/// A weight matrix `[rows, cols]` on the GPU, in row chunks.
pub struct GpuMatrix {
    pub name: String,
    pub dtype: DType,
    pub rows: u32,
    pub cols: u32,
    /// Rows per group in each chunk's buffer layout (see [`Placement`]);
    /// 1 in textures.
    pub row_group: u32,
    pub chunks: Vec<Chunk>,
}

impl GpuMatrix {
    /// Whether the planes lie in textures (every chunk alike).
    pub fn quad_texture(&self) -> bool {
        self.chunks.first().is_some_and(|c| matches!(c.planes, Planes::Textures { .. }))
    }
}

impl Chunk {
    /// Where the scale plane starts in the chunk's buffer, in u32 words (0
    /// for textures).
    pub fn scale_offset(&self) -> u32 {
        match self.planes {
            Planes::Buffer { scale_offset, .. } => scale_offset,
            Planes::Textures { .. } => 0,
        }
    }
}

/// Where a chunk's planes lie.
pub enum Planes {
    /// The quant plane, then the scale plane from `scale_offset` u32 words,
    /// each in groups of the matrix's `row_group` rows.
    Buffer { buffer: wgpu::Buffer, scale_offset: u32 },
    /// Rgba32Uint textures, block-major in bands of `TEXTURE_ROWS` rows:
    /// quad k of the chunk's row r (`QUADS` a block) is texel (r %
    /// TEXTURE_ROWS, (r / TEXTURE_ROWS) · h + k) of `quads`, h a row's
    /// quads; texel j of its row in `scales` likewise holds the scale words
    /// of its blocks `4 / SCALE_WORDS · j …` (the last zero-padded; None for
    /// formats without scales). At each step a subgroup's lanes,
    /// neighbouring rows, read neighbouring texels, and the lanes' 16 rows
    /// each (`thread_row`) lie together: 2 KiB. On CPU adapters a texel
    /// fetch serves every lane at once, where a storage load is a loop over
    /// the lanes (see the shaders crate's comment).
    Textures { quads: wgpu::TextureView, scales: Option<wgpu::TextureView> },
}

pub struct Chunk {
    pub planes: Planes,
    pub row_start: u32,
    pub rows: u32,
}

/// Rows per chunk for a given placement: whole groups of rows within the
/// binding limit (also ≤ 65535: one workgroup row each); in `textures`,
/// rows whole, as many as a texture holds.
pub fn rows_per_chunk(dtype: DType, cols: u64, place: Placement, textures: bool) -> Result<u64> {
    let row = repacked_row_bytes(dtype, cols);
    let (group, texture_rows) = match place.texture_rows(dtype, cols) {
        Some(n) if textures => (1, n),
        _ => (place.shape.row_group(dtype) as u64, u64::MAX),
    };
    let n = (place.max_binding / row.max(1)).min(65535).min(texture_rows) / group * group;
    if n == 0 {
        return Err(Error::Unsupported(format!(
            "{group} rows of {cols} {} values ({} bytes: the GPU layout's group of rows) exceed the GPU's binding limit of {} bytes",
            dtype.name(),
            group * row,
            place.max_binding
        )));
    }
    Ok(n)
}

impl GpuMatrix {
    /// Upload raw file bytes (whole rows) of a `[rows, cols]` matrix.
    #[allow(clippy::too_many_arguments)]
    pub fn from_bytes(
        gpu: &Gpu,
        name: &str,
        dtype: DType,
        rows: u64,
        cols: u64,
        bytes: &[u8],
        place: Placement,
    ) -> Result<Self> {
        let file_row = file_row_bytes(name, dtype, cols)?;
        if bytes.len() as u64 != file_row * rows {
            return Err(Error::Input(format!("{name}: {} bytes for {rows} × {cols} {}", bytes.len(), dtype.name())));
        }
        let fetch = |start: u64, len: u64| std::future::ready(Ok(bytes[start as usize..(start + len) as usize].to_vec()));
        crate::support::run_ready(Self::upload(gpu, name, dtype, rows, cols, fetch, place, 1))
    }

    /// Read a tensor from `reader`, one chunk of rows at a time, and upload it.
    pub async fn load(
        gpu: &Gpu,
        reader: &impl TensorReader,
        t: &TensorInfo,
        place: Placement,
    ) -> Result<Self> {
        t.dtype.check_supported(&format!("tensor {:?}", t.name))?;
        let (rows, cols) = t.rows_cols();
        if t.nbytes != file_row_bytes(&t.name, t.dtype, cols)? * rows {
            return Err(Error::Input(format!("tensor {:?}: {} bytes for {rows} × {cols} {}", t.name, t.nbytes, t.dtype.name())));
        }
        let fetch = |start: u64, len: u64| reader.read_range(t, start, len);
        Self::upload(gpu, &t.name, t.dtype, rows, cols, fetch, place, 1).await
    }

    /// The routed experts' weight as one matrix of `experts · rows` rows: a
    /// stacked `[experts, rows, cols]` tensor (GGUF), or one `[rows, cols]`
    /// tensor per expert (Hugging Face). Chunks hold whole experts.
    pub async fn load_experts(
        gpu: &Gpu,
        reader: &impl TensorReader,
        tensors: &[&TensorInfo],
        experts: u64,
        rows: u64,
        cols: u64,
        place: Placement,
    ) -> Result<Self> {
        let first = check_experts(tensors, &[], experts, rows, cols)?;
        let name = first.name.replace(".0.", ".*.");
        Self::upload(gpu, &name, first.dtype, experts * rows, cols, stacked_bytes(reader, tensors), place, rows).await
    }

    /// The routed experts' gate and up (`gate`, `up`: one tensor holding
    /// every expert, or one per expert, as for [`GpuMatrix::load_experts`]),
    /// each expert's gate rows then its up rows: one matmul computes both,
    /// `2 · rows` rows per expert.
    #[allow(clippy::too_many_arguments)]
    pub async fn load_expert_pairs(
        gpu: &Gpu,
        reader: &impl TensorReader,
        gate: &[&TensorInfo],
        up: &[&TensorInfo],
        experts: u64,
        rows: u64,
        cols: u64,
        place: Placement,
    ) -> Result<Self> {
        if up.len() != gate.len() {
            return Err(Error::Config(format!("{} expert gate tensors but {} up tensors", gate.len(), up.len())));
        }
        let first = check_experts(gate, up, experts, rows, cols)?;
        let per_expert = file_row_bytes(&first.name, first.dtype, cols)? * rows;
        // Bytes of whole experts (chunks hold whole experts).
        let fetch = |start: u64, len: u64| async move {
            let mut out = Vec::with_capacity(len as usize);
            for e in start / (2 * per_expert)..(start + len) / (2 * per_expert) {
                out.extend(expert_pair_bytes(reader, gate, up, e, per_expert).await?);
            }
            Ok(out)
        };
        let name = format!("{}+up", first.name.replace(".0.", ".*."));
        Self::upload(gpu, &name, first.dtype, experts * 2 * rows, cols, fetch, place, 2 * rows).await
    }

    /// Matrices of one type and width, their rows one after another (q, k
    /// and v; gate and up): one matmul computes them all, in one dispatch.
    pub async fn load_stacked(gpu: &Gpu, reader: &impl TensorReader, tensors: &[&TensorInfo], name: &str, place: Placement) -> Result<Self> {
        let first = tensors.first().ok_or_else(|| Error::Config(format!("{name}: no tensors to stack")))?;
        let (_, cols) = first.rows_cols();
        let mut rows = 0;
        for t in tensors {
            t.dtype.check_supported(&format!("tensor {:?}", t.name))?;
            let (r, c) = t.rows_cols();
            if c != cols || t.dtype != first.dtype {
                return Err(Error::Config(format!("{name}: {:?} is {r} × {c} {}, not stackable under {:?} ({cols} columns of {})", t.name, t.dtype.name(), first.name, first.dtype.name())));
            }
            if t.nbytes != file_row_bytes(&t.name, t.dtype, c)? * r {
                return Err(Error::Input(format!("tensor {:?}: {} bytes for {r} × {c} {}", t.name, t.nbytes, t.dtype.name())));
            }
            rows += r;
        }
        Self::upload(gpu, name, first.dtype, rows, cols, stacked_bytes(reader, tensors), place, 1).await
    }

}

/// The first of one kind of expert tensors (`a`, then those of `b`, stored
/// alike), after checking each is supported and shaped as one holding every
/// expert (`[experts, rows, cols]`) or one expert (`[rows, cols]`), all of
/// the first's type.
pub(super) fn check_experts<'t>(a: &[&'t TensorInfo], b: &[&'t TensorInfo], experts: u64, rows: u64, cols: u64) -> Result<&'t TensorInfo> {
    let first = *a.first().ok_or_else(|| Error::Config("no expert tensors".into()))?;
    let want: &[u64] = if a.len() == 1 { &[experts, rows, cols] } else { &[rows, cols] };
    for t in a.iter().chain(b) {
        t.dtype.check_supported(&format!("tensor {:?}", t.name))?;
        if t.shape != want || t.dtype != first.dtype {
            return Err(Error::Config(format!(
                "expert tensor {:?} is {:?} {}; expected {want:?} {}",
                t.name,
                t.shape,
                t.dtype.name(),
                first.dtype.name()
            )));
        }
    }
    Ok(first)
}

/// Expert `e`'s `per_expert` file bytes of one kind of expert tensors (one
/// holding every expert, `[experts, rows, cols]`, or one each).
pub async fn expert_bytes(reader: &impl TensorReader, tensors: &[&TensorInfo], e: u64, per_expert: u64) -> Result<Vec<u8>> {
    match tensors {
        [all] => reader.read_range(all, e * per_expert, per_expert).await,
        each => {
            let t = each.get(e as usize).ok_or_else(|| Error::Config(format!("expert {e} of {} expert tensors", each.len())))?;
            reader.read_range(t, 0, per_expert).await
        }
    }
}

/// Expert `e`'s gate bytes, then its up bytes (`per_expert` each), as
/// [`GpuMatrix::load_expert_pairs`] stacks them.
pub async fn expert_pair_bytes(reader: &impl TensorReader, gate: &[&TensorInfo], up: &[&TensorInfo], e: u64, per_expert: u64) -> Result<Vec<u8>> {
    let mut out = expert_bytes(reader, gate, e, per_expert).await?;
    out.extend(expert_bytes(reader, up, e, per_expert).await?);
    Ok(out)
}

/// Bytes `start..start + len` of `tensors`' data laid end to end.
fn stacked_bytes<'a, R: TensorReader>(reader: &'a R, tensors: &'a [&'a TensorInfo]) -> impl Fn(u64, u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<u8>>> + 'a>> + 'a {
    move |start: u64, len: u64| {
        Box::pin(async move {
            let mut out = Vec::with_capacity(len as usize);
            let (end, mut at) = (start + len, 0u64);
            for t in tensors {
                let (lo, hi) = (start.max(at), end.min(at + t.nbytes));
                if lo < hi {
                    out.extend(reader.read_range(t, lo - at, hi - lo).await?);
                }
                at += t.nbytes;
            }
            Ok(out)
        })
    }
}

/// How [`GpuMatrix::upload`] lays a matrix out: planes in textures or
/// buffers, rows per group, rows per chunk.
struct Geometry {
    textures: bool,
    row_group: u32,
    per: u64,
}

fn geometry(name: &str, dtype: DType, cols: u64, place: Placement, align: u64) -> Result<Geometry> {
    // Textures where they hold an `align`-row group (an expert) in one chunk.
    let textures = place.texture_rows(dtype, cols).is_some_and(|n| n.min(65535) >= align);
    // (Textures keep rows whole.)
    let row_group = if textures { 1 } else { place.shape.row_group(dtype) };
    // Chunks of whole `align`-row groups (experts), within the binding
    // once padded to whole groups of the layout.
    let per = rows_per_chunk(dtype, cols, place, textures)? / align * align;
    if per == 0 {
        return Err(Error::Unsupported(format!("{name}: one expert of {align} rows exceeds the GPU's binding limit of {} bytes", place.max_binding)));
    }
    Ok(Geometry { textures, row_group, per })
}

impl GpuMatrix {
    /// An expert cache: `slots` zeroed slots of `align` rows each (one
    /// expert's), laid out as [`GpuMatrix::load_experts`] lays out resident
    /// experts, chunks holding whole slots, so that the same kernels read
    /// either. Each slot is filled by [`GpuMatrix::write_slot`].
    pub fn slots(gpu: &Gpu, name: &str, dtype: DType, slots: u64, align: u64, cols: u64, place: Placement) -> Result<Self> {
        file_row_bytes(name, dtype, cols)?;
        let g = geometry(name, dtype, cols, place, align)?;
        if align % g.row_group as u64 != 0 {
            return Err(Error::Unsupported(format!(
                "{name}: experts of {align} rows, not whole groups of {} rows (the GPU layout's); page them on the other kernel shape or keep them resident",
                g.row_group
            )));
        }
        let l = layout(dtype)?;
        let (quad_row, scale_row) = (cols / l.block_values as u64 * l.quads as u64 * 16, cols / l.block_values as u64 * l.scale_words as u64 * 4);
        let rows = slots * align;
        let mut chunks = Vec::new();
        let mut r = 0u64;
        while r < rows {
            let n = g.per.min(rows - r);
            let label = format!("{name} slots [{}..{})", r / align, (r + n) / align);
            let planes = if g.textures {
                let texture = |row_bytes: u64, label: &str| {
                    let (width, h) = (n.min(TEXTURE_ROWS as u64), row_bytes.div_ceil(16));
                    let height = n.div_ceil(width) * h;
                    gpu.texture_init(label, width as u32, height as u32, &vec![0u8; (width * height * 16) as usize])
                };
                let scales = if scale_row == 0 { None } else { Some(texture(scale_row, &format!("{label} scales"))?) };
                Planes::Textures { quads: texture(quad_row, &label)?, scales }
            } else {
                Planes::Buffer { buffer: gpu.storage(&label, n * (quad_row + scale_row))?, scale_offset: (n * quad_row / 4) as u32 }
            };
            chunks.push(Chunk { planes, row_start: r as u32, rows: n as u32 });
            r += n;
        }
        Ok(GpuMatrix { name: name.into(), dtype, rows: rows as u32, cols: cols as u32, row_group: g.row_group, chunks })
    }

    /// Write one expert's file bytes (`align` whole rows) into slot `slot`
    /// of an expert cache made by [`GpuMatrix::slots`].
    pub fn write_slot(&self, gpu: &Gpu, slot: u32, align: u32, bytes: &[u8]) -> Result<()> {
        let first = slot as u64 * align as u64;
        let c = self
            .chunks
            .iter()
            .find(|c| (c.row_start as u64..c.row_start as u64 + c.rows as u64).contains(&first))
            .ok_or_else(|| Error::Gpu(format!("{}: no slot {slot}", self.name)))?;
        let r0 = (first - c.row_start as u64) as usize;
        let (packed, scale_offset) = repack(self.dtype, bytes, align as usize, self.row_group as usize)?;
        let (quads, scales) = packed.split_at(scale_offset as usize * 4);
        match &c.planes {
            Planes::Buffer { buffer, scale_offset: chunk_scales } => {
                gpu.queue.write_buffer(buffer, (r0 * quads.len() / align as usize) as u64, quads);
                if !scales.is_empty() {
                    let at = *chunk_scales as usize * 4 + r0 * scales.len() / align as usize;
                    gpu.queue.write_buffer(buffer, at as u64, scales);
                }
            }
            Planes::Textures { quads: qv, scales: sv } => {
                let width = (c.rows as usize).min(TEXTURE_ROWS as usize);
                for (plane, view) in [(quads, Some(qv)), (scales, sv.as_ref())] {
                    let Some(view) = view.filter(|_| !plane.is_empty()) else { continue };
                    let row_bytes = plane.len() / align as usize;
                    // The slot's rows band by band (texel_columns' layout).
                    let mut a = r0;
                    while a < r0 + align as usize {
                        let b = (a / width + 1) * width;
                        let b = b.min(r0 + align as usize);
                        let (texels, w, h) = texel_columns(&plane[(a - r0) * row_bytes..(b - r0) * row_bytes], b - a);
                        gpu.queue.write_texture(
                            wgpu::TexelCopyTextureInfo {
                                texture: view.texture(),
                                mip_level: 0,
                                origin: wgpu::Origin3d { x: (a % width) as u32, y: (a / width) as u32 * h, z: 0 },
                                aspect: wgpu::TextureAspect::All,
                            },
                            &texels,
                            wgpu::TexelCopyBufferLayout { offset: 0, bytes_per_row: Some(w * 16), rows_per_image: Some(h) },
                            wgpu::Extent3d { width: w, height: h, depth_or_array_layers: 1 },
                        );
                        a = b;
                    }
                }
            }
        }
        Ok(())
    }

    /// Fetch (`fetch(start, len)`: bytes of the file's rows) and upload each
    /// chunk in turn, so no more than one chunk is held in memory.
    #[allow(clippy::too_many_arguments)]
    async fn upload<F: std::future::Future<Output = Result<Vec<u8>>>>(
        gpu: &Gpu,
        name: &str,
        dtype: DType,
        rows: u64,
        cols: u64,
        fetch: impl Fn(u64, u64) -> F,
        place: Placement,
        align: u64,
    ) -> Result<Self> {
        let file_row = file_row_bytes(name, dtype, cols)?;
        let Geometry { textures, row_group, per } = geometry(name, dtype, cols, place, align)?;
        let mut chunks = Vec::new();
        let mut r = 0u64;
        while r < rows {
            let n = per.min(rows - r);
            let part = fetch(r * file_row, n * file_row).await?;
            let label = format!("{name}[{r}..{}]", r + n);
            let (packed, scale_offset) = repack(dtype, &part, n as usize, row_group as usize)?;
            let planes = if textures {
                // Each plane's rows (whole) column by column. (A block's
                // scale words, 1 or 2, never straddle a texel.)
                let texture = |plane: &[u8], label: &str| {
                    let (texels, width, height) = texel_columns(plane, n as usize);
                    gpu.texture_init(label, width, height, &texels)
                };
                let (quads, scales) = packed.split_at(scale_offset as usize * 4);
                let scales = if scales.is_empty() { None } else { Some(texture(scales, &format!("{label} scales"))?) };
                Planes::Textures { quads: texture(quads, &label)?, scales }
            } else {
                Planes::Buffer { buffer: gpu.storage_init(&label, &packed)?, scale_offset }
            };
            chunks.push(Chunk { planes, row_start: r as u32, rows: n as u32 });
            r += n;
        }
        Ok(GpuMatrix { name: name.into(), dtype, rows: rows as u32, cols: cols as u32, row_group, chunks })
    }
}

#[cfg(test)]
mod tests {
    use super::{group_rows, rows_per_chunk, scale_ranges, split_block, texel_columns, Placement, TEXTURE_ROWS};
    use crate::quant::DType;

    #[test]
    fn blocks_split_into_quads_and_scale_words_as_the_table_says() {
        let split = |dtype: DType| {
            let block: Vec<u8> = (0..dtype.block_bytes() as u8).collect();
            let (mut quads, mut scales) = (Vec::new(), Vec::new());
            split_block(scale_ranges(dtype), &block, &mut quads, &mut scales);
            (quads, scales)
        };
        // Q5_0: [d: f16][qh: u32][qs: 16 bytes] → qs | d (a word), qh.
        let (quads, scales) = split(DType::Q5_0);
        assert_eq!(quads, (6..22).collect::<Vec<u8>>());
        assert_eq!(scales, [0, 1, 0, 0, 2, 3, 4, 5]);
        // Q6_K: [ql qh scales: 208 bytes][d: f16] → those 208 | d.
        let (quads, scales) = split(DType::Q6_K);
        assert_eq!(quads, (0..208).collect::<Vec<u8>>());
        assert_eq!(scales, [208, 209, 0, 0]);
        // Q4_K: all quads.
        assert_eq!(split(DType::Q4_K), ((0..144).collect(), vec![]));
        // Every format's quads and words make its layout's.
        for d in DType::ALL.into_iter().filter(|d| d.is_supported() && d.format().quantised()) {
            let l = super::layout(d).unwrap();
            let (quads, scales) = split(d);
            assert_eq!((quads.len(), scales.len()), (16 * l.quads as usize, 4 * l.scale_words as usize), "{d:?}");
        }
    }

    #[test]
    fn texel_columns_hold_a_row_each_the_last_texel_padded() {
        // 2 rows of 20 bytes: texel row 0 holds each row's first 16 bytes,
        // texel row 1 its last 4 and 12 zero bytes.
        let plane: Vec<u8> = (0..40).collect();
        let (texels, width, height) = texel_columns(&plane, 2);
        assert_eq!((width, height), (2, 2));
        assert_eq!(&texels[..16], &plane[..16]);
        assert_eq!(&texels[16..32], &plane[20..36]);
        assert_eq!(&texels[32..48], &[16, 17, 18, 19, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&texels[48..52], &plane[36..40]);
    }

    #[test]
    fn texel_columns_past_a_band_start_the_next_below() {
        // One 16-byte texel a row: row TEXTURE_ROWS + 1 is texel (1, 1).
        let rows = TEXTURE_ROWS as usize + 2;
        let plane: Vec<u8> = (0..rows * 16).map(|i| (i / 16) as u8).collect();
        let (texels, width, height) = texel_columns(&plane, rows);
        assert_eq!((width, height), (TEXTURE_ROWS, 2));
        let at = |x: usize, y: usize| texels[(y * width as usize + x) * 16];
        assert_eq!((at(1, 0), at(1, 1), at(2, 1)), (1, (TEXTURE_ROWS + 1) as u8, 0));
    }

    #[test]
    fn textures_hold_bands_as_many_as_the_side_allows() {
        use super::super::MatmulShape;
        let place = Placement { max_binding: 1 << 30, shape: MatmulShape::RowPerThread, texture_side: Some(8192) };
        // Q4_1 rows of 4096 values: 128 quads, 64 bands of 4096 rows.
        assert_eq!(place.texture_rows(DType::Q4_1, 4096), Some(64 * 4096));
        // Q4_K rows of 14336 values: 504 quads, 16 bands.
        assert_eq!(place.texture_rows(DType::Q4_K, 14336), Some(16 * 4096));
        // A row's quads past the side, float formats, no side: buffers.
        assert_eq!(place.texture_rows(DType::Q8_0, 32 * 4097), None);
        assert_eq!(place.texture_rows(DType::F16, 4096), None);
        assert_eq!(Placement { texture_side: None, ..place }.texture_rows(DType::Q4_1, 4096), None);
        // Chunks: at most 65535 rows; in textures, rows whole.
        assert_eq!(rows_per_chunk(DType::Q4_1, 4096, place, true).unwrap(), 65535);
        let small = Placement { texture_side: Some(4096), ..place };
        assert_eq!(small.texture_rows(DType::Q4_K, 14336), Some(8 * 4096));
        assert_eq!(rows_per_chunk(DType::Q4_K, 14336, small, true).unwrap(), 32768);
        assert_eq!(rows_per_chunk(DType::Q4_K, 14336, small, false).unwrap() % 8, 0);
    }

    #[test]
    fn rows_grouped_item_major_the_last_group_padded() {
        // 3 rows of two 2-byte items, groups of 2: rows a, b interleaved,
        // then row c beside a zero row.
        let plane = b"a0a1b0b1c0c1".to_vec();
        assert_eq!(group_rows(plane.clone(), 3, 2, 2), b"a0b0a1b1c0\0\0c1\0\0");
        assert_eq!(group_rows(plane.clone(), 3, 2, 4), b"a0b0c0\0\0a1b1c1\0\0");
        assert_eq!(group_rows(plane.clone(), 3, 2, 1), plane);
    }
}
