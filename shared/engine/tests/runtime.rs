//! The engine against real ONNX Runtime: round trips leave outputs unchanged, external data
//! and control flow run, capture streams the right tensors, datasets fail loudly.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;

use ndarray::{Array2, ArrayD, IxDyn};
use tamp_engine::capture::capture;
use tamp_engine::dataset::{Dataset, write_npz};
use tamp_engine::eval::{EvalConfig, evaluate};
use tamp_engine::{Session, SessionConfig};
use tamp_onnx::builder::{Attr, GraphBuilder};
use tamp_onnx::proto::tensor_proto::DataType;
use tamp_onnx::tensor::from_array;
use tamp_onnx::{ExternalData, Model, SaveOptions, TensorValue};

fn weights(r: usize, c: usize, seed: f32) -> ArrayD<f32> {
    ArrayD::from_shape_fn(IxDyn(&[r, c]), |ix| ((ix[0] * c + ix[1]) as f32 * 0.61 + seed).sin() * 0.5)
}

/// x[batch,16] → MatMul(w1) → Add(Constant bias) → Relu → MatMul(w2) → logits[batch,4],
/// plus an If on `flip` that negates the logits in its else branch.
fn mlp() -> Model {
    let mut then_b = GraphBuilder::new("then", 17);
    then_b.op_n("Identity", &["logits_raw"], &["then_out"], &[]);
    then_b.output_f32("then_out", &[None, Some(4)]);
    let mut else_b = GraphBuilder::new("else", 17);
    else_b.op_n("Neg", &["logits_raw"], &["else_out"], &[]);
    else_b.output_f32("else_out", &[None, Some(4)]);

    let mut b = GraphBuilder::new("mlp", 17);
    let x = b.input_f32("x", &[None, Some(16)]);
    let flip = b.input("flip", DataType::Bool, &[]);
    let w1 = b.init_f32("w1", weights(16, 32, 0.1));
    let w2 = b.init_f32("w2", weights(32, 4, 0.7));
    let h = b.op("MatMul", &[&x, &w1], &[]);
    b.op_n("Constant", &[], &["b1"], &[("value", Attr::Tensor(from_array("b1v", &ArrayD::from_elem(IxDyn(&[32]), 0.05f32))))]);
    let h = b.op("Add", &[&h, "b1"], &[]);
    b.op_n("Relu", &[&h], &["hidden"], &[]);
    b.op_n("MatMul", &["hidden", &w2], &["logits_raw"], &[]);
    b.op_n("If", &[&flip], &["logits"], &[("then_branch", Attr::Graph(then_b.build_graph())), ("else_branch", Attr::Graph(else_b.build_graph()))]);
    b.output_f32("logits", &[None, Some(4)]);
    b.build()
}

fn inputs(rows: usize) -> (ArrayD<f32>, ArrayD<bool>) {
    (ArrayD::from_shape_fn(IxDyn(&[rows, 16]), |ix| ((ix[0] * 16 + ix[1]) as f32 * 0.13).cos()), ArrayD::from_elem(IxDyn(&[]), true))
}

