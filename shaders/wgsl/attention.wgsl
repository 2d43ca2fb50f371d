// Causal attention over the KV cache, split along the sequence
// (flash-decoding): `partial` runs one thread per (split, head, token) with an
// online softmax over its split_len positions; `combine` merges the splits.
// A pass whose context fits one split has `partial` write the output itself
// and the host leaves `combine` out (a dispatch fewer per layer).
// `partial`'s threads are one flat range, splits fastest: a grid of (splits,
// heads, tokens) left all but one or two of a workgroup's threads idle at
// short contexts, and CPU adapters run idle lanes at full cost.
// No barriers or workgroup memory, so it suits CPU adapters, and the split
// gives long contexts parallelism. GQA: head h reads kv head h / (H / KVH).
// HALF_KV reads an f16 cache. Sliding-window attention (`window` > 0): a
// query sees its latest `window` positions, the splits start at the one
// holding the pass's first such position, and a ring cache of `ring` rows
// holds position p in row p % ring (ring = the context otherwise).
// Values are the first v_dim elements of a
// position's row (v_dim = head_dim, except for MLA's latent cache, where the
// "key" row is [c_kv ; k_pe], v_cache is the same buffer and v_dim = rank;
// LATENT sizes the accumulator for it). SUBGROUPS (CPU adapters with
// subgroups of at least 8): `partial` runs a subgroup per (split, head,
// token), each lane holding every S-th chunk of 8 elements of q and of the
// output in registers (each chunk of a key or value row one or two loads)
// and the score summed across the lanes, instead of a thread with
// a per-thread array (which a CPU adapter keeps in memory and reaches with a
// scalar load per lane) loading q again at every position. WORKGROUP (GPUs):
// a workgroup per split and a thread per position (WG = split_len); a GPU
// thread walking a split alone waits a memory latency per element (on an
// H200, 0.6 ms per layer at a 200-token context).
// Constants: WG, MAX_HEAD_DIM, SG_DIMS.

#include step

struct Params {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    split_len: u32,
    max_splits: u32,
    scale: f32,
    v_dim: u32,
    // 0: no window.
    window: u32,
    ring: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
#if WORKGROUP
@group(0) @binding(2) var<storage, read> q: array<f32>;             // [n_tokens, H · hd]
#if HALF_KV
// f16 caches read as pairs of halves: one 32-bit load for two elements (on
// CPU adapters the load, not the unpacking, is the cost).
@group(0) @binding(3) var<storage, read> k_cache: array<u32>;       // [ctx, KVH · hd / 2] f16 pairs
@group(0) @binding(4) var<storage, read> v_cache: array<u32>;       // [ctx, KVH · hd / 2] f16 pairs

fn key_at(i: u32) -> f32 {
    return unpack2x16float(k_cache[i / 2u])[i % 2u];
}
fn value_at(i: u32) -> f32 {
    return unpack2x16float(v_cache[i / 2u])[i % 2u];
}
#else
@group(0) @binding(3) var<storage, read> k_cache: array<f32>;       // [ctx, KVH · hd]
@group(0) @binding(4) var<storage, read> v_cache: array<f32>;       // [ctx, KVH · hd]

fn key_at(i: u32) -> f32 {
    return k_cache[i];
}
fn value_at(i: u32) -> f32 {
    return v_cache[i];
}
#endif
#else
// The CPU adapters' kernels read q, keys and values 8 elements at a time (a
// chunk): one 16-byte load of halves, two of floats. There a load at a
// per-thread address is a loop over the lanes (lavapipe) or a gather
// (SwiftShader) whatever its width, so the number of loads, not the
// arithmetic, is the cost. 8 divides head_dim and v_dim (the host checks),
// so a chunk never straddles heads or rows.
const CHUNK: u32 = 8u;
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>;       // [n_tokens, H · hd / 4]

// Elements i … i + 7 of q (i a multiple of 8).
fn q_chunk(i: u32) -> Chunk {
    return Chunk(q[i / 4u], q[i / 4u + 1u]);
}
#if HALF_KV
@group(0) @binding(3) var<storage, read> k_cache: array<vec4<u32>>; // [ctx, KVH · hd / 8] f16 octets
@group(0) @binding(4) var<storage, read> v_cache: array<vec4<u32>>;

fn halves8(w: vec4<u32>) -> Chunk {
    return Chunk(vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)), vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w)));
}

