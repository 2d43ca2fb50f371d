// The engine's Web Worker: loads the wasm module and a model, runs chat turns,
// and answers `web/engine.js` by message. Everything slow happens here, so the
// page never blocks.
//
// Messages in:  { id, type: 'load', url, pkg }
//               { id, type: 'chat', messages, options: { max_tokens, temperature, top_p, top_k, seed }, stop }
//               { type: 'interrupt' } · { id, type: 'reset' } · { id, type: 'profile', reps } · { id, type: 'dispose' }
// Messages out: { type: 'progress', progress } · { id, delta } · { id, result } · { id, error }

import { CHUNK_BYTES, ModelFile } from './loader.js';

let wasm = null;
let engine = null;
let model = null; // the model file, while its background download runs
let lastLoad = null; // the load request, to load again after a lost GPU
let deltasOf = null; // the request whose reply has sent text
let interrupted = false;

const post = (m) => self.postMessage(m);

/** The longest suffix of `text` that starts some stop string (held back while streaming). */
function partialStop(text, stops) {
  let hold = 0;
  for (const s of stops) {
    for (let n = Math.min(s.length - 1, text.length); n > hold; n--) {
      if (text.endsWith(s.slice(0, n))) {
        hold = n;
        break;
      }
    }
  }
  return hold;
}

/**
 * Check the whole file against `want` (its publisher's SHA-256), chunk by
 * chunk in order, from the cache; on a mismatch drop the cached copy.
 */
async function verify(file, want) {
  const h = new wasm.Sha256();
  for (let i = 0; i * CHUNK_BYTES < file.size; i++) h.update(await file.chunk(i, false));
  const got = h.finish();
  if (got === want) return;
  await file.forget();
  throw new Error(
    `${file.url} is not the file it should be: its SHA-256 is ${got}, not ${want}. Its cached copy was dropped; check the URL and the digest.`,
  );
}

async function load({ url, pkg, kvCache, contextLength, expertCacheBytes, sha256 }) {
  if (!self.navigator.gpu) {
    throw new Error(
      'WebGPU is not available in this browser. Use a recent Chrome or Edge (113+), or Firefox/Safari with WebGPU enabled.',
    );
  }
  const adapter = await self.navigator.gpu.requestAdapter();
  if (!adapter) throw new Error('WebGPU is enabled but no GPU adapter was found (the GPU may be blocklisted; check chrome://gpu).');
  wasm = await import(pkg);
  await wasm.default();
  const t0 = performance.now();
  let tensorsLoaded = 0;
  let tensorsTotal = 0;
  let lastBytes = 0;
  let lastPost = 0;
  const progress = (phase, file) => {
    post({
      type: 'progress',
      progress: {
        phase,
        loadedBytes: file.loaded,
        totalBytes: file.size,
        cachedBytes: file.fromCache,
        tensorsLoaded,
        tensorsTotal,
        elapsedMs: performance.now() - t0,
      },
    });
  };
  const file = new ModelFile(url, {
    onBytes: () => {
      // At least every 4 MB (one chunk), at most every 50 ms otherwise.
      const now = performance.now();
      if (file.loaded - lastBytes >= 4 << 20 || now - lastPost > 50 || file.loaded === file.size) {
        lastBytes = file.loaded;
        lastPost = now;
        progress('weights', file);
      }
    },
  });
  await file.open();
  progress('header', file);
  const name = decodeURIComponent(new URL(file.url).pathname.split('/').pop() || 'model');
  engine = await wasm.loadModel(
    name,
    file.size,
    (offset, len) => file.read(offset, len),
    (offset, len) => file.readExact(offset, len),
    (offset, len) => file.warm(offset, len),
    (done, total) => {
      tensorsLoaded = done;
      tensorsTotal = total;
    },
    kvCache,
    contextLength,
    expertCacheBytes,
  );
  const want = sha256 ?? file.publishedSha256;
  const info = JSON.parse(engine.info());
  if (want && !info.expert_cache) {
    try {
      await verify(file, want);
    } catch (e) {
      engine.free();
      engine = null;
      throw e;
    }
  }
  progress('ready', file);
  if (info.expert_cache) {
    // Generation can start now: the routed experts were skipped. The rest of
    // the file streams into the cache behind the replies' own reads.
    model = file;
    // (info() is refused while a reply holds the engine: keep the last counts.)
    let known = info.expert_cache;
    const experts = () => {
      try {
        known = JSON.parse(engine.info()).expert_cache ?? known;
      } catch {}
      return known;
    };
    file
      .fill(() => {
        const e = experts();
        const p = { phase: 'experts', loadedBytes: file.loaded, totalBytes: file.size, cachedBytes: file.fromCache, residentExperts: e.resident, totalExperts: e.experts, elapsedMs: performance.now() - t0 };
        post({ type: 'progress', progress: p });
      })
      .then(async () => {
        if (file.loaded !== file.size) return;
        // Verified once all of it is in (a mismatch drops the copy: the next load fetches it again).
        if (want) await verify(file, want);
        progress('downloaded', file);
      })
      .catch((err) => console.warn(`baleen: the background download stopped (${err?.message ?? err}); misses are fetched on demand`));
  }
  return {
    ...info,
    loadMs: performance.now() - t0,
    downloadedBytes: file.network,
    cachedBytes: file.fromCache,
    bytes: file.size,
    corruptChunks: file.corrupt,
    sha256: want && !info.expert_cache ? want : null,
  };
}

