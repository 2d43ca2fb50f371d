// Fragment, included with `#include dequant`: expands 32 values of a repacked
// weight row into eight vec4s (registers, not an indexed array). The
// including shader declares `w: array<u32>` and one format flag (F32 … Q6_K);
// BLOCK_WORDS and SUBS come from the same place in Rust.
//
// Word k of the current row is w[w_base + k · w_stride]: row-major rows have
// stride 1; INTERLEAVED chunks store word k of all rows together (stride =
// rows), so neighbouring threads computing neighbouring rows read
// neighbouring words (vector loads on CPU adapters, coalesced on GPUs).

var<private> w_base: u32;
var<private> w_stride: u32;

fn select_row(row: u32, rows: u32, row_words: u32) {
#if INTERLEAVED
    w_base = row;
    w_stride = rows;
#else
    w_base = row * row_words;
    w_stride = 1u;
#endif
}

fn word(k: u32) -> u32 {
    return w[w_base + k * w_stride];
}

struct W32 {
    v0: vec4<f32>,
    v1: vec4<f32>,
    v2: vec4<f32>,
    v3: vec4<f32>,
    v4: vec4<f32>,
    v5: vec4<f32>,
    v6: vec4<f32>,
    v7: vec4<f32>,
}

// The four bytes of a word, and their low or high nibbles.
fn bytes4(q: u32) -> vec4<u32> {
    return (vec4<u32>(q) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(255u);
}

fn nib4(q: u32, shift: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(q) >> (vec4<u32>(0u, 8u, 16u, 24u) + vec4<u32>(shift))) & vec4<u32>(15u));
}

