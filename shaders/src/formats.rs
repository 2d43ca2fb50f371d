//! The block-format table: one row per GGML tensor type, the one place
//! that says what a type is. From it come the runtime's `DType` (id, name,
//! block geometry, which types it runs), the matrix kernels' format flags
//! (`WEIGHT_FORMATS`, the MATMUL and EMBED families' choices), the GPU
//! layout (`BlockLayout`: quads and scale words a block) and the repacking
//! into it (runtime/src/gpu/weights.rs), and the row grouping (`row_group`).
//! What stays code: each format's CPU dequantisation (runtime/src/quant.rs)
//! and its WGSL (shaders/wgsl/dequant_body.wgsl, the format's `#if` blocks),
//! both tested against every row that has a GPU layout.
//!
//! The types GGUF names but baleen cannot compute (Q2_K, Q3_K, the IQ and
//! TQ types, integers, …) are rows too, without a GPU layout: the GGUF index
//! and `inspect` still size their tensors, and one table means one id → type
//! mapping. Such a row is neither dequantised nor run.

use core::ops::Range;

/// One GGML tensor type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockFormat {
    /// GGML's name; for the formats the kernels read, also their WGSL flag.
    pub name: &'static str,
    /// The GGML type id (as stored in GGUF tensor infos).
    pub ggml_id: u32,
    /// Values of one block in the file (1 for the plain types).
    pub block_size: u32,
    /// Bytes of one block in the file.
    pub block_bytes: u32,
    /// How the GPU kernels read it; None: baleen sizes such tensors but
    /// neither dequantises nor runs them.
    pub gpu: Option<GpuBlock>,
}

/// How a format's blocks are repacked for the GPU (see `BlockLayout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuBlock {
    /// The bytes of a block in the file that go to the scale plane, in
    /// order, each range one u32 scale word (zero-padded: an f16 scale
    /// takes a word); every other byte goes, in order, to the quant plane.
    pub scales: &'static [Range<u32>],
    /// How the thread-per-row kernels' buffers hold the rows.
    pub thread_rows: ThreadRows,
}

/// How the weight buffers of the thread-per-row kernels (CPU adapters)
/// hold a format's rows (`row_group`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadRows {
    /// In groups of `shape::ROW_GROUP_THREAD`, a subgroup's lanes: on
    /// lavapipe 7-22% faster GEMVs for the float formats, Q8_0, Q4_0 and
    /// Q4_1, and (their two scale words one load) Q5_0 and Q5_1, level for
    /// Q4_K and Q5_K (BENCHMARKS.md, session 7).
    Grouped,
    /// Whole, one after another: Q6_K, 15% slower grouped.
    Whole,
}

/// Sized only: no GPU layout, no CPU dequantisation.
const fn sized(name: &'static str, ggml_id: u32, block_size: u32, block_bytes: u32) -> BlockFormat {
    BlockFormat { name, ggml_id, block_size, block_bytes, gpu: None }
}

/// Run by baleen: `scales` and `thread_rows` as in [`GpuBlock`].
const fn runs(name: &'static str, ggml_id: u32, block_size: u32, block_bytes: u32, scales: &'static [Range<u32>], thread_rows: ThreadRows) -> BlockFormat {
    BlockFormat { name, ggml_id, block_size, block_bytes, gpu: Some(GpuBlock { scales, thread_rows }) }
}

use ThreadRows::{Grouped, Whole};

