//! Models from other toolchains, against real ONNX Runtime: the opset upgrade leaves outputs
//! unchanged (differential, per rewritten op), shape paths fold and are never calibrated,
//! weights inside `If` branches are quantized within tolerance, and a fixed batch
//! dimension is respected by evaluation and calibration.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;

use ndarray::{ArrayD, IxDyn};
use tamp_engine::dataset::{Dataset, write_npz};
use tamp_engine::eval::{EvalConfig, evaluate};
use tamp_engine::prepare::prepare;
use tamp_engine::ptq::{PtqConfig, quantize_dynamic, quantize_static};
use tamp_engine::{Session, SessionConfig};
use tamp_onnx::builder::{Attr, GraphBuilder};
use tamp_onnx::proto::tensor_proto::DataType;
use tamp_onnx::{Model, TensorValue};

fn wave(shape: &[usize], seed: f32) -> ArrayD<f32> {
    let n = shape.iter().product::<usize>();
    ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|i| ((i as f32) * 0.37 + seed).sin()).collect()).unwrap()
}

fn outputs(model: &Model, feeds: &[(&str, TensorValue)]) -> Vec<ArrayD<f32>> {
    let mut s = Session::from_model(model, &SessionConfig::default()).unwrap();
    let inputs: Vec<(&str, &TensorValue)> = feeds.iter().map(|(k, v)| (*k, v)).collect();
    s.run(&inputs)
        .unwrap()
        .into_iter()
        .map(|(_, v)| match v {
            TensorValue::F32(a) => a,
            other => panic!("{other:?}"),
        })
        .collect()
}

fn max_abs_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter().zip(b.iter()).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

/// One model per opset exercising every op the upgrade rewrites at that opset.
fn old_model(opset: i64) -> Model {
    let mut b = GraphBuilder::new("old", opset);
    let x = b.input_f32("x", &[Some(2), Some(3), Some(4), Some(5)]);
    let w = b.init_f32("w", wave(&[6, 3, 3, 3], 0.3));
    let c = b.op("Conv", &[&x, &w], &[("pads", Attr::Ints(vec![1, 1, 1, 1]))]);
    let mut y = if opset < 11 {
        b.op("Clip", &[&c], &[("min", Attr::Float(-0.5)), ("max", Attr::Float(1.5))])
    } else {
        let (lo, hi) = (b.init_f32("lo", ArrayD::from_elem(IxDyn(&[]), -0.5)), b.init_f32("hi", ArrayD::from_elem(IxDyn(&[]), 1.5)));
        b.op("Clip", &[&c, &lo, &hi], &[])
    };
    if opset < 11 {
        y = b.op("Pad", &[&y], &[("pads", Attr::Ints(vec![0, 0, 1, 0, 0, 0, 1, 0])), ("value", Attr::Float(0.25))]);
    }
    if opset < 10 {
        y = b.op("Slice", &[&y], &[("starts", Attr::Ints(vec![1])), ("ends", Attr::Ints(vec![5])), ("axes", Attr::Ints(vec![2]))]);
        let scales = b.init_f32("scales", ndarray::arr1(&[1.0f32, 1.0, 2.0, 2.0]).into_dyn());
        y = b.op("Upsample", &[&y, &scales], &[("mode", Attr::Str("nearest".into()))]);
    }
    if opset < 12 {
        y = b.op("Dropout", &[&y], &[("ratio", Attr::Float(0.3))]);
    }
    // Squeeze/Unsqueeze/ReduceSum/Split with attributes, and a Softmax over a non-last axis
    // (the old 2-D coercion) and one over the last axis.
    let u = b.op("Unsqueeze", &[&y], &[("axes", Attr::Ints(vec![0]))]);
    let s = b.op("Squeeze", &[&u], &[("axes", Attr::Ints(vec![0]))]);
    let r = b.op("ReduceSum", &[&s], &[("axes", Attr::Ints(vec![3])), ("keepdims", Attr::Int(1))]);
    b.op_n("Split", &[&s], &["s1", "s2"], &[("axis", Attr::Int(1)), ("split", Attr::Ints(vec![2, 4]))]);
    let sm = b.op("Softmax", &["s2"], &[("axis", Attr::Int(1))]);
    let last = b.op("LogSoftmax", &["s1"], &[("axis", Attr::Int(3))]);
    for o in [&r, &sm, &last] {
        b.output_f32(o, &[None, None, None, None]);
    }
    b.build()
}