fn run(session: &mut Session, rows: usize) -> ArrayD<f32> {
    let (x, flip) = inputs(rows);
    let (x, flip) = (TensorValue::F32(x), TensorValue::Bool(flip));
    let out = session.run(&[("x", &x), ("flip", &flip)]).unwrap();
    match &out[0].1 {
        TensorValue::F32(a) => a.clone(),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn outputs_survive_save_load_and_external_data() {
    let dir = tempfile::tempdir().unwrap();
    let m = mlp();
    let cfg = SessionConfig { intra_threads: 1, ..SessionConfig::default() };
    let reference = run(&mut Session::from_model(&m, &cfg).unwrap(), 5);
    let inline = dir.path().join("inline.onnx");
    m.save(&inline, &SaveOptions::default()).unwrap();
    let reloaded = Model::load(&inline).unwrap();
    assert_eq!(run(&mut Session::from_model(&reloaded, &cfg).unwrap(), 5), reference);
    let ext = dir.path().join("ext.onnx");
    reloaded.save(&ext, &SaveOptions { external_data: ExternalData::Always { location: "ext.bin".into(), threshold: 64 } }).unwrap();
    // ONNX Runtime reads the external file itself here.
    assert_eq!(run(&mut Session::from_file(&ext, &cfg).unwrap(), 5), reference);
    assert_eq!(Model::load(&ext).unwrap(), m);
}

#[test]
fn capture_streams_intermediates_batch_by_batch() {
    let dir = tempfile::tempdir().unwrap();
    let m = mlp();
    let (x, _) = inputs(10);
    let mut arrays = BTreeMap::new();
    arrays.insert("x".to_owned(), TensorValue::F32(x));
    let path = dir.path().join("d.npz");
    write_npz(&path, &arrays).unwrap();
    let data = Dataset::load(&path).unwrap();
    // The If condition is a scalar, which cannot be batched: bind it as a constant.
    let mut fixed = m.clone();
    let g = fixed.proto.graph.as_mut().unwrap();
    g.input.retain(|i| i.name.as_deref() != Some("flip"));
    g.initializer.push(from_array("flip", &ArrayD::from_elem(IxDyn(&[]), true)));
    let mut seen = Vec::new();
    capture(&fixed, &data, &(0..10).collect::<Vec<_>>(), &["hidden".to_owned()], 4, &SessionConfig::default(), false, |rows, captured| {
        let TensorValue::F32(h) = &captured["hidden"] else { panic!("hidden is float") };
        assert_eq!(h.shape(), &[rows.len(), 32]);
        assert!(h.iter().all(|&v| v >= 0.0), "Relu output");
        seen.push(rows.to_vec());
        Ok(())
    })
    .unwrap();
    // One measuring row, then batches of at most 4 (these rows are tiny).
    assert_eq!(seen.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 4, 4, 1]);
    assert_eq!(seen.concat(), (0..10).collect::<Vec<_>>());
    // The capture did not alter the model it was given.
    assert_eq!(fixed.graph().output.len(), 1);
    let e = capture(&fixed, &data, &[0], &["nope".to_owned()], 1, &SessionConfig::default(), false, |_, _| Ok(())).unwrap_err();
    assert!(e.to_string().contains("nope"));
}

fn classifier_with_data(dir: &std::path::Path, x: ArrayD<f32>, labels: Vec<i64>) -> (std::path::PathBuf, Dataset) {
    let mut b = GraphBuilder::new("clf", 17);
    let xin = b.input_f32("x", &[None, Some(16)]);
    let w = b.init_f32("w", weights(16, 4, 0.3));
    b.op_n("MatMul", &[&xin, &w], &["logits"], &[]);
    b.output_f32("logits", &[None, Some(4)]);
    let model_path = dir.join("clf.onnx");
    b.build().save(&model_path, &SaveOptions::default()).unwrap();
    let mut arrays = BTreeMap::new();
    arrays.insert("x".to_owned(), TensorValue::F32(x));
    arrays.insert("labels".to_owned(), TensorValue::I64(ArrayD::from_shape_vec(IxDyn(&[labels.len()]), labels).unwrap()));
    let data_path = dir.join("clf.npz");
    write_npz(&data_path, &arrays).unwrap();
    (model_path, Dataset::load(&data_path).unwrap())
}

#[test]
fn evaluation_matches_a_direct_computation() {
    let dir = tempfile::tempdir().unwrap();
    let x = ArrayD::from_shape_fn(IxDyn(&[50, 16]), |ix| ((ix[0] * 7 + ix[1] * 3) as f32 * 0.21).sin());
    // Labels: the true argmax for even rows, a wrong class for odd rows.
    let w = weights(16, 4, 0.3).into_dimensionality::<ndarray::Ix2>().unwrap();
    let x2: Array2<f32> = x.clone().into_dimensionality().unwrap();
    let logits = x2.dot(&w);
    let labels: Vec<i64> = logits
        .outer_iter()
        .enumerate()
        .map(|(i, r)| {
            let best = r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as i64;
            if i % 2 == 0 { best } else { (best + 1) % 4 }
        })
        .collect();
    let (model_path, data) = classifier_with_data(dir.path(), x, labels);
    let cfg = EvalConfig {
        metrics: vec!["top1".into(), "f1_macro".into()],
        batch_size: 7,
        throughput_batches: vec![1, 8],
        latency: tamp_engine::perf::LatencyConfig { warmup: 2, runs: 20 },
        ..EvalConfig::default()
    };
    let mut kept = Vec::new();
    let mut calls = 0;
    let report = evaluate(&model_path, &data, &cfg, Some(&mut kept), &mut |_, _| calls += 1).unwrap();
    assert_eq!(report.metrics["top1"], 50.0);
    assert_eq!(calls, 8);
    let all: Vec<f32> = kept.iter().flat_map(|b| b.iter().copied()).collect();
    let direct: Vec<f32> = logits.iter().copied().collect();
    assert!(all.iter().zip(&direct).all(|(a, b)| (a - b).abs() < 1e-5));
    assert_eq!(report.latency.runs, 20);
    assert!(report.latency.p50_ms <= report.latency.p95_ms && report.latency.p95_ms <= report.latency.p99_ms);
    assert_eq!(report.throughput.len(), 2);
    assert!(report.throughput.iter().all(|t| t.samples_per_s.is_some_and(|s| s > 0.0)));
    assert_eq!(report.model.sha256.len(), 64);
    assert_eq!(report.dataset.evaluated_rows, 50);
    assert!(report.model.size_bytes > 16 * 4 * 4);
}

#[test]
fn bad_datasets_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = ArrayD::from_elem(IxDyn(&[3, 16]), 1.0f32);
    let (model_path, _) = classifier_with_data(dir.path(), good.clone(), vec![0, 1, 2]);
    let session = Session::from_file(&model_path, &SessionConfig::default()).unwrap();
    let write = |name: &str, arrays: Vec<(&str, TensorValue)>| {
        let p = dir.path().join(name);
        write_npz(&p, &arrays.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()).unwrap();
        p
    };
    let missing = write("missing.npz", vec![("y", TensorValue::F32(good.clone()))]);
    let e = Dataset::load(&missing).unwrap().check_against(&session.inputs).unwrap_err().to_string();
    assert!(e.contains("missing input 'x'"), "{e}");
    let mut nan = good.clone();
    nan[[1, 3]] = f32::NAN;
    let e = Dataset::load(write("nan.npz", vec![("x", TensorValue::F32(nan))])).unwrap_err().to_string();
    assert!(e.contains("NaN") && e.contains("'x'"), "{e}");
    let wrong_type = write("type.npz", vec![("x", TensorValue::F64(good.mapv(f64::from)))]);
    let e = Dataset::load(&wrong_type).unwrap().check_against(&session.inputs).unwrap_err().to_string();
    assert!(e.contains("Double") && e.contains("Float"), "{e}");
    let wrong_shape = write("shape.npz", vec![("x", TensorValue::F32(ArrayD::zeros(IxDyn(&[3, 15]))))]);
    let e = Dataset::load(&wrong_shape).unwrap().check_against(&session.inputs).unwrap_err().to_string();
    assert!(e.contains("axis 1") && e.contains("16"), "{e}");
    let rows = write("rows.npz", vec![("x", TensorValue::F32(good)), ("labels", TensorValue::I64(ArrayD::zeros(IxDyn(&[2]))))]);
    assert!(Dataset::load(&rows).unwrap_err().to_string().contains("labels have 2 rows"));
    std::fs::write(dir.path().join("junk.npz"), b"junk").unwrap();
    assert!(Dataset::load(dir.path().join("junk.npz")).unwrap_err().to_string().contains("not a readable .npz"));
}

