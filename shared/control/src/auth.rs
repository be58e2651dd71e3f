//! Authentication and authorization for the API.
//!
//! - **API tokens**: `tamp_` + 48 random hex characters, shown once when minted; only their
//!   SHA-256 is stored. Each grants one role on one project (or `*`) until it expires.
//! - **JWT bearer tokens** (HS256 with a shared secret, or RS256 with keys from a JWKS file):
//!   issuer, audience and expiry are checked; roles come from the `tamp_roles` claim,
//!   `{"<project>|*": "viewer|editor|admin"}`.
//! - **RBAC**: viewer < editor < admin, per project; `*` grants apply everywhere.
//! - **Rate limit** per principal (token id or JWT subject), a fixed one-minute window,
//!   default 1000 requests; beyond it `429` with `Retry-After`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tamp_ports::{MetadataStore, Role, TokenRecord};

use crate::api::Problem;

/// How JWTs are verified.
#[derive(Clone)]
pub enum JwtKeys {
    Hs256(Vec<u8>),
    /// RS256 keys by `kid`.
    Jwks(jsonwebtoken::jwk::JwkSet),
    /// A JWKS URL, fetched when the server starts (see [`resolve_jwks`]).
    JwksUrl(String),
}

/// Fetches a `JwksUrl` into `Jwks` (other keys are returned as they are).
pub async fn resolve_jwks(keys: JwtKeys) -> Result<JwtKeys, String> {
    match keys {
        JwtKeys::JwksUrl(url) => {
            let resp = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(|e| e.to_string())?.get(&url).send().await.map_err(|e| format!("fetching the JWKS {url}: {e}"))?;
            let set = resp.error_for_status().map_err(|e| format!("fetching the JWKS {url}: {e}"))?.json::<jsonwebtoken::jwk::JwkSet>().await.map_err(|e| format!("{url} is not a JWKS document: {e}"))?;
            Ok(JwtKeys::Jwks(set))
        }
        other => Ok(other),
    }
}

#[derive(Clone)]
pub struct JwtConfig {
    pub issuer: String,
    pub audience: String,
    pub keys: JwtKeys,
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig").field("issuer", &self.issuer).field("audience", &self.audience).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub jwt: Option<JwtConfig>,
    /// Requests per minute per principal.
    pub rate_per_min: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { jwt: None, rate_per_min: 1000 }
    }
}

/// Who is calling, and what they may do.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Audit name: `token:<id>` or `jwt:<sub>`.
    pub actor: String,
    pub grants: Vec<(String, Role)>,
}

impl Principal {
    /// The strongest role on `project` (`*` grants included).
    pub fn role_on(&self, project: &str) -> Option<Role> {
        self.grants.iter().filter(|(p, _)| p == "*" || p == project).map(|(_, r)| *r).max()
    }

    pub fn require(&self, project: &str, role: Role) -> Result<(), Problem> {
        match self.role_on(project) {
            Some(r) if r >= role => Ok(()),
            Some(r) => Err(Problem::forbidden(format!("{} is {r:?} on project '{project}'; this needs {role:?}", self.actor).to_lowercase())),
            None => Err(Problem::forbidden(format!("{} has no role on project '{project}'", self.actor))),
        }
    }
}

/// Hex SHA-256 of a token string (what is stored and looked up).
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token string.
pub fn new_token() -> String {
    format!("tamp_{}", tamp_adapters_local::random_hex(24))
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    tamp_roles: HashMap<String, String>,
}

pub struct Auth {
    pub config: AuthConfig,
    meta: Arc<dyn MetadataStore>,
    windows: Mutex<HashMap<String, (Instant, u32)>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("config", &self.config).finish_non_exhaustive()
    }
}

fn unauthorized(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
}

impl Auth {
    pub fn new(config: AuthConfig, meta: Arc<dyn MetadataStore>) -> Self {
        Self { config, meta, windows: Mutex::default() }
    }

