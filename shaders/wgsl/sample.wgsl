// Next-token choice on the GPU, so a decode step reads back only 4 bytes.
// One workgroup. Rounds of a parallel argmax pick the K best logits in the
// order (logit desc, id asc) — K = 1 when greedy, else min(top_k or MAX_CAND,
// MAX_CAND); then thread 0 applies temperature, top-p and a draw from the
// (seed, draw)-hash exactly as runtime/src/sample.rs does on the CPU.
// The token goes to ids[0], the next step's input. `penalize` runs first
// when the step has penalties or biases: one thread per (token, count,
// bias) of `penalized` adjusts that token's logit in place, as
// runtime/src/sample.rs's apply_penalties does. With step.logprobs = 1 + n,
// `main` also writes at ids[out_at…]: the logits' logsumexp, the chosen
// token's logit, then the n best (id, logit), floats as bits; the host
// subtracts (sample::Logprobs). Constants: WG, MAX_CAND.

#include step

struct Params {
    vocab: u32,
    out_at: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> logits: array<f32>; // [vocab] (`penalize` adjusts them)
@group(0) @binding(3) var<storage, read_write> ids: array<u32>;    // [≥ 1]
@group(0) @binding(4) var<storage, read> penalized: array<vec4<u32>>; // [n_penalized] (token, count, bias bits, 0)

@compute @workgroup_size(WG)
fn penalize(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= min(step.n_penalized, arrayLength(&penalized))) {
        return;
    }
    let e = penalized[i];
    if (e.x >= p.vocab) {
        return;
    }
    var l = logits[e.x];
    if (e.y > 0u) {
        if (step.repetition != 1.0) {
            l = select(l * step.repetition, l / step.repetition, l > 0.0);
        }
        l -= f32(e.y) * step.frequency + step.presence;
    }
    logits[e.x] = l + bitcast<f32>(e.z);
}

var<workgroup> red_v: array<f32, WG>;
var<workgroup> red_i: array<u32, WG>;
var<workgroup> cand_v: array<f32, MAX_CAND>;
var<workgroup> cand_i: array<u32, MAX_CAND>;

const NONE: u32 = 0xffffffffu;

// Is (v, i) before (bv, bi) in the order (value desc, id asc)?
fn before(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    return bi == NONE || v > bv || (v == bv && i < bi);
}

// By its bits: WGSL lets compilers assume floats are never NaN, so `v != v` may fold away.
fn is_nan(v: f32) -> bool {
    let b = bitcast<u32>(v);
    return (b & 0x7f800000u) == 0x7f800000u && (b & 0x007fffffu) != 0u;
}

fn is_inf(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) == 0x7f800000u;
}

