//! Choosing the next token from logits: greedy, or temperature + top-k + top-p
//! with a seeded generator.
//!
//! The random draw is a counter-based hash of (seed, step) using only 32-bit
//! integer operations, so a WGSL sampler can draw the very same number and the
//! CPU and GPU paths pick the same token for the same logits.

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 is greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p`; 1 keeps all.
    pub top_p: f32,
    pub seed: u64,
    /// Penalties on the tokens of the last `penalty_last_n` positions
    /// (prompt and reply), as llama.cpp's `penalties` sampler applies them
    /// (see [`apply_penalties`]): a repeated token's logit divided by
    /// `repetition_penalty` (multiplied, if negative); then `count ·
    /// frequency_penalty + presence_penalty` subtracted (OpenAI's formula).
    pub repetition_penalty: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub penalty_last_n: usize,
    /// Report each chosen token's log-probability and the `n` most likely
    /// tokens' (at most [`MAX_TOP_LOGPROBS`]); None: none.
    pub logprobs: Option<usize>,
}

/// The most alternatives a token's log-probabilities list (OpenAI's bound).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A chosen token's log-probability and the most likely tokens', from the
/// logits it was drawn from (after penalties and biases, before temperature):
/// `logit − logsumexp(logits)`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Logprobs {
    pub token: u32,
    pub logprob: f32,
    /// `(token, logprob)`, most likely first (ties: lower id first).
    pub top: Vec<(u32, f32)>,
}

impl Logprobs {
    /// From the chosen token's logit, `n` top `(token, logit)`s and the
    /// logits' logsumexp `lse`.
    pub fn from_logits(token: u32, logit: f32, top: &[(u32, f32)], lse: f32) -> Self {
        let lp = |l: f32| if lse.is_finite() { l - lse } else if l == lse { 0.0 } else { f32::NEG_INFINITY };
        Logprobs { token, logprob: lp(logit), top: top.iter().map(|&(t, l)| (t, lp(l))).collect() }
    }

    /// The CPU's: `n` alternatives from all of `logits`.
    pub fn of(logits: &[f32], token: u32, n: usize) -> Self {
        let max = logits.iter().copied().filter(|v| !v.is_nan()).fold(f32::NEG_INFINITY, f32::max);
        let lse = if max.is_finite() {
            let sum: f32 = logits.iter().filter(|v| !v.is_nan()).map(|&v| (v - max).exp()).sum();
            max + sum.ln()
        } else {
            max
        };
        Self::from_logits(token, logits.get(token as usize).copied().unwrap_or(f32::NAN), &top_k(logits, n), lse)
    }
}

