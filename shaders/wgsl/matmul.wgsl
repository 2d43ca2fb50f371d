// y[t, r] (+)= Σ_c W[r, c] · x[t, c] (+ b[r]) for the tokens of this pass.
//
// W is one row chunk of a weight in its repacked block format (see
// runtime/src/gpu/weights.rs): every 32 values of a row form a sub-block that
// `dequant32` expands into registers. The format is a flag (F32 … Q6_K);
// so is the shape:
//   ROW_PER_THREAD    one thread computes one row for TILE_T tokens (CPU adapters,
//                     where barriers and workgroup memory are expensive);
//   ROW_PER_WORKGROUP WG threads split one row's sub-blocks and reduce (GPUs);
//                     passes of several tokens take `gemm`, a tiled GEMM.
// BIAS adds b[r]; ACC adds into y (fused residual). SUBGROUPS: the
// workgroup-per-row sums reduce with
// subgroupAdd; thread per row shares each x load across 8 lanes.
//
// `experts` (either shape): the routed experts of a mixture-of-experts layer.
// W stacks every expert's `expert_rows` rows; slot s (token s / top_k, its
// (s % top_k)-th choice) computes y[s] = W[ids[s]] · x[s / x_div], reading the
// expert ids the router wrote on the GPU. Chunks hold whole experts; a chunk
// skips slots whose expert another chunk holds.
//
// `grouped` (either shape): the routed experts for a pass of many tokens,
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

// `experts`: slot s's row r of its expert, as a row of this chunk, and whether
// this chunk holds it.
fn expert_row(s: u32, r: u32) -> vec2<u32> {
    let row = ids[s] * p.expert_rows + r;
    let here = row >= p.row_offset && row < p.row_offset + p.rows && r < p.expert_rows;
    return vec2<u32>(select(0u, row - p.row_offset, here), select(0u, 1u, here));
}

// `grouped`: tile i's expert's row r as a row of this chunk, whether this
// chunk holds it, and the tile's count of slots.
fn tile_row(i: u32, r: u32) -> vec3<u32> {
    // (An empty pass lists no tiles; reading the step also keeps binding 0 in
    // this entry's automatic layout, which every op binds.)
    let tile = select(tiles[i], vec2<u32>(0u), step.n_tokens == 0u);
    let row = tile.x * p.expert_rows + r;
    let here = tile.y > 0u && row >= p.row_offset && row < p.row_offset + p.rows && r < p.expert_rows;
    return vec3<u32>(select(0u, row - p.row_offset, here), select(0u, 1u, here), tile.y);
}

// `experts`: y[s, r] (f32, rows of expert_rows).
fn store_slot(s: u32, r: u32, v: f32) {
    y[s * p.expert_rows + r] = v;
}

#include dequant

#if ROW_PER_THREAD
// A sub-block's x in registers, also times BYTE_SCALE and summed, for the
// quantised formats' d·Σq(x·s) + m·Σx (EMIT_SCALED): computed once for all
// of a thread's rows (the `dot_regs` mode).
struct XRegs {
    v: W32,
    scaled: W32,
    sum: f32,
}

fn x_regs_of(v: W32) -> XRegs {
    let scaled = W32(v.v0 * BYTE_SCALE, v.v1 * BYTE_SCALE, v.v2 * BYTE_SCALE, v.v3 * BYTE_SCALE,
        v.v4 * BYTE_SCALE, v.v5 * BYTE_SCALE, v.v6 * BYTE_SCALE, v.v7 * BYTE_SCALE);
    let t = ((v.v0 + v.v1) + (v.v2 + v.v3)) + ((v.v4 + v.v5) + (v.v6 + v.v7));
    return XRegs(v, scaled, dot(t, vec4<f32>(1.0)));
}

#if SUBGROUPS
// With subgroups (CPU adapters: a subgroup is one SIMD register's lanes,
// each a thread), every lane loads one vec4 of a sub-block's x and takes
// the other seven from its neighbours. Loads at a per-thread address cost
// a scalar load per lane on such adapters, so this reads x with 4 instead
// of 32 per lane. Needs subgroups of at least 8.
var<private> lane: u32;

