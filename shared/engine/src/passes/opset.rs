//! Opset upgrade to 13: what `onnx.version_converter` does for the ops real exporters of
//! opsets 7–12 emit (older PyTorch, Paddle, tf2onnx), so a user holding only the `.onnx`
//! file never has to re-export. Per-axis QuantizeLinear (every int8 pass) needs 13.
//!
//! Ops whose schema changed in a way that is not a superset between the model's opset and 13,
//! and how each is rewritten (inside `If`/`Loop`/`Scan` bodies too):
//! - `Squeeze`, `Unsqueeze`, `ReduceSum` (< 13): `axes` attribute → int64 input;
//! - `Split` (< 13): `split` attribute → int64 input;
//! - `Softmax`, `LogSoftmax`, `Hardmax` (< 13): the old form coerces the input to 2-D at
//!   `axis` (default 1); where the axis is the last one the new form is the same op, else
//!   `Flatten → op(axis 1) → Reshape(Shape(x))` reproduces it exactly;
//! - `Clip` (< 11): `min`/`max` attributes → inputs; `Pad` (< 11): `pads`/`value` → inputs;
//! - `Slice` (< 10): `starts`/`ends`/`axes` → inputs; `TopK` (< 10): `k` → input;
//! - `Upsample` (removed at 10) and `Resize` (10) → `Resize` with `asymmetric` coordinates
//!   and `floor` rounding, their old sampling;
//! - `Dropout` (< 12): inference identity → `Identity`;
//! - `BatchNormalization` (< 9): `spatial` (1 only), `is_test`, `consumed_inputs` dropped;
//! - `Scatter` (deprecated at 11) → `ScatterElements`.
//!
//! Everything else in opsets 7–12 is a subset of its opset-13 form. Below 7 (legacy
//! broadcasting attributes) the model is refused with the reason.

use std::collections::{BTreeMap, HashMap};

use ndarray::{ArrayD, IxDyn};
use tamp_onnx::builder::{Attr, attribute};
use tamp_onnx::graph::{attr, attr_int, attr_ints, node_label};
use tamp_onnx::proto::{AttributeProto, GraphProto, NodeProto, TensorProto};
use tamp_onnx::tensor::from_array;
use tamp_onnx::{Model, OnnxError, Pass, Patch};

/// The opset the upgrade targets.
pub const TARGET: i64 = 13;
/// The oldest opset converted.
pub const OLDEST: i64 = 7;

/// Upgrades the default-domain opset to [`TARGET`]; reports rewritten nodes by op type.
#[derive(Debug, Default, Clone, Copy)]
pub struct UpgradeOpset;

/// What the upgrade did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OpsetUpgrade {
    pub from: i64,
    pub to: i64,
    /// Rewritten nodes by original op type (subgraphs included).
    pub rewritten: BTreeMap<String, usize>,
}

fn op(n: &NodeProto) -> &str {
    n.op_type.as_deref().unwrap_or("")
}

fn is_default_domain(n: &NodeProto) -> bool {
    matches!(n.domain.as_deref(), None | Some("") | Some("ai.onnx"))
}

fn without(n: &NodeProto, names: &[&str]) -> Vec<AttributeProto> {
    n.attribute.iter().filter(|a| !names.contains(&a.name.as_deref().unwrap_or(""))).cloned().collect()
}

fn ints_tensor(name: &str, v: &[i64]) -> TensorProto {
    from_array(name, &ndarray::Array1::from(v.to_vec()).into_dyn())
}

fn scalar(name: &str, v: f32) -> TensorProto {
    from_array(name, &ArrayD::from_elem(IxDyn(&[]), v))
}

fn new_node(op_type: &str, name: String, input: Vec<String>, output: Vec<String>, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto { op_type: Some(op_type.into()), name: Some(name), input, output, attribute, ..Default::default() }
}

/// Rewrites of one node: the replacement nodes and the constants they read.
struct Rewrite {
    nodes: Vec<NodeProto>,
    constants: Vec<TensorProto>,
}

/// A unique prefix for the values a rewrite of `n` adds.
fn stem(n: &NodeProto) -> String {
    let base = match n.name.as_deref() {
        Some(s) if !s.is_empty() => s,
        _ => n.output.first().map_or("node", String::as_str),
    };
    format!("{base}.op13")
}

