//! Early-exit heads and the If cascade on the reference CNN, run in ONNX Runtime.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::PathBuf;

use tamp_engine::dataset::Dataset;
use tamp_engine::passes::exits::{ExitPoint, HeadForm, attach_heads, cascade, keep_outputs, residual_points};
use tamp_engine::{Session, SessionConfig};
use tamp_onnx::{Model, TensorValue};

fn outputs(model: &Model, data: &Dataset, rows: &[usize]) -> Vec<(String, ndarray::ArrayD<f32>)> {
    let feeds = data.select(rows).unwrap();
    let named: Vec<(&str, &TensorValue)> = feeds.iter().map(|(k, v)| (k.as_str(), v)).collect();
    Session::from_model(model, &SessionConfig::default())
        .unwrap()
        .run(&named)
        .unwrap()
        .into_iter()
        .map(|(k, v)| match v {
            TensorValue::F32(a) => (k, a),
            other => panic!("{other:?}"),
        })
        .collect()
}

/// Two residual blocks before the last get heads; the cascade at τ = 0 answers from the first
/// exit for every row, at τ above 1 from the full model, and in between it matches the
/// per-batch rule; the prefix model computes the first exit alone.
#[test]
fn cascade_answers_from_the_first_confident_exit() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/fmnist-resnet8");
    let model = Model::load(dir.join("model.onnx")).unwrap();
    let data = Dataset::load(dir.join("eval.npz")).unwrap();
    let points = residual_points(&model);
    assert_eq!(points.len(), 2, "{points:?}");
    let at = |k: usize, shape: [usize; 3]| ExitPoint { value: points[k].clone(), shape };
    // Block 1's 16×14×14 map pools 2×2 to 7×7; block 2's 32×7×7 is read as it is.
    let (heads, exits, params) = attach_heads(&model, &[at(0, [16, 14, 14]), at(1, [32, 7, 7])], 10, HeadForm { conv_channels: 0, grid: 7 }, 1).unwrap();
    assert_eq!(exits, ["exit_1", "exit_2"]);
    assert_eq!(params[1], ["exit_2.weight", "exit_2.bias"]);
    let dims = |name: &str| heads.graph().initializer.iter().find(|t| t.name.as_deref() == Some(name)).unwrap().dims.clone();
    assert_eq!((dims("exit_1.weight"), dims("exit_2.weight")), (vec![10, 16 * 49], vec![10, 32 * 49]));
    let final_out = model.graph().output[0].name.clone().unwrap();
    let all = outputs(&heads, &data, &[0]);
    let get = |name: &str| all.iter().find(|(k, _)| k == name).unwrap().1.clone();
    for (tau, want) in [(0.0, get("exit_1")), (1.5, get(&final_out))] {
        let c = cascade(&heads, &exits, &final_out, tau).unwrap();
        let got = outputs(&c, &data, &[0]);
        assert_eq!(got.len(), 1);
        let err = (&got[0].1 - &want).mapv(f32::abs).fold(0f32, |m, &v| m.max(v));
        assert!(err < 1e-5, "τ = {tau}: {err}");
    }
    let prefix = keep_outputs(&heads, &["exit_1".to_owned()]).unwrap();
    assert!(prefix.graph().node.len() < model.graph().node.len() / 2 + 4, "{} nodes", prefix.graph().node.len());
    let p = outputs(&prefix, &data, &[0, 1]);
    assert_eq!(p[0].1.shape(), [2, 10]);
}