fn x_sub(x4: u32) -> XRegs {
    let v = x[x4 + lane];
    return x_regs_of(W32(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u), subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u),
        subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u), subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u)));
}
#else
// Without subgroups (the browser's CPU adapter), each thread loads it: a
// thread's x loads (8 per sub-block) outnumber its weight loads (1 to 8),
// and on a CPU adapter each is a gather.
fn x_sub(x4: u32) -> XRegs {
    return x_regs_of(W32(x[x4], x[x4 + 1u], x[x4 + 2u], x[x4 + 3u], x[x4 + 4u], x[x4 + 5u], x[x4 + 6u], x[x4 + 7u]));
}
#endif
#endif

#if ROW_PER_WORKGROUP || !QUAD_TEXTURE || F32 || F16 || BF16
#if !SUBGROUPS || ROW_PER_WORKGROUP
// A sub-block's x (one token): the index of its first vec4; a block's: the same.
alias XArg = u32;
alias XBlock = u32;

fn xblock(x4: u32) -> XBlock {
    return x4;
}

fn xsub(xq: XBlock, s: u32) -> XArg {
    return xq + 8u * s;
}

// Σ over sub-block s of block b times x (one token), 4 values at a time.
fn dot_sub(b: u32, s: u32, x4: XArg) -> f32 {
    var acc = 0.0;
#include dequant_body dot
    return acc;
}

#include dequant_block dot

#if ROW_PER_THREAD
// Thread per row without subgroups (the browser's CPU adapter), weights in
// buffers: a thread's rows share each sub-block's x, loaded once into
// registers (`rows_shared`).
fn dot_regs(b: u32, s: u32, x4: XRegs) -> f32 {
    var acc = 0.0;
    var accq = 0.0;
#include dequant_body dot_regs
    return acc;
}

// What `rows_shared` steps by: a sub-block (the path for weights in textures
// holds a K-quant block's, spilling registers, for its fewer texel fetches).
const UNIT_SUBS: u32 = 1u;
alias XUnit = XRegs;

fn x_unit(x0: u32, u: u32) -> XUnit {
    return x_sub(x0 + u * 8u);
}

fn dot_unit(u: u32, xr: XUnit) -> f32 {
    return dot_regs(u / SUBS, u % SUBS, xr);
}
#endif
#else
// Thread per row with subgroups, weights in buffers: each lane holds one
// vec4 of each sub-block's x, and each row's dot products take the other
// seven by broadcast.
// This lane's vec4 of a sub-block's x; of each sub-block of a block.
alias XArg = vec4<f32>;
alias XBlock = array<vec4<f32>, SUBS>;

fn xblock(x4: u32) -> XBlock {
    var v: XBlock;
    for (var s = 0u; s < SUBS; s++) {
        v[s] = x[x4 + 8u * s + lane];
    }
    return v;
}

fn xsub(xq: XBlock, s: u32) -> XArg {
    return xq[s];
}

// Σ of a sub-block's x (EMIT_DONE), from the broadcasts the dot products
// take too: the same expressions for every row of a lane, which the
// compiler computes once.
fn sub_xsum(x4: XArg) -> f32 {
    let t = (subgroupBroadcast(x4, 0u) + subgroupBroadcast(x4, 1u)) + (subgroupBroadcast(x4, 2u) + subgroupBroadcast(x4, 3u))
        + ((subgroupBroadcast(x4, 4u) + subgroupBroadcast(x4, 5u)) + (subgroupBroadcast(x4, 6u) + subgroupBroadcast(x4, 7u)));
    return dot(t, vec4<f32>(1.0));
}

fn dot_sub(b: u32, s: u32, x4: XArg) -> f32 {
    var acc = 0.0;
    var accq = 0.0;
#include dequant_body dot_sg
    return acc;
}

#include dequant_block dot_sg
#include block_units
#endif
#else
// Thread per row, quantised weights in textures (block-major,
// dequant.wgsl): each sub-block's x in registers (`x_sub`) for all of a
// thread's SHARED_ROWS rows.
#if Q4_K || Q5_K || Q6_K
// K-quants: `rows_shared` steps by blocks.
alias XArg = XRegs;
alias XBlock = array<XRegs, SUBS>;

