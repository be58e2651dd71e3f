//! Unit tests of the converter's padding, reshape and malformed-node handling.
use super::*;

#[test]
fn same_padding_is_recognised_for_odd_and_even_inputs() {
    // EfficientNet's stem: 3×3 stride 2 on 224 pads (0, 1): TF's SAME.
    assert_eq!(padding_for([224, 224], [3, 3], [2, 2], [1, 1], [0, 0, 1, 1]), Some(Padding::Same));
    assert_eq!(padding_for([28, 28], [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]), Some(Padding::Same));
    assert_eq!(padding_for([28, 28], [3, 3], [1, 1], [1, 1], [0, 0, 0, 0]), Some(Padding::Valid));
    // PyTorch's symmetric (1, 1) with stride 2 on an even input is not SAME.
    assert_eq!(padding_for([28, 28], [3, 3], [2, 2], [1, 1], [1, 1, 1, 1]), None);
}

#[test]
fn malformed_nodes_are_problems_not_panics() {
    use tamp_onnx::builder::{Attr, GraphBuilder};
    let mut b = GraphBuilder::new("bad", 17);
    let x = b.input_f32("x", &[None, Some(2), Some(8), Some(8)]);
    let w = b.init_f32("w", ArrayD::zeros(vec![2, 2, 3, 3]));
    let c = b.op("Conv", &[&x], &[]);
    let d = b.op("Conv", &[&x, &w], &[("strides", Attr::Ints(vec![0, 1]))]);
    let q = b.op("QuantizeLinear", &[], &[]);
    b.op_n("Add", &[&c, &d], &["y"], &[]);
    b.output_f32("y", &[None, Some(2), Some(8), Some(8)]);
    b.output_f32(&q, &[None]);
    let problems = convert(&b.build(), &Options::default()).err().unwrap_or_default();
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(text.iter().any(|t| t.contains("Conv needs 2 input(s)")), "{text:?}");
    assert!(text.iter().any(|t| t.contains("strides and dilations must be positive")), "{text:?}");
    assert!(text.iter().any(|t| t.contains("QuantizeLinear needs 2 input(s)")), "{text:?}");
}

#[test]
fn reshape_dims_follows_onnx_zero_and_minus_one() {
    assert_eq!(reshape_dims(&[2, 3, 4], [0, -1].into_iter()), Some(vec![2, 12]));
    assert_eq!(reshape_dims(&[2, 3, 4], [4, 6].into_iter()), Some(vec![4, 6]));
    assert_eq!(reshape_dims(&[2, 3, 4], [5, -1].into_iter()), None);
}
