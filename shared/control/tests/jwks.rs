//! JWKS key rotation: a JWT signed with a key the cached set lacks makes the server fetch
//! the set again (once per refresh floor, however many unknown `kid`s arrive), and a key the
//! IdP publishes after startup is accepted without a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use tamp_adapters_local::SqliteStore;
use tamp_control::auth::{Auth, AuthConfig, Jwks, JwtConfig, JwtKeys};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Serves `body` at /jwks.json, counting requests.
async fn idp(body: Arc<Mutex<String>>, hits: Arc<AtomicUsize>) -> String {
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let (body, hits) = (body.clone(), hits.clone());
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                ([("content-type", "application/json")], body.lock().unwrap().clone())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn bearer(kid: &str) -> HeaderMap {
    let pem = std::fs::read(fixtures().join("jwt-test-rsa.pem")).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({ "sub": "bob", "iss": "https://idp.example", "aud": "tamp", "exp": now + 600, "tamp_roles": { "*": "viewer" } });
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some(kid.into());
    let token = jsonwebtoken::encode(&h, &claims, &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    headers
}

#[tokio::test]
async fn a_rotated_key_is_fetched_on_its_first_token_and_unknown_kids_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let rotated = std::fs::read_to_string(fixtures().join("jwt-test-jwks.json")).unwrap();
    let body = Arc::new(Mutex::new(r#"{"keys": []}"#.to_owned()));
    let hits = Arc::new(AtomicUsize::new(0));
    let url = idp(body.clone(), hits.clone()).await;
    let floor = Duration::from_millis(300);
    let keys = JwtKeys::Jwks(Arc::new(Jwks::remote(&url, floor).await.unwrap()));
    let config = AuthConfig { jwt: Some(JwtConfig { issuer: "https://idp.example".into(), audience: "tamp".into(), keys }), ..AuthConfig::default() };
    let auth = Auth::new(config, Arc::new(SqliteStore::open(&dir.path().join("meta.db")).unwrap()));
    assert_eq!(hits.load(Ordering::SeqCst), 1, "fetched at startup");

    // The IdP rotates to test-key-1 after the server started.
    *body.lock().unwrap() = rotated;
    let e = auth.authenticate(&bearer("test-key-1"), 0).await.unwrap_err();
    assert!(e.detail.contains("fetched 0 s ago"), "within the floor: {}", e.detail);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    tokio::time::sleep(floor + Duration::from_millis(50)).await;
    let p = auth.authenticate(&bearer("test-key-1"), 0).await.unwrap();
    assert_eq!(p.actor, "jwt:bob");
    assert_eq!(hits.load(Ordering::SeqCst), 2, "one refresh");
    auth.authenticate(&bearer("test-key-1"), 0).await.unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 2, "a known kid needs no fetch");

    // A flood of made-up kids: one fetch per floor.
    tokio::time::sleep(floor + Duration::from_millis(50)).await;
    for i in 0..20 {
        assert!(auth.authenticate(&bearer(&format!("forged-{i}")), 0).await.is_err());
    }
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}
