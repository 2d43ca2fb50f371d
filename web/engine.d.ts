// Types for /engine.js, baleen's OpenAI-shaped chat API.

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export interface LoadProgress {
  /** 'header': the file's index is read; 'weights': tensors are arriving; 'ready': loaded.
   * With paged experts, after 'ready' (replies can start): 'experts' as the rest of the file
   * streams into the cache behind the replies' own reads, 'downloaded' once all of it is.
   * 'device-lost': the GPU was lost; the model loads again from the cache (then 'ready'). */
  phase: 'header' | 'weights' | 'ready' | 'experts' | 'downloaded' | 'device-lost';
  loadedBytes: number;
  totalBytes: number;
  /** Of loadedBytes, how many came from the browser's cache. */
  cachedBytes: number;
  tensorsLoaded: number;
  tensorsTotal: number;
  elapsedMs: number;
  /** 'experts': routed experts held in the GPU's expert cache, of all of them. */
  residentExperts?: number;
  totalExperts?: number;
}

export interface ChatCompletionRequest {
  messages: ChatMessage[];
  /** Most tokens to generate (default: until the end of the reply or of the context). */
  max_tokens?: number;
  /** OpenAI's newer name for max_tokens. */
  max_completion_tokens?: number;
  /** Choices a request: only 1. */
  n?: 1;
  /** Accepted and ignored: the engine has one model. (So are user, store, metadata and
   * stream_options; any other field is refused by name.) */
  model?: string;
  /** 0 is greedy; default 1. */
  temperature?: number;
  top_p?: number;
  /** 0 keeps all candidates (at most 256 are considered). */
  top_k?: number;
  seed?: number;
  /** OpenAI's penalties, [-2, 2], over the last 64 tokens of the context (llama.cpp's window). */
  frequency_penalty?: number;
  presence_penalty?: number;
  /** A repeated token's logit divided by this (multiplied, if negative); 1 is none. */
  repetition_penalty?: number;
  /** Token id → bias added to its logit, [-100, 100] (−100 bans it). */
  logit_bias?: Record<string, number>;
  /** Each token's log-probability (of the logits it was drawn from, after penalties, before temperature). */
  logprobs?: boolean;
  /** And the most likely alternatives', 0–20 (needs logprobs). */
  top_logprobs?: number;
  /** Generation stops before any of these strings. */
  stop?: string | string[];
  stream?: boolean;
  /** The chat template's extra variables, e.g. Qwen3's `{ enable_thinking: false }`. */
  chat_template_kwargs?: Record<string, unknown>;
}

export interface TokenLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs?: { token: string; logprob: number; bytes: number[] }[];
}

/** 'stop': end of reply or a stop string; 'length': max_tokens or the context; 'abort': interrupt(). */
export type FinishReason = 'stop' | 'length' | 'abort';

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: [{ index: 0; message: { role: 'assistant'; content: string }; finish_reason: FinishReason; logprobs?: { content: TokenLogprob[] } }];
  usage: Usage;
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  /** logprobs: on the last chunk, every token's. */
  choices: [{ index: 0; delta: { role?: 'assistant'; content?: string }; finish_reason: FinishReason | null; logprobs?: { content: TokenLogprob[] } }];
  /** On the last chunk only. */
  usage?: Usage;
}

export interface EngineStats {
  prompt_tokens: number;
  /** Prompt tokens served from the previous turns' KV cache. */
  reused_tokens: number;
  completion_tokens: number;
  prefill_ms: number;
  decode_ms: number;
  prefill_tokens_per_s: number;
  decode_tokens_per_s: number;
  /** Paged experts (expertCacheBytes): the cache's counts since load. */
  expert_cache?: ExpertCacheStats;
  /** After the reply: GPU bytes allocated, and the wasm heap's size (it never shrinks). */
  gpu_bytes: number;
  wasm_heap_bytes: number;
}

