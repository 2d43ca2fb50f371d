// Embedding lookup: out[t] = dequant(W[ids[t]]) for rows held by this chunk.
// One thread per (token, 32-value sub-block). Constants: WG, QUADS,
// SCALE_WORDS, SUBS, ROW_GROUP (the weight's layout: see dequant.wgsl).

#include step

struct Params {
    rows: u32,      // rows in this chunk
    cols: u32,      // hidden size
    row_start: u32, // first vocabulary id of this chunk
    scale_offset: u32, // word offset of the scale plane in the weight buffer
}

@group(0) @binding(1) var<uniform> p: Params;
#if QUAD_TEXTURE
@group(0) @binding(2) var wq: texture_2d<u32>;                   // quant plane (texel (row, quad))
@group(0) @binding(5) var wst: texture_2d<u32>;                  // scale plane (texel (row, SCALE_UNITS blocks))
#else
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;    // quant plane
@group(0) @binding(5) var<storage, read> ws: array<ScaleUnit>;         // the same buffer: scale plane at p.scale_offset
#endif
@group(0) @binding(3) var<storage, read> ids: array<u32>;        // [n_tokens]
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;  // [n_tokens, cols / 4]

#include dequant

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n_sub = p.cols / 32u;
    let t = gid.y;
    let sb = gid.x;
    if (t >= step.n_tokens || sb >= n_sub) {
        return;
    }
    let id = ids[t];
    if (id < p.row_start || id >= p.row_start + p.rows) {
        return;
    }
    select_row(id - p.row_start, n_sub / SUBS, p.scale_offset);
    let v = dequant32(sb / SUBS, sb % SUBS);
    let o = t * (p.cols / 4u) + sb * 8u;
    out[o] = v.v0;
    out[o + 1u] = v.v1;
    out[o + 2u] = v.v2;
    out[o + 3u] = v.v3;
    out[o + 4u] = v.v4;
    out[o + 5u] = v.v5;
    out[o + 6u] = v.v6;
    out[o + 7u] = v.v7;
}
