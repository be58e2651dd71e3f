//! End-to-end tests of the `distill` stage inside `tamp compress`: a 3-layer MiniLM student
//! (every other layer of the teacher) distilled on unlabeled text, a half-width ResNet-8
//! student distilled with labels (the same seed gives the same bytes), and the refusals.
//! Budgets are small; `make bench-distill` runs the full ones.
//! Needs `make models venv` (the Makefile's `test` target does it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::models::*;
use crate::support::{root, tamp};
use tamp_onnx::Model;

fn compress_distill(model: &str, recipe: &str, dir: &Path, name: &str) -> (Output, PathBuf) {
    let m = root().join("models").join(model);
    let r = dir.join(format!("{name}.yaml"));
    std::fs::write(&r, recipe).unwrap();
    let out = dir.join(name);
    let mut cmd = Command::new(tamp());
    cmd.arg("compress").arg(m.join("model.onnx")).arg("--recipe").arg(&r);
    cmd.arg("--data").arg(m.join("calib.npz")).arg("--eval").arg(m.join("eval.npz")).arg("--train").arg(m.join("train.npz"));
    // MiniLM's evaluation runs at ~35 rows/s on 2 cores: 200 rows keep the test short.
    let samples = if model.starts_with("all-minilm") { "200" } else { "1000" };
    cmd.args(["--samples", samples, "--runs", "20"]);
    (run(cmd.arg("--out").arg(&out)), out)
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn softmaxes(path: &Path) -> usize {
    Model::load(path).unwrap().graph().node.iter().filter(|n| n.op_type.as_deref() == Some("Softmax")).count()
}

/// Every other layer of MiniLM kept: the untrained student (the comparison row) and the
/// distilled one, both loadable by ONNX Runtime with 3 attention blocks; distillation on
/// unlabeled text raises the cosine to the teacher. MiniLM's own recipe: each kept layer's
/// attention maps (KL) and its output's value relation matched to the same layer of the
/// teacher, with in-batch contrastive distillation of the embeddings beside the cosine.
#[test]
fn minilm_three_layer_student_learns_from_its_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = "policy:\n  name: d\n  stages:\n    - distill:\n        student: {layers: {keep_every: 2}}\n        fine_tune:\n          steps: 8\n          batch_size: 32\n          lr: 0.0005\n          seed: 2\n          attention: [{student: softmax_63}, {student: softmax_131, weight: 0.5}]\n          features: [{student: layernormalization_70, loss: relation}]\n          contrastive: {weight: 0.1, temperature: 0.05}\nconstraints: {max_metric_drop_pct: 100}\n";
    let (o, out) = compress_distill("all-minilm-l6-v2", recipe, dir.path(), "mini3");
    ok(&o);
    let c = outcome(&out).candidates;
    let untrained = c.iter().find(|c| c.id == "s0-distill-untrained").expect("the untrained student");
    let distilled = c.iter().find(|c| c.id == "s0-distill").expect("the distilled student");
    let t = distilled.training.as_ref().unwrap();
    assert_eq!(t.steps, 8);
    assert!(t.loss.ends_with("+features+attention+contrastive"), "{t:?}");
    assert_eq!(t.metric_before, Some(untrained.measured.value));
    eprintln!("3-layer MiniLM: untrained {:.4}, distilled {:.4}", untrained.measured.value, distilled.measured.value);
    assert!(distilled.measured.value > untrained.measured.value + 0.01, "{} vs {}", distilled.measured.value, untrained.measured.value);
    assert!(distilled.compression_ratio > 1.25, "{}", distilled.compression_ratio);
    for f in [&untrained.file, &distilled.file] {
        assert_eq!(softmaxes(&out.join(f)), 3);
        check_onnx(out.join(f));
    }
}