// Elements CHUNK·c … of a cache.
fn key_chunk(c: u32) -> Chunk {
    return halves8(k_cache[c]);
}
fn value_chunk(c: u32) -> Chunk {
    return halves8(v_cache[c]);
}
#else
@group(0) @binding(3) var<storage, read> k_cache: array<vec4<f32>>; // [ctx, KVH · hd / 4] float quads
@group(0) @binding(4) var<storage, read> v_cache: array<vec4<f32>>;

fn key_chunk(c: u32) -> Chunk {
    return Chunk(k_cache[2u * c], k_cache[2u * c + 1u]);
}
fn value_chunk(c: u32) -> Chunk {
    return Chunk(v_cache[2u * c], v_cache[2u * c + 1u]);
}
#endif
// 8 elements.
struct Chunk {
    a: vec4<f32>,
    b: vec4<f32>,
}

fn chunk_dot(x: Chunk, y: Chunk) -> f32 {
    return dot(x.a, y.a) + dot(x.b, y.b);
}

// x · c + y · e
fn chunk_mix(x: Chunk, c: f32, y: Chunk, e: f32) -> Chunk {
    return Chunk(x.a * c + y.a * e, x.b * c + y.b * e);
}

// Element i (< CHUNK) of a chunk.
fn chunk_at(x: Chunk, i: u32) -> f32 {
    return select(x.b[i % 4u], x.a[i % 4u], i < 4u);
}
#endif
@group(0) @binding(5) var<storage, read_write> part_ml: array<f32>; // [n_tokens, H, max_splits, 2] (max, sum)
@group(0) @binding(6) var<storage, read_write> part_o: array<f32>;  // [n_tokens, H, max_splits, hd]
@group(0) @binding(7) var<storage, read_write> out: array<f32>;     // [n_tokens, H · hd]

// Finite stand-in for -∞ (WGSL does not promise infinities).
const NEG_BIG: f32 = -3.0e38;

// The first position token t of the pass sees.
fn first_pos(t: u32) -> u32 {
    let visible = step.pos + t + 1u;
    return select(0u, visible - min(visible, p.window), p.window > 0u);
}

// The pass's splits: from the one holding its first token's first position
// to the one holding its last token (gpu::attention_splits on the host).
fn first_split() -> u32 {
    return first_pos(0u) / p.split_len;
}

fn n_splits() -> u32 {
    return (step.pos + step.n_tokens + p.split_len - 1u) / p.split_len - first_split();
}

// The cache row of the position after the one in `row`.
fn next_row(row: u32) -> u32 {
    return select(row + 1u, 0u, row + 1u == p.ring);
}

// Split i of the pass (splits fastest, then heads, then tokens): its token,
// the positions it covers, where its query and its kv head start (in q and
// in a cache row), and its record in part_ml / part_o.
struct Split {
    t: u32,
    start: u32,
    end: u32,
    qb: u32,
    kv_off: u32,
    kv_stride: u32,
    rec: u32,
    out: u32,
}

fn split_at(i: u32) -> Split {
    let ns = n_splits();
    let s = i % ns;
    let h = (i / ns) % p.n_heads;
    let t = i / (ns * p.n_heads);
    let base = (first_split() + s) * p.split_len;
    let start = max(base, first_pos(t));
    let end = min(base + p.split_len, step.pos + t + 1u);
    let kvh = h / (p.n_heads / p.n_kv_heads);
    let th = t * p.n_heads + h;
    return Split(t, start, end, th * p.head_dim, kvh * p.head_dim, p.n_kv_heads * p.head_dim, th * p.max_splits + s, th * p.v_dim);
}

