//! The report as a document (issue: reports people decide from): for each reference model a
//! PTQ job and a pruning job write `report.html` and `report.pdf`; the HTML opens in headless
//! Chromium and the PDF turns into PNG pages with `pdftoppm`, both showing charts and tables
//! (not blank pages); robustness is baseline vs int8 at three seeded levels and reproducible;
//! a one-class calibration set is flagged, naming layers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::models::{python, reference_models, run};
use crate::support::{root, tamp};

/// A one-stage recipe; `extra` adds `evaluation` keys, `rows` is the analysis sample.
fn recipe(dir: &Path, name: &str, stage: &str, extra: &str, rows: usize) -> PathBuf {
    let p = dir.join(format!("{name}.yaml"));
    let text = format!(
        "policy:\n  name: {name}\n  stages:\n    - {stage}\nconstraints: {{max_metric_drop_pct: 1.0}}\nevaluation: {{latency_runs: 30{extra}}}\nreport: {{analysis_rows: {rows}, qps: 500}}\n"
    );
    std::fs::write(&p, text).unwrap();
    p
}

/// `tamp compress` with the analysis (and `flags`); it must succeed.
fn compress(model: &Path, recipe: &Path, calib: &Path, eval: &Path, out: &Path) -> Output {
    compress_with(model, recipe, calib, eval, out, &[])
}

fn compress_with(model: &Path, recipe: &Path, calib: &Path, eval: &Path, out: &Path, flags: &[&str]) -> Output {
    let r = support::models::compress_with(model, recipe, calib, eval, out, flags);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    r
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// `pdftotext` of the whole PDF.
fn pdf_text(pdf: &Path) -> String {
    let r = run(Command::new("pdftotext").arg("-layout").arg(pdf).arg("-"));
    assert!(r.status.success(), "pdftotext: {}", String::from_utf8_lossy(&r.stderr));
    String::from_utf8_lossy(&r.stdout).into_owned()
}

/// Checks one output folder's report: both files, the PDF's size, and the sections and charts
/// in each. Returns the recommendation line of the PDF.
fn check_report(out: &Path) -> String {
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let pdf = out.join("report.pdf");
    let size = std::fs::metadata(&pdf).unwrap().len();
    assert!(size < 2 << 20, "the PDF is {size} bytes (bar: under 2 MB)");
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http") && !html.contains("<script"), "self-contained, no network");
    let text = pdf_text(&pdf);
    let analysed = out.join("analysis.json").exists();
    let sections: &[&str] = if analysed {
        &["Summary", "Baseline vs candidates", "Cost projection", "Robustness", "Cohorts", "Calibration representativeness", "Lineage"]
    } else {
        &["Summary", "Baseline vs candidates", "Cost projection", "Analysis", "Lineage"]
    };
    for section in sections {
        assert!(html.contains(&format!("<h2>{section}</h2>")), "HTML lacks {section}");
        assert!(text.contains(section), "PDF lacks {section}:\n{text}");
    }
    let (svgs, tables) = if analysed { (3, 4) } else { (2, 2) };
    assert!(html.matches("<svg").count() >= svgs && html.matches("<table").count() >= tables, "charts and tables in the HTML");
    let m = json(&out.join("manifest.json"));
    let sha = m["inputs"][0]["sha256"].as_str().unwrap();
    let raw = run(Command::new("pdftotext").arg("-raw").arg(&pdf).arg("-"));
    assert!(html.contains(sha) && String::from_utf8_lossy(&raw.stdout).replace(char::is_whitespace, "").contains(sha), "lineage carries the model's sha256");
    text.lines().find(|l| l.contains("Recommendation:")).unwrap_or_default().trim().to_owned()
}

/// A PTQ job (analysed on `rows` rows) and a pruning job on one reference model; returns the
/// two output folders. On the large models the pruning job skips the analysis (its report
/// says so): the PTQ job covers it, and CI time is the budget.
fn ptq_and_prune(name: &str, ptq: &str, prune: &str, extra: &str, rows: usize) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (_, model, eval) = reference_models().into_iter().find(|(n, ..)| n == name).unwrap();
    let calib = model.with_file_name("calib.npz");
    let (a, b) = (dir.path().join("ptq"), dir.path().join("prune"));
    compress(&model, &recipe(dir.path(), "ptq", ptq, extra, rows), &calib, &eval, &a);
    let flags: &[&str] = if name == "fmnist-resnet8" { &[] } else { &["--no-analysis"] };
    compress_with(&model, &recipe(dir.path(), "prune", prune, extra, rows), &calib, &eval, &b, flags);
    (dir, a, b)
}

