// Multi-head latent attention (DeepSeek-V2/V3) around the attention kernel.
// The cache holds one row of rank + rope values per token: the normed latent
// c_kv, then the roped k_pe. Decode and prefill use weight absorption, so the
// heads attend over that row like multi-query attention:
//   kv_cache:  row pos+t ← [RMSNorm(kv_a[:rank]) ; RoPE(kv_a[rank:])]
//   absorb_q:  q_lat[t, h] ← [W_uk,hᵀ q_h,nope ; RoPE(q_h,pe)]     (rank + rope)
//   attention (LATENT): scores q_lat · row, values the row's first rank
//   v_up:      o[t, h] ← W_uv,h · õ[t, h]                          (v)
// W_kvb is one f32 [heads · (nope + v), rank] matrix: per head the nope rows
// of W_uk, then the v rows of W_uv (crate::model::mla_kv_b).
// RoPE: ADJACENT pairs (2i, 2i+1) or HALVES (i, i + rope/2), times
// `rope_factor` (YaRN's attention factor). Constants: WG.

#include step
#include cos_sin

struct Params {
    heads: u32,
    rank: u32,
    rope: u32,
    nope: u32,
    v_dim: u32,
    eps: f32,
    rope_factor: f32,
    pad0: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> inv_freq: array<f32>;    // [rope / 2]
@group(0) @binding(3) var<storage, read> src: array<f32>;         // kv_cache: kv_a [t, rank + rope]; absorb_q: q [t, heads · (nope + rope)]; v_up: õ [t, heads · rank]
@group(0) @binding(4) var<storage, read> w: array<f32>;           // kv_cache: norm [rank]; absorb_q, v_up: W_kvb
@group(0) @binding(5) var<storage, read_write> dst: array<f32>;   // kv_cache: cache [ctx, rank + rope]; absorb_q: q_lat [t, heads · (rank + rope)]; v_up: o [t, heads · v]

// Element i of the rotated pe vector whose elements start at src[base].
fn rope_at(base: u32, i: u32, position: u32) -> f32 {
    let half = p.rope / 2u;
#if HALVES
    let pair = i % half;
    let a = base + pair;
    let b = base + pair + half;
    let second = i >= half;
#else
    let pair = i / 2u;
    let a = base + 2u * pair;
    let b = a + 1u;
    let second = (i % 2u) == 1u;
#endif
    let angle = f32(position) * inv_freq[pair];
    let cs = cos_sin(angle);
    var v = src[a] * cs.x - src[b] * cs.y;
    if (second) {
        v = src[a] * cs.y + src[b] * cs.x;
    }
    return v * p.rope_factor;
}

#if WORKGROUP
#include workgroup_reduce

// GPUs: a workgroup per token, its threads across the row.
@compute @workgroup_size(WG)
fn kv_cache(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = wid.x + wid.y * nwg.x;
    if (t >= step.n_tokens) {
        return;
    }
    let width = p.rank + p.rope;
    let base = t * width;
    var ss = 0.0;
    for (var j = lid; j < p.rank; j += WG) {
        ss += src[base + j] * src[base + j];
    }
    let inv = inverseSqrt(workgroup_reduce(lid, ss, false) / f32(p.rank) + p.eps);
    let row = (step.pos + t) * width;
    for (var j = lid; j < p.rank; j += WG) {
        dst[row + j] = src[base + j] * inv * w[j];
    }
    for (var i = lid; i < p.rope; i += WG) {
        dst[row + p.rank + i] = rope_at(base + p.rank, i, step.pos + t);
    }
}
#else
// CPU adapters: one thread per token, the whole latent row.
@compute @workgroup_size(WG)
fn kv_cache(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    if (t >= step.n_tokens) {
        return;
    }
    let width = p.rank + p.rope;
    let base = t * width;
    var ss = 0.0;
    for (var j = 0u; j < p.rank; j++) {
        ss += src[base + j] * src[base + j];
    }
    let inv = inverseSqrt(ss / f32(p.rank) + p.eps);
    let row = (step.pos + t) * width;
    for (var j = 0u; j < p.rank; j++) {
        dst[row + j] = src[base + j] * inv * w[j];
    }
    for (var i = 0u; i < p.rope; i++) {
        dst[row + p.rank + i] = rope_at(base + p.rank, i, step.pos + t);
    }
}
#endif

// One thread per (element of rank + rope, head, token).
@compute @workgroup_size(WG)
fn absorb_q(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let h = gid.y;
    let t = gid.z;
    let width = p.rank + p.rope;
    if (j >= width || h >= p.heads || t >= step.n_tokens) {
        return;
    }
    let qk = p.nope + p.rope;
    let qb = (t * p.heads + h) * qk;
    var v = 0.0;
    if (j < p.rank) {
        // Column j of W_uk,h (neighbouring threads read neighbouring words).
        let kb = h * (p.nope + p.v_dim) * p.rank + j;
        for (var i = 0u; i < p.nope; i++) {
            v += w[kb + i * p.rank] * src[qb + i];
        }
    } else {
        v = rope_at(qb + p.nope, j - p.rank, step.pos + t);
    }
    dst[(t * p.heads + h) * width + j] = v;
}

// One thread per (element of v, head, token).
@compute @workgroup_size(WG)
fn v_up(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let h = gid.y;
    let t = gid.z;
    if (j >= p.v_dim || h >= p.heads || t >= step.n_tokens) {
        return;
    }
    let vb = (h * (p.nope + p.v_dim) + p.nope + j) * p.rank;
    let ob = (t * p.heads + h) * p.rank;
    var v = 0.0;
    for (var i = 0u; i < p.rank; i++) {
        v += w[vb + i] * src[ob + i];
    }
    dst[(t * p.heads + h) * p.v_dim + j] = v;
}
