//! The browser's engine, exported to JavaScript with wasm-bindgen. A model is
//! loaded from a download (`read(offset, len)` → a promise of bytes, answered by
//! `web/loader.js` from HTTP Range requests and the browser's cache): the GGUF
//! header first, then one tensor (or one chunk of a large one) at a time,
//! straight to WebGPU. Chat turns reuse the KV cache of earlier turns.
//! `web/worker.js` drives this module inside a Web Worker.

use crate::engine::{AsyncBackend, GenerateParams, Session, StopReason};
use crate::error::{Error, Result};
use crate::format::{tensor_range, TensorInfo, TensorReader};
use crate::gpu::model::GpuModel;
use crate::gpu::{Gpu, GpuOptions};
use crate::model::ModelFiles;
use crate::sample::SamplingParams;
use crate::source::PrefixSource;
use crate::tokenizer::{Message, Tokenizer};
use js_sys::{Function, Promise, Uint8Array};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

/// Bytes of the header the first request asks for; more follow if it is larger.
const FIRST_HEADER_BYTES: u64 = 4 << 20;
/// The most bytes of one tensor fetched at once (a chunk of rows): bounds the
/// wasm memory a load needs, whatever the model's size.
const MAX_FETCH_BYTES: u64 = 128 << 20;

fn js_message(v: &JsValue) -> String {
    if let Some(e) = v.dyn_ref::<js_sys::Error>() {
        return String::from(e.message());
    }
    v.as_string().unwrap_or_else(|| format!("{v:?}"))
}

fn to_js(e: Error) -> JsValue {
    JsError::new(&e.to_string()).into()
}

/// Bytes from the page's loader: `read(offset, len)` returns a promise of a
/// `Uint8Array` of exactly `len` bytes; `on_tensor(done, total)` after each tensor.
struct JsReader {
    read: Function,
    on_tensor: Function,
    done: Cell<usize>,
    total: usize,
}

impl JsReader {
    async fn fetch(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        fetch(&self.read, offset, len).await
    }
}

/// Bytes `offset .. offset + len` of the model file through the page's
/// `read(offset, len)` (its chunk cache, else Range requests).
async fn fetch(read: &Function, offset: u64, len: u64) -> Result<Vec<u8>> {
    let download = |v: &JsValue| Error::Input(format!("download failed: {}", js_message(v)));
    let p = read
        .call2(&JsValue::NULL, &JsValue::from_f64(offset as f64), &JsValue::from_f64(len as f64))
        .map_err(|e| download(&e))?;
    let v = JsFuture::from(Promise::resolve(&p)).await.map_err(|e| download(&e))?;
    let bytes = Uint8Array::new(&v);
    if bytes.length() as u64 != len {
        return Err(Error::Input(format!(
            "download failed: asked for {len} bytes at {offset}, got {} (is the file complete on the server?)",
            bytes.length()
        )));
    }
    Ok(bytes.to_vec())
}

/// Paged experts' misses, read as the loader reads: from the page's chunk
/// cache, else by Range requests for the chunks holding that expert.
struct JsExperts {
    read: Function,
    warm: Function,
}

impl crate::gpu::paging::ExpertSource for JsExperts {
    fn read<'a>(&'a self, t: &'a TensorInfo, start: u64, len: u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<u8>>> + 'a>> {
        Box::pin(async move { fetch(&self.read, tensor_range(t, start, len)?, len).await })
    }
    fn prefetch(&self, t: &TensorInfo, start: u64, len: u64) {
        if let Ok(offset) = tensor_range(t, start, len) {
            let _ = self.warm.call2(&JsValue::NULL, &JsValue::from_f64(offset as f64), &JsValue::from_f64(len as f64));
        }
    }
}

impl TensorReader for JsReader {
    async fn read_range(&self, t: &TensorInfo, start: u64, len: u64) -> Result<Vec<u8>> {
        let bytes = self.fetch(tensor_range(t, start, len)?, len).await?;
        if start + len == t.nbytes {
            self.done.set(self.done.get() + 1);
            let (d, n) = (JsValue::from_f64(self.done.get() as f64), JsValue::from_f64(self.total as f64));
            let _ = self.on_tensor.call2(&JsValue::NULL, &d, &n);
        }
        Ok(bytes)
    }
}

struct Inner {
    model: GpuModel,
    tokenizer: Tokenizer,
    session: Session,
    name: String,
    tensors: usize,
}

/// A loaded model and its conversation.
#[wasm_bindgen]
pub struct WebEngine {
    inner: Rc<RefCell<Inner>>,
}

