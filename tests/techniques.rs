//! End-to-end tests of the compression techniques beyond PTQ on the reference models:
//! clustering, low-rank (SVD, Tucker-2), unstructured / 2:4 / structured channel / FFN-neuron
//! / attention-head pruning, pruning criteria and the sensitivity cache. Each runs
//! `tamp compress` and checks the artifacts with Python onnxruntime and onnx.checker.
//! Needs `make models venv` (the Makefile's `test` target does it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::models::*;
use crate::support::{root, tamp};

/// A shipped example recipe without its `fine_tune` lines: these tests check the passes
/// alone (tests/training.rs checks training).
fn without_training(dir: &Path, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(root().join(format!("configs/policy_examples/{name}.yaml"))).unwrap();
    let kept: Vec<&str> = text.lines().filter(|l| !l.trim_start().starts_with("fine_tune:")).collect();
    let path = dir.join(format!("{name}-no-training.yaml"));
    std::fs::write(&path, kept.join("\n") + "\n").unwrap();
    path
}

/// Weight clustering of the reference CNN (16 clusters per layer, then int8 on the clustered
/// model): the clustered candidate's coded artifact is ≥ 6× smaller than the fp32 file with
/// its top-1 drop reported, its weights take at most 16 values per layer once ONNX Runtime
/// folds them, the int8 step runs on it, and every output passes onnx.checker and loads in
/// Python onnxruntime; the same seed gives the same file.
#[test]
fn clustering_then_int8_on_the_reference_cnn() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model, eval) = reference_models().into_iter().find(|(n, ..)| n == "fmnist-resnet8").unwrap();
    let calib = model.with_file_name("calib.npz");
    let recipe = root().join("configs/policy_examples/cluster16.yaml");
    let (out, again) = (dir.path().join("out"), dir.path().join("again"));
    for o in [&out, &again] {
        let r = compress(&model, &recipe, &calib, &eval, o);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    let cands: serde_json::Value = candidates_json(&out);
    let list = cands["candidates"].as_array().unwrap();
    let clustered = list.iter().find(|c| c["technique"] == "clustering").expect("a clustering candidate");
    let d = &clustered["details"];
    assert!(d["coded_compression_ratio"].as_f64().unwrap() >= 6.0, "{d}");
    assert!(d["index_entropy_bits_per_weight"].as_f64().unwrap() <= 4.0 + 1e-9);
    assert!(clustered["metric_drop_pct"].as_f64().unwrap() < 2.0, "{clustered}");
    let int8 = list.iter().find(|c| c["technique"] == "ptq" && c["stage"] == 1).expect("int8 built on the clustered model");
    assert!(int8["metric_drop_pct"].as_f64().is_some());
    for c in list {
        let f = out.join(c["file"].as_str().unwrap());
        let check = run(Command::new(python()).arg(root().join("scripts/check_onnx.py")).arg(&f));
        assert!(check.status.success(), "{}: {}", f.display(), String::from_utf8_lossy(&check.stderr));
    }
    let file = clustered["file"].as_str().unwrap();
    assert_eq!(std::fs::read(out.join(file)).unwrap(), std::fs::read(again.join(file)).unwrap(), "clustering must be deterministic");
    let int8_ops = run(Command::new(python()).arg(root().join("scripts/check_onnx.py")).arg(out.join(int8["file"].as_str().unwrap())));
    let ops: serde_json::Value = serde_json::from_slice(&int8_ops.stdout).unwrap();
    // Most of the 9 convolutions run integer; which ones stay float for speed is timed
    // on the machine running the test, so the bar leaves room for a different CPU.
    assert!(ops["optimized_ops"]["QLinearConv"].as_u64().unwrap_or(0) >= 5, "the int8 step sees plain weights again: {ops}");

    // Per-channel codebooks (GatherElements + Reshape) load and run too.
    let per_channel = dir.path().join("per-channel.yaml");
    std::fs::write(
        &per_channel,
        "policy:\n  name: pc\n  stages:\n    - cluster: {clusters: 16, granularity: per_channel}\nobjective: size\nconstraints: {max_metric_drop_pct: 5}\n",
    )
    .unwrap();
    let pc_out = dir.path().join("pc");
    let r = compress(&model, &per_channel, &calib, &eval, &pc_out);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    check_onnx(pc_out.join("best.onnx"));
}