/// A half-width ResNet-8 student distilled with labels, soft targets and FitNets hints (two
/// block outputs, half as wide as the teacher's, matched through learned 1×1 projections);
/// the same recipe and seed give a byte-identical student, and a hint naming a value the
/// student does not compute is refused before training.
#[test]
fn half_width_resnet_student_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = "policy:\n  name: d\n  stages:\n    - distill:\n        student: {width: 0.5}\n        untrained_candidate: false\n        fine_tune: {steps: 40, batch_size: 64, lr: 0.002, temperature: 4, distill_weight: 0.7, max_rows: 4096, seed: 5, features: [{student: add_17, weight: 0.5}, {student: add_35, loss: cosine}]}\nconstraints: {max_metric_drop_pct: 100}\n";
    let (o, a) = compress_distill("fmnist-resnet8", recipe, dir.path(), "a");
    ok(&o);
    let (o, b) = compress_distill("fmnist-resnet8", recipe, dir.path(), "b");
    ok(&o);
    let (ca, cb) = (&outcome(&a).candidates[0], &outcome(&b).candidates[0]);
    assert_eq!(ca.id, "s0-distill");
    let t = ca.training.as_ref().unwrap();
    assert!(t.loss.contains("kl") && t.loss.ends_with("+features"), "{t:?}");
    assert!(ca.measured.value > t.metric_before.unwrap() + 10.0, "{} from {:?}", ca.measured.value, t.metric_before);
    assert_eq!(std::fs::read(a.join(&ca.file)).unwrap(), std::fs::read(b.join(&cb.file)).unwrap(), "the same seed gives the same student");
    check_onnx(a.join(&ca.file));
    let typo = recipe.replace("student: add_35", "student: add_36");
    let (o, _) = compress_distill("fmnist-resnet8", &typo, dir.path(), "typo");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("the student computes no value 'add_36'"), "{err}");
}

/// A student that does not fit the teacher, or layers that do not exist, fail before any
/// training with the reason.
#[test]
fn mismatched_students_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cnn = root().join("models/fmnist-resnet8/model.onnx");
    let recipe = format!("policy:\n  name: d\n  stages:\n    - distill: {{student: {{file: {}}}}}\n", cnn.display());
    let (o, out) = compress_distill("all-minilm-l6-v2", &recipe, dir.path(), "file");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("the student reads") && err.contains("teacher inputs"), "{err}");
    assert!(!out.exists(), "a failed run writes no output folder");
    let recipe = "policy:\n  name: d\n  stages:\n    - distill: {student: {layers: {keep: [0, 2]}}}\n";
    let (o, _) = compress_distill("all-minilm-l6-v2", recipe, dir.path(), "layers");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("last layer") && err.contains("[1, 3, 5]"), "{err}");
}

/// Depthwise-separable ResNet-8: every 3×3 Conv with more than one input channel becomes
/// depthwise + pointwise (fewer MACs by far), and distillation lifts the student above its
/// rank-1 initialisation; ONNX Runtime loads it.
#[test]
fn depthwise_separable_student_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = "policy:\n  name: d\n  stages:\n    - distill:\n        student: {depthwise: {}}\n        fine_tune: {steps: 40, batch_size: 64, lr: 0.002, temperature: 4, distill_weight: 0.7, max_rows: 4096, seed: 5}\nconstraints: {max_metric_drop_pct: 100}\n";
    let (o, out) = compress_distill("fmnist-resnet8", recipe, dir.path(), "dw");
    ok(&o);
    let oc = outcome(&out);
    let c = oc.candidates.iter().find(|c| c.id == "s0-distill").unwrap();
    let base = oc.baseline.macs_per_sample.unwrap() as f64;
    let macs = c.measured.macs_per_sample.unwrap() as f64;
    assert!(macs < base / 3.0, "MACs {macs} vs {base}");
    let groups = Model::load(out.join(&c.file)).unwrap().graph().node.iter().filter(|n| tamp_onnx::graph::attr_int(n, "group", 1) > 1).count();
    assert_eq!(groups, 6, "6 depthwise Convs (the 1-channel stem and the 1×1 shortcuts stay)");
    let before = c.training.as_ref().unwrap().metric_before.unwrap();
    assert!(c.measured.value > before + 20.0, "{} from {before}", c.measured.value);
    check_onnx(out.join(&c.file));
}