/// Parse the GGUF header of a `size`-byte file, fetching more of its start
/// until the parser has what it needs.
async fn open_header(name: &str, size: u64, reader: &JsReader) -> Result<ModelFiles> {
    let mut have = FIRST_HEADER_BYTES.min(size);
    loop {
        let bytes = reader.fetch(0, have).await?;
        let src = Arc::new(PrefixSource::new(name, bytes, size));
        match ModelFiles::from_gguf(name.to_string(), src) {
            Err(Error::NeedBytes { needed, .. }) if needed > have && have < size => {
                have = needed.max(have.saturating_mul(2)).min(size);
            }
            other => return other,
        }
    }
}

/// An incremental SHA-256 (the page checks a model file against its
/// publisher's digest chunk by chunk, in order, without holding the file).
#[wasm_bindgen]
pub struct Sha256(sha2::Sha256);

#[wasm_bindgen]
impl Sha256 {
    #[wasm_bindgen(constructor)]
    pub fn new() -> Sha256 {
        Sha256(<sha2::Sha256 as sha2::Digest>::new())
    }
    pub fn update(&mut self, bytes: &[u8]) {
        sha2::Digest::update(&mut self.0, bytes);
    }
    /// The digest, lowercase hex.
    pub fn finish(self) -> String {
        sha2::Digest::finalize(self.0).iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

/// Every kernel variant a browser without shader-f16 and subgroups can be
/// asked for, as `[[name, wgsl], …]`: the browser test compiles them all
/// with the browser's own WGSL compiler (stricter than naga in places).
#[wasm_bindgen(js_name = shaderVariants)]
pub fn shader_variants() -> js_sys::Array {
    let out = js_sys::Array::new();
    for family in baleen_shaders::FAMILIES {
        for flags in baleen_shaders::variants(family) {
            if flags.iter().any(|f| f.starts_with("HALF_") || f.contains("SUBGROUPS")) {
                continue;
            }
            let consts = baleen_shaders::consts(family, &flags);
            let source = baleen_shaders::specialise(family, &flags, &consts).unwrap_or_else(|e| format!("specialising failed: {e}"));
            let name = format!("{} {}", family.name, flags.join(" "));
            out.push(&js_sys::Array::of2(&name.into(), &source.into()));
        }
    }
    out
}

/// Load a GGUF model of `size` bytes named `name`: `read(offset, len)` returns
/// a promise of its bytes (whole cached chunks); `read_exact(offset, len)`
/// likewise, but fetching just those bytes where their chunks are not
/// local yet (what a paged model reads: its dense part at load, then each
/// missed expert); `warm(offset, len)` starts fetching bytes a later read
/// will want; `on_tensor(done, total)` reports each tensor uploaded;
/// `kv_cache`: "f16" or "f32" (default: f16 where the GPU has shader-f16);
/// `context`: positions the KV cache holds (default: see
/// [`crate::gpu::choose_context`]); `expert_cache`: GPU bytes for routed
/// experts, paged from `read` below their total.
#[wasm_bindgen(js_name = loadModel)]
pub async fn load_model(
    name: String,
    size: f64,
    read: Function,
    read_exact: Function,
    warm: Function,
    on_tensor: Function,
    kv_cache: Option<String>,
    context: Option<u32>,
    expert_cache: Option<f64>,
) -> std::result::Result<WebEngine, JsValue> {
    let kv_f16 = match kv_cache.as_deref() {
        None => None,
        Some("f16") => Some(true),
        Some("f32") => Some(false),
        Some(other) => return Err(to_js(Error::Input(format!("kvCache {other:?}: use \"f16\" or \"f32\"")))),
    };
    if !(size.is_finite() && size > 0.0) {
        return Err(to_js(Error::Input(format!("{name}: the server gave no file size ({size}); it must answer Range requests"))));
    }
    let mut reader = JsReader { read, on_tensor, done: Cell::new(0), total: 0 };
    let files = open_header(&name, size as u64, &reader).await.map_err(to_js)?;
    let tensors = files.index.tensors.len();
    reader.total = tensors;
    let gpu = Arc::new(Gpu::new().await.map_err(to_js)?);
    let opts = GpuOptions { max_staging: Some(MAX_FETCH_BYTES), kv_f16, context: context.map(|n| n as usize), expert_cache: expert_cache.map(|b| b as u64), ..GpuOptions::default() };
    // A paged model's load skips its routed experts: read the rest by its
    // own ranges (the chunks fill in behind, in the page's background).
    if GpuModel::expert_budget(&files, &opts).map_err(to_js)?.is_some() {
        reader.read = read_exact.clone();
    }
    let experts = Box::new(JsExperts { read: read_exact, warm });
    let model = GpuModel::load_with(gpu, &files, &reader, &opts, Some(experts)).await.map_err(to_js)?;
    model.gpu.check().map_err(to_js)?;
    let ModelFiles { tokenizer, .. } = files;
    let inner = Inner { model, tokenizer, session: Session::new(), name, tensors };
    Ok(WebEngine { inner: Rc::new(RefCell::new(inner)) })
}

/// Chat options as `web/engine.js` passes them (OpenAI's names).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatOptions {
    max_tokens: Option<u64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u64>,
    seed: Option<u64>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    /// Log-probabilities of each token and this many alternatives.
    logprobs: Option<usize>,
    repetition_penalty: Option<f32>,
    /// Token id (as text, as OpenAI has it) → bias.
    logit_bias: Option<std::collections::BTreeMap<String, f32>>,
    /// The chat template's extra variables (`enable_thinking`, …).
    chat_template_kwargs: Option<crate::tokenizer::TemplateArgs>,
}

#[derive(serde::Serialize)]
struct ChatResult {
    content: String,
    stop_reason: StopReason,
    prompt_tokens: usize,
    completion_tokens: usize,
    /// Prompt tokens whose keys and values came from the previous turns' cache.
    reused_tokens: usize,
    prefill_ms: f64,
    decode_ms: f64,
    /// OpenAI's `logprobs.content`: each token's, when asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<Vec<serde_json::Value>>,
    /// The paged experts' cache counts so far, when experts are paged.
    #[serde(skip_serializing_if = "Option::is_none")]
    expert_cache: Option<crate::gpu::paging::ExpertStats>,
    /// After the reply: the GPU bytes allocated, and the wasm heap's size
    /// (memory pages × 64 KiB; it never shrinks, so a leak shows as growth).
    gpu_bytes: u64,
    wasm_heap_bytes: u64,
}

/// One token's log-probability entry as OpenAI shapes it.
fn openai_logprob(tokenizer: &Tokenizer, token: u32, logprob: f32) -> serde_json::Value {
    let text = tokenizer.decode(&[token]).unwrap_or_default();
    serde_json::json!({ "token": text, "logprob": logprob, "bytes": text.as_bytes() })
}

fn busy() -> JsValue {
    to_js(Error::Input("the engine is busy with another request; wait for it or interrupt it".into()))
}

#[wasm_bindgen]
impl WebEngine {
    /// A JSON object describing the model and the GPU.
    pub fn info(&self) -> std::result::Result<String, JsValue> {
        let inner = self.inner.try_borrow().map_err(|_| busy())?;
        let mut info = serde_json::to_value(inner.model.info()).expect("serialisable");
        info["name"] = inner.name.clone().into();
        info["tensors"] = inner.tensors.into();
        info["chat_template"] = inner.tokenizer.has_chat_template().into();
        Ok(info.to_string())
    }