async function chat(id, { messages, options, stop }) {
  if (!engine) throw new Error('no model is loaded');
  interrupted = false;
  const stops = (stop ?? []).filter((s) => typeof s === 'string' && s.length > 0);
  let text = '';
  let sent = 0;
  let stopped = false;
  const r = JSON.parse(
    await engine.chat(JSON.stringify(messages), JSON.stringify(options ?? {}), (delta) => {
      text += delta;
      for (const s of stops) {
        const at = text.indexOf(s, Math.max(0, sent - s.length + 1));
        if (at >= 0) {
          stopped = true;
          text = text.slice(0, at);
        }
      }
      const upto = stopped ? text.length : text.length - partialStop(text, stops);
      if (upto > sent) {
        deltasOf = id;
        post({ id, delta: text.slice(sent, upto) });
        sent = upto;
      }
      return !(stopped || interrupted);
    }),
  );
  if (!stopped && text.length > sent) {
    deltasOf = id;
    post({ id, delta: text.slice(sent) });
  }
  let finish;
  if (stopped || r.stop_reason === 'eos') finish = 'stop';
  else if (r.stop_reason === 'cancelled') finish = 'abort';
  else finish = 'length'; // max_tokens or the context is full
  return { ...r, content: text, finish_reason: finish };
}


/**
 * A chat turn that survives a lost GPU device (a driver reset, a GPU
 * process crash): the engine is loaded again, its weights from the cache,
 * and the turn runs again if none of its text had been sent (else it fails
 * and the next one runs on the new device). Progress says 'device-lost'.
 */
async function chatSurviving(id, m) {
  try {
    return await chat(id, m);
  } catch (err) {
    if (!lastLoad || !engine?.deviceLost()) throw err;
    post({ type: 'progress', progress: { phase: 'device-lost', message: err?.message ?? String(err) } });
    model?.stop();
    model = null;
    try {
      engine?.free();
    } catch {}
    engine = null;
    await load(lastLoad);
    if (deltasOf === id) throw new Error(`the GPU was lost mid-reply and the model loaded again; send the message again (${err?.message ?? err})`);
    return await chat(id, m);
  }
}

self.onmessage = async (e) => {
  const m = e.data;
  if (m.type === 'interrupt') {
    interrupted = true;
    return;
  }
  try {
    let result;
    if (m.type === 'load') {
      result = await load(m);
      lastLoad = m;
    } else if (m.type === 'chat') result = await chatSurviving(m.id, m);
    else if (m.type === 'lose-device') result = engine?.loseDevice();
    else if (m.type === 'reset') result = engine?.reset();
    else if (m.type === 'profile') result = JSON.parse(await engine.profile(m.reps ?? 5));
    else if (m.type === 'dispose') {
      model?.stop();
      model = null;
      engine?.free();
      engine = null;
      result = null;
    } else throw new Error(`unknown request ${m.type}`);
    post({ id: m.id, result });
  } catch (err) {
    post({ id: m.id, error: err?.message ?? String(err) });
  }
};