#if WORKGROUP
#include workgroup_reduce
var<workgroup> weight: array<f32, WG>;

@compute @workgroup_size(WG)
fn partial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // The split depends on workgroup ids and uniforms only: the return keeps
    // the barriers in uniform control flow.
    let sp = split_at(wid.x + wid.y * nwg.x);
    if (sp.t >= step.n_tokens) {
        return;
    }
    let pos = sp.start + lid;
    let live = pos < sp.end;
    var score = NEG_BIG;
    if (live) {
        let kb = (pos % p.ring) * sp.kv_stride + sp.kv_off;
        var dot = 0.0;
        for (var d = 0u; d < p.head_dim; d++) {
            dot += q[sp.qb + d] * key_at(kb + d);
        }
        score = dot * p.scale;
    }
    let m = workgroup_reduce(lid, score, true);
    let e = select(0.0, exp(score - m), live);
    weight[lid] = e;
    let l = workgroup_reduce(lid, e, false);
    // Positions the split covers for this token (none for a token before it).
    let n = select(0u, sp.end - sp.start, sp.end > sp.start);
    let whole = n_splits() == 1u;
    for (var d = lid; d < p.v_dim; d += WG) {
        var acc = 0.0;
        var row = sp.start % p.ring;
        for (var j = 0u; j < n; j++) {
            acc += weight[j] * value_at(row * sp.kv_stride + sp.kv_off + d);
            row = next_row(row);
        }
        if (whole) {
            out[sp.out + d] = acc / l;
        } else {
            part_o[sp.rec * p.v_dim + d] = acc;
        }
    }
    if (lid == 0u && !whole) {
        part_ml[2u * sp.rec] = m;
        part_ml[2u * sp.rec + 1u] = l;
    }
}
#else
// Chunk c of split sp's output, its values a over sum l: the output itself
// when one split holds the whole context (`whole`), else the split's partial.
fn store_chunk(sp: Split, c: u32, a: Chunk, l: f32, whole: bool) {
    for (var i = 0u; i < CHUNK; i++) {
        let d = c * CHUNK + i;
        if (whole) {
            out[sp.out + d] = chunk_at(a, i) / l;
        } else {
            part_o[sp.rec * p.v_dim + d] = chunk_at(a, i);
        }
    }
}

#if SUBGROUPS
// The chunks of a head one lane holds: CHUNK·(lane + S·j) …, for
// j < SG_DIMS / CHUNK (S the subgroup size); the host keeps head_dim and
// v_dim multiples of CHUNK and ≤ 8 · SG_DIMS.
const CHUNKS: u32 = SG_DIMS / CHUNK;

