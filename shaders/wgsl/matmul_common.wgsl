// Fragment, included with `#include matmul_common` by the two matmul
// families, one per kernel shape (matmul_thread.wgsl for CPU adapters,
// matmul_workgroup.wgsl for GPUs): what both share. Each computes
//   y[t, r] (+)= Σ_c W[r, c] · x[t, c] (+ b[r]) for the tokens of this pass.
//
// W is one row chunk of a weight in its repacked block format (see
// runtime/src/gpu/weights.rs): every 32 values of a row form a sub-block that
// `dequant32` expands into registers. The format is a flag (F32 … Q6_K).
// BIAS adds b[r]; ACC adds into y (fused residual).
//
// `experts` (both families): the routed experts of a mixture-of-experts layer.
// W stacks every expert's `expert_rows` rows; slot s (token s / top_k, its
// (s % top_k)-th choice) computes y[s] = W[ids[s]] · x[s / x_div], reading the
// expert ids the router wrote on the GPU. Chunks hold whole experts; a chunk
// skips slots whose expert another chunk holds.
//
// PAGED (`experts`, `grouped`): W is an expert cache of slots, not every
// expert (runtime/src/gpu/paging.rs): expert e's rows lie in slot
// slot_of[e], and an expert whose slot_of is NO_SLOT (not resident in this
// round of uploads) is skipped like one another chunk holds. Each row's
// arithmetic is the resident kernel's, so results are bit-identical.
//
// `grouped` (both families): the routed experts for a pass of many tokens,
// each expert's weights read once per tile of up to TILE_T of its slots.
// Tile i = (expert, count) comes from moe.wgsl's `sort`; its slots' x and y
// rows are TILE_T·i … (the base from the workgroup id: uniform, so CPU
// adapters load x as broadcasts, not gathers).
// Constants: WG, TILE_T, the format's QUADS, SCALE_WORDS, SUBS, and the
// layout's ROW_GROUP (dequant.wgsl).

#include step

struct Params {
    rows: u32,       // rows in this chunk
    cols: u32,       // values per row
    row_offset: u32, // first row of this chunk in y
    y_stride: u32,   // y row length (all chunks' rows)
    single: u32,     // 1: one token (x row 0 → y row 0), e.g. the LM head
    x_stride: u32,   // x row length
    pad1: u32,
    scale_offset: u32, // word offset of the scale plane in the weight buffer
    expert_rows: u32, // `experts`: rows of one expert
    x_div: u32,       // `experts`: x row of slot s is s / x_div (top_k, or 1)
    top_k: u32,       // `experts`: slots per token
    pad0: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
#if QUAD_TEXTURE
@group(0) @binding(2) var wq: texture_2d<u32>;                 // quant plane (texel (row, quad))
@group(0) @binding(6) var wst: texture_2d<u32>;                // scale plane (texel (row, SCALE_UNITS blocks))
#else
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;  // quant plane [blocks · QUADS] per row
@group(0) @binding(6) var<storage, read> ws: array<ScaleUnit>;       // the same buffer: scale plane at p.scale_offset
#endif
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;  // [n_tokens, x_stride / 4]
@group(0) @binding(4) var<storage, read_write> y: array<f32>;  // [n_tokens, y_stride]
#if BIAS
@group(0) @binding(5) var<storage, read> b: array<f32>;        // [all chunks' rows]
#endif
@group(0) @binding(7) var<storage, read> ids: array<u32>;      // `experts`: [n_tokens · top_k] expert ids
@group(0) @binding(8) var<storage, read> tiles: array<vec2<u32>>; // `grouped`: (expert, slots)
#if PAGED
@group(0) @binding(9) var<storage, read> slot_of: array<u32>;  // [n_experts] slot, or NO_SLOT
#endif

const NO_SLOT: u32 = 0xffffffffu;

// Where expert e's rows lie in W, in units of expert_rows (NO_SLOT: nowhere).
fn expert_slot(e: u32) -> u32 {
#if PAGED
    return slot_of[e];
#else
    return e;
#endif
}

// `experts`: slot s's row r of its expert, as a row of this chunk, and whether
// this chunk holds it.
fn expert_row(s: u32, r: u32) -> vec2<u32> {
    let slot = expert_slot(ids[s]);
    let row = slot * p.expert_rows + r;
    let here = slot != NO_SLOT && row >= p.row_offset && row < p.row_offset + p.rows && r < p.expert_rows;
    return vec2<u32>(select(0u, row - p.row_offset, here), select(0u, 1u, here));
}

// `grouped`: tile i's expert's row r as a row of this chunk, whether this
// chunk holds it, and the tile's count of slots.
fn tile_row(i: u32, r: u32) -> vec3<u32> {
    // (An empty pass lists no tiles; reading the step also keeps binding 0 in
    // this entry's automatic layout, which every op binds.)
    let tile = select(tiles[i], vec2<u32>(0u), step.n_tokens == 0u);
    let slot = expert_slot(tile.x);
    let row = slot * p.expert_rows + r;
    let here = tile.y > 0u && slot != NO_SLOT && row >= p.row_offset && row < p.row_offset + p.rows && r < p.expert_rows;
    return vec3<u32>(select(0u, row - p.row_offset, here), select(0u, 1u, here), tile.y);
}

// `experts`: y[s, r] (f32, rows of expert_rows).
fn store_slot(s: u32, r: u32, v: f32) {
    y[s * p.expert_rows + r] = v;
}

#include dequant

fn tokens() -> vec2<u32> {
    // (first token, count)
    if (p.single == 1u) {
        return vec2<u32>(0u, 1u);
    }
    return vec2<u32>(0u, step.n_tokens);
}

fn store(t: u32, r: u32, value: f32) {
    var v = value;
#if BIAS
    v += b[p.row_offset + r];
#endif
    let at = t * p.y_stride + p.row_offset + r;
#if ACC
    y[at] += v;
#else
    y[at] = v;
#endif
}

// Accumulating a tile of tokens in named variables (not an indexed array,
// which CPU adapters spill to per-thread memory) fixes the tile at 8.
const_assert TILE_T == 8u;

struct Tile {
    a0: f32,
    a1: f32,
    a2: f32,
    a3: f32,
    a4: f32,
    a5: f32,
    a6: f32,
    a7: f32,
}

fn tile_value(a: Tile, j: u32) -> f32 {
    switch (j) {
        case 0u: { return a.a0; }
        case 1u: { return a.a1; }
        case 2u: { return a.a2; }
        case 3u: { return a.a3; }
        case 4u: { return a.a4; }
        case 5u: { return a.a5; }
        case 6u: { return a.a6; }
        default: { return a.a7; }
    }
}
