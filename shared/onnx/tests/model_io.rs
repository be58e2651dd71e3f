//! Load/save round trips, external data, corrupted files, and graph views on builder graphs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::HashSet;

use ndarray::{ArrayD, IxDyn};
use tamp_onnx::builder::{Attr, GraphBuilder, attribute};
use tamp_onnx::graph::{free_values, stats};
use tamp_onnx::proto::tensor_proto::DataType;
use tamp_onnx::tensor::{from_array, to_array};
use tamp_onnx::{ExternalData, GraphView, Model, OnnxError, SaveOptions};

fn weights(n: usize, seed: f32) -> ArrayD<f32> {
    ArrayD::from_shape_fn(IxDyn(&[n, n]), |ix| ((ix[0] * n + ix[1]) as f32 * 0.37 + seed).sin())
}

/// MatMul → Add(Constant) → If(cond, then: Relu(outer value), else: Neg(outer value)).
fn control_flow_model() -> Model {
    let mut then_b = GraphBuilder::new("then", 17);
    then_b.op_n("Relu", &["sum"], &["then_out"], &[]);
    then_b.output_f32("then_out", &[None, Some(8)]);
    let mut else_b = GraphBuilder::new("else", 17);
    else_b.op_n("Neg", &["sum"], &["else_out"], &[]);
    else_b.output_f32("else_out", &[None, Some(8)]);

    let mut b = GraphBuilder::new("cf", 17);
    let x = b.input_f32("x", &[None, Some(8)]);
    let cond = b.input("cond", DataType::Bool, &[]);
    let w = b.init_f32("w", weights(8, 0.5));
    let mm = b.op("MatMul", &[&x, &w], &[]);
    let bias = from_array("bias_value", &ArrayD::from_elem(IxDyn(&[8]), 0.25f32));
    b.op_n("Constant", &[], &["bias"], &[("value", Attr::Tensor(bias))]);
    b.op_n("Add", &[&mm, "bias"], &["sum"], &[]);
    b.op_n("If", &[&cond], &["y"], &[("then_branch", Attr::Graph(then_b.build_graph())), ("else_branch", Attr::Graph(else_b.build_graph()))]);
    b.output_f32("y", &[None, Some(8)]);
    b.build()
}

#[test]
fn save_then_load_is_lossless() {
    let dir = tempfile::tempdir().unwrap();
    let m = control_flow_model();
    let path = dir.path().join("m.onnx");
    m.save(&path, &SaveOptions::default()).unwrap();
    let back = Model::load(&path).unwrap();
    assert_eq!(m, back);
    back.save(dir.path().join("again.onnx"), &SaveOptions::default()).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(dir.path().join("again.onnx")).unwrap());
}

#[test]
fn external_data_round_trips_and_is_confined_to_the_model_folder() {
    let dir = tempfile::tempdir().unwrap();
    let m = control_flow_model();
    let path = dir.path().join("ext.onnx");
    let opts = SaveOptions { external_data: ExternalData::Always { location: "ext.onnx.data".into(), threshold: 16 } };
    m.save(&path, &opts).unwrap();
    assert!(dir.path().join("ext.onnx.data").metadata().unwrap().len() >= 8 * 8 * 4);
    let inline = m.to_bytes().unwrap().len() as u64;
    assert!(std::fs::metadata(&path).unwrap().len() + 100 < inline, "weights must have left the model file");
    let (loaded, info) = Model::load_with_info(&path).unwrap();
    assert_eq!(info.external_files, vec![dir.path().join("ext.onnx.data")]);
    assert_eq!(info.size_bytes, std::fs::metadata(&path).unwrap().len() + std::fs::metadata(dir.path().join("ext.onnx.data")).unwrap().len());
    assert_eq!(loaded, m);

    let bad = SaveOptions { external_data: ExternalData::Always { location: "../escape.data".into(), threshold: 0 } };
    assert!(m.save(dir.path().join("bad.onnx"), &bad).unwrap_err().to_string().contains("inside the model's folder"));

    std::fs::remove_file(dir.path().join("ext.onnx.data")).unwrap();
    let e = Model::load(&path).unwrap_err().to_string();
    assert!(e.contains("external data") && e.contains("ext.onnx.data"), "{e}");
}

