//! Tensor element types and their block formats.
//!
//! GGML quantises a row in blocks: `block_size` values stored in `block_bytes`
//! bytes (scales, mins, packed integers). Every type's id, name and block
//! geometry, and which types baleen runs, come from the block-format table
//! (`baleen_shaders::FORMATS`), so the index can size any tensor, even one we
//! can't run. This module dequantises the types we run, on the CPU. That
//! dequantisation is the reference the GPU kernels are tested against; it is
//! itself tested against the `gguf` Python package (tests/fixtures/quant.json).

use crate::error::{Error, Result};
use baleen_shaders::formats::{same_name, BlockFormat, FORMATS};
use half::{bf16, f16};

macro_rules! dtypes {
    ($( $v:ident ),* $(,)?) => {
        /// An element type: a row of the block-format table (the GGML types,
        /// which safetensors' float types map onto). The variants follow the
        /// table's rows, in its order, each named as its row (checked as the
        /// crate compiles).
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum DType { $( $v, )* }

        impl DType {
            /// Every type, in the table's order.
            pub const ALL: [DType; FORMATS.len()] = [$( DType::$v, )*];
        }

        const _: () = {
            $( assert!(same_name(FORMATS[DType::$v as usize].name, stringify!($v)), concat!("DType::", stringify!($v), " is not its row of baleen_shaders::FORMATS")); )*
        };
    };
}

dtypes! {
    F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K,
    Q8_1, Q2_K, Q3_K, Q8_K, IQ2_XXS, IQ2_XS, IQ3_XXS, IQ1_S, IQ4_NL, IQ3_S, IQ2_S, IQ4_XS,
    I8, I16, I32, I64, F64, IQ1_M, TQ1_0, TQ2_0, MXFP4,
}

impl DType {
    /// This type's row of the block-format table.
    pub fn format(self) -> &'static BlockFormat {
        &FORMATS[self as usize]
    }

    /// The GGML type id (as stored in GGUF tensor infos).
    pub fn from_ggml(id: u32) -> Option<DType> {
        FORMATS.iter().position(|f| f.ggml_id == id).map(|i| DType::ALL[i])
    }

    pub fn ggml_id(self) -> u32 {
        self.format().ggml_id
    }

    pub fn name(self) -> &'static str {
        self.format().name
    }

    /// Values per block.
    pub fn block_size(self) -> u64 {
        self.format().block_size as u64
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> u64 {
        self.format().block_bytes as u64
    }

    /// Can baleen dequantise (and so run) this type? Those with a GPU
    /// layout in the table, each of which `dequantize_block` handles
    /// (tested below).
    pub fn is_supported(self) -> bool {
        self.format().gpu.is_some()
    }

    /// Bytes taken by `n` values, or an error if `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: u64) -> Result<u64> {
        if n % self.block_size() != 0 {
            return Err(Error::format(
                "tensor",
                format!("{n} values of {} is not a whole number of {}-value blocks", self.name(), self.block_size()),
            ));
        }
        (n / self.block_size())
            .checked_mul(self.block_bytes())
            .ok_or_else(|| Error::format("tensor", format!("{n} values of {} overflow a 64-bit size", self.name())))
    }

    pub fn check_supported(self, what: &str) -> Result<()> {
        if self.is_supported() {
            return Ok(());
        }
        let runs: Vec<&str> = DType::ALL.iter().filter(|d| d.is_supported()).map(|d| d.name()).collect();
        let (last, rest) = runs.split_last().expect("the table has formats baleen runs");
        Err(Error::Unsupported(format!(
            "{what} has tensor type {}; baleen runs {} and {last} \
             (re-quantise the model to one of those, e.g. with llama.cpp's llama-quantize)",
            self.name(),
            rest.join(", ")
        )))
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantise `bytes` (a whole number of blocks of `dtype`) into `out`, which
/// must hold exactly the number of values the bytes encode.
pub fn dequantize(dtype: DType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    dtype.check_supported("this tensor")?;
    let bs = dtype.block_size() as usize;
    let bb = dtype.block_bytes() as usize;
    if bytes.len() % bb != 0 || bytes.len() / bb * bs != out.len() {
        return Err(Error::Input(format!(
            "dequantize {}: {} bytes do not hold {} values",
            dtype.name(),
            bytes.len(),
            out.len()
        )));
    }
    for (blk, y) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(bs)) {
        dequantize_block(dtype, blk, y);
    }
    Ok(())
}

