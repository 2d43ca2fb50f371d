// Model bytes for the engine: HTTP Range requests in fixed chunks, each kept in
// the browser's Cache Storage once complete, so a reload downloads nothing and
// an interrupted download resumes from the last completed chunk. The engine
// asks for byte ranges (`read(offset, len)`); nothing holds the whole file.

export const CHUNK_BYTES = 4 << 20;
const CACHE_NAME = 'baleen-models-v1';
const KEY_PREFIX = 'https://baleen.cache/';
const RETRIES = 6;
// Chunks kept in memory: the engine reads tensors in its own order, which
// jumps back and forth inside a layer's few chunks.
const RECENT_CHUNKS = 8;
// How long the background fill waits after the last read or prefetch.
const IDLE_MS = 250;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const DIGEST_HEADER = 'x-baleen-sha256';

/** SHA-256 of `bytes`, lowercase hex. */
async function sha256(bytes) {
  const d = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  return Array.from(d, (b) => b.toString(16).padStart(2, '0')).join('');
}
const mb = (n) => `${(n / 1e6).toFixed(1)} MB`;

/**
 * The models in this browser's cache: `{ url, bytes, size, complete }` each
 * (`bytes` cached of the file's `size`), largest first.
 */
export async function cachedModels() {
  const cache = await caches.open(CACHE_NAME);
  const byUrl = new Map();
  for (const req of await cache.keys()) {
    if (!req.url.startsWith(KEY_PREFIX)) continue;
    const rest = req.url.slice(KEY_PREFIX.length);
    const slash = rest.lastIndexOf('/');
    const url = decodeURIComponent(rest.slice(0, slash));
    const what = rest.slice(slash + 1);
    const m = byUrl.get(url) ?? { url, chunks: [], size: 0 };
    if (what === 'meta') m.size = (await (await cache.match(req)).json()).size;
    else m.chunks.push(Number(what));
    byUrl.set(url, m);
  }
  // A chunk's bytes from its index and the file's size (no chunk is read).
  return [...byUrl.values()]
    .map(({ url, chunks, size }) => {
      const bytes = chunks.reduce((n, i) => n + Math.max(0, Math.min(CHUNK_BYTES, size - i * CHUNK_BYTES)), 0);
      return { url, bytes, size, complete: size > 0 && bytes === size };
    })
    .sort((a, b) => b.bytes - a.bytes);
}

/** Delete a model's cached copy (its URL as `cachedModels` lists it); the number of entries dropped. */
export async function deleteCachedModel(url) {
  const cache = await caches.open(CACHE_NAME);
  const prefix = `${KEY_PREFIX}${encodeURIComponent(new URL(url, self.location.href).href)}/`;
  let n = 0;
  for (const req of await cache.keys()) if (req.url.startsWith(prefix) && (await cache.delete(req))) n++;
  return n;
}

/** A plain-words error for a failed request. */
function httpError(url, res) {
  if (res.status === 404) return new Error(`download failed: ${url} was not found (HTTP 404); check the model URL`);
  if (res.status === 401 || res.status === 403)
    return new Error(`download failed: ${url} needs permission (HTTP ${res.status}); gated models need a direct download URL`);
  return new Error(`download failed: ${url} answered HTTP ${res.status}`);
}

export class ModelFile {
  /**
   * @param {string} url
   * @param {{ onBytes?: (loaded: number, total: number, fromCache: number) => void }} [opts]
   */
  constructor(url, opts = {}) {
    this.url = new URL(url, self.location.href).href;
    this.onBytes = opts.onBytes ?? (() => {});
    this.size = 0;
    this.loaded = 0; // bytes obtained so far (network or cache)
    this.fromCache = 0;
    this.network = 0; // bytes downloaded
    this.cache = null;
    this.recent = new Map(); // index → bytes, least recently used first
    this.seen = new Set(); // chunks counted in `loaded`
    this.inflight = new Map(); // index → the promise of a chunk being fetched
    this.urgent = 0; // reads and prefetches under way: the background fill waits for them
    this.lastUrgent = 0; // when the last of them ended (ms)
    this.stopped = false;
    this.corrupt = 0; // cached chunks whose bytes no longer matched their digest (fetched again)
    this.publishedSha256 = null; // the file's digest as its server states it (a hub's LFS sha256), if it does
  }

  key(what) {
    return `${KEY_PREFIX}${encodeURIComponent(this.url)}/${what}`;
  }

  /** Learn the size (and whether the cached copy is still this file). */
  async open() {
    try {
      this.cache = await caches.open(CACHE_NAME);
    } catch (e) {
      console.warn(`baleen: no Cache Storage (${e.message}); the model will be downloaded on every load`);
      this.cache = null;
    }
    const cachedMeta = this.cache && (await this.cache.match(this.key('meta')));
    const meta = cachedMeta ? await cachedMeta.json() : null;
    let head;
    try {
      head = await this.probe();
    } catch (e) {
      if (meta) {
        // Offline, but the whole file may be in the cache.
        this.size = meta.size;
        return this;
      }
      throw e;
    }
    this.size = head.size;
    if (meta && (meta.size !== head.size || meta.validator !== head.validator)) await this.forget();
    if (this.cache) {
      // Ask once that the browser keep the copy under storage pressure (it may say no).
      await navigator.storage?.persist?.().catch(() => false);
      await this.checkQuota();
      await this.put(this.key('meta'), new Response(JSON.stringify({ size: head.size, validator: head.validator })));
    }
    return this;
  }

