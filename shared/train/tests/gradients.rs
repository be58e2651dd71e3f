//! Gradients of the candle form match central finite differences, for every differentiable op
//! the graph module runs, on small builder graphs: `x` (a trainable initializer) → op(s) →
//! `y`, loss = Σ y·r with fixed random r. Each op is checked with respect to its input and,
//! where it has one, its weight. Also: fake quantization passes gradients straight through
//! inside the range and blocks them outside.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tamp_onnx::builder::{Attr, GraphBuilder};
use tamp_train::graph::{GraphOptions, Mode, TrainGraph};

fn rand_array(rng: &mut ChaCha8Rng, shape: &[usize], lo: f32, hi: f32) -> ArrayD<f32> {
    let n: usize = shape.iter().product();
    ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|_| rng.random_range(lo..hi)).collect()).unwrap()
}

fn loss(g: &mut TrainGraph, r: &Tensor, mode: Mode) -> Tensor {
    let y = g.forward(&HashMap::new(), mode, &["y"]).unwrap().remove("y").unwrap();
    y.mul(&r.reshape(y.shape()).unwrap()).unwrap().sum_all().unwrap()
}

/// Builds `x → f → y`, then checks d loss / d (every float initializer) against central
/// differences at up to 12 random elements each.
fn check(name: &str, x_shape: &[usize], extra: &[(&str, Vec<usize>)], build: impl Fn(&mut GraphBuilder) -> String) {
    check_mode(name, x_shape, extra, Mode::Eval, (-1.0, 1.0), build);
}

fn check_mode(name: &str, x_shape: &[usize], extra: &[(&str, Vec<usize>)], mode: Mode, range: (f32, f32), build: impl Fn(&mut GraphBuilder) -> String) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut b = GraphBuilder::new(name, 17);
    b.init_f32("x", rand_array(&mut rng, x_shape, range.0, range.1));
    for (w, shape) in extra {
        b.init_f32(w, rand_array(&mut rng, shape, -1.0, 1.0));
    }
    let out = build(&mut b);
    b.op_n("Identity", &[&out], &["y"], &[]);
    b.output_f32("y", &[]);
    let model = b.build();
    let mut g = TrainGraph::new(&model, &GraphOptions { trainable: true, ..GraphOptions::default() }).unwrap();
    let probe = g.forward(&HashMap::new(), mode, &["y"]).unwrap().remove("y").unwrap();
    let r = Tensor::from_vec((0..probe.elem_count()).map(|_| rng.random_range(-1f32..1.0)).collect::<Vec<_>>(), probe.elem_count(), g.device()).unwrap();
    let l = loss(&mut g, &r, mode);
    let grads = l.backward().unwrap();
    let params: Vec<(String, candle_core::Var)> = g.params().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert!(!params.is_empty(), "{name}: nothing trainable");
    for (pname, var) in params {
        let base: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let analytic: Vec<f32> = match grads.get(var.as_tensor()) {
            Some(gr) => gr.flatten_all().unwrap().to_vec1().unwrap(),
            None => vec![0.0; base.len()],
        };
        let picks: Vec<usize> = (0..base.len().min(12)).map(|_| rng.random_range(0..base.len())).collect();
        for &i in &picks {
            let eps = 1e-2f32;
            let mut at = |delta: f32| {
                let mut v = base.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), g.device()).unwrap()).unwrap();
                f64::from(loss(&mut g, &r, mode).to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap())
            };
            let numeric = ((at(eps) - at(-eps)) / (2.0 * f64::from(eps))) as f32;
            var.set(&Tensor::from_vec(base.clone(), var.shape(), g.device()).unwrap()).unwrap();
            let a = analytic[i];
            let tol = 2e-2 * (1.0 + a.abs().max(numeric.abs()));
            assert!((a - numeric).abs() <= tol, "{name}: d/d {pname}[{i}] analytic {a} vs numeric {numeric}");
        }
    }
}

fn ints(v: &[i64]) -> Attr {
    Attr::Ints(v.to_vec())
}

