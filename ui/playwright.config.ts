// Browser tests against a real `tamp serve` (started by tests/ui.rs, which passes TAMP_URL
// and TAMP_TOKEN), in Debian's headless Chromium: no browser is downloaded.
import { defineConfig } from '@playwright/test';

export default defineConfig({
  testDir: 'tests',
  testMatch: /.*\.spec\.ts/,
  // The seeding step (a finished job) is skipped for the @oidc run, which has no API token.
  globalSetup: process.env.TAMP_OIDC_ISSUER ? undefined : './tests/global-setup.ts',
  timeout: 240_000,
  expect: { timeout: 15_000 },
  workers: 1,
  fullyParallel: false,
  reporter: [['list']],
  use: {
    baseURL: process.env.TAMP_URL,
    browserName: 'chromium',
    launchOptions: { executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', args: ['--no-sandbox'] },
    viewport: { width: 1280, height: 900 },
    acceptDownloads: true,
    trace: 'off',
  },
});