fn xblock(x4: u32) -> XBlock {
    var v: XBlock;
    for (var s = 0u; s < SUBS; s++) {
        v[s] = x_sub(x4 + 8u * s);
    }
    return v;
}

fn xsub(xq: XBlock, s: u32) -> XArg {
    return xq[s];
}

#include dequant_block dot_regs
#include block_units
#else
// 32-value blocks: `rows_shared` steps by units of 4 blocks, a scale
// texel's worth (Q5's two), fetched once a row. Blocks past the row's end
// (its last unit) count zero, whatever x holds there.
const UNIT_SUBS: u32 = 4u;

struct XUnit {
    a: XRegs,
    b: XRegs,
    c: XRegs,
    d: XRegs,
}

fn x_unit(x0: u32, u: u32) -> XUnit {
    let x4 = x0 + u * 32u;
    return XUnit(x_sub(x4), x_sub(x4 + 8u), x_sub(x4 + 16u), x_sub(x4 + 24u));
}

// The current unit's scale texels (`unit_scales_at`), and block i's words in
// them (the `_unit` include modes' `unit_sword(i)`).
var<private> unit_scales: array<vec4<u32>, SCALE_WORDS>;

fn unit_sword(i: u32) -> ScaleUnit {
    return texel_sword(unit_scales[i / SCALE_UNITS], i);
}

// Block b (the unit's i-th) of the current row times its x.
fn dot_unit_block(b: u32, i: u32, x4: XRegs) -> f32 {
    var acc = 0.0;
    var accq = 0.0;
#include dequant_body dot_regs_unit
    return select(0.0, acc, b < p.cols / 32u);
}

// Fetch unit u's scale texels.
fn unit_scales_at(u: u32) {
    for (var t = 0u; t < SCALE_WORDS; t++) {
        unit_scales[t] = scale_texel(SCALE_WORDS * u + t);
    }
}

fn dot_unit(u: u32, xq: XUnit) -> f32 {
    unit_scales_at(u);
    let b = 4u * u;
    return (dot_unit_block(b, 0u, xq.a) + dot_unit_block(b + 1u, 1u, xq.b))
        + (dot_unit_block(b + 2u, 2u, xq.c) + dot_unit_block(b + 3u, 3u, xq.d));
}

// One block at a time (`row_tile`: the experts' slots).
alias XBlock = XRegs;

fn xblock(x4: u32) -> XBlock {
    return x_sub(x4);
}

fn dot_block(b: u32, xq: XBlock) -> f32 {
    unit_scales_at(b / 4u);
    return dot_unit_block(b, b % 4u, xq);
}
#endif
#endif

#if ROW_PER_THREAD
// Row i of the `per` rows thread g computes. Each ROW_GROUP threads (a
// subgroup's lanes, on CPU adapters) take ROW_GROUP · per rows, lane l rows
// l, l + ROW_GROUP, …: at every step the lanes read neighbouring rows, whose
// quads the layout puts side by side (dequant.wgsl). Threads are launched in
// workgroups of a multiple of ROW_GROUP, so ceil(rows / per) of them, rounded
// up to a workgroup, cover every row.
fn thread_row(g: u32, i: u32, per: u32) -> u32 {
    return (g - g % ROW_GROUP) * per + i * ROW_GROUP + g % ROW_GROUP;
}

// One token: thread g's SHARED_ROWS rows (past the last, the last again),
// each unit's x (`x_unit`: by path a sub-block's, a block's or 4 blocks')
// taken once for all of them. With `half` > 0
// (`glu`), the thread's rows are SHARED_ROWS / 2 rows and the rows `half`
// below them.
const_assert SHARED_ROWS <= 16u && SHARED_ROWS % 2u == 0u;
const_assert WG % ROW_GROUP == 0u;

fn shared_row(g: u32, i: u32, half: u32) -> u32 {
    let h = SHARED_ROWS / 2u;
    let paired = select(thread_row(g, i, h), half + thread_row(g, i - h, h), i >= h);
    return select(thread_row(g, i, SHARED_ROWS), paired, half > 0u);
}