#[test]
fn opset_upgrade_is_exact_against_onnx_runtime() {
    for opset in [9, 10, 11, 12] {
        let m = old_model(opset);
        let (up, report) = prepare(&m).unwrap();
        assert_eq!(up.opset(""), Some(13), "opset {opset}");
        assert_eq!(report.opset_upgraded, Some((opset, 13)));
        for op in ["Squeeze", "Unsqueeze", "ReduceSum", "Split", "Softmax"] {
            assert!(report.rewritten.contains_key(op), "opset {opset}: {op} not rewritten: {:?}", report.rewritten);
        }
        let feeds = [("x", TensorValue::F32(wave(&[2, 3, 4, 5], 1.1)))];
        let (a, b) = (outputs(&m, &feeds), outputs(&up, &feeds));
        for (x, y) in a.iter().zip(&b) {
            assert!(max_abs_diff(x, y) <= 1e-6, "opset {opset}: outputs differ by {}", max_abs_diff(x, y));
        }
    }
}

/// x[1,4,6,6] (fixed batch) → Conv → Relu → Reshape(to Concat(Shape(x)[0], -1)) → MatMul → y,
/// with the weights in Constant nodes: the shape path must fold and never be calibrated.
fn shape_path_model() -> (Model, Vec<String>) {
    let mut b = GraphBuilder::new("shapes", 13);
    let x = b.input_f32("x", &[Some(1), Some(4), Some(6), Some(6)]);
    b.op_n("Constant", &[], &["w"], &[("value", Attr::Tensor(tamp_onnx::tensor::from_array("wv", &wave(&[8, 4, 3, 3], 0.2))))]);
    let c = b.op("Conv", &[&x, "w"], &[("pads", Attr::Ints(vec![1, 1, 1, 1]))]);
    let r = b.op("Relu", &[&c], &[]);
    let shape = b.op("Shape", &[&r], &[]);
    let idx = b.init("zero", ndarray::arr1(&[0i64]).into_dyn());
    let n = b.op("Gather", &[&shape, &idx], &[("axis", Attr::Int(0))]);
    let minus = b.init("minus1", ndarray::arr1(&[-1i64]).into_dyn());
    let target = b.op("Concat", &[&n, &minus], &[("axis", Attr::Int(0))]);
    let flat = b.op("Reshape", &[&r, &target], &[]);
    b.op_n("Constant", &[], &["w2"], &[("value", Attr::Tensor(tamp_onnx::tensor::from_array("w2v", &wave(&[288, 10], 0.9))))]);
    let y = b.op("MatMul", &[&flat, "w2"], &[]);
    b.output_f32(&y, &[Some(1), Some(10)]);
    (b.build(), vec![shape, n, target])
}

fn write(dir: &std::path::Path, name: &str, arrays: Vec<(&str, TensorValue)>) -> Dataset {
    let path = dir.join(name);
    let map: BTreeMap<String, TensorValue> = arrays.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    write_npz(&path, &map).unwrap();
    Dataset::load(&path).unwrap()
}

#[test]
fn shape_paths_fold_and_fixed_batches_run_one_row_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (m, int_values) = shape_path_model();
    let (prepared, report) = prepare(&m).unwrap();
    assert!(report.constant_nodes_to_initializers >= 2, "{report:?}");
    assert_eq!(report.shape_nodes_left, 0, "the shape path folds for the declared [1,4,6,6]: {report:?}");
    let feeds = [("x", TensorValue::F32(wave(&[1, 4, 6, 6], 0.5)))];
    assert!(max_abs_diff(&outputs(&m, &feeds)[0], &outputs(&prepared, &feeds)[0]) <= 1e-5);

    // 40 rows against a batch fixed at 1: calibration and evaluation take them one at a time.
    let rows = 40;
    let labels: Vec<i64> = (0..rows as i64).map(|i| i % 10).collect();
    let data = write(
        dir.path(),
        "d.npz",
        vec![("x", TensorValue::F32(wave(&[rows, 4, 6, 6], 0.1))), ("labels", TensorValue::I64(ArrayD::from_shape_vec(IxDyn(&[rows]), labels).unwrap()))],
    );
    // Unprepared, the Int64 shape path is never a calibration target.
    let (q, report) = quantize_static(&m, &data, &PtqConfig { samples: 16, ..PtqConfig::default() }).unwrap();
    assert!(int_values.iter().all(|v| !report.ranges.contains_key(v)), "{:?}", report.ranges.keys());
    assert!(!report.ranges.is_empty());
    let path = dir.path().join("q.onnx");
    q.save(&path, &Default::default()).unwrap();
    let r = evaluate(&path, &data, &EvalConfig { throughput_batches: vec![1, 32], ..EvalConfig::default() }, None, &mut |_, _| {}).unwrap();
    assert_eq!(r.dataset.evaluated_rows, rows);
    assert!(r.throughput.iter().any(|t| t.batch_size == 32 && t.skipped.is_some()));
}