#[test]
fn models_over_two_gib_go_to_external_data_automatically() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = GraphBuilder::new("big", 17);
    let x = b.input_f32("x", &[Some(1)]);
    let y = b.op("Identity", &[&x], &[]);
    b.output_f32(&y, &[Some(1)]);
    let mut m = b.build();
    // 2 GiB + 4 MiB of zero bytes in one tensor: over protobuf's limit.
    let n = (1usize << 29) + (1 << 20);
    let mut t = from_array("huge", &ArrayD::<f32>::zeros(IxDyn(&[1])));
    t.dims = vec![n as i64];
    t.raw_data = Some(vec![0u8; n * 4]);
    m.proto.graph.as_mut().unwrap().initializer.push(t);
    assert!(matches!(m.to_bytes(), Err(OnnxError::TooLarge { .. })));
    let path = dir.path().join("big.onnx");
    m.save(&path, &SaveOptions::default()).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() < 1 << 20);
    assert_eq!(std::fs::metadata(dir.path().join("big.onnx.data")).unwrap().len(), (n * 4) as u64);
    let back = Model::load(&path).unwrap();
    assert_eq!(back.graph().initializer[0].raw_data.as_ref().map(Vec::len), Some(n * 4));
}

#[test]
fn corrupted_and_foreign_files_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = control_flow_model().to_bytes().unwrap();
    let truncated = dir.path().join("truncated.onnx");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    let e = Model::load(&truncated).unwrap_err().to_string();
    assert!(e.contains("truncated.onnx") && e.contains("not a valid ONNX model"), "{e}");
    let text = dir.path().join("notes.onnx");
    std::fs::write(&text, b"hello, I am not a model").unwrap();
    assert!(Model::load(&text).unwrap_err().to_string().contains("not a valid ONNX model"));
    let empty = dir.path().join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    assert!(Model::load(&empty).unwrap_err().to_string().contains("no graph"));
    assert!(Model::load(dir.path().join("missing.onnx")).unwrap_err().to_string().contains("missing.onnx"));
}

#[test]
fn views_see_constants_subgraph_captures_and_order() {
    let m = control_flow_model();
    let view = GraphView::new(m.graph());
    // The If node reads `sum` only through its branches.
    let if_node = m.graph().node.iter().position(|n| n.op_type.as_deref() == Some("If")).unwrap();
    let add_node = view.producer("sum").unwrap();
    assert!(view.consumers("sum").contains(&if_node));
    let order = view.topological_order().unwrap();
    assert!(order.iter().position(|&i| i == add_node) < order.iter().position(|&i| i == if_node));
    let then_graph = m.graph().node[if_node].attribute[0].g.as_ref().unwrap();
    assert_eq!(free_values(then_graph), vec!["sum"]);
    // Weights in Constant nodes count as parameters and are reachable as constants.
    let s = stats(m.graph());
    assert_eq!(s.params, 64 + 8);
    assert_eq!(s.subgraphs, 2);
    assert_eq!(s.ops["If"], 1);
    assert_eq!(to_array::<f32>(view.constant("bias").unwrap()).unwrap().len(), 8);
    view.check(&HashSet::new()).unwrap();
}

#[test]
fn check_rejects_a_subgraph_reading_an_undefined_value() {
    let mut m = control_flow_model();
    let g = m.proto.graph.as_mut().unwrap();
    let if_node = g.node.iter_mut().find(|n| n.op_type.as_deref() == Some("If")).unwrap();
    if_node.attribute[0].g.as_mut().unwrap().node[0].input[0] = "ghost".into();
    let e = GraphView::new(m.graph()).check(&HashSet::new()).unwrap_err().to_string();
    assert!(e.contains("ghost") && e.contains("subgraph"), "{e}");
}

#[test]
fn attributes_carry_their_type() {
    let a = attribute("axis", Attr::Int(1));
    assert_eq!(a.r#type, Some(tamp_onnx::proto::attribute_proto::AttributeType::Int as i32));
}