/// Every GGML type: first those baleen runs (in the order kernels, tests
/// and benchmarks take them), then the others in id order. The runtime's
/// `DType` lists its variants in this order.
// (A one-range list of scale words is a list, not a range meant as an array.)
#[allow(clippy::single_range_in_vec_init)]
pub const FORMATS: &[BlockFormat] = &[
    // (name, GGML id, file block values and bytes, scale words as byte ranges of a
    // file block, thread-per-row rows)
    runs("F32",     0,  1,   4,   &[],              Grouped),
    runs("F16",     1,  1,   2,   &[],              Grouped),
    runs("BF16",    30, 1,   2,   &[],              Grouped),
    // [d: f16][qs: 32 x i8]
    runs("Q8_0",    8,  32,  34,  &[0..2],          Grouped),
    // [d: f16][qs: 16 bytes]
    runs("Q4_0",    2,  32,  18,  &[0..2],          Grouped),
    // [d: f16][m: f16][qs: 16 bytes]
    runs("Q4_1",    3,  32,  20,  &[0..4],          Grouped),
    // [d: f16][qh: u32][qs: 16 bytes]
    runs("Q5_0",    6,  32,  22,  &[0..2, 2..6],    Grouped),
    // [d: f16][m: f16][qh: u32][qs: 16 bytes]
    runs("Q5_1",    7,  32,  24,  &[0..4, 4..8],    Grouped),
    // [d, dmin: f16][scales: 12 bytes][qs: 128 bytes]: all quads, the
    // first the header
    runs("Q4_K",    12, 256, 144, &[],              Grouped),
    // as Q4_K with [qh: 32 bytes] after the header
    runs("Q5_K",    13, 256, 176, &[],              Grouped),
    // [ql: 128 bytes][qh: 64 bytes][scales: 16 x i8][d: f16]
    runs("Q6_K",    14, 256, 210, &[208..210],      Whole),
    // Sized only (see the module's comment).
    sized("Q8_1",    9,  32,  36),
    sized("Q2_K",    10, 256, 84),
    sized("Q3_K",    11, 256, 110),
    sized("Q8_K",    15, 256, 292),
    sized("IQ2_XXS", 16, 256, 66),
    sized("IQ2_XS",  17, 256, 74),
    sized("IQ3_XXS", 18, 256, 98),
    sized("IQ1_S",   19, 256, 50),
    sized("IQ4_NL",  20, 32,  18),
    sized("IQ3_S",   21, 256, 110),
    sized("IQ2_S",   22, 256, 82),
    sized("IQ4_XS",  23, 256, 136),
    sized("I8",      24, 1,   1),
    sized("I16",     25, 1,   2),
    sized("I32",     26, 1,   4),
    sized("I64",     27, 1,   8),
    sized("F64",     28, 1,   8),
    sized("IQ1_M",   29, 256, 56),
    sized("TQ1_0",   34, 256, 54),
    sized("TQ2_0",   35, 256, 66),
    sized("MXFP4",   39, 32,  17),
];

/// How a weight format lies in GPU memory (runtime/src/gpu/weights.rs writes
/// it, shaders/wgsl/dequant.wgsl reads it): per block of `block_values`, `quads`
/// 16-byte quads in the quant plane and `scale_words` u32s in the scale plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLayout {
    pub block_values: u32,
    pub quads: u32,
    pub scale_words: u32,
}

impl BlockLayout {
    /// 32-value sub-blocks per block.
    pub fn subs(&self) -> u32 {
        self.block_values / 32
    }
}

impl BlockFormat {
    /// Whether a block holds more than one value (scales and packed
    /// integers), as opposed to the plain types.
    pub const fn quantised(&self) -> bool {
        self.block_size > 1
    }

    /// The GPU layout, None where the kernels cannot read the format. A
    /// layout block is the file's block, or 32 values of a plain type (one
    /// sub-block); its scale words are [`GpuBlock::scales`], its quads the
    /// rest of its file bytes.
    pub const fn layout(&self) -> Option<BlockLayout> {
        let Some(gpu) = self.gpu else { return None };
        let block_values = if self.block_size < 32 { 32 } else { self.block_size };
        let file_bytes = block_values / self.block_size * self.block_bytes;
        Some(BlockLayout {
            block_values,
            quads: (file_bytes - scale_bytes(gpu.scales)) / 16,
            scale_words: gpu.scales.len() as u32,
        })
    }
}

/// The row of `name`.
pub fn format(name: &str) -> Option<&'static BlockFormat> {
    FORMATS.iter().find(|f| f.name == name)
}

/// The GPU layout of the format named `name` (its WGSL flag), if the kernels read it.
pub fn block_layout(name: &str) -> Option<BlockLayout> {
    format(name)?.layout()
}

