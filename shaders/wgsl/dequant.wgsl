// Fragment, included with `#include dequant`: expands 32 values of a weight
// row into eight vec4s (registers, not an indexed array). The including
// shader declares `w: array<vec4<u32>>` (the quant plane), `ws: array<u32>`
// (the same buffer, read from its scale plane at p.scale_offset words) and one
// format flag; QUADS, SCALE_WORDS and SUBS come from `block_layout` in Rust.
//
// Per block: QUADS 16-byte quads of quants (read with one load each) and
// SCALE_WORDS words of scales (f16 d / m, and Q5's high bits) in their own
// plane, so every quad stays aligned whatever the block size. Quad k of the
// current row is w[q_base + k · stride]: row-major rows have stride 1;
// INTERLEAVED chunks store quad k of all rows together (stride = rows), so
// neighbouring threads, computing neighbouring rows, read neighbouring quads.

var<private> q_base: u32;
var<private> s_base: u32;
var<private> stride: u32;

fn select_row(row: u32, rows: u32, blocks_per_row: u32, scale_offset: u32) {
#if INTERLEAVED
    q_base = row;
    s_base = scale_offset + row;
    stride = rows;
#else
    q_base = row * blocks_per_row * QUADS;
    s_base = scale_offset + row * blocks_per_row * SCALE_WORDS;
    stride = 1u;
#endif
}

fn quad(k: u32) -> vec4<u32> {
    return w[q_base + k * stride];
}

