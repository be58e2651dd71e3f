// Entry: loads /config.json (where the API is, how to log in), then renders the app.
import '@mantine/core/styles.css';
import './app.css';
import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { Anchor, ColorSchemeScript, MantineProvider, createTheme, type CSSVariablesResolver } from '@mantine/core';
import { HashRouter } from 'react-router-dom';
import { initApi, type UiConfig } from './api/client';
import { finishOidc } from './auth';
import { App } from './App';

// Shade 8 of the primary colour keeps white text on filled buttons above 4.5:1 (WCAG AA)
// in both themes; the default shade 6 does not.
// Links are underlined everywhere, so none relies on colour alone (WCAG 1.4.1).
const theme = createTheme({
  primaryColor: 'blue',
  primaryShade: { light: 8, dark: 8 },
  defaultRadius: 'sm',
  components: { Anchor: Anchor.extend({ defaultProps: { underline: 'always' } }) },
});
// Mantine's "dimmed" grey (descriptions, placeholders) is below 4.5:1 on both backgrounds.
const resolver: CSSVariablesResolver = () => ({
  variables: {},
  light: { '--mantine-color-dimmed': '#495057', '--mantine-color-placeholder': '#5c636a' },
  dark: { '--mantine-color-dimmed': '#c1c2c5', '--mantine-color-placeholder': '#a6a7ab' },
});

async function boot() {
  const config = (await fetch('config.json').then((r) => r.json())) as UiConfig;
  initApi(config);
  let loginError = '';
  try {
    await finishOidc(config.auth);
  } catch (e) {
    loginError = String((e as Error).message);
  }
  createRoot(document.getElementById('root')!).render(
    <StrictMode>
      <ColorSchemeScript defaultColorScheme="light" />
      <MantineProvider theme={theme} defaultColorScheme="light" cssVariablesResolver={resolver}>
        <HashRouter>
          <App config={config} loginError={loginError} />
        </HashRouter>
      </MantineProvider>
    </StrictMode>,
  );
}

void boot();
