//! The web UI: its browser tests (ui/tests/*.spec.ts: the whole user path, the policy
//! editor, WCAG 2.1 AA on every page in both themes, the wizard by keyboard alone, the
//! initial JavaScript budget) run by Playwright in Debian's headless Chromium against a real
//! `tamp serve`; and the checks that the UI's API types and the Python client cannot drift
//! from the API's OpenAPI document.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use crate::support::{TOKENS, cnn, root, serve, tamp};

/// A minimal OIDC issuer for the login test: discovery, an authorize endpoint that logs
/// "alice" in at once and redirects back with a code, and a token endpoint that gives an
/// RS256 access token only for the PKCE verifier whose S256 challenge came with that code.
fn oidc_issuer() -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let me = issuer.clone();
    let pem = std::fs::read(root().join("tests/fixtures/jwt-test-rsa.pem")).unwrap();
    std::thread::spawn(move || {
        let mut challenges: std::collections::HashMap<String, (String, String)> = std::collections::HashMap::new();
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut len = 0;
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap_or(0);
                if h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            let _ = reader.read_exact(&mut body);
            let target = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let form = |q: &str| -> std::collections::HashMap<String, String> {
                q.split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), percent_encoding::percent_decode_str(&v.replace('+', " ")).decode_utf8_lossy().into_owned()))
                    .collect()
            };
            let (status, ctype, extra, out) = match path {
                "/.well-known/openid-configuration" => (
                    "200 OK",
                    "application/json",
                    String::new(),
                    serde_json::json!({ "issuer": me, "authorization_endpoint": format!("{me}/authorize"), "token_endpoint": format!("{me}/token"), "jwks_uri": format!("{me}/jwks.json") }).to_string(),
                ),
                "/authorize" => {
                    let q = form(query);
                    if q.get("client_id").map(String::as_str) != Some("tamp-ui") || q.get("code_challenge_method").map(String::as_str) != Some("S256") || q.get("response_type").map(String::as_str) != Some("code") {
                        ("400 Bad Request", "text/plain", String::new(), format!("bad authorize request {q:?}"))
                    } else {
                        let code = format!("code{}", challenges.len());
                        challenges.insert(code.clone(), (q["code_challenge"].clone(), q["redirect_uri"].clone()));
                        ("302 Found", "text/plain", format!("Location: {}?code={code}&state={}\r\n", q["redirect_uri"], q["state"]), String::new())
                    }
                }
                "/token" => {
                    let f = form(&String::from_utf8_lossy(&body));
                    let expected = challenges.remove(f.get("code").map_or("", String::as_str));
                    let verifier = f.get("code_verifier").cloned().unwrap_or_default();
                    let challenge = {
                        use sha2::Digest;
                        let d = sha2::Sha256::digest(verifier.as_bytes());
                        let b64 = |b: &[u8]| {
                            const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
                            let mut s = String::new();
                            for c in b.chunks(3) {
                                let n = (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
                                for i in 0..=c.len() {
                                    s.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
                                }
                            }
                            s
                        };
                        b64(&d)
                    };
                    match expected {
                        Some((c, redirect)) if c == challenge && f.get("redirect_uri") == Some(&redirect) && f.get("grant_type").map(String::as_str) == Some("authorization_code") => {
                            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
                            let claims = serde_json::json!({ "sub": "alice", "iss": me, "aud": "tamp", "exp": now + 600, "tamp_roles": { "*": "admin" } });
                            let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
                            h.kid = Some("test-key-1".into());
                            let token = jsonwebtoken::encode(&h, &claims, &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap();
                            ("200 OK", "application/json", String::new(), serde_json::json!({ "access_token": token, "token_type": "Bearer", "expires_in": 600 }).to_string())
                        }
                        _ => ("400 Bad Request", "application/json", String::new(), r#"{"error":"invalid_grant"}"#.to_owned()),
                    }
                }
                _ => ("404 Not Found", "text/plain", String::new(), String::new()),
            };
            let mut s = stream;
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nAccess-Control-Allow-Origin: *\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{out}",
                out.len()
            );
        }
    });
    issuer
}

fn npx() -> Command {
    let ui = root().join("ui");
    assert!(ui.join("node_modules/.bin/playwright").exists(), "the UI's packages are not installed: run `make ui` (make test does)");
    let mut c = Command::new("npx");
    c.current_dir(ui).env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1");
    c
}

