// RoPE, with q, k and v of a token side by side in one row of `qkv` (one
// matmul computed them all): q roped into q [n_tokens, n_q_heads · head_dim],
// k roped into the k cache and v copied into the v cache (rows pos + t), at
// positions pos + t (a ring cache of `ring` rows: row (pos + t) % ring). Pairs (i, i + head_dim/2) (HALVES, Hugging Face's
// rotate_half) or (2i, 2i + 1) (ADJACENT, GGUF llama). inv_freq holds every
// scaling (linear, llama3, per-dimension factors) already. One thread per
// (token, pair of a q or k head, or element of v). HALF_K: the caches are
// f16. QK_NORM (Qwen3): each q and k head RMS-normed first, by q_norm or
// k_norm; every thread of a head sums its squares itself (head_dim reads,
// from cache), so the norm costs no dispatch and no barrier. Constants: WG.

#include step
#include cos_sin

struct Params {
    head_dim: u32,
    n_q_heads: u32,
    n_k_heads: u32,
    // QK_NORM's epsilon.
    eps: f32,
    // Rows in the caches (the context, or a sliding window's ring).
    ring: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> inv_freq: array<f32>;   // [head_dim / 2]
@group(0) @binding(3) var<storage, read_write> q: array<f32>;    // [n_tokens, n_q_heads · head_dim]
#if HALF_K
@group(0) @binding(4) var<storage, read_write> k: array<f16>;    // [context, n_k_heads · head_dim], f16 cache
@group(0) @binding(5) var<storage, read_write> v: array<f16>;    // the v cache, as k
#else
@group(0) @binding(4) var<storage, read_write> k: array<f32>;    // [context, n_k_heads · head_dim]
@group(0) @binding(5) var<storage, read_write> v: array<f32>;    // the v cache, as k
#endif
@group(0) @binding(6) var<storage, read> qkv: array<f32>;        // [n_tokens, (n_q_heads + 2 · n_k_heads) · head_dim]
#if QK_NORM
@group(0) @binding(7) var<storage, read> q_norm: array<f32>;     // [head_dim]
@group(0) @binding(8) var<storage, read> k_norm: array<f32>;     // [head_dim]

// 1 / RMS of the head starting at qkv[at]. The bound goes through
// arrayLength: a small uniform loop bound is lavapipe's recompile trap
// (lib.rs).
fn inv_rms(at: u32) -> f32 {
    let n = min(p.head_dim, arrayLength(&q_norm));
    var ss = 0.0;
    for (var j = 0u; j < n; j++) {
        let x = qkv[at + j];
        ss += x * x;
    }
    return inverseSqrt(ss / f32(n) + p.eps);
}
#endif

fn rotate(pair: vec2<f32>, angle: f32) -> vec2<f32> {
    let cs = cos_sin(angle);
    return vec2<f32>(pair.x * cs.x - pair.y * cs.y, pair.x * cs.y + pair.y * cs.x);
}

// The two elements of pair i of a head.
fn pair_at(i: u32) -> vec2<u32> {
#if HALVES
    return vec2<u32>(i, i + p.head_dim / 2u);
#else
    return vec2<u32>(2u * i, 2u * i + 1u);
#endif
}

@compute @workgroup_size(WG)
fn scatter(@builtin(global_invocation_id) gid: vec3<u32>) {
    let hd = p.head_dim;
    let half = hd / 2u;
    let heads = p.n_q_heads + p.n_k_heads;
    let kv_dim = p.n_k_heads * hd;
    let t = gid.y;
    if (t >= step.n_tokens || gid.x >= heads * half + kv_dim) {
        return;
    }
    let src = t * (heads * hd + kv_dim);
    let row = ((step.pos + t) % p.ring) * kv_dim;
    if (gid.x >= heads * half) {
        let j = gid.x - heads * half;
#if HALF_K
        v[row + j] = f16(qkv[src + heads * hd + j]);
#else
        v[row + j] = qkv[src + heads * hd + j];
#endif
        return;
    }
    let i = gid.x % half;
    let h = gid.x / half;
    let ab = pair_at(i);
    let at = src + h * hd;
    var x = vec2<f32>(qkv[at + ab.x], qkv[at + ab.y]);
#if QK_NORM
    let w = select(vec2<f32>(k_norm[ab.x], k_norm[ab.y]), vec2<f32>(q_norm[ab.x], q_norm[ab.y]), h < p.n_q_heads);
    x = x * inv_rms(at) * w;
#endif
    let r = rotate(x, f32(step.pos + t) * inv_freq[i]);
    if (h < p.n_q_heads) {
        let base = (t * p.n_q_heads + h) * hd;
        q[base + ab.x] = r.x;
        q[base + ab.y] = r.y;
    } else {
        let base = row + (h - p.n_q_heads) * hd;
#if HALF_K
        k[base + ab.x] = f16(r.x);
        k[base + ab.y] = f16(r.y);
#else
        k[base + ab.x] = r.x;
        k[base + ab.y] = r.y;
#endif
    }
}