fn rows_shared(x0: u32, n_sub: u32, g: u32, half: u32) -> array<f32, SHARED_ROWS> {
    var acc: array<f32, SHARED_ROWS>;
    for (var u = 0u; u < (n_sub + UNIT_SUBS - 1u) / UNIT_SUBS; u++) {
        let xq = x_unit(x0, u);
        for (var i = 0u; i < SHARED_ROWS; i++) {
            select_row(min(shared_row(g, i, half), p.rows - 1u), n_sub / SUBS, p.scale_offset);
            acc[i] += dot_unit(u, xq);
        }
    }
    return acc;
}
#endif

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

// Sub-block s of block b times the 8 (4, 2) token rows at xb (vec4 stride
// xs), added into a.
#if !SUBGROUPS || ROW_PER_WORKGROUP
fn tile_sub(b: u32, s: u32, xb: u32, xs: u32, tile: ptr<function, Tile>) {
#include dequant_body tile
}

fn tile_sub4(b: u32, s: u32, xb: u32, xs: u32, tile: ptr<function, Tile>) {
#include dequant_body tile4
}

fn tile_sub2(b: u32, s: u32, xb: u32, xs: u32, tile: ptr<function, Tile>) {
#include dequant_body tile2
}
#else
// As dot_sub: each lane loads one vec4 of each token's x (a W32: eight vec4s).
fn tile_sub(b: u32, s: u32, xb: u32, xs: u32, tile: ptr<function, Tile>) {
    let at = xb + lane;
    let xl = W32(x[at], x[at + xs], x[at + 2u * xs], x[at + 3u * xs], x[at + 4u * xs], x[at + 5u * xs], x[at + 6u * xs], x[at + 7u * xs]);
#include dequant_body tile_sg
}

fn tile_sub4(b: u32, s: u32, xb: u32, xs: u32, tile: ptr<function, Tile>) {
    tile_x4(b, s, x4_tokens(xb, xs), tile);
}

// This lane's vec4 of 4 tokens' x (sub-block at xb, token stride xs).
fn x4_tokens(xb: u32, xs: u32) -> W32 {
    let at = xb + lane;
    let z = vec4<f32>(0.0);
    return W32(x[at], x[at + xs], x[at + 2u * xs], x[at + 3u * xs], z, z, z, z);
}

// Sub-block s of block b of the current row times 4 tokens' x (xl).
fn tile_x4(b: u32, s: u32, xl: W32, tile: ptr<function, Tile>) {
#include dequant_body tile4_sg
}

fn tile_sub2(b: u32, s: u32, xb: u32, xs: u32, tile: ptr<function, Tile>) {
    let at = xb + lane;
    let z = vec4<f32>(0.0);
    let xl = W32(x[at], x[at + xs], z, z, z, z, z, z);
#include dequant_body tile2_sg
}
#endif