/// Converts node `n` of a graph at opset `from`; `None` when it is valid at 13 as it is.
/// `rank` gives a value's rank where declared.
fn convert(n: &NodeProto, from: i64, rank: &dyn Fn(&str) -> Option<usize>) -> Result<Option<Rewrite>, OnnxError> {
    if !is_default_domain(n) {
        return Ok(None);
    }
    let s = stem(n);
    let refuse = |why: &str| Err(OnnxError::Graph(format!("cannot upgrade {} from opset {from} to {TARGET}: {why}", node_label(n))));
    let one = |node: NodeProto, constants: Vec<TensorProto>| Ok(Some(Rewrite { nodes: vec![node], constants }));
    let with_inputs = |extra: Vec<(String, Option<TensorProto>)>, drop: &[&str], op_type: &str| {
        let mut node = n.clone();
        node.op_type = Some(op_type.into());
        node.attribute = without(n, drop);
        let mut constants = Vec::new();
        for (name, t) in extra {
            node.input.push(name);
            constants.extend(t);
        }
        // Trailing empty optional inputs are dropped.
        while node.input.last().is_some_and(String::is_empty) {
            node.input.pop();
        }
        (node, constants)
    };
    match op(n) {
        "Squeeze" | "Unsqueeze" | "ReduceSum" if from < 13 => {
            let Some(a) = attr(n, "axes") else {
                let (node, c) = with_inputs(vec![], &[], op(n));
                return one(node, c);
            };
            let name = format!("{s}.axes");
            let (node, c) = with_inputs(vec![(name.clone(), Some(ints_tensor(&name, &a.ints)))], &["axes"], op(n));
            one(node, c)
        }
        "Split" if from < 13 => {
            let split = attr_ints(n, "split");
            if split.is_empty() {
                return Ok(None);
            }
            let name = format!("{s}.split");
            let (node, c) = with_inputs(vec![(name.clone(), Some(ints_tensor(&name, split)))], &["split"], "Split");
            one(node, c)
        }
        "Softmax" | "LogSoftmax" | "Hardmax" if from < 13 => {
            let x = n.input.first().cloned().unwrap_or_default();
            let axis = attr_int(n, "axis", 1);
            if let Some(r) = rank(&x) {
                let a = if axis < 0 { axis + r as i64 } else { axis };
                if a == r as i64 - 1 {
                    let mut node = n.clone();
                    node.attribute = without(n, &["axis"]);
                    node.attribute.push(attribute("axis", Attr::Int(a)));
                    return one(node, vec![]);
                }
            }
            // The old semantics exactly: flatten to 2-D at `axis`, normalise rows, restore.
            let (flat, soft, shape) = (format!("{s}.flat"), format!("{s}.2d"), format!("{s}.shape"));
            let out = n.output.first().cloned().unwrap_or_default();
            Ok(Some(Rewrite {
                nodes: vec![
                    new_node("Flatten", format!("{s}.Flatten"), vec![x.clone()], vec![flat.clone()], vec![attribute("axis", Attr::Int(axis))]),
                    new_node(op(n), format!("{s}.{}", op(n)), vec![flat], vec![soft.clone()], vec![attribute("axis", Attr::Int(1))]),
                    new_node("Shape", format!("{s}.Shape"), vec![x], vec![shape.clone()], vec![]),
                    new_node("Reshape", format!("{s}.Reshape"), vec![soft, shape], vec![out], vec![]),
                ],
                constants: vec![],
            }))
        }
        "Clip" if from < 11 => {
            let (lo, hi) = (format!("{s}.min"), format!("{s}.max"));
            let min = attr(n, "min").and_then(|a| a.f);
            let max = attr(n, "max").and_then(|a| a.f);
            let extra = vec![
                (if min.is_some() { lo.clone() } else { String::new() }, min.map(|v| scalar(&lo, v))),
                (if max.is_some() { hi.clone() } else { String::new() }, max.map(|v| scalar(&hi, v))),
            ];
            let (node, c) = with_inputs(extra, &["min", "max"], "Clip");
            one(node, c)
        }
        "Pad" if from < 11 => {
            let (p, v) = (format!("{s}.pads"), format!("{s}.value"));
            let pads = attr_ints(n, "pads").to_vec();
            let value = attr(n, "value").and_then(|a| a.f).unwrap_or(0.0);
            let (node, c) = with_inputs(vec![(p.clone(), Some(ints_tensor(&p, &pads))), (v.clone(), Some(scalar(&v, value)))], &["pads", "value"], "Pad");
            one(node, c)
        }
        "Slice" if from < 10 => {
            let mut extra = Vec::new();
            for key in ["starts", "ends", "axes"] {
                if let Some(a) = attr(n, key) {
                    let name = format!("{s}.{key}");
                    extra.push((name.clone(), Some(ints_tensor(&name, &a.ints))));
                }
            }
            let (node, c) = with_inputs(extra, &["starts", "ends", "axes"], "Slice");
            one(node, c)
        }
        "TopK" if from < 10 => {
            let k = format!("{s}.k");
            let (node, c) = with_inputs(vec![(k.clone(), Some(ints_tensor(&k, &[attr_int(n, "k", 1)])))], &["k"], "TopK");
            one(node, c)
        }
        "Upsample" | "Resize" if op(n) == "Upsample" || from < 11 => {
            let mode = attr(n, "mode").and_then(|a| a.s.clone()).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_else(|| "nearest".into());
            let mode = match mode.as_str() {
                "nearest" => "nearest",
                "linear" | "bilinear" => "linear",
                other => return refuse(&format!("resize mode '{other}' has no opset-13 equivalent")),
            };
            let x = n.input.first().cloned().unwrap_or_default();
            let mut constants = Vec::new();
            let scales = match (n.input.get(1), attr(n, "scales")) {
                (Some(v), _) if !v.is_empty() => v.clone(),
                (_, Some(a)) => {
                    let name = format!("{s}.scales");
                    constants.push(from_array(&name, &ndarray::Array1::from(a.floats.clone()).into_dyn()));
                    name
                }
                _ => return refuse("no scales"),
            };
            let mut attrs = vec![attribute("mode", Attr::Str(mode.into())), attribute("coordinate_transformation_mode", Attr::Str("asymmetric".into()))];
            if mode == "nearest" {
                attrs.push(attribute("nearest_mode", Attr::Str("floor".into())));
            }
            let node = new_node("Resize", n.name.clone().unwrap_or_else(|| format!("{s}.Resize")), vec![x, String::new(), scales], n.output.clone(), attrs);
            one(node, constants)
        }
        "Dropout" if from < 12 => {
            if n.output.iter().skip(1).any(|o| !o.is_empty()) {
                return refuse("its mask output is read; re-export for inference (Dropout is the identity there)");
            }
            let node = new_node(
                "Identity",
                n.name.clone().unwrap_or_else(|| format!("{s}.Identity")),
                n.input.iter().take(1).cloned().collect(),
                n.output.clone(),
                vec![],
            );
            one(node, vec![])
        }
        "BatchNormalization" if from < 9 => {
            if attr_int(n, "spatial", 1) != 1 {
                return refuse("spatial = 0 (per-activation statistics) was removed at opset 9");
            }
            if n.output.iter().skip(1).any(|o| !o.is_empty()) {
                return refuse("its training outputs are read");
            }
            let mut node = n.clone();
            node.attribute = without(n, &["spatial", "is_test", "consumed_inputs"]);
            node.output.truncate(1);
            one(node, vec![])
        }
        "Scatter" => {
            let mut node = n.clone();
            node.op_type = Some("ScatterElements".into());
            one(node, vec![])
        }
        "Scan" if from < 9 => refuse("opset-8 Scan has a batch axis the later form dropped"),
        _ => Ok(None),
    }
}

