// The login page: an API token locally, the team's OIDC issuer (PKCE) on AWS.
import { useState } from 'react';
import { Button, Center, Paper, PasswordInput, Stack, Text, Title } from '@mantine/core';
import { api, session, unwrap, type UiConfig } from '../api/client';
import { startOidc } from '../auth';
import { ErrorNote } from '../components/bits';

export function Login({ config, error, onLogin }: { config: UiConfig; error: string; onLogin: () => void }) {
  const [token, setToken] = useState('');
  const [err, setErr] = useState(error);
  const [busy, setBusy] = useState(false);
  const auth = config.auth;
  async function submit(e: React.FormEvent) {
    e.preventDefault();
    setBusy(true);
    setErr('');
    session.set(token.trim());
    try {
      await unwrap(api.GET('/projects'));
      onLogin();
    } catch (x) {
      session.clear();
      setErr(`That token was not accepted: ${(x as Error).message}`);
    } finally {
      setBusy(false);
    }
  }
  return (
    <Center mih="100vh" component="main">
      <Paper withBorder p="xl" w={420}>
        <Stack>
          <Title order={1} size="h2">Sign in to Tamp</Title>
          <ErrorNote error={err} />
          {auth.mode === 'oidc' ? (
            <Button onClick={() => void startOidc(auth)}>Sign in with your organisation</Button>
          ) : (
            <form onSubmit={submit}>
              <Stack>
                <PasswordInput label="API token" description={auth.hint ?? 'an API token (tamp_…)'} value={token} onChange={(e) => setToken(e.currentTarget.value)} required autoFocus />
                <Button type="submit" loading={busy}>Sign in</Button>
              </Stack>
            </form>
          )}
          <Text size="sm">The UI uses the same credentials as the API.</Text>
        </Stack>
      </Paper>
    </Center>
  );
}
