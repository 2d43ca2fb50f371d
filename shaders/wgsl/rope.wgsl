// RoPE in place on q [n_tokens, n_q_heads, head_dim] and k [n_tokens,
// n_k_heads, head_dim] at positions pos + t. Pairs (i, i + head_dim/2) (HALVES,
// Hugging Face's rotate_half) or (2i, 2i + 1) (ADJACENT, GGUF llama).
// inv_freq holds every scaling (linear, llama3, per-dimension factors) already.
// One thread per (token, head of q then k, pair). Constants: WG.

#include step
#include cos_sin

struct Params {
    head_dim: u32,
    n_q_heads: u32,
    n_k_heads: u32,
    k_at_pos: u32, // 1: k rows are KV-cache rows, token t at pos + t
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> inv_freq: array<f32>;   // [head_dim / 2]
@group(0) @binding(3) var<storage, read_write> q: array<f32>;    // [n_tokens, n_q_heads · head_dim]
#if HALF_K
@group(0) @binding(4) var<storage, read_write> k: array<f16>;    // [(pos +) n_tokens, n_k_heads · head_dim], f16 cache
#else
@group(0) @binding(4) var<storage, read_write> k: array<f32>;    // [(pos +) n_tokens, n_k_heads · head_dim]
#endif

fn rotate(v: vec2<f32>, angle: f32) -> vec2<f32> {
    let cs = cos_sin(angle);
    return vec2<f32>(v.x * cs.x - v.y * cs.y, v.x * cs.y + v.y * cs.x);
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half = p.head_dim / 2u;
    let heads = p.n_q_heads + p.n_k_heads;
    let i = gid.x % half;
    let h = gid.x / half;
    let t = gid.y;
    if (h >= heads || t >= step.n_tokens) {
        return;
    }
#if HALVES
    let a = i;
    let b = i + half;
#else
    let a = 2u * i;
    let b = 2u * i + 1u;
#endif
    let angle = f32(step.pos + t) * inv_freq[i];
    if (h < p.n_q_heads) {
        let base = (t * p.n_q_heads + h) * p.head_dim;
        let r = rotate(vec2<f32>(q[base + a], q[base + b]), angle);
        q[base + a] = r.x;
        q[base + b] = r.y;
    } else {
        var row = t;
        if (p.k_at_pos == 1u) {
            row += step.pos;
        }
        let base = (row * p.n_k_heads + h - p.n_q_heads) * p.head_dim;
#if HALF_K
        let r = rotate(vec2<f32>(f32(k[base + a]), f32(k[base + b])), angle);
        k[base + a] = f16(r.x);
        k[base + b] = f16(r.y);
#else
        let r = rotate(vec2<f32>(k[base + a], k[base + b]), angle);
        k[base + a] = r.x;
        k[base + b] = r.y;
#endif
    }
}
