// Browser tests: the chat page and /engine.js in Chromium with WebGPU on
// SwiftShader — every shader compiled by the browser's own WGSL compiler.
// Run by `make browser-test` (part of `make test`). Needs pkg/ (make wasm),
// target/debug/baleen and the test model.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { ROOT, baleenJson, launchChromium, openPage, startProxy, startServe } from './harness.mjs';

const BIN = process.env.BALEEN_BIN ?? `${ROOT}target/debug/baleen`;
const MODEL_FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf';
const MODEL_PATH = `${ROOT}models/${MODEL_FILE}`;
const MODEL_URL = `/models/${MODEL_FILE}`;
const ARTIFACTS = `${ROOT}target/browser-artifacts`;
const QUESTION = 'What is the capital of France?';
const MAX_TOKENS = 24;

// A models folder: the real model, and a file that is not a model.
const models = fs.mkdtempSync(path.join(os.tmpdir(), 'baleen-models-'));
fs.symlinkSync(MODEL_PATH, path.join(models, MODEL_FILE));
fs.writeFileSync(path.join(models, 'not-a-model.gguf'), 'this is a text file, not a GGUF model\n'.repeat(100));
// A tiny DeepSeek-V3 (latent attention, sigmoid-routed experts), as llama.cpp's converter wrote it.
const DEEPSEEK = 'tiny-deepseek-v3.gguf';
// Tiny fixtures the page runs beside the native reference, by architecture.
const TINY = { deepseek2: 'tiny-deepseek-v3', gemma3: 'tiny-gemma3', qwen3moe: 'tiny-qwen3-moe' };
for (const name of Object.values(TINY)) fs.symlinkSync(`${ROOT}tests/fixtures/${name}/model.gguf`, path.join(models, `${name}.gguf`));
// The benchmark's synthetic DeepSeek-V3-shaped model: 3 MoE layers of 64 Q4_0
// experts (45 MB of the 46 MB file), here with one expert a token (its random
// router spreads a prompt over the experts; with 6 a short prompt's prefill
// touches nearly all of them); written here.
const MOE_BENCH = 'moe-e64-top1.gguf';
execFileSync(`${ROOT}target/debug/examples/moe_bench_model`, [path.join(models, MOE_BENCH), '64', '1', '1'], { stdio: 'ignore' });
fs.mkdirSync(ARTIFACTS, { recursive: true });

