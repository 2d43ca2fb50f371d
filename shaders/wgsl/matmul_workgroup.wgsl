// The matrix kernels of the workgroup-per-row shape (GPUs): WG threads
// split one row's sub-blocks and reduce; passes of several tokens take
// `gemm`, a tiled GEMM. SUBGROUPS: the sums reduce with subgroupAdd.
// Entries: `main` (one token), `glu` (one token, SwiGLU fused), `gemm`,
// `experts`, `grouped`. What they
// compute, the flags and the bindings: matmul_common.wgsl. Constants:
// matmul_common's, GEMM_ROWS, GEMM_TOKENS, GEMM_WG.

#include matmul_common

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

// Sub-block s of block b times the 8 (4, 2) token rows at xb (vec4 stride
// xs), added into a.
fn tile_sub(b: u32, s: u32, xb: u32, xs: u32, tile: ptr<function, Tile>) {
#include dequant_body tile
}

fn tile_sub4(b: u32, s: u32, xb: u32, xs: u32, tile: ptr<function, Tile>) {
#include dequant_body tile4
}

fn tile_sub2(b: u32, s: u32, xb: u32, xs: u32, tile: ptr<function, Tile>) {
#include dequant_body tile2
}

// Σ over the row's sub-blocks for tokens x0 … x0 + nt - 1 (nt ≤ 8), each
// dequantised vec4 reused for all of them: a tile of 2, 4 or 8, the least
// that holds nt (on CPU adapters a wasted token's dot products cost about as
// much as dequantising again). `first`, `step_sb`: the sub-blocks this
// invocation takes.
fn row_tile(x0: u32, nt: u32, n_sub: u32, first: u32, step_sb: u32) -> Tile {
    let xs = p.x_stride / 4u;
    var a: Tile;
    if (nt == 1u) {
        for (var sb = first; sb < n_sub; sb += step_sb) {
            a.a0 += dot_sub(sb / SUBS, sb % SUBS, x0 + sb * 8u);
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

var<workgroup> red: array<f32, WG>;

// The entries below take their builtins one by one, not in a struct as the
// thread-per-row ones do (matmul_thread.wgsl): Chrome's WGSL compiler treats
// a struct holding local_invocation_index as non-uniform throughout,
// workgroup_id with it, and then rejects the barriers after an early return
// on the workgroup id.

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

// Row r of this chunk times one token's x (its first vec4 at x0), summed
// over the workgroup: every invocation holds the total.
fn row_dot(r: u32, x0: u32, lid: u32, sid: u32, ssize: u32) -> f32 {
    let n_sub = p.cols / 32u;
    select_row(r, n_sub / SUBS, p.scale_offset);
    return workgroup_sum(row_tile(x0, 1u, n_sub, lid, WG).a0, lid, sid, ssize);
}

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
    let total = row_dot(r, tt.x * (p.x_stride / 4u), lid, sid, ssize);
    if (lid == 0u) {
        store(0u, r, total);
    }
}

// One token, SwiGLU fused: W stacks the gate's rows over as many of the up
// projection's (one chunk, no bias); workgroup r sums gate row r and up row
// p.rows / 2 + r and stores silu(gate) · up into y[r], as elementwise.wgsl's
// `swiglu` would: a dispatch fewer a layer. Grid: (rows / 2, 1).
@compute @workgroup_size(WG)
fn glu(
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
    let f = p.rows / 2u;
    let r = wid.x;
    let tt = tokens();
    if (r >= f || tt.y == 0u) {
        return;
    }
    let x0 = tt.x * (p.x_stride / 4u);
    let g = row_dot(r, x0, lid, sid, ssize);
    let u = row_dot(f + r, x0, lid, sid, ssize);
    if (lid == 0u) {
        y[r] = g / (1.0 + exp(clamp(-g, -80.0, 80.0))) * u;
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
