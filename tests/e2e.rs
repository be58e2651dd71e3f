//! End-to-end: the `tamp` binary on the reference models, checked against Python
//! onnxruntime (same library version) on the same data; and bad input giving one-line errors.
//! Needs `make models venv` (the Makefile's `test` target does it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::Path;
use std::process::{Command, Output};

use crate::support::models::*;
use crate::support::{root, tamp};

fn npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    // .npy v1: magic(6) version(2) header_len(2) header, then little-endian data.
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
    assert!(header.contains("'<f4'") && header.contains("'fortran_order': False"), "{header}");
    let shape_txt = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape: Vec<usize> = shape_txt.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().unwrap()).collect();
    let data = bytes[10 + hlen..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    (shape, data)
}

#[test]
fn eval_agrees_with_python_onnxruntime_on_every_reference_model() {
    let dir = tempfile::tempdir().unwrap();
    for (name, model, data) in reference_models() {
        let ours = dir.path().join(format!("{name}-tamp.npy"));
        let theirs = dir.path().join(format!("{name}-ort.npy"));
        let out = run(Command::new(tamp())
            .arg("eval")
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .args(["--json", "--threads", "1", "--runs", "5", "--throughput", ""])
            .arg("--dump-outputs")
            .arg(&ours));
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let py = run(Command::new(python()).arg(root().join("scripts/ort_reference.py")).arg(&model).arg(&data).arg("--out").arg(&theirs));
        assert!(py.status.success(), "{name}: {}", String::from_utf8_lossy(&py.stderr));
        let reference: serde_json::Value = serde_json::from_slice(&py.stdout).unwrap();
        let (s1, a) = npy_f32(&ours);
        let (s2, b) = npy_f32(&theirs);
        assert_eq!(s1, s2, "{name}: output shapes differ");
        let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(max <= 1e-5, "{name}: outputs differ by {max}");
        if let Some(top1) = reference.get("top1") {
            assert_eq!(report["metrics"]["top1"].as_f64(), top1.as_f64(), "{name}: top-1 must agree exactly");
        }
        assert_eq!(report["dataset"]["evaluated_rows"], reference["rows"]);
    }
}

/// Load → save through Tamp's IR leaves a real model's outputs bit-identical in ONNX Runtime.
#[test]
fn ir_round_trip_keeps_reference_model_outputs() {
    let dir = tempfile::tempdir().unwrap();
    for (name, model, data) in reference_models() {
        let resaved = dir.path().join(format!("{name}.onnx"));
        let loaded = tamp_onnx::Model::load(&model).unwrap();
        loaded.save(&resaved, &tamp_onnx::SaveOptions::default()).unwrap();
        assert_eq!(tamp_onnx::Model::load(&resaved).unwrap(), loaded, "{name}: IR round trip must be lossless");
        let mut outs = Vec::new();
        for (tag, path) in [("orig", &model), ("resaved", &resaved)] {
            let npy = dir.path().join(format!("{name}-{tag}.npy"));
            let out = run(Command::new(tamp())
                .arg("eval")
                .arg(path)
                .arg("--data")
                .arg(&data)
                .args(["--samples", "256", "--json", "--runs", "1", "--throughput", ""])
                .arg("--dump-outputs")
                .arg(&npy));
            assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
            outs.push(npy_f32(&npy));
        }
        assert_eq!(outs[0], outs[1], "{name}: outputs changed after the round trip");
    }
}