#[test]
fn the_openapi_document_and_the_ui_types_match_the_api() {
    let out = Command::new(tamp()).arg("openapi").output().unwrap();
    assert!(out.status.success());
    let committed = std::fs::read_to_string(root().join("ui/openapi.json")).unwrap();
    assert!(
        String::from_utf8(out.stdout).unwrap().trim() == committed.trim(),
        "ui/openapi.json is not what the API serves: run `make ui-client` and commit the result"
    );
    let tmp = tempfile::tempdir().unwrap();
    let fresh = tmp.path().join("schema.d.ts");
    let st = npx().args(["openapi-typescript", "openapi.json", "-o"]).arg(&fresh).status().unwrap();
    assert!(st.success());
    assert!(
        std::fs::read_to_string(&fresh).unwrap() == std::fs::read_to_string(root().join("ui/src/api/schema.d.ts")).unwrap(),
        "ui/src/api/schema.d.ts is stale: run `make ui-client` and commit the result"
    );
}

/// Every file under `dir`, relative, with its bytes.
fn tree(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "__pycache__" && n != ".ruff_cache" && !n.to_string_lossy().ends_with(".egg-info")) {
                    stack.push(p);
                }
            } else {
                out.push((p.strip_prefix(dir).unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_python_client_matches_the_openapi_document() {
    let venv = root().join(".venv-pyclient/bin");
    assert!(venv.join("openapi-python-client").exists(), "the client generator is not installed: run `make pyclient-tools` (make test does)");
    let tmp = tempfile::tempdir().unwrap();
    let path = format!("{}:{}", venv.display(), std::env::var("PATH").unwrap_or_default());
    let st = Command::new(venv.join("openapi-python-client"))
        .args(["generate", "--path", "ui/openapi.json", "--config", "scripts/pyclient.yaml", "--meta", "setup", "--output-path"])
        .arg(tmp.path().join("python"))
        .current_dir(root())
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let fresh = tree(&tmp.path().join("python"));
    let committed = tree(&root().join("clients/python"));
    let names = |t: &[(String, Vec<u8>)]| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&fresh), names(&committed), "clients/python is stale: run `make ui-client` and commit the result");
    for ((name, a), (_, b)) in fresh.iter().zip(&committed) {
        assert!(a == b, "clients/python/{name} is stale: run `make ui-client` and commit the result");
    }
}

#[test]
fn the_browser_tests_pass_against_a_real_tamp_serve() {
    let dist = root().join("ui/dist");
    assert!(dist.join("index.html").exists(), "the UI is not built: run `make ui` (make test does)");
    let s = serve(&["--ui-dir", dist.to_str().unwrap(), "--concurrency", "2"], &[]);
    let host = s.url.trim_start_matches("http://").to_owned();
    let token = TOKENS.lock().unwrap().iter().find(|(h, _)| *h == host).unwrap().1.clone();
    // Screenshots go to docs/ui/ when asked (TAMP_UI_SCREENSHOTS=docs/ui), else nowhere kept.
    let shots = tempfile::tempdir().unwrap();
    let shots = std::env::var("TAMP_UI_SCREENSHOTS").map_or_else(|_| shots.path().to_path_buf(), |d| root().join(d));
    let status = npx()
        .args(["playwright", "test", "--grep-invert", "@oidc"])
        .env("TAMP_URL", &s.url)
        .env("TAMP_TOKEN", token)
        .env("TAMP_CNN", cnn())
        .env("TAMP_SCREENSHOTS", shots)
        .status()
        .unwrap();
    assert!(status.success(), "the browser tests failed (their output is above; ui/test-results/ has the traces)");
}

/// The UI's OIDC login (authorization code + PKCE) against an issuer, and the API accepting
/// the access token it gets: the same credentials as the API, as on AWS.
#[test]
fn the_ui_logs_in_with_oidc_and_pkce() {
    let dist = root().join("ui/dist");
    assert!(dist.join("index.html").exists(), "the UI is not built: run `make ui` (make test does)");
    let issuer = oidc_issuer();
    let jwks = root().join("tests/fixtures/jwt-test-jwks.json");
    let s = serve(
        &[
            "--ui-dir",
            dist.to_str().unwrap(),
            "--jwt-issuer",
            &issuer,
            "--jwt-audience",
            "tamp",
            "--jwks",
            jwks.to_str().unwrap(),
            "--ui-oidc-issuer",
            &issuer,
            "--ui-oidc-client-id",
            "tamp-ui",
        ],
        &[],
    );
    let status = npx().args(["playwright", "test", "--grep", "@oidc"]).env("TAMP_URL", &s.url).env("TAMP_OIDC_ISSUER", &issuer).status().unwrap();
    assert!(status.success(), "the OIDC login test failed (output above)");
}