// Σ over the row's sub-blocks for tokens x0 … x0 + nt - 1 (nt ≤ 8), each
// dequantised vec4 reused for all of them: a tile of 2, 4 or 8, the least
// that holds nt (on CPU adapters a wasted token's dot products cost about as
// much as dequantising again). `first`, `step_sb`: the sub-blocks this
// invocation takes.
fn row_tile(x0: u32, nt: u32, n_sub: u32, first: u32, step_sb: u32) -> Tile {
    let xs = p.x_stride / 4u;
    var a: Tile;
    if (nt == 1u) {
#if ROW_PER_THREAD
        // Whole blocks (see dequant_block.wgsl).
        for (var b = 0u; b < n_sub / SUBS; b++) {
            a.a0 += dot_block(b, xblock(x0 + b * 8u * SUBS));
        }
#else
        for (var sb = first; sb < n_sub; sb += step_sb) {
            a.a0 += dot_sub(sb / SUBS, sb % SUBS, x0 + sb * 8u);
        }
#endif
        return a;
    }
    // Rows past the pass's last token read other (in-bounds) x rows and are never stored.
    if (nt == 2u) {
        for (var sb = first; sb < n_sub; sb += step_sb) {
            tile_sub2(sb / SUBS, sb % SUBS, x0 + sb * 8u, xs, &a);
        }
        return a;
    }
    if (nt <= 4u) {
        for (var sb = first; sb < n_sub; sb += step_sb) {
            tile_sub4(sb / SUBS, sb % SUBS, x0 + sb * 8u, xs, &a);
        }
        return a;
    }
    for (var sb = first; sb < n_sub; sb += step_sb) {
        tile_sub(sb / SUBS, sb % SUBS, x0 + sb * 8u, xs, &a);
    }
    return a;
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

#if ROW_PER_THREAD
// The ids every thread-per-row entry reads.
struct ThreadIds {
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
#if SUBGROUPS
    @builtin(subgroup_invocation_id) sid: u32,
#endif
}

// Where every thread-per-row entry starts: with SUBGROUPS, its lane.
fn enter(ids: ThreadIds) {
#if SUBGROUPS
    lane = ids.sid & 7u;
#endif
}

// Token t's rows of thread g (`rows_shared`), stored. Threads past the
// last row compute the last row again and store nothing: with SUBGROUPS
// every lane must take part in the x exchange.
fn token_rows(t: u32, g: u32) {
    let a = rows_shared((tokens().x + t) * (p.x_stride / 4u), p.cols / 32u, g, 0u);
    for (var i = 0u; i < SHARED_ROWS; i++) {
        let r = thread_row(g, i, SHARED_ROWS);
        if (r < p.rows) {
            store(t, r, a[i]);
        }
    }
}

// One token (passes of one, or `single`; passes of several take `gemm`):
// SHARED_ROWS rows a thread. Grid: (rows / SHARED_ROWS / WG, 1).
@compute @workgroup_size(WG)
fn main(ids: ThreadIds) {
    enter(ids);
    if (tokens().y == 0u) {
        return;
    }
    token_rows(0u, ids.gid.x);
}

#if SUBGROUPS
// Passes of several tokens: one thread computes LANE_TILE (4) rows × 4
// tokens. Each sub-block's x is loaded once for the 4 rows (`main` loads it
// once per row for 8 tokens; a lane's load is a scalar load per lane on CPU
// adapters, so loads, more than weights, bound it); its rows are
// thread_row's. Grid: (rows / 4 / WG, tokens / 4). Threads past the last
// row compute the last row again and store nothing: every lane takes part
// in the x exchange.
const_assert LANE_TILE == 4u;

@compute @workgroup_size(WG)
fn gemm(ids: ThreadIds) {
    enter(ids);
    let tt = tokens();
    let t0 = ids.wid.y * 4u;
    if (t0 >= tt.y) {
        return;
    }
    let g = ids.gid.x;
    let r0 = thread_row(g, 0u, 4u);
    let r1 = thread_row(g, 1u, 4u);
    let r2 = thread_row(g, 2u, 4u);
    let r3 = thread_row(g, 3u, 4u);
    let nt = min(4u, tt.y - t0);
    let xs = p.x_stride / 4u;
    let n_sub = p.cols / 32u;
    let blocks = n_sub / SUBS;
    let last = p.rows - 1u;
    let x0 = (tt.x + t0) * xs;
    var a0: Tile;
    var a1: Tile;
    var a2: Tile;
    var a3: Tile;
    for (var sb = 0u; sb < n_sub; sb++) {
        let xl = x4_tokens(x0 + sb * 8u, xs);
        let b = sb / SUBS;
        let s = sb % SUBS;
        select_row(min(r0, last), blocks, p.scale_offset);
        tile_x4(b, s, xl, &a0);
        select_row(min(r1, last), blocks, p.scale_offset);
        tile_x4(b, s, xl, &a1);
        select_row(min(r2, last), blocks, p.scale_offset);
        tile_x4(b, s, xl, &a2);
        select_row(min(r3, last), blocks, p.scale_offset);
        tile_x4(b, s, xl, &a3);
    }
    for (var j = 0u; j < nt; j++) {
        if (r0 < p.rows) {
            store(t0 + j, r0, tile_value(a0, j));
        }
        if (r1 < p.rows) {
            store(t0 + j, r1, tile_value(a1, j));
        }
        if (r2 < p.rows) {
            store(t0 + j, r2, tile_value(a2, j));
        }
        if (r3 < p.rows) {
            store(t0 + j, r3, tile_value(a3, j));
        }
    }
}
#endif

#if !SUBGROUPS
// Passes of several tokens without subgroups: each token as a decode step
// (SHARED_ROWS rows a thread, each unit's x loaded once for them).
// `main`'s tiles reuse a dequantised sub-block for 8 tokens but load each
// token's x once per row; here x is loaded once per SHARED_ROWS rows and the
// weights once per token, fewer loads in all, which a CPU adapter pays for
// more than the dequantising. Grid: (rows / SHARED_ROWS / WG, tokens).
@compute @workgroup_size(WG)
fn gemm(ids: ThreadIds) {
    enter(ids);
    if (ids.wid.y >= tokens().y) {
        return;
    }
    token_rows(ids.wid.y, ids.gid.x);
}
#endif

// One token, SwiGLU fused: W stacks the gate's rows over as many of the
// up projection's (one chunk, no bias); a thread computes SHARED_ROWS / 2
// gate rows and the up rows p.rows / 2 below them, and stores
// silu(gate) · up into y (p.rows / 2 values), as elementwise.wgsl's
// `swiglu` would. Grid: (rows / SHARED_ROWS / WG, 1).
@compute @workgroup_size(WG)
fn glu(ids: ThreadIds) {
    enter(ids);
    // (Reading the step also keeps binding 0 in this entry's automatic
    // layout, which every op binds.)
    if (step.n_tokens == 0u) {
        return;
    }
    let f = p.rows / 2u;
    let h = SHARED_ROWS / 2u;
    let a = rows_shared(0u, p.cols / 32u, ids.gid.x, f);
    for (var i = 0u; i < h; i++) {
        let r = thread_row(ids.gid.x, i, h);
        let g = a[i];
        if (r < f) {
            y[r] = g / (1.0 + exp(clamp(-g, -80.0, 80.0))) * a[h + i];
        }
    }
}

// One thread: row r of slot s's expert. Grid: (expert_rows / WG, slots).
// A slot whose expert another chunk holds runs zero sub-blocks.
@compute @workgroup_size(WG)
fn experts(ids: ThreadIds) {
    enter(ids);
    let gid = ids.gid;
    let wid = ids.wid;
    let s = wid.y;
    if (s >= step.n_tokens * p.top_k) {
        return;
    }
    let r = min(gid.x, p.expert_rows - 1u);
    let at = expert_row(s, r);
    let n_sub = select(0u, p.cols / 32u, at.y == 1u);
    select_row(at.x, p.cols / 32u / SUBS, p.scale_offset);
    let a = row_tile((s / p.x_div) * (p.x_stride / 4u), 1u, n_sub, 0u, 1u);
    if (at.y == 1u && gid.x < p.expert_rows) {
        store_slot(s, r, a.a0);
    }
}

// One thread: row gid.x of tile wid.y's expert for the tile's slots.
// Grid: (expert_rows / WG, tiles). As in `experts`, a tile this chunk does
// not hold runs zero sub-blocks.
@compute @workgroup_size(WG)
fn grouped(ids: ThreadIds) {
    enter(ids);
    let gid = ids.gid;
    let wid = ids.wid;
    let r = min(gid.x, p.expert_rows - 1u);
    let at = tile_row(wid.y, r);
    let n_sub = select(0u, p.cols / 32u, at.y == 1u);
    let r0 = wid.y * TILE_T;
    select_row(at.x, p.cols / 32u / SUBS, p.scale_offset);
    let a = row_tile(r0 * (p.x_stride / 4u), max(at.z, 1u), n_sub, 0u, 1u);
    if (at.y == 1u && gid.x < p.expert_rows) {
        for (var j = 0u; j < at.z; j++) {
            store_slot(r0 + j, r, tile_value(a, j));
        }
    }
}
#endif

#if ROW_PER_WORKGROUP
var<workgroup> red: array<f32, WG>;

// The entries below take their builtins one by one, not in a struct as the
// thread-per-row ones do: Chrome's WGSL compiler treats a struct holding
// local_invocation_index as non-uniform throughout, workgroup_id with it, and
// then rejects the barriers after an early return on the workgroup id.

// Sum of v over the workgroup, in every invocation's hands at the end. With
// SUBGROUPS: subgroupAdd, then one value per subgroup through workgroup memory.
#if SUBGROUPS
fn workgroup_sum(v: f32, lid: u32, sid: u32, ssize: u32) -> f32 {
    let s = subgroupAdd(v);
    if (sid == 0u) {
        red[lid / ssize] = s;
    }
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < (WG + ssize - 1u) / ssize; i++) {
        total += red[i];
    }
    workgroupBarrier();
    return total;
}
#else
fn workgroup_sum(v: f32, lid: u32, sid: u32, ssize: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) {
            red[lid] += red[lid + k];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}