/// Scale and min of sub-block `j` of a Q4_K/Q5_K block: 6-bit values packed in 12 bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((q[j] & 63) as f32, (q[j + 4] & 63) as f32)
    } else {
        let d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        (d as f32, m as f32)
    }
}

fn dequantize_block(dtype: DType, b: &[u8], y: &mut [f32]) {
    match dtype {
        DType::F32 => y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        DType::F16 => y[0] = f16_at(b, 0),
        DType::BF16 => y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        // [d: f16][qs: 16 bytes, low nibbles = values 0..16, high = 16..32], value = (q - 8) d
        DType::Q4_0 => {
            let d = f16_at(b, 0);
            for j in 0..16 {
                let q = b[2 + j];
                y[j] = ((q & 0xF) as i32 - 8) as f32 * d;
                y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
            }
        }
        // [d: f16][m: f16][qs: 16 bytes], value = q d + m
        DType::Q4_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            for j in 0..16 {
                let q = b[4 + j];
                y[j] = (q & 0xF) as f32 * d + m;
                y[j + 16] = (q >> 4) as f32 * d + m;
            }
        }
        // [d: f16][qh: u32, the 5th bits][qs: 16 bytes], value = (q - 16) d
        DType::Q5_0 => {
            let d = f16_at(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for j in 0..16 {
                let q = b[6 + j];
                let h0 = ((qh >> j) << 4) & 0x10;
                let h1 = (qh >> (j + 12)) & 0x10;
                y[j] = (((q & 0xF) as u32 | h0) as i32 - 16) as f32 * d;
                y[j + 16] = (((q >> 4) as u32 | h1) as i32 - 16) as f32 * d;
            }
        }
        // [d: f16][m: f16][qh: u32][qs: 16 bytes], value = q d + m
        DType::Q5_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            for j in 0..16 {
                let q = b[8 + j];
                let h0 = ((qh >> j) << 4) & 0x10;
                let h1 = (qh >> (j + 12)) & 0x10;
                y[j] = ((q & 0xF) as u32 | h0) as f32 * d + m;
                y[j + 16] = ((q >> 4) as u32 | h1) as f32 * d + m;
            }
        }
        // [d: f16][qs: 32 x i8], value = q d
        DType::Q8_0 => {
            let d = f16_at(b, 0);
            for j in 0..32 {
                y[j] = (b[2 + j] as i8) as f32 * d;
            }
        }
        // [d: f16][dmin: f16][scales: 12 bytes, 8 x (6-bit scale, 6-bit min)][qs: 128 bytes]
        // 8 sub-blocks of 32: value = d sc q - dmin m
        DType::Q4_K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let scales = &b[4..16];
            let qs = &b[16..144];
            for k in 0..4 {
                let (sc1, m1) = scale_min_k4(2 * k, scales);
                let (sc2, m2) = scale_min_k4(2 * k + 1, scales);
                let (d1, m1) = (d * sc1, dmin * m1);
                let (d2, m2) = (d * sc2, dmin * m2);
                let q = &qs[32 * k..32 * k + 32];
                for l in 0..32 {
                    y[64 * k + l] = d1 * (q[l] & 0xF) as f32 - m1;
                    y[64 * k + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
                }
            }
        }
        // as Q4_K plus [qh: 32 bytes] holding each value's 5th bit
        DType::Q5_K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let scales = &b[4..16];
            let qh = &b[16..48];
            let qs = &b[48..176];
            for k in 0..4 {
                let (sc1, m1) = scale_min_k4(2 * k, scales);
                let (sc2, m2) = scale_min_k4(2 * k + 1, scales);
                let (d1, m1) = (d * sc1, dmin * m1);
                let (d2, m2) = (d * sc2, dmin * m2);
                let (u1, u2) = (1u8 << (2 * k), 2u8 << (2 * k));
                let q = &qs[32 * k..32 * k + 32];
                for l in 0..32 {
                    let h1 = if qh[l] & u1 != 0 { 16.0 } else { 0.0 };
                    let h2 = if qh[l] & u2 != 0 { 16.0 } else { 0.0 };
                    y[64 * k + l] = d1 * ((q[l] & 0xF) as f32 + h1) - m1;
                    y[64 * k + 32 + l] = d2 * ((q[l] >> 4) as f32 + h2) - m2;
                }
            }
        }
        // [ql: 128 bytes, low 4 bits][qh: 64 bytes, high 2 bits][scales: 16 x i8][d: f16]
        // 16 sub-blocks of 16: value = d sc (q - 32)
        DType::Q6_K => {
            let ql = &b[0..128];
            let qh = &b[128..192];
            let sc = &b[192..208];
            let d = f16_at(b, 208);
            for n in 0..2 {
                let (ql, qh, sc, y) = (&ql[64 * n..], &qh[32 * n..], &sc[8 * n..], &mut y[128 * n..]);
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }
        _ => unreachable!("check_supported rejected {dtype:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_geometry_matches_ggml() {
        // (type, values per block, bytes per block) from ggml's type traits.
        for (t, bs, bb) in [(DType::Q4_0, 32, 18), (DType::Q4_K, 256, 144), (DType::Q6_K, 256, 210), (DType::BF16, 1, 2)] {
            assert_eq!((t.block_size(), t.block_bytes()), (bs, bb));
            assert_eq!(DType::from_ggml(t.ggml_id()), Some(t));
        }
        assert_eq!(DType::from_ggml(4), None, "type 4 (Q4_2) was removed from ggml");
    }

    #[test]
    fn every_type_the_gpu_reads_dequantises_on_the_cpu() {
        let runs: Vec<DType> = DType::ALL.into_iter().filter(|d| d.is_supported()).collect();
        assert_eq!(runs.iter().map(|d| d.name()).collect::<Vec<_>>(), baleen_shaders::WEIGHT_FORMATS);
        for d in runs {
            assert!(d.format().layout().is_some(), "{d:?}");
            // Random blocks (valid scales: `random_blocks` knows the format) give finite values.
            let n = 4;
            let mut out = vec![f32::NAN; n * d.block_size() as usize];
            dequantize(d, &random_blocks(d, n, 1), &mut out).unwrap();
            assert!(out.iter().all(|v| v.is_finite()), "{d:?}: {out:?}");
        }
    }

    #[test]
    fn unsupported_types_name_those_baleen_runs() {
        let err = DType::Q2_K.check_supported("model.gguf").unwrap_err().to_string();
        assert!(err.contains("has tensor type Q2_K; baleen runs F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K (re-quantise"), "{err}");
    }

    #[test]
    fn partial_blocks_and_unsupported_types_are_errors() {
        assert!(DType::Q4_0.bytes_for(33).is_err());
        assert_eq!(DType::Q4_0.bytes_for(64).unwrap(), 36);
        let err = dequantize(DType::IQ2_XXS, &[0; 66], &mut [0.0; 256]).unwrap_err();
        assert!(err.to_string().contains("IQ2_XXS"), "{err}");
        let err = dequantize(DType::Q8_0, &[0; 34], &mut [0.0; 31]).unwrap_err();
        assert!(err.to_string().contains("34 bytes"), "{err}");
    }
}

