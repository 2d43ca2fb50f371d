// Fragment, included with `#include step`: the parameters of a pass, one small
// uniform buffer every kernel reads at binding 0 (mirrors `Step` in
// runtime/src/gpu/mod.rs, written once per submit).

struct Step {
    n_tokens: u32,
    pos: u32,
    seed_lo: u32,
    seed_hi: u32,
    draw: u32,
    top_k: u32,
    temperature: f32,
    top_p: f32,
    // The penalties (sample.wgsl's `penalize`): entries of its list, and factors.
    n_penalized: u32,
    repetition: f32,
    frequency: f32,
    presence: f32,
    // sample.wgsl also reports log-probabilities: 1 + the alternatives (0: no).
    logprobs: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