#[test]
fn seeded_sampling_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let (_, data) = classifier_with_data(dir.path(), ArrayD::zeros(IxDyn(&[100, 16])), vec![0; 100]);
    assert_eq!(data.sample(10, 3), data.sample(10, 3));
    assert_ne!(data.sample(10, 3), data.sample(10, 4));
    let (a, b) = data.split(0.8, 1);
    assert_eq!((a.len(), b.len()), (80, 20));
    let mut all: Vec<usize> = a.into_iter().chain(b).collect();
    all.sort_unstable();
    assert_eq!(all, (0..100).collect::<Vec<_>>());
}

/// Builder graphs at the opsets real exporters emit (11–21), with a dynamic batch and
/// sequence dimension, run in ONNX Runtime and survive a save/load round trip.
#[test]
fn opsets_11_to_21_with_dynamic_dims_run() {
    let dir = tempfile::tempdir().unwrap();
    for opset in [11, 13, 15, 17, 18, 21] {
        let mut b = GraphBuilder::new("dyn", opset);
        let x = b.input_f32("x", &[None, None, Some(8)]);
        let w = b.init_f32("w", weights(8, 8, opset as f32));
        let y = b.op("MatMul", &[&x, &w], &[]);
        let y = b.op("Relu", &[&y], &[]);
        // Softmax over the last axis: its default axis changed at opset 13.
        b.op_n("Softmax", &[&y], &["probs"], &[("axis", Attr::Int(-1))]);
        b.output_f32("probs", &[None, None, Some(8)]);
        let m = b.build();
        let path = dir.path().join(format!("dyn{opset}.onnx"));
        m.save(&path, &SaveOptions::default()).unwrap();
        let mut s = Session::from_file(&path, &SessionConfig::default()).unwrap();
        assert_eq!(s.inputs[0].shape, vec![-1, -1, 8], "opset {opset}");
        for (batch, seq) in [(1, 3), (4, 7)] {
            let x = TensorValue::F32(ArrayD::from_elem(IxDyn(&[batch, seq, 8]), 0.5));
            let out = s.run(&[("x", &x)]).unwrap();
            let TensorValue::F32(p) = &out[0].1 else { panic!() };
            assert_eq!(p.shape(), &[batch, seq, 8]);
            assert!((p.sum() - (batch * seq) as f32).abs() < 1e-4, "softmax rows sum to 1 at opset {opset}");
        }
        assert_eq!(Model::load(&path).unwrap(), m);
    }
}