/// Random but valid blocks of `dtype` (finite f16 scales in [-2, 2]), for
/// kernel tests and benchmarks. Deterministic for a seed.
pub fn random_blocks(dtype: DType, n_blocks: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let bb = dtype.block_bytes() as usize;
    let mut out: Vec<u8> = (0..n_blocks * bb).map(|_| next() as u8).collect();
    let f16_field = |b: &mut [u8], at: usize, r: u64| {
        let v = f16::from_f32(((r % 4001) as f32 / 1000.0 - 2.0) * 0.5);
        b[at..at + 2].copy_from_slice(&v.to_le_bytes());
    };
    for block in out.chunks_exact_mut(bb) {
        match dtype {
            DType::F32 => block.copy_from_slice(&(((next() % 2001) as f32 / 1000.0) - 1.0).to_le_bytes()),
            DType::F16 => f16_field(block, 0, next()),
            DType::BF16 => {
                let v = bf16::from_f32(((next() % 2001) as f32 / 1000.0) - 1.0);
                block.copy_from_slice(&v.to_le_bytes());
            }
            DType::Q4_0 | DType::Q5_0 | DType::Q8_0 => f16_field(block, 0, next()),
            DType::Q4_1 | DType::Q5_1 | DType::Q4_K | DType::Q5_K => {
                f16_field(block, 0, next());
                f16_field(block, 2, next());
            }
            DType::Q6_K => f16_field(block, 208, next()),
            _ => {}
        }
    }
    out
}