#[test]
fn convolutions() {
    check("conv", &[2, 3, 7, 7], &[("w", vec![4, 3, 3, 3]), ("b", vec![4])], |g| {
        g.op("Conv", &["x", "w", "b"], &[("pads", ints(&[1, 1, 1, 1])), ("strides", ints(&[2, 2])), ("kernel_shape", ints(&[3, 3]))])
    });
    check("conv-dilated", &[1, 2, 8, 8], &[("w", vec![3, 2, 3, 3])], |g| {
        g.op("Conv", &["x", "w"], &[("dilations", ints(&[2, 2])), ("pads", ints(&[0, 1, 2, 1]))])
    });
    check("depthwise", &[2, 4, 6, 6], &[("w", vec![4, 1, 3, 3])], |g| g.op("Conv", &["x", "w"], &[("group", Attr::Int(4)), ("pads", ints(&[1, 1, 1, 1]))]));
    check("depthwise-multiplier", &[1, 2, 5, 5], &[("w", vec![4, 1, 3, 3])], |g| g.op("Conv", &["x", "w"], &[("group", Attr::Int(2))]));
    check("grouped", &[1, 4, 5, 5], &[("w", vec![6, 2, 1, 1])], |g| g.op("Conv", &["x", "w"], &[("group", Attr::Int(2))]));
    check("conv-same-upper", &[1, 2, 5, 5], &[("w", vec![2, 2, 3, 3])], |g| {
        g.op("Conv", &["x", "w"], &[("auto_pad", Attr::Str("SAME_UPPER".into())), ("strides", ints(&[2, 2]))])
    });
}

#[test]
fn dense_layers() {
    check("gemm", &[3, 5], &[("w", vec![4, 5]), ("c", vec![4])], |g| {
        g.op("Gemm", &["x", "w", "c"], &[("transB", Attr::Int(1)), ("alpha", Attr::Float(0.5)), ("beta", Attr::Float(2.0))])
    });
    check("gemm-transA", &[5, 3], &[("w", vec![5, 4])], |g| g.op("Gemm", &["x", "w"], &[("transA", Attr::Int(1))]));
    check("matmul-2d-weight", &[2, 3, 5], &[("w", vec![5, 4])], |g| g.op("MatMul", &["x", "w"], &[]));
    check("matmul-batched", &[2, 3, 4, 5], &[("w", vec![2, 3, 5, 2])], |g| g.op("MatMul", &["x", "w"], &[]));
}

#[test]
fn elementwise_and_activations() {
    for op in ["Add", "Sub", "Mul", "Max", "Min"] {
        check(op, &[2, 3, 4], &[("w", vec![3, 1])], |g| g.op(op, &["x", "w"], &[]));
    }
    check_mode("Div", &[2, 3], &[], Mode::Eval, (-1.0, 1.0), |g| {
        let d = g.init_f32("d", ArrayD::from_shape_vec(IxDyn(&[3]), vec![1.5, -2.0, 3.0]).unwrap());
        g.op("Div", &["x", &d], &[])
    });
    for op in ["Sqrt", "Log", "Reciprocal"] {
        check_mode(op, &[2, 5], &[], Mode::Eval, (0.5, 2.0), |g| g.op(op, &["x"], &[]));
    }
    for op in ["Exp", "Neg", "Tanh", "Erf", "Sigmoid", "Relu", "Abs", "HardSwish", "HardSigmoid", "Gelu"] {
        check(op, &[2, 7], &[], |g| g.op(op, &["x"], &[]));
    }
    check("LeakyRelu", &[2, 7], &[], |g| g.op("LeakyRelu", &["x"], &[("alpha", Attr::Float(0.1))]));
    check("Pow", &[2, 5], &[], |g| {
        let e = g.init_f32("e", ArrayD::from_elem(IxDyn(&[]), 3.0));
        g.op("Pow", &["x", &e], &[])
    });
    check("Clip", &[3, 5], &[], |g| {
        let lo = g.init_f32("lo", ArrayD::from_elem(IxDyn(&[]), -0.5));
        let hi = g.init_f32("hi", ArrayD::from_elem(IxDyn(&[]), 0.6));
        g.op("Clip", &["x", &lo, &hi], &[])
    });
    check("Softmax", &[2, 3, 5], &[], |g| g.op("Softmax", &["x"], &[("axis", Attr::Int(1))]));
    check("Where", &[2, 4], &[("w", vec![2, 4])], |g| {
        let c = g.init("c", ArrayD::from_shape_vec(IxDyn(&[4]), vec![true, false, true, false]).unwrap());
        g.op("Where", &[&c, "x", "w"], &[])
    });
}

