// baleen's JavaScript API, shaped like OpenAI's chat completions. The engine
// runs in a Web Worker (web/worker.js); this module only passes messages.
//
//   import { createEngine } from '/engine.js';
//   const engine = await createEngine('/models/SmolLM2-135M-Instruct.Q4_1.gguf', { onProgress: console.log });
//   const r = await engine.chat.completions.create({ messages: [{ role: 'user', content: 'Hi' }] });
//   for await (const c of await engine.chat.completions.create({ messages, stream: true })) ...
//
// See engine.d.ts for the types.

const ROLES = new Set(['system', 'user', 'assistant']);
const OPTIONS = ['max_tokens', 'temperature', 'top_p', 'top_k', 'seed', 'frequency_penalty', 'presence_penalty', 'repetition_penalty'];
// Every request field baleen honours; any other is refused by name, except
// these, which change nothing in a one-model engine in the page: `model`
// (the engine has one), `user`, `store`, `metadata` (OpenAI's bookkeeping),
// `stream_options` (the last streamed chunk always carries `usage`).
const HONOURED = new Set([...OPTIONS, 'messages', 'stream', 'stop', 'n', 'max_completion_tokens', 'logprobs', 'top_logprobs', 'logit_bias', 'chat_template_kwargs']);
const IGNORED = new Set(['model', 'user', 'store', 'metadata', 'stream_options']);
const MESSAGE_FIELDS = new Set(['role', 'content', 'name']);

function checkRequest(req) {
  if (!req || !Array.isArray(req.messages) || req.messages.length === 0)
    throw new TypeError('messages must be a non-empty array of { role, content }');
  for (const k of Object.keys(req)) {
    if (!HONOURED.has(k) && !IGNORED.has(k) && req[k] !== undefined)
      throw new TypeError(`${k} is not supported by baleen; leave it out (supported: ${[...HONOURED].join(', ')})`);
  }
  for (const [i, m] of req.messages.entries()) {
    if (!m || !ROLES.has(m.role)) throw new TypeError(`messages[${i}].role must be "system", "user" or "assistant"`);
    if (typeof m.content !== 'string') throw new TypeError(`messages[${i}].content must be a string`);
    for (const k of Object.keys(m))
      if (!MESSAGE_FIELDS.has(k) && m[k] !== undefined) throw new TypeError(`messages[${i}].${k} is not supported by baleen; messages take role, content (and name)`);
  }
  if (req.n !== undefined && req.n !== null && req.n !== 1) throw new TypeError('n must be 1: baleen gives one choice a request');
  if (req.max_completion_tokens !== undefined && req.max_completion_tokens !== null) {
    if (req.max_tokens !== undefined && req.max_tokens !== null && req.max_tokens !== req.max_completion_tokens)
      throw new TypeError('max_tokens and max_completion_tokens differ: give one');
    req = { ...req, max_tokens: req.max_completion_tokens };
  }
  const options = {};
  for (const k of OPTIONS) {
    const v = req[k];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new TypeError(`${k} must be a number`);
    if ((k === 'max_tokens' || k === 'top_k' || k === 'seed') && (!Number.isInteger(v) || v < 0))
      throw new TypeError(`${k} must be a whole number ≥ 0`);
    if (k === 'temperature' && v < 0) throw new TypeError('temperature must be ≥ 0 (0 is greedy)');
    if (k === 'top_p' && !(v > 0 && v <= 1)) throw new TypeError('top_p must be in (0, 1]');
    if ((k === 'frequency_penalty' || k === 'presence_penalty') && !(v >= -2 && v <= 2)) throw new TypeError(`${k} must be in [-2, 2] (0 is none)`);
    if (k === 'repetition_penalty' && !(v > 0)) throw new TypeError('repetition_penalty must be > 0 (1 is none)');
    options[k] = v;
  }
  if (req.logprobs !== undefined && req.logprobs !== null && typeof req.logprobs !== 'boolean') throw new TypeError('logprobs must be true or false');
  const top = req.top_logprobs ?? 0;
  if (!Number.isInteger(top) || top < 0 || top > 20) throw new TypeError('top_logprobs must be a whole number in [0, 20]');
  if (top > 0 && !req.logprobs) throw new TypeError('top_logprobs needs logprobs: true');
  if (req.logprobs) options.logprobs = top;
  const bias = req.logit_bias;
  if (bias !== undefined && bias !== null) {
    if (typeof bias !== 'object' || Array.isArray(bias)) throw new TypeError('logit_bias must be an object of token id → bias');
    for (const [k, v] of Object.entries(bias)) {
      if (!/^[0-9]+$/.test(k)) throw new TypeError(`logit_bias: ${JSON.stringify(k)} is not a token id`);
      if (typeof v !== 'number' || !(v >= -100 && v <= 100)) throw new TypeError(`logit_bias[${k}] must be a number in [-100, 100]`);
    }
    options.logit_bias = bias;
  }
  const kwargs = req.chat_template_kwargs;
  if (kwargs !== undefined && kwargs !== null) {
    if (typeof kwargs !== 'object' || Array.isArray(kwargs)) throw new TypeError('chat_template_kwargs must be an object of template variables');
    for (const k of Object.keys(kwargs))
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k) || k === 'messages' || k === 'add_generation_prompt')
        throw new TypeError(`chat_template_kwargs: ${JSON.stringify(k)} cannot be a template variable`);
    options.chat_template_kwargs = kwargs;
  }
  let stop = req.stop ?? [];
  if (typeof stop === 'string') stop = [stop];
  if (!Array.isArray(stop) || stop.some((s) => typeof s !== 'string')) throw new TypeError('stop must be a string or an array of strings');
  return { messages: req.messages.map(({ role, content }) => ({ role, content })), options, stop };
}