  /** Size and validator from a HEAD request (or a one-byte Range GET). */
  async probe() {
    let res;
    try {
      res = await fetch(this.url, { method: 'HEAD', cache: 'no-store' });
    } catch (e) {
      throw new Error(`download failed: cannot reach ${this.url} (${e.message}); check the URL and your connection`);
    }
    let size = Number(res.headers.get('content-length'));
    if (!res.ok || !(size > 0)) {
      // Some servers do not answer HEAD: ask for one byte instead.
      res = await fetch(this.url, { headers: { Range: 'bytes=0-0' }, cache: 'no-store' });
      if (!res.ok) throw httpError(this.url, res);
      size = Number((res.headers.get('content-range') || '').split('/')[1]);
      await res.body?.cancel();
      if (!(size > 0)) throw new Error(`download failed: ${this.url} does not say its size; the server must support Range requests`);
    }
    const validator = res.headers.get('etag') || res.headers.get('last-modified') || '';
    // The Hugging Face hub names an LFS file's SHA-256 in X-Linked-ETag.
    const linked = (res.headers.get('x-linked-etag') || '').replace(/^W\//, '').replace(/"/g, '');
    if (/^[0-9a-f]{64}$/.test(linked)) this.publishedSha256 = linked;
    return { size, validator };
  }

  async checkQuota() {
    if (!navigator.storage?.estimate) return;
    const { usage = 0, quota = Infinity } = await navigator.storage.estimate();
    let cached = 0;
    for (let i = 0; i * CHUNK_BYTES < this.size; i++) {
      if (await this.cache.match(this.key(i))) cached += Math.min(CHUNK_BYTES, this.size - i * CHUNK_BYTES);
    }
    const need = this.size - cached;
    if (need > quota - usage)
      throw new Error(
        `browser storage is full: the model needs ${mb(need)} more but only ${mb(Math.max(0, quota - usage))} is free. ` +
          `Free space (clear this site's data or other sites') or choose a smaller model.`,
      );
  }

  async put(key, response) {
    try {
      await this.cache.put(key, response);
    } catch (e) {
      if (e?.name === 'QuotaExceededError')
        throw new Error(
          `browser storage is full after ${mb(this.loaded)} of ${mb(this.size)}. ` +
            `Free space (clear this site's data or other sites') or choose a smaller model.`,
        );
      throw e;
    }
  }

  /** Drop this file's cached chunks (the server's copy changed). */
  async forget() {
    for (const req of await this.cache.keys()) {
      if (req.url.startsWith(this.key(''))) await this.cache.delete(req);
    }
  }

  /** Bytes `offset .. offset + len` of the file. */
  async read(offset, len) {
    if (offset < 0 || len < 0 || offset + len > this.size)
      throw new Error(`read of ${len} bytes at ${offset} is outside the file (${this.size} bytes)`);
    const out = new Uint8Array(len);
    let done = 0;
    this.urgent++;
    try {
      while (done < len) {
        const pos = offset + done;
        const index = Math.floor(pos / CHUNK_BYTES);
        const chunk = await this.chunk(index);
        const start = pos - index * CHUNK_BYTES;
        const n = Math.min(len - done, chunk.length - start);
        out.set(chunk.subarray(start, start + n), done);
        done += n;
      }
    } finally {
      this.urgent--;
      this.lastUrgent = performance.now();
    }
    return out;
  }

  /**
   * Bytes `offset .. offset + len`: from whole chunks where all of them are
   * here (in memory, in flight or in Cache Storage), else by one Range
   * request for just these bytes, not kept (a paged model's dense tensors
   * and missed experts: the background fill caches the chunks).
   */
  async readExact(offset, len) {
    if (offset < 0 || len < 0 || offset + len > this.size)
      throw new Error(`read of ${len} bytes at ${offset} is outside the file (${this.size} bytes)`);
    const last = Math.floor((offset + Math.max(len, 1) - 1) / CHUNK_BYTES);
    let local = true;
    for (let i = Math.floor(offset / CHUNK_BYTES); i <= last && local; i++)
      local = this.recent.has(i) || this.inflight.has(i) || (this.cache !== null && (await this.cache.match(this.key(i))) !== undefined);
    if (local) return this.read(offset, len);
    this.urgent++;
    try {
      return await this.download(offset, len);
    } finally {
      this.urgent--;
      this.lastUrgent = performance.now();
    }
  }

  /**
   * Fetch (into the Cache Storage copy) the chunks holding bytes `offset ..
   * offset + len`, without waiting: the engine's guess at the experts the
   * next layer will need. A later read of them finds them cached or in flight.
   */
  warm(offset, len) {
    if (!this.cache || offset < 0 || len <= 0 || offset + len > this.size) return;
    const last = Math.floor((offset + len - 1) / CHUNK_BYTES);
    for (let i = Math.floor(offset / CHUNK_BYTES); i <= last; i++) {
      if (this.seen.has(i) || this.inflight.has(i)) continue;
      this.urgent++;
      this.chunk(i, false)
        .catch(() => {}) // a failed guess costs nothing: the read will fetch it
        .finally(() => {
          this.urgent--;
          this.lastUrgent = performance.now();
        });
    }
  }

  /**
   * Fetch every chunk not yet obtained, one at a time, in the background,
   * each only once no read or prefetch has been under way for IDLE_MS (they
   * come first: a reply's misses arrive one after another, and a chunk
   * started between two of them would hold the second up):
   * the rest of a model whose experts are paged, so later misses are local.
   * `onChunk()` after each. Stops at `stop()`.
   */
  async fill(onChunk) {
    if (!this.cache) return;
    const chunks = Math.ceil(this.size / CHUNK_BYTES);
    for (let i = 0; i < chunks && !this.stopped; i++) {
      if (this.seen.has(i)) continue;
      while ((this.urgent > 0 || performance.now() - this.lastUrgent < IDLE_MS) && !this.stopped) await sleep(20);
      if (this.stopped) return;
      await this.chunk(i, false);
      onChunk();
    }
  }

  stop() {
    this.stopped = true;
  }

  /** Chunk `index`; with `keep`, also among the recent chunks held in memory. */
  chunk(index, keep = true) {
    const recent = this.recent.get(index);
    if (recent) {
      this.recent.delete(index);
      this.recent.set(index, recent);
      return Promise.resolve(recent);
    }
    // One fetch a chunk, however many ask for it.
    let p = this.inflight.get(index);
    if (!p) {
      p = this.fetchChunk(index).finally(() => this.inflight.delete(index));
      this.inflight.set(index, p);
    }
    return keep ? p.then((bytes) => this.remember(index, bytes)) : p;
  }

  remember(index, bytes) {
    this.recent.delete(index);
    this.recent.set(index, bytes);
    if (this.recent.size > RECENT_CHUNKS) this.recent.delete(this.recent.keys().next().value);
    return bytes;
  }

  async fetchChunk(index) {
    const key = this.key(index);
    const expected = Math.min(CHUNK_BYTES, this.size - index * CHUNK_BYTES);
    let bytes = null;
    const hit = this.cache && (await this.cache.match(key));
    if (hit) {
      // Each chunk is checked against the digest stored beside it: a damaged
      // or altered entry is dropped and fetched again.
      bytes = new Uint8Array(await hit.arrayBuffer());
      const want = hit.headers.get(DIGEST_HEADER);
      if (bytes.length !== expected || !want || (await sha256(bytes)) !== want) {
        bytes = null;
        this.corrupt++;
        await this.cache.delete(key);
      } else if (!this.seen.has(index)) this.fromCache += bytes.length;
    }
    if (!bytes) {
      bytes = await this.download(index * CHUNK_BYTES, expected);
      if (this.cache) await this.put(key, new Response(bytes, { headers: { [DIGEST_HEADER]: await sha256(bytes) } }));
    }
    if (!this.seen.has(index)) {
      this.seen.add(index);
      this.loaded += bytes.length;
      this.onBytes(this.loaded, this.size, this.fromCache);
    }
    return bytes;
  }

  /** Bytes `start .. start + expected` by Range request, retried with backoff if the connection drops. */
  async download(start, expected) {
    const range = `bytes=${start}-${start + expected - 1}`;
    let lastError;
    for (let attempt = 0; attempt <= RETRIES; attempt++) {
      if (attempt > 0) await sleep(Math.min(8000, 250 * 2 ** attempt));
      let res;
      try {
        res = await fetch(this.url, { headers: { Range: range }, cache: 'no-store' });
      } catch (e) {
        lastError = e;
        continue;
      }
      if (res.status !== 206) {
        await res.body?.cancel();
        if (res.status === 200) throw new Error(`download failed: ${this.url} ignores Range requests; serve it from a server that supports them`);
        if (res.status >= 500 || res.status === 429) {
          lastError = httpError(this.url, res);
          continue;
        }
        throw httpError(this.url, res);
      }
      try {
        const bytes = new Uint8Array(await res.arrayBuffer());
        if (bytes.length === expected) {
          this.network += bytes.length;
          return bytes;
        }
        lastError = new Error(`got ${bytes.length} of ${expected} bytes`);
      } catch (e) {
        lastError = e; // the connection dropped mid-chunk: fetch the chunk again
      }
    }
    throw new Error(
      `download failed: ${this.url} broke off at ${mb(start)} of ${mb(this.size)} after ${RETRIES} retries ` +
        `(${lastError?.message ?? lastError}). Reload to resume from there.`,
    );
  }
}
