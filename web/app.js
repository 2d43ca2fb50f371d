// The chat page: pick a model, watch it load, chat. Replies stream in as text
// nodes (model output is never parsed as HTML). Each turn sends the whole
// conversation; the engine reuses the KV cache of the turns before it.

import { cachedModels, createEngine, deleteCachedModel, resolveModelUrl } from './engine.js';

const $ = (id) => document.getElementById(id);
const ui = {
  select: $('model-select'),
  url: $('model-url'),
  load: $('load'),
  progress: $('progress'),
  bar: $('progress-bar'),
  progressText: $('progress-text'),
  info: $('model-info'),
  system: $('system'),
  temperature: $('temperature'),
  temperatureValue: $('temperature-value'),
  maxTokens: $('max-tokens'),
  transcript: $('transcript'),
  error: $('error'),
  composer: $('composer'),
  input: $('input'),
  send: $('send'),
  stop: $('stop'),
  newChat: $('new-chat'),
  stats: $('stats'),
  cachedList: $('cached-list'),
};

let engine = null;
let engineUrl = null; // the loaded model's, as the cache names it
let loading = null; // the AbortController of a load under way
let history = []; // { role, content } of this conversation
let generating = false;

const mb = (n) => `${(n / 1e6).toFixed(1)} MB`;

function showError(message) {
  ui.error.hidden = !message;
  ui.error.textContent = message ?? '';
}

/** Plain words for what went wrong. */
function explain(err) {
  const m = err?.message ?? String(err);
  if (/out of GPU memory|OutOfMemory|allocation/i.test(m)) return `The GPU ran out of memory: ${m}`;
  if (/device was lost|lost mid-reply/i.test(m)) return `The GPU stopped working (${m}). The model was loaded again: send the message again.`;
  return m;
}

/** A message bubble; its text is a text node. */
function addMessage(role, content) {
  const div = document.createElement('div');
  div.className = `msg ${role}`;
  div.textContent = content;
  ui.transcript.append(div);
  div.scrollIntoView({ block: 'end' });
  return div;
}

function setBusy(busy) {
  generating = busy;
  ui.send.disabled = busy || !engine;
  ui.input.disabled = !engine;
  ui.stop.disabled = !busy;
  ui.newChat.disabled = busy || !engine;
  ui.load.disabled = busy;
}

/** The models stored in this browser, each with a Delete button. */
async function showCached() {
  let models = [];
  try {
    models = await cachedModels();
  } catch {
    // No Cache Storage here: nothing is stored.
  }
  ui.cachedList.replaceChildren(
    ...models.map((m) => {
      const li = document.createElement('li');
      const name = decodeURIComponent(new URL(m.url).pathname.split('/').pop() || m.url);
      li.append(`${name}: ${mb(m.bytes)} of ${mb(m.size)}${m.complete ? '' : ' (partial)'} `);
      const del = document.createElement('button');
      del.textContent = 'Delete';
      del.disabled = m.url === engineUrl;
      del.title = del.disabled ? 'in use' : `remove ${name} from this browser`;
      del.addEventListener('click', async () => {
        await deleteCachedModel(m.url);
        await showCached();
      });
      li.append(del);
      return li;
    }),
  );
  if (!models.length) ui.cachedList.append(Object.assign(document.createElement('li'), { textContent: 'none' }));
}

async function loadModel(url, { restoring = null } = {}) {
  // The Load button cancels a load under way.
  if (loading) return loading.abort();
  showError(null);
  const previous = engineUrl;
  if (engine) {
    await engine.dispose();
    engine = null;
    engineUrl = null;
  }
  history = [];
  ui.transcript.replaceChildren();
  setBusy(false);
  loading = new AbortController();
  ui.load.textContent = 'Cancel';
  ui.progress.hidden = false;
  ui.bar.value = 0;
  ui.info.textContent = '';
  const t0 = performance.now();
  let firstCached = null;
  try {
    engine = await createEngine(url, {
      signal: loading.signal,
      onProgress: (p) => {
        if (!p.totalBytes) return;
        firstCached ??= p.cachedBytes;
        ui.bar.value = p.loadedBytes / p.totalBytes;
        const secs = (performance.now() - t0) / 1000;
        const downloaded = p.loadedBytes - p.cachedBytes;
        const rate = secs > 0 && downloaded > 0 ? ` · ${(downloaded / 1e6 / secs).toFixed(1)} MB/s` : '';
        const cached = p.cachedBytes ? ` (${mb(p.cachedBytes)} from cache)` : '';
        if (p.phase === 'experts' || p.phase === 'downloaded') {
          // Paged experts: replies run while the rest of the file streams in.
          ui.progressText.textContent =
            p.phase === 'downloaded'
              ? `Ready: all ${mb(p.totalBytes)} downloaded${cached}`
              : `Ready; downloading the rest in the background: ${mb(p.loadedBytes)} of ${mb(p.totalBytes)}${cached} · ${p.residentExperts} of ${p.totalExperts} experts on the GPU`;
          return;
        }
        ui.progressText.textContent =
          `${p.phase === 'ready' ? 'Ready' : 'Loading'}: ${mb(p.loadedBytes)} of ${mb(p.totalBytes)}${cached}${rate}` +
          (p.tensorsTotal ? ` · ${p.tensorsLoaded}/${p.tensorsTotal} tensors` : '');
      },
    });
  } catch (e) {
    loading = null;
    ui.load.textContent = 'Load';
    ui.progress.hidden = true;
    ui.load.disabled = false;
    const why = e?.name === 'AbortError' ? 'The load was cancelled.' : `Could not load the model. ${explain(e)}`;
    // A failed switch brings the model before it back (its copy is cached).
    if (previous && e?.name !== 'AbortError') {
      await loadModel(previous, { restoring: why });
      return;
    }
    showError(restoring ? `${restoring} (and the model before it failed to load again)` : why);
    await showCached();
    return;
  }
  loading = null;
  engineUrl = resolveModelUrl(url);
  ui.load.textContent = 'Load';
  if (restoring) showError(`${restoring} The model before it is loaded again.`);
  showCached();
  const i = engine.info;
  ui.info.textContent =
    `${i.name}: ${i.architecture}, ${i.layers} layers, context ${i.context} of ${i.model_context} (KV cache ${mb(i.kv_cache_bytes)}), loaded in ${(i.loadMs / 1000).toFixed(1)} s ` +
    `on ${i.adapter || 'WebGPU'} (${mb(i.gpu_bytes)} of GPU memory)` +
    (i.expert_cache ? `; routed experts paged in ${mb(i.expert_cache.budget_bytes)} (${i.expert_cache.slots} slots of ${i.expert_cache.experts})` : '');
  ui.input.placeholder = 'Type a message (Enter sends, Shift+Enter for a new line)';
  setBusy(false);
  document.body.dataset.state = 'ready';
  ui.input.focus();
}

