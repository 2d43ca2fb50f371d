// Fragment, included with `#include workgroup_reduce`: the sum (or max) over
// a workgroup of one value per thread, returned to every thread, by halves
// in workgroup memory. It has barriers: call it from uniform control flow.
// WG must be a power of two.

var<workgroup> reduce_scratch: array<f32, WG>;

fn workgroup_reduce(lid: u32, v: f32, is_max: bool) -> f32 {
    reduce_scratch[lid] = v;
    for (var span = WG / 2u; span > 0u; span >>= 1u) {
        workgroupBarrier();
        if (lid < span) {
            let other = reduce_scratch[lid + span];
            reduce_scratch[lid] = select(reduce_scratch[lid] + other, max(reduce_scratch[lid], other), is_max);
        }
    }
    workgroupBarrier();
    let r = reduce_scratch[0];
    // Every thread has read it before the next call writes again.
    workgroupBarrier();
    return r;
}