const results = [];
// BROWSER_TEST_ONLY='words|other words' runs only the tests whose names hold one of them.
const ONLY = process.env.BROWSER_TEST_ONLY;
async function test(name, fn) {
  if (ONLY && !ONLY.split('|').some((w) => name.includes(w))) return;
  const t0 = Date.now();
  try {
    await fn();
    results.push([name, true]);
    console.log(`ok   ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  } catch (e) {
    results.push([name, false]);
    console.log(`FAIL ${name}: ${e.stack ?? e}`);
  }
}

/** The errors `createEngine(url, opts)` gives in page `p`, one per `opts` (null: it loaded). */
function loadErrors(p, url, ...opts) {
  return p.evaluate(
    async ({ url, opts }) => {
      const { createEngine } = await import('/engine.js');
      const out = [];
      for (const o of opts) {
        try {
          await (await createEngine(url, o)).dispose();
          out.push(null);
        } catch (x) {
          out.push(x.message);
        }
      }
      return out;
    },
    { url, opts },
  );
}

/** A raw HTTP/1.1 request (no client-side path normalisation). */
function rawGet(url, pathname) {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const s = net.connect(Number(u.port), u.hostname, () => s.write(`GET ${pathname} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`));
    let out = '';
    s.on('data', (d) => (out += d.toString('latin1')));
    s.on('end', () => resolve(out));
    s.on('error', reject);
  });
}

const serve = await startServe(BIN, { models });
// A tiny app built on the npm package with a bundler, served at /app/ (the package test).
const APP = fs.mkdtempSync(path.join(os.tmpdir(), 'baleen-app-'));
const proxy = await startProxy(serve.url, { '/app/': path.join(APP, 'dist') });
const browser = await launchChromium();
const context = await browser.newContext();
const base = proxy.url;

// The same greedy reply from the native CLI (the f32 reference backend: the
// browser's SwiftShader has no f16, so its KV cache is f32 too).
const cli = await baleenJson(BIN, [
  'run', '--model', MODEL_PATH, '--chat', '--prompt', QUESTION, '--temperature', '0',
  '--max-tokens', String(MAX_TOKENS), '--backend', 'reference', '--json',
]);

const greedy = { messages: [{ role: 'user', content: QUESTION }], temperature: 0, max_tokens: MAX_TOKENS };

/** Load the model through /engine.js in `page`; returns { info, progress }. */
async function loadInPage(page, url = MODEL_URL) {
  return page.evaluate(async (url) => {
    const { createEngine } = await import('/engine.js');
    const progress = [];
    window.__engine = await createEngine(url, { onProgress: (p) => progress.push(p) });
    return { info: window.__engine.info, progress };
  }, url);
}

const loadError = (page, url) =>
  page.evaluate(async (url) => {
    const { createEngine } = await import('/engine.js');
    try {
      await createEngine(url);
      return null;
    } catch (e) {
      return e.message;
    }
  }, url);

const reply = (page, req) => page.evaluate((req) => window.__engine.chat.completions.create(req), req);

let page = await openPage(context, `${base}?autoload=0`);
let size = 0;

await test('serve: Range, MIME types, COOP/COEP, no path traversal', async () => {
  const wasm = await fetch(`${serve.url}pkg/baleen_bg.wasm`, { method: 'HEAD' });
  assert.equal(wasm.headers.get('content-type'), 'application/wasm');
  assert.equal(wasm.headers.get('cross-origin-opener-policy'), 'same-origin');
  assert.equal(wasm.headers.get('cross-origin-embedder-policy'), 'require-corp');
  const r = await fetch(`${serve.url}models/${MODEL_FILE}`, { headers: { Range: 'bytes=0-3' } });
  assert.equal(r.status, 206);
  assert.equal(Buffer.from(await r.arrayBuffer()).toString(), 'GGUF');
  size = Number(r.headers.get('content-range').split('/')[1]);
  assert.equal(size, fs.statSync(MODEL_PATH).size);
  const list = await (await fetch(`${serve.url}models.json`)).json();
  assert.ok(list.some((m) => m.url === MODEL_URL && m.bytes === fs.statSync(MODEL_PATH).size), JSON.stringify(list));
  for (const p of ['/models/../Cargo.toml', '/models/%2e%2e/Cargo.toml', '/pkg/../../etc/passwd', '/../Cargo.toml']) {
    const head = (await rawGet(serve.url, p)).split('\r\n')[0];
    assert.ok(!head.includes(' 200 '), `${p} must not be served (${head})`);
  }
  const index = await fetch(serve.url);
  assert.ok((await index.text()).includes('<title>baleen'));
});

let loaded = null;
await test('the model loads through /engine.js with progress events', async () => {
  loaded = await loadInPage(page);
  const { info, progress } = loaded;
  assert.equal(info.name, MODEL_FILE);
  assert.equal(info.architecture, 'llama');
  assert.equal(info.bytes, size);
  assert.equal(info.downloadedBytes, size, 'a first load downloads the whole file once');
  assert.equal(progress[0].phase, 'header');
  assert.equal(progress.at(-1).phase, 'ready');
  assert.equal(progress.at(-1).loadedBytes, size);
  assert.equal(progress.at(-1).tensorsLoaded, progress.at(-1).tensorsTotal);
  assert.ok(progress.at(-1).tensorsTotal > 100);
  for (let i = 1; i < progress.length; i++) {
    assert.ok(progress[i].loadedBytes >= progress[i - 1].loadedBytes, 'loadedBytes never goes back');
    assert.ok(progress[i].loadedBytes - progress[i - 1].loadedBytes <= 8 << 20, 'an event at least every 8 MB');
  }
  console.log(`     loaded ${(size / 1e6).toFixed(1)} MB in ${(info.loadMs / 1000).toFixed(1)} s on ${info.adapter} (${progress.length} progress events)`);
});

let greedyText = null;
await test('a greedy chat reply equals the native CLI greedy reply', async () => {
  const r = await reply(page, greedy);
  greedyText = r.choices[0].message.content;
  console.log(`     browser: ${JSON.stringify(greedyText)}\n     cli:     ${JSON.stringify(cli.text)}`);
  assert.equal(greedyText, cli.text);
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
  assert.equal(r.usage.prompt_tokens, cli.prompt_ids.length);
  assert.equal(r.usage.completion_tokens, cli.token_ids.length);
});

await test('streaming gives the same reply in chunks, and a repeated prompt reuses the KV cache', async () => {
  const out = await page.evaluate(async (req) => {
    const chunks = [];
    for await (const c of await window.__engine.chat.completions.create({ ...req, stream: true })) chunks.push(c);
    return { chunks, stats: window.__engine.stats() };
  }, greedy);
  const { chunks, stats } = out;
  assert.ok(chunks.length > 3, `${chunks.length} chunks`);
  assert.equal(chunks[0].choices[0].delta.role, 'assistant');
  assert.ok(chunks.every((c) => c.object === 'chat.completion.chunk'));
  assert.equal(chunks.map((c) => c.choices[0].delta.content ?? '').join(''), greedyText);
  assert.ok(chunks.at(-1).choices[0].finish_reason);
  assert.ok(chunks.slice(0, -1).every((c) => c.choices[0].finish_reason === null));
  assert.ok(chunks.at(-1).usage.completion_tokens > 0);
  assert.equal(stats.reused_tokens, stats.prompt_tokens - 1, 'the same prompt again runs one token');
  assert.ok(stats.decode_tokens_per_s > 0 && stats.prefill_tokens_per_s > 0);
  console.log(`     decode ${stats.decode_tokens_per_s.toFixed(1)} tok/s, prefill ${stats.prefill_tokens_per_s.toFixed(1)} tok/s`);
});

await test('stop strings, interrupt, and bad requests', async () => {
  const word = greedyText.split(' ').filter((w) => w.length > 2)[1];
  const stopped = await reply(page, { ...greedy, stop: [word] });
  assert.equal(stopped.choices[0].message.content, greedyText.slice(0, greedyText.indexOf(word)));
  assert.equal(stopped.choices[0].finish_reason, 'stop');
  const aborted = await page.evaluate(async (req) => {
    const chunks = [];
    for await (const c of await window.__engine.chat.completions.create({ ...req, max_tokens: 200, stream: true })) {
      chunks.push(c);
      if (chunks.length === 2) window.__engine.interrupt();
    }
    return chunks.at(-1).choices[0].finish_reason;
  }, greedy);
  assert.equal(aborted, 'abort');
  const errors = await page.evaluate(async () => {
    const e = window.__engine;
    const bad = [
      { messages: [] },
      { messages: [{ role: 'robot', content: 'hi' }] },
      { messages: [{ role: 'user', content: 'hi' }], temperature: -1 },
      { messages: [{ role: 'user', content: 'hi' }], top_p: 2 },
      { messages: [{ role: 'user', content: 'hi' }], max_tokens: 1.5 },
      { messages: [{ role: 'user', content: 'hi' }], stop: 3 },
      { messages: [{ role: 'user', content: 'x '.repeat(9000) }] },
      // Fields baleen does not honour are refused by name, not dropped.
      { messages: [{ role: 'user', content: 'hi' }], tools: [{ type: 'function', function: { name: 'f' } }] },
      { messages: [{ role: 'user', content: 'hi' }], response_format: { type: 'json_object' } },
      { messages: [{ role: 'user', content: 'hi' }], n: 2 },
      { messages: [{ role: 'user', content: 'hi', tool_calls: [] }] },
      { messages: [{ role: 'user', content: 'hi' }], max_tokens: 3, max_completion_tokens: 4 },
    ];
    const out = [];
    for (const req of bad) {
      try {
        await e.chat.completions.create(req);
        out.push(null);
      } catch (err) {
        out.push(err.message);
      }
    }
    return out;
  });
  assert.match(errors[0], /non-empty array/);
  assert.match(errors[1], /role/);
  assert.match(errors[2], /temperature/);
  assert.match(errors[3], /top_p/);
  assert.match(errors[4], /max_tokens/);
  assert.match(errors[5], /stop/);
  assert.match(errors[6], /does not fit the model's context/);
  assert.match(errors[7], /tools is not supported by baleen; leave it out \(supported: max_tokens, /);
  assert.match(errors[8], /response_format is not supported by baleen/);
  assert.match(errors[9], /n must be 1/);
  assert.match(errors[10], /messages\[0\]\.tool_calls is not supported by baleen/);
  assert.match(errors[11], /max_tokens and max_completion_tokens differ/);
  // Harmless fields pass, and max_completion_tokens is max_tokens; the
  // engine still answers after the errors.
  const same = await page.evaluate(async (greedy) => {
    const r = await window.__engine.chat.completions.create({ ...greedy, model: 'anything', user: 'u', stream_options: { include_usage: true }, n: 1 });
    const short = await window.__engine.chat.completions.create({ ...greedy, max_tokens: undefined, max_completion_tokens: 2 });
    return { content: r.choices[0].message.content, short: short.usage.completion_tokens };
  }, greedy);
  assert.equal(same.content, greedyText);
  assert.equal(same.short, 2);
  assert.equal((await reply(page, greedy)).choices[0].message.content, greedyText);
});

await test("every kernel variant compiles with the browser's WGSL compiler", async () => {
  // naga (the native tests' validator) accepts some WGSL that Chrome's Tint
  // rejects (Tint checks uniformity when it compiles a module), and the
  // models above use only some variants: compile them all (every one without
  // shader-f16 or subgroups, which SwiftShader lacks), and build a pipeline
  // for every entry point of every variant whose weight format, if any, is
  // F32 or Q4_1 (the other formats change only the dequantising code, and
  // SwiftShader's pipeline builds take ~0.6 s each).
  const p = await openPage(context, `${base}?autoload=0`);
  const got = await p.evaluate(async () => {
    const wasm = await import('/pkg/baleen.js');
    await wasm.default();
    const adapter = await navigator.gpu.requestAdapter();
    const device = await adapter.requestDevice({ requiredLimits: { maxStorageBuffersPerShaderStage: adapter.limits.maxStorageBuffersPerShaderStage } });
    const failures = [];
    let modules = 0;
    let pipelines = 0;
    for (const [name, code] of wasm.shaderVariants()) {
      const module = device.createShaderModule({ code, label: name });
      const info = await module.getCompilationInfo();
      const errors = info.messages.filter((m) => m.type === 'error');
      modules++;
      if (errors.length) {
        failures.push(`${name}: ${errors.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`).join('; ')}`);
        continue;
      }
      if (/ (F16|BF16|Q8_0|Q4_0|Q5_0|Q5_1|Q4_K|Q5_K|Q6_K)( |$)/.test(name)) continue;
      const entries = [...code.matchAll(/@compute[^\n]*\n\s*fn (\w+)/g)].map((m) => m[1]);
      for (const entryPoint of entries) {
        try {
          await device.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint } });
          pipelines++;
        } catch (e) {
          failures.push(`${name} ${entryPoint}: ${e.message}`);
        }
      }
    }
    device.destroy();
    return { modules, pipelines, failures };
  });
  console.log(`     ${got.modules} shader variants, ${got.pipelines} pipelines compiled`);
  assert.deepEqual(got.failures, []);
  // A floor against the list shrinking by mistake (117 variants, 98 pipelines when written).
  assert.ok(got.modules >= 100 && got.pipelines >= 80, `${got.modules} variants, ${got.pipelines} pipelines`);
  await p.close();
});

