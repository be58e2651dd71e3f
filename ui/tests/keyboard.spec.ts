// The wizard driven by the keyboard alone: Tab, arrows, Space and Enter; no clicks.
import { expect, test } from '@playwright/test';
import { TOKEN, tabTo } from './helpers';

test('the job wizard works from the keyboard alone', async ({ page }) => {
  await page.goto('/');
  const k = page.keyboard;
  await tabTo(page, page.getByLabel('API token'));
  await k.type(TOKEN);
  await k.press('Enter');
  await expect(page.getByRole('heading', { name: 'Jobs' })).toBeVisible();

  await tabTo(page, page.getByRole('link', { name: 'New job' }));
  await k.press('Enter');
  await expect(page.getByRole('heading', { name: 'New compression job' })).toBeVisible();

  // Step 1: an uploaded version of demo.cnn.
  await tabTo(page, page.getByRole('radio', { name: 'Upload a new version' }));
  await k.press('ArrowRight');
  await expect(page.getByRole('radio', { name: 'Use an uploaded version' })).toBeChecked();
  const project = page.getByLabel('Project', { exact: true });
  await tabTo(page, project);
  await expect(project).toHaveValue('demo');
  await tabTo(page, page.getByLabel('Version', { exact: true }));
  await expect(page.getByLabel('Version', { exact: true })).toHaveValue('v1');
  await tabTo(page, page.getByRole('button', { name: 'Next' }));
  await k.press('Enter');

  // Step 2: the first template is chosen; move to the dynamic one and back with the arrows.
  const ptq = page.getByRole('radio', { name: /PTQ only: int8/ });
  await tabTo(page, page.getByRole('radio', { checked: true }));
  await k.press('ArrowDown');
  await k.press('ArrowUp');
  await expect(ptq).toBeChecked();
  await tabTo(page, page.getByRole('button', { name: 'Next' }));
  await k.press('Enter');

  // Step 3: a latency bound, and TFLite as a second runtime.
  await tabTo(page, page.getByLabel(/Max P50 latency/));
  await k.type('50');
  await tabTo(page, page.getByRole('checkbox', { name: 'tflite' }));
  await k.press('Space');
  await expect(page.getByRole('checkbox', { name: 'tflite' })).toBeChecked();
  await tabTo(page, page.getByRole('button', { name: 'Next' }));
  await k.press('Enter');

  // Review and submit.
  await expect(page.getByRole('table', { name: 'Review' })).toContainText('onnxruntime, tflite');
  await expect(page.getByRole('table', { name: 'Review' })).toContainText('max P50 50 ms');
  await tabTo(page, page.getByRole('button', { name: 'Start job' }));
  await k.press('Enter');
  await expect(page).toHaveURL(/#\/jobs\/[^/]+$/);
  await expect(page.getByTestId('job-summary')).toContainText('demo.cnn');
  // The job carries the runtimes and the constraint the wizard set.
  const id = page.url().split('/').pop()!;
  const r = await fetch(`${process.env.TAMP_URL}/jobs/${id}`, { headers: { Authorization: `Bearer ${TOKEN}` } });
  const job = (await r.json()) as { recipe_yaml: string };
  expect(job.recipe_yaml).toMatch(/targets:\s*\n\s*- onnxruntime\s*\n\s*- tflite/);
  expect(job.recipe_yaml).toMatch(/max_latency_ms_p50: 50/);
});
