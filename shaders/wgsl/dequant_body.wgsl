// Fragment: the body that expands 32 values (sub-block s of block b) of a
// weight row, one `EMIT(i, vec4)` per 4 values. Included by
// `#include dequant_body MODE`, which rewrites each EMIT: `store` into
// `r.v<i>` (dequant32), `dot` into a running dot product with x (one token),
// `tile` into dot products with the 8 tokens of a tile (`tile4`, `tile2`: its
// first 4 or 2). Emitting and consuming 4 values at a time keeps few values live: CPU adapters give every
// invocation's value a SIMD register, and a 32-value array spills.
//
// The quantised formats emit `EMIT_SCALED(i, q, s, d, m)`, the values
// q · s · d + m with q their bits in place (`fields`, dequant.wgsl) and s
// the powers of two that undo that, then `EMIT_DONE(d, m)` after the last.
// Every mode takes the values as from EMIT, except the thread-per-row dot
// products (`dot_sg`, `dot_regs`: CPU adapters), which sum q · (x · s) and
// apply d and m once a sub-block: d · Σ q(x·s) + m · Σx (see `emit` in the
// shaders crate).
#if F32
    let k = QUADS * b;
    EMIT(0, bitcast<vec4<f32>>(quad(k)));
    EMIT(1, bitcast<vec4<f32>>(quad(k + 1u)));
    EMIT(2, bitcast<vec4<f32>>(quad(k + 2u)));
    EMIT(3, bitcast<vec4<f32>>(quad(k + 3u)));
    EMIT(4, bitcast<vec4<f32>>(quad(k + 4u)));
    EMIT(5, bitcast<vec4<f32>>(quad(k + 5u)));
    EMIT(6, bitcast<vec4<f32>>(quad(k + 6u)));
    EMIT(7, bitcast<vec4<f32>>(quad(k + 7u)));
#endif
#if F16
    let k = QUADS * b;
    let a = quad(k);
    let c = quad(k + 1u);
    let e = quad(k + 2u);
    let g = quad(k + 3u);
    EMIT(0, vec4<f32>(unpack2x16float(a.x), unpack2x16float(a.y)));
    EMIT(1, vec4<f32>(unpack2x16float(a.z), unpack2x16float(a.w)));
    EMIT(2, vec4<f32>(unpack2x16float(c.x), unpack2x16float(c.y)));
    EMIT(3, vec4<f32>(unpack2x16float(c.z), unpack2x16float(c.w)));
    EMIT(4, vec4<f32>(unpack2x16float(e.x), unpack2x16float(e.y)));
    EMIT(5, vec4<f32>(unpack2x16float(e.z), unpack2x16float(e.w)));
    EMIT(6, vec4<f32>(unpack2x16float(g.x), unpack2x16float(g.y)));
    EMIT(7, vec4<f32>(unpack2x16float(g.z), unpack2x16float(g.w)));
#endif
#if BF16
    let k = QUADS * b;
    let a = quad(k);
    let c = quad(k + 1u);
    let e = quad(k + 2u);
    let g = quad(k + 3u);
    EMIT(0, bf16x4(a.x, a.y));
    EMIT(1, bf16x4(a.z, a.w));
    EMIT(2, bf16x4(c.x, c.y));
    EMIT(3, bf16x4(c.z, c.w));
    EMIT(4, bf16x4(e.x, e.y));
    EMIT(5, bf16x4(e.z, e.w));
    EMIT(6, bf16x4(g.x, g.y));
    EMIT(7, bf16x4(g.z, g.w));