await test('tiny DeepSeek-V3, Gemma 3 (sliding window past its ring) and Qwen3-MoE run through /engine.js as they do natively', async () => {
  const question = 'Hello there';
  for (const [arch, name] of Object.entries(TINY)) {
    // 80 tokens: the Gemma fixture's window is 6 and its local layers' rings
    // 69 rows (window + a pass of 64 − 1): prompt and reply wrap them.
    const want = await baleenJson(BIN, [
      'run', '--model', `${ROOT}tests/fixtures/${name}/model.gguf`, '--chat', '--prompt', question,
      '--temperature', '0', '--max-tokens', '80', '--backend', 'reference', '--json',
    ]);
    const p = await openPage(context, `${base}?autoload=0`);
    const got = await p.evaluate(async ({ url, question }) => {
      const { createEngine } = await import('/engine.js');
      const e = await createEngine(url);
      const r = await e.chat.completions.create({ messages: [{ role: 'user', content: question }], temperature: 0, max_tokens: 80 });
      const info = e.info;
      await e.dispose();
      return { content: r.choices[0].message.content, usage: r.usage, info };
    }, { url: `/models/${name}.gguf`, question });
    assert.equal(got.info.architecture, arch);
    assert.equal(got.usage.prompt_tokens, want.prompt_ids.length, name);
    assert.equal(got.usage.completion_tokens, want.token_ids.length, name);
    assert.equal(got.content, want.text, name);
    await p.close();
  }
});