#[test]
fn eval_writes_a_complete_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model, data) = reference_models().into_iter().find(|(n, ..)| n == "fmnist-resnet8").unwrap();
    let baseline = dir.path().join("baseline.json");
    let out = run(Command::new(tamp())
        .arg("eval")
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .args(["--samples", "500", "--seed", "3", "--metric", "top1", "--metric", "top5", "--runs", "20", "--throughput", "1,16"])
        .arg("--baseline")
        .arg(&baseline));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    for needle in ["top1", "latency P50 / P95 / P99", "throughput (batch 16)", "size on disk"] {
        assert!(table.contains(needle), "table lacks {needle}:\n{table}");
    }
    let b: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&baseline).unwrap()).unwrap();
    assert_eq!(b["seed"], 3);
    assert_eq!(b["dataset"]["evaluated_rows"], 500);
    assert_eq!(b["model"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(b["dataset"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(b["onnxruntime"]["version"], "1.31.1");
    assert!(b["metrics"]["top1"].as_f64().unwrap() > 60.0, "a trained model, not chance");
    assert!(b["metrics"]["top5"].as_f64().unwrap() >= b["metrics"]["top1"].as_f64().unwrap());
    assert!(b["cpu"]["logical_cores"].as_u64().unwrap() >= 1);
    assert!(b["memory"]["peak_rss_mb"].as_f64().unwrap() > 0.0);
}

fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success(), "expected failure, got success: {}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "want one line, got:\n{err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

fn make_npz(path: &Path, script: &str) {
    let code = format!("import numpy as np\n{script}\n");
    let out = run(Command::new(python()).arg("-c").arg(code).arg(path));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn bad_inputs_give_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model, data) = reference_models().into_iter().find(|(n, ..)| n == "fmnist-resnet8").unwrap();

    let corrupt = dir.path().join("corrupt.onnx");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&corrupt, &bytes[..bytes.len() / 3]).unwrap();
    let e = one_line_error(&run(Command::new(tamp()).arg("eval").arg(&corrupt).arg("--data").arg(&data)));
    assert!(e.contains("corrupt.onnx") && e.contains("not a valid ONNX model"), "{e}");
    let e = one_line_error(&run(Command::new(tamp()).arg("inspect").arg(&corrupt)));
    assert!(e.contains("not a valid ONNX model"), "{e}");

    let missing = dir.path().join("missing.npz");
    make_npz(&missing, "import sys; np.savez(sys.argv[1], pixels=np.zeros((4,1,28,28), np.float32), labels=np.zeros(4, np.int64))");
    let e = one_line_error(&run(Command::new(tamp()).arg("eval").arg(&model).arg("--data").arg(&missing)));
    assert!(e.contains("missing input 'input'"), "{e}");

    let nan = dir.path().join("nan.npz");
    make_npz(&nan, "import sys; np.savez(sys.argv[1], input=np.full((4,1,28,28), np.nan, np.float32), labels=np.zeros(4, np.int64))");
    let e = one_line_error(&run(Command::new(tamp()).arg("eval").arg(&model).arg("--data").arg(&nan)));
    assert!(e.contains("NaN") && e.contains("'input'"), "{e}");

    let e = one_line_error(&run(Command::new(tamp()).arg("eval").arg(&model).arg("--data").arg(dir.path().join("absent.npz"))));
    assert!(e.contains("absent.npz"), "{e}");

    let e = one_line_error(&run(Command::new(tamp()).arg("eval").arg(&model).arg("--data").arg(&data).args(["--metric", "cosine"])));
    assert!(e.contains("cosine") && e.contains("float reference values"), "{e}");
}

#[test]
fn inspect_reports_the_reference_cnn() {
    let (_, model, _) = reference_models().into_iter().find(|(n, ..)| n == "fmnist-resnet8").unwrap();
    let out = run(Command::new(tamp()).arg("inspect").arg(&model).arg("--json"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ops"]["Conv"], 9);
    assert_eq!(v["ops"]["BatchNormalization"], 9);
    assert!(v["runtime_error"].is_null());
    assert_eq!(v["inputs"][0]["name"], "input");
    assert_eq!(v["inputs"][0]["elem"], "FLOAT");
    assert!(v["params"].as_u64().unwrap() > 50_000);
}

/// One streaming calibration pass over the reference CNN's calibration set serves min-max
/// and entropy requests for every ReLU output; ranges are consistent with ReLU semantics.
#[test]
fn calibration_statistics_on_the_reference_cnn() {
    use tamp_engine::calibrate::{Method, StatRequest, collect};
    let (_, model_path, _) = reference_models().into_iter().find(|(n, ..)| n == "fmnist-resnet8").unwrap();
    let model = tamp_onnx::Model::load(&model_path).unwrap();
    let data = tamp_engine::Dataset::load(model_path.with_file_name("calib.npz")).unwrap();
    let relus: Vec<String> = model.graph().node.iter().filter(|n| n.op_type.as_deref() == Some("Relu")).map(|n| n.output[0].clone()).collect();
    assert_eq!(relus.len(), 7);
    let requests: Vec<StatRequest> = relus
        .iter()
        .flat_map(|v| [StatRequest { value: v.clone(), method: Method::MinMax }, StatRequest { value: v.clone(), method: Method::Entropy }])
        .collect();
    let indices = data.sample(256, 0);
    let stats = collect(&model, &data, &indices, &requests, 64, 2048, &tamp_engine::SessionConfig::default()).unwrap();
    assert_eq!(stats.len(), 7);
    for (name, s) in &stats {
        assert_eq!(s.min, 0.0, "{name}: ReLU output minimum");
        assert!(s.max > 0.0);
        let mm = s.range(Method::MinMax).unwrap();
        let kl = s.range(Method::Entropy).unwrap();
        assert!(kl.max > 0.0 && kl.max <= mm.max + 1e-6, "{name}: entropy range {kl:?} vs min-max {mm:?}");
        assert_eq!(s.histogram.as_ref().unwrap().total(), s.count);
    }
}

/// BN folding is exact up to float rounding on a real model (differential through ORT).
#[test]
fn batch_norm_folding_keeps_outputs() {
    use tamp_engine::passes::FoldBatchNorm;
    let (_, model_path, data_path) = reference_models().into_iter().find(|(n, ..)| n == "fmnist-resnet8").unwrap();
    let model = tamp_onnx::Model::load(&model_path).unwrap();
    let folded = tamp_onnx::patch::run_to_fixpoint(&model, &[&FoldBatchNorm], 4).unwrap();
    let count = |m: &tamp_onnx::Model| m.graph().node.iter().filter(|n| n.op_type.as_deref() == Some("BatchNormalization")).count();
    assert_eq!((count(&model), count(&folded)), (9, 0));
    let data = tamp_engine::Dataset::load(&data_path).unwrap();
    let batch = data.select(&(0..64).collect::<Vec<_>>()).unwrap();
    let inputs: Vec<(&str, &tamp_onnx::TensorValue)> = batch.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let cfg = tamp_engine::SessionConfig::default();
    let a = tamp_engine::Session::from_model(&model, &cfg).unwrap().run(&inputs).unwrap();
    let b = tamp_engine::Session::from_model(&folded, &cfg).unwrap().run(&inputs).unwrap();
    let (tamp_onnx::TensorValue::F32(a), tamp_onnx::TensorValue::F32(b)) = (&a[0].1, &b[0].1) else { panic!("float logits") };
    let max = a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(max < 1e-3, "folded logits differ by {max}");
}

/// `tamp quantize` on the reference CNN: loads in Python onnxruntime and passes the onnx
/// checker, ORT's optimized graph runs integer kernels, ≥ 99 % of the fp32 top-1 is kept,
/// and the same inputs and seed give a byte-identical model.
#[test]
fn int8_ptq_of_the_reference_cnn() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model, data) = reference_models().into_iter().find(|(n, ..)| n == "fmnist-resnet8").unwrap();
    let calib = model.with_file_name("calib.npz");
    let quantize = |out: &Path, method: &str| {
        let o = run(Command::new(tamp()).arg("quantize").arg(&model).arg("--data").arg(&calib).arg("--out").arg(out).args([
            "--method",
            method,
            "--samples",
            "256",
            "--seed",
            "4",
        ]));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let (q1, q2) = (dir.path().join("q1.onnx"), dir.path().join("q2.onnx"));
    quantize(&q1, "minmax");
    quantize(&q2, "minmax");
    assert_eq!(std::fs::read(&q1).unwrap(), std::fs::read(&q2).unwrap(), "PTQ must be deterministic");

    let check = check_onnx(&q1);
    let ops: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    // The 1-channel stem stays float where ORT's QLinearConv measures slower there (a timing:
    // 8 or 9 integer convolutions); the other 8 are always integer.
    let convs = ops["optimized_ops"]["QLinearConv"].as_u64().unwrap_or(0);
    assert!(convs == 8 || convs == 9, "integer convolutions: {ops}");
    let (everywhere, report) = (dir.path().join("all.onnx"), dir.path().join("all.json"));
    let o = run(Command::new(tamp()).arg("quantize").arg(&model).arg("--data").arg(&calib).arg("--out").arg(&everywhere).arg("--report").arg(&report).args([
        "--samples",
        "64",
        "--int8-everywhere",
    ]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ops: serde_json::Value = serde_json::from_slice(&check_onnx(&everywhere).stdout).unwrap();
    assert_eq!(ops["optimized_ops"]["QLinearConv"].as_u64().unwrap_or(0), 9, "--int8-everywhere: {ops}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["float_for_speed"], serde_json::json!([]), "{r}");
    let o = run(Command::new(tamp())
        .arg("quantize")
        .arg(&model)
        .arg("--data")
        .arg(&calib)
        .arg("--out")
        .arg(&everywhere)
        .arg("--report")
        .arg(&report)
        .args(["--samples", "64"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Which layers ORT runs slower in int8 is a timing (here the 1-channel stem, when the
    // machine is quiet; under a loaded CI run sometimes none): the test checks that the
    // decision and the artifact agree, and that each float layer says why with its times.
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let float = r["float_for_speed"].as_array().unwrap().len();
    assert!(float <= 1, "at most the stem stays float: {r}");
    let ops: serde_json::Value = serde_json::from_slice(&check_onnx(&everywhere).stdout).unwrap();
    assert_eq!(ops["optimized_ops"]["QLinearConv"].as_u64().unwrap_or(0) as usize, 9 - float, "float layers and integer convolutions agree: {ops}");
    if float == 1 {
        assert!(String::from_utf8_lossy(&o.stdout).contains("slower in int8"), "{}", String::from_utf8_lossy(&o.stdout));
        let why = r["float_for_speed_reasons"].to_string();
        assert!(why.contains("int8") && why.contains("fp32") && why.contains("µs"), "{r}");
    }

    let top1 = |m: &Path| {
        let o = run(Command::new(tamp()).arg("eval").arg(m).arg("--data").arg(&data).args(["--json", "--runs", "1", "--throughput", ""]));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["metrics"]["top1"].as_f64().unwrap()
    };
    let (fp32, int8) = (top1(&model), top1(&q1));
    assert!(int8 >= 0.99 * fp32, "int8 top-1 {int8} vs fp32 {fp32}");
    assert!(std::fs::metadata(&q1).unwrap().len() * 3 < std::fs::metadata(&model).unwrap().len());
    for method in ["entropy", "percentile", "mse"] {
        let q = dir.path().join(format!("{method}.onnx"));
        quantize(&q, method);
        let t = top1(&q);
        assert!(t >= 0.98 * fp32, "{method}: int8 top-1 {t} vs fp32 {fp32}");
    }
    // int8 activations, asymmetric and TensorRT-style symmetric: valid, loadable, accurate.
    for flag in ["--int8-activations", "--symmetric-activations"] {
        let q = dir.path().join("s8.onnx");
        let o = run(Command::new(tamp()).arg("quantize").arg(&model).arg("--data").arg(&calib).arg("--out").arg(&q).args(["--samples", "256", flag]));
        assert!(o.status.success(), "{flag}: {}", String::from_utf8_lossy(&o.stderr));
        check_onnx(&q);
        let t = top1(&q);
        assert!(t >= 0.99 * fp32, "{flag}: top-1 {t} vs fp32 {fp32}");
    }
}

/// The data-free-quantization pre-passes on EfficientNet-Lite0 (seeded, deterministic):
/// cross-layer equalization and bias correction are reported (pairs, corrected layers) and
/// raise per-channel int8's top-1 agreement with fp32 over the same recipe without them;
/// the model keeps its integer kernels. Asymmetric weights (uint8 + zero points) load and run.
#[test]
fn equalization_and_bias_correction_on_efficientnet() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model, eval) = reference_models().into_iter().find(|(n, ..)| n == "efficientnet-lite0").unwrap();
    let calib = model.with_file_name("calib.npz");
    let recipe = |name: &str, extra: &str| {
        let p = dir.path().join(format!("{name}.yaml"));
        // Every layer quantized: which ones ONNX Runtime runs slower in int8 is a timing on
        // this machine, and this test is about the weights, not the speed rule.
        std::fs::write(&p, format!("policy:\n  name: {name}\n  stages:\n    - ptq:\n        float_slow_layers: false\n        calibration: {{method: percentile, percentile: 99.99, samples: 128}}\n{extra}constraints: {{max_metric_drop_pct: 100}}\nevaluation: {{latency_runs: 3}}\n")).unwrap();
        p
    };
    let top1 = |name: &str, extra: &str| -> serde_json::Value {
        let out = dir.path().join(name);
        let r = compress(&model, &recipe(name, extra), &calib, &eval, &out);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let cands: serde_json::Value = candidates_json(&out);
        let mut c = cands["candidates"][0].clone();
        c["path"] = serde_json::json!(out.join(c["file"].as_str().unwrap()));
        c
    };
    let plain = top1("plain", "        bias_correction: false\n");
    check_report_files(&dir.path().join("plain"));
    let dfq = top1("dfq", "        cross_layer_equalization: true\n        bias_correction: true\n");
    let pre = &dfq["details"]["pre_passes"];
    assert!(pre["cross_layer_equalization"].as_array().is_some_and(|p| !p.is_empty()), "{pre}");
    assert!(pre["bias_correction"].as_array().is_some_and(|l| l.len() > 40), "{pre}");
    let (a, b) = (plain["measured"]["value"].as_f64().unwrap(), dfq["measured"]["value"].as_f64().unwrap());
    assert!(b > a, "CLE + bias correction {b} should beat plain per-channel {a}");
    let check = check_onnx(dfq["path"].as_str().unwrap());
    let ops: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert!(ops["optimized_ops"]["QLinearConv"].as_u64().unwrap_or(0) > 40, "integer convolutions kept: {ops}");
    // Asymmetric per-tensor weights on the small CNN: uint8 weights with zero points, loadable.
    let (_, cnn, cnn_eval) = reference_models().into_iter().find(|(n, ..)| n == "fmnist-resnet8").unwrap();
    let out = dir.path().join("asym");
    let r =
        compress(&cnn, &recipe("asym", "        symmetric: false\n        per_channel_weights: false\n"), &cnn.with_file_name("calib.npz"), &cnn_eval, &out);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let script = "import sys, onnx\nm = onnx.load(sys.argv[1])\nw = [t for t in m.graph.initializer if t.name.endswith('.q') and t.data_type == onnx.TensorProto.UINT8]\nassert len(w) >= 9, len(w)\n";
    let r = run(Command::new(python()).arg("-c").arg(script).arg(out.join("best.onnx")));
    assert!(r.status.success(), "uint8 weights: {}", String::from_utf8_lossy(&r.stderr));
    check_onnx(out.join("best.onnx"));
}

/// `candidates.json` of a `tamp compress` output folder.
fn sha256_hex(path: &Path) -> String {
    let o = run(Command::new("sha256sum").arg(path));
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap().to_owned()
}

/// `tamp compress` with the shipped 8-bit recipe: candidates, the chosen artifact with its
/// metadata (integer kernels in ORT's optimized graph), a manifest whose hashes match the
/// files; a bad recipe fails with the key and line and leaves the earlier output intact.
#[test]
fn compress_the_reference_cnn_with_the_shipped_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model, eval) = reference_models().into_iter().find(|(n, ..)| n == "fmnist-resnet8").unwrap();
    let calib = model.with_file_name("calib.npz");
    let recipe = root().join("configs/policy_examples/ptq_8bit.yaml");
    let out = dir.path().join("out");
    let o = compress(&model, &recipe, &calib, &eval, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("baseline (fp32)") && stdout.contains("chosen:"), "{stdout}");

    let cands: serde_json::Value = candidates_json(&out);
    let base = cands["baseline"]["value"].as_f64().unwrap();
    let chosen = cands["candidates"].as_array().unwrap().iter().find(|c| c["id"] == cands["chosen"]).unwrap();
    assert!(chosen["measured"]["value"].as_f64().unwrap() >= 0.99 * base, "{chosen}");
    assert!(chosen["compression_ratio"].as_f64().unwrap() > 3.0, "{chosen}");

    let best: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("best.json")).unwrap()).unwrap();
    assert_eq!(best["runtime"], "onnxruntime");
    assert_eq!(best["sha256"].as_str().unwrap(), sha256_hex(&out.join("best.onnx")));
    // Most of the 9 convolutions run integer; which ones stay float for speed is timed
    // on the machine running the test, so the bar leaves room for a different CPU.
    assert!(best["compatibility"]["onnxruntime"]["integer_kernels"]["QLinearConv"].as_u64().unwrap() >= 5, "{best}");
    assert_eq!(best["opset"]["ai.onnx"], 17);

    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    for f in manifest["outputs"].as_array().unwrap() {
        assert_eq!(f["sha256"].as_str().unwrap(), sha256_hex(&out.join(f["path"].as_str().unwrap())), "{f}");
    }
    let roles: Vec<&str> = manifest["inputs"].as_array().unwrap().iter().map(|f| f["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["model", "calibration", "evaluation", "recipe"]);
    assert_eq!(manifest["inputs"][0]["sha256"].as_str().unwrap(), sha256_hex(&model));

    // A recipe with a typo: one-line error naming key and line; the earlier output survives.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, std::fs::read_to_string(&recipe).unwrap().replace("per_channel_weights", "per_chanel_weights")).unwrap();
    let before = std::fs::read(out.join("best.onnx")).unwrap();
    let e = one_line_error(&compress(&model, &bad, &calib, &eval, &out));
    assert!(e.contains("per_chanel_weights") && e.contains("line 10") && e.contains("bad.yaml"), "{e}");
    // Data that fails mid-run (NaN in the evaluation set) leaves it intact too.
    let nan = dir.path().join("nan.npz");
    make_npz(&nan, "import sys; np.savez(sys.argv[1], input=np.full((4,1,28,28), np.nan, np.float32), labels=np.zeros(4, np.int64))");
    let e = one_line_error(&compress(&model, &recipe, &calib, &nan, &out));
    assert!(e.contains("NaN"), "{e}");
    assert_eq!(std::fs::read(out.join("best.onnx")).unwrap(), before);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains("partial")).collect();
    assert!(leftovers.is_empty(), "staging folders left behind");
}

/// Dynamic int8 on all-MiniLM-L6-v2: cosine ≥ 0.985 to fp32 (measured 0.990), ≥ 3.9× smaller, ORT runs it on
/// its fused integer kernels, the output passes onnx.checker, and it is deterministic.
#[test]
fn dynamic_int8_of_minilm_keeps_cosine() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model, eval) = reference_models().into_iter().find(|(n, ..)| n == "all-minilm-l6-v2").unwrap();
    let (q1, q2) = (dir.path().join("q1.onnx"), dir.path().join("q2.onnx"));
    for q in [&q1, &q2] {
        let o = run(Command::new(tamp()).arg("quantize").arg("--dynamic").arg(&model).arg("--out").arg(q));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(std::fs::read(&q1).unwrap(), std::fs::read(&q2).unwrap(), "dynamic PTQ must be deterministic");
    let ratio = std::fs::metadata(&model).unwrap().len() as f64 / std::fs::metadata(&q1).unwrap().len() as f64;
    assert!(ratio >= 3.9, "only {ratio:.2}x smaller");
    let check = check_onnx(&q1);
    let ops: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    let fused = ops["optimized_ops"]["DynamicQuantizeMatMul"].as_u64().unwrap_or(0) + ops["optimized_ops"]["MatMulIntegerToFloat"].as_u64().unwrap_or(0);
    assert_eq!(fused, 36, "every weight MatMul should run on an integer kernel: {ops}");
    let o = run(Command::new(tamp()).arg("eval").arg(&q1).arg("--data").arg(&eval).args(["--json", "--runs", "1", "--throughput", "", "--samples", "256"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cosine = serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["metrics"]["cosine"].as_f64().unwrap();
    // Measured 0.99023 here (AVX-512 VNNI) and, with the uint8 weights an AVX2 target gets,
    // 0.99023 under `qemu-x86_64 -cpu Haswell` too (int8 weights gave 0.98949 there, below
    // the old 0.99 bar): the bar sits 0.005 below, clear of kernel-to-kernel differences.
    assert!(cosine >= 0.985, "cosine {cosine}");
}

/// Activation smoothing before dynamic int8 (`--smooth`): on all-MiniLM-L6-v2 it raises
/// cosine to fp32 over the plain dynamic model, still runs every weight MatMul on an integer
/// kernel, keeps the size, and is deterministic.
#[test]
fn smoothing_raises_minilm_dynamic_cosine() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model, eval) = reference_models().into_iter().find(|(n, ..)| n == "all-minilm-l6-v2").unwrap();
    let calib = model.with_file_name("calib.npz");
    let (plain, s1, s2) = (dir.path().join("plain.onnx"), dir.path().join("s1.onnx"), dir.path().join("s2.onnx"));
    let o = run(Command::new(tamp()).arg("quantize").arg("--dynamic").arg(&model).arg("--out").arg(&plain));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for q in [&s1, &s2] {
        let o = run(Command::new(tamp()).arg("quantize").arg("--dynamic").arg("--smooth").arg(&model).arg("--data").arg(&calib).arg("--out").arg(q));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stdout).contains("MatMul inputs smoothed"), "{}", String::from_utf8_lossy(&o.stdout));
    }
    assert_eq!(std::fs::read(&s1).unwrap(), std::fs::read(&s2).unwrap(), "smoothing must be deterministic");
    let (ps, ss) = (std::fs::metadata(&plain).unwrap().len() as f64, std::fs::metadata(&s1).unwrap().len() as f64);
    assert!(ss <= ps * 1.002, "smoothing added {} bytes", ss - ps);
    let ops: serde_json::Value = serde_json::from_slice(&check_onnx(&s1).stdout).unwrap();
    let fused = ops["optimized_ops"]["DynamicQuantizeMatMul"].as_u64().unwrap_or(0) + ops["optimized_ops"]["MatMulIntegerToFloat"].as_u64().unwrap_or(0);
    assert_eq!(fused, 36, "every weight MatMul should still run on an integer kernel: {ops}");
    let cosine = |q: &Path| {
        let o = run(Command::new(tamp()).arg("eval").arg(q).arg("--data").arg(&eval).args(["--json", "--runs", "1", "--throughput", "", "--samples", "256"]));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["metrics"]["cosine"].as_f64().unwrap()
    };
    let (c0, c1) = (cosine(&plain), cosine(&s1));
    // Measured on 256 rows: 0.9904 → 0.9944 on an AVX2 EPYC (uint8 weights), 0.9903 → 0.9944
    // on an AMX Xeon (int8 weights). The bars sit at under half the gain.
    assert!(c1 >= c0 + 0.0015 && c1 >= 0.991, "plain {c0:.5}, smoothed {c1:.5}");
}

/// 4-bit Conv weights are bias-corrected on the calibration rows (int4's steps are 16×
/// int8's, so the weights' error moves each output channel's mean): through a recipe, the
/// reference CNN keeps nearly all of its top-1, where `bias_correction: false` loses over half
/// a point; `tamp quantize --weights4 --data` does the same.
#[test]
fn four_bit_conv_weights_are_bias_corrected() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model, eval) = reference_models().into_iter().find(|(n, ..)| n == "fmnist-resnet8").unwrap();
    let calib = model.with_file_name("calib.npz");
    let top1 = |extra: &str, name: &str| {
        let recipe = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &recipe,
            format!("policy:\n  name: w4\n  stages:\n    - ptq: {{bits: {{weights: [4]}}{extra}}}\nconstraints: {{max_metric_drop_pct: 100}}\n"),
        )
        .unwrap();
        let out = dir.path().join(name);
        let o = compress(&model, &recipe, &calib, &eval, &out);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r = outcome(&out);
        let c = r.candidates.iter().find(|c| c.weights_bits == 4).expect("a 4-bit candidate");
        (r.baseline.value, c.measured.value)
    };
    let (fp32, corrected) = top1("", "bc");
    let (_, plain) = top1(", bias_correction: false", "plain");
    // Measured on 10,000 rows (AVX-512-VNNI EPYC): fp32 89.25, plain 88.68, corrected 89.21.
    // The bars sit at half the gain and at six times the corrected drop.
    assert!(corrected >= plain + 0.25, "corrected {corrected:.2}, plain {plain:.2}");
    assert!(corrected >= fp32 - 0.25, "corrected {corrected:.2}, fp32 {fp32:.2}");

    let q = dir.path().join("cli.onnx");
    let o = run(Command::new(tamp()).arg("quantize").arg("--weights4").arg(&model).arg("--data").arg(&calib).arg("--out").arg(&q));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("Conv biases corrected"), "{}", String::from_utf8_lossy(&o.stdout));
    check_onnx(&q);
}

