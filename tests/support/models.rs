//! Helpers the end-to-end tests on the reference models share: the venv's Python, the
//! models `make models` builds, `tamp compress`, and the checks on its output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{root, tamp};

pub fn python() -> PathBuf {
    let py = root().join(".venv/bin/python");
    assert!(py.exists(), "{} missing; run `make venv` (make test does)", py.display());
    py
}

/// Every reference model under `models/` (the three `make models` builds must be there): (name, model, eval set).
pub fn reference_models() -> Vec<(String, PathBuf, PathBuf)> {
    let dir = root().join("models");
    for name in ["fmnist-resnet8", "efficientnet-lite0", "all-minilm-l6-v2", "all-minilm-l6-v2-medium"] {
        let m = dir.join(name).join("model.onnx");
        assert!(m.exists(), "reference model {} missing; run `make models`", m.display());
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let p = entry.path();
        if p.join("model.onnx").exists() && p.join("eval.npz").exists() {
            found.push((entry.file_name().to_string_lossy().into_owned(), p.join("model.onnx"), p.join("eval.npz")));
        }
    }
    found.sort();
    found
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

pub fn candidates_json(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("candidates.json")).unwrap()).unwrap()
}

/// Runs `scripts/check_onnx.py` (onnx.checker + Python onnxruntime) on a model; it must pass.
pub fn check_onnx(model: impl AsRef<std::ffi::OsStr>) -> Output {
    let check = run(Command::new(python()).arg(root().join("scripts/check_onnx.py")).arg(model));
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    check
}

/// `tamp compress` without the report's analysis (the report tests run it; the rest need
/// only the candidates, and the analysis would add minutes on the larger models).
pub fn compress(model: &Path, recipe: &Path, calib: &Path, eval: &Path, out: &Path) -> Output {
    compress_with(model, recipe, calib, eval, out, &["--no-analysis"])
}

/// `tamp compress` with extra flags.
pub fn compress_with(model: &Path, recipe: &Path, calib: &Path, eval: &Path, out: &Path, flags: &[&str]) -> Output {
    run(Command::new(tamp())
        .arg("compress")
        .args(flags)
        .arg(model)
        .arg("--recipe")
        .arg(recipe)
        .arg("--data")
        .arg(calib)
        .arg("--eval")
        .arg(eval)
        .arg("--out")
        .arg(out))
}

/// The run's results as the shared types (what reports, the API and the UI read).
pub fn outcome(out: &Path) -> tamp_domain::results::Outcome {
    serde_json::from_slice(&std::fs::read(out.join("candidates.json")).unwrap()).unwrap()
}

/// The report `tamp compress` writes beside its outputs: both documents, the PDF under 2 MB,
/// the summary and the comparison table in each.
pub fn check_report_files(out: &Path) {
    let html = std::fs::read_to_string(out.join("report.html")).unwrap_or_else(|e| panic!("report.html in {}: {e}", out.display()));
    let pdf = std::fs::read(out.join("report.pdf")).unwrap();
    assert!(pdf.starts_with(b"%PDF-") && pdf.len() < 2 << 20, "report.pdf: {} bytes", pdf.len());
    assert!(html.contains("Recommendation:") && html.contains("<h2>Baseline vs candidates</h2>") && html.contains("<svg"), "report.html sections");
}
