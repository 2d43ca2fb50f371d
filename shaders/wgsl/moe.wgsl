// Mixture of experts on the GPU: the router's choice and the weighted sum of
// the chosen experts' outputs. No CPU round trip: `route` writes expert ids
// and weights into buffers that the `experts` matmul and `combine` read.
//
// route: one thread per token (mirrors `route` in runtime/src/reference):
// scores = softmax or sigmoid of the logits; choice = scores (+ bias, BIAS);
// with groups, only the best `topk_groups` groups (a group's score: its best
// choice, or the sum of its best two) compete — the others are excluded
// outright, never scored 0; the top_k choices (ties to the lower index, NaN
// never) get their scores as weights, normalised (norm_topk) and scaled.
// combine: x[t] += Σ_k w[t, k] · y[t · top_k + k] (+ shared[t], times
// sigmoid(gate[t]) with SHARED_GATE); with PERMUTED, slot s's row of y is
// slot_pos[s] (the grouped prefill's order).
//
// The grouped prefill (passes of several tokens) runs each expert once over
// all of its slots: `sort` counts the slots per expert and cuts each
// expert's run into tiles of up to TILE_T slots (`tiles`: expert, count);
// tile i's slots sit in rows TILE_T·i … of the experts' buffers, slot s at
// row slot_pos[s]. `gather` copies each slot's token row of x there
// (`sorted`); the matmul's `grouped` entry runs one tile per workgroup row
// (its row base comes from the workgroup id, so CPU adapters load x as
// broadcasts); combine reads the results back through slot_pos.
// Constants: WG, TILE_T.
//
// Loop bounds come through `*_bound`: Mesa 22.3's lavapipe (Debian 12) inlines
// uniform values that bound loops and, when the loops then unroll (8 experts,
// top 6), compiles the shader again at every dispatch — 3 ms a route. A bound
// clamped by a buffer's length (which always holds it) is not a uniform, so it
// is never inlined.
// Every exp argument is clamped to [-80, 80]: e^-80 is still a normal f32, and
// subnormal results cost CPU adapters (lavapipe) a microcode assist per op.

#include step