/// Early exits on ResNet-8: two heads (after the first two residual blocks), the curve over
/// thresholds (shares of rows per exit sum to 1; the highest threshold sends nearly every row
/// to the full model and keeps its top-1), and the cascade, one ONNX file with an If that
/// ONNX Runtime loads and that scores like the full model at batch 64. The heads pool to a
/// 3×3 grid (a padded AveragePool, trained through), and the cascade timed row by row answers
/// as the curve's per-exit predictions say it will.
#[test]
fn early_exit_cascade_and_its_curve() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = "policy:\n  name: e\n  stages:\n    - early_exit:\n        thresholds: [0.5, 0.9, 0.9999]\n        head_channels: 16\n        head_grid: 3\n        fine_tune: {steps: 30, batch_size: 64, lr: 0.01, max_rows: 4096, seed: 5}\nconstraints: {max_metric_drop_pct: 0.6}\n";
    let (o, out) = compress_distill("fmnist-resnet8", recipe, dir.path(), "ee");
    ok(&o);
    let oc = outcome(&out);
    let c = &oc.candidates[0];
    assert_eq!((c.id.as_str(), c.mode.as_str()), ("s0-early-exit", "cascade"));
    let Some(tamp_domain::results::Details::EarlyExit(d)) = &c.details else { panic!("{:?}", c.details) };
    assert_eq!(d.exits.len(), 2);
    assert_eq!(d.latency_ms.len(), 3);
    assert_eq!(d.curve.len(), 3);
    for p in &d.curve {
        assert!((p.answered.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{p:?}");
    }
    let strict = d.curve.last().unwrap();
    assert!(strict.answered[2] > 0.9 && (strict.top1 - oc.baseline.value).abs() < 0.5, "{strict:?}");
    assert!(d.curve.iter().any(|p| p.threshold == d.threshold));
    let ifs = Model::load(out.join(&c.file)).unwrap().graph().node.iter().filter(|n| n.op_type.as_deref() == Some("If")).count();
    assert_eq!(ifs, 1, "one If at the top level (the second nests in its else branch)");
    let m = d.measured.as_ref().expect("the cascade is timed");
    assert!(m.rows >= 500 && m.latency_ratio > 0.0, "{m:?}");
    assert!((m.top1 - m.curve_top1).abs() <= 0.3, "the cascade's own answers against the curve's: {m:?}");
    let text = std::fs::read_to_string(out.join("candidates.json")).unwrap();
    assert!(text.contains("\"average_latency_ms\""), "the timing is in candidates.json");
    check_onnx(out.join(&c.file));
    assert!(c.measured.value >= oc.baseline.value - 1.0, "{} vs {}", c.measured.value, oc.baseline.value);
}

/// The service distils from files the recipe names: `teacher.onnx` and `student.onnx`
/// uploaded beside the model (the stage worker fetches them and resolves them as `tamp
/// compress` resolves them against the recipe); a missing file and a path out of the upload
/// folder fail the job with the reason, naming the key to upload to.
#[test]
fn the_service_distils_from_uploaded_teacher_and_student_files() {
    let server = support::serve(&[], &[]);
    let url = server.url.clone();
    let model = std::fs::read(support::cnn().join("model.onnx")).unwrap();
    let recipe = |teacher: &str| {
        format!(
            "policy:\n  name: files\n  stages:\n    - distill:\n        teacher: {teacher}\n        student: {{file: students/student.onnx}}\n        untrained_candidate: false\n        fine_tune: {{steps: 5, batch_size: 64, lr: 0.0005, max_rows: 1024, seed: 1}}\nconstraints: {{max_metric_drop_pct: 100}}\nevaluation: {{samples: 500}}\n"
        )
    };
    let upload = |version: &str, teacher: &str, with_student: bool| {
        let up = server.data.path().join(format!("store/uploads/demo/files/{version}"));
        for f in ["model.onnx", "calib.npz", "eval.npz", "train.npz"] {
            support::upload_file(&up, f, &std::fs::read(support::cnn().join(f)).unwrap());
        }
        support::upload_file(&up, "teacher.onnx", &model);
        if with_student {
            support::upload_file(&up.join("students"), "student.onnx", &model);
        }
        support::upload_file(&up, "recipe.yaml", recipe(teacher).as_bytes());
    };
    let job_of = |n: usize, version: &str| -> serde_json::Value {
        let jobs = support::wait_for_jobs(&url, n, std::time::Duration::from_secs(60));
        let id = jobs.iter().find(|j| j["version"] == version).unwrap()["id"].as_str().unwrap().to_owned();
        support::wait_for_job(&url, &id, std::time::Duration::from_secs(300))
    };
    upload("v1", "teacher.onnx", true);
    let done = job_of(1, "v1");
    assert_eq!(done["state"], "succeeded", "{done}");
    // A training stage is planned for the GPU queue; with no GPU here (or a build without
    // CUDA) it trained on the CPU, and the stage's record says so.
    assert_eq!(done["stages"][0]["device"], "gpu", "{done}");
    let warned = done["stages"][0]["output"]["warnings"][0].as_str().unwrap_or_default().to_owned();
    assert!(warned.contains("trained on the CPU: no GPU"), "{done}");
    upload("v2", "teacher.onnx", false);
    let missing = job_of(2, "v2");
    assert_eq!(missing["state"], "failed", "{missing}");
    let why = missing["reason"].as_str().unwrap();
    assert!(why.contains("the recipe's student 'students/student.onnx' was not uploaded: upload it to uploads/demo/files/v2/students/student.onnx"), "{why}");
    upload("v3", "../v1/teacher.onnx", true);
    let escaped = job_of(3, "v3");
    assert_eq!(escaped["state"], "failed", "{escaped}");
    assert!(escaped["reason"].as_str().unwrap().contains("must be a path inside the upload folder"), "{escaped}");
}
