// The JavaScript a first visit loads (the entry module and what it preloads; the editor is
// split off) is at most 300 KB gzipped.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { expect, test } from '@playwright/test';

test('the initial JavaScript is at most 300 KB gzipped', async () => {
  const dist = join(process.cwd(), 'dist');
  const html = readFileSync(join(dist, 'index.html'), 'utf8');
  const scripts = [...html.matchAll(/(?:src|href)="\/?(assets\/[^"]+\.js)"/g)].map((m) => m[1]);
  expect(scripts.length).toBeGreaterThan(0);
  const gz = scripts.reduce((n, s) => n + gzipSync(readFileSync(join(dist, s))).length, 0);
  console.log(`initial JS: ${scripts.join(', ')} = ${(gz / 1024).toFixed(1)} KB gzipped`);
  expect(gz).toBeLessThanOrEqual(300 * 1024);
});