/// Truncated SVD of all-MiniLM-L6-v2's FFN layers at half their parameters: the factorised
/// model passes onnx.checker, runs in Python onnxruntime, halves those layers' parameters,
/// and reports its cosine similarity to fp32.
#[test]
fn svd_of_the_minilm_ffn_layers() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model, eval) = reference_models().into_iter().find(|(n, ..)| n == "all-minilm-l6-v2").unwrap();
    let recipe = dir.path().join("svd.yaml");
    std::fs::write(&recipe, "policy:\n  name: svd\n  stages:\n    - lowrank: {method: svd, target_ratio: 0.5, min_params: 500000}\nconstraints: {max_metric_drop_pct: 100}\nevaluation: {samples: 64, latency_runs: 5}\nobjective: size\n").unwrap();
    let out = dir.path().join("out");
    let r = compress(&model, &recipe, &eval, &eval, &out);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let cands: serde_json::Value = candidates_json(&out);
    let c = &cands["candidates"][0];
    let layers = c["details"]["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 12, "two FFN MatMuls per layer × 6: {}", c["details"]);
    let (before, after) = (c["details"]["params_before"].as_f64().unwrap(), c["details"]["params_after"].as_f64().unwrap());
    assert!((after / before - 0.5).abs() < 0.01, "{after} / {before}");
    let cosine = c["measured"]["value"].as_f64().unwrap();
    assert!(cosine > 0.3 && cosine < 1.0, "cosine reported: {cosine}");
    check_onnx(out.join(c["file"].as_str().unwrap()));
}

/// Tucker-2 of the reference CNN's k×k convolutions at half their parameters: three convs
/// per layer, fewer parameters and MACs, the outputs' cosine similarity and top-1 agreement
/// with fp32 reported; passes onnx.checker and loads in Python onnxruntime.
#[test]
fn tucker_of_the_reference_cnn() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model, eval) = reference_models().into_iter().find(|(n, ..)| n == "fmnist-resnet8").unwrap();
    let calib = model.with_file_name("calib.npz");
    let out = dir.path().join("out");
    let r = compress(&model, &without_training(dir.path(), "tucker_cnn"), &calib, &eval, &out);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let cands: serde_json::Value = candidates_json(&out);
    let c = &cands["candidates"][0];
    assert_eq!(c["mode"], "tucker2");
    let d = &c["details"];
    let layers = d["layers"].as_array().unwrap();
    assert!(layers.len() >= 5 && layers.iter().all(|l| l["ranks"].as_array().is_some_and(|r| r.len() == 2)), "{d}");
    let (before, after) = (d["params_before"].as_f64().unwrap(), d["params_after"].as_f64().unwrap());
    assert!(after <= 0.5 * before && after > 0.3 * before, "{after} / {before}");
    let cos = d["output_agreement"]["mean_cosine"].as_f64().unwrap();
    assert!(cos > 0.0 && cos < 1.0, "cosine reported: {cos}");
    assert!(d["output_agreement"]["top1_agreement"].as_f64().is_some());
    let macs = |v: &serde_json::Value| v["macs_per_sample"].as_u64().unwrap();
    assert!(macs(&c["measured"]) < macs(&cands["baseline"]), "fewer MACs");
    // Per-layer ranks from sensitivity curves: at least as many parameters go, less accuracy.
    let s = &cands["candidates"][1];
    assert_eq!(s["mode"], "tucker2/sensitivity");
    let removed = |d: &serde_json::Value| d["params_before"].as_f64().unwrap() - d["params_after"].as_f64().unwrap();
    assert!(removed(&s["details"]) >= 0.95 * removed(d), "{} vs {}", s["details"], d);
    assert!(s["measured"]["value"].as_f64().unwrap() > c["measured"]["value"].as_f64().unwrap());
    let file = out.join(c["file"].as_str().unwrap());
    check_onnx(&file);
}