#endif

// One token (passes of one, or `single`; passes of several take `gemm`):
// one workgroup per row, its threads striding over the sub-blocks, then
// summing. Grid: (rows, 1). Control flow around barriers is uniform.
@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
#if SUBGROUPS
    @builtin(subgroup_invocation_id) sid: u32,
    @builtin(subgroup_size) ssize: u32,
#endif
) {
#if !SUBGROUPS
    let sid = 0u;
    let ssize = 1u;
#endif
    let r = wid.x;
    let tt = tokens();
    if (r >= p.rows || tt.y == 0u) {
        return;
    }
    let n_sub = p.cols / 32u;
    select_row(r, n_sub / SUBS, p.scale_offset);
    let a = row_tile(tt.x * (p.x_stride / 4u), 1u, n_sub, lid, WG);
    let total = workgroup_sum(a.a0, lid, sid, ssize);
    if (lid == 0u) {
        store(0u, r, total);
    }
}

// Passes of several tokens (prefill): a tiled GEMM. One workgroup computes
// GEMM_ROWS rows × GEMM_TOKENS tokens, stepping along the rows 32 values (a
// sub-block) at a time: GEMM_ROWS of its threads dequantise the rows'
// sub-blocks into workgroup memory and all of them load the tokens' x there,
// then each thread accumulates 4 rows × 4 tokens from it. Each weight is
// read once per GEMM_TOKENS tokens and each x once per GEMM_ROWS rows, where
// `main` reads every x once per row. Grid: (rows / GEMM_ROWS, tokens /
// GEMM_TOKENS). Barriers stay in uniform control flow: the sub-block loop's
// bound is a parameter, and nothing returns early.
const_assert GEMM_WG == (GEMM_ROWS / 4u) * (GEMM_TOKENS / 4u);
const_assert GEMM_WG >= GEMM_ROWS;

