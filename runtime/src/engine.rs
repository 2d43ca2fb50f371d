//! Generation: prefill, decode, sampling, stop conditions, cancellation — the
//! same loop over any backend (the reference now, the GPU engine next).

use crate::error::{Error, Result};
use crate::sample::{apply_penalties, sample, top_k, Adjust, Logprobs, SamplingParams};
pub use crate::support::{now_ms, run_ready};

/// A forward pass with a KV cache.
pub trait Backend {
    /// Append `tokens` to the cache and return logits: of every new position
    /// (`[n, vocab]`) when `all_logits`, else of the last one (`[vocab]`).
    fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>>;
    /// Tokens in the cache.
    fn len(&self) -> usize;
    /// Drop cached positions from `len` on (to reuse a shared prefix).
    fn truncate(&mut self, len: usize);
    fn context_length(&self) -> usize;
    fn vocab(&self) -> usize;
    /// (adapter name, backend name) for reports.
    fn describe(&self) -> (String, String);
    /// Append `tokens`, then choose the next token (draw number `draw` of the
    /// generator) after the penalties and biases of `penalized`
    /// ([`SamplingParams::adjustments`]); with `want_logits`, also return the
    /// last position's logits as the token was drawn from them (penalised).
    /// The GPU overrides this to sample on the device and read back only the id.
    fn forward_sample(
        &mut self,
        tokens: &[u32],
        sampling: &SamplingParams,
        draw: u32,
        want_logits: bool,
        penalized: &[Adjust],
    ) -> Result<Sampled> {
        let mut logits = self.forward(tokens, false)?;
        apply_penalties(&mut logits, sampling, penalized);
        let token = sample(&logits, sampling, draw)?;
        let logprobs = sampling.logprobs.map(|n| Logprobs::of(&logits, token, n));
        Ok(Sampled { token, logits: want_logits.then_some(logits), logprobs })
    }
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes this backend holds on the GPU (0 for CPU backends).
    fn gpu_bytes(&self) -> u64 {
        0
    }
    /// The paged experts' cache counts (`run --json`, `bench --json`), when
    /// the backend pages experts.
    fn expert_cache(&self) -> Option<serde_json::Value> {
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An end-of-sequence token (or the caller's stop token) was produced.
    Eos,
    /// `max_tokens` reached.
    Length,
    /// The context window is full.
    ContextFull,
    /// The caller asked to stop.
    Cancelled,
}

#[derive(Debug, Clone, Default)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops after any of these (it is not part of the output).
    pub stop_ids: Vec<u32>,
    /// Added to these tokens' logits before sampling (OpenAI's `logit_bias`;
    /// −100 bans a token).
    pub logit_bias: Vec<(u32, f32)>,
}

#[derive(Debug, Clone)]
/// One step's choice: the token, the logits it was drawn from (when asked),
/// and its log-probabilities (when [`SamplingParams::logprobs`] asks).
pub struct Sampled {
    pub token: u32,
    pub logits: Option<Vec<f32>>,
    pub logprobs: Option<Logprobs>,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub tokens: Vec<u32>,
    /// Each token's log-probabilities (with [`SamplingParams::logprobs`]).
    pub logprobs: Vec<Logprobs>,
    pub stop: StopReason,
    /// Logits of the last prompt position.
    pub prompt_logits: Vec<f32>,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

impl Generation {
    pub fn logits_top(&self, k: usize) -> Vec<(u32, f32)> {
        top_k(&self.prompt_logits, k)
    }
    /// Decoded tokens per second, counting the steps after the first token.
    pub fn decode_tokens_per_s(&self) -> f64 {
        let steps = self.tokens.len().saturating_sub(1);
        if steps == 0 || self.decode_ms <= 0.0 {
            0.0
        } else {
            steps as f64 / (self.decode_ms / 1000.0)
        }
    }
}

/// What generation needs of a backend, awaitable: in the browser every GPU
/// readback is a promise. Any [`Backend`] is one through [`Ready`].
#[allow(async_fn_in_trait)]
pub trait AsyncBackend {
    fn len(&self) -> usize;
    fn truncate(&mut self, len: usize);
    fn context_length(&self) -> usize;
    /// As [`Backend::forward_sample`].
    async fn forward_sample(
        &mut self,
        tokens: &[u32],
        sampling: &SamplingParams,
        draw: u32,
        want_logits: bool,
        penalized: &[Adjust],
    ) -> Result<Sampled>;
}

/// A synchronous backend as an [`AsyncBackend`] whose steps are ready at once.
pub struct Ready<'a>(pub &'a mut dyn Backend);

impl AsyncBackend for Ready<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn truncate(&mut self, len: usize) {
        self.0.truncate(len)
    }
    fn context_length(&self) -> usize {
        self.0.context_length()
    }
    async fn forward_sample(
        &mut self,
        tokens: &[u32],
        sampling: &SamplingParams,
        draw: u32,
        want_logits: bool,
        penalized: &[Adjust],
    ) -> Result<Sampled> {
        self.0.forward_sample(tokens, sampling, draw, want_logits, penalized)
    }
}