/// Magnitude pruning of the reference CNN: unstructured at 60 % per layer (sensitivity
/// allocation beats uniform at the same number of zeros; the coded artifact shrinks) and
/// 2:4 (checked independently in Python: every four consecutive weights along each layer's
/// reduction axis hold at least two zeros); both pass onnx.checker and load in onnxruntime.
#[test]
fn unstructured_and_2of4_pruning_of_the_reference_cnn() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model, eval) = reference_models().into_iter().find(|(n, ..)| n == "fmnist-resnet8").unwrap();
    let calib = model.with_file_name("calib.npz");
    let out = dir.path().join("u");
    let r = compress(&model, &without_training(dir.path(), "sparse_unstructured"), &calib, &eval, &out);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let cands: serde_json::Value = candidates_json(&out);
    let list = cands["candidates"].as_array().unwrap();
    let find = |how: &str| list.iter().find(|c| c["mode"].as_str().unwrap_or_default().ends_with(how)).unwrap_or_else(|| panic!("no {how} candidate"));
    let (uniform, sens) = (find("uniform"), find("sensitivity"));
    let zeros = |c: &serde_json::Value| c["details"]["zeros"].as_u64().unwrap();
    assert!(zeros(sens) >= zeros(uniform), "same global amount at least");
    assert!(sens["measured"]["value"].as_f64().unwrap() > uniform["measured"]["value"].as_f64().unwrap());
    for c in [uniform, sens] {
        let d = &c["details"];
        assert!(d["achieved_sparsity"].as_f64().unwrap() >= 0.59, "{d}");
        assert!(d["coded_size_bytes"].as_f64().unwrap() < 0.6 * d["baseline_coded_size_bytes"].as_f64().unwrap(), "{d}");
        check_onnx(out.join(c["file"].as_str().unwrap()));
    }
    let out = dir.path().join("s24");
    let r = compress(&model, &without_training(dir.path(), "sparse_2of4"), &calib, &eval, &out);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    check_onnx(out.join("best.onnx"));
    let script = r#"
import sys, numpy as np, onnx
from onnx import numpy_helper
m = onnx.load(sys.argv[1])
inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
checked = 0
for n in m.graph.node:
    if n.op_type not in ("Conv", "Gemm", "MatMul") or n.input[1] not in inits or inits[n.input[1]].size < 256:
        continue
    w = inits[n.input[1]]
    trans_b = any(a.name == "transB" and a.i == 1 for a in n.attribute)
    rows = w.reshape(w.shape[0], -1) if n.op_type == "Conv" or trans_b else w.T
    k = rows.shape[1] // 4 * 4
    groups = rows[:, :k].reshape(rows.shape[0], -1, 4)
    assert ((groups == 0).sum(axis=2) >= 2).all(), n.name
    checked += 1
assert checked >= 6, checked
print(checked)
"#;
    let r = run(Command::new(python()).arg("-c").arg(script).arg(out.join("best.onnx")));
    assert!(r.status.success(), "2:4 pattern: {}", String::from_utf8_lossy(&r.stderr));
}

/// `tamp compress` of all-MiniLM-L6-v2 with `recipe` (its eval set as both data sets):
/// the temporary folder (kept alive), the output folder and candidates.json.
fn compress_minilm(recipe: &str) -> (tempfile::TempDir, PathBuf, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let (_, model, eval) = reference_models().into_iter().find(|(n, ..)| n == "all-minilm-l6-v2").unwrap();
    let recipe_path = dir.path().join("recipe.yaml");
    std::fs::write(&recipe_path, recipe).unwrap();
    let out = dir.path().join("out");
    let r = compress(&model, &recipe_path, &eval, &eval, &out);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let cands = candidates_json(&out);
    (dir, out, cands)
}

