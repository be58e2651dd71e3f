// The whole user path in one test: log in, start a PTQ job through the wizard on the
// reference CNN, watch it finish on the dashboard, open its report, download the artifact
// and check its sha256.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, test } from '@playwright/test';
import { CNN, apiCall, login, sha256 } from './helpers';

test('log in, run PTQ from the wizard, watch, read the report, download and verify', async ({ page }) => {
  await login(page);
  await page.getByRole('link', { name: 'New job' }).click();
  await page.getByLabel('Project', { exact: true }).selectOption('＋ new…');
  await page.getByLabel('New project name').fill('wizard');
  await page.getByLabel('New model name').fill('resnet8');
  await page.getByLabel('Version', { exact: true }).fill('v1');
  for (const [label, file] of [['Model (.onnx)', 'model.onnx'], ['Calibration rows (calib.npz)', 'calib.npz'], ['Evaluation rows with labels (eval.npz)', 'eval.npz']]) {
    const chooser = page.waitForEvent('filechooser');
    await page.getByRole('button', { name: label }).click();
    await (await chooser).setFiles(join(CNN, file));
  }
  await page.getByRole('button', { name: 'Next' }).click();
  await page.getByRole('radio', { name: /PTQ only: int8/ }).check();
  await page.getByRole('button', { name: 'Next' }).click();
  await page.getByLabel(/Max metric drop/).fill('1');
  await page.getByRole('button', { name: 'Next' }).click();
  await expect(page.getByRole('table', { name: 'Review' })).toContainText('wizard.resnet8/v1');
  await page.getByRole('button', { name: 'Start job' }).click();

  // The job page opens; then the dashboard, refreshing itself, shows the job finish.
  await expect(page).toHaveURL(/#\/jobs\/[^/]+$/);
  const jobId = page.url().split('/').pop()!;
  await expect(page.getByTestId('job-summary')).toContainText('wizard.resnet8');
  await page.getByRole('link', { name: 'Dashboard' }).click();
  const row = page.getByRole('row', { name: new RegExp(jobId) });
  await expect(row).toBeVisible();
  await expect(row.getByLabel('state: succeeded')).toBeVisible({ timeout: 200_000 });
  await expect(row.getByLabel('health: ok')).toBeVisible();
  await row.getByRole('link', { name: jobId }).click();
  await expect(page.getByTestId('timeline')).toContainText('job.succeeded');

  // Its report: the recommendation, the side-by-side chart with its data table, the full report.
  await page.getByRole('link', { name: 'Open report' }).click();
  await expect(page.getByTestId('recommendation')).toContainText(/Ship/);
  await expect(page.getByRole('table', { name: /data$/ })).toContainText('P50 latency');
  const frame = page.frameLocator('[data-testid=report-frame]');
  await expect(frame.locator('body')).toContainText(/cohort|Cohort/);

  // Download the artifact through its signed link; the file's sha256 is the API's.
  await page.getByRole('link', { name: jobId }).click();
  const pending = page.waitForEvent('download');
  await page.getByTestId('download-onnxruntime').click();
  const file = await (await pending).path();
  const best = await apiCall<{ sha256: string; job: string }>('GET', '/models/wizard.resnet8/best?target_runtime=onnxruntime');
  expect(best.json.job).toBe(jobId);
  expect(sha256(file)).toBe(best.json.sha256);
  await expect(page.getByTestId('download-status-onnxruntime')).toContainText(`sha256 verified: ${best.json.sha256}`);
  expect(readFileSync(file).length).toBeGreaterThan(1000);
});