async function send(text) {
  if (!engine || generating || !text.trim()) return;
  showError(null);
  history.push({ role: 'user', content: text });
  const asked = addMessage('user', text);
  const bubble = addMessage('assistant', '');
  bubble.classList.add('pending');
  setBusy(true);
  document.body.dataset.state = 'generating';
  const system = ui.system.value.trim();
  const messages = system ? [{ role: 'system', content: system }, ...history] : [...history];
  let reply = '';
  try {
    const stream = await engine.chat.completions.create({
      messages,
      temperature: Number(ui.temperature.value),
      max_tokens: Math.max(1, Number(ui.maxTokens.value) || 512),
      stream: true,
    });
    for await (const chunk of stream) {
      const delta = chunk.choices[0].delta.content;
      if (delta) {
        reply += delta;
        bubble.textContent = reply;
        bubble.scrollIntoView({ block: 'end' });
      }
    }
    history.push({ role: 'assistant', content: reply });
    const s = engine.stats();
    if (s)
      ui.stats.textContent =
        `${s.completion_tokens} tokens · prefill ${s.prefill_tokens_per_s.toFixed(1)} tok/s ` +
        `(${s.prompt_tokens - s.reused_tokens} of ${s.prompt_tokens} prompt tokens run, the rest cached) · ` +
        `decode ${s.decode_tokens_per_s.toFixed(1)} tok/s` +
        (s.expert_cache ? ` · expert cache hit rate ${((100 * s.expert_cache.hits) / Math.max(1, s.expert_cache.hits + s.expert_cache.misses)).toFixed(0)}%` : '');
  } catch (e) {
    // The turn is dropped from the history, so from the screen too; its text
    // goes back to the input to send again.
    history.pop();
    showError(explain(e));
    asked.remove();
    bubble.remove();
    if (!ui.input.value) ui.input.value = text;
  } finally {
    bubble.classList.remove('pending');
    setBusy(false);
    document.body.dataset.state = 'ready';
  }
}

ui.composer.addEventListener('submit', (e) => {
  e.preventDefault();
  const text = ui.input.value;
  ui.input.value = '';
  send(text);
});
ui.input.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey) {
    e.preventDefault();
    ui.composer.requestSubmit();
  }
});
ui.stop.addEventListener('click', () => engine?.interrupt());
ui.newChat.addEventListener('click', () => {
  history = [];
  ui.transcript.replaceChildren();
  ui.stats.textContent = '';
  showError(null);
});
ui.load.addEventListener('click', () => loadModel(ui.url.value.trim() || ui.select.value));
ui.temperature.addEventListener('input', () => (ui.temperatureValue.textContent = ui.temperature.value));

async function start() {
  if (!navigator.gpu) {
    showError('This browser has no WebGPU. Use a recent Chrome or Edge (113+), or Firefox/Safari with WebGPU enabled.');
  }
  let models = [];
  try {
    const res = await fetch('/models.json');
    if (res.ok) models = await res.json();
  } catch {
    // Served by something other than `baleen serve`: only URLs.
  }
  for (const m of models) ui.select.append(new Option(`${m.name} (${mb(m.bytes)})`, m.url));
  showCached();
  if (!models.length) ui.select.append(new Option('(no local models: enter a URL)', ''));
  // ?model=URL loads that model; ?autoload=0 loads nothing; otherwise the first local one.
  const params = new URLSearchParams(location.search);
  const wanted = params.get('model');
  if (wanted) ui.url.value = wanted;
  const first = wanted || models[0]?.url;
  if (first && navigator.gpu && params.get('autoload') !== '0') await loadModel(first);
}

// For tests and the console.
window.baleenApp = { get engine() { return engine; }, get history() { return history; }, addMessage, send, loadModel, showCached };
start();
