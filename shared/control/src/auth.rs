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
//! - **Failed logins** per client address: after `failed_logins_per_min` refused credentials
//!   in a minute, every request from that address gets `429` until the window ends (token
//!   guessing gets 20 tries a minute, not thousands).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tamp_ports::{MetadataStore, Role, TokenRecord};

use crate::problem::Problem;

/// How JWTs are verified.
#[derive(Clone)]
pub enum JwtKeys {
    Hs256(Vec<u8>),
    /// RS256 keys by `kid`.
    Jwks(Arc<Jwks>),
    /// A JWKS URL, fetched when the server starts (see [`resolve_jwks`]).
    JwksUrl(String),
}

/// Least time between two fetches of a JWKS URL for unknown `kid`s: a rotation is picked
/// up at once, and a flood of tokens with made-up `kid`s costs the IdP one request a minute.
pub const JWKS_REFRESH_FLOOR: Duration = Duration::from_secs(60);

/// RS256 keys, from a file or a URL. A URL's set is fetched again when a token names a `kid`
/// it lacks (the IdP rotated its keys), at most once per [`JWKS_REFRESH_FLOOR`].
pub struct Jwks {
    url: Option<String>,
    set: std::sync::RwLock<jsonwebtoken::jwk::JwkSet>,
    fetched: Mutex<Instant>,
    floor: Duration,
}

impl Jwks {
    /// A fixed set (a file): never refreshed.
    pub fn fixed(set: jsonwebtoken::jwk::JwkSet) -> Self {
        Self { url: None, set: std::sync::RwLock::new(set), fetched: Mutex::new(Instant::now()), floor: JWKS_REFRESH_FLOOR }
    }

    /// The set at `url`, refetched on unknown `kid`s no more often than `floor`.
    pub async fn remote(url: &str, floor: Duration) -> Result<Self, String> {
        let set = fetch_jwks(url).await?;
        Ok(Self { url: Some(url.to_owned()), set: std::sync::RwLock::new(set), fetched: Mutex::new(Instant::now()), floor })
    }

    fn find(&self, kid: &str) -> Option<jsonwebtoken::jwk::Jwk> {
        self.set.read().ok()?.find(kid).cloned()
    }

    /// The key `kid`, refreshing the set once if it is not there.
    pub async fn key(&self, kid: &str) -> Result<jsonwebtoken::jwk::Jwk, Problem> {
        if let Some(k) = self.find(kid) {
            return Ok(k);
        }
        let Some(url) = &self.url else { return Err(unauthorized(format!("no key '{kid}' in the JWKS"))) };
        {
            let mut last = self.fetched.lock().map_err(|_| unauthorized("JWKS lock poisoned"))?;
            if last.elapsed() < self.floor {
                return Err(unauthorized(format!("no key '{kid}' in the JWKS (fetched {} s ago)", last.elapsed().as_secs())));
            }
            *last = Instant::now();
        }
        // A failed refresh keeps the keys there were.
        let set = fetch_jwks(url).await.map_err(|e| unauthorized(format!("no key '{kid}' in the JWKS, and refreshing it failed: {e}")))?;
        tracing::info!(kid, keys = set.keys.len(), "JWKS refreshed for an unknown kid");
        if let Ok(mut s) = self.set.write() {
            *s = set;
        }
        self.find(kid).ok_or_else(|| unauthorized(format!("no key '{kid}' in the JWKS (refreshed just now)")))
    }
}

async fn fetch_jwks(url: &str) -> Result<jsonwebtoken::jwk::JwkSet, String> {
    let resp = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?
        .get(url)
        .send()
        .await
        .map_err(|e| format!("fetching the JWKS {url}: {e}"))?;
    resp.error_for_status()
        .map_err(|e| format!("fetching the JWKS {url}: {e}"))?
        .json::<jsonwebtoken::jwk::JwkSet>()
        .await
        .map_err(|e| format!("{url} is not a JWKS document: {e}"))
}