    /// Resolves the bearer credential of a request.
    pub async fn authenticate(&self, headers: &HeaderMap, now: u64) -> Result<Principal, Problem> {
        let value = headers.get("authorization").and_then(|v| v.to_str().ok()).ok_or_else(|| unauthorized("send `Authorization: Bearer <token>` (an API token or a JWT)"))?;
        let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?.trim();
        if token.starts_with("tamp_") {
            let rec = self.meta.token_by_hash(&token_hash(token)).await.map_err(Problem::from)?.ok_or_else(|| unauthorized("unknown API token"))?;
            if rec.expires_at <= now {
                return Err(unauthorized(format!("API token {} expired", rec.id)));
            }
            return Ok(Principal { actor: format!("token:{}", rec.id), grants: vec![(rec.project, rec.role)] });
        }
        let jwt = self.config.jwt.as_ref().ok_or_else(|| unauthorized("not an API token, and JWTs are not configured on this server"))?;
        let header = decode_header(token).map_err(|e| unauthorized(format!("malformed JWT: {e}")))?;
        let (key, alg) = match &jwt.keys {
            JwtKeys::Hs256(secret) => (DecodingKey::from_secret(secret), Algorithm::HS256),
            JwtKeys::JwksUrl(url) => return Err(unauthorized(format!("the JWKS at {url} was not loaded"))),
            JwtKeys::Jwks(set) => {
                let kid = header.kid.as_deref().ok_or_else(|| unauthorized("the JWT has no `kid`"))?;
                let jwk = set.find(kid).ok_or_else(|| unauthorized(format!("no key '{kid}' in the JWKS")))?;
                (DecodingKey::from_jwk(jwk).map_err(|e| unauthorized(format!("JWKS key '{kid}': {e}")))?, Algorithm::RS256)
            }
        };
        if header.alg != alg {
            return Err(unauthorized(format!("JWT algorithm {:?} is not accepted (expected {alg:?})", header.alg)));
        }
        let mut v = Validation::new(alg);
        v.set_issuer(&[&jwt.issuer]);
        v.set_audience(&[&jwt.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = 30;
        let data = decode::<Claims>(token, &key, &v).map_err(|e| unauthorized(format!("JWT rejected: {e}")))?;
        let mut grants = Vec::new();
        for (project, role) in data.claims.tamp_roles {
            let role = Role::parse(&role).ok_or_else(|| unauthorized(format!("unknown role '{role}' in tamp_roles")))?;
            grants.push((project, role));
        }
        Ok(Principal { actor: format!("jwt:{}", data.claims.sub), grants })
    }

    /// Counts a request against the principal's window; `Err` is the 429 to send.
    pub fn rate_limit(&self, actor: &str) -> Result<(), Problem> {
        let now = Instant::now();
        let mut w = self.windows.lock().map_err(|_| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "rate limiter lock poisoned"))?;
        let entry = w.entry(actor.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= Duration::from_secs(60) {
            *entry = (now, 0);
        }
        entry.1 += 1;
        if entry.1 > self.config.rate_per_min {
            let retry = 60u64.saturating_sub(now.duration_since(entry.0).as_secs()).max(1);
            return Err(Problem::too_many(retry, format!("{actor} exceeded {} requests per minute", self.config.rate_per_min)));
        }
        Ok(())
    }
}

/// Mints an API token record; returns (record, the token string to show once).
pub fn mint(subject: &str, project: &str, role: Role, ttl: Duration, created_by: &str, now: u64) -> (TokenRecord, String) {
    let token = new_token();
    let rec = TokenRecord {
        id: format!("tok_{}", tamp_adapters_local::random_hex(6)),
        hash: token_hash(&token),
        subject: subject.to_owned(),
        project: project.to_owned(),
        role,
        created_at: now,
        expires_at: now + ttl.as_secs(),
        created_by: created_by.to_owned(),
    };
    (rec, token)
}