await test('expertCacheBytes: paged experts give the native CLI\'s reply with the same budget, fetched on demand; bad budgets refused', async () => {
  // tiny DeepSeek-V3: 2 MoE layers of 8 f32 experts (24 KiB each), top 2;
  // 48 KiB holds one token's experts, so nearly every step loads some.
  const name = 'tiny-deepseek-v3';
  const question = 'Hello there';
  const args = ['run', '--model', `${ROOT}tests/fixtures/${name}/model.gguf`, '--chat', '--prompt', question, '--temperature', '0', '--max-tokens', '40', '--json'];
  const [want, resident] = [await baleenJson(BIN, [...args, '--expert-cache', '48K']), await baleenJson(BIN, args)];
  const p = await openPage(context, `${base}?autoload=0`);
  const got = await p.evaluate(async ({ url, question }) => {
    const { createEngine } = await import('/engine.js');
    const e = await createEngine(url, { expertCacheBytes: 48 << 10 });
    const r = await e.chat.completions.create({ messages: [{ role: 'user', content: question }], temperature: 0, max_tokens: 40 });
    const out = { content: r.choices[0].message.content, info: e.info, stats: e.stats() };
    await e.dispose();
    return out;
  }, { url: `/models/${name}.gguf`, question });
  [got.small, got.bad] = await loadErrors(p, `/models/${name}.gguf`, { expertCacheBytes: 40 << 10 }, { expertCacheBytes: -1 });
  assert.equal(got.content, want.text);
  assert.equal(got.content, resident.text);
  assert.equal(got.info.expert_cache.slots, 2);
  const s = got.stats.expert_cache;
  assert.deepEqual([s.hits, s.misses, s.evictions, s.bytes_loaded], [want.expert_cache.hits, want.expert_cache.misses, want.expert_cache.evictions, want.expert_cache.bytes_loaded]);
  assert.ok(s.misses > 0 && s.evictions > 0, JSON.stringify(s));
  assert.match(got.small, /it needs at least 49152 bytes/);
  assert.match(got.bad, /expertCacheBytes must be a positive whole number of bytes/);
  await p.close();
});

await test('paged experts over a slow link: the first token comes before the download ends, the rest streams in behind, and a reload asks for nothing', async () => {
  // A quarter of the experts' GPU bytes (48 of 192 slots). The load reads
  // the dense part by its own ranges; the reply's misses fetch just their
  // experts; the chunks fill the cache in the background.
  const file = path.join(models, MOE_BENCH);
  const budget = (3 * 64 * 245760) / 4; // 48 slots: one token needs 1 a layer
  const question = 'Hi';
  const size = fs.statSync(file).size;
  const p = await openPage(context, `${base}?autoload=0`);
  const run = async (budget) => {
    proxy.reset();
    return p.evaluate(async ({ url, question, budget }) => {
      const { createEngine } = await import('/engine.js');
      const t0 = performance.now();
      let downloadedAt = null;
      const phases = new Set();
      const e = await createEngine(url, {
        ...(budget ? { expertCacheBytes: budget } : {}),
        onProgress: (q) => {
          phases.add(q.phase);
          if (q.phase === 'downloaded') downloadedAt = performance.now() - t0;
        },
      });
      const info = e.info;
      let firstAt = null;
      let content = '';
      for await (const c of await e.chat.completions.create({ messages: [{ role: 'user', content: question }], temperature: 0, max_tokens: 6, stream: true })) {
        const d = c.choices[0].delta.content;
        if (d) {
          firstAt ??= performance.now() - t0;
          content += d;
        }
      }
      const stats = e.stats();
      // The background download's end (on a reload, from the cache at once).
      while (budget && downloadedAt === null && performance.now() - t0 < 120000) await new Promise((r) => setTimeout(r, 50));
      await e.dispose();
      return { info, firstAt, downloadedAt, content, stats, phases: [...phases] };
    }, { url: `/models/${MOE_BENCH}`, question, budget });
  };
  proxy.throttle(8e6); // 8 MB/s: the reply's misses and the background fill share it
  let got;
  try {
    got = await run(budget);
  } finally {
    proxy.throttle(0);
  }
  console.log(`     load ${(got.info.loadMs / 1000).toFixed(1)} s (${(got.info.downloadedBytes / 1e6).toFixed(1)} of ${(size / 1e6).toFixed(1)} MB), first token at ${(got.firstAt / 1000).toFixed(1)} s, all downloaded at ${(got.downloadedAt / 1000).toFixed(1)} s; expert cache ${JSON.stringify(got.stats.expert_cache)}`);
  // The load reads the header's chunk and the dense part's own bytes.
  assert.ok(got.info.downloadedBytes < size / 4, `the load downloaded ${got.info.downloadedBytes} of ${size} bytes`);
  assert.ok(got.downloadedAt !== null && got.firstAt < got.downloadedAt, `first token at ${got.firstAt} ms, downloaded at ${got.downloadedAt} ms`);
  assert.deepEqual(got.phases, ['header', 'weights', 'ready', 'experts', 'downloaded'].filter((ph) => got.phases.includes(ph)));
  assert.ok(got.phases.includes('experts') && got.phases.includes('downloaded'), got.phases.join());
  const s = got.stats.expert_cache;
  assert.ok(s.slots === 48 && s.misses > 0, JSON.stringify(s));
  // Reloaded: every byte from the cache, the same reply; and the same as
  // with every expert resident (on this adapter: the random weights' greedy
  // picks are too close to agree across adapters).
  const again = await run(budget);
  assert.equal(proxy.stats.modelBytes, 0, `${proxy.stats.modelBytes} model bytes requested on the reload`);
  const resident = await run(null);
  assert.equal(resident.info.expert_cache, null);
  assert.equal(again.content, got.content);
  assert.equal(resident.content, got.content);
  await p.close();
});

await test('chat_template_kwargs reach the template as --template-arg does', async () => {
  const name = 'tiny-qwen3-moe';
  const args = ['run', '--model', `${ROOT}tests/fixtures/${name}/model.gguf`, '--chat', '--prompt', 'hello', '--max-tokens', '1', '--backend', 'reference', '--json'];
  const [on, off] = [await baleenJson(BIN, args), await baleenJson(BIN, [...args, '--template-arg', 'enable_thinking=false'])];
  const p = await openPage(context, `${base}?autoload=0`);
  const got = await p.evaluate(async (url) => {
    const { createEngine } = await import('/engine.js');
    const e = await createEngine(url);
    const ask = async (extra) => (await e.chat.completions.create({ messages: [{ role: 'user', content: 'hello' }], max_tokens: 1, ...extra })).usage.prompt_tokens;
    const plain = await ask({});
    const thinkingOff = await ask({ chat_template_kwargs: { enable_thinking: false } });
    let bad = null;
    try {
      await ask({ chat_template_kwargs: { messages: [] } });
    } catch (x) {
      bad = x.message;
    }
    await e.dispose();
    return { plain, thinkingOff, bad };
  }, `/models/${name}.gguf`);
  assert.equal(got.plain, on.prompt_ids.length);
  assert.equal(got.thinkingOff, off.prompt_ids.length);
  assert.ok(off.prompt_ids.length > on.prompt_ids.length);
  assert.match(got.bad, /cannot be a template variable/);
  await p.close();
});

