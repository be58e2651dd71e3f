// The policy editor marks the API's validation error at the line it names.
import { expect, test } from '@playwright/test';
import { login } from './helpers';

const BAD = ['policy:', '  name: typo', '  stages:', '    - ptq:', '        bits: {weights: [8]}', '        colour: red', 'constraints: {max_metric_drop_pct: 1.0}'].join('\n');

test('a bad recipe shows its error inline at the right line', async ({ page }) => {
  await login(page);
  await page.getByRole('link', { name: 'Policies' }).click();
  await expect(page.getByTestId('policy-status')).toContainText('Valid: ptq-8bit');
  const editor = page.getByRole('textbox', { name: 'Policy YAML' });
  await editor.click();
  await page.keyboard.press('ControlOrMeta+a');
  await page.keyboard.press('Delete');
  await page.keyboard.insertText(BAD);
  await expect(page.getByTestId('policy-status')).toContainText('Line 6');
  await expect(page.getByTestId('policy-status')).toContainText('colour');
  // The underline covers line 6, and the gutter marks that line only.
  const marked = page.locator('.cm-lintRange-error');
  await expect(marked).toHaveCount(1);
  await expect(marked).toHaveText('        colour: red');
  await expect(page.locator('.cm-lint-marker-error')).toHaveCount(1);
  const lines = await page.locator('.cm-content .cm-line').allTextContents();
  expect(lines[5]).toBe('        colour: red');
  await expect(page.getByRole('button', { name: 'Save policy' })).toBeDisabled();

  // Fixed, it validates and saves.
  await page.keyboard.press('ControlOrMeta+a');
  await page.keyboard.insertText(BAD.replace('        colour: red\n', ''));
  await expect(page.getByTestId('policy-status')).toContainText('Valid: typo');
  await page.getByRole('button', { name: 'Save policy' }).click();
  await expect(page.getByText(/Saved as demo\.my-policy/)).toBeVisible();
});
