// What the browser tests and the browser benchmark share: `baleen serve` on a
// models folder, a counting (and, on request, failing) proxy in front of it,
// and Debian's chromium with WebGPU on SwiftShader, driven by playwright-core.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { chromium } from 'playwright-core';

export const ROOT = new URL('../../', import.meta.url).pathname;

export const CHROMIUM_ARGS = [
  '--headless=new',
  '--no-sandbox',
  '--enable-unsafe-webgpu',
  '--use-webgpu-adapter=swiftshader',
  '--enable-features=Vulkan',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

/** `baleen serve --port 0` (the binary at `bin`); resolves to { url, stop }. */
export function startServe(bin, { models, web = `${ROOT}web`, pkg = `${ROOT}pkg` }) {
  const proc = spawn(bin, ['serve', '--port', '0', '--models', models, '--web', web, '--pkg', pkg], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolve, reject) => {
    let out = '';
    proc.on('exit', (code) => reject(new Error(`baleen serve exited (${code}) before listening: ${out}`)));
    proc.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/(http:\/\/127\.0\.0\.1:\d+\/)/);
      if (m) resolve({ url: m[1], stop: () => proc.kill() });
    });
  });
}

/**
 * A proxy in front of `target` that counts the body bytes and GETs of
 * `/models/` responses, and can break one download off mid-body:
 * `proxy.cutNext({ fromOffset, afterBytes })` cuts the next model GET whose
 * Range starts at or after `fromOffset` once `afterBytes` have been sent.
 */
const MIME = { '.js': 'text/javascript', '.wasm': 'application/wasm', '.json': 'application/json', '.html': 'text/html' };

/** Also serves `statics` ({ '/prefix/': folder }) itself (the benchmark's wllama). */
export function startProxy(target, statics = {}) {
  const t = new URL(target);
  const stats = { modelBytes: 0, modelGets: 0, cuts: 0 };
  let cut = null;
  let rate = 0; // model bytes a second, all responses together; 0: as fast as it goes
  let nextFree = 0; // when the throttled link is free again (ms)
  const server = http.createServer((req, res) => {
    for (const [prefix, dir] of Object.entries(statics)) {
      if (!req.url.startsWith(prefix)) continue;
      const file = path.join(dir, decodeURIComponent(new URL(req.url, 'http://x').pathname.slice(prefix.length)));
      if (!file.startsWith(dir) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, {
        'content-type': MIME[path.extname(file)] ?? 'application/octet-stream',
        'cross-origin-resource-policy': 'same-origin',
      });
      fs.createReadStream(file).pipe(res);
      return;
    }
    const isModel = req.url.startsWith('/models/');
    const up = http.request(
      { host: t.hostname, port: t.port, path: req.url, method: req.method, headers: req.headers },
      (upRes) => {
        res.writeHead(upRes.statusCode, upRes.headers);
        const start = Number((req.headers.range || '').match(/bytes=(\d+)-/)?.[1] ?? 0);
        const willCut = isModel && req.method === 'GET' && cut && start >= cut.fromOffset ? cut : null;
        if (willCut) cut = null;
        if (isModel && req.method === 'GET') stats.modelGets++;
        let sent = 0;
        upRes.on('data', (d) => {
          if (willCut && sent + d.length > willCut.afterBytes) {
            const part = d.subarray(0, Math.max(0, willCut.afterBytes - sent));
            if (isModel) stats.modelBytes += part.length;
            res.write(part);
            stats.cuts++;
            upRes.destroy();
            res.socket.destroy(); // the connection drops mid-body
            return;
          }
          sent += d.length;
          if (isModel) stats.modelBytes += d.length;
          res.write(d);
          if (isModel && rate > 0) {
            // A link of `rate` bytes a second shared by every response: hold
            // this one until its bytes would have gone through.
            const now = Date.now();
            nextFree = Math.max(nextFree, now) + (d.length / rate) * 1000;
            upRes.pause();
            setTimeout(() => upRes.resume(), nextFree - now);
          }
        });
        upRes.on('end', () => res.end());
      },
    );
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({
        url: `http://127.0.0.1:${server.address().port}/`,
        stats,
        reset: () => Object.assign(stats, { modelBytes: 0, modelGets: 0, cuts: 0 }),
        cutNext: (c) => (cut = c),
        throttle: (bytesPerSecond) => {
          rate = bytesPerSecond;
          nextFree = 0;
        },
        stop: () => server.close(),
      }),
    ),
  );
}

export async function launchChromium() {
  return chromium.launch({ executablePath: '/usr/bin/chromium', args: CHROMIUM_ARGS });
}

/** A page on `url` with the browser's console errors forwarded (prefixed). */
export async function openPage(context, url) {
  const page = await context.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') console.log(`  [browser ${m.type()}] ${m.text()}`);
  });
  page.on('pageerror', (e) => console.log(`  [page error] ${e.message}`));
  await page.goto(url);
  return page;
}

/** Run `baleen` with `args` and parse its JSON output. */
export function baleenJson(bin, args) {
  return new Promise((resolve, reject) => {
    const p = spawn(bin, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`baleen ${args.join(' ')} exited ${code}`))));
  });
}