fn sword(k: u32) -> u32 {
    return ws[s_base + k * stride];
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

// Nibbles (shift 0: low, 4: high) of the four bytes of a word.
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

// Bit s of each byte of a word, as 0 or 16.
fn qbit4(q: u32, s: u32) -> vec4<f32> {
    return vec4<f32>(((vec4<u32>(q) >> (vec4<u32>(0u, 8u, 16u, 24u) + vec4<u32>(s))) & vec4<u32>(1u)) << vec4<u32>(4u));
}

// Four bf16 values from two words.
fn bf16x4(a: u32, b: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(vec4<u32>(a << 16u, a & 0xffff0000u, b << 16u, b & 0xffff0000u));
}

// Q6_K: 4 values from a word of low nibbles and a word of high bit pairs, minus 32.
fn q6x4(ql: u32, qh: u32, nshift: u32, hshift: u32) -> vec4<f32> {
    let lo = (vec4<u32>(ql) >> (vec4<u32>(0u, 8u, 16u, 24u) + vec4<u32>(nshift))) & vec4<u32>(15u);
    let hi = (vec4<u32>(qh) >> (vec4<u32>(0u, 8u, 16u, 24u) + vec4<u32>(hshift))) & vec4<u32>(3u);
    return vec4<f32>(vec4<i32>(lo | (hi << vec4<u32>(4u))) - vec4<i32>(32));
}

// Byte i (0..15) of a quad.
fn qbyte(q: vec4<u32>, i: u32) -> u32 {
    return (q[i >> 2u] >> (8u * (i & 3u))) & 0xffu;
}

// 6-bit scale and min of sub-block j from the 12 scale bytes in words a, b, c.
fn scale_min_k4(h: vec4<u32>, j: u32) -> vec2<f32> {
    // Scale bytes 0..11 are bytes 4..15 of the header quad.
    if (j < 4u) {
        return vec2<f32>(f32(qbyte(h, 4u + j) & 63u), f32(qbyte(h, 8u + j) & 63u));
    }
    let d = (qbyte(h, 8u + j) & 15u) | ((qbyte(h, j) >> 6u) << 4u);
    let m = (qbyte(h, 8u + j) >> 4u) | ((qbyte(h, 4u + j) >> 6u) << 4u);
    return vec2<f32>(f32(d), f32(m));
}

// Values 32·s … 32·s + 31 of block b of the row (for F32/F16/BF16 a "block" is 32 values).
fn dequant32(b: u32, s: u32) -> W32 {
    var r: W32;
#if F32
    let k = 8u * b;
    r.v0 = bitcast<vec4<f32>>(quad(k));
    r.v1 = bitcast<vec4<f32>>(quad(k + 1u));
    r.v2 = bitcast<vec4<f32>>(quad(k + 2u));
    r.v3 = bitcast<vec4<f32>>(quad(k + 3u));
    r.v4 = bitcast<vec4<f32>>(quad(k + 4u));
    r.v5 = bitcast<vec4<f32>>(quad(k + 5u));
    r.v6 = bitcast<vec4<f32>>(quad(k + 6u));
    r.v7 = bitcast<vec4<f32>>(quad(k + 7u));
#endif
#if F16
    let k = 4u * b;
    let a = quad(k);
    let c = quad(k + 1u);
    let e = quad(k + 2u);
    let g = quad(k + 3u);
    r.v0 = vec4<f32>(unpack2x16float(a.x), unpack2x16float(a.y));
    r.v1 = vec4<f32>(unpack2x16float(a.z), unpack2x16float(a.w));
    r.v2 = vec4<f32>(unpack2x16float(c.x), unpack2x16float(c.y));
    r.v3 = vec4<f32>(unpack2x16float(c.z), unpack2x16float(c.w));
    r.v4 = vec4<f32>(unpack2x16float(e.x), unpack2x16float(e.y));
    r.v5 = vec4<f32>(unpack2x16float(e.z), unpack2x16float(e.w));
    r.v6 = vec4<f32>(unpack2x16float(g.x), unpack2x16float(g.y));
    r.v7 = vec4<f32>(unpack2x16float(g.z), unpack2x16float(g.w));
#endif
#if BF16
    let k = 4u * b;
    let a = quad(k);
    let c = quad(k + 1u);
    let e = quad(k + 2u);
    let g = quad(k + 3u);
    r.v0 = bf16x4(a.x, a.y);
    r.v1 = bf16x4(a.z, a.w);
    r.v2 = bf16x4(c.x, c.y);
    r.v3 = bf16x4(c.z, c.w);
    r.v4 = bf16x4(e.x, e.y);
    r.v5 = bf16x4(e.z, e.w);
    r.v6 = bf16x4(g.x, g.y);
    r.v7 = bf16x4(g.z, g.w);
#endif
#if Q8_0
    // quads: qs[32] as i8; scale: d
    let d = unpack2x16float(sword(b)).x;
    let a = quad(2u * b);
    let c = quad(2u * b + 1u);
    r.v0 = i8x4(a.x) * d;
    r.v1 = i8x4(a.y) * d;
    r.v2 = i8x4(a.z) * d;
    r.v3 = i8x4(a.w) * d;
    r.v4 = i8x4(c.x) * d;
    r.v5 = i8x4(c.y) * d;
    r.v6 = i8x4(c.z) * d;
    r.v7 = i8x4(c.w) * d;
#endif
#if Q4_0 || Q4_1
    // quad: qs[16] (low nibbles values 0..15, high 16..31); scale: d (Q4_0:
    // (q - 8) d) or d, m (Q4_1: q d + m).
    let dm = unpack2x16float(sword(b));
    let d = dm.x;
#if Q4_0
    let m = -8.0 * d;
#else
    let m = dm.y;
#endif
    let q = quad(b);
    r.v0 = nib4(q.x, 0u) * d + m;
    r.v1 = nib4(q.y, 0u) * d + m;
    r.v2 = nib4(q.z, 0u) * d + m;
    r.v3 = nib4(q.w, 0u) * d + m;
    r.v4 = nib4(q.x, 4u) * d + m;
    r.v5 = nib4(q.y, 4u) * d + m;
    r.v6 = nib4(q.z, 4u) * d + m;
    r.v7 = nib4(q.w, 4u) * d + m;
#endif
#if Q5_0 || Q5_1
    // quad: qs[16]; scales: d (Q5_0: (q - 16) d) or d, m (Q5_1: q d + m), then
    // qh (bit j is value j's fifth bit).
    let dm = unpack2x16float(sword(2u * b));
    let qh = sword(2u * b + 1u);
    let d = dm.x;
#if Q5_0
    let m = -16.0 * d;
#else
    let m = dm.y;
#endif
    let q = quad(b);
    r.v0 = (nib4(q.x, 0u) + hbit4(qh, 0u)) * d + m;
    r.v1 = (nib4(q.y, 0u) + hbit4(qh, 4u)) * d + m;
    r.v2 = (nib4(q.z, 0u) + hbit4(qh, 8u)) * d + m;
    r.v3 = (nib4(q.w, 0u) + hbit4(qh, 12u)) * d + m;
    r.v4 = (nib4(q.x, 4u) + hbit4(qh, 16u)) * d + m;
    r.v5 = (nib4(q.y, 4u) + hbit4(qh, 20u)) * d + m;
    r.v6 = (nib4(q.z, 4u) + hbit4(qh, 24u)) * d + m;
    r.v7 = (nib4(q.w, 4u) + hbit4(qh, 28u)) * d + m;
#endif
#if Q4_K || Q5_K
    // quads: [d, dmin: f16 | scales: 12 bytes] [(Q5_K) qh: 2 quads] [qs: 8 quads].
    // Sub-block s reads nibbles (low for even s) of qs bytes 32·(s/2) …, and
    // (Q5_K) bit s of qh byte i as value i's fifth bit.
    let k = QUADS * b;
    let h = quad(k);
    let sm = scale_min_k4(h, s);
    let dd = unpack2x16float(h.x);
    let d = dd.x * sm.x;
    let m = dd.y * sm.y;
    let shift = 4u * (s & 1u);
    let qs = k + QUADS - 8u + 2u * (s >> 1u);
    let a = quad(qs);
    let c = quad(qs + 1u);
    r.v0 = nib4(a.x, shift);
    r.v1 = nib4(a.y, shift);
    r.v2 = nib4(a.z, shift);
    r.v3 = nib4(a.w, shift);
    r.v4 = nib4(c.x, shift);
    r.v5 = nib4(c.y, shift);
    r.v6 = nib4(c.z, shift);
    r.v7 = nib4(c.w, shift);
#if Q5_K
    let ha = quad(k + 1u);
    let hc = quad(k + 2u);
    r.v0 += qbit4(ha.x, s);
    r.v1 += qbit4(ha.y, s);
    r.v2 += qbit4(ha.z, s);
    r.v3 += qbit4(ha.w, s);
    r.v4 += qbit4(hc.x, s);
    r.v5 += qbit4(hc.y, s);
    r.v6 += qbit4(hc.z, s);
    r.v7 += qbit4(hc.w, s);
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
    // quads: [ql: 8][qh: 4][scales: 16 × i8]; scale plane: d. Sub-block
    // s = 4·half + quarter: low 4 bits from ql bytes 64·half + 32·(quarter & 1) + i
    // (high nibble when quarter ≥ 2), 2 high bits from qh bytes 32·half + i at
    // 2·quarter; scale byte 8·half + i/16 + 2·quarter.
    let k = 13u * b;
    let d = unpack2x16float(sword(b)).x;
    let half = s >> 2u;
    let quarter = s & 3u;
    let la = quad(k + 4u * half + 2u * (quarter & 1u));
    let lc = quad(k + 4u * half + 2u * (quarter & 1u) + 1u);
    let ha = quad(k + 8u + 2u * half);
    let hc = quad(k + 9u + 2u * half);
    let sc = quad(k + 12u);
    let si = 8u * half + 2u * quarter;
    let d0 = d * f32(i32(qbyte(sc, si) << 24u) >> 24u);
    let d1 = d * f32(i32(qbyte(sc, si + 1u) << 24u) >> 24u);
    let ns = 4u * (quarter >> 1u);
    let hs = 2u * quarter;
    r.v0 = q6x4(la.x, ha.x, ns, hs) * d0;
    r.v1 = q6x4(la.y, ha.y, ns, hs) * d0;
    r.v2 = q6x4(la.z, ha.z, ns, hs) * d0;
    r.v3 = q6x4(la.w, ha.w, ns, hs) * d0;
    r.v4 = q6x4(lc.x, hc.x, ns, hs) * d1;
    r.v5 = q6x4(lc.y, hc.y, ns, hs) * d1;
    r.v6 = q6x4(lc.z, hc.z, ns, hs) * d1;
    r.v7 = q6x4(lc.w, hc.w, ns, hs) * d1;
#endif
    return r;
}
