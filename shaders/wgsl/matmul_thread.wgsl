// The matrix kernels of the thread-per-row shape (CPU adapters, where
// barriers and workgroup memory are expensive): one thread computes one
// row, for one token SHARED_ROWS of them, each x load shared by all of its
// rows. SUBGROUPS: each x load is also shared across 8 lanes. QUAD_TEXTURE:
// quantised weights are read from textures (dequant.wgsl). Entries: `main`
// (one token), `gemm` (passes of several), `glu` (one token, SwiGLU fused),
// `experts`, `grouped`. What they compute, the flags and the bindings:
// matmul_common.wgsl. Constants: matmul_common's, SHARED_ROWS, LANE_TILE.

#include matmul_common

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

#if !QUAD_TEXTURE || F32 || F16 || BF16
#if !SUBGROUPS
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

// Sub-block s of block b times the 8 (4, 2) token rows at xb (vec4 stride
// xs), added into a.
#if !SUBGROUPS
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
        // Whole blocks (see dequant_block.wgsl).
        for (var b = 0u; b < n_sub / SUBS; b++) {
            a.a0 += dot_block(b, xblock(x0 + b * 8u * SUBS));
        }
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
