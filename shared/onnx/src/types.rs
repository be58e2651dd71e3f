//! Element types of every value in a graph, inferred without running it: declared types
//! (inputs, `value_info`, initializers, `Constant` nodes) first, then one forward sweep in
//! topological order with the typing rule of each op. What passes need it for: never
//! treating an integer or boolean value (a `Shape → Slice → Concat → Reshape` chain, an
//! attention-mask path) as an activation to calibrate or quantize.
//!
//! Values the rules cannot type are absent from the map; callers decide what unknown means.

use std::collections::HashMap;

use crate::graph::{GraphView, attr};
use crate::proto::tensor_proto::DataType;
use crate::proto::type_proto::Value;
use crate::proto::{GraphProto, NodeProto, ValueInfoProto};

/// The element type a value info declares, if it declares a tensor type.
pub fn declared(v: &ValueInfoProto) -> Option<DataType> {
    match v.r#type.as_ref()?.value.as_ref()? {
        Value::TensorType(t) => t.elem_type.and_then(|e| DataType::try_from(e).ok()).filter(|d| *d != DataType::Undefined),
        _ => None,
    }
}

/// Element types of the values of `g` (its subgraphs' values are not included).
pub fn elem_types(g: &GraphProto) -> HashMap<String, DataType> {
    let mut ty: HashMap<String, DataType> = HashMap::new();
    for v in g.input.iter().chain(&g.value_info).chain(&g.output) {
        if let (Some(name), Some(d)) = (v.name.as_deref(), declared(v)) {
            ty.insert(name.to_owned(), d);
        }
    }
    for t in &g.initializer {
        if let (Some(name), Some(d)) = (t.name.as_deref(), t.data_type.and_then(|d| DataType::try_from(d).ok())) {
            ty.insert(name.to_owned(), d);
        }
    }
    let view = GraphView::new(g);
    let order: Vec<usize> = view.topological_order().unwrap_or_else(|_| (0..g.node.len()).collect());
    for i in order {
        let n = &g.node[i];
        let inputs: Vec<Option<DataType>> = n.input.iter().map(|v| ty.get(v).copied()).collect();
        for (slot, out) in n.output.iter().enumerate() {
            if out.is_empty() || ty.contains_key(out) {
                continue;
            }
            if let Some(d) = rule(n, slot, &inputs) {
                ty.insert(out.clone(), d);
            }
        }
    }
    ty
}

fn int_attr_type(n: &NodeProto, name: &str) -> Option<DataType> {
    attr(n, name).and_then(|a| a.i).and_then(|d| DataType::try_from(d as i32).ok())
}

/// The type of output `slot` of `n` given its inputs' types.
fn rule(n: &NodeProto, slot: usize, inputs: &[Option<DataType>]) -> Option<DataType> {
    let first = inputs.first().copied().flatten();
    let domain = n.domain.as_deref().unwrap_or("");
    if !(domain.is_empty() || domain == "ai.onnx") {
        return match (domain, n.op_type.as_deref().unwrap_or("")) {
            ("com.microsoft", "DynamicQuantizeMatMul" | "MatMulNBits" | "QGemm" | "QLinearConv") => Some(DataType::Float),
            _ => None,
        };
    }
    let op = n.op_type.as_deref().unwrap_or("");
    Some(match op {
        "Shape" | "Size" | "NonZero" | "ArgMax" | "ArgMin" | "NonMaxSuppression" => DataType::Int64,
        "Unique" if slot > 0 => DataType::Int64,
        "TopK" | "MaxPool" if slot == 1 => DataType::Int64,
        "Cast" => int_attr_type(n, "to")?,
        "CastLike" => inputs.get(1).copied().flatten()?,
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "Not" | "And" | "Or" | "Xor" | "IsNaN" | "IsInf" => DataType::Bool,
        "Constant" => {
            let t = n.attribute.iter().find_map(|a| a.t.as_ref())?;
            t.data_type.and_then(|d| DataType::try_from(d).ok())?
        }
        "ConstantOfShape" => {
            attr(n, "value").and_then(|a| a.t.as_ref()).and_then(|t| t.data_type).and_then(|d| DataType::try_from(d).ok()).unwrap_or(DataType::Float)
        }
        "EyeLike" | "RandomNormalLike" | "RandomUniformLike" => int_attr_type(n, "dtype").or(first)?,
        "RandomNormal" | "RandomUniform" => int_attr_type(n, "dtype").unwrap_or(DataType::Float),
        "QuantizeLinear" => inputs.get(2).copied().flatten().or_else(|| int_attr_type(n, "output_dtype")).unwrap_or(DataType::Uint8),
        "DequantizeLinear" => inputs.get(1).copied().flatten().unwrap_or(DataType::Float),
        "DynamicQuantizeLinear" => {
            if slot == 1 {
                DataType::Float
            } else {
                DataType::Uint8
            }
        }
        "MatMulInteger" | "ConvInteger" => DataType::Int32,
        "QLinearConv" | "QLinearMatMul" => inputs.get(7).copied().flatten()?,
        "Where" => inputs.get(1).copied().flatten().or(inputs.get(2).copied().flatten())?,
        "Range" => first?,
        "Mod" | "BitShift" => first?,
        "Loop" | "If" | "Scan" => return None,
        "OneHot" => inputs.get(2).copied().flatten()?,
        "StringNormalizer" => DataType::String,
        _ => first?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{Attr, GraphBuilder};

    #[test]
    fn shape_paths_are_integers_and_activations_float() {
        let mut b = GraphBuilder::new("t", 13);
        let x = b.input_f32("x", &[Some(1), Some(4), Some(2)]);
        let s = b.op("Shape", &[&x], &[]);
        let idx = b.init("idx", ndarray::arr1(&[0i64, 1]).into_dyn());
        let g = b.op("Gather", &[&s, &idx], &[]);
        let minus = b.init("minus", ndarray::arr1(&[-1i64]).into_dyn());
        let c = b.op("Concat", &[&g, &minus], &[("axis", Attr::Int(0))]);
        let r = b.op("Reshape", &[&x, &c], &[]);
        let m = b.op("Equal", &[&r, &r], &[]);
        let f = b.op("Cast", &[&m], &[("to", Attr::Int(DataType::Float as i64))]);
        b.output_f32(&f, &[None, None, None]);
        let model = b.build();
        let t = elem_types(model.graph());
        assert_eq!(t[&s], DataType::Int64);
        assert_eq!(t[&g], DataType::Int64);
        assert_eq!(t[&c], DataType::Int64);
        assert_eq!(t[&r], DataType::Float);
        assert_eq!(t[&m], DataType::Bool);
        assert_eq!(t[&f], DataType::Float);
    }
}