fn robustness_levels(out: &Path) -> serde_json::Value {
    let a = json(&out.join("analysis.json"));
    let r = a["robustness"].as_array().unwrap();
    let mut shifts: Vec<&str> = r.iter().map(|s| s["shift"].as_str().unwrap()).collect();
    shifts.dedup();
    for s in &shifts {
        assert_eq!(r.iter().filter(|x| x["shift"] == *s).count(), 3, "three levels of {s}");
    }
    a["robustness"].clone()
}

#[test]
fn the_reference_cnn_reports_ptq_and_pruning_and_robustness_is_reproducible() {
    let (_d, ptq, prune) = ptq_and_prune(
        "fmnist-resnet8",
        // One candidate, every layer int8: the second run must make the same model (the
        // speed-chosen float layers are a timing on this machine).
        "ptq: {calibration: {method: kl, samples: 256}, float_slow_layers: false}",
        "pruning: {type: structured_channel, target_sparsity: 0.3, sensitivity: true, levels: [0.1, 0.3, 0.5], sensitivity_rows: 256}",
        "",
        256,
    );
    assert!(check_report(&ptq).contains("Ship"), "int8 ResNet-8 keeps top-1");
    // 30 % of the channels without fine-tuning loses most of the accuracy: don't ship, and why.
    let verdict = check_report(&prune);
    assert!(verdict.contains("Don't ship"), "{verdict}");
    let html = std::fs::read_to_string(prune.join("report.html")).unwrap();
    assert!(html.contains("metric over budget") && html.contains("Per-layer sensitivity"), "the flag and the sensitivity chart");
    // Robustness: baseline vs int8 at three levels per shift; a second run reports the same.
    let first = robustness_levels(&ptq);
    assert_eq!(first.as_array().unwrap().len(), 12, "noise, brightness, contrast, blur × 3");
    let a = json(&ptq.join("analysis.json"));
    assert!(a["calibration"]["score"].as_f64().unwrap() > 0.9, "a random calibration sample is representative: {}", a["calibration"]);
    let (_, model, eval) = reference_models().into_iter().find(|(n, ..)| n == "fmnist-resnet8").unwrap();
    let again = ptq.with_file_name("again");
    compress(&model, &ptq.parent().unwrap().join("ptq.yaml"), &model.with_file_name("calib.npz"), &eval, &again);
    assert_eq!(robustness_levels(&again), first, "seeded shifts give the same metrics");
    // `tamp report` re-renders a folder, with another traffic assumption.
    let r = run(Command::new(tamp()).arg("report").arg(&ptq).arg("--qps").arg("200000"));
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(pdf_text(&ptq.join("report.pdf")).contains("Serving 200000 requests/s"));
}

/// EfficientNet-Lite0's pruning job (its PTQ job's report is checked by e2e's CLE test,
/// MiniLM's pruning report by the FFN-pruning test): both documents, without the analysis.
#[test]
fn efficientnet_reports_a_pruning_job() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model, eval) = reference_models().into_iter().find(|(n, ..)| n == "efficientnet-lite0").unwrap();
    let out = dir.path().join("prune");
    let r = recipe(dir.path(), "prune", "pruning: {type: structured_channel, target_sparsity: 0.1, sensitivity: false}", ", samples: 32", 16);
    compress_with(&model, &r, &model.with_file_name("calib.npz"), &eval, &out, &["--no-analysis"]);
    check_report(&out);
}

/// MiniLM's int8 (dynamic) job with the analysis: text shifts at three levels each.
#[test]
fn minilm_reports_int8_with_text_shifts() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model, eval) = reference_models().into_iter().find(|(n, ..)| n == "all-minilm-l6-v2").unwrap();
    let out = dir.path().join("ptq");
    compress(&model, &recipe(dir.path(), "ptq", "ptq: {mode: dynamic}", ", samples: 64", 32), &eval, &eval, &out);
    check_report(&out);
    let r = robustness_levels(&out);
    let shifts: Vec<&str> = r.as_array().unwrap().iter().map(|s| s["shift"].as_str().unwrap()).collect();
    assert!(shifts.contains(&"token_dropout") && shifts.contains(&"word_swap"), "{shifts:?}");
    // Stronger token dropout costs the baseline cosine.
    let drop: Vec<f64> = r.as_array().unwrap().iter().filter(|s| s["shift"] == "token_dropout").map(|s| s["baseline"].as_f64().unwrap()).collect();
    assert!(drop[0] > drop[2], "{drop:?}");
}