export interface ExpertCacheStats {
  budget_bytes: number;
  /** The smallest budget the model takes (top-k slots of each kind of expert), and all its routed experts' bytes. */
  minimum_bytes: number;
  total_bytes: number;
  slots: number;
  hits: number;
  misses: number;
  evictions: number;
  /** File bytes read for misses (from the chunk cache or by Range requests). */
  bytes_loaded: number;
  /** Passes stopped for a layer's expert ids. */
  readbacks: number;
  /** Layers whose experts ran in more than one round of uploads. */
  extra_rounds: number;
  /** Routed experts in the cache's slots, of all of them. */
  resident: number;
  experts: number;
  /** Misses whose bytes had been fetched ahead (the previous token's choices at that layer). */
  prefetch_hits: number;
}

export interface ModelInfo {
  name: string;
  architecture: string;
  layers: number;
  /** Positions the KV cache holds (contextLength, or the default) … */
  context: number;
  /** … of the model's own context length. */
  model_context: number;
  /** The KV cache's bytes (sliding-window layers hold rings). */
  kv_cache_bytes: number;
  vocab: number;
  tensors: number;
  adapter: string;
  backend: string;
  gpu_bytes: number;
  kv_f16: boolean;
  /** Paged experts (expertCacheBytes), else null. */
  expert_cache: ExpertCacheStats | null;
  chat_template: boolean;
  loadMs: number;
  bytes: number;
  downloadedBytes: number;
  cachedBytes: number;
  /** Cached chunks that no longer matched their digest, fetched again. */
  corruptChunks: number;
  /** The digest the whole file was checked against, if any. */
  sha256: string | null;
}

export interface Engine {
  readonly info: ModelInfo;
  chat: {
    completions: {
      create(req: ChatCompletionRequest & { stream: true }): Promise<AsyncIterable<ChatCompletionChunk>>;
      create(req: ChatCompletionRequest & { stream?: false }): Promise<ChatCompletion>;
    };
  };
  interrupt(): void;
  resetChat(): Promise<void>;
  /** The last reply's speed; null before the first. */
  stats(): EngineStats | null;
  /** Where a decode step's time goes on this GPU: [op kind, ms per step], largest first. */
  profile(reps?: number): Promise<[string, number][]>;
  dispose(): Promise<void>;
}

/** `hf:owner/repo[@revision]/file.gguf` → the hub's download URL; other URLs against the page. */
export function resolveModelUrl(modelUrl: string): string;

export function createEngine(
  modelUrl: string,
  opts?: {
    onProgress?: (p: LoadProgress) => void;
    workerUrl?: string | URL;
    /** The KV cache's type (default f16 where the GPU has shader-f16). */
    kvCache?: 'f16' | 'f32';
    /** Positions the KV cache holds, at most the model's own (default: the
     * model's own where the cache takes at most 1 GiB, and at least 4096). */
    contextLength?: number;
    /** GPU bytes for a mixture-of-experts model's routed experts: below
     * their total they are paged on demand (misses from the cached chunks,
     * else by Range requests), with replies identical to all resident.
     * Default: all resident while they take at most 2 GiB, else 2 GiB. */
    expertCacheBytes?: number;
    /** Aborting it cancels the load: its worker ends, the promise rejects with an AbortError. */
    signal?: AbortSignal;
    /** The file's SHA-256 (64 hex digits) from its publisher: the load checks the whole file
     * against it (default: the hub's LFS sha256 where the server names it) and fails on a
     * mismatch, dropping the cached copy. */
    sha256?: string;
  },
): Promise<Engine>;

export interface CachedModel {
  url: string;
  /** Bytes in the cache, of the file's size. */
  bytes: number;
  size: number;
  complete: boolean;
}

/** The models in this browser's cache, largest first. */
export function cachedModels(): Promise<CachedModel[]>;
/** Drop a model's cached copy; the number of cache entries deleted. */
export function deleteCachedModel(url: string): Promise<number>;
