// SwiGLU activation: out = silu(gate) ⊙ up over [n_tokens · rows_per_token, cols]
// (rows_per_token: 1, or the routed experts' top_k slots). Constants: WG.

#include step

struct Params {
    cols: u32,
    rows_per_token: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> gate: array<f32>;       // [n_tokens, cols]
@group(0) @binding(3) var<storage, read> up: array<f32>;         // [n_tokens, cols]
@group(0) @binding(4) var<storage, read_write> out: array<f32>;  // [n_tokens, cols]

@compute @workgroup_size(WG)
fn swiglu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= step.n_tokens * p.rows_per_token * p.cols) {
        return;
    }
    let g = gate[i];
    // silu(g) = g / (1 + e^-g); the clamp keeps e^-g finite and normal
    // (subnormal floats are slow on CPU adapters).
    out[i] = g / (1.0 + exp(clamp(-g, -80.0, 80.0))) * up[i];
}