class Engine {
  #worker;
  #pending = new Map(); // id → { resolve, reject, onDelta }
  #next = 1;
  #queue = Promise.resolve(); // one request at a time, in order
  #stats = null;
  #onProgress = null;
  #model;

  constructor(worker, info) {
    this.#worker = worker;
    this.info = info;
    this.#model = info.name;
    this.chat = { completions: { create: (req) => this.#create(req) } };
  }

  /** @internal */
  static async start(modelUrl, { onProgress, workerUrl, kvCache, contextLength, expertCacheBytes, signal, sha256 } = {}) {
    signal?.throwIfAborted();
    if (sha256 !== undefined && !/^[0-9a-f]{64}$/.test(sha256)) throw new TypeError('sha256 must be the file\'s SHA-256 as 64 lowercase hex digits');
    if (kvCache !== undefined && kvCache !== 'f16' && kvCache !== 'f32') {
      throw new TypeError(`kvCache must be 'f16' or 'f32', not ${JSON.stringify(kvCache)}`);
    }
    if (contextLength !== undefined && !(Number.isInteger(contextLength) && contextLength > 0 && contextLength < 2 ** 32)) {
      throw new TypeError(`contextLength must be a positive whole number of positions, not ${JSON.stringify(contextLength)}`);
    }
    if (expertCacheBytes !== undefined && !(Number.isSafeInteger(expertCacheBytes) && expertCacheBytes > 0)) {
      throw new TypeError(`expertCacheBytes must be a positive whole number of bytes, not ${JSON.stringify(expertCacheBytes)}`);
    }
    const worker = new Worker(workerUrl ?? new URL('./worker.js', import.meta.url), { type: 'module' });
    const pending = new Map();
    let failWorker;
    const workerFailed = new Promise((_, reject) => (failWorker = reject));
    worker.onerror = (e) => failWorker(new Error(`the engine's worker failed to start: ${e.message ?? 'script error'}`));
    worker.onmessage = (e) => {
      const m = e.data;
      if (m.type === 'progress') onProgress?.(m.progress);
      else pending.get(m.id)?.(m);
    };
    const loaded = new Promise((resolve, reject) =>
      pending.set(0, (m) => (m.error !== undefined ? reject(new Error(m.error)) : resolve(m.result))),
    );
    // The wasm beside this module (served: /pkg/; the npm package: ./pkg/).
    const pkg = new URL('./pkg/baleen.js', import.meta.url).href;
    worker.postMessage({ id: 0, type: 'load', url: resolveModelUrl(modelUrl), pkg, kvCache, contextLength, expertCacheBytes, sha256 });
    // Cancelling a load ends its worker: downloads stop, the GPU memory goes.
    const cancelled = new Promise((_, reject) =>
      signal?.addEventListener('abort', () => reject(new DOMException('the load was cancelled', 'AbortError')), { once: true }),
    );
    let info;
    try {
      info = await Promise.race([loaded, workerFailed, cancelled]);
    } catch (e) {
      worker.terminate();
      throw e;
    }
    const engine = new Engine(worker, info);
    engine.#onProgress = onProgress;
    worker.onmessage = (e) => engine.#onMessage(e.data);
    worker.onerror = (e) => engine.#failAll(new Error(`the engine's worker crashed: ${e.message ?? 'script error'}`));
    return engine;
  }

  #onMessage(m) {
    // After the load: the paged experts' background download ('experts', 'downloaded').
    if (m.type === 'progress') return this.#onProgress?.(m.progress);
    const p = this.#pending.get(m.id);
    if (!p) return;
    if (m.delta !== undefined) return p.onDelta?.(m.delta);
    this.#pending.delete(m.id);
    if (m.error !== undefined) p.reject(new Error(m.error));
    else p.resolve(m.result);
  }

  #failAll(err) {
    for (const p of this.#pending.values()) p.reject(err);
    this.#pending.clear();
  }

  #call(msg, onDelta) {
    if (!this.#worker) return Promise.reject(new Error('the engine was disposed'));
    const id = this.#next++;
    const run = () =>
      new Promise((resolve, reject) => {
        if (!this.#worker) return reject(new Error('the engine was disposed'));
        this.#pending.set(id, { resolve, reject, onDelta });
        this.#worker.postMessage({ ...msg, id });
      });
    const p = this.#queue.then(run, run);
    this.#queue = p.catch(() => {});
    return p;
  }

  #record(r) {
    const ran = r.prompt_tokens - r.reused_tokens;
    this.#stats = {
      prompt_tokens: r.prompt_tokens,
      reused_tokens: r.reused_tokens,
      completion_tokens: r.completion_tokens,
      prefill_ms: r.prefill_ms,
      decode_ms: r.decode_ms,
      prefill_tokens_per_s: r.prefill_ms > 0 ? (ran / r.prefill_ms) * 1000 : 0,
      // The first token comes from the prefill; decode steps are the rest.
      decode_tokens_per_s: r.decode_ms > 0 && r.completion_tokens > 1 ? ((r.completion_tokens - 1) / r.decode_ms) * 1000 : 0,
    };
    // Paged experts: the cache's counts since load (budget, slots, hits, misses, …).
    if (r.expert_cache) this.#stats.expert_cache = r.expert_cache;
    // Memory after the reply: a leak shows as growth over many replies.
    this.#stats.gpu_bytes = r.gpu_bytes;
    this.#stats.wasm_heap_bytes = r.wasm_heap_bytes;
  }

