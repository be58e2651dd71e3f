//! The web UI's files, served by `tamp serve` beside the API: `/` (index.html), `/assets/…`
//! (the hashed bundle, cached for a year) and `/config.json` (where the API is and how to log
//! in; on AWS the Terraform module writes the same file to the UI's bucket). The UI uses hash
//! routes (`/#/jobs/…`), so its pages never shadow an API path. Files are served by
//! tower-http's `ServeDir`; none of these routes needs a credential (the UI asks for one).

use std::path::{Path, PathBuf};

use axum::Json;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::SetResponseHeaderLayer;

/// The content security policy of the UI's pages: scripts and styles from the origin only
/// (Mantine sets inline style attributes), reports framed from blob: URLs, and no origin to
/// talk to but this one and the OIDC issuer (discovery and the code exchange).
fn csp(issuer: Option<&str>) -> String {
    let issuer = issuer.map(|i| format!(" {}", i.trim_end_matches('/'))).unwrap_or_default();
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; frame-src blob:; connect-src 'self'{issuer}; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    )
}

/// Where the built UI is: `--ui-dir`, else `TAMP_UI_DIR`, else `ui/dist` here, else the
/// source tree this binary was built from.
pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
    let candidates = [
        explicit.map(Path::to_path_buf),
        std::env::var_os("TAMP_UI_DIR").map(PathBuf::from),
        Some(PathBuf::from("ui/dist")),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../ui/dist")),
    ];
    candidates.into_iter().flatten().find(|d| d.join("index.html").is_file())
}

/// The UI's routes; without a built UI, `/` says how to build it.
pub fn routes(dir: Option<&Path>, config: serde_json::Value) -> axum::Router {
    let policy = HeaderValue::from_str(&csp(config["auth"]["issuer"].as_str())).unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'"));
    let config_route = get(move || {
        let c = config.clone();
        async move { Json(c) }
    });
    let router = axum::Router::new().route("/config.json", config_route);
    let router = match dir {
        Some(dir) => {
            let assets = axum::Router::new()
                .fallback_service(ServeDir::new(dir.join("assets")))
                .layer(SetResponseHeaderLayer::overriding(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable")));
            router.route_service("/", ServeFile::new(dir.join("index.html"))).nest("/assets", assets)
        }
        None => router.route(
            "/",
            get(|| async {
                Html("<!doctype html><html lang=en><title>Tamp</title><p>The web UI is not built here: run <code>make ui</code> (or pass <code>tamp serve --ui-dir</code>). The API is at this address; its OpenAPI document is <a href=/openapi.json>/openapi.json</a>.</p></html>")
                    .into_response()
            }),
        ),
    };
    router.layer(SetResponseHeaderLayer::if_not_present(header::CONTENT_SECURITY_POLICY, policy))
}
