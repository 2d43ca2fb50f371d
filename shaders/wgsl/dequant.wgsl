// Fragment, included with `#include dequant`: expands 32 values of a weight
// row into eight vec4s (registers, not an indexed array). The including
// shader declares `w: array<vec4<u32>>` (the quant plane) and `ws:
// array<ScaleUnit>` (the same buffer, read from its scale plane at
// p.scale_offset words) or, with QUAD_TEXTURE, the textures `wq` and `wst`,
// and one format flag; QUADS, SCALE_WORDS and SUBS come from the format's
// row of the block-format table in Rust (`FORMATS`, `block_layout`),
// ROW_GROUP from `row_group`.
//
// Per block: QUADS 16-byte quads of quants (read with one load each; block
// b's first is quad QUADS · b) and SCALE_WORDS words of scales (f16 d / m,
// and Q5's high bits) in their own plane, so every quad stays aligned
// whatever the block size.
//
// In buffers each plane holds the rows in groups of ROW_GROUP, item-major
// within a group: quad k of each of the group's rows side by side, then
// quad k + 1 (a chunk's last group is padded with zero rows). ROW_GROUP is 1
// (rows whole, one after another) for the workgroup-per-row shape and, for
// most formats, 8 for thread per row, whose 8 lanes then read neighbouring
// rows' quads from one place (see runtime/src/gpu/weights.rs). Quad k of the
// current row is w[q_base + ROW_GROUP · k]. Textures (QUAD_TEXTURE) are laid
// out block-major instead (below).

// A block's scale words, read with one load (the scale plane's items):
// Q5_0 and Q5_1 have two.
#if Q5_0 || Q5_1
alias ScaleUnit = vec2<u32>;
#else
alias ScaleUnit = u32;
#endif

#if QUAD_TEXTURE
// QUAD_TEXTURE: the planes are Rgba32Uint textures, block-major, in bands
// of TEX_ROWS rows (see `Planes::Textures` in runtime/src/gpu/weights.rs):
// quad k of the chunk's row r is texel (r % TEX_ROWS, (r / TEX_ROWS) · h + k)
// of `wq`, h a row's quads; the scale units of its blocks SCALE_UNITS · j …
// are texel (r % TEX_ROWS, (r / TEX_ROWS) · h' + j) of `wst`, h' a row's
// scale texels. ROW_GROUP then only spreads a subgroup's lanes over
// neighbouring rows (`thread_row`).
const SCALE_UNITS: u32 = 4u / max(SCALE_WORDS, 1u);
// The current row's quad 0 and first scale texel.
var<private> t_quad: vec2<u32>;
var<private> t_scale: vec2<u32>;

fn select_row(row: u32, blocks_per_row: u32, scale_offset: u32) {
    let band = row / TEX_ROWS;
    t_quad = vec2<u32>(row % TEX_ROWS, band * blocks_per_row * QUADS);
    t_scale = vec2<u32>(row % TEX_ROWS, band * ((blocks_per_row + SCALE_UNITS - 1u) / SCALE_UNITS));
}

fn quad(k: u32) -> vec4<u32> {
    return textureLoad(wq, vec2<u32>(t_quad.x, t_quad.y + k), 0);
}

// Scale texel j of the current row.
fn scale_texel(j: u32) -> vec4<u32> {
    return textureLoad(wst, vec2<u32>(t_scale.x, t_scale.y + j), 0);
}

// Block k's scale words in t, the scale texel that holds them.
fn texel_sword(t: vec4<u32>, k: u32) -> ScaleUnit {
#if Q5_0 || Q5_1
    return select(t.xy, t.zw, (k & 1u) == 1u);
#else
    return t[k % 4u];
#endif
}

// Block k's scale words.
fn sword(k: u32) -> ScaleUnit {
    return texel_sword(scale_texel(k / SCALE_UNITS), k);
}
#else
var<private> q_base: u32;
var<private> s_base: u32;

fn select_row(row: u32, blocks_per_row: u32, scale_offset: u32) {
    let first = row - row % ROW_GROUP;
    q_base = first * blocks_per_row * QUADS + row % ROW_GROUP;
    // In ScaleUnits (the scale plane starts 16-byte aligned).
    s_base = scale_offset / max(SCALE_WORDS, 1u) + first * blocks_per_row + row % ROW_GROUP;
}

fn quad(k: u32) -> vec4<u32> {
    return w[q_base + ROW_GROUP * k];
}

// Block k's scale words.
fn sword(k: u32) -> ScaleUnit {
    return ws[s_base + ROW_GROUP * k];
}
#endif

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

// The quantised values of a word's four bytes, each left in place: byte
// k's (word >> 8k) & mask as a float times 2^8k (exact in f32), which
// BYTE_SCALE undoes. The formats first gather a value's bits into its byte
// with a few operations on the whole word (`q5w`, `q5kw`, `q6w`); then a
// value costs a mask and a conversion. CPU adapters pay for every operation
// on every value of a lane, and a shift per value was a quarter of them.
fn fields(word: u32, mask: u32) -> vec4<f32> {
    return vec4<f32>(vec4<u32>(word) & (vec4<u32>(mask) << vec4<u32>(0u, 8u, 16u, 24u)));
}

const BYTE_SCALE = vec4<f32>(1.0, 1.0 / 256.0, 1.0 / 65536.0, 1.0 / 16777216.0);

// The nibbles at `shift` (0: low, 4: high) of a word's bytes, in place.
fn nibs(q: u32, shift: u32) -> vec4<f32> {
    return fields(q >> shift, 0xfu);
}

// The nibbles at `shift` (0: low, 4: high) of a word's bytes, each at the
// bottom of its byte: where the 5- and 6-bit formats add their high bits.
fn nibble_bytes(q: u32, shift: u32) -> u32 {
    return (q >> shift) & 0x0f0f0f0fu;
}

// Bits 0..3 of n to bit 0 of bytes 0..3 (each bit times 1 + 2^7 + 2^14 + 2^21
// lands once on a byte boundary, the others between; no two overlap).
fn spread4(n: u32) -> u32 {
    return (n * 0x00204081u) & 0x01010101u;
}

// Q5_0, Q5_1: 5-bit values (fields 0x1f) from the nibbles at `shift` of q's
// bytes and bits j … j + 3 of qh as their fifth.
fn q5w(q: u32, shift: u32, qh: u32, j: u32) -> u32 {
    return nibble_bytes(q, shift) | (spread4((qh >> j) & 15u) << 4u);
}

// Q5_K: 5-bit values (fields 0x1f) from the nibbles at `shift` of q's bytes
// and bit s of each byte of h as their fifth.
fn q5kw(q: u32, shift: u32, h: u32, s: u32) -> u32 {
    return nibble_bytes(q, shift) | (((h >> s) & 0x01010101u) << 4u);
}

// Four bf16 values from two words.
fn bf16x4(a: u32, b: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(vec4<u32>(a << 16u, a & 0xffff0000u, b << 16u, b & 0xffff0000u));
}

// Q6_K: 6-bit values (fields 0x3f; the value is that minus 32) from a
// word of low nibbles at nshift and a word of high bit pairs at hshift.
fn q6w(ql: u32, qh: u32, nshift: u32, hshift: u32) -> u32 {
    return nibble_bytes(ql, nshift) | (((qh >> hshift) & 0x03030303u) << 4u);
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
#include dequant_body store
    return r;
}