#[test]
fn weights_inside_if_branches_are_quantized_within_tolerance() {
    // y = If(c, then: x·W1, else: x·W2); the weights live in the branches only.
    let branch = |name: &str, seed: f32| {
        let mut b = GraphBuilder::new(name, 13);
        let w = b.init_f32(&format!("{name}_w"), wave(&[64, 32], seed));
        let y = b.op("MatMul", &["x", &w], &[]);
        b.output_f32(&y, &[None, Some(32)]);
        b.build_graph()
    };
    let mut b = GraphBuilder::new("if", 13);
    let x = b.input_f32("x", &[None, Some(64)]);
    let c = b.input("c", DataType::Bool, &[]);
    let y = b.op("If", &[&c], &[("then_branch", Attr::Graph(branch("then", 0.37))), ("else_branch", Attr::Graph(branch("else", 0.11)))]);
    b.output_f32(&y, &[None, Some(32)]);
    let _ = x;
    let m = b.build();
    let (q, counts) = quantize_dynamic(&m, &Default::default()).unwrap();
    assert_eq!((counts.matmuls, counts.subgraph_weights), (0, 2));
    assert!(q.to_bytes().unwrap().len() * 3 < m.to_bytes().unwrap().len());
    for flag in [true, false] {
        let feeds = [("x", TensorValue::F32(wave(&[8, 64], 2.0))), ("c", TensorValue::Bool(ArrayD::from_elem(IxDyn(&[]), flag)))];
        let (a, b) = (&outputs(&m, &feeds)[0], &outputs(&q, &feeds)[0]);
        let scale = a.iter().fold(0f32, |s, v| s.max(v.abs()));
        // int8 per-column weights: each weight moves by ≤ amax/254; over 64 inputs of |x| ≤ 1
        // the expected change is ~√64·amax/254/√3 ≈ 1.8 % of amax (outputs here span ~3·amax),
        // measured 1.3 % of the output range; a lost or wrong scale would be ≥ 50 %.
        assert!(max_abs_diff(a, b) <= 0.03 * scale, "branch {flag}: {} vs scale {scale}", max_abs_diff(a, b));
    }
}

/// PP-OCR's pattern: a Conv whose output only float ops read (a Mul by a learned scale, then
/// a swish) and a Conv reading that float op's output. Both still run as QLinearConv in ONNX
/// Runtime: each Conv's output is quantized, every reader takes the dequantized value, and
/// the Conv after the float ops gets a QuantizeLinear on its input. Outputs stay within int8
/// tolerance of fp32. (Before, both ran as DequantizeLinear + float Conv.)
#[test]
fn convs_next_to_float_ops_still_run_on_integer_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let pads = [("pads", Attr::Ints(vec![1, 1, 1, 1]))];
    let mut b = GraphBuilder::new("affine", 13);
    let x = b.input_f32("x", &[None, Some(4), Some(8), Some(8)]);
    let w1 = b.init_f32("w1", wave(&[8, 4, 3, 3], 0.3));
    let c1 = b.op("Conv", &[&x, &w1], &pads);
    let scale = b.init_f32("scale", ArrayD::from_elem(IxDyn(&[1]), 0.7));
    let m = b.op("Mul", &[&c1, &scale], &[]);
    let s = b.op("Sigmoid", &[&m], &[]);
    let swish = b.op("Mul", &[&m, &s], &[]);
    let w2 = b.init_f32("w2", wave(&[8, 8, 3, 3], 0.7));
    let c2 = b.op("Conv", &[&swish, &w2], &pads);
    let y = b.op("Sigmoid", &[&c2], &[]);
    b.output_f32(&y, &[None, Some(8), Some(8), Some(8)]);
    let model = b.build();
    let data = write(dir.path(), "d.npz", vec![("x", TensorValue::F32(wave(&[32, 4, 8, 8], 0.9)))]);
    let mut cfg = PtqConfig { samples: 32, ..PtqConfig::default() };
    cfg.quantize.float_slow_layers = false;
    let (q, _) = quantize_static(&model, &data, &cfg).unwrap();
    let path = dir.path().join("q.onnx");
    q.save(&path, &Default::default()).unwrap();
    let ops = tamp_engine::runtime::optimized_op_types(&path, &SessionConfig::default()).unwrap();
    assert_eq!((ops.get("QLinearConv"), ops.get("Conv")), (Some(&2), None), "{ops:?}");
    assert!(ops.contains_key("Sigmoid") && ops.contains_key("Mul"), "the float ops stay float: {ops:?}");
    let feeds = [("x", TensorValue::F32(wave(&[2, 4, 8, 8], 0.4)))];
    let (a, b) = (&outputs(&model, &feeds)[0], &outputs(&q, &feeds)[0]);
    // Sigmoid outputs in (0, 1); uint8 steps of the two Convs' ranges move them by ~1e-2.
    assert!(max_abs_diff(a, b) <= 0.05, "{}", max_abs_diff(a, b));
}