#[test]
fn streamed_inputs_read_the_same_rows_as_loaded_ones() {
    let dir = tempfile::tempdir().unwrap();
    let x = ArrayD::from_shape_fn(IxDyn(&[40, 3, 5]), |ix| (ix[0] * 100 + ix[1] * 10 + ix[2]) as f32 * 0.5 - 7.0);
    let ids = ArrayD::from_shape_fn(IxDyn(&[40, 6]), |ix| (ix[0] * 6 + ix[1]) as i64 - 3);
    let path = dir.path().join("d.npz");
    let arrays = [("x", TensorValue::F32(x)), ("ids", TensorValue::I64(ids)), ("labels", TensorValue::I64(ArrayD::zeros(IxDyn(&[40]))))];
    write_npz(&path, &arrays.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()).unwrap();
    let (held, streamed) = (Dataset::load(&path).unwrap(), Dataset::load_streaming(&path, 0).unwrap());
    assert!(held.streamed_inputs().is_empty());
    assert_eq!(streamed.streamed_inputs(), vec!["ids", "x"]);
    assert_eq!((held.sha256.as_str(), held.rows), (streamed.sha256.as_str(), streamed.rows));
    for idx in [vec![0usize], vec![39, 2, 3, 4, 17, 0], (0..40).collect()] {
        assert_eq!(held.select(&idx).unwrap(), streamed.select(&idx).unwrap(), "rows {idx:?}");
    }
    assert!(streamed.select(&[40]).unwrap_err().to_string().contains("'ids'"));
    assert!(streamed.select(&[39, 40]).is_err(), "a run of rows that ends past the array");
    // Non-finite values in a streamed input are found at load, with their flat index.
    let mut bad = ArrayD::from_elem(IxDyn(&[40, 4]), 1.0f32);
    bad[[33, 2]] = f32::INFINITY;
    bad[[35, 0]] = f32::NAN;
    let p = dir.path().join("bad.npz");
    write_npz(&p, &[("x".to_owned(), TensorValue::F32(bad))].into_iter().collect()).unwrap();
    let e = Dataset::load_streaming(&p, 0).unwrap_err().to_string();
    assert!(e.contains("1 NaN and 1 infinite") && e.contains("flat index 134") && e.contains("'x'"), "{e}");
}