const fn scale_bytes(scales: &[Range<u32>]) -> u32 {
    let (mut n, mut i) = (0, 0);
    while i < scales.len() {
        n += scales[i].end - scales[i].start;
        i += 1;
    }
    n
}

/// Whether two names are the same, in const code (where `==` on `str` is
/// not available): for checks against the table as a crate compiles.
pub const fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// What the layout and repacking assume of the table, checked as it compiles.
const _: () = {
    let mut i = 0;
    while i < FORMATS.len() {
        let f = &FORMATS[i];
        assert!(f.block_size > 0 && f.block_bytes > 0, "a block holds values and bytes");
        let mut j = i + 1;
        while j < FORMATS.len() {
            assert!(FORMATS[j].ggml_id != f.ggml_id && !same_name(FORMATS[j].name, f.name), "one row per GGML type");
            j += 1;
        }
        if let Some(gpu) = f.gpu {
            // Kernels step by 32-value sub-blocks.
            assert!(f.block_size == 1 || f.block_size % 32 == 0, "a GPU block is whole 32-value sub-blocks");
            let file_bytes = if f.block_size < 32 { 32 * f.block_bytes } else { f.block_bytes };
            let mut at = 0;
            let mut k = 0;
            while k < gpu.scales.len() {
                let r = &gpu.scales[k];
                assert!(r.start >= at && r.end > r.start && r.end - r.start <= 4, "scale words: ascending byte ranges of at most 4 bytes");
                at = r.end;
                k += 1;
            }
            assert!(at <= file_bytes, "scale words within the block");
            assert!((file_bytes - scale_bytes(gpu.scales)) % 16 == 0, "the quant bytes fill whole 16-byte quads");
            // dequant.wgsl's ScaleUnit is one or two words (and a texel holds whole units).
            assert!(gpu.scales.len() <= 2, "at most two scale words a block");
        }
        i += 1;
    }
};

const N_WEIGHT_FORMATS: usize = {
    let (mut n, mut i) = (0, 0);
    while i < FORMATS.len() {
        if FORMATS[i].gpu.is_some() {
            n += 1;
        }
        i += 1;
    }
    n
};

const WEIGHT_FORMAT_NAMES: [&str; N_WEIGHT_FORMATS] = {
    let mut names = [""; N_WEIGHT_FORMATS];
    let (mut n, mut i) = (0, 0);
    while i < FORMATS.len() {
        if FORMATS[i].gpu.is_some() {
            names[n] = FORMATS[i].name;
            n += 1;
        }
        i += 1;
    }
    names
};

/// Weight formats the matrix kernels read (the rows of [`FORMATS`] with a
/// GPU layout, in its order): their WGSL flags.
pub const WEIGHT_FORMATS: &[&str] = &WEIGHT_FORMAT_NAMES;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_those_the_kernels_were_written_for() {
        // (format, values, quads, scale words): the numbers dequant_body.wgsl's
        // per-format code reads a block by (Q6_K: ql, qh, scales in quads
        // 0..8, 8..12, 12; d the scale word).
        let want = [
            ("F32", 32, 8, 0),
            ("F16", 32, 4, 0),
            ("BF16", 32, 4, 0),
            ("Q8_0", 32, 2, 1),
            ("Q4_0", 32, 1, 1),
            ("Q4_1", 32, 1, 1),
            ("Q5_0", 32, 1, 2),
            ("Q5_1", 32, 1, 2),
            ("Q4_K", 256, 9, 0),
            ("Q5_K", 256, 11, 0),
            ("Q6_K", 256, 13, 1),
        ];
        assert_eq!(WEIGHT_FORMATS, want.map(|w| w.0));
        for (name, block_values, quads, scale_words) in want {
            assert_eq!(block_layout(name), Some(BlockLayout { block_values, quads, scale_words }), "{name}");
        }
        assert_eq!(block_layout("Q2_K"), None);
        assert_eq!(block_layout("NOPE"), None);
        assert_eq!(format("Q6_K").map(|f| (f.ggml_id, f.block_size, f.block_bytes)), Some((14, 256, 210)));
    }
}