/// Conv → hard-swish spelled out Paddle's way (`x · clip(x + 3, 0, 6) / 6`) → Conv →
/// hard-swish the other way (`x · (clip(x + 3, 0, 6) / 6)`) → Conv → SiLU → Conv.
fn activations_model() -> Model {
    let pads = [("pads", Attr::Ints(vec![1, 1, 1, 1]))];
    let mut b = GraphBuilder::new("acts", 13);
    let x = b.input_f32("x", &[None, Some(4), Some(8), Some(8)]);
    let scalar = |b: &mut GraphBuilder, name: &str, v: f32| b.init_f32(name, ArrayD::from_elem(IxDyn(&[]), v));
    let (three, zero, six) = (scalar(&mut b, "three", 3.0), scalar(&mut b, "zero", 0.0), scalar(&mut b, "six", 6.0));
    let w1 = b.init_f32("w1", wave(&[8, 4, 3, 3], 0.3));
    let c1 = b.op("Conv", &[&x, &w1], &pads);
    let a = b.op("Add", &[&c1, &three], &[]);
    let k = b.op("Clip", &[&a, &zero, &six], &[]);
    let m = b.op("Mul", &[&c1, &k], &[]);
    let h1 = b.op("Div", &[&m, &six], &[]);
    let w2 = b.init_f32("w2", wave(&[8, 8, 3, 3], 0.7));
    let c2 = b.op("Conv", &[&h1, &w2], &pads);
    let a = b.op("Add", &[&three, &c2], &[]);
    let k = b.op("Clip", &[&a, &zero, &six], &[]);
    let d = b.op("Div", &[&k, &six], &[]);
    let h2 = b.op("Mul", &[&d, &c2], &[]);
    let w3 = b.init_f32("w3", wave(&[8, 8, 3, 3], 0.5));
    let c3 = b.op("Conv", &[&h2, &w3], &pads);
    let s = b.op("Sigmoid", &[&c3], &[]);
    let silu = b.op("Mul", &[&c3, &s], &[]);
    let w4 = b.init_f32("w4", wave(&[8, 8, 3, 3], 0.9));
    let y = b.op("Conv", &[&silu, &w4], &pads);
    b.output_f32(&y, &[None, Some(8), Some(8), Some(8)]);
    b.build()
}

#[test]
fn spelled_out_hard_swishes_become_one_op_with_the_same_outputs() {
    let model = activations_model();
    let (prepared, report) = prepare(&model).unwrap();
    assert_eq!(report.hard_swishes_fused, 2, "{:?}", report.steps);
    let ops: Vec<&str> = prepared.graph().node.iter().filter_map(|n| n.op_type.as_deref()).collect();
    assert_eq!(ops.iter().filter(|o| **o == "HardSwish").count(), 2, "{ops:?}");
    assert!(!ops.iter().any(|o| matches!(*o, "Clip" | "Div" | "Add")), "{ops:?}");
    assert_eq!(prepared.opset(""), Some(14));
    let feeds = [("x", TensorValue::F32(wave(&[2, 4, 8, 8], 0.4).mapv(|v| v * 3.0)))];
    let (a, b) = (&outputs(&model, &feeds)[0], &outputs(&prepared, &feeds)[0]);
    assert!(max_abs_diff(a, b) <= 1e-4 * a.iter().fold(1.0f32, |m, v| m.max(v.abs())), "{}", max_abs_diff(a, b));
}