/// A calibration set drawn from one class only: a low representativeness score, naming the
/// layers, and a caveat in the summary.
#[test]
fn a_one_class_calibration_set_is_flagged_naming_layers() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model, eval) = reference_models().into_iter().find(|(n, ..)| n == "fmnist-resnet8").unwrap();
    let one = dir.path().join("one.npz");
    let script = "import sys, numpy as np\nd = np.load(sys.argv[1])\nnp.savez(sys.argv[2], input=d['input'][d['labels'] == 0][:256])\n";
    assert!(run(Command::new(python()).arg("-c").arg(script).arg(&eval).arg(&one)).status.success());
    let out = dir.path().join("out");
    // Every layer int8 (no float-for-speed choice, which depends on the CPU): the deep layers
    // are then quantized on every machine, and their ranges are what one class misjudges.
    compress(&model, &recipe(dir.path(), "ptq", "ptq: {calibration: {method: kl, samples: 256}, float_slow_layers: false}", "", 256), &one, &eval, &out);
    let a = json(&out.join("analysis.json"));
    let score = a["calibration"]["score"].as_f64().unwrap();
    assert!(score < 0.8, "one class only: {score}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let flag = html.lines().find(|l| l.contains("calibration not representative")).expect("the flag");
    assert!(flag.contains("relu_55") || flag.contains("globalaveragepool_57"), "names the deep layers: {flag}");
    assert!(check_report(&out).contains("caveats"));
}

fn png_pixels(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let ch = info.color_type.samples();
    let rgb: Vec<u8> = buf[..info.buffer_size()].chunks(ch).flat_map(|p| [p[0], p[1.min(ch - 1)], p[2.min(ch - 1)]]).collect();
    (info.width, info.height, rgb)
}

/// Share of pixels that are not near-white, and how many of them are coloured (charts).
fn ink(rgb: &[u8]) -> (f64, usize) {
    let px: Vec<&[u8]> = rgb.chunks(3).collect();
    let dark = px.iter().filter(|p| p.iter().any(|c| *c < 200)).count();
    let coloured = px.iter().filter(|p| p.iter().max().unwrap() - p.iter().min().unwrap() > 60).count();
    (dark as f64 / px.len() as f64, coloured)
}

/// The HTML in headless Chromium (a screenshot) and the PDF through `pdftoppm`: both show
/// tables and coloured charts, and no page is blank. `TAMP_UPDATE_DOCS=1` copies one of each
/// to `docs/`.
#[test]
fn the_report_renders_in_chromium_and_pdftoppm() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model, eval) = reference_models().into_iter().find(|(n, ..)| n == "fmnist-resnet8").unwrap();
    let out = dir.path().join("fmnist-resnet8");
    let shipped = root().join("configs/policy_examples/ptq_8bit.yaml");
    compress(&model, &shipped, &model.with_file_name("calib.npz"), &eval, &out);
    let shot = dir.path().join("report-html.png");
    let r = run(Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,2600"])
        .arg(format!("--user-data-dir={}", dir.path().join("chromium").display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", out.join("report.html").display())));
    assert!(shot.exists(), "chromium wrote no screenshot: {}", String::from_utf8_lossy(&r.stderr));
    let (w, h, rgb) = png_pixels(&shot);
    let (dark, coloured) = ink(&rgb);
    assert!((w, h) == (1200, 2600) && dark > 0.03 && coloured > 2000, "the page shows content and charts: {w}×{h}, ink {dark:.3}, coloured {coloured}");
    let prefix = dir.path().join("page");
    let r = run(Command::new("pdftoppm").args(["-r", "60", "-png"]).arg(out.join("report.pdf")).arg(&prefix));
    assert!(r.status.success(), "pdftoppm: {}", String::from_utf8_lossy(&r.stderr));
    let mut pages: Vec<PathBuf> =
        std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.path()).filter(|p| p.to_string_lossy().contains("/page-")).collect();
    pages.sort();
    assert!(pages.len() >= 3, "{} pages", pages.len());
    let mut charts = 0;
    for p in &pages {
        let (_, _, rgb) = png_pixels(p);
        let (dark, coloured) = ink(&rgb);
        assert!(dark > 0.01, "{} is blank ({dark:.4})", p.display());
        charts += usize::from(coloured > 300);
    }
    assert!(charts >= 2, "coloured charts on at least two pages, found {charts}");
    if std::env::var_os("TAMP_UPDATE_DOCS").is_some() {
        std::fs::copy(&shot, root().join("docs/report-html.png")).unwrap();
        std::fs::copy(&pages[0], root().join("docs/report-pdf-page1.png")).unwrap();
    }
}
