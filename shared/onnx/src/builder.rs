//! A small graph builder for tests, fixtures and generated reference models.

use ndarray::ArrayD;

use crate::model::Model;
use crate::proto::attribute_proto::AttributeType;
use crate::proto::tensor_proto::DataType;
use crate::proto::tensor_shape_proto::{Dimension, dimension};
use crate::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, type_proto,
};
use crate::tensor::{Element, from_array};

/// An attribute value for [`GraphBuilder::op`].
#[derive(Debug, Clone)]
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    Str(String),
    Tensor(TensorProto),
    Graph(GraphProto),
}

/// Makes an attribute proto.
pub fn attribute(name: &str, value: Attr) -> AttributeProto {
    let mut a = AttributeProto { name: Some(name.to_owned()), ..Default::default() };
    let ty = match value {
        Attr::Int(v) => {
            a.i = Some(v);
            AttributeType::Int
        }
        Attr::Float(v) => {
            a.f = Some(v);
            AttributeType::Float
        }
        Attr::Ints(v) => {
            a.ints = v;
            AttributeType::Ints
        }
        Attr::Floats(v) => {
            a.floats = v;
            AttributeType::Floats
        }
        Attr::Str(v) => {
            a.s = Some(v.into_bytes());
            AttributeType::String
        }
        Attr::Tensor(t) => {
            a.t = Some(t);
            AttributeType::Tensor
        }
        Attr::Graph(g) => {
            a.g = Some(g);
            AttributeType::Graph
        }
    };
    a.r#type = Some(ty as i32);
    a
}

/// A tensor value info; `None` dims are dynamic (named `d0`, `d1`, … after their axis).
pub fn value_info(name: &str, elem: DataType, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .enumerate()
        .map(|(i, d)| Dimension {
            value: Some(match d {
                Some(v) => dimension::Value::DimValue(*v),
                None => dimension::Value::DimParam(if i == 0 { "batch".into() } else { format!("d{i}") }),
            }),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_owned()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type: Some(elem as i32), shape: Some(TensorShapeProto { dim }) })),
            denotation: None,
        }),
        ..Default::default()
    }
}

/// Builds a graph node by node; value names are generated unless given.
#[derive(Debug)]
pub struct GraphBuilder {
    graph: GraphProto,
    opset: i64,
    counter: usize,
}

impl GraphBuilder {
    /// A new builder for graph `name` importing the default domain at `opset`.
    pub fn new(name: &str, opset: i64) -> Self {
        Self { graph: GraphProto { name: Some(name.to_owned()), ..Default::default() }, opset, counter: 0 }
    }

    fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{}_{}", prefix.to_lowercase(), self.counter)
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, elem: DataType, dims: &[Option<i64>]) -> String {
        self.graph.input.push(value_info(name, elem, dims));
        name.to_owned()
    }

    /// Declares a float graph input.
    pub fn input_f32(&mut self, name: &str, dims: &[Option<i64>]) -> String {
        self.input(name, DataType::Float, dims)
    }

    /// Adds an initializer.
    pub fn init<T: Element>(&mut self, name: &str, value: ArrayD<T>) -> String {
        self.graph.initializer.push(from_array(name, &value));
        name.to_owned()
    }

    /// Adds a float initializer.
    pub fn init_f32(&mut self, name: &str, value: ArrayD<f32>) -> String {
        self.init(name, value)
    }

    /// Adds a node with one generated output; returns the output's name.
    pub fn op(&mut self, op_type: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        let out = self.fresh(op_type);
        self.op_n(op_type, inputs, &[&out], attrs);
        out
    }

    /// Adds a node with named outputs (use "" for omitted optional inputs).
    pub fn op_n(&mut self, op_type: &str, inputs: &[&str], outputs: &[&str], attrs: &[(&str, Attr)]) {
        let name = self.fresh(&format!("{op_type}_node"));
        self.graph.node.push(NodeProto {
            name: Some(name),
            op_type: Some(op_type.to_owned()),
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: outputs.iter().map(|s| (*s).to_owned()).collect(),
            attribute: attrs.iter().map(|(n, v)| attribute(n, v.clone())).collect(),
            ..Default::default()
        });
    }

    /// Declares a graph output.
    pub fn output(&mut self, name: &str, elem: DataType, dims: &[Option<i64>]) {
        self.graph.output.push(value_info(name, elem, dims));
    }

    /// Declares a float graph output.
    pub fn output_f32(&mut self, name: &str, dims: &[Option<i64>]) {
        self.output(name, DataType::Float, dims);
    }

    /// The graph alone (for `If`/`Loop` bodies).
    pub fn build_graph(self) -> GraphProto {
        self.graph
    }

    /// The model (IR version 8, which ONNX Runtime 1.31 and onnx 1.23 both accept).
    pub fn build(self) -> Model {
        Model::new(ModelProto {
            ir_version: Some(8),
            producer_name: Some("tamp".into()),
            producer_version: Some(env!("CARGO_PKG_VERSION").into()),
            opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(self.opset) }],
            graph: Some(self.graph),
            ..Default::default()
        })
    }
}
