// Every page in both themes: zero serious or critical WCAG 2.1 A/AA violations (axe-core),
// and a screenshot of each (written where TAMP_SCREENSHOTS points: docs/ui/ for the docs).
import { expect, test } from '@playwright/test';
import { login, screenshot, setTheme, wcagProblems } from './helpers';

const job = () => process.env.TAMP_SEED_JOB ?? '';

const PAGES: [string, () => string, string][] = [
  ['dashboard', () => '/#/', 'Jobs'],
  ['models', () => '/#/models', 'Models'],
  ['model-detail', () => '/#/models/demo.cnn', 'Model demo.cnn'],
  ['new-job', () => '/#/new', 'New compression job'],
  ['job', () => `/#/jobs/${job()}`, `Job ${job()}`],
  ['report', () => `/#/jobs/${job()}/report`, 'Report for job'],
  ['policies', () => '/#/policies', 'Policies'],
];

for (const theme of ['light', 'dark'] as const) {
  test(`login page meets WCAG 2.1 AA (${theme})`, async ({ page }) => {
    await page.addInitScript((t) => localStorage.setItem('mantine-color-scheme-value', t), theme);
    await page.goto('/');
    await expect(page.getByRole('heading', { name: 'Sign in to Tamp' })).toBeVisible();
    await expect(page.locator('html')).toHaveAttribute('data-mantine-color-scheme', theme);
    expect(await wcagProblems(page)).toEqual([]);
    await screenshot(page, `login-${theme}`);
  });

  test(`every page meets WCAG 2.1 AA (${theme})`, async ({ page }) => {
    await login(page);
    await setTheme(page, theme);
    for (const [name, path, heading] of PAGES) {
      await page.goto(path());
      await expect(page.getByRole('heading', { name: heading }).first()).toBeVisible();
      if (name === 'report') await expect(page.getByTestId('report-frame')).toBeVisible();
      if (name === 'policies') await expect(page.getByTestId('policy-status')).toContainText('Valid');
      if (name === 'model-detail') await expect(page.getByTestId('artifact-onnxruntime')).toBeVisible();
      if (name === 'job') await expect(page.getByTestId('artifact-onnxruntime')).toBeVisible();
      const problems = await wcagProblems(page);
      expect(problems, `${name} (${theme})`).toEqual([]);
      await screenshot(page, `${name}-${theme}`);
    }
  });
}

test('the theme choice and the filters persist across reloads', async ({ page }) => {
  await login(page);
  await setTheme(page, 'dark');
  await page.getByLabel('State', { exact: true }).selectOption('succeeded');
  await page.reload();
  await expect(page.locator('html')).toHaveAttribute('data-mantine-color-scheme', 'dark');
  await expect(page.getByLabel('State', { exact: true })).toHaveValue('succeeded');
  await page.getByLabel('State', { exact: true }).selectOption('all');
});