// The tile's weights [k][row] (a thread's 4 rows at one k are adjacent) and
// x [token][k / 4] (a token's sub-block as 8 vec4s, stored as loaded).
var<workgroup> gemm_w: array<f32, 32 * GEMM_ROWS>;
var<workgroup> gemm_x: array<vec4<f32>, 8 * GEMM_TOKENS>;

// Rows at … at + 3 of one k.
fn gemm_w4(at: u32) -> vec4<f32> {
    return vec4<f32>(gemm_w[at], gemm_w[at + 1u], gemm_w[at + 2u], gemm_w[at + 3u]);
}

// Row `row`'s values 4 k4 … 4 k4 + 3.
fn gemm_put_w(k4: u32, row: u32, v: vec4<f32>) {
    for (var c = 0u; c < 4u; c++) {
        gemm_w[(4u * k4 + c) * GEMM_ROWS + row] = v[c];
    }
}

@compute @workgroup_size(GEMM_WG)
fn gemm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let n = tokens().y;
    let r0 = wid.x * GEMM_ROWS;
    let t0 = wid.y * GEMM_TOKENS;
    let xs = p.x_stride / 4u;
    let n_sub = p.cols / 32u;
    // Dequantising: thread lid < GEMM_ROWS takes row r0 + lid.
    select_row(min(r0 + lid % GEMM_ROWS, p.rows - 1u), n_sub / SUBS, p.scale_offset);
    // Accumulating: rows r0 + 4 tr …, tokens t0 + 4 tc … (a_j: token j's rows).
    let tr = lid % (GEMM_ROWS / 4u);
    let tc = lid / (GEMM_ROWS / 4u);
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    for (var sb = 0u; sb < n_sub; sb++) {
        if (lid < GEMM_ROWS) {
            let v = dequant32(sb / SUBS, sb % SUBS);
            gemm_put_w(0u, lid, v.v0);
            gemm_put_w(1u, lid, v.v1);
            gemm_put_w(2u, lid, v.v2);
            gemm_put_w(3u, lid, v.v3);
            gemm_put_w(4u, lid, v.v4);
            gemm_put_w(5u, lid, v.v5);
            gemm_put_w(6u, lid, v.v6);
            gemm_put_w(7u, lid, v.v7);
        }
        // The tile's x, 8 adjacent threads reading one token's 128 bytes;
        // tokens past the pass read as 0.
        for (var i = lid; i < GEMM_TOKENS * 8u; i += GEMM_WG) {
            let t = i / 8u;
            var v = vec4<f32>(0.0);
            if (t0 + t < n) {
                v = x[(t0 + t) * xs + sb * 8u + i % 8u];
            }
            gemm_x[i] = v;
        }
        workgroupBarrier();
        for (var k4 = 0u; k4 < 8u; k4++) {
            let x0 = gemm_x[(4u * tc) * 8u + k4];
            let x1 = gemm_x[(4u * tc + 1u) * 8u + k4];
            let x2 = gemm_x[(4u * tc + 2u) * 8u + k4];
            let x3 = gemm_x[(4u * tc + 3u) * 8u + k4];
            for (var c = 0u; c < 4u; c++) {
                let wv = gemm_w4((4u * k4 + c) * GEMM_ROWS + 4u * tr);
                a0 += wv * x0[c];
                a1 += wv * x1[c];
                a2 += wv * x2[c];
                a3 += wv * x3[c];
            }
        }
        workgroupBarrier();
    }
    let a = array<vec4<f32>, 4>(a0, a1, a2, a3);
    for (var j = 0u; j < 4u; j++) {
        let t = t0 + 4u * tc + j;
        for (var i = 0u; i < 4u; i++) {
            let r = r0 + 4u * tr + i;
            if (t < n && r < p.rows) {
                store(t, r, a[j][i]);
            }
        }
    }
}

