//! Transformer layer dropping on the reference MiniLM encoder, run in ONNX Runtime.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::PathBuf;

use tamp_engine::dataset::Dataset;
use tamp_engine::passes::layers::{boundaries, drop_layers, every_kth};
use tamp_engine::{Session, SessionConfig};
use tamp_onnx::{Model, TensorValue};

fn minilm() -> (Model, Dataset) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/all-minilm-l6-v2");
    (Model::load(dir.join("model.onnx")).unwrap(), Dataset::load(dir.join("eval.npz")).unwrap())
}

fn embeddings(model: &Model, data: &Dataset) -> Vec<Vec<f32>> {
    let feeds = data.select(&(0..8).collect::<Vec<_>>()).unwrap();
    let named: Vec<(&str, &TensorValue)> = feeds.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let out = Session::from_model(model, &SessionConfig::default()).unwrap().run(&named).unwrap().remove(0).1;
    let TensorValue::F32(a) = out else { panic!("float output") };
    a.outer_iter().map(|r| r.iter().copied().collect()).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    dot / (a.iter().map(|x| x * x).sum::<f32>().sqrt() * b.iter().map(|x| x * x).sum::<f32>().sqrt())
}

/// Six layers found; keeping every other one (1, 3, 5) gives a graph ONNX Runtime runs with
/// the teacher's outputs and shapes, half the layer weights, and the kept layers' weights
/// byte for byte; the last layer cannot be dropped, and the reason says which to keep.
#[test]
fn minilm_keeps_every_other_layer() {
    let (teacher, data) = minilm();
    let b = boundaries(&teacher).unwrap();
    assert_eq!(b.len(), 6, "{b:?}");
    let keep = every_kth(6, 2);
    let student = drop_layers(&teacher, &keep).unwrap();
    assert_eq!(boundaries(&student).unwrap().len(), 3);
    let size = |m: &Model| m.graph().initializer.iter().map(|t| t.raw_data.as_ref().map_or(0, Vec::len)).sum::<usize>();
    let (ts, ss) = (size(&teacher), size(&student));
    // Each layer holds 4·384² + 2·384·1536 weights (≈ 7.1 MB in fp32) beside 12.5 MB of embeddings.
    let removed = ts - ss;
    assert!((20_000_000..23_000_000).contains(&removed), "{removed} bytes removed");
    for t in &student.graph().initializer {
        let same = teacher.graph().initializer.iter().find(|x| x.name == t.name).expect("every student weight is a teacher weight");
        assert_eq!(same.raw_data, t.raw_data);
    }
    let (e_t, e_s) = (embeddings(&teacher, &data), embeddings(&student, &data));
    assert_eq!(e_t[0].len(), e_s[0].len());
    let mean = e_t.iter().zip(&e_s).map(|(a, b)| cosine(a, b)).sum::<f32>() / e_t.len() as f32;
    assert!(mean.is_finite() && mean < 0.999, "the student differs from the teacher before training: {mean}");
    let e = drop_layers(&teacher, &[0, 2, 4]).unwrap_err().to_string();
    assert!(e.contains("last layer") && e.contains("[1, 3, 5]"), "{e}");
    let e = drop_layers(&teacher, &[1, 7]).unwrap_err().to_string();
    assert!(e.contains("layer 7 does not exist"), "{e}");
}