/// The most tokens a penalty window holds (the GPU's list of penalised
/// tokens is this long).
pub const MAX_PENALTY_LAST_N: usize = baleen_shaders::shape::MAX_PENALIZED as usize;

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 64,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::Input(format!("temperature must be a number ≥ 0 (0 is greedy), not {}", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Input(format!("top-p must be in (0, 1], not {}", self.top_p)));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(Error::Input(format!("the repetition penalty must be a number > 0 (1 is none), not {}", self.repetition_penalty)));
        }
        for (what, v) in [("frequency", self.frequency_penalty), ("presence", self.presence_penalty)] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(Error::Input(format!("the {what} penalty must be in [-2, 2] (0 is none), not {v}")));
            }
        }
        if self.logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return Err(Error::Input(format!("at most {MAX_TOP_LOGPROBS} top log-probabilities a token, not {}", self.logprobs.unwrap_or(0))));
        }
        if self.penalty_last_n > MAX_PENALTY_LAST_N {
            return Err(Error::Input(format!("the penalty window of {} tokens is longer than the {MAX_PENALTY_LAST_N} baleen counts", self.penalty_last_n)));
        }
        Ok(())
    }

    /// Whether any penalty changes a logit.
    pub fn penalizes(&self) -> bool {
        self.penalty_last_n > 0 && (self.repetition_penalty != 1.0 || self.frequency_penalty != 0.0 || self.presence_penalty != 0.0)
    }

    /// The penalised tokens of `window` (the context so far, oldest first):
    /// each distinct token of its last `penalty_last_n` and its count there,
    /// by id. Empty when no penalty applies.
    pub fn penalized(&self, window: &[u32]) -> Vec<(u32, u32)> {
        if !self.penalizes() {
            return Vec::new();
        }
        let mut counts = std::collections::BTreeMap::new();
        for &t in &window[window.len().saturating_sub(self.penalty_last_n)..] {
            *counts.entry(t).or_insert(0u32) += 1;
        }
        counts.into_iter().collect()
    }

    /// What the step changes before sampling: the penalised tokens of
    /// `window` and the tokens of `bias`, one entry a token, by id.
    pub fn adjustments(&self, window: &[u32], bias: &[(u32, f32)]) -> Result<Vec<Adjust>> {
        let mut all: std::collections::BTreeMap<u32, Adjust> =
            self.penalized(window).into_iter().map(|(token, count)| (token, Adjust { token, count, bias: 0.0 })).collect();
        for &(token, b) in bias {
            if !b.is_finite() {
                return Err(Error::Input(format!("the logit bias of token {token} is {b}; give a finite number (−100 bans it)")));
            }
            all.entry(token).or_insert(Adjust { token, count: 0, bias: 0.0 }).bias += b;
        }
        if all.len() > MAX_PENALTY_LAST_N {
            return Err(Error::Input(format!("{} tokens penalised or biased; at most {MAX_PENALTY_LAST_N} are", all.len())));
        }
        Ok(all.into_values().collect())
    }
}

/// One token's change before sampling: its `count` in the penalty window
/// (0: none) and a bias added after the penalties.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adjust {
    pub token: u32,
    pub count: u32,
    pub bias: f32,
}

/// Apply the penalties and biases of [`SamplingParams::adjustments`] to
/// `logits` in place (the GPU's `penalize` kernel is the same).
pub fn apply_penalties(logits: &mut [f32], p: &SamplingParams, adjust: &[Adjust]) {
    for a in adjust {
        let Some(l) = logits.get_mut(a.token as usize) else { continue };
        if a.count > 0 {
            if p.repetition_penalty != 1.0 {
                *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
            }
            *l -= a.count as f32 * p.frequency_penalty + p.presence_penalty;
        }
        *l += a.bias;
    }
}

/// PCG-style 32-bit hash (one round of O'Neill's PCG output function).
pub fn pcg_hash(x: u32) -> u32 {
    let state = x.wrapping_mul(747796405).wrapping_add(2891336453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277803737);
    (word >> 22) ^ word
}

/// A uniform number in [0, 1) for draw number `step` of generator `seed`.
pub fn uniform(seed: u64, step: u32) -> f32 {
    let h = pcg_hash((seed as u32) ^ pcg_hash(((seed >> 32) as u32) ^ pcg_hash(step)));
    (h >> 8) as f32 / (1u32 << 24) as f32
}

/// The index of the largest logit (the first on ties); NaNs never win.
pub fn argmax(logits: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in logits.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

/// Pick a token. `step` numbers the draws of one generation (0, 1, 2, …).
/// Candidates are the most likely `top_k` tokens (at most
/// `MAX_CANDIDATES`, 256), ordered by logit then id; temperature, top-p and
/// the draw follow, in the order the GPU sampler uses.
pub fn sample(logits: &[f32], p: &SamplingParams, step: u32) -> Result<u32> {
    let nan = || Error::Gpu("the model produced only NaN logits (numerical failure; try another backend)".into());
    if p.temperature == 0.0 {
        return argmax(logits).map(|i| i as u32).ok_or_else(nan);
    }
    // Candidates sorted by logit, best first (ties by id), NaNs dropped.
    let mut cand: Vec<(u32, f32)> =
        logits.iter().enumerate().filter(|(_, v)| !v.is_nan()).map(|(i, &v)| (i as u32, v)).collect();
    if cand.is_empty() {
        return Err(nan());
    }
    cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    // At most MAX_CANDIDATES tokens compete (the GPU sampler's bound too).
    let max = baleen_shaders::shape::MAX_CANDIDATES as usize;
    cand.truncate(if p.top_k > 0 { p.top_k.min(max) } else { max });
    let max = cand[0].1;
    if !max.is_finite() {
        // +∞ wins outright; all -∞ leaves only the order (logit, id).
        return Ok(cand[0].0);
    }
    let mut probs: Vec<f32> = cand.iter().map(|&(_, v)| ((v - max) / p.temperature).exp()).collect();
    let sum: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|x| *x /= sum);
    if p.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs.iter().position(|&x| {
            acc += x;
            acc >= p.top_p
        });
        let keep = keep.map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
    }
    let r = uniform(p.seed, step);
    let mut acc = 0.0;
    for (i, &x) in probs.iter().enumerate() {
        acc += x;
        if r < acc {
            return Ok(cand[i].0);
        }
    }
    Ok(cand[probs.len() - 1].0)
}