await test('penalties and logit_bias in the page give the native CLI\'s reply; bad values are refused', async () => {
  const name = 'tiny-gemma3';
  const want = await baleenJson(BIN, [
    'run', '--model', `${ROOT}tests/fixtures/${name}/model.gguf`, '--chat', '--prompt', 'Hello there', '--temperature', '0',
    '--repeat-penalty', '1.5', '--frequency-penalty', '0.5', '--presence-penalty', '0.25', '--logit-bias', '216=-100', '--max-tokens', '40',
    '--backend', 'reference', '--json',
  ]);
  const p = await openPage(context, `${base}?autoload=0`);
  const got = await p.evaluate(async (url) => {
    const { createEngine } = await import('/engine.js');
    const e = await createEngine(url);
    const messages = [{ role: 'user', content: 'Hello there' }];
    const r = await e.chat.completions.create({ messages, temperature: 0, max_tokens: 40, repetition_penalty: 1.5, frequency_penalty: 0.5, presence_penalty: 0.25, logit_bias: { 216: -100 } });
    const refused = async (extra) => {
      try {
        await e.chat.completions.create({ messages, ...extra });
        return null;
      } catch (x) {
        return x.message;
      }
    };
    const bad = await refused({ presence_penalty: 3 });
    const badBias = await refused({ logit_bias: { x: 1 } });
    const farBias = await refused({ logit_bias: { 99999999: 1 } });
    await e.dispose();
    return { content: r.choices[0].message.content, bad, badBias, farBias };
  }, `/models/${name}.gguf`);
  assert.equal(got.content, want.text);
  assert.match(got.bad, /presence_penalty must be in \[-2, 2\]/);
  assert.match(got.badBias, /"x" is not a token id/);
  assert.match(got.farBias, /not a token id of this model/);
  assert.ok(!want.token_ids.includes(216));
  await p.close();
});

await test('logprobs in OpenAI shapes, as the native CLI reports them, streamed and not', async () => {
  const name = 'tiny-qwen3-moe';
  const want = await baleenJson(BIN, [
    'run', '--model', `${ROOT}tests/fixtures/${name}/model.gguf`, '--chat', '--prompt', 'Hello there', '--temperature', '0',
    '--logprobs', '2', '--max-tokens', '6', '--backend', 'reference', '--json',
  ]);
  const p = await openPage(context, `${base}?autoload=0`);
  const got = await p.evaluate(async (url) => {
    const { createEngine } = await import('/engine.js');
    const e = await createEngine(url);
    const req = { messages: [{ role: 'user', content: 'Hello there' }], temperature: 0, max_tokens: 6, logprobs: true, top_logprobs: 2 };
    const r = await e.chat.completions.create(req);
    let last;
    for await (const c of await e.chat.completions.create({ ...req, stream: true })) last = c;
    let bad = null;
    try {
      await e.chat.completions.create({ ...req, logprobs: false });
    } catch (x) {
      bad = x.message;
    }
    await e.dispose();
    return { lp: r.choices[0].logprobs, streamed: last.choices[0].logprobs, bad };
  }, `/models/${name}.gguf`);
  const content = got.lp.content;
  assert.equal(content.length, want.logprobs.length);
  content.forEach((c, i) => {
    const w = want.logprobs[i];
    assert.equal(c.token, w.text);
    assert.ok(Math.abs(c.logprob - w.logprob) < 1e-3, `${c.logprob} vs ${w.logprob}`);
    assert.deepEqual(c.bytes, [...new TextEncoder().encode(w.text)]);
    assert.equal(c.top_logprobs.length, 2);
    assert.equal(c.top_logprobs[0].token, w.top_logprobs[0].text);
  });
  assert.deepEqual(got.streamed, got.lp);
  assert.match(got.bad, /top_logprobs needs logprobs: true/);
  await p.close();
});

await test('kvCache: f32 is honoured; f16 without shader-f16, and other values, are refused', async () => {
  const p = await openPage(context, `${base}?autoload=0`);
  const got = await p.evaluate(async (url) => {
    const { createEngine } = await import('/engine.js');
    const e = await createEngine(url, { kvCache: 'f32' });
    const info = e.info;
    await e.dispose();
    return { info };
  }, `/models/${DEEPSEEK}`);
  [got.bad, got.f16] = await loadErrors(p, `/models/${DEEPSEEK}`, { kvCache: 'f8' }, { kvCache: 'f16' });
  assert.equal(got.info.kv_f16, false);
  assert.match(got.bad, /kvCache must be 'f16' or 'f32'/);
  // SwiftShader has no shader-f16.
  assert.match(got.f16, /lacks shader-f16/);
  await p.close();
});

