//! Weights on the GPU: block formats repacked so every field the kernels read
//! starts on a u32 word, split into row chunks that fit one binding.
//!
//! Repacked blocks (see `dequant32` in shaders/wgsl/dequant.wgsl):
//! - F32, F16, BF16, Q4_1, Q5_1, Q4_K, Q5_K: already word-aligned, unchanged;
//! - Q4_0, Q5_0, Q8_0: two zero bytes after the f16 scale `d`, so the
//!   quants that follow start a word (18 → 20, 22 → 24, 34 → 36 bytes);
//! - Q6_K: two zero bytes after the trailing `d` (210 → 212).

use super::Gpu;
use crate::error::{Error, Result};
use crate::format::{TensorIndex, TensorInfo};
use crate::quant::DType;

/// Where to insert the 2 padding bytes of a block, if anywhere.
fn pad_at(dtype: DType) -> Option<usize> {
    match dtype {
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 => Some(2),
        DType::Q6_K => Some(210),
        _ => None,
    }
}

/// The WGSL flag naming a weight format.
pub fn format_flag(dtype: DType) -> Result<&'static str> {
    let name = dtype.name();
    baleen_shaders::WEIGHT_FORMATS
        .iter()
        .find(|f| **f == name)
        .copied()
        .ok_or_else(|| Error::Unsupported(format!("tensor type {name} on the GPU")))
}

/// Bytes of one repacked row of `cols` values.
pub fn repacked_row_bytes(dtype: DType, cols: u64) -> u64 {
    let blocks = cols / dtype.block_size();
    blocks * (dtype.block_bytes() + if pad_at(dtype).is_some() { 2 } else { 0 })
}

/// Repack whole rows of `dtype` blocks into the GPU layout.
pub fn repack(dtype: DType, bytes: &[u8]) -> Vec<u8> {
    let Some(at) = pad_at(dtype) else { return bytes.to_vec() };
    let bb = dtype.block_bytes() as usize;
    let mut out = Vec::with_capacity(bytes.len() / bb * (bb + 2));
    for block in bytes.chunks_exact(bb) {
        out.extend_from_slice(&block[..at]);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&block[at..]);
    }
    out
}

/// `[rows, words]` u32 words → `[words, rows]`: word k of every row together.
pub fn interleave(packed: &[u8], rows: usize) -> Vec<u8> {
    let words: &[u32] = &bytemuck::cast_slice::<u8, u32>(packed);
    let per_row = words.len() / rows;
    let mut out = vec![0u32; words.len()];
    for r in 0..rows {
        for k in 0..per_row {
            out[k * rows + r] = words[r * per_row + k];
        }
    }
    bytemuck::cast_slice(&out).to_vec()
}

/// A weight matrix `[rows, cols]` on the GPU, in row chunks.
pub struct GpuMatrix {
    pub name: String,
    pub dtype: DType,
    /// Word k of every row of a chunk stored together (for thread-per-row kernels).
    pub interleaved: bool,
    pub rows: u32,
    pub cols: u32,
    pub chunks: Vec<Chunk>,
}

pub struct Chunk {
    pub buffer: wgpu::Buffer,
    pub row_start: u32,
    pub rows: u32,
}

/// Rows per chunk for a given binding limit (also ≤ 65535: one workgroup row each).
pub fn rows_per_chunk(dtype: DType, cols: u64, max_binding: u64) -> Result<u64> {
    let row = repacked_row_bytes(dtype, cols);
    let n = (max_binding / row.max(1)).min(65535);
    if n == 0 {
        return Err(Error::Unsupported(format!(
            "a single row of {cols} {} values ({row} bytes) exceeds the GPU's binding limit of {max_binding} bytes",
            dtype.name()
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
        max_binding: u64,
        interleaved: bool,
    ) -> Result<Self> {
        format_flag(dtype)?;
        if cols % 32 != 0 || cols % dtype.block_size() != 0 {
            return Err(Error::Unsupported(format!(
                "{name}: rows of {cols} values; the GPU kernels need a multiple of 32 (and of {}'s block)",
                dtype.name()
            )));
        }
        let file_row = (cols / dtype.block_size() * dtype.block_bytes()) as usize;
        if bytes.len() != file_row * rows as usize {
            return Err(Error::Input(format!("{name}: {} bytes for {rows} × {cols} {}", bytes.len(), dtype.name())));
        }
        let per = rows_per_chunk(dtype, cols, max_binding)?;
        let mut chunks = Vec::new();
        let mut r = 0u64;
        while r < rows {
            let n = per.min(rows - r);
            let part = &bytes[r as usize * file_row..(r + n) as usize * file_row];
            let mut packed = repack(dtype, part);
            if interleaved {
                packed = interleave(&packed, n as usize);
            }
            let buffer = gpu.storage_init(&format!("{name}[{r}..{}]", r + n), &packed)?;
            chunks.push(Chunk { buffer, row_start: r as u32, rows: n as u32 });
            r += n;
        }
        Ok(GpuMatrix { name: name.into(), dtype, interleaved, rows: rows as u32, cols: cols as u32, chunks })
    }

    /// Read a tensor from the model files and upload it.
    pub fn load(gpu: &Gpu, index: &TensorIndex, t: &TensorInfo, max_binding: u64, interleaved: bool) -> Result<Self> {
        t.dtype.check_supported(&format!("tensor {:?}", t.name))?;
        let (rows, cols) = t.rows_cols();
        let bytes = index.read(t)?;
        Self::from_bytes(gpu, &t.name, t.dtype, rows, cols, &bytes, max_binding, interleaved)
    }
}