fn pcg_hash(x: u32) -> u32 {
    let state = x * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

fn uniform01() -> f32 {
    let h = pcg_hash(step.seed_lo ^ pcg_hash(step.seed_hi ^ pcg_hash(step.draw)));
    return f32(h >> 8u) / 16777216.0;
}

// Logit i, if it is a candidate after the previous pick (pv, pi) and before
// the best so far.
fn consider(i: u32, pv: f32, pi: u32, bv: ptr<function, f32>, bi: ptr<function, u32>) {
    if (i >= p.vocab) {
        return;
    }
    let v = logits[i];
    if (is_nan(v)) {
        return;
    }
    let after_prev = pi == NONE || v < pv || (v == pv && i > pi);
    if (after_prev && before(v, i, *bv, *bi)) {
        *bv = v;
        *bi = i;
    }
}

// The token chosen: ids[0], and its logit for the log-probabilities.
fn finish(chosen: u32) {
    ids[0] = chosen;
    if (step.logprobs > 0u && chosen != NONE) {
        ids[p.out_at + 1u] = bitcast<u32>(logits[chosen]);
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
    var k = MAX_CAND;
    if (step.temperature == 0.0) {
        k = 1u;
    } else if (step.top_k > 0u) {
        k = min(step.top_k, MAX_CAND);
    }
    k = min(k, p.vocab);
    // Rounds: the sampler's k candidates, or the log-probabilities' n best.
    let rounds = min(max(k, select(0u, step.logprobs - 1u, step.logprobs > 0u)), min(MAX_CAND, p.vocab));
    // The previous pick: candidates must come strictly after it.
    var pv = 0.0;
    var pi = NONE;
    for (var r = 0u; r < rounds; r++) {
        var bv = 0.0;
        var bi = NONE;
        // Eight logits per iteration: Mesa's llvmpipe (lavapipe) ends an
        // invocation's loops after 65535 iterations in all, and 256 rounds
        // over a 152k vocabulary one logit at a time would pass that.
        for (var i = lid; i < p.vocab; i += 8u * WG) {
            consider(i, pv, pi, &bv, &bi);
            consider(i + WG, pv, pi, &bv, &bi);
            consider(i + 2u * WG, pv, pi, &bv, &bi);
            consider(i + 3u * WG, pv, pi, &bv, &bi);
            consider(i + 4u * WG, pv, pi, &bv, &bi);
            consider(i + 5u * WG, pv, pi, &bv, &bi);
            consider(i + 6u * WG, pv, pi, &bv, &bi);
            consider(i + 7u * WG, pv, pi, &bv, &bi);
        }
        red_v[lid] = bv;
        red_i[lid] = bi;
        workgroupBarrier();
        for (var s = WG / 2u; s > 0u; s >>= 1u) {
            if (lid < s) {
                let ov = red_v[lid + s];
                let oi = red_i[lid + s];
                if (oi != NONE && before(ov, oi, red_v[lid], red_i[lid])) {
                    red_v[lid] = ov;
                    red_i[lid] = oi;
                }
            }
            workgroupBarrier();
        }
        pv = red_v[0];
        pi = red_i[0];
        if (lid == 0u) {
            cand_v[r] = pv;
            cand_i[r] = pi;
        }
        workgroupBarrier();
    }
    if (step.logprobs > 0u) {
        // logsumexp over the non-NaN logits, from their max (every thread
        // takes part: the barriers stay in uniform control flow).
        let mx = cand_v[0];
        var sum = 0.0;
        if (cand_i[0] != NONE && !is_inf(mx)) {
            for (var i = lid; i < p.vocab; i += WG) {
                let v = logits[i];
                if (!is_nan(v)) {
                    sum += exp(v - mx);
                }
            }
        }
        red_v[lid] = sum;
        workgroupBarrier();
        for (var s = WG / 2u; s > 0u; s >>= 1u) {
            if (lid < s) {
                red_v[lid] += red_v[lid + s];
            }
            workgroupBarrier();
        }
        if (lid == 0u) {
            let lse = select(mx + log(red_v[0]), mx, is_inf(mx));
            ids[p.out_at] = bitcast<u32>(lse);
            for (var j = 0u; j + 1u < step.logprobs; j++) {
                ids[p.out_at + 2u + 2u * j] = cand_i[j];
                ids[p.out_at + 3u + 2u * j] = bitcast<u32>(cand_v[j]);
            }
        }
    }
    if (lid != 0u) {
        return;
    }
    if (cand_i[0] == NONE) {
        // Every logit was NaN: report an impossible id; the engine turns it into an error.
        ids[0] = NONE;
        return;
    }
    // Greedy; or +∞ wins outright, and all -∞ leaves only the order (as the CPU sampler).
    if (k == 1u || is_inf(cand_v[0])) {
        finish(cand_i[0]);
        return;
    }
    // Fewer non-NaN logits than k: sample among those found.
    for (var i = 1u; i < k; i++) {
        if (cand_i[i] == NONE) {
            k = i;
            break;
        }
    }
    // Softmax over the candidates with temperature (as the CPU sampler).
    var probs: array<f32, MAX_CAND>;
    let mx = cand_v[0];
    var sum = 0.0;
    for (var i = 0u; i < k; i++) {
        probs[i] = exp((cand_v[i] - mx) / step.temperature);
        sum += probs[i];
    }
    for (var i = 0u; i < k; i++) {
        probs[i] /= sum;
    }
    var keep = k;
    if (step.top_p < 1.0) {
        var acc = 0.0;
        for (var i = 0u; i < k; i++) {
            acc += probs[i];
            if (acc >= step.top_p) {
                keep = i + 1u;
                break;
            }
        }
        var s2 = 0.0;
        for (var i = 0u; i < keep; i++) {
            s2 += probs[i];
        }
        for (var i = 0u; i < keep; i++) {
            probs[i] /= s2;
        }
    }
    let r = uniform01();
    var acc = 0.0;
    var chosen = cand_i[keep - 1u];
    for (var i = 0u; i < keep; i++) {
        acc += probs[i];
        if (r < acc) {
            chosen = cand_i[i];
            break;
        }
    }
    finish(chosen);
}