/// Fetches a `JwksUrl` into `Jwks` (other keys are returned as they are).
pub async fn resolve_jwks(keys: JwtKeys) -> Result<JwtKeys, String> {
    match keys {
        JwtKeys::JwksUrl(url) => Ok(JwtKeys::Jwks(Arc::new(Jwks::remote(&url, JWKS_REFRESH_FLOOR).await?))),
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
    /// Refused credentials per minute per client address before it is locked out.
    pub failed_logins_per_min: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { jwt: None, rate_per_min: 1000, failed_logins_per_min: 20 }
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
    format!("tamp_{}", tamp_domain::ids::random_hex(24))
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
    failures: Mutex<HashMap<String, (Instant, u32)>>,
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
        Self { config, meta, windows: Mutex::default(), failures: Mutex::default() }
    }

    /// Resolves the bearer credential of a request.
    pub async fn authenticate(&self, headers: &HeaderMap, now: u64) -> Result<Principal, Problem> {
        let value = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| unauthorized("send `Authorization: Bearer <token>` (an API token or a JWT)"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?
            .trim();
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
                let jwk = set.key(kid).await?;
                (DecodingKey::from_jwk(&jwk).map_err(|e| unauthorized(format!("JWKS key '{kid}': {e}")))?, Algorithm::RS256)
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
        v.validate_nbf = true;
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
        count(&self.windows, actor, 1, self.config.rate_per_min)
            .map_err(|retry| Problem::too_many(retry, format!("{actor} exceeded {} requests per minute", self.config.rate_per_min)))
    }

    /// Whether `client` (an address) is locked out after too many refused credentials.
    pub fn login_allowed(&self, client: &str) -> Result<(), Problem> {
        count(&self.failures, client, 0, self.config.failed_logins_per_min)
            .map_err(|retry| Problem::too_many(retry, format!("too many refused credentials from this address; wait {retry} s")))
    }

    /// Counts one refused credential from `client`.
    pub fn login_failed(&self, client: &str) {
        let _ = count(&self.failures, client, 1, u32::MAX);
    }
}

/// Adds `add` to `key`'s one-minute window; `Err(seconds to wait)` once it is over `limit`.
fn count(windows: &Mutex<HashMap<String, (Instant, u32)>>, key: &str, add: u32, limit: u32) -> Result<(), u64> {
    let now = Instant::now();
    let Ok(mut w) = windows.lock() else { return Err(1) };
    if w.len() > 100_000 {
        w.retain(|_, e| now.duration_since(e.0) < Duration::from_secs(60)); // bounded memory
    }
    let entry = w.entry(key.to_owned()).or_insert((now, 0));
    if now.duration_since(entry.0) >= Duration::from_secs(60) {
        *entry = (now, 0);
    }
    entry.1 = entry.1.saturating_add(add);
    if entry.1 > limit || (add == 0 && entry.1 >= limit) {
        return Err(60u64.saturating_sub(now.duration_since(entry.0).as_secs()).max(1));
    }
    Ok(())
}

/// Mints an API token record; returns (record, the token string to show once).
pub fn mint(subject: &str, project: &str, role: Role, ttl: Duration, created_by: &str, now: u64) -> (TokenRecord, String) {
    let token = new_token();
    let rec = TokenRecord {
        id: format!("tok_{}", tamp_domain::ids::random_hex(6)),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn auth(limit: u32) -> Auth {
        let meta = Arc::new(tamp_adapters_local::SqliteStore::open(std::path::Path::new(":memory:")).unwrap());
        let jwt = JwtConfig { issuer: "https://idp".into(), audience: "tamp".into(), keys: JwtKeys::Hs256(b"0123456789abcdef0123456789abcdef".to_vec()) };
        Auth::new(AuthConfig { jwt: Some(jwt), rate_per_min: 1000, failed_logins_per_min: limit }, meta)
    }

    fn bearer(claims: &serde_json::Value) -> HeaderMap {
        let t = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            claims,
            &jsonwebtoken::EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {t}").parse().unwrap());
        h
    }

    #[tokio::test]
    async fn jwt_not_before_is_checked() {
        let a = auth(20);
        // jsonwebtoken checks `exp` and `nbf` against the system clock.
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let claims = |nbf: u64| serde_json::json!({ "sub": "s", "iss": "https://idp", "aud": "tamp", "exp": wall + 7200, "nbf": nbf });
        assert!(a.authenticate(&bearer(&claims(wall - 10)), wall).await.is_ok());
        let e = a.authenticate(&bearer(&claims(wall + 3600)), wall).await.unwrap_err();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        assert!(e.detail.to_lowercase().contains("immature"), "{}", e.detail);
    }

    #[test]
    fn refused_credentials_lock_the_address_out() {
        let a = auth(20);
        for _ in 0..19 {
            a.login_failed("10.9.9.9");
            assert!(a.login_allowed("10.9.9.9").is_ok());
        }
        a.login_failed("10.9.9.9");
        let e = a.login_allowed("10.9.9.9").unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(e.retry_after.is_some_and(|s| (1..=60).contains(&s)));
        assert!(a.login_allowed("10.9.9.8").is_ok(), "another address is not affected");
    }
}
