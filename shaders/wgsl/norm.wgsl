// RMSNorm: out[t] = x[t] / sqrt(mean(x[t]²) + eps) · w. One thread per row
// (rows are short; no barriers) for CPU adapters; WORKGROUP (GPUs): a
// workgroup per row and the sum of squares by halves in workgroup memory.
// A GPU thread alone walks a row of 576 at one memory latency per element:
// on an H200 each norm took 0.15 ms, 9 of a decode step's 28 ms.
// Constants: WG.

#include step

struct Params {
    cols: u32,
    last_only: u32, // 1: only the pass's last token, written to out row 0
    eps: f32,
    pad: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>;          // [n_tokens, cols]
@group(0) @binding(3) var<storage, read> w: array<f32>;          // [cols]
@group(0) @binding(4) var<storage, read_write> out: array<f32>;  // [n_tokens, cols]

// Invocation i's input row and output row, and whether it has them.
fn rows(i: u32) -> vec3<u32> {
    if (p.last_only == 1u) {
        return vec3<u32>(step.n_tokens - 1u, 0u, u32(i == 0u));
    }
    return vec3<u32>(i, i, u32(i < step.n_tokens));
}

#if WORKGROUP
#include workgroup_reduce

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // The rows depend on workgroup ids and uniforms only, so the return
    // leaves the barriers in uniform control flow.
    let r = rows(wid.x + wid.y * nwg.x);
    if (r.z == 0u) {
        return;
    }
    let t = r.x;
    let o = r.y;
    var ss = 0.0;
    for (var i = lid; i < p.cols; i += WG) {
        let v = x[t * p.cols + i];
        ss += v * v;
    }
    let inv = 1.0 / sqrt(workgroup_reduce(lid, ss, false) / f32(p.cols) + p.eps);
    for (var i = lid; i < p.cols; i += WG) {
#if ACC
        out[o * p.cols + i] += x[t * p.cols + i] * inv * w[i];
#else
        out[o * p.cols + i] = x[t * p.cols + i] * inv * w[i];
#endif
    }
}
#else
@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = rows(gid.x);
    if (r.z == 0u) {
        return;
    }
    let t = r.x;
    let o = r.y;
    var ss = 0.0;
    for (var i = 0u; i < p.cols; i++) {
        let v = x[t * p.cols + i];
        ss += v * v;
    }
    let inv = 1.0 / sqrt(ss / f32(p.cols) + p.eps);
    for (var i = 0u; i < p.cols; i++) {
#if ACC
        out[o * p.cols + i] += x[t * p.cols + i] * inv * w[i];
#else
        out[o * p.cols + i] = x[t * p.cols + i] * inv * w[i];
#endif
    }
}
#endif