    /// Reply to `messages` (JSON `[{role, content}]`, the whole conversation)
    /// with `options` (JSON). `on_text(delta)` gets the reply as it grows and
    /// returns `false` to stop. Resolves to a JSON `ChatResult`.
    pub fn chat(&self, messages: String, options: String, on_text: Function) -> Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut guard = inner.try_borrow_mut().map_err(|_| busy())?;
            let r = chat(&mut guard, &messages, &options, &on_text).await.map_err(to_js)?;
            Ok(JsValue::from_str(&serde_json::to_string(&r).expect("serialisable")))
        })
    }

    /// Where a decode step's time goes on this GPU: `[[op kind, ms per step], …]`
    /// (JSON), each op run alone `reps` times at the conversation's position.
    pub fn profile(&self, reps: u32) -> Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut guard = inner.try_borrow_mut().map_err(|_| busy())?;
            let v = guard.model.profile_by_kind(1, reps.max(1) as usize).await.map_err(to_js)?;
            Ok(JsValue::from_str(&serde_json::to_string(&v).expect("serialisable")))
        })
    }

    /// Test hook: destroy the GPU device, as a driver reset or a lost GPU
    /// would (the worker then reloads the model; see worker.js).
    #[wasm_bindgen(js_name = loseDevice)]
    pub fn lose_device(&self) -> std::result::Result<(), JsValue> {
        let inner = self.inner.try_borrow().map_err(|_| busy())?;
        inner.model.gpu.device.destroy();
        Ok(())
    }

    /// Whether the GPU device was lost (then load the model again).
    #[wasm_bindgen(js_name = deviceLost)]
    pub fn device_lost(&self) -> bool {
        self.inner.try_borrow().is_ok_and(|i| i.model.gpu.is_lost())
    }

    /// Forget the conversation (the next turn runs its whole prompt).
    pub fn reset(&self) -> std::result::Result<(), JsValue> {
        let mut guard = self.inner.try_borrow_mut().map_err(|_| busy())?;
        let Inner { model, session, .. } = &mut *guard;
        session.reset(model);
        Ok(())
    }
}

