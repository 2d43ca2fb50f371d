// y[t, r] (+)= Σ_c W[r, c] · x[t, c] (+ b[r]) for the tokens of this pass.
//
// W is one row chunk of a weight in its repacked block format (see
// runtime/src/gpu/weights.rs): every 32 values of a row form a sub-block that
// `dequant32` expands into registers. INTERLEAVED chunks store word k of
// every row together. The format is a flag (F32 … Q6_K); so is the shape:
//   ROW_PER_THREAD    one thread computes one row for TILE_T tokens (CPU adapters,
//                     where barriers and workgroup memory are expensive);
//   ROW_PER_WORKGROUP WG threads split one row's sub-blocks and reduce (GPUs).
// BIAS adds b[r]; ACC adds into y (fused residual).
// Constants: WG, TILE_T, BLOCK_WORDS (u32 words per block), SUBS (32-value
// sub-blocks per block).

struct Step {
    n_tokens: u32,
    pos: u32,
    seed_lo: u32,
    seed_hi: u32,
    draw: u32,
    top_k: u32,
    temperature: f32,
    top_p: f32,
}

struct Params {
    rows: u32,       // rows in this chunk
    cols: u32,       // values per row
    row_offset: u32, // first row of this chunk in y
    y_stride: u32,   // y row length (all chunks' rows)
    single: u32,     // 1: one token (x row 0 → y row 0), e.g. the LM head
    x_stride: u32,   // x row length
    y_at_pos: u32,   // 1: y row of token t is pos + t (writing into the KV cache)
    pad: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> w: array<u32>;        // [rows, cols / (32 SUBS) · BLOCK_WORDS]
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;  // [n_tokens, x_stride / 4]
@group(0) @binding(4) var<storage, read_write> y: array<f32>;  // [n_tokens, y_stride]
#if BIAS
@group(0) @binding(5) var<storage, read> b: array<f32>;        // [all chunks' rows]
#endif

#include dequant

// Σ w·x over 32 values; x4 indexes x as vec4s.
fn dot32(r: W32, x4: u32) -> f32 {
    return dot(r.v0, x[x4]) + dot(r.v1, x[x4 + 1u]) + dot(r.v2, x[x4 + 2u]) + dot(r.v3, x[x4 + 3u])
        + dot(r.v4, x[x4 + 4u]) + dot(r.v5, x[x4 + 5u]) + dot(r.v6, x[x4 + 6u]) + dot(r.v7, x[x4 + 7u]);
}

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
    var row = t;
    if (p.y_at_pos == 1u) {
        row += step.pos;
    }
    let at = row * p.y_stride + p.row_offset + r;
#if ACC
    y[at] += v;
#else
    y[at] = v;
#endif
}

#if ROW_PER_THREAD
// One thread: one row × TILE_T tokens. Grid: (rows / WG, token tiles).
@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    let tt = tokens();
    let t0 = gid.y * TILE_T;
    if (r >= p.rows || t0 >= tt.y) {
        return;
    }
    let nt = min(TILE_T, tt.y - t0);
    let n_sub = p.cols / 32u;
    select_row(r, p.rows, n_sub / SUBS * BLOCK_WORDS);
    // x rows as vec4 indices; acc is indexed only by constants after unrolling.
    let x0 = (tt.x + t0) * (p.x_stride / 4u);
    var acc: array<f32, TILE_T>;
    for (var sb = 0u; sb < n_sub; sb++) {
        let v = dequant32((sb / SUBS) * BLOCK_WORDS, sb % SUBS);
        for (var j = 0u; j < TILE_T; j++) {
            if (j < nt) {
                acc[j] += dot32(v, x0 + j * (p.x_stride / 4u) + sb * 8u);
            }
        }
    }
    for (var j = 0u; j < TILE_T; j++) {
        if (j < nt) {
            store(t0 + j, r, acc[j]);
        }
    }
}
#endif

#if ROW_PER_WORKGROUP
var<workgroup> red: array<f32, WG>;

// One workgroup: one row × TILE_T tokens; threads stride over sub-blocks.
// Grid: (rows, token tiles). Control flow around barriers is uniform.
@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.x;
    let tt = tokens();
    let t0 = wid.y * TILE_T;
    if (r >= p.rows || t0 >= tt.y) {
        return;
    }
    let nt = min(TILE_T, tt.y - t0);
    let n_sub = p.cols / 32u;
    select_row(r, p.rows, n_sub / SUBS * BLOCK_WORDS);
    let x0 = (tt.x + t0) * (p.x_stride / 4u);
    var acc: array<f32, TILE_T>;
    for (var sb = lid; sb < n_sub; sb += WG) {
        let v = dequant32((sb / SUBS) * BLOCK_WORDS, sb % SUBS);
        for (var j = 0u; j < TILE_T; j++) {
            if (j < nt) {
                acc[j] += dot32(v, x0 + j * (p.x_stride / 4u) + sb * 8u);
            }
        }
    }
    for (var j = 0u; j < nt; j++) {
        red[lid] = acc[j];
        workgroupBarrier();
        for (var k = WG / 2u; k > 0u; k >>= 1u) {
            if (lid < k) {
                red[lid] += red[lid + k];
            }
            workgroupBarrier();
        }
        if (lid == 0u) {
            store(t0 + j, r, red[0]);
        }
        workgroupBarrier();
    }
}
#endif