#[test]
fn normalisation() {
    check("LayerNormalization", &[2, 3, 6], &[("s", vec![6]), ("b", vec![6])], |g| {
        g.op("LayerNormalization", &["x", "s", "b"], &[("axis", Attr::Int(-1)), ("epsilon", Attr::Float(1e-5))])
    });
    for mode in [Mode::Eval, Mode::Train] {
        check_mode("BatchNormalization", &[4, 3, 2, 2], &[("s", vec![3]), ("b", vec![3])], mode, (-1.0, 1.0), |g| {
            let m = g.init_f32("m", ArrayD::from_shape_vec(IxDyn(&[3]), vec![0.1, -0.2, 0.0]).unwrap());
            let v = g.init_f32("v", ArrayD::from_shape_vec(IxDyn(&[3]), vec![0.5, 1.0, 2.0]).unwrap());
            g.op("BatchNormalization", &["x", "s", "b", &m, &v], &[])
        });
    }
}

#[test]
fn reductions_and_pooling() {
    for op in ["ReduceMean", "ReduceSum", "ReduceL2", "ReduceMax"] {
        check(op, &[2, 3, 4], &[], |g| {
            let axes = g.init("axes", ArrayD::from_shape_vec(IxDyn(&[1]), vec![1i64]).unwrap());
            g.op(op, &["x", &axes], &[("keepdims", Attr::Int(0))])
        });
    }
    check("GlobalAveragePool", &[2, 3, 4, 4], &[], |g| g.op("GlobalAveragePool", &["x"], &[]));
    check("GlobalMaxPool", &[2, 3, 4, 4], &[], |g| g.op("GlobalMaxPool", &["x"], &[]));
    check("MaxPool", &[1, 2, 6, 6], &[], |g| {
        g.op("MaxPool", &["x"], &[("kernel_shape", ints(&[3, 3])), ("strides", ints(&[2, 2])), ("pads", ints(&[1, 1, 1, 1]))])
    });
    check("AveragePool", &[1, 2, 5, 5], &[], |g| {
        g.op("AveragePool", &["x"], &[("kernel_shape", ints(&[2, 2])), ("strides", ints(&[2, 2])), ("pads", ints(&[0, 0, 1, 1]))])
    });
}

#[test]
fn shapes_and_indexing() {
    check("Flatten-Reshape-Transpose", &[2, 3, 4], &[], |g| {
        let f = g.op("Flatten", &["x"], &[("axis", Attr::Int(1))]);
        let s = g.init("s", ArrayD::from_shape_vec(IxDyn(&[3]), vec![0i64, 4, -1]).unwrap());
        let r = g.op("Reshape", &[&f, &s], &[]);
        g.op("Transpose", &[&r], &[("perm", ints(&[2, 0, 1]))])
    });
    check("Concat", &[2, 3], &[("w", vec![2, 2])], |g| g.op("Concat", &["x", "w"], &[("axis", Attr::Int(1))]));
    check("Slice", &[4, 6], &[], |g| {
        let st = g.init("st", ArrayD::from_shape_vec(IxDyn(&[2]), vec![1i64, 0]).unwrap());
        let en = g.init("en", ArrayD::from_shape_vec(IxDyn(&[2]), vec![-1i64, 6]).unwrap());
        let ax = g.init("ax", ArrayD::from_shape_vec(IxDyn(&[2]), vec![0i64, 1]).unwrap());
        let sp = g.init("sp", ArrayD::from_shape_vec(IxDyn(&[2]), vec![1i64, 2]).unwrap());
        g.op("Slice", &["x", &st, &en, &ax, &sp], &[])
    });
    check("Gather", &[5, 3], &[], |g| {
        let i = g.init("i", ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![4i64, 0, -1, 2]).unwrap());
        g.op("Gather", &["x", &i], &[("axis", Attr::Int(0))])
    });
    check("Unsqueeze-Squeeze-Expand", &[3, 1], &[], |g| {
        let a = g.init("a", ArrayD::from_shape_vec(IxDyn(&[1]), vec![0i64]).unwrap());
        let u = g.op("Unsqueeze", &["x", &a], &[]);
        let sq = g.init("sq", ArrayD::from_shape_vec(IxDyn(&[1]), vec![2i64]).unwrap());
        let s = g.op("Squeeze", &[&u, &sq], &[]);
        let shape = g.init("shape", ArrayD::from_shape_vec(IxDyn(&[2]), vec![2i64, 3]).unwrap());
        g.op("Expand", &[&s, &shape], &[])
    });
}

