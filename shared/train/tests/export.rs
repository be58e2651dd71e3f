//! The exported ONNX graph computes what the candle network computes (differential test
//! through real ONNX Runtime), including the im2col convolutions and batch-norm statistics.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use ndarray::{ArrayD, IxDyn};
use tamp_engine::{Session, SessionConfig};
use tamp_onnx::TensorValue;
use tamp_train::resnet::ResNet;

#[test]
fn onnx_export_matches_candle() {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let net = ResNet::new(4, 10, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
    let n = 6;
    let pixels: Vec<f32> = (0..n * 784).map(|i| ((i as f32) * 0.017).sin()).collect();
    let x = Tensor::from_vec(pixels.clone(), (n, 1, 28, 28), &dev).unwrap();
    // A few training-mode passes move the batch-norm running statistics off their defaults.
    for _ in 0..3 {
        net.forward(&x, true).unwrap();
    }
    let expected = net.forward(&x, false).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();

    let model = net.export(17).unwrap();
    let mut session = Session::from_model(&model, &SessionConfig::default()).unwrap();
    let input = TensorValue::F32(ArrayD::from_shape_vec(IxDyn(&[n, 1, 28, 28]), pixels).unwrap());
    let out = session.run(&[("input", &input)]).unwrap();
    let TensorValue::F32(logits) = &out[0].1 else { panic!("float logits") };
    assert_eq!(logits.shape(), &[n, 10]);
    let max = logits.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(max < 1e-4, "ONNX and candle disagree by {max}");
}