/// 4-bit weight-only on all-MiniLM-L6-v2: every weight MatMul runs as ORT's MatMulNBits,
/// the file is ≥ 4.5× smaller, cosine to fp32 stays ≥ 0.96, deterministic.
#[test]
fn weight_only_4bit_of_minilm() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model, eval) = reference_models().into_iter().find(|(n, ..)| n == "all-minilm-l6-v2").unwrap();
    let (q1, q2) = (dir.path().join("q1.onnx"), dir.path().join("q2.onnx"));
    for q in [&q1, &q2] {
        let o = run(Command::new(tamp()).arg("quantize").arg("--weights4").arg(&model).arg("--out").arg(q));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(std::fs::read(&q1).unwrap(), std::fs::read(&q2).unwrap(), "4-bit PTQ must be deterministic");
    let ratio = std::fs::metadata(&model).unwrap().len() as f64 / std::fs::metadata(&q1).unwrap().len() as f64;
    assert!(ratio >= 4.5, "only {ratio:.2}x smaller");
    let check = check_onnx(&q1);
    let ops: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(ops["optimized_ops"]["MatMulNBits"].as_u64().unwrap_or(0), 36, "{ops}");
    let o = run(Command::new(tamp()).arg("eval").arg(&q1).arg("--data").arg(&eval).args(["--json", "--runs", "1", "--throughput", "", "--samples", "128"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cosine = serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["metrics"]["cosine"].as_f64().unwrap();
    assert!(cosine >= 0.96, "cosine {cosine}");
}
