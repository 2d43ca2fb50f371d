// Plain copy: the bandwidth baseline for bench-kernels.
// Constants: WG (threads per workgroup).

@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;       // [n]
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<u32>>; // [n]

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i < arrayLength(&src)) {
        dst[i] = src[i];
    }
}