/// Declared ranks of values (inputs, outputs, value infos).
fn ranks(g: &GraphProto) -> HashMap<String, usize> {
    use tamp_onnx::proto::type_proto::Value;
    let mut r = HashMap::new();
    for v in g.input.iter().chain(&g.output).chain(&g.value_info) {
        if let (Some(name), Some(Value::TensorType(t))) = (v.name.as_deref(), v.r#type.as_ref().and_then(|t| t.value.as_ref()))
            && let Some(shape) = &t.shape
        {
            r.insert(name.to_owned(), shape.dim.len());
        }
    }
    for t in &g.initializer {
        if let Some(name) = t.name.as_deref() {
            r.insert(name.to_owned(), t.dims.len());
        }
    }
    r
}

/// Converts the nodes of a subgraph in place (its constants become its initializers).
fn convert_subgraph(g: &GraphProto, from: i64, count: &mut BTreeMap<String, usize>) -> Result<GraphProto, OnnxError> {
    let mut out = g.clone();
    let rk = ranks(g);
    let rank = |v: &str| rk.get(v).copied();
    out.node.clear();
    for n in &g.node {
        let mut n = convert_attributes(n, from, count)?;
        match convert(&n, from, &rank)? {
            Some(rw) => {
                *count.entry(op(&n).to_owned()).or_default() += 1;
                out.node.extend(rw.nodes);
                out.initializer.extend(rw.constants);
            }
            None => out.node.push(std::mem::take(&mut n)),
        }
    }
    Ok(out)
}

/// A copy of `n` with every subgraph attribute converted.
fn convert_attributes(n: &NodeProto, from: i64, count: &mut BTreeMap<String, usize>) -> Result<NodeProto, OnnxError> {
    let mut n = n.clone();
    for a in &mut n.attribute {
        if let Some(g) = &a.g {
            a.g = Some(convert_subgraph(g, from, count)?);
        }
        for g in &mut a.graphs {
            *g = convert_subgraph(g, from, count)?;
        }
    }
    Ok(n)
}

impl Pass for UpgradeOpset {
    type Report = OpsetUpgrade;

    fn name(&self) -> &str {
        "upgrade-opset"
    }

    fn build(&self, model: &Model) -> Result<Option<(Patch, OpsetUpgrade)>, OnnxError> {
        let from = model.opset("").unwrap_or(1);
        if from >= TARGET {
            return Ok(None);
        }
        if from < OLDEST {
            return Err(OnnxError::Graph(format!(
                "the model imports opset {from}; Tamp upgrades opsets {OLDEST}–12 to {TARGET} (older ones use legacy broadcasting attributes): convert it with a newer exporter or onnx.version_converter first"
            )));
        }
        let g = model.graph();
        let rk = ranks(g);
        let rank = |v: &str| rk.get(v).copied();
        let mut patch = Patch { opsets: vec![(String::new(), TARGET)], ..Patch::default() };
        let mut rewritten = BTreeMap::new();
        for (i, n) in g.node.iter().enumerate() {
            let has_subgraphs = n.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty());
            let converted = if has_subgraphs { convert_attributes(n, from, &mut rewritten)? } else { n.clone() };
            match convert(&converted, from, &rank)? {
                Some(rw) => {
                    *rewritten.entry(op(n).to_owned()).or_default() += 1;
                    patch.remove_nodes.insert(i);
                    patch.add_nodes.extend(rw.nodes);
                    patch.add_initializers.extend(rw.constants);
                }
                None if has_subgraphs && converted != *n => {
                    patch.remove_nodes.insert(i);
                    patch.add_nodes.push(converted);
                }
                None => {}
            }
        }
        Ok(Some((patch, OpsetUpgrade { from, to: TARGET, rewritten })))
    }
}