/// Right-padded token sequences run at their true lengths when capture trims padding: each
/// batch holds rows of one length, cut to it, longest first; every row is seen once and no
/// pad position reaches the sink. Left padding (or no mask) is left as it is.
#[test]
fn capture_trims_right_padding() {
    let mut b = GraphBuilder::new("tokens", 17);
    let ids = b.input("input_ids", DataType::Int64, &[None, None]);
    let mask = b.input("attention_mask", DataType::Int64, &[None, None]);
    let x = b.op("Cast", &[&ids], &[("to", Attr::Int(DataType::Float as i64))]);
    let m = b.op("Cast", &[&mask], &[("to", Attr::Int(DataType::Float as i64))]);
    let y = b.op("Mul", &[&x, &m], &[]);
    b.output_f32(&y, &[None, None]);
    let model = b.build();
    let lengths = [3usize, 6, 1, 6, 3, 2, 6];
    let ids = ArrayD::from_shape_fn(IxDyn(&[7, 6]), |ix| if ix[1] < lengths[ix[0]] { (ix[0] * 10 + ix[1] + 1) as i64 } else { 0 });
    let right = ArrayD::from_shape_fn(IxDyn(&[7, 6]), |ix| i64::from(ix[1] < lengths[ix[0]]));
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, mask: ArrayD<i64>| {
        let p = dir.path().join(name);
        write_npz(&p, &[("input_ids".to_owned(), TensorValue::I64(ids.clone())), ("attention_mask".to_owned(), TensorValue::I64(mask))].into_iter().collect())
            .unwrap();
        Dataset::load(&p).unwrap()
    };
    let data = write("right.npz", right.clone());
    assert_eq!(data.sequence_lengths().unwrap(), Some(lengths.to_vec()));
    let mut seen = Vec::new();
    let trimmed = capture(&model, &data, &(0..7).collect::<Vec<_>>(), std::slice::from_ref(&y), 8, &SessionConfig::default(), true, |rows, got| {
        let TensorValue::F32(a) = &got[&y] else { panic!("float") };
        assert!(rows.iter().all(|&r| lengths[r] == a.shape()[1]), "rows {rows:?} cut to {}", a.shape()[1]);
        assert!(a.iter().all(|&v| v > 0.0), "a pad position reached the sink: {a:?}");
        seen.extend(rows.iter().map(|&r| (lengths[r], r)));
        Ok(())
    })
    .unwrap();
    assert!(trimmed);
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    assert_eq!(seen, sorted, "longest first, each row once");
    assert_eq!(seen.len(), 7);
    // Left padding is not trimmed.
    let left = ArrayD::from_shape_fn(IxDyn(&[7, 6]), |ix| i64::from(ix[1] >= 6 - lengths[ix[0]]));
    let data = write("left.npz", left);
    assert_eq!(data.sequence_lengths().unwrap(), None);
    assert!(!capture(&model, &data, &[0, 1], std::slice::from_ref(&y), 8, &SessionConfig::default(), true, |_, _| Ok(())).unwrap());
}

/// A model with an input that has no batch axis (a recurrent state `h [2, 3]`, as AECMOS's
/// `h0 [4, 1, 64]`) takes datasets whose rows sit on an axis of their own: each row is one
/// call, batch-major inputs give their row as a batch of one, and outputs come back rows
/// first — stacked where the output has no batch axis, joined where it has one.
#[test]
fn inputs_without_a_batch_axis_run_one_row_per_call() {
    let mut b = GraphBuilder::new("state", 17);
    let x = b.input_f32("x", &[None, Some(4)]);
    let h = b.input_f32("h", &[Some(2), Some(3)]);
    let two = b.init_f32("two", ArrayD::from_elem(IxDyn(&[]), 2.0));
    let y = b.op("Mul", &[&x, &two], &[]);
    let s = b.op("ReduceSum", &[&h], &[("keepdims", Attr::Int(0))]);
    b.output_f32(&y, &[None, Some(4)]);
    b.output_f32(&s, &[]);
    let model = b.build();
    let mut session = Session::from_model(&model, &SessionConfig::default()).unwrap();
    let xs = ArrayD::from_shape_fn(IxDyn(&[5, 4]), |i| (i[0] * 4 + i[1]) as f32);
    let hs = ArrayD::from_shape_fn(IxDyn(&[5, 2, 3]), |i| (i[0] * 100 + i[1] * 3 + i[2]) as f32);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.npz");
    write_npz(&path, &BTreeMap::from([("x".to_owned(), TensorValue::F32(xs.clone())), ("h".to_owned(), TensorValue::F32(hs.clone()))])).unwrap();
    let data = Dataset::load(&path).unwrap();
    data.check_against(&session.inputs).unwrap();
    let feeds = data.select(&[0, 1, 2, 3, 4]).unwrap();
    let named: Vec<(&str, &TensorValue)> = feeds.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let out = session.run(&named).unwrap();
    assert_eq!(out[0].1, TensorValue::F32(xs.mapv(|v| v * 2.0)), "batch-major output joined");
    let sums = ArrayD::from_shape_fn(IxDyn(&[5]), |i| (0..6).map(|j| (i[0] * 100 + j) as f32).sum::<f32>());
    assert_eq!(out[1].1, TensorValue::F32(sums), "scalar output stacked");
    let bad = dir.path().join("bad.npz");
    write_npz(&bad, &BTreeMap::from([("x".to_owned(), TensorValue::F32(xs)), ("h".to_owned(), TensorValue::F32(ArrayD::zeros(IxDyn(&[5, 2, 4]))))])).unwrap();
    let e = Dataset::load(&bad).unwrap().check_against(&session.inputs).unwrap_err().to_string();
    assert!(e.contains("'h'") && e.contains("axis 2") && e.contains('3'), "{e}");
}
