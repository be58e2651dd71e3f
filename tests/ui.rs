//! The web UI: its browser tests (ui/tests/*.spec.ts: the whole user path, the policy
//! editor, WCAG 2.1 AA on every page in both themes, the wizard by keyboard alone, the
//! initial JavaScript budget) run by Playwright in Debian's headless Chromium against a real
//! `tamp serve`; and the checks that the UI's API types cannot drift from the API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use support::{TOKENS, cnn, root, serve, tamp};

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
        .args(["playwright", "test"])
        .env("TAMP_URL", &s.url)
        .env("TAMP_TOKEN", token)
        .env("TAMP_CNN", cnn())
        .env("TAMP_SCREENSHOTS", shots)
        .status()
        .unwrap();
    assert!(status.success(), "the browser tests failed (their output is above; ui/test-results/ has the traces)");
}
