// make bench-ui: the dashboard with 1,000 jobs in Debian's headless Chromium against a real
// `tamp serve` (first render, then scrolling to the bottom frame by frame), and the initial
// JavaScript's gzipped size, each printed beside its budget as a ratio.
// Usage: node ui/tests/bench.mjs <path to the tamp binary>
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { chromium } from '@playwright/test';

const here = dirname(fileURLToPath(import.meta.url));
const ui = join(here, '..');
const JOBS = Number(process.env.JOBS ?? 1000);

const data = mkdtempSync(join(tmpdir(), 'tamp-bench-ui-'));
const server = spawn(process.argv[2], ['serve', '--data-dir', data, '--port', '0', '--ui-dir', join(ui, 'dist'), '--rate-limit', '100000'], { stdio: ['ignore', 'pipe', 'inherit'] });
const url = await new Promise((resolve) => server.stdout.once('data', (b) => resolve(String(b).split('API on ')[1].split(';')[0])));
const token = readFileSync(join(data, 'admin-token'), 'utf8').trim();
const call = (method, path, body) =>
  fetch(`${url}${path}`, { method, headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' }, body: body && JSON.stringify(body) });

try {
  // 1,000 jobs: a policy on a version whose model was never uploaded fails at once, so the
  // server does no compute while the browser is measured.
  await call('POST', '/projects', { name: 'bench' });
  await call('POST', '/models', { project_id: 'bench', name: 'm' });
  await call('POST', '/models/bench.m/versions', { version: 'v1' });
  await call('POST', '/policies', { project: 'bench', name: 'p', yaml: readFileSync(join(ui, '../configs/policy_examples/ptq_8bit.yaml'), 'utf8') });
  const t0 = Date.now();
  for (let i = 0; i < JOBS; i += 50) {
    await Promise.all(Array.from({ length: Math.min(50, JOBS - i) }, () => call('POST', '/jobs', { model_version_id: 'bench.m/v1', policy_id: 'bench.p' })));
  }
  const seeded = Date.now() - t0;

  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', args: ['--no-sandbox'] });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.addInitScript((t) => sessionStorage.setItem('tamp.token', t), token);
  const runs = [];
  for (let run = 0; run < 3; run++) {
    await page.goto(`${url}/#/`);
    await page.waitForFunction(
      (n) => document.querySelector('[data-testid=jobs-table]')?.getAttribute('data-rows') === String(n) && document.querySelectorAll('[data-testid=jobs-table] tbody tr[aria-rowindex]').length > 10,
      JOBS,
      { timeout: 30_000 },
    );
    runs.push(await page.evaluate(() => performance.now()));
  }
  const scroll = await page.evaluate(async () => {
    const frames = [];
    let last = performance.now();
    while (window.scrollY + window.innerHeight < document.body.scrollHeight - 2) {
      window.scrollBy(0, 240);
      await new Promise((r) => requestAnimationFrame(r));
      const now = performance.now();
      frames.push(now - last);
      last = now;
    }
    const last_row = document.querySelector('[data-testid=jobs-table] tbody tr[aria-rowindex]:last-of-type')?.getAttribute('aria-rowindex');
    frames.sort((a, b) => a - b);
    return { last_row, frames: frames.length, p50: frames[Math.floor(frames.length / 2)], p95: frames[Math.floor(frames.length * 0.95)], max: frames[frames.length - 1] };
  });
  await browser.close();
  if (Number(scroll.last_row) !== JOBS + 1) throw new Error(`scrolled to the bottom but the last row shown is ${scroll.last_row}, not ${JOBS + 1}`);

  const html = readFileSync(join(ui, 'dist/index.html'), 'utf8');
  const scripts = [...html.matchAll(/(?:src|href)="\/?(assets\/[^"]+\.js)"/g)].map((m) => m[1]);
  const gz = scripts.reduce((n, s) => n + gzipSync(readFileSync(join(ui, 'dist', s))).length, 0) / 1024;
  const api = [];
  for (let i = 0; i < 3; i++) {
    const t = performance.now();
    await (await call("GET", `/jobs?limit=${JOBS}`)).json();
    api.push(performance.now() - t);
  }
  api.sort((a, b) => a - b);
  const first = [...runs].sort((a, b) => a - b)[1];

  console.log(`\nmake bench-ui: ${JOBS} jobs (seeded through the API in ${seeded} ms), Debian chromium headless, 1280x900\n`);
  console.log('| measure | Tamp | budget | Tamp / budget |');
  console.log('|---|---|---|---|');
  console.log(`| dashboard first render with ${JOBS} rows, ms (median of 3 loads) | ${first.toFixed(0)} | 1000 | ${(first / 1000).toFixed(2)} |`);
  console.log(`| scrolling to the bottom: frame time P50 / P95 / max, ms (${scroll.frames} frames) | ${scroll.p50.toFixed(1)} / ${scroll.p95.toFixed(1)} / ${scroll.max.toFixed(1)} | 16.7 / 33 / 100 | ${(scroll.p95 / 33).toFixed(2)} (P95) |`);
  console.log(`| of which GET /jobs?limit=${JOBS} (the API), ms (median of 3) | ${api[1].toFixed(0)} | | |`);
  console.log(`| initial JavaScript, KB gzipped (${scripts.length} file(s)) | ${gz.toFixed(1)} | 300 | ${(gz / 300).toFixed(2)} |`);
} finally {
  server.kill();
  rmSync(data, { recursive: true, force: true });
}
