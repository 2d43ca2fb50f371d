// Fragment, included with `#include dequant_block MODE` (MODE `dot`,
// `dot_sg` or `dot_regs`, as dequant_body): defines `dot_block(b, xq)`, block b of the
// current row times the block's x (`XBlock`, see matmul_thread.wgsl), loading each
// quad of the block once. For the K-quants a block is 256 values whose sub-blocks share
// quads: one header (scales, and Q5_K's high bits; Q6_K's scales) per block,
// and one pair of quant quads per two sub-blocks (Q6_K: per half). The
// per-sub-block body loads these again for each sub-block, 2.7-3x the
// block's bytes, which is what a CPU adapter's per-thread loads pay for.
// Other formats' blocks are one sub-block: dot_block is dot_sub.

#if F32 || F16 || BF16 || Q8_0 || Q4_0 || Q4_1 || Q5_0 || Q5_1
fn dot_block(b: u32, xq: XBlock) -> f32 {
    return dot_sub(b, 0u, xsub(xq, 0u));
}
#endif
#if Q4_K || Q5_K
// Sub-block s from its quant quads a, c (nibbles at 4·(s & 1)) and, for
// Q5_K, its fifth bits (bit s of each byte of ha, hc).
fn block_sub(a: vec4<u32>, c: vec4<u32>, ha: vec4<u32>, hc: vec4<u32>, s: u32, d: f32, m: f32, x4: XArg) -> f32 {
    let shift = 4u * (s & 1u);
    var acc = 0.0;
    var accq = 0.0;
#include kquant_values
    return acc;
}

// The pair of sub-blocks 2j, 2j + 1: their quant quads (low and high nibbles).
fn block_pair(k: u32, h: vec4<u32>, ha: vec4<u32>, hc: vec4<u32>, j: u32, lo_x: XArg, hi_x: XArg) -> f32 {
    let dd = unpack2x16float(h.x);
    let qs = k + QUADS - 8u + 2u * j;
    let a = quad(qs);
    let c = quad(qs + 1u);
    let lo = scale_min_k4(h, 2u * j);
    let hi = scale_min_k4(h, 2u * j + 1u);
    return block_sub(a, c, ha, hc, 2u * j, dd.x * lo.x, dd.y * lo.y, lo_x)
        + block_sub(a, c, ha, hc, 2u * j + 1u, dd.x * hi.x, dd.y * hi.y, hi_x);
}

fn dot_block(b: u32, xq: XBlock) -> f32 {
    let k = QUADS * b;
    let h = quad(k);
#if Q5_K
    let ha = quad(k + 1u);
    let hc = quad(k + 2u);
#else
    let ha = vec4<u32>(0u);
    let hc = ha;
#endif
    return block_pair(k, h, ha, hc, 0u, xsub(xq, 0u), xsub(xq, 1u))
        + block_pair(k, h, ha, hc, 1u, xsub(xq, 2u), xsub(xq, 3u))
        + block_pair(k, h, ha, hc, 2u, xsub(xq, 4u), xsub(xq, 5u))
        + block_pair(k, h, ha, hc, 3u, xsub(xq, 6u), xsub(xq, 7u));
}
#endif
#if Q6_K
// Sub-block 4·half + quarter: low bits from la, lc at ns, high bits from
// ha, hc at hs, scales d0 (first 16 values) and d1.
fn block_sub(la: vec4<u32>, lc: vec4<u32>, ha: vec4<u32>, hc: vec4<u32>, ns: u32, hs: u32, d0: f32, d1: f32, x4: XArg) -> f32 {
    var acc = 0.0;
    var accq = 0.0;
#include kquant_values
    return acc;
}

// Quarter q of a half: its low-bit quads la, lc (nibbles at 4·(q >> 1)),
// high-bit quads ha, hc (bit pairs at 2·q) and scales.
fn block_quarter(d: f32, sc: vec4<u32>, half: u32, la: vec4<u32>, lc: vec4<u32>, ha: vec4<u32>, hc: vec4<u32>, q: u32, x4: XArg) -> f32 {
    let si = 8u * half + 2u * q;
    let d0 = d * f32(i32(qbyte(sc, si) << 24u) >> 24u);
    let d1 = d * f32(i32(qbyte(sc, si + 1u) << 24u) >> 24u);
    return block_sub(la, lc, ha, hc, 4u * (q >> 1u), 2u * q, d0, d1, x4);
}

fn block_half(k: u32, d: f32, sc: vec4<u32>, half: u32, xq: XBlock) -> f32 {
    let at = k + 4u * half;
    let l0 = quad(at);
    let l1 = quad(at + 1u);
    let l2 = quad(at + 2u);
    let l3 = quad(at + 3u);
    let ha = quad(k + 8u + 2u * half);
    let hc = quad(k + 9u + 2u * half);
    let s = 4u * half;
    return block_quarter(d, sc, half, l0, l1, ha, hc, 0u, xsub(xq, s))
        + block_quarter(d, sc, half, l2, l3, ha, hc, 1u, xsub(xq, s + 1u))
        + block_quarter(d, sc, half, l0, l1, ha, hc, 2u, xsub(xq, s + 2u))
        + block_quarter(d, sc, half, l2, l3, ha, hc, 3u, xsub(xq, s + 3u));
}

fn dot_block(b: u32, xq: XBlock) -> f32 {
    let k = QUADS * b;
    let d = unpack2x16float(sword(b)).x;
    let sc = quad(k + 12u);
    return block_half(k, d, sc, 0u, xq) + block_half(k, d, sc, 1u, xq);
}
#endif