  #usage(r) {
    return { prompt_tokens: r.prompt_tokens, completion_tokens: r.completion_tokens, total_tokens: r.prompt_tokens + r.completion_tokens };
  }

  async #create(req) {
    const { messages, options, stop } = checkRequest(req);
    const id = `chatcmpl-${Math.random().toString(36).slice(2, 14)}`;
    const created = Math.floor(Date.now() / 1000);
    const base = { id, created, model: this.#model };
    if (!req.stream) {
      const r = await this.#call({ type: 'chat', messages, options, stop });
      this.#record(r);
      return {
        ...base,
        object: 'chat.completion',
        choices: [
          {
            index: 0,
            message: { role: 'assistant', content: r.content },
            finish_reason: r.finish_reason,
            ...(r.logprobs ? { logprobs: { content: r.logprobs } } : {}),
          },
        ],
        usage: this.#usage(r),
      };
    }
    // Streaming: chunks queue up as the worker sends them; the iterator drains them.
    const chunks = [];
    let wake = null;
    let finished = false;
    let failure = null;
    const push = (c) => {
      chunks.push(c);
      wake?.();
    };
    const chunk = (delta, finish_reason, extra = {}) => ({
      ...base,
      object: 'chat.completion.chunk',
      choices: [{ index: 0, delta, finish_reason }],
      ...extra,
    });
    let first = true;
    this.#call({ type: 'chat', messages, options, stop }, (content) => {
      push(chunk(first ? { role: 'assistant', content } : { content }, null));
      first = false;
    }).then(
      (r) => {
        this.#record(r);
        const last = chunk({}, r.finish_reason, { usage: this.#usage(r) });
        // Streamed, every token's log-probabilities come with the last chunk.
        if (r.logprobs) last.choices[0].logprobs = { content: r.logprobs };
        push(last);
        finished = true;
        wake?.();
      },
      (e) => {
        failure = e;
        finished = true;
        wake?.();
      },
    );
    const engine = this;
    return {
      async *[Symbol.asyncIterator]() {
        try {
          for (;;) {
            if (chunks.length) {
              yield chunks.shift();
              continue;
            }
            if (finished) {
              if (failure) throw failure;
              return;
            }
            await new Promise((r) => (wake = r));
            wake = null;
          }
        } finally {
          // A consumer that stops early (break) stops the generation too.
          if (!finished) engine.interrupt();
        }
      },
    };
  }

  /** @internal Test hook: destroy the GPU device, as a lost GPU would; the next request loads the model again. */
  _loseDevice() {
    return this.#call({ type: 'lose-device' });
  }

  /** Stop the reply being generated (it ends with finish_reason "abort"). */
  interrupt() {
    this.#worker?.postMessage({ type: 'interrupt' });
  }

  /** Forget the cached conversation (the next request runs its whole prompt). */
  resetChat() {
    return this.#call({ type: 'reset' });
  }

  /** Where a decode step's time goes: [[op kind, ms per step], …], largest first. */
  profile(reps = 5) {
    return this.#call({ type: 'profile', reps });
  }

  /** Speed of the last reply: prefill and decode tokens/s, and the counts they come from. */
  stats() {
    return this.#stats && { ...this.#stats };
  }

  /** Free the model and the GPU memory; the engine cannot be used afterwards. */
  async dispose() {
    if (!this.#worker) return;
    this.interrupt();
    await this.#call({ type: 'dispose' }).catch(() => {});
    this.#worker.terminate();
    this.#worker = null;
    this.#failAll(new Error('the engine was disposed'));
  }
}

/**
 * Load a GGUF model (by URL) into a new engine running in a Web Worker.
 * @param {string} modelUrl
 * @param {{ onProgress?: (p: object) => void, workerUrl?: string | URL, kvCache?: 'f16' | 'f32', contextLength?: number, expertCacheBytes?: number, signal?: AbortSignal }} [opts]
 *   signal: aborting it cancels the load (the promise rejects with an AbortError).
 *   sha256: the file's SHA-256 (hex) as its publisher gives it: the load checks the
 *   whole file against it (default: the hub's LFS sha256 where the server names it)
 *   and fails with a plain error on a mismatch, dropping the cached copy. Each cached
 *   chunk is checked against its own digest whenever it is reused.
 *   kvCache: the KV cache's type (default f16 where the GPU has shader-f16).
 *   contextLength: positions the KV cache holds, at most the model's own
 *   (default: the model's own where the whole cache takes at most 1 GiB, and
 *   at least 4096); `info.context` says what was chosen, `info.kv_cache_bytes`
 *   what it costs.
 *   expertCacheBytes: GPU bytes for a mixture-of-experts model's routed
 *   experts, paged on demand below their total (the CLI's --expert-cache):
 *   misses come from the cached chunks, else by Range requests; the load
 *   skips them. `info.expert_cache` and `stats().expert_cache` give the
 *   budget, slots, hits, misses, evictions and bytes loaded. Default: all
 *   resident while they take at most 2 GiB, else paged in 2 GiB.
 */
/**
 * A model's URL: `hf:owner/repo/path/file.gguf` (optionally `hf:owner/repo@revision/…`)
 * becomes the Hugging Face hub's download URL for that file; anything else
 * is resolved against the page.
 * @param {string} modelUrl
 */
export function resolveModelUrl(modelUrl) {
  if (!modelUrl.startsWith('hf:')) return new URL(modelUrl, location.href).href;
  const m = /^hf:([^/@\s]+)\/([^/@\s]+)(?:@([^/\s]+))?\/(.+\.gguf)$/.exec(modelUrl);
  if (!m) throw new TypeError(`${JSON.stringify(modelUrl)}: write a Hugging Face model as hf:owner/repo/file.gguf (or hf:owner/repo@revision/file.gguf)`);
  const [, owner, repo, rev, file] = m;
  const path = file.split('/').map(encodeURIComponent).join('/');
  return `https://huggingface.co/${encodeURIComponent(owner)}/${encodeURIComponent(repo)}/resolve/${encodeURIComponent(rev ?? 'main')}/${path}`;
}

export { cachedModels, deleteCachedModel } from './loader.js';

export function createEngine(modelUrl, opts) {
  if (typeof modelUrl !== 'string' || modelUrl.length === 0) return Promise.reject(new TypeError('createEngine needs a model URL'));
  return Engine.start(modelUrl, opts);
}