// One workgroup: row wid.x of slot wid.y's expert. Whether this chunk holds
// the expert comes from a buffer (not uniform), so instead of returning, a
// foreign slot runs zero sub-blocks and stores nothing: barriers stay in
// uniform control flow.
@compute @workgroup_size(WG)
fn experts(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
#if SUBGROUPS
    @builtin(subgroup_invocation_id) sid: u32,
    @builtin(subgroup_size) ssize: u32,
#endif
) {
#if !SUBGROUPS
    let sid = 0u;
    let ssize = 1u;
#endif
    let s = wid.y;
    if (s >= step.n_tokens * p.top_k || wid.x >= p.expert_rows) {
        return;
    }
    let at = expert_row(s, wid.x);
    let n_sub = select(0u, p.cols / 32u, at.y == 1u);
    select_row(at.x, p.cols / 32u / SUBS, p.scale_offset);
    let a = row_tile((s / p.x_div) * (p.x_stride / 4u), 1u, n_sub, lid, WG);
    let total = workgroup_sum(a.a0, lid, sid, ssize);
    if (lid == 0u && at.y == 1u) {
        store_slot(s, wid.x, total);
    }
}

// One workgroup: row wid.x of tile wid.y's expert for the tile's slots. As in
// `experts`, a tile this chunk does not hold runs zero sub-blocks, and every
// workgroup reduces all TILE_T sums: barriers stay in uniform control flow.
@compute @workgroup_size(WG)
fn grouped(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
#if SUBGROUPS
    @builtin(subgroup_invocation_id) sid: u32,
    @builtin(subgroup_size) ssize: u32,
#endif
) {
#if !SUBGROUPS
    let sid = 0u;
    let ssize = 1u;
#endif
    if (wid.x >= p.expert_rows) {
        return;
    }
    let at = tile_row(wid.y, wid.x);
    let n_sub = select(0u, p.cols / 32u, at.y == 1u);
    let r0 = wid.y * TILE_T;
    select_row(at.x, p.cols / 32u / SUBS, p.scale_offset);
    let a = row_tile(r0 * (p.x_stride / 4u), max(at.z, 1u), n_sub, lid, WG);
    for (var j = 0u; j < TILE_T; j++) {
        let total = workgroup_sum(tile_value(a, j), lid, sid, ssize);
        if (lid == 0u && at.y == 1u && j < at.z) {
            store_slot(r0 + j, wid.x, total);
        }
    }
}
#endif