// Signed bytes of a word.
fn i8x4(q: u32) -> vec4<f32> {
    return vec4<f32>((vec4<i32>(bitcast<i32>(q)) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}

// Bits j … j+3 of qh, as 0 or 16.
fn hbit4(qh: u32, j: u32) -> vec4<f32> {
    return vec4<f32>(((vec4<u32>(qh) >> (vec4<u32>(0u, 1u, 2u, 3u) + vec4<u32>(j))) & vec4<u32>(1u)) << vec4<u32>(4u));
}

fn f16_lo(k: u32) -> f32 {
    return unpack2x16float(word(k)).x;
}

fn f16_hi(k: u32) -> f32 {
    return unpack2x16float(word(k)).y;
}

fn byte_k(k: u32, i: u32) -> u32 {
    return (word(k + (i >> 2u)) >> (8u * (i & 3u))) & 0xffu;
}

// 6-bit scale and min of sub-block j of a Q4_K/Q5_K block (12 bytes at word k).
fn scale_min_k4(k: u32, j: u32) -> vec2<f32> {
    if (j < 4u) {
        return vec2<f32>(f32(byte_k(k, j) & 63u), f32(byte_k(k, j + 4u) & 63u));
    }
    let d = (byte_k(k, j + 4u) & 15u) | ((byte_k(k, j - 4u) >> 6u) << 4u);
    let m = (byte_k(k, j + 4u) >> 4u) | ((byte_k(k, j) >> 6u) << 4u);
    return vec2<f32>(f32(d), f32(m));
}

// Values 32·s … 32·s + 31 of the block starting at word `blk` of the row.
fn dequant32(blk: u32, s: u32) -> W32 {
    var r: W32;
#if F32
    let b = blk;
    r.v0 = bitcast<vec4<f32>>(vec4<u32>(word(b), word(b + 1u), word(b + 2u), word(b + 3u)));
    r.v1 = bitcast<vec4<f32>>(vec4<u32>(word(b + 4u), word(b + 5u), word(b + 6u), word(b + 7u)));
    r.v2 = bitcast<vec4<f32>>(vec4<u32>(word(b + 8u), word(b + 9u), word(b + 10u), word(b + 11u)));
    r.v3 = bitcast<vec4<f32>>(vec4<u32>(word(b + 12u), word(b + 13u), word(b + 14u), word(b + 15u)));
    r.v4 = bitcast<vec4<f32>>(vec4<u32>(word(b + 16u), word(b + 17u), word(b + 18u), word(b + 19u)));
    r.v5 = bitcast<vec4<f32>>(vec4<u32>(word(b + 20u), word(b + 21u), word(b + 22u), word(b + 23u)));
    r.v6 = bitcast<vec4<f32>>(vec4<u32>(word(b + 24u), word(b + 25u), word(b + 26u), word(b + 27u)));
    r.v7 = bitcast<vec4<f32>>(vec4<u32>(word(b + 28u), word(b + 29u), word(b + 30u), word(b + 31u)));
#endif
#if F16
    r.v0 = vec4<f32>(unpack2x16float(word(blk)), unpack2x16float(word(blk + 1u)));
    r.v1 = vec4<f32>(unpack2x16float(word(blk + 2u)), unpack2x16float(word(blk + 3u)));
    r.v2 = vec4<f32>(unpack2x16float(word(blk + 4u)), unpack2x16float(word(blk + 5u)));
    r.v3 = vec4<f32>(unpack2x16float(word(blk + 6u)), unpack2x16float(word(blk + 7u)));
    r.v4 = vec4<f32>(unpack2x16float(word(blk + 8u)), unpack2x16float(word(blk + 9u)));
    r.v5 = vec4<f32>(unpack2x16float(word(blk + 10u)), unpack2x16float(word(blk + 11u)));
    r.v6 = vec4<f32>(unpack2x16float(word(blk + 12u)), unpack2x16float(word(blk + 13u)));
    r.v7 = vec4<f32>(unpack2x16float(word(blk + 14u)), unpack2x16float(word(blk + 15u)));
#endif
#if BF16
    r.v0 = bf16x4(word(blk), word(blk + 1u));
    r.v1 = bf16x4(word(blk + 2u), word(blk + 3u));
    r.v2 = bf16x4(word(blk + 4u), word(blk + 5u));
    r.v3 = bf16x4(word(blk + 6u), word(blk + 7u));
    r.v4 = bf16x4(word(blk + 8u), word(blk + 9u));
    r.v5 = bf16x4(word(blk + 10u), word(blk + 11u));
    r.v6 = bf16x4(word(blk + 12u), word(blk + 13u));
    r.v7 = bf16x4(word(blk + 14u), word(blk + 15u));
#endif
#if Q8_0
    // [d: f16, pad][qs: 32 × i8]
    let d = f16_lo(blk);
    r.v0 = i8x4(word(blk + 1u)) * d;
    r.v1 = i8x4(word(blk + 2u)) * d;
    r.v2 = i8x4(word(blk + 3u)) * d;
    r.v3 = i8x4(word(blk + 4u)) * d;
    r.v4 = i8x4(word(blk + 5u)) * d;
    r.v5 = i8x4(word(blk + 6u)) * d;
    r.v6 = i8x4(word(blk + 7u)) * d;
    r.v7 = i8x4(word(blk + 8u)) * d;
#endif
#if Q4_0 || Q4_1
    // Q4_0 [d: f16, pad][qs: 16 bytes]: (q - 8) d.  Q4_1 [d, m: f16][qs]: q d + m.
    // Low nibbles are values 0..15, high nibbles 16..31.
#if Q4_0
    let d = f16_lo(blk);
    let m = -8.0 * d;
#else
    let d = f16_lo(blk);
    let m = f16_hi(blk);
#endif
    let q0 = word(blk + 1u);
    let q1 = word(blk + 2u);
    let q2 = word(blk + 3u);
    let q3 = word(blk + 4u);
    r.v0 = nib4(q0, 0u) * d + m;
    r.v1 = nib4(q1, 0u) * d + m;
    r.v2 = nib4(q2, 0u) * d + m;
    r.v3 = nib4(q3, 0u) * d + m;
    r.v4 = nib4(q0, 4u) * d + m;
    r.v5 = nib4(q1, 4u) * d + m;
    r.v6 = nib4(q2, 4u) * d + m;
    r.v7 = nib4(q3, 4u) * d + m;
#endif
#if Q5_0 || Q5_1
    // Q5_0 [d, pad][qh: u32][qs: 16]: (q - 16) d.  Q5_1 [d, m][qh][qs]: q d + m.
    // Bit j of qh is value j's fifth bit.
#if Q5_0
    let d = f16_lo(blk);
    let m = -16.0 * d;
#else
    let d = f16_lo(blk);
    let m = f16_hi(blk);
#endif
    let qh = word(blk + 1u);
    let q0 = word(blk + 2u);
    let q1 = word(blk + 3u);
    let q2 = word(blk + 4u);
    let q3 = word(blk + 5u);
    r.v0 = (nib4(q0, 0u) + hbit4(qh, 0u)) * d + m;
    r.v1 = (nib4(q1, 0u) + hbit4(qh, 4u)) * d + m;
    r.v2 = (nib4(q2, 0u) + hbit4(qh, 8u)) * d + m;
    r.v3 = (nib4(q3, 0u) + hbit4(qh, 12u)) * d + m;
    r.v4 = (nib4(q0, 4u) + hbit4(qh, 16u)) * d + m;
    r.v5 = (nib4(q1, 4u) + hbit4(qh, 20u)) * d + m;
    r.v6 = (nib4(q2, 4u) + hbit4(qh, 24u)) * d + m;
    r.v7 = (nib4(q3, 4u) + hbit4(qh, 28u)) * d + m;
#endif
#if Q4_K || Q5_K
    // [d, dmin: f16][scales: 12 bytes][(Q5_K) qh: 32 bytes][qs: 128 bytes]; sub-block
    // s reads nibbles (low for even s) of the 32 bytes qs[32·(s/2) …], and (Q5_K)
    // bit s of qh[i] as value i's fifth bit.
    let sm = scale_min_k4(blk + 1u, s);
    let d = f16_lo(blk) * sm.x;
    let m = f16_hi(blk) * sm.y;
    let shift = 4u * (s & 1u);
#if Q4_K
    let qs = blk + 4u + 8u * (s >> 1u);
#else
    let qs = blk + 12u + 8u * (s >> 1u);
#endif
    r.v0 = nib4(word(qs), shift);
    r.v1 = nib4(word(qs + 1u), shift);
    r.v2 = nib4(word(qs + 2u), shift);
    r.v3 = nib4(word(qs + 3u), shift);
    r.v4 = nib4(word(qs + 4u), shift);
    r.v5 = nib4(word(qs + 5u), shift);
    r.v6 = nib4(word(qs + 6u), shift);
    r.v7 = nib4(word(qs + 7u), shift);
#if Q5_K
    r.v0 += qbit4(word(blk + 4u), s);
    r.v1 += qbit4(word(blk + 5u), s);
    r.v2 += qbit4(word(blk + 6u), s);
    r.v3 += qbit4(word(blk + 7u), s);
    r.v4 += qbit4(word(blk + 8u), s);
    r.v5 += qbit4(word(blk + 9u), s);
    r.v6 += qbit4(word(blk + 10u), s);
    r.v7 += qbit4(word(blk + 11u), s);
#endif
    r.v0 = r.v0 * d - m;
    r.v1 = r.v1 * d - m;
    r.v2 = r.v2 * d - m;
    r.v3 = r.v3 * d - m;
    r.v4 = r.v4 * d - m;
    r.v5 = r.v5 * d - m;
    r.v6 = r.v6 * d - m;
    r.v7 = r.v7 * d - m;
#endif
#if Q6_K
    // [ql: 128 bytes][qh: 64][scales: 16 × i8][d: f16, pad]; sub-block s = 4·half + quarter:
    // low 4 bits from ql[64·half + 32·(quarter & 1) + i] (high nibble when quarter ≥ 2),
    // 2 high bits from qh[32·half + i] at 2·quarter; scale sc[8·half + i/16 + 2·quarter].
    let d = f16_lo(blk + 52u);
    let half = s >> 2u;
    let quarter = s & 3u;
    let ql = blk + 16u * half + 8u * (quarter & 1u);
    let qh = blk + 32u + 8u * half;
    let nshift = 4u * (quarter >> 1u);
    let hshift = 2u * quarter;
    let sc = 8u * half + 2u * quarter;
    let d0 = d * f32(i32(byte_k(blk + 48u, sc) << 24u) >> 24u);
    let d1 = d * f32(i32(byte_k(blk + 48u, sc + 1u) << 24u) >> 24u);
    r.v0 = (q6x4(word(ql), word(qh), nshift, hshift)) * d0;
    r.v1 = (q6x4(word(ql + 1u), word(qh + 1u), nshift, hshift)) * d0;
    r.v2 = (q6x4(word(ql + 2u), word(qh + 2u), nshift, hshift)) * d0;
    r.v3 = (q6x4(word(ql + 3u), word(qh + 3u), nshift, hshift)) * d0;
    r.v4 = (q6x4(word(ql + 4u), word(qh + 4u), nshift, hshift)) * d1;
    r.v5 = (q6x4(word(ql + 5u), word(qh + 5u), nshift, hshift)) * d1;
    r.v6 = (q6x4(word(ql + 6u), word(qh + 6u), nshift, hshift)) * d1;
    r.v7 = (q6x4(word(ql + 7u), word(qh + 7u), nshift, hshift)) * d1;
#endif
    return r;
}

// Four bf16 values from two words.
fn bf16x4(a: u32, b: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(vec4<u32>(a << 16u, a & 0xffff0000u, b << 16u, b & 0xffff0000u));
}

// Bit s of each byte of a word, as 0 or 16.
fn qbit4(q: u32, s: u32) -> vec4<f32> {
    return vec4<f32>(((vec4<u32>(q) >> (vec4<u32>(0u, 8u, 16u, 24u) + vec4<u32>(s))) & vec4<u32>(1u)) << vec4<u32>(4u));
}

// Q6_K: 4 values from a word of low nibbles and a word of high bit pairs, minus 32.
fn q6x4(ql: u32, qh: u32, nshift: u32, hshift: u32) -> vec4<f32> {
    let lo = (vec4<u32>(ql) >> (vec4<u32>(0u, 8u, 16u, 24u) + vec4<u32>(nshift))) & vec4<u32>(15u);
    let hi = (vec4<u32>(qh) >> (vec4<u32>(0u, 8u, 16u, 24u) + vec4<u32>(hshift))) & vec4<u32>(3u);
    return vec4<f32>(vec4<i32>(lo | (hi << vec4<u32>(4u))) - vec4<i32>(32));
}
