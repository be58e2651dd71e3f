// @oidc: with an OIDC issuer configured, the UI signs in by authorization code + PKCE and
// the API accepts the access token it gets (run by tests/ui.rs with a test issuer).
import { expect, test } from '@playwright/test';

test('signs in through the OIDC issuer with PKCE @oidc', async ({ page }) => {
  await page.goto('/');
  await page.getByRole('button', { name: 'Sign in with your organisation' }).click();
  // Off to the issuer and back with ?code=…&state=…, exchanged for a token, then the app.
  await expect(page.getByRole('heading', { name: 'Jobs' })).toBeVisible();
  await expect(page.getByTestId('job-count')).toContainText('jobs');
  expect(new URL(page.url()).search).toBe('');
  const token = await page.evaluate(() => sessionStorage.getItem('tamp.token'));
  const claims = JSON.parse(Buffer.from(token!.split('.')[1], 'base64url').toString());
  expect(claims.sub).toBe('alice');
  expect(claims.iss).toBe(process.env.TAMP_OIDC_ISSUER);
  // The API takes it: an admin on every project may create one.
  const r = await page.request.post('/projects', { headers: { Authorization: `Bearer ${token}` }, data: { name: 'from-oidc' } });
  expect(r.status()).toBe(201);
});