/// Run the prompt (appended to whatever the backend already holds) and decode.
/// `on_token` sees each new token and returns `false` to cancel.
pub fn generate(
    backend: &mut dyn Backend,
    prompt: &[u32],
    params: &GenerateParams,
    on_token: impl FnMut(u32) -> bool,
) -> Result<Generation> {
    run_ready(generate_async(&mut Ready(backend), prompt, params, on_token))
}

/// [`generate`] over an [`AsyncBackend`].
pub async fn generate_async(
    backend: &mut impl AsyncBackend,
    prompt: &[u32],
    params: &GenerateParams,
    on_token: impl FnMut(u32) -> bool,
) -> Result<Generation> {
    generate_after(backend, &[], prompt, params, on_token).await
}

/// [`generate_async`] after `history`, the tokens already in the backend's
/// cache (for the penalties' window).
async fn generate_after(
    backend: &mut impl AsyncBackend,
    history: &[u32],
    prompt: &[u32],
    params: &GenerateParams,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Generation> {
    params.sampling.validate()?;
    if prompt.is_empty() {
        return Err(Error::Input("the prompt is empty: give at least one token".into()));
    }
    let ctx = backend.context_length();
    if backend.len() + prompt.len() > ctx {
        return Err(Error::Input(format!(
            "the prompt ({} tokens, {} already in the conversation) does not fit the model's context of {ctx} tokens; \
             shorten it or start a new conversation",
            prompt.len(),
            backend.len()
        )));
    }
    // The context so far, for the penalties' window.
    let s = &params.sampling;
    let mut window: Vec<u32> = if s.penalizes() { history.iter().chain(prompt).copied().collect() } else { Vec::new() };
    let bias = &params.logit_bias;
    let t0 = now_ms();
    let first = backend.forward_sample(prompt, s, 0, true, &s.adjustments(&window, bias)?).await?;
    let prefill_ms = now_ms() - t0;
    let prompt_logits = first.logits.unwrap_or_default();
    let mut next = first.token;
    let mut logprobs: Vec<Logprobs> = first.logprobs.into_iter().collect();

    let t1 = now_ms();
    let mut tokens = Vec::new();
    let stop = loop {
        if tokens.len() >= params.max_tokens {
            break StopReason::Length;
        }
        if params.stop_ids.contains(&next) {
            break StopReason::Eos;
        }
        tokens.push(next);
        if !on_token(next) {
            break StopReason::Cancelled;
        }
        if tokens.len() >= params.max_tokens {
            break StopReason::Length;
        }
        if backend.len() >= ctx {
            break StopReason::ContextFull;
        }
        if s.penalizes() {
            window.push(next);
        }
        let step = backend.forward_sample(&[next], s, tokens.len() as u32, false, &s.adjustments(&window, bias)?).await?;
        next = step.token;
        logprobs.extend(step.logprobs);
    };
    // One a token: the last step's choice was not kept.
    logprobs.truncate(tokens.len());
    Ok(Generation { tokens, logprobs, stop, prompt_logits, prefill_ms, decode_ms: now_ms() - t1 })
}

/// A conversation over one backend: each turn's prompt (the whole templated
/// conversation) reuses the KV cache of the longest prefix already computed,
/// so a follow-up costs only its new tokens.
#[derive(Default)]
pub struct Session {
    /// The tokens whose keys and values are in the backend's cache.
    cached: Vec<u32>,
}

impl Session {
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokens of `prompt` that will come from the cache.
    pub fn reusable(&self, prompt: &[u32]) -> usize {
        let common = self.cached.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        // At least one token must run to produce logits.
        common.min(prompt.len().saturating_sub(1))
    }

    pub fn reset(&mut self, backend: &mut impl AsyncBackend) {
        backend.truncate(0);
        self.cached.clear();
    }

    pub fn generate(
        &mut self,
        backend: &mut dyn Backend,
        prompt: &[u32],
        params: &GenerateParams,
        on_token: impl FnMut(u32) -> bool,
    ) -> Result<(Generation, usize)> {
        run_ready(self.generate_async(&mut Ready(backend), prompt, params, on_token))
    }

    /// [`Session::generate`] over an [`AsyncBackend`].
    pub async fn generate_async(
        &mut self,
        backend: &mut impl AsyncBackend,
        prompt: &[u32],
        params: &GenerateParams,
        on_token: impl FnMut(u32) -> bool,
    ) -> Result<(Generation, usize)> {
        if prompt.is_empty() {
            return Err(Error::Input("the prompt is empty: give at least one token".into()));
        }
        let reused = self.reusable(prompt);
        backend.truncate(reused);
        self.cached.truncate(reused);
        let result = generate_after(backend, &prompt[..reused], &prompt[reused..], params, on_token).await;
        // Whatever happened, remember exactly what the cache now holds.
        let mut all = prompt.to_vec();
        if let Ok(g) = &result {
            all.extend(&g.tokens);
        }
        all.truncate(backend.len());
        if all.len() < backend.len() {
            backend.truncate(all.len());
        }
        self.cached = all;
        result.map(|g| (g, reused))
    }
}