/// FFN-neuron pruning of all-MiniLM-L6-v2: six groups (one per encoder layer, 1536 neurons
/// each: the first MatMul's columns, its bias, the second MatMul's rows), 30 % removed,
/// fewer parameters and MACs; the model passes onnx.checker and runs in Python onnxruntime.
#[test]
fn ffn_neuron_pruning_of_minilm() {
    let (_dir, out, cands) = compress_minilm(
        "policy:\n  name: ffn\n  stages:\n    - pruning: {type: structured_channel, target_sparsity: 0.3, sensitivity: false}\nconstraints: {max_metric_drop_pct: 100}\nevaluation: {samples: 64, latency_runs: 5}\nobjective: size\n",
    );
    let c = &cands["candidates"][0];
    let d = &c["details"];
    let groups = d["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 6, "{d}");
    check_report_files(&out);
    assert!(groups.iter().all(|g| g["channels"] == 1536 && g["group"].as_str().unwrap().contains("intermediate")), "{d}");
    assert!(d["params_after"].as_u64().unwrap() < d["params_before"].as_u64().unwrap());
    let macs = |v: &serde_json::Value| v["macs_per_sample"].as_u64().unwrap();
    assert!(macs(&c["measured"]) < macs(&cands["baseline"]));
    check_onnx(out.join(c["file"].as_str().unwrap()));
}

/// Attention-head pruning of all-MiniLM-L6-v2: six self-attention blocks of 12 heads are
/// found, a quarter of the heads go (fewer parameters and MACs, each layer's head shapes
/// rewritten); the model passes onnx.checker and runs in Python onnxruntime.
#[test]
fn attention_head_pruning_of_minilm() {
    let (_dir, out, cands) = compress_minilm(
        "policy:\n  name: heads\n  stages:\n    - pruning: {type: attention_head, target_sparsity: 0.25, sensitivity: false}\nconstraints: {max_metric_drop_pct: 100}\nevaluation: {samples: 32, latency_runs: 3}\n",
    );
    let c = &cands["candidates"][0];
    let d = &c["details"];
    let blocks = d["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 6, "{d}");
    assert!(blocks.iter().all(|b| b["heads"] == 12 && b["head_dim"] == 32 && b["removed"] == 3), "{d}");
    assert!(d["params_after"].as_u64().unwrap() < d["params_before"].as_u64().unwrap());
    let macs = |v: &serde_json::Value| v["macs_per_sample"].as_u64().unwrap();
    assert!(macs(&c["measured"]) < macs(&cands["baseline"]));
    let cos = c["measured"]["value"].as_f64().unwrap();
    assert!(cos > 0.5 && cos < 1.0, "cosine reported: {cos}");
    check_onnx(out.join(c["file"].as_str().unwrap()));
}

/// `criterion` changes which channels go (the shipped L2 recipe prunes other channels than the
/// default), and the sensitivity cache (`TAMP_CACHE_DIR`) is keyed by every setting that
/// changes a curve: the same recipe again reuses its curves, a changed criterion or
/// `round_to` measures fresh ones in a new file, and nothing is written outside the cache and
/// `--out`.
#[test]
fn pruning_criteria_rank_channels_differently_and_curves_are_cached_by_setting() {
    use tamp_domain::results::Details;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (_, model, eval) = reference_models().into_iter().find(|(n, ..)| n == "fmnist-resnet8").unwrap();
    let calib = model.with_file_name("calib.npz");
    let recipe = |name: &str, criterion: &str, round_to: usize| {
        let p = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&p, format!("policy:\n  name: {name}\n  stages:\n    - pruning: {{type: structured_channel, target_sparsity: 0.3, criterion: {criterion}, round_to: {round_to}, levels: [0.25, 0.5], sensitivity_rows: 128}}\nconstraints: {{max_metric_drop_pct: 100}}\nevaluation: {{samples: 512, latency_runs: 5}}\n")).unwrap();
        p
    };
    let run_one = |recipe: &Path, out: &str| {
        let o = run(Command::new(tamp())
            .env("TAMP_CACHE_DIR", &cache)
            .arg("compress")
            .arg(&model)
            .arg("--recipe")
            .arg(recipe)
            .arg("--data")
            .arg(&calib)
            .arg("--eval")
            .arg(&eval)
            .arg("--out")
            .arg(dir.path().join(out)));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (outcome(&dir.path().join(out)), String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
    };
    let curves = || std::fs::read_dir(cache.join("sensitivity")).map(|d| d.count()).unwrap_or(0);
    let (combined, log) = run_one(&recipe("c", "combined", 8), "c");
    assert_eq!(curves(), 1, "one curve file");
    assert!(log.contains("(0 cached)") && log.contains("cached in"), "the run says where it caches: {log}");
    let (_, log) = run_one(&recipe("c", "combined", 8), "c2");
    assert_eq!(curves(), 1, "the same settings reuse the curves");
    assert!(log.contains("(12 cached)"), "{log}");
    let (l2, _) = run_one(&recipe("l2", "l2", 8), "l2");
    assert_eq!(curves(), 2, "a changed criterion measures fresh curves");
    run_one(&recipe("r4", "combined", 4), "r4");
    assert_eq!(curves(), 3, "a changed round_to measures fresh curves");
    // Same channel counts removed (same levels), different channels: different weights.
    let uniform = |o: &tamp_domain::results::Outcome| o.candidates.iter().find(|c| c.mode.ends_with("/uniform")).cloned().unwrap();
    let (a, b) = (uniform(&combined), uniform(&l2));
    let removed = |c: &tamp_domain::results::Candidate| match &c.details {
        Some(Details::ChannelPruning(d)) => d.removed_channels,
        other => panic!("channel pruning details expected: {other:?}"),
    };
    assert_eq!(removed(&a), removed(&b));
    assert_ne!(a.measured.sha256, b.measured.sha256, "the criterion changed which channels go");
    // Nothing outside --out and the cache.
    let mut top: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    top.sort();
    assert_eq!(top, ["c", "c.yaml", "c2", "cache", "l2", "l2.yaml", "r4", "r4.yaml"]);
}

/// Structured channel pruning of the reference CNN at 30 % of its prunable channels: whole
/// channels go (residual groups pruned together), the models have fewer parameters, pass
/// onnx.checker and load in Python onnxruntime, and the sensitivity-allocated candidate keeps
/// more top-1 than uniform pruning removing the same number of channels (seeded). Latency
/// is measured by `make bench-compress`, not asserted here.
#[test]
fn structured_pruning_of_the_reference_cnn() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model, eval) = reference_models().into_iter().find(|(n, ..)| n == "fmnist-resnet8").unwrap();
    let calib = model.with_file_name("calib.npz");
    let out = dir.path().join("out");
    let r = compress(&model, &without_training(dir.path(), "prune30"), &calib, &eval, &out);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let cands: serde_json::Value = candidates_json(&out);
    let list = cands["candidates"].as_array().unwrap();
    let find = |mode: &str| list.iter().find(|c| c["mode"].as_str().unwrap_or_default().ends_with(mode)).unwrap_or_else(|| panic!("no {mode} candidate"));
    let (uniform, sens) = (find("uniform"), find("sensitivity"));
    for c in [uniform, sens] {
        let d = &c["details"];
        assert!(d["params_after"].as_u64().unwrap() < d["params_before"].as_u64().unwrap(), "{d}");
        let macs = |v: &serde_json::Value| v["macs_per_sample"].as_u64().unwrap();
        assert!(macs(&c["measured"]) < macs(&cands["baseline"]), "fewer MACs (FLOPs) reported");
        assert!(d["groups"].as_array().unwrap().len() >= 6, "residual groups found: {d}");
        check_onnx(out.join(c["file"].as_str().unwrap()));
    }
    assert_eq!(uniform["details"]["removed_channels"], sens["details"]["removed_channels"], "same global ratio");
    let (u, s) = (uniform["measured"]["value"].as_f64().unwrap(), sens["measured"]["value"].as_f64().unwrap());
    assert!(s > u, "sensitivity allocation {s} should beat uniform {u}");
    assert!(sens["details"]["sensitivity"].as_array().is_some_and(|c| !c.is_empty()), "the curves are in the report");
    // Iterative: two steps, evaluated between them; parameters fall step by step.
    let recipe = dir.path().join("it.yaml");
    std::fs::write(&recipe, "policy:\n  name: it\n  stages:\n    - pruning: {type: structured_channel, target_sparsity: 0.3, schedule: iterative, steps: 2, sensitivity_rows: 128}\nconstraints: {max_metric_drop_pct: 100}\nevaluation: {samples: 256, latency_runs: 5}\n").unwrap();
    let r = compress(&model, &recipe, &calib, &eval, &dir.path().join("it"));
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let cands: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("it/candidates.json")).unwrap()).unwrap();
    let traj = cands["candidates"][0]["details"]["trajectory"].as_array().unwrap().clone();
    assert_eq!(traj.len(), 3, "{traj:?}");
    assert!(traj.windows(2).all(|w| w[1]["params"].as_u64() < w[0]["params"].as_u64()), "{traj:?}");
    // The PRD's prune-then-fine-tune recipe without training rows is refused, naming them,
    // not run without its fine-tuning (tests/training.rs runs it with them).
    let r = compress(&model, &root().join("configs/policy_examples/prune50_finetune.yaml"), &calib, &eval, &dir.path().join("ft"));
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("--train") && err.contains("fine-tunes"), "{err}");
}