/// `x` (trainable) → QuantizeLinear(scale 0.1, int8) → DequantizeLinear → `y`.
fn qdq(values: Vec<f32>) -> TrainGraph {
    let mut b = GraphBuilder::new("qdq", 17);
    b.init_f32("x", ArrayD::from_shape_vec(IxDyn(&[values.len()]), values).unwrap());
    let s = b.init_f32("s", ArrayD::from_elem(IxDyn(&[]), 0.1));
    let z = b.init("z", ArrayD::from_elem(IxDyn(&[]), 0i8));
    let q = b.op("QuantizeLinear", &["x", &s, &z], &[]);
    b.op_n("DequantizeLinear", &[&q, &s, &z], &["y"], &[]);
    b.output_f32("y", &[]);
    TrainGraph::new(&b.build(), &GraphOptions { trainable: true, ..GraphOptions::default() }).unwrap()
}

/// d Σy / dx of a [`qdq`] graph, and y.
fn qdq_grad(values: Vec<f32>) -> (Vec<f32>, Vec<f32>) {
    let mut g = qdq(values);
    let y = g.forward(&HashMap::new(), Mode::Train, &["y"]).unwrap().remove("y").unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    let gx = grads.get(g.params()["x"].as_tensor()).unwrap().to_vec1().unwrap();
    (y.to_vec1().unwrap(), gx)
}

/// Fake quantization (QuantizeLinear → DequantizeLinear): gradient 1 inside the range, 0
/// where the value clips; the forward value is the quantized one.
#[test]
fn fake_quantization_is_straight_through() {
    let (v, gx) = qdq_grad(vec![0.26, -0.49, 3.0, -3.0]);
    let expect = [0.3, -0.5, 3.0, -3.0];
    for (a, e) in v.iter().zip(expect) {
        assert!((a - e).abs() < 1e-5, "{v:?}");
    }
    assert_eq!(gx, vec![1.0, 1.0, 1.0, 1.0], "3.0 and -3.0 are inside int8 × 0.1 = [-12.8, 12.7]");
    let (v, gx) = qdq_grad(vec![20.0, 0.2]);
    assert!((v[0] - 12.7).abs() < 1e-5, "{v:?}");
    assert_eq!(gx, vec![0.0, 1.0], "a clipped value gets no gradient");
}

/// An op with no candle mapping is refused when the graph is built, naming op and node.
#[test]
fn unsupported_ops_are_named() {
    let mut b = GraphBuilder::new("u", 17);
    b.init_f32("x", ArrayD::zeros(IxDyn(&[2, 2])));
    b.op_n("Einsum", &["x", "x"], &["y"], &[("equation", Attr::Str("ij,jk->ik".into()))]);
    b.output_f32("y", &[]);
    let e = TrainGraph::new(&b.build(), &GraphOptions::default()).err().expect("refused").to_string();
    assert!(e.contains("Einsum") && e.contains("einsum_node") && e.contains("not supported for training"), "{e}");
}
