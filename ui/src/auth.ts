// Logging in. Locally: an API token (the admin token tamp serve wrote, or one from POST
// /tokens). On AWS: the team's OIDC issuer, authorization code flow with PKCE (RFC 7636):
// the verifier stays in sessionStorage, the code comes back to this page's URL, and the
// access token it is exchanged for is the API's bearer credential (a JWT the API checks).
import { session, type AuthConfig } from './api/client';

const VERIFIER = 'tamp.pkce.verifier';
const STATE = 'tamp.pkce.state';

function b64url(bytes: ArrayBuffer | Uint8Array): string {
  const b = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  return btoa(String.fromCharCode(...b)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function randomString(n = 32): string {
  return b64url(crypto.getRandomValues(new Uint8Array(n)));
}

interface Discovery {
  authorization_endpoint: string;
  token_endpoint: string;
}

async function discover(issuer: string): Promise<Discovery> {
  const r = await fetch(`${issuer.replace(/\/$/, '')}/.well-known/openid-configuration`);
  if (!r.ok) throw new Error(`the OIDC issuer ${issuer} did not answer its discovery document (${r.status})`);
  return (await r.json()) as Discovery;
}

function redirectUri(): string {
  return `${window.location.origin}${window.location.pathname}`;
}

/// Sends the browser to the issuer's login page.
export async function startOidc(cfg: Extract<AuthConfig, { mode: 'oidc' }>) {
  const d = await discover(cfg.issuer);
  const verifier = randomString(48);
  const state = randomString(16);
  sessionStorage.setItem(VERIFIER, verifier);
  sessionStorage.setItem(STATE, state);
  const challenge = b64url(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)));
  const q = new URLSearchParams({
    response_type: 'code',
    client_id: cfg.client_id,
    redirect_uri: redirectUri(),
    scope: cfg.scope ?? 'openid',
    state,
    code_challenge: challenge,
    code_challenge_method: 'S256',
  });
  window.location.assign(`${d.authorization_endpoint}?${q}`);
}

/// On return from the issuer (?code=…&state=…): exchanges the code for tokens. True when
/// this load was such a return and the session now has a credential.
export async function finishOidc(cfg: AuthConfig): Promise<boolean> {
  if (cfg.mode !== 'oidc') return false;
  const q = new URLSearchParams(window.location.search);
  const code = q.get('code');
  if (!code) return false;
  const verifier = sessionStorage.getItem(VERIFIER);
  if (!verifier || q.get('state') !== sessionStorage.getItem(STATE)) throw new Error('the login answer does not match this browser session; sign in again');
  const d = await discover(cfg.issuer);
  const body = new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: redirectUri(), client_id: cfg.client_id, code_verifier: verifier });
  const r = await fetch(d.token_endpoint, { method: 'POST', headers: { 'Content-Type': 'application/x-www-form-urlencoded' }, body });
  if (!r.ok) throw new Error(`the issuer refused the login code (${r.status})`);
  const t = (await r.json()) as { access_token?: string; id_token?: string };
  session.set(t.access_token ?? t.id_token ?? '');
  sessionStorage.removeItem(VERIFIER);
  sessionStorage.removeItem(STATE);
  window.history.replaceState(null, '', redirectUri() + window.location.hash);
  return true;
}
