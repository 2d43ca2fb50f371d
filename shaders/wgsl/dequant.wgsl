// Fragment, included with `#include dequant`: expands 32 values of a repacked
// weight block. The including shader declares `w: array<u32>` and one format
// flag (F32 … Q6_K); BLOCK_WORDS and SUBS come from the same place in Rust.

fn byte_at(word: u32, i: u32) -> u32 {
    return (w[word + (i >> 2u)] >> (8u * (i & 3u))) & 0xffu;
}

fn lo_f16(word: u32) -> f32 {
    return unpack2x16float(w[word]).x;
}

fn hi_f16(word: u32) -> f32 {
    return unpack2x16float(w[word]).y;
}

// 6-bit scale and min of sub-block j of a Q4_K/Q5_K block (12 bytes at `at`).
fn scale_min_k4(at: u32, j: u32) -> vec2<f32> {
    if (j < 4u) {
        return vec2<f32>(f32(byte_at(at, j) & 63u), f32(byte_at(at, j + 4u) & 63u));
    }
    let d = (byte_at(at, j + 4u) & 15u) | ((byte_at(at, j - 4u) >> 6u) << 4u);
    let m = (byte_at(at, j + 4u) >> 4u) | ((byte_at(at, j) >> 6u) << 4u);
    return vec2<f32>(f32(d), f32(m));
}

// Values 32·s … 32·s + 31 of the block starting at word `blk`.
fn dequant32(blk: u32, s: u32, v: ptr<function, array<f32, 32>>) {
#if F32
    for (var i = 0u; i < 32u; i++) { (*v)[i] = bitcast<f32>(w[blk + i]); }
#endif
#if F16
    for (var i = 0u; i < 16u; i++) {
        let h = unpack2x16float(w[blk + i]);
        (*v)[2u * i] = h.x;
        (*v)[2u * i + 1u] = h.y;
    }
#endif
#if BF16
    for (var i = 0u; i < 16u; i++) {
        let u = w[blk + i];
        (*v)[2u * i] = bitcast<f32>(u << 16u);
        (*v)[2u * i + 1u] = bitcast<f32>(u & 0xffff0000u);
    }
#endif
#if Q8_0
    // [d: f16, pad][qs: 32 × i8]
    let d = lo_f16(blk);
    for (var i = 0u; i < 32u; i++) {
        let q = i32(byte_at(blk + 1u, i) << 24u) >> 24u;
        (*v)[i] = f32(q) * d;
    }
#endif
#if Q4_0
    // [d: f16, pad][qs: 16 bytes, low nibbles 0..15, high 16..31]
    let d = lo_f16(blk);
    for (var i = 0u; i < 16u; i++) {
        let q = byte_at(blk + 1u, i);
        (*v)[i] = (f32(q & 15u) - 8.0) * d;
        (*v)[i + 16u] = (f32(q >> 4u) - 8.0) * d;
    }
#endif
#if Q4_1
    // [d: f16, m: f16][qs: 16 bytes]
    let d = lo_f16(blk);
    let m = hi_f16(blk);
    for (var i = 0u; i < 16u; i++) {
        let q = byte_at(blk + 1u, i);
        (*v)[i] = f32(q & 15u) * d + m;
        (*v)[i + 16u] = f32(q >> 4u) * d + m;
    }
#endif
#if Q5_0
    // [d: f16, pad][qh: u32][qs: 16 bytes]
    let d = lo_f16(blk);
    let qh = w[blk + 1u];
    for (var i = 0u; i < 16u; i++) {
        let q = byte_at(blk + 2u, i);
        let h0 = ((qh >> i) << 4u) & 16u;
        let h1 = (qh >> (i + 12u)) & 16u;
        (*v)[i] = (f32((q & 15u) | h0) - 16.0) * d;
        (*v)[i + 16u] = (f32((q >> 4u) | h1) - 16.0) * d;
    }
#endif
#if Q5_1
    // [d: f16, m: f16][qh: u32][qs: 16 bytes]
    let d = lo_f16(blk);
    let m = hi_f16(blk);
    let qh = w[blk + 1u];
    for (var i = 0u; i < 16u; i++) {
        let q = byte_at(blk + 2u, i);
        let h0 = ((qh >> i) << 4u) & 16u;
        let h1 = (qh >> (i + 12u)) & 16u;
        (*v)[i] = f32((q & 15u) | h0) * d + m;
        (*v)[i + 16u] = f32((q >> 4u) | h1) * d + m;
    }
#endif
#if Q4_K
    // [d, dmin: f16][scales: 12 bytes][qs: 128 bytes]; sub-block s uses
    // nibbles (low for even s, high for odd) of qs[32·(s/2) …].
    let sm = scale_min_k4(blk + 1u, s);
    let d = lo_f16(blk) * sm.x;
    let m = hi_f16(blk) * sm.y;
    let shift = 4u * (s & 1u);
    for (var i = 0u; i < 32u; i++) {
        let q = (byte_at(blk + 4u, 32u * (s >> 1u) + i) >> shift) & 15u;
        (*v)[i] = d * f32(q) - m;
    }
#endif
#if Q5_K
    // [d, dmin][scales: 12][qh: 32 bytes, bit s of byte i][qs: 128]
    let sm = scale_min_k4(blk + 1u, s);
    let d = lo_f16(blk) * sm.x;
    let m = hi_f16(blk) * sm.y;
    let shift = 4u * (s & 1u);
    for (var i = 0u; i < 32u; i++) {
        let q = (byte_at(blk + 12u, 32u * (s >> 1u) + i) >> shift) & 15u;
        let h = ((byte_at(blk + 4u, i) >> s) & 1u) << 4u;
        (*v)[i] = d * f32(q | h) - m;
    }
#endif
#if Q6_K
    // [ql: 128 bytes][qh: 64][scales: 16 × i8][d: f16, pad]; sub-block s = 4·half + quarter.
    let d = lo_f16(blk + 52u);
    let half = s >> 2u;
    let quarter = s & 3u;
    for (var i = 0u; i < 32u; i++) {
        let ql = byte_at(blk, 64u * half + i + 32u * (quarter & 1u));
        let nib = (ql >> (4u * (quarter >> 1u))) & 15u;
        let hb = (byte_at(blk + 32u, 32u * half + i) >> (2u * quarter)) & 3u;
        let q = i32(nib | (hb << 4u)) - 32;
        let sc = i32(byte_at(blk + 48u, 8u * half + i / 16u + 2u * quarter) << 24u) >> 24u;
        (*v)[i] = d * f32(sc) * f32(q);
    }
#endif
}
