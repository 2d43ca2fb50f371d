// SwiGLU activation (`swiglu`): out = silu(gate) ⊙ up over [n_tokens · rows_per_token, cols];
// GELU: GeGLU instead, out = gelu_tanh(gate) ⊙ up (Gemma)
// (rows_per_token: 1, or the routed experts' top_k slots; 0: every row of
// out, the grouped experts' tiles). `stacked`: gate and up side by side in
// one [n_tokens, 2 · cols] buffer (one matmul computed both), bound as both.
// `scale`: out *= factor over [n_tokens, cols] (rows_per_token 1) or one row
// (0): a test's wrong kernel, on purpose.
// Constants: WG.

#include step

struct Params {
    cols: u32,
    rows_per_token: u32,
    stacked: u32,
    factor: f32, // scale
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> gate: array<f32>;       // [n_tokens, cols]
@group(0) @binding(3) var<storage, read> up: array<f32>;         // [n_tokens, cols]
@group(0) @binding(4) var<storage, read_write> out: array<f32>;  // [n_tokens, cols]

@compute @workgroup_size(WG)
fn swiglu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    let n = select(step.n_tokens * p.rows_per_token * p.cols, arrayLength(&out), p.rows_per_token == 0u);
    if (i >= n) {
        return;
    }
    var g: f32;
    var u: f32;
    if (p.stacked == 1u) {
        let at = i + (i / p.cols) * p.cols;
        g = gate[at];
        u = up[at + p.cols];
    } else {
        g = gate[i];
        u = up[i];
    }
#if GELU
    // g/2 · (1 + tanh(√(2/π) (g + 0.044715 g³))); tanh's argument clamped
    // where tanh is ±1 in f32 anyway (some tanh implementations overflow).
    let z = clamp(0.7978846 * (g + 0.044715 * g * g * g), -10.0, 10.0);
    out[i] = 0.5 * g * (1.0 + tanh(z)) * u;
#else
    // silu(g) = g / (1 + e^-g); the clamp keeps e^-g finite and normal
    // (subnormal floats are slow on CPU adapters).
    out[i] = g / (1.0 + exp(clamp(-g, -80.0, 80.0))) * u;
#endif
}

@compute @workgroup_size(WG)
fn scale(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i < select(p.cols, step.n_tokens * p.cols, p.rows_per_token == 1u)) {
        out[i] = out[i] * p.factor;
    }
}