@compute @workgroup_size(WG)
fn partial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) ssize: u32,
) {
    let sp = split_at((wid.x + wid.y * nwg.x) * (WG / ssize) + lid / ssize);
    if (sp.t >= step.n_tokens) {
        return;
    }
    let hd = p.head_dim / CHUNK;
    let vd = p.v_dim / CHUNK;
    var qv: array<Chunk, CHUNKS>;
    var acc: array<Chunk, CHUNKS>;
    let zero = Chunk(vec4<f32>(0.0), vec4<f32>(0.0));
    for (var j = 0u; j < CHUNKS; j++) {
        // Lanes past the head take q = 0 (and read its last chunk below).
        let c = lane + ssize * j;
        let qc = q_chunk(sp.qb + min(c, hd - 1u) * CHUNK);
        qv[j] = Chunk(select(zero.a, qc.a, c < hd), select(zero.b, qc.b, c < hd));
        acc[j] = zero;
    }
    let kb = sp.kv_off / CHUNK;
    let stride = sp.kv_stride / CHUNK;
    var m = NEG_BIG;
    var l = 0.0;
    var r = sp.start % p.ring;
    for (var pos = sp.start; pos < sp.end; pos++) {
        let row = r * stride + kb;
        r = next_row(r);
        var part = 0.0;
        for (var j = 0u; j < CHUNKS; j++) {
            if (ssize * j < hd) {
                part += chunk_dot(qv[j], key_chunk(row + min(lane + ssize * j, hd - 1u)));
            }
        }
        // The subgroup's sum in every lane, by halves (a register permute
        // each on CPU adapters, where subgroupAdd loops over the lanes).
        for (var o = ssize / 2u; o > 0u; o >>= 1u) {
            part += subgroupShuffleXor(part, o);
        }
        let score = part * p.scale;
        let m_new = max(m, score);
        let c = exp(m - m_new);
        let e = exp(score - m_new);
        l = l * c + e;
        for (var j = 0u; j < CHUNKS; j++) {
            if (ssize * j < vd) {
                acc[j] = chunk_mix(acc[j], c, value_chunk(row + min(lane + ssize * j, vd - 1u)), e);
            }
        }
        m = m_new;
    }
    let whole = n_splits() == 1u;
    if (lane == 0u && !whole) {
        part_ml[2u * sp.rec] = m;
        part_ml[2u * sp.rec + 1u] = l;
    }
    for (var j = 0u; j < CHUNKS; j++) {
        let c = lane + ssize * j;
        if (c < vd) {
            store_chunk(sp, c, acc[j], l, whole);
        }
    }
}
#else
// A thread per (split, head, token), its output chunks in a per-thread
// array (memory on a CPU adapter: a chunk's update is 2 loads and 2 stores).
@compute @workgroup_size(WG)
fn partial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let sp = split_at(gid.x + gid.y * nwg.x * WG);
    if (sp.t >= step.n_tokens) {
        return;
    }
    let hd = p.head_dim / CHUNK;
    let vd = p.v_dim / CHUNK;
    let kb = sp.kv_off / CHUNK;
    let stride = sp.kv_stride / CHUNK;
    var m = NEG_BIG;
    var l = 0.0;
    var acc: array<Chunk, MAX_HEAD_DIM / CHUNK>;
    var r = sp.start % p.ring;
    for (var pos = sp.start; pos < sp.end; pos++) {
        let row = r * stride + kb;
        r = next_row(r);
        var score = 0.0;
        for (var c = 0u; c < hd; c++) {
            score += chunk_dot(q_chunk(sp.qb + c * CHUNK), key_chunk(row + c));
        }
        score *= p.scale;
        let m_new = max(m, score);
        let cm = exp(m - m_new);
        let e = exp(score - m_new);
        l = l * cm + e;
        for (var c = 0u; c < vd; c++) {
            acc[c] = chunk_mix(acc[c], cm, value_chunk(row + c), e);
        }
        m = m_new;
    }
    let whole = n_splits() == 1u;
    if (!whole) {
        part_ml[2u * sp.rec] = m;
        part_ml[2u * sp.rec + 1u] = l;
    }
    for (var c = 0u; c < vd; c++) {
        store_chunk(sp, c, acc[c], l, whole);
    }
}
#endif
#endif

@compute @workgroup_size(WG)
fn combine(@builtin(global_invocation_id) gid: vec3<u32>) {
    let d = gid.x;
    let h = gid.y;
    let t = gid.z;
    let hd = p.v_dim;
    if (t >= step.n_tokens || h >= p.n_heads || d >= hd) {
        return;
    }
    let ns = n_splits();
    let base = (t * p.n_heads + h) * p.max_splits;
    var m = NEG_BIG;
    for (var s = 0u; s < ns; s++) {
        if (part_ml[2u * (base + s) + 1u] > 0.0) {
            m = max(m, part_ml[2u * (base + s)]);
        }
    }
    var l = 0.0;
    var o = 0.0;
    for (var s = 0u; s < ns; s++) {
        let ls = part_ml[2u * (base + s) + 1u];
        if (ls > 0.0) {
            let f = exp(part_ml[2u * (base + s)] - m);
            l += ls * f;
            o += part_o[(base + s) * hd + d] * f;
        }
    }
    out[(t * p.n_heads + h) * hd + d] = o / l;
}
