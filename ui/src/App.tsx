// The shell: header with navigation and the theme switch, a skip link, the login gate and
// the routes (hash routes, so no page path ever shadows an API path).
import { lazy, Suspense, useState } from 'react';
import { ActionIcon, Anchor, AppShell, Button, Group, Loader, Text, Title, useComputedColorScheme, useMantineColorScheme } from '@mantine/core';
import { Link, NavLink, Route, Routes } from 'react-router-dom';
import { session, type UiConfig } from './api/client';
import { Login } from './pages/Login';
import { Dashboard } from './pages/Dashboard';
import { Models, ModelDetail } from './pages/Models';
import { Wizard } from './pages/Wizard';
import { JobPage } from './pages/Job';
import { ReportPage } from './pages/Report';

const Policies = lazy(() => import('./pages/Policies'));

function ThemeToggle() {
  const { setColorScheme } = useMantineColorScheme();
  const scheme = useComputedColorScheme('light');
  const next = scheme === 'dark' ? 'light' : 'dark';
  return (
    <ActionIcon variant="default" size="lg" onClick={() => setColorScheme(next)} aria-label={`Switch to ${next} theme`} data-testid="theme-toggle">
      <svg aria-hidden="true" width="18" height="18" viewBox="0 0 24 24" fill="none" stroke="currentColor" strokeWidth="2" strokeLinecap="round">
        {scheme === 'dark' ? (
          <>
            <circle cx="12" cy="12" r="4" />
            <path d="M12 2v2M12 20v2M4.9 4.9l1.4 1.4M17.7 17.7l1.4 1.4M2 12h2M20 12h2M4.9 19.1l1.4-1.4M17.7 6.3l1.4-1.4" />
          </>
        ) : (
          <path d="M21 12.8A9 9 0 1 1 11.2 3a7 7 0 0 0 9.8 9.8z" />
        )}
      </svg>
    </ActionIcon>
  );
}

const NAV = [
  ['/', 'Dashboard'],
  ['/models', 'Models'],
  ['/new', 'New job'],
  ['/policies', 'Policies'],
] as const;

export function App({ config, loginError }: { config: UiConfig; loginError: string }) {
  const [authed, setAuthed] = useState(Boolean(session.token));
  if (!authed) {
    return <Login config={config} error={loginError} onLogin={() => setAuthed(true)} />;
  }
  return (
    <AppShell header={{ height: 60 }} padding="md">
      <a className="tamp-skip" href="#main" onClick={(e) => { e.preventDefault(); document.getElementById('main')?.focus(); }}>Skip to content</a>
      <AppShell.Header>
        <Group h="100%" px="md" justify="space-between" wrap="nowrap">
          <Group gap="lg" wrap="nowrap">
            <Title order={1} size="h3"><Anchor component={Link} to="/" underline="never" c="inherit">Tamp</Anchor></Title>
            <nav aria-label="Main">
              <Group gap="xs" wrap="nowrap">
                {NAV.map(([to, label]) => (
                  <Button key={to} component={NavLink} to={to} end={to === '/'} variant="subtle" className="tamp-nav">{label}</Button>
                ))}
              </Group>
            </nav>
          </Group>
          <Group gap="xs" wrap="nowrap">
            <ThemeToggle />
            <Button variant="default" onClick={() => { session.clear(); setAuthed(false); }}>Log out</Button>
          </Group>
        </Group>
      </AppShell.Header>
      <AppShell.Main id="main" tabIndex={-1}>
        <Suspense fallback={<Loader aria-label="Loading" />}>
          <Routes>
            <Route path="/" element={<Dashboard />} />
            <Route path="/models" element={<Models />} />
            <Route path="/models/:id" element={<ModelDetail />} />
            <Route path="/new" element={<Wizard />} />
            <Route path="/jobs/:id" element={<JobPage />} />
            <Route path="/jobs/:id/report" element={<ReportPage />} />
            <Route path="/policies" element={<Policies />} />
            <Route path="*" element={<Text>No such page. <Anchor component={Link} to="/">Back to the dashboard</Anchor></Text>} />
          </Routes>
        </Suspense>
      </AppShell.Main>
    </AppShell>
  );
}