async fn chat(inner: &mut Inner, messages: &str, options: &str, on_text: &Function) -> Result<ChatResult> {
    let messages: Vec<Message> = serde_json::from_str(messages)
        .map_err(|e| Error::Input(format!("messages must be a list of {{role, content}} objects: {e}")))?;
    if messages.is_empty() {
        return Err(Error::Input("messages is empty: give at least one message".into()));
    }
    let o: ChatOptions = serde_json::from_str(options).map_err(|e| Error::Input(format!("bad chat options: {e}")))?;
    let Inner { model, tokenizer, session, .. } = inner;
    let prompt = tokenizer.encode_chat_with(&messages, true, &o.chat_template_kwargs.clone().unwrap_or_default())?;
    let context = AsyncBackend::context_length(model);
    let sampling = SamplingParams {
        temperature: o.temperature.unwrap_or(1.0),
        top_p: o.top_p.unwrap_or(1.0),
        top_k: o.top_k.unwrap_or(0).min(usize::MAX as u64) as usize,
        seed: o.seed.unwrap_or_else(|| (js_sys::Math::random() * 2f64.powi(53)) as u64),
        frequency_penalty: o.frequency_penalty.unwrap_or(0.0),
        presence_penalty: o.presence_penalty.unwrap_or(0.0),
        repetition_penalty: o.repetition_penalty.unwrap_or(1.0),
        logprobs: o.logprobs,
        ..SamplingParams::default()
    };
    let max_tokens = o.max_tokens.map_or(context, |n| n.min(context as u64) as usize);
    let vocab = model.cfg.vocab;
    let logit_bias = o
        .logit_bias
        .unwrap_or_default()
        .into_iter()
        .map(|(k, b)| match k.parse::<u32>() {
            Ok(id) if (id as usize) < vocab => Ok((id, b)),
            _ => Err(Error::Input(format!("logit_bias: {k:?} is not a token id of this model (0 to {})", vocab - 1))),
        })
        .collect::<Result<Vec<_>>>()?;
    let params = GenerateParams { max_tokens, sampling, stop_ids: tokenizer.stop_ids.clone(), logit_bias };
    let mut stream = tokenizer.stream();
    let mut content = String::new();
    let mut failed = None;
    let (g, reused) = session
        .generate_async(model, &prompt, &params, |id| {
            let delta = match stream.push(id) {
                Ok(d) => d,
                Err(e) => {
                    failed = Some(e);
                    return false;
                }
            };
            if delta.is_empty() {
                return true;
            }
            content.push_str(&delta);
            // The worker answers false once interrupted or a stop string is seen.
            on_text.call1(&JsValue::NULL, &JsValue::from_str(&delta)).map(|v| v.as_bool() != Some(false)).unwrap_or(false)
        })
        .await?;
    if let Some(e) = failed {
        return Err(e);
    }
    let rest = stream.finish()?;
    if !rest.is_empty() {
        content.push_str(&rest);
        let _ = on_text.call1(&JsValue::NULL, &JsValue::from_str(&rest));
    }
    Ok(ChatResult {
        content,
        stop_reason: g.stop,
        prompt_tokens: prompt.len(),
        completion_tokens: g.tokens.len(),
        reused_tokens: reused,
        prefill_ms: g.prefill_ms,
        decode_ms: g.decode_ms,
        expert_cache: inner.model.expert_stats(),
        gpu_bytes: inner.model.gpu.allocated_bytes(),
        wasm_heap_bytes: core::arch::wasm32::memory_size(0) as u64 * 65536,
        logprobs: o.logprobs.map(|_| {
            g.logprobs
                .iter()
                .map(|lp| {
                    let mut e = openai_logprob(tokenizer, lp.token, lp.logprob);
                    e["top_logprobs"] = lp.top.iter().map(|&(t, l)| openai_logprob(tokenizer, t, l)).collect();
                    e
                })
                .collect()
        }),
    })
}