/// Upgrades `model` to opset 13 when it is older (IR version raised to 7 with it, and
/// initializers listed as graph inputs — the IR-3 convention — removed from the inputs, so
/// ONNX Runtime treats them as constants); `None` when it already is 13 or later.
pub fn upgrade(model: &Model) -> Result<Option<(Model, OpsetUpgrade)>, tamp_onnx::PatchError> {
    let Some((mut m, report)) = UpgradeOpset.apply(model)? else { return Ok(None) };
    let opset = m.proto.opset_import.iter_mut().find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")));
    if let Some(o) = opset {
        o.version = Some(TARGET);
    }
    m.proto.ir_version = Some(m.proto.ir_version.unwrap_or(7).max(7));
    Ok(Some((m, report)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tamp_onnx::builder::GraphBuilder;

    #[test]
    fn attributes_become_inputs_and_the_opset_is_thirteen() {
        let mut b = GraphBuilder::new("old", 11);
        let x = b.input_f32("x", &[Some(2), Some(1), Some(3)]);
        let sq = b.op("Squeeze", &[&x], &[("axes", Attr::Ints(vec![1]))]);
        let un = b.op("Unsqueeze", &[&sq], &[("axes", Attr::Ints(vec![0]))]);
        let sm = b.op("Softmax", &[&un], &[("axis", Attr::Int(1))]);
        b.output_f32(&sm, &[None, None, None]);
        let model = b.build();
        let (up, report) = upgrade(&model).unwrap().unwrap();
        assert_eq!(up.opset(""), Some(13));
        assert_eq!(report.rewritten.get("Squeeze"), Some(&1));
        assert_eq!(report.rewritten.get("Softmax"), Some(&1));
        let g = up.graph();
        let squeeze = g.node.iter().find(|n| op(n) == "Squeeze").unwrap();
        assert_eq!(squeeze.input.len(), 2);
        assert!(squeeze.attribute.is_empty());
        // Softmax over a 3-D value at axis 1 is the flatten form.
        assert!(g.node.iter().any(|n| op(n) == "Flatten"));
        assert!(upgrade(&up).unwrap().is_none());
    }

    #[test]
    fn too_old_is_refused_with_the_reason() {
        let mut b = GraphBuilder::new("ancient", 6);
        let x = b.input_f32("x", &[Some(1)]);
        let y = b.op("Relu", &[&x], &[]);
        b.output_f32(&y, &[None]);
        let e = upgrade(&b.build()).unwrap_err().to_string();
        assert!(e.contains("opset 6") && e.contains("version_converter"), "{e}");
    }
}