await test('contextLength: honoured, reported in info, and refused past the model\'s own or when not a count', async () => {
  const p = await openPage(context, `${base}?autoload=0`);
  const got = await p.evaluate(async (url) => {
    const { createEngine } = await import('/engine.js');
    const e = await createEngine(url, { contextLength: 40 });
    const info = e.info;
    // The reply stops when the 40 positions are full: greedy, with the
    // tokens that end a turn banned (ids 0 and 2 in the tiny vocabulary).
    const r = await e.chat.completions.create({
      messages: [{ role: 'user', content: 'hello' }], max_tokens: 100, temperature: 0, logit_bias: { 0: -100, 2: -100 },
    });
    await e.dispose();
    const d = await createEngine(url);
    const dflt = d.info;
    await d.dispose();
    return { info, dflt, finish: r.choices[0].finish_reason, used: r.usage.total_tokens };
  }, `/models/${DEEPSEEK}`);
  [got.long, got.bad] = await loadErrors(p, `/models/${DEEPSEEK}`, { contextLength: 1e6 }, { contextLength: 1.5 });
  assert.equal(got.info.context, 40);
  assert.equal(got.info.kv_cache_bytes * got.dflt.context, got.dflt.kv_cache_bytes * 40);
  // The tiny model's own context (256) fits: the default takes all of it.
  assert.equal(got.dflt.context, got.dflt.model_context);
  // The last token comes from the last cached position's logits: it is
  // returned but never cached.
  assert.ok(got.used <= 41, `${got.used} tokens from a context of 40`);
  assert.equal(got.finish, 'length');
  assert.ok(got.used >= 40, `${got.used} tokens: the reply ended before the context was full`);
  assert.match(got.long, /longer than the model's own \(256\); ask for at most 256/);
  assert.match(got.bad, /contextLength must be a positive whole number/);
  await p.close();
});

await test('hf: model names resolve to the hub\'s download URLs (nothing fetched)', async () => {
  const p = await openPage(context, `${base}?autoload=0`);
  const got = await p.evaluate(async () => {
    const { resolveModelUrl } = await import('/engine.js');
    let bad = null;
    try {
      resolveModelUrl('hf:just-a-name');
    } catch (x) {
      bad = x.message;
    }
    return {
      plain: resolveModelUrl('hf:unsloth/gemma-3-270m-it-GGUF/gemma-3-270m-it-Q4_K_M.gguf'),
      rev: resolveModelUrl('hf:owner/repo@v1.0/sub dir/m.gguf'),
      local: resolveModelUrl('/models/x.gguf'),
      bad,
    };
  });
  assert.equal(got.plain, 'https://huggingface.co/unsloth/gemma-3-270m-it-GGUF/resolve/main/gemma-3-270m-it-Q4_K_M.gguf');
  assert.equal(got.rev, 'https://huggingface.co/owner/repo/resolve/v1.0/sub%20dir/m.gguf');
  assert.ok(got.local.endsWith('/models/x.gguf') && got.local.startsWith('http://127.0.0.1'));
  assert.match(got.bad, /write a Hugging Face model as hf:owner\/repo\/file.gguf/);
  await p.close();
});

await test('bad model URLs give plain-words errors', async () => {
  assert.match(await loadError(page, '/models/missing.gguf'), /not found \(HTTP 404\)/);
  assert.match(await loadError(page, '/models/not-a-model.gguf'), /GGUF/);
});

await test('the chat page: load, reply streamed as text, screenshot', async () => {
  const p = await openPage(context, `${base}?model=${encodeURIComponent(MODEL_URL)}`);
  await p.waitForSelector('body[data-state=ready]', { timeout: 300_000 });
  await p.evaluate(() => {
    const t = document.getElementById('temperature');
    t.value = '0';
    t.dispatchEvent(new Event('input'));
    document.getElementById('max-tokens').value = '24';
  });
  await p.fill('#input', QUESTION);
  await p.click('#send');
  await p.waitForSelector('body[data-state=ready]', { timeout: 300_000 });
  const bubbles = await p.$$eval('.msg', (els) => els.map((e) => [e.className, e.textContent]));
  assert.deepEqual(bubbles, [['msg user', QUESTION], ['msg assistant', greedyText]]);
  assert.match(await p.textContent('#stats'), /decode [\d.]+ tok\/s/);
  // A follow-up turn reuses the cache of the first.
  await p.fill('#input', 'And of Italy?');
  await p.click('#send');
  await p.waitForSelector('body[data-state=ready]', { timeout: 300_000 });
  const s = await p.evaluate(() => window.baleenApp.engine.stats());
  assert.ok(s.reused_tokens > s.prompt_tokens / 2, `follow-up reused ${s.reused_tokens} of ${s.prompt_tokens} prompt tokens`);
  await p.screenshot({ path: `${ARTIFACTS}/chat.png`, fullPage: true });
  console.log(`     screenshot: ${ARTIFACTS}/chat.png`);

  // Model output and user input are text, never HTML.
  let dialogs = 0;
  p.on('dialog', (d) => {
    dialogs++;
    d.dismiss();
  });
  const xss = '<img src=x onerror=alert(1)>';
  await p.evaluate((x) => window.baleenApp.addMessage('assistant', `Here: ${x}`), xss);
  await p.fill('#input', xss);
  await p.click('#send');
  await p.waitForSelector('body[data-state=ready]', { timeout: 300_000 });
  const texts = await p.$$eval('.msg', (els) => els.map((e) => e.textContent));
  assert.ok(texts.includes(`Here: ${xss}`) && texts.includes(xss));
  assert.equal(await p.$$eval('#transcript img', (els) => els.length), 0);
  assert.equal(dialogs, 0);
  await p.close();
});

await test('a reload loads from the cache: zero model bytes requested', async () => {
  await page.close();
  proxy.reset();
  page = await openPage(context, `${base}?autoload=0`);
  const { info } = await loadInPage(page);
  assert.equal(proxy.stats.modelBytes, 0, `${proxy.stats.modelBytes} model bytes requested`);
  assert.equal(proxy.stats.modelGets, 0);
  assert.equal(info.cachedBytes, size);
  assert.equal((await reply(page, greedy)).choices[0].message.content, greedyText);
});

await test('a download broken off mid-file resumes and gives the same reply', async () => {
  await page.evaluate(() => caches.delete('baleen-models-v1'));
  await page.close();
  proxy.reset();
  proxy.cutNext({ fromOffset: 20 << 20, afterBytes: 1 << 20 });
  page = await openPage(context, `${base}?autoload=0`);
  const { info } = await loadInPage(page);
  assert.equal(proxy.stats.cuts, 1, 'the proxy broke one response off');
  assert.ok(proxy.stats.modelBytes < size + (5 << 20), `${proxy.stats.modelBytes} bytes for a ${size}-byte file`);
  assert.equal(info.downloadedBytes, size);
  assert.equal((await reply(page, greedy)).choices[0].message.content, greedyText);
});

await test('the chat page: a failed reply leaves no trace, a failed switch brings the model back, a load can be cancelled, stored models are listed and deleted', async () => {
  const tiny = `/models/${DEEPSEEK}`;
  const p = await openPage(context, `${base}?model=${encodeURIComponent(tiny)}`);
  await p.waitForSelector('body[data-state=ready]', { timeout: 300_000 });
  const bubbles = () => p.$$eval('.msg', (els) => els.map((e) => e.className));
  // A reply that fails (a prompt past the context): the turn leaves the
  // screen as it leaves the history, and its text goes back to the input.
  const long = 'x '.repeat(9000);
  await p.fill('#input', long);
  await p.click('#send');
  await p.waitForFunction(() => !document.getElementById('error').hidden);
  await p.waitForSelector('body[data-state=ready]', { timeout: 300_000 });
  assert.match(await p.textContent('#error'), /does not fit the model's context/);
  assert.deepEqual(await bubbles(), []);
  assert.deepEqual(await p.evaluate(() => window.baleenApp.history), []);
  assert.equal(await p.inputValue('#input'), long);
  await p.fill('#input', 'Hello there');
  await p.click('#send');
  await p.waitForSelector('body[data-state=ready]', { timeout: 300_000 });
  assert.deepEqual(await bubbles(), ['msg user', 'msg assistant']);
  assert.equal((await p.evaluate(() => window.baleenApp.history)).length, 2);

  // A switch to a file that is not a model: said, and the model before it is back.
  await p.evaluate(() => window.baleenApp.loadModel('/models/not-a-model.gguf'));
  assert.match(await p.textContent('#error'), /Could not load the model\. .*The model before it is loaded again\./);
  assert.equal(await p.evaluate(() => window.baleenApp.engine?.info.architecture), 'deepseek2');

  // A load under way, cancelled with the Load button (now Cancel).
  const slow = p.evaluate((u) => window.baleenApp.loadModel(u), MODEL_URL);
  await p.waitForFunction(() => document.getElementById('load').textContent === 'Cancel');
  await p.click('#load');
  await slow;
  assert.match(await p.textContent('#error'), /The load was cancelled\./);
  assert.equal(await p.textContent('#load'), 'Load');
  assert.equal(await p.evaluate(() => window.baleenApp.engine), null);

  // The stored models: listed with their bytes; one not in use deleted.
  await p.evaluate((u) => window.baleenApp.loadModel(u), tiny);
  await p.evaluate(() => window.baleenApp.showCached());
  const listed = await p.evaluate(async () => (await import('/engine.js')).cachedModels());
  const url = (f) => new URL(`/models/${f}`, base).href;
  const entry = (f) => listed.find((m) => m.url === url(f));
  assert.equal(entry(DEEPSEEK)?.bytes, fs.statSync(`${ROOT}tests/fixtures/tiny-deepseek-v3/model.gguf`).size, JSON.stringify(listed));
  assert.ok(entry(DEEPSEEK).complete);
  // (The file that is not a model was fetched whole before it was refused;
  // SmolLM2, cancelled, holds what came before the cancel, if earlier tests left none.)
  assert.ok(entry('not-a-model.gguf')?.complete, JSON.stringify(listed));
  assert.ok(!entry(MODEL_FILE) || entry(MODEL_FILE).bytes <= fs.statSync(MODEL_PATH).size);
  const items = await p.$$eval('#cached-list li', (els) => els.map((e) => [e.textContent, e.querySelector('button')?.disabled]));
  assert.ok(items.some(([t, inUse]) => t.startsWith(`${DEEPSEEK}:`) && inUse), JSON.stringify(items));
  const gone = 'not-a-model.gguf';
  await p.click('#cached summary');
  const i = items.findIndex(([t]) => t.startsWith(`${gone}:`));
  await p.click(`#cached-list li:nth-child(${i + 1}) button`);
  await p.waitForFunction((f) => ![...document.querySelectorAll('#cached-list li')].some((e) => e.textContent.startsWith(`${f}:`)), gone);
  const after = await p.evaluate(async () => (await import('/engine.js')).cachedModels());
  assert.ok(!after.some((m) => m.url === url(gone)) && after.some((m) => m.url === url(DEEPSEEK)), JSON.stringify(after));
  await p.close();
});

await test('checked weights: a cached chunk altered on disk is fetched again; a wrong publisher digest fails and drops the copy', async () => {
  const tiny = `/models/${DEEPSEEK}`;
  const fixture = `${ROOT}tests/fixtures/tiny-deepseek-v3/model.gguf`;
  const right = (await import('node:crypto')).createHash('sha256').update(fs.readFileSync(fixture)).digest('hex');
  const p = await openPage(context, `${base}?autoload=0`);
  const load = (opts) =>
    p.evaluate(
      async ({ url, opts }) => {
        const { createEngine } = await import('/engine.js');
        try {
          const e = await createEngine(url, opts);
          const r = await e.chat.completions.create({ messages: [{ role: 'user', content: 'Hello there' }], temperature: 0, max_tokens: 8 });
          const info = e.info;
          await e.dispose();
          return { info, content: r.choices[0].message.content };
        } catch (x) {
          return { error: x.message };
        }
      },
      { url: tiny, opts },
    );
  const first = await load({ sha256: right });
  assert.equal(first.info?.sha256, right, JSON.stringify(first));
  // Alter the cached chunk's bytes, keeping its stored digest: the next load
  // finds the mismatch, fetches the chunk again and answers as before.
  await p.evaluate(async (url) => {
    const cache = await caches.open('baleen-models-v1');
    const key = (await cache.keys()).find((r) => r.url.startsWith(`https://baleen.cache/${encodeURIComponent(url)}/`) && r.url.endsWith('/0'));
    const hit = await cache.match(key);
    const bytes = new Uint8Array(await hit.arrayBuffer());
    bytes[1000] ^= 0xff;
    await cache.put(key, new Response(bytes, { headers: hit.headers }));
  }, new URL(tiny, base).href);
  proxy.reset();
  const again = await load({});
  assert.equal(again.info.corruptChunks, 1, JSON.stringify(again.info));
  assert.equal(proxy.stats.modelBytes, fs.statSync(fixture).size);
  assert.equal(again.content, first.content);
  // A wrong digest: a plain error, and the cached copy is gone.
  const wrong = await load({ sha256: '0'.repeat(64) });
  assert.match(wrong.error, /is not the file it should be: its SHA-256 is [0-9a-f]{64}, not 0{64}\. Its cached copy was dropped/);
  const listed = await p.evaluate(async () => (await import('/engine.js')).cachedModels());
  assert.ok(!listed.some((m) => m.url === new URL(tiny, base).href), JSON.stringify(listed));
  const bad = await load({ sha256: 'abc' });
  assert.match(bad.error, /sha256 must be the file's SHA-256 as 64 lowercase hex digits/);
  await p.close();
});

await test('a lost GPU device: reported, the model loaded again from the cache, the chat goes on; 100 replies leave GPU and wasm memory level', async () => {
  const p = await openPage(context, `${base}?autoload=0`);
  const got = await p.evaluate(async (url) => {
    const { createEngine } = await import('/engine.js');
    const phases = [];
    const e = await createEngine(url, { onProgress: (q) => phases.push(q.phase) });
    const req = { messages: [{ role: 'user', content: 'Hello there' }], temperature: 0, max_tokens: 8 };
    const before = (await e.chat.completions.create(req)).choices[0].message.content;
    await e._loseDevice();
    const after = (await e.chat.completions.create(req)).choices[0].message.content;
    // Many replies in a row: memory after the 10th and after the 100th.
    const short = { ...req, max_tokens: 2 };
    const mem = [];
    for (let i = 1; i <= 100; i++) {
      await e.chat.completions.create({ ...short, messages: [{ role: 'user', content: `Question ${i}` }] });
      if (i === 10 || i === 100) mem.push([e.stats().gpu_bytes, e.stats().wasm_heap_bytes]);
    }
    await e.dispose();
    return { before, after, phases, mem };
  }, `/models/${DEEPSEEK}`);
  assert.equal(got.after, got.before);
  const lost = got.phases.indexOf('device-lost');
  assert.ok(lost >= 0 && got.phases.indexOf('ready', lost) > lost, got.phases.join());
  const [[gpu10, heap10], [gpu100, heap100]] = got.mem;
  console.log(`     after 10 replies: GPU ${gpu10} bytes, wasm heap ${heap10}; after 100: ${gpu100}, ${heap100}`);
  assert.equal(gpu100, gpu10);
  assert.equal(heap100, heap10);
  await p.close();
});

await test('the npm package: installed from its tarball, bundled into an app with esbuild, it answers as /engine.js does', async () => {
  const tarball = fs.readdirSync(`${ROOT}target/package`).find((f) => /^baleen-web-.*\.tgz$/.test(f));
  assert.ok(tarball, 'make package wrote no tarball');
  // The served /engine.js is the package's engine.js.
  const served = await (await fetch(new URL('/engine.js', base))).text();
  assert.equal(served, fs.readFileSync(`${ROOT}target/package/engine.js`, 'utf8'));
  fs.writeFileSync(path.join(APP, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  execFileSync('npm', ['install', '--no-audit', '--no-fund', '--offline', `${ROOT}target/package/${tarball}`], { cwd: APP, stdio: 'ignore' });
  fs.writeFileSync(
    path.join(APP, 'app.js'),
    `import { createEngine } from 'baleen-web';
window.ask = async (url, question) => {
  const engine = await createEngine(url);
  const r = await engine.chat.completions.create({ messages: [{ role: 'user', content: question }], temperature: 0, max_tokens: 12 });
  await engine.dispose();
  return r.choices[0].message.content;
};
`,
  );
  const dist = path.join(APP, 'dist');
  execFileSync(`${ROOT}tests/browser/node_modules/.bin/esbuild`, ['app.js', '--bundle', '--format=esm', `--outdir=${dist}`], { cwd: APP, stdio: 'ignore' });
  // The package's README step: its worker, loader and wasm beside the bundle.
  const installed = path.join(APP, 'node_modules', 'baleen-web');
  for (const f of ['worker.js', 'loader.js']) fs.copyFileSync(path.join(installed, f), path.join(dist, f));
  fs.cpSync(path.join(installed, 'pkg'), path.join(dist, 'pkg'), { recursive: true });
  fs.writeFileSync(path.join(dist, 'index.html'), '<!doctype html><script type="module" src="app.js"></script>');
  const p = await openPage(context, `${base}app/index.html`);
  await p.waitForFunction(() => typeof window.ask === 'function');
  const question = 'Hello there';
  const got = await p.evaluate(({ url, q }) => window.ask(url, q), { url: `/models/${DEEPSEEK}`, q: question });
  const want = await p.evaluate(async ({ url, q }) => {
    const { createEngine } = await import('/engine.js');
    const e = await createEngine(url);
    const r = await e.chat.completions.create({ messages: [{ role: 'user', content: q }], temperature: 0, max_tokens: 12 });
    await e.dispose();
    return r.choices[0].message.content;
  }, { url: `/models/${DEEPSEEK}`, q: question });
  assert.equal(got, want);
  assert.ok(got.length > 0);
  await p.close();
});

await browser.close();
proxy.stop();
serve.stop();
fs.rmSync(models, { recursive: true, force: true });
fs.rmSync(APP, { recursive: true, force: true });
const failed = results.filter(([, ok]) => !ok);
console.log(`\nbrowser tests: ${results.length - failed.length} passed, ${failed.length} failed`);
process.exit(failed.length ? 1 : 0);
