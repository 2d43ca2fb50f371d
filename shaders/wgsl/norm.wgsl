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

#if WORKGROUP
#include workgroup_reduce

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // Row and output row depend on workgroup ids and uniforms only, so the
    // returns below leave the barriers in uniform control flow.
    var t = wid.x + wid.y * nwg.x;
    var o = t;
    if (p.last_only == 1u) {
        if (t > 0u) {
            return;
        }
        t = step.n_tokens - 1u;
        o = 0u;
    } else if (t >= step.n_tokens) {
        return;
    }
    var ss = 0.0;
    for (var i = lid; i < p.cols; i += WG) {
        let v = x[t * p.cols + i];
        ss += v * v;
    }
    let inv = 1.0 / sqrt(workgroup_reduce(lid, ss, false) / f32(p.cols) + p.eps);
    for (var i = lid; i < p.cols; i += WG) {
        out[o * p.cols + i] = x[t * p.cols + i] * inv * w[i];
    }
}
#else
@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    var t = gid.x;
    var o = gid.x;
    if (p.last_only == 1u) {
        if (gid.x > 0u) {
            return;
        }
        t = step.n_tokens - 1u;
        o = 0u;
    } else if (t >= step.n_tokens) {
        return;
    }
    var ss = 0.0;
    for (var i = 0u; i < p.cols; i++) {
        let v = x[t * p.cols + i];
        ss += v * v;
    }
    let inv = 1.0 / sqrt(ss / f32(p.cols) + p.eps);
    for (var i = 0u; i < p.cols; i++) {
        out[o * p.cols + i] = x[t * p.cols + i] * inv * w[i];
    }
}
#endif