/// The `k` largest logits as `(id, logit)`, best first.
pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut v: Vec<(u32, f32)> =
        logits.iter().enumerate().filter(|(_, x)| !x.is_nan()).map(|(i, &x)| (i as u32, x)).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(k);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_max_and_skips_nan() {
        assert_eq!(argmax(&[1.0, f32::NAN, 3.0, 3.0]), Some(2));
        assert_eq!(argmax(&[f32::NAN]), None);
        let p = SamplingParams::default();
        assert!(sample(&[f32::NAN, f32::NAN], &p, 0).is_err());
        assert_eq!(sample(&[f32::NEG_INFINITY, -1.0], &p, 0).unwrap(), 1);
    }

    #[test]
    fn uniform_is_in_range_and_spread() {
        let xs: Vec<f32> = (0..10_000).map(|s| uniform(42, s)).collect();
        assert!(xs.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = xs.iter().sum::<f32>() / xs.len() as f32;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
        assert_ne!(uniform(1, 0), uniform(2, 0));
    }

    #[test]
    fn top_k_1_is_greedy_and_sampling_follows_probabilities() {
        let logits = [0.0, 2.0, 1.0, -1.0];
        let p = SamplingParams { temperature: 1.0, top_k: 1, top_p: 1.0, seed: 7, ..Default::default() };
        assert!((0..50).all(|s| sample(&logits, &p, s).unwrap() == 1));
        // top-p 0.5 keeps only the best (p ≈ 0.61).
        let p = SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.5, seed: 7, ..Default::default() };
        assert!((0..50).all(|s| sample(&logits, &p, s).unwrap() == 1));
        // Full sampling: frequencies near softmax probabilities.
        let p = SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 3, ..Default::default() };
        let mut counts = [0usize; 4];
        for s in 0..20_000 {
            counts[sample(&logits, &p, s).unwrap() as usize] += 1;
        }
        let z: f32 = logits.iter().map(|x| x.exp()).sum();
        for (i, c) in counts.iter().enumerate() {
            let expect = logits[i].exp() / z;
            let got = *c as f32 / 20_000.0;
            assert!((got - expect).abs() < 0.015, "token {i}: {got} vs {expect}");
        }
        // Same seed, same draws.
        let a: Vec<u32> = (0..20).map(|s| sample(&logits, &p, s).unwrap()).collect();
        let b: Vec<u32> = (0..20).map(|s| sample(&logits, &p, s).unwrap()).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn infinite_logits_pick_by_order_not_nan() {
        let p = SamplingParams { temperature: 0.8, top_k: 0, top_p: 0.9, seed: 1, ..Default::default() };
        assert_eq!(sample(&[0.0, f32::INFINITY, 5.0], &p, 0).unwrap(), 1);
        assert_eq!(sample(&[f32::NEG_INFINITY; 3], &p, 0).unwrap(), 0);
    }

    #[test]
    fn penalties_follow_llama_cpps_and_openais_formulas() {
        // Window [5, 2, 5, 7, 5] (last 4: 2, 5, 7, 5): 2 once, 5 twice, 7 once.
        let p = SamplingParams { repetition_penalty: 2.0, frequency_penalty: 0.5, presence_penalty: 0.25, penalty_last_n: 4, ..Default::default() };
        assert_eq!(p.penalized(&[5, 2, 5, 7, 5]), vec![(2, 1), (5, 2), (7, 1)]);
        // And a bias: +1 on 7 (penalised too), −100 on 0 (a ban), +0.5 twice on 8.
        let adj = p.adjustments(&[5, 2, 5, 7, 5], &[(7, 1.0), (0, -100.0), (8, 0.5), (8, 0.5)]).unwrap();
        assert_eq!(adj.iter().map(|a| (a.token, a.count, a.bias)).collect::<Vec<_>>(), vec![(0, 0, -100.0), (2, 1, 0.0), (5, 2, 0.0), (7, 1, 1.0), (8, 0, 1.0)]);
        let mut l = [1.0f32, 1.0, 3.0, 1.0, 1.0, -4.0, 1.0, 0.0, 1.0];
        apply_penalties(&mut l, &p, &adj);
        // 2: 3 / 2 − 0.5 − 0.25 = 0.75; 5: −4 · 2 − 2 · 0.5 − 0.25 = −9.25;
        // 7: 0 · 2 − 0.5 − 0.25 + 1 = 0.25 (0 is multiplied, as llama.cpp does);
        // 0 and 8 are not in the window: bias only.
        assert_eq!(l, [-99.0, 1.0, 0.75, 1.0, 1.0, -9.25, 1.0, 0.25, 2.0]);
        // Neutral settings penalise nothing; a window of 0 neither.
        assert!(SamplingParams::default().adjustments(&[1, 1, 1], &[]).unwrap().is_empty());
        assert!(SamplingParams { penalty_last_n: 0, ..p }.penalized(&[1, 1]).is_empty());
        // Ids past the vocabulary are ignored, not a panic; a NaN bias is an error.
        apply_penalties(&mut l, &p, &[Adjust { token: 100, count: 3, bias: 1.0 }]);
        assert!(p.adjustments(&[], &[(1, f32::NAN)]).unwrap_err().to_string().contains("finite"));
    }

    #[test]
    fn logprobs_are_log_softmax_of_the_logits() {
        // log-softmax of [1, 2, 3, NaN]: NaN left out; 3 − ln(e + e² + e³)…
        let l = [1.0f32, 2.0, 3.0, f32::NAN];
        let lse = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
        let lp = Logprobs::of(&l, 1, 2);
        assert!((lp.logprob - (2.0 - lse)).abs() < 1e-6);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![2, 1]);
        assert!((lp.top[0].1 - (3.0 - lse)).abs() < 1e-6);
        let total: f32 = [0usize, 1, 2].iter().map(|&i| (l[i] - lse).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        // +∞ takes all the probability.
        let lp = Logprobs::of(&[0.0, f32::INFINITY], 1, 1);
        assert_eq!((lp.logprob, lp.top[0]), (0.0, (1, 0.0)));
    }

    #[test]
    fn bad_parameters_are_errors() {
        let bad = [
            SamplingParams { temperature: -1.0, ..Default::default() },
            SamplingParams { temperature: f32::NAN, ..Default::default() },
            SamplingParams { top_p: 0.0, ..Default::default() },
            SamplingParams { top_p: 1.5, ..Default::default() },
            SamplingParams { repetition_penalty: 0.0, ..Default::default() },
            SamplingParams { repetition_penalty: f32::INFINITY, ..Default::default() },
            SamplingParams { frequency_penalty: 2.5, ..Default::default() },
            SamplingParams { presence_penalty: f32::NAN, ..Default::default() },
            SamplingParams { penalty_last_n: MAX_PENALTY_LAST_N + 1, ..Default::default() },
            SamplingParams { logprobs: Some(21), ..Default::default() },
        ];
        for p in bad {
            assert!(p.validate().is_err(), "{p:?}");
        }
    }
}
