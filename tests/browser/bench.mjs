// The browser benchmark (`make bench-browser`): in the same Chromium (WebGPU on
// SwiftShader), the same GGUF and the same chat prompt, baleen beside wllama
// (llama.cpp compiled to wasm; 1 thread, CPU). Load time, prefill and decode
// tokens/s; results printed and written to bench-out/browser.json.
//
// BALEEN_BENCH_TOKENS (default 64): tokens decoded per run; BALEEN_BENCH_RUNS (3).

import fs from 'node:fs';
import { ROOT, launchChromium, openPage, startProxy, startServe } from './harness.mjs';

const BIN = process.env.BALEEN_BIN ?? `${ROOT}target/release/baleen`;
const MODEL_FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf';
const MODEL_URL = `/models/${MODEL_FILE}`;
const TOKENS = Number(process.env.BALEEN_BENCH_TOKENS ?? 64);
const RUNS = Number(process.env.BALEEN_BENCH_RUNS ?? 3);
// BALEEN_PROFILE=1: also time each op of a decode step. BALEEN_BENCH_ONLY=baleen: skip wllama.
const PROFILE = Boolean(process.env.BALEEN_PROFILE);
const ONLY_BALEEN = process.env.BALEEN_BENCH_ONLY === 'baleen';
// A prompt whose greedy reply is long enough to decode TOKENS tokens.
const PROMPT = 'Write a long story about a lighthouse keeper who finds a message in a bottle. Describe every day of his week.';
const messages = [{ role: 'user', content: PROMPT }];

const serve = await startServe(BIN, { models: `${ROOT}models` });
const proxy = await startProxy(serve.url, { '/wllama/': `${ROOT}tests/browser/node_modules/@wllama/wllama/esm/` });
const browser = await launchChromium();
const page = await openPage(await browser.newContext(), `${proxy.url}?autoload=0`);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const baleen = await page.evaluate(
  async ({ url, messages, TOKENS, RUNS, PROFILE }) => {
    await caches.delete('baleen-models-v1'); // a first visit: download, not cache
    const { createEngine } = await import('/engine.js');
    const t0 = performance.now();
    const engine = await createEngine(url);
    const loadMs = performance.now() - t0;
    const req = { messages, temperature: 0, max_tokens: TOKENS };
    await engine.chat.completions.create({ ...req, max_tokens: 4 }); // compiles every pipeline
    const runs = [];
    for (let i = 0; i < RUNS; i++) {
      await engine.resetChat(); // the whole prompt runs each time
      const r = await engine.chat.completions.create(req);
      runs.push({ ...engine.stats(), text: r.choices[0].message.content });
    }
    const info = engine.info;
    const profile = PROFILE ? await engine.profile(5) : null;
    await engine.dispose();
    return { loadMs, runs, adapter: info.adapter, kv_f16: info.kv_f16, profile };
  },
  { url: MODEL_URL, messages, TOKENS, RUNS, PROFILE },
);
if (baleen.profile) {
  console.log('baleen: where a decode step goes (ms per step, each op alone):');
  for (const [kind, ms] of baleen.profile) console.log(`${ms.toFixed(2).padStart(9)} ms  ${kind}`);
}
if (ONLY_BALEEN) {
  console.log(baleen.runs.map((r) => `decode ${r.decode_tokens_per_s.toFixed(2)} tok/s, prefill ${r.prefill_tokens_per_s.toFixed(2)} tok/s`).join('\n'));
}

async function wllama(gpuLayers) {
  return page.evaluate(
    async ({ url, messages, TOKENS, RUNS, gpuLayers }) => {
      const { Wllama } = await import('/wllama/index.js');
      const w = new Wllama({ default: '/wllama/wasm/wllama.wasm' }, { suppressNativeLog: true });
      const t0 = performance.now();
      await w.loadModelFromUrl(new URL(url, location.href).href, { n_threads: 1, n_ctx: 2048, n_gpu_layers: gpuLayers });
      const loadMs = performance.now() - t0;
      const req = { messages, temperature: 0, max_tokens: TOKENS, cache_prompt: false };
      await w.createChatCompletion({ ...req, max_tokens: 4 });
      const runs = [];
      for (let i = 0; i < RUNS; i++) {
        const r = await w.createChatCompletion(req);
        const t = r.timings;
        runs.push({
          prompt_tokens: t.prompt_n,
          completion_tokens: t.predicted_n,
          prefill_tokens_per_s: t.prompt_per_second,
          decode_tokens_per_s: t.predicted_per_second,
          text: r.choices[0].message.content,
        });
      }
      await w.exit();
      return { loadMs, runs };
    },
    { url: MODEL_URL, messages, TOKENS, RUNS, gpuLayers },
  );
}

const rows = [['baleen (WebGPU)', baleen]];
for (const [name, layers] of ONLY_BALEEN ? [] : [['wllama (wasm, 1 thread)', 0], ['wllama (WebGPU)', 999]]) {
  try {
    rows.push([name, await wllama(layers)]);
  } catch (e) {
    console.log(`${name}: failed: ${e.message.split('\n')[0]}`);
  }
}

const summary = rows.map(([name, r]) => ({
  name,
  load_s: +(r.loadMs / 1000).toFixed(2),
  prompt_tokens: r.runs[0].prompt_tokens,
  completion_tokens: r.runs[0].completion_tokens,
  prefill_tokens_per_s: +median(r.runs.map((x) => x.prefill_tokens_per_s)).toFixed(2),
  decode_tokens_per_s: +median(r.runs.map((x) => x.decode_tokens_per_s)).toFixed(2),
  text: r.runs[0].text.slice(0, 80),
}));
console.log(`SmolLM2-135M-Instruct Q4_1, Chromium ${browser.version()} (SwiftShader WebGPU), ${TOKENS} tokens, median of ${RUNS}`);
console.table(summary.map(({ text, ...rest }) => rest));
const w1 = summary.find((s) => s.name.startsWith('wllama (wasm'));
if (w1) console.log(`baleen decode / wllama 1-thread decode: ${(summary[0].decode_tokens_per_s / w1.decode_tokens_per_s).toFixed(2)}x`);
fs.mkdirSync(`${ROOT}bench-out`, { recursive: true });
fs.writeFileSync(`${ROOT}bench-out/browser.json`, JSON.stringify({ tokens: TOKENS, runs: RUNS, summary }, null, 2));
await browser.close();
proxy.stop();
serve.stop();
