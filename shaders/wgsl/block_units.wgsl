// Fragment: `rows_shared` (matmul_thread.wgsl) steps by whole blocks, each block's
// x (`XBlock`, from `xblock`) taken once for all of a thread's rows and
// `dot_block` run for each row.
const UNIT_SUBS: u32 = SUBS;
alias XUnit = XBlock;

fn x_unit(x0: u32, u: u32) -> XUnit {
    return xblock(x0 + u * 8u * SUBS);
}

fn dot_unit(u: u32, xq: XUnit) -> f32 {
    return dot_block(u, xq);
}