#[test]
fn hard_swish_and_silu_run_on_integer_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = prepare(&activations_model()).unwrap();
    let data = write(dir.path(), "d.npz", vec![("x", TensorValue::F32(wave(&[32, 4, 8, 8], 0.9).mapv(|v| v * 3.0)))]);
    let mut cfg = PtqConfig { samples: 32, ..PtqConfig::default() };
    cfg.quantize.float_slow_layers = false;
    let (q, report) = quantize_static(&model, &data, &cfg).unwrap();
    assert!(report.float_ops.is_empty(), "every op is carried in int8: {:?}", report.float_ops);
    let path = dir.path().join("q.onnx");
    q.save(&path, &Default::default()).unwrap();
    let ops = tamp_engine::runtime::optimized_op_types(&path, &SessionConfig::default()).unwrap();
    // The last Conv writes the graph output, which stays float: DequantizeLinear + Conv.
    assert_eq!((ops.get("QLinearConv"), ops.get("Conv")), (Some(&3), Some(&1)), "{ops:?}");
    // Two hard-swishes as QLinearAdd + QLinearMul each; the SiLU as QLinearSigmoid + QLinearMul.
    assert_eq!((ops.get("QLinearAdd"), ops.get("QLinearMul"), ops.get("QLinearSigmoid")), (Some(&2), Some(&3), Some(&1)), "{ops:?}");
    for float in ["HardSwish", "HardSigmoid", "Sigmoid", "Mul", "Add"] {
        assert!(!ops.contains_key(float), "{float} left in float: {ops:?}");
    }
    let feeds = [("x", TensorValue::F32(wave(&[2, 4, 8, 8], 0.4).mapv(|v| v * 3.0)))];
    let (a, b) = (&outputs(&model, &feeds)[0], &outputs(&q, &feeds)[0]);
    let peak = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    // Four uint8 layers and three activations: a few steps of the output's range.
    assert!(max_abs_diff(a, b) <= 0.05 * peak, "{} of {peak}", max_abs_diff(a, b));
}

#[test]
fn a_spectrogram_power_written_as_pow_becomes_products_with_identical_outputs() {
    // real² + imag², as oww_melspec's STFT front end writes it.
    let mut b = GraphBuilder::new("power", 13);
    let x = b.input_f32("x", &[None, Some(16)]);
    let two = b.init_f32("two", ArrayD::from_elem(IxDyn(&[]), 2.0));
    let three = b.init_f32("three", ArrayD::from_elem(IxDyn(&[]), 3.0));
    let wr = b.init_f32("wr", wave(&[16, 8], 0.3));
    let wi = b.init_f32("wi", wave(&[16, 8], 0.8));
    let re = b.op("MatMul", &[&x, &wr], &[]);
    let im = b.op("MatMul", &[&x, &wi], &[]);
    let r2 = b.op("Pow", &[&re, &two], &[]);
    let i2 = b.op("Pow", &[&im, &two], &[]);
    let cube = b.op("Pow", &[&re, &three], &[]);
    let p = b.op("Add", &[&r2, &i2], &[]);
    let y = b.op("Add", &[&p, &cube], &[]);
    b.output_f32(&y, &[None, Some(8)]);
    let model = b.build();
    let (prepared, report) = prepare(&model).unwrap();
    assert_eq!(report.squares_as_mul, 2, "{:?}", report.steps);
    let pows = prepared.graph().node.iter().filter(|n| n.op_type.as_deref() == Some("Pow")).count();
    assert_eq!(pows, 1, "the cube stays a Pow");
    let feeds = [("x", TensorValue::F32(wave(&[3, 16], 0.1).mapv(|v| v * 7.0)))];
    let (a, b) = (&outputs(&model, &feeds)[0], &outputs(&prepared, &feeds)[0]);
    assert_eq!(max_abs_diff(a, b), 0.0, "x·x is the correctly rounded square, as Pow(x, 2) is");
}