struct Params {
    n_experts: u32,
    top_k: u32,
    groups: u32,
    topk_groups: u32,
    sigmoid: u32,       // 1: sigmoid scores; 0: softmax
    top_two_sum: u32,   // group score: 1 the sum of its best two; 0 its best
    norm_topk: u32,
    scale: f32,
    hidden: u32,        // combine: row length of x
    has_shared: u32,    // combine: 1: add shared_out[t]
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> logits: array<f32>;         // route: [n_tokens, n_experts]
@group(0) @binding(3) var<storage, read_write> ids: array<u32>;      // route: out [n_tokens, top_k]
@group(0) @binding(4) var<storage, read_write> weights: array<f32>;  // route: out / combine: in [n_tokens, top_k]
#if BIAS
@group(0) @binding(5) var<storage, read> bias: array<f32>;           // route: [n_experts]
#endif
@group(0) @binding(6) var<storage, read_write> x: array<f32>;        // combine: out, gather: in [n_tokens, hidden]
@group(0) @binding(7) var<storage, read> y: array<f32>;              // combine: [slot rows, hidden]
@group(0) @binding(8) var<storage, read> shared_out: array<f32>;     // combine: [n_tokens, hidden]
#if SHARED_GATE
@group(0) @binding(9) var<storage, read> gate: array<f32>;           // combine: [n_tokens]
#endif
@group(0) @binding(11) var<storage, read_write> slot_pos: array<u32>; // sort: out; gather, combine: in [n_tokens · top_k]
@group(0) @binding(12) var<storage, read_write> tiles: array<vec2<u32>>; // sort: out [max tiles]
@group(0) @binding(13) var<storage, read_write> counts: array<u32>;   // sort: scratch [n_experts]
@group(0) @binding(14) var<storage, read_write> sorted: array<f32>;   // gather: out [tile rows, hidden]

fn experts_bound(v: u32) -> u32 {
    return min(v, arrayLength(&logits));
}

fn top_k_bound() -> u32 {
    return min(p.top_k, arrayLength(&weights));
}

fn score(t: u32, e: u32, max_logit: f32, sum: f32) -> f32 {
    let l = logits[t * p.n_experts + e];
    if (p.sigmoid == 1u) {
        return 1.0 / (1.0 + exp(clamp(-l, -80.0, 80.0)));
    }
    return exp(max(l - max_logit, -80.0)) / sum;
}

fn choice(t: u32, e: u32, max_logit: f32, sum: f32) -> f32 {
    var c = score(t, e, max_logit, sum);
#if BIAS
    c += bias[e];
#endif
    return c;
}

// Whether choice (c, e) comes after (pc, pe) in the selection order.
fn after(c: f32, e: u32, pc: f32, pe: u32) -> bool {
    if (pc != pc) {
        return c != c && e > pe;
    }
    return c != c || c < pc || (c == pc && e > pe);
}

@compute @workgroup_size(WG)
fn route(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    if (t >= step.n_tokens) {
        return;
    }
    let n = experts_bound(p.n_experts);
    let top_k = top_k_bound();
    let groups = experts_bound(p.groups);
    // Softmax normaliser (unused for sigmoid scores).
    var max_logit = -3.0e38;
    for (var e = 0u; e < n; e++) {
        max_logit = max(max_logit, logits[t * n + e]);
    }
    var sum = 0.0;
    for (var e = 0u; e < n; e++) {
        sum += exp(max(logits[t * n + e] - max_logit, -80.0));
    }
    // Groups that compete: a bit each (≤ 32 groups).
    var kept = 0xffffffffu;
    let per = n / groups;
    if (groups > 1u && p.topk_groups < groups) {
        var gscore: array<f32, 32>;
        for (var g = 0u; g < groups; g++) {
            var best = -3.0e38;
            var second = -3.0e38;
            for (var e = g * per; e < (g + 1u) * per; e++) {
                let c = choice(t, e, max_logit, sum);
                if (c > best) {
                    second = best;
                    best = c;
                } else if (c > second) {
                    second = c;
                }
            }
            gscore[g] = select(best, best + second, p.top_two_sum == 1u);
        }
        kept = 0u;
        for (var k = 0u; k < experts_bound(p.topk_groups); k++) {
            var bg = 0u;
            var bs = -3.4e38;
            var found = false;
            for (var g = 0u; g < groups; g++) {
                if ((kept & (1u << g)) == 0u && (!found || gscore[g] > bs)) {
                    bg = g;
                    bs = gscore[g];
                    found = true;
                }
            }
            kept |= 1u << bg;
        }
    }
    // Top k by repeated selection in one total order — real numbers before
    // NaN, larger first, then the lower index — each pick the best that comes
    // after the previous one (no per-thread bitset: CPU adapters spill
    // indexed private arrays to memory).
    var total = 0.0;
    var pc = 0.0;
    var pe = n;
    for (var k = 0u; k < top_k; k++) {
        var be = n;
        var bc = 0.0;
        for (var e = 0u; e < n; e++) {
            if ((kept & (1u << (e / per))) == 0u) {
                continue;
            }
            let c = choice(t, e, max_logit, sum);
            if (pe < n && !after(c, e, pc, pe)) {
                continue;
            }
            if (be == n || after(bc, be, c, e)) {
                be = e;
                bc = c;
            }
        }
        be = min(be, n - 1u);
        pe = be;
        pc = bc;
        let w = score(t, be, max_logit, sum);
        ids[t * p.top_k + k] = be;
        weights[t * p.top_k + k] = w;
        total += w;
    }
    for (var k = 0u; k < top_k; k++) {
        var w = weights[t * p.top_k + k];
        if (p.norm_topk == 1u) {
            w /= total + 1e-20;
        }
        weights[t * p.top_k + k] = w * p.scale;
    }
}

@compute @workgroup_size(WG)
fn combine(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= step.n_tokens * p.hidden) {
        return;
    }
    let t = i / p.hidden;
    let d = i % p.hidden;
    var v = 0.0;
    for (var k = 0u; k < top_k_bound(); k++) {
        let slot = t * p.top_k + k;
#if PERMUTED
        let row = slot_pos[slot];
#else
        let row = slot;
#endif
        v += weights[slot] * y[row * p.hidden + d];
    }
    if (p.has_shared == 1u) {
        var s = shared_out[i];
#if SHARED_GATE
        s /= 1.0 + exp(clamp(-gate[t], -80.0, 80.0));
#endif
        v += s;
    }
    x[i] += v;
}

// One thread: a counting sort of the pass's slots by expert (stable, so each
// expert's slots keep token order), each expert's run cut into tiles; tiles
// past the last are written empty. The grid of `grouped` has
// ceil(slots / TILE_T) + min(experts, slots) tiles, enough for any choice.
@compute @workgroup_size(WG)
fn sort(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x != 0u) {
        return;
    }
    let n = min(p.n_experts, arrayLength(&counts));
    let n_slots = min(step.n_tokens * p.top_k, arrayLength(&slot_pos));
    for (var e = 0u; e < n; e++) {
        counts[e] = 0u;
    }
    for (var s = 0u; s < n_slots; s++) {
        let e = min(ids[s], n - 1u);
        counts[e] += 1u;
    }
    let max_tiles = min(arrayLength(&tiles), (n_slots + TILE_T - 1u) / TILE_T + min(n, n_slots));
    var tile = 0u;
    for (var e = 0u; e < n; e++) {
        let c = counts[e];
        counts[e] = tile * TILE_T; // the row of e's next slot
        for (var j = 0u; j < c && tile < max_tiles; j += TILE_T) {
            tiles[tile] = vec2<u32>(e, min(TILE_T, c - j));
            tile++;
        }
    }
    for (; tile < max_tiles; tile++) {
        tiles[tile] = vec2<u32>(0u);
    }
    for (var s = 0u; s < n_slots; s++) {
        let e = min(ids[s], n - 1u);
        slot_pos[s] = counts[e];
        counts[e] += 1u;
    }
}

// sorted[slot_pos[s]] = x[token of s]: the experts' input rows, tile by tile.
@compute @workgroup_size(WG)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= step.n_tokens * p.top_k * p.hidden) {
        return;
    }
    let s = i / p.hidden;
    let d = i % p.hidden;
    sorted[slot_pos[s] * p.hidden + d] = x[(s / p.top_k) * p.hidden + d];
}
