//! The candle form of every reference model computes what ONNX Runtime computes (forward
//! parity, 1e-4 relative), on real evaluation rows.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::HashMap;
use std::path::PathBuf;

use tamp_data::Dataset;
use tamp_engine::{Session, SessionConfig};
use tamp_onnx::{Model, TensorValue};
use tamp_train::graph::{GraphOptions, Mode, TrainGraph, to_candle, to_nd};

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

/// Largest |a−b| relative to the largest |a| over the output.
fn parity(name: &str, rows: usize) -> f32 {
    let dir = models().join(name);
    let model = Model::load(dir.join("model.onnx")).unwrap();
    let data = Dataset::load(dir.join("eval.npz")).unwrap();
    let idx: Vec<usize> = (0..rows).collect();
    let feeds = data.select(&idx).unwrap();
    let mut session = Session::from_model(&model, &SessionConfig::default()).unwrap();
    let named: Vec<(&str, &TensorValue)> = feeds.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let expected = session.run(&named).unwrap();
    let mut g = TrainGraph::new(&model, &GraphOptions::default()).unwrap();
    let dev = g.device().clone();
    let cf: HashMap<String, candle_core::Tensor> = feeds.iter().map(|(k, v)| (k.clone(), to_candle(v, &dev).unwrap())).collect();
    let outs: Vec<String> = expected.iter().map(|(k, _)| k.clone()).collect();
    let wanted: Vec<&str> = outs.iter().map(String::as_str).collect();
    let got = g.forward(&cf, Mode::Eval, &wanted).unwrap();
    let mut worst = 0f32;
    for (name, value) in &expected {
        let TensorValue::F32(e) = value else { continue };
        let c = to_nd(&got[name]).unwrap();
        assert_eq!(c.shape(), e.shape(), "{name}");
        let scale = e.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let diff = e.iter().zip(c.iter()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        worst = worst.max(diff / scale);
    }
    worst
}

#[test]
fn resnet8_forward_matches_onnx_runtime() {
    let r = parity("fmnist-resnet8", 64);
    assert!(r < 1e-4, "relative difference {r}");
}

#[test]
fn minilm_forward_matches_onnx_runtime() {
    let r = parity("all-minilm-l6-v2", 16);
    assert!(r < 1e-4, "relative difference {r}");
}

#[test]
fn minilm_medium_forward_matches_onnx_runtime() {
    let r = parity("all-minilm-l6-v2-medium", 16);
    assert!(r < 1e-4, "relative difference {r}");
}

#[test]
fn efficientnet_forward_matches_onnx_runtime() {
    let r = parity("efficientnet-lite0", 4);
    assert!(r < 1e-4, "relative difference {r}");
}
