// The API client: openapi-fetch over the types openapi-typescript generates from the API's
// own OpenAPI document (ui/openapi.json, written by `tamp openapi`), so a path, parameter or
// request body the API does not have is a compile error. Responses the API documents as
// free-form JSON are read through the view types in ./types.ts.
import createClient, { type Client } from 'openapi-fetch';
import type { paths } from './schema';

export type AuthConfig =
  | { mode: 'token'; hint?: string }
  | { mode: 'oidc'; issuer: string; client_id: string; scope?: string };

export interface UiConfig {
  api_base_url: string;
  auth: AuthConfig;
}

const TOKEN_KEY = 'tamp.token';

let token = sessionStorage.getItem(TOKEN_KEY) ?? '';
let base = '';

export const session = {
  get token(): string {
    return token;
  },
  set(t: string) {
    token = t;
    sessionStorage.setItem(TOKEN_KEY, t);
  },
  clear() {
    token = '';
    sessionStorage.removeItem(TOKEN_KEY);
  },
};

export let api: Client<paths> = createClient<paths>({ baseUrl: '' });

/// Points the client at the API named in /config.json and adds the bearer credential.
export function initApi(config: UiConfig) {
  base = config.api_base_url.replace(/\/$/, '');
  api = createClient<paths>({ baseUrl: base });
  api.use({
    onRequest({ request }) {
      if (token) request.headers.set('Authorization', `Bearer ${token}`);
      return request;
    },
  });
}

/// A URL the API returned (a signed link or a path): absolute as given, else on the API.
export function apiUrl(pathOrUrl: string): string {
  return /^https?:\/\//.test(pathOrUrl) ? pathOrUrl : `${base}${pathOrUrl}`;
}

/// An API error: the problem document's detail, its status and (for policies) the line.
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly line?: number,
  ) {
    super(message);
  }
}

interface Problem {
  detail?: string;
  title?: string;
  line?: number;
}

/// The body of a successful response, or an ApiError with the problem's detail.
export async function unwrap<T>(p: Promise<{ data?: unknown; error?: unknown; response: Response }>): Promise<T> {
  const { data, error, response } = await p;
  if (error !== undefined || !response.ok) {
    const pr = (error ?? {}) as Problem;
    if (response.status === 401) session.clear();
    throw new ApiError(pr.detail ?? pr.title ?? `${response.status} ${response.statusText}`, response.status, pr.line);
  }
  return data as T;
}

/// Fetches a document the typed client does not model (the HTML report) with the credential.
export async function fetchWithAuth(path: string, accept: string): Promise<Response> {
  const r = await fetch(apiUrl(path), { headers: { Authorization: `Bearer ${token}`, Accept: accept } });
  if (!r.ok) {
    const pr = (await r.json().catch(() => ({}))) as Problem;
    throw new ApiError(pr.detail ?? `${r.status}`, r.status);
  }
  return r;
}