#endif
#if Q8_0
    // quads: qs[32] as i8, read as q + 128 (bytes ^ 0x80): (q + 128) d - 128 d
    // (its rounding error that of 128·d, not of q·d: well inside the
    // kernels' tolerances); scale: d
    let d = unpack2x16float(sword(b)).x;
    let m = -128.0 * d;
    let a = quad(QUADS * b);
    let c = quad(QUADS * b + 1u);
    EMIT_SCALED(0, fields(a.x ^ 0x80808080u, 0xffu), BYTE_SCALE, d, m);
    EMIT_SCALED(1, fields(a.y ^ 0x80808080u, 0xffu), BYTE_SCALE, d, m);
    EMIT_SCALED(2, fields(a.z ^ 0x80808080u, 0xffu), BYTE_SCALE, d, m);
    EMIT_SCALED(3, fields(a.w ^ 0x80808080u, 0xffu), BYTE_SCALE, d, m);
    EMIT_SCALED(4, fields(c.x ^ 0x80808080u, 0xffu), BYTE_SCALE, d, m);
    EMIT_SCALED(5, fields(c.y ^ 0x80808080u, 0xffu), BYTE_SCALE, d, m);
    EMIT_SCALED(6, fields(c.z ^ 0x80808080u, 0xffu), BYTE_SCALE, d, m);
    EMIT_SCALED(7, fields(c.w ^ 0x80808080u, 0xffu), BYTE_SCALE, d, m);
    EMIT_DONE(d, m);
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
    let q = quad(QUADS * b);
    EMIT_SCALED(0, nibs(q.x, 0u), BYTE_SCALE, d, m);
    EMIT_SCALED(1, nibs(q.y, 0u), BYTE_SCALE, d, m);
    EMIT_SCALED(2, nibs(q.z, 0u), BYTE_SCALE, d, m);
    EMIT_SCALED(3, nibs(q.w, 0u), BYTE_SCALE, d, m);
    EMIT_SCALED(4, nibs(q.x, 4u), BYTE_SCALE, d, m);
    EMIT_SCALED(5, nibs(q.y, 4u), BYTE_SCALE, d, m);
    EMIT_SCALED(6, nibs(q.z, 4u), BYTE_SCALE, d, m);
    EMIT_SCALED(7, nibs(q.w, 4u), BYTE_SCALE, d, m);
    EMIT_DONE(d, m);
#endif
#if Q5_0 || Q5_1
    // quad: qs[16]; scales: d (Q5_0: (q - 16) d) or d, m (Q5_1: q d + m), then
    // qh (bit j is value j's fifth bit).
    let sc = sword(b);
    let dm = unpack2x16float(sc.x);
    let qh = sc.y;
    let d = dm.x;
#if Q5_0
    let m = -16.0 * d;
#else
    let m = dm.y;
#endif
    let q = quad(QUADS * b);
    EMIT_SCALED(0, fields(q5w(q.x, 0u, qh, 0u), 0x1fu), BYTE_SCALE, d, m);
    EMIT_SCALED(1, fields(q5w(q.y, 0u, qh, 4u), 0x1fu), BYTE_SCALE, d, m);
    EMIT_SCALED(2, fields(q5w(q.z, 0u, qh, 8u), 0x1fu), BYTE_SCALE, d, m);
    EMIT_SCALED(3, fields(q5w(q.w, 0u, qh, 12u), 0x1fu), BYTE_SCALE, d, m);
    EMIT_SCALED(4, fields(q5w(q.x, 4u, qh, 16u), 0x1fu), BYTE_SCALE, d, m);
    EMIT_SCALED(5, fields(q5w(q.y, 4u, qh, 20u), 0x1fu), BYTE_SCALE, d, m);
    EMIT_SCALED(6, fields(q5w(q.z, 4u, qh, 24u), 0x1fu), BYTE_SCALE, d, m);
    EMIT_SCALED(7, fields(q5w(q.w, 4u, qh, 28u), 0x1fu), BYTE_SCALE, d, m);
    EMIT_DONE(d, m);
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
#if Q5_K
    let ha = quad(k + 1u);
    let hc = quad(k + 2u);
#endif
#include kquant_values
#endif
#if Q6_K
    // quads: [ql: 8][qh: 4][scales: 16 × i8]; scale plane: d. Sub-block
    // s = 4·half + quarter: low 4 bits from ql bytes 64·half + 32·(quarter & 1) + i
    // (high nibble when quarter ≥ 2), 2 high bits from qh bytes 32·half + i at
    // 2·quarter; scale byte 8·half + i/16 + 2·quarter.
    let k = QUADS * b;
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
#include kquant_values
#endif
