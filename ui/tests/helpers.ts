// Shared by the browser tests: the server, logging in, seeding through the API (the same
// calls a script would make), the WCAG check and screenshots.
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import AxeBuilder from '@axe-core/playwright';
import { expect, type Page } from '@playwright/test';

export const URL = process.env.TAMP_URL ?? '';
export const TOKEN = process.env.TAMP_TOKEN ?? '';
export const CNN = process.env.TAMP_CNN ?? '';

export async function apiCall<T = unknown>(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; json: T }> {
  const r = await fetch(`${URL}${path}`, {
    method,
    headers: { Authorization: `Bearer ${TOKEN}`, ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}), ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  return { status: r.status, json: (text ? JSON.parse(text) : null) as T };
}

export function sha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/// Logs in through the login form (the token is the server's admin token).
export async function login(page: Page) {
  await page.goto('/');
  await page.getByLabel('API token').fill(TOKEN);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await expect(page.getByRole('heading', { name: 'Jobs' })).toBeVisible();
}

export async function setTheme(page: Page, theme: 'light' | 'dark') {
  const toggle = page.getByTestId('theme-toggle');
  const label = await toggle.getAttribute('aria-label');
  if (label === `Switch to ${theme} theme`) await toggle.click();
  await expect(page.locator('html')).toHaveAttribute('data-mantine-color-scheme', theme);
}

/// Serious and critical WCAG 2.1 A/AA violations on the page as it is now.
export async function wcagProblems(page: Page): Promise<string[]> {
  const r = await new AxeBuilder({ page }).withTags(['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']).analyze();
  return r.violations
    .filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(' | ')}`);
}

export async function screenshot(page: Page, name: string) {
  const dir = process.env.TAMP_SCREENSHOTS;
  if (!dir) return;
  mkdirSync(dir, { recursive: true });
  await page.screenshot({ path: join(dir, `${name}.png`), fullPage: false });
}

/// Presses Tab until `target` has the focus (at most `max` times): the keyboard's way there.
export async function tabTo(page: Page, target: ReturnType<Page['locator']>, max = 60) {
  for (let i = 0; i < max; i++) {
    if (await target.evaluate((el) => el === document.activeElement || el.contains(document.activeElement)).catch(() => false)) return;
    await page.keyboard.press('Tab');
  }
  throw new Error(`Tab never reached ${target}`);
}
