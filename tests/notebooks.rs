//! The example notebooks (notebooks/: PTQ only, prune + fine-tune, distill) run headless
//! with nbclient against a real `tamp serve`, through the Python client generated from the
//! API's OpenAPI document (clients/python). A cell that raises fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::process::Command;

use crate::support::{TOKENS, cnn, root, serve};

#[test]
fn every_example_notebook_runs_against_tamp_serve() {
    let s = serve(&["--concurrency", "1"], &[]);
    let host = s.url.trim_start_matches("http://").to_owned();
    let token = TOKENS.lock().unwrap().iter().find(|(h, _)| *h == host).unwrap().1.clone();
    let python = support::models::python();
    let notebooks: Vec<_> = ["ptq_only", "prune_finetune", "distill"].iter().map(|n| root().join(format!("notebooks/{n}.ipynb"))).collect();
    let out = Command::new(python)
        .arg(root().join("scripts/run_notebooks.py"))
        .args(&notebooks)
        .env("TAMP_URL", &s.url)
        .env("TAMP_TOKEN", token)
        .env("TAMP_CNN", cnn())
        .env("TAMP_ROOT", root())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "a notebook failed:\n{text}");
    for n in ["ptq_only", "prune_finetune", "distill"] {
        assert!(text.contains(&format!("== {n}.ipynb: ok")), "{text}");
    }
    assert!(text.contains("top1: 89.25 ->"), "the PTQ notebook reports the metric beside the original's:\n{text}");
}
