//! Pads the input channels of a small int8 Conv to four. ONNX Runtime's integer convolution
//! takes a much slower path when a 3×3 (or smaller) Conv reads fewer than four channels:
//! measured on this project's EPYC (1 thread, `QLinearConv` + its input's QuantizeLinear),
//! padding one, two or three channels to four ran in 0.41–0.79 of the time — DNSMOS's
//! one-channel 3×3 Conv over a 900×161 spectrogram 21.5 → 10.0 ms, an RGB 3×3 stride-2
//! stem at 224² 461 → 306 µs. Kernels of 5×5 and up got slower, so they are left alone.
//!
//! The rewrite is exact: the added weight channels hold the weight's zero point, so they
//! add nothing whatever the padded input holds. The float input is padded with zeros by a
//! `Pad` before its QuantizeLinear (same scale and zero point; zero lies in every range),
//! and the Conv reads the padded value. The input's old Q/DQ pair goes when the Conv was
//! its only reader.
//!
//! Applied to a quantized model: a Conv whose input is `DequantizeLinear(QuantizeLinear(x))`
//! and whose weight is the `DequantizeLinear` of an initializer no one else reads.

use std::collections::HashMap;

use ndarray::{ArrayD, Axis, IxDyn, concatenate};
use tamp_onnx::graph::attr_int;
use tamp_onnx::proto::NodeProto;
use tamp_onnx::proto::tensor_proto::DataType;
use tamp_onnx::tensor::{Element, from_array, to_array};
use tamp_onnx::{GraphView, Model, OnnxError, Pass, Patch};

use super::quantize::node_key;

/// The channel-padding pass; its report names the Convs it padded.
#[derive(Debug, Default, Clone, Copy)]
pub struct PadInputChannels;

/// Channels the fast integer path wants.
const CHANNELS: i64 = 4;
/// Largest kernel area (kh·kw) padded: 3×3 gained, 5×5 and 7×7 lost.
const MAX_AREA: i64 = 9;

fn op(n: &NodeProto) -> &str {
    n.op_type.as_deref().unwrap_or("")
}

/// `w` [cout, cin, kh, kw] with channels added up to [`CHANNELS`], each holding its output
/// channel's zero point (`zp` per channel, one for all, or none: 0).
fn pad_weight<T: Element>(w: &ArrayD<T>, zp: Option<&ArrayD<T>>) -> Result<ArrayD<T>, OnnxError> {
    let s = w.shape();
    let (cout, add) = (s[0], CHANNELS as usize - s[1]);
    let fill = ArrayD::from_shape_fn(IxDyn(&[cout, add, s[2], s[3]]), |i| match zp {
        Some(z) if z.len() == cout => z.iter().nth(i[0]).copied().unwrap_or_default(),
        Some(z) => z.iter().next().copied().unwrap_or_default(),
        None => T::default(),
    });
    concatenate(Axis(1), &[w.view(), fill.view()]).map_err(|e| OnnxError::Graph(format!("padding a weight's input channels: {e}")))
}

/// The `Pad` this pass writes before a padded input's QuantizeLinear (its node name ends
/// so): part of that Conv, not float compute of the model's own.
pub fn is_padding(n: &NodeProto) -> bool {
    n.op_type.as_deref() == Some("Pad") && n.name.as_deref().is_some_and(|x| x.ends_with(&format!(".pad{CHANNELS}.Pad")))
}

impl Pass for PadInputChannels {
    type Report = Vec<String>;

    fn name(&self) -> &str {
        "pad-input-channels"
    }

    fn build(&self, model: &Model) -> Result<Option<(Patch, Self::Report)>, OnnxError> {
        let g = model.graph();
        let view = GraphView::new(g);
        let mut patch = Patch::default();
        let mut padded: Vec<String> = Vec::new();
        // x → its padded, quantized, dequantized value (shared by every Conv that reads x).
        let mut made: HashMap<(String, i64), String> = HashMap::new();
        // (old DQ, old Q) of an input → how many of the DQ's readers now read the padded value.
        let mut moved: HashMap<(usize, usize), usize> = HashMap::new();
        for (ci, conv) in g.node.iter().enumerate() {
            if op(conv) != "Conv" || attr_int(conv, "group", 1) != 1 || conv.input.len() < 2 {
                continue;
            }
            let producer = |v: &str, want: &str| view.producer(v).filter(|&p| op(&g.node[p]) == want);
            let (Some(dxi), Some(dwi)) = (producer(&conv.input[0], "DequantizeLinear"), producer(&conv.input[1], "DequantizeLinear")) else { continue };
            let (dx, dw) = (&g.node[dxi], &g.node[dwi]);
            let Some(qxi) = producer(&dx.input[0], "QuantizeLinear") else { continue };
            let qx = &g.node[qxi];
            let Some(wq) = view.initializer(&dw.input[0]) else { continue };
            let &[_, cin, kh, kw] = wq.dims.as_slice() else { continue };
            if !(1..CHANNELS).contains(&cin) || kh * kw > MAX_AREA || view.consumers(&dw.output[0]).len() != 1 || view.consumers(&dw.input[0]).len() != 1 {
                continue;
            }
            let zp = dw.input.get(2).and_then(|z| view.initializer(z));
            let weight = match DataType::try_from(wq.data_type.unwrap_or(0)) {
                Ok(DataType::Int8) => from_array(&dw.input[0], &pad_weight(&to_array::<i8>(wq)?, zp.map(to_array::<i8>).transpose()?.as_ref())?),
                Ok(DataType::Uint8) => from_array(&dw.input[0], &pad_weight(&to_array::<u8>(wq)?, zp.map(to_array::<u8>).transpose()?.as_ref())?),
                _ => continue,
            };
            patch.add_initializers.push(weight);
            let x = &qx.input[0];
            let x4 = made.entry((x.clone(), cin)).or_insert_with(|| {
                let (pads, x4) = (format!("{x}.pad{CHANNELS}.pads"), format!("{x}.pad{CHANNELS}"));
                let a = ndarray::arr1(&[0, 0, 0, 0, 0, CHANNELS - cin, 0, 0]).into_dyn();
                patch.add_initializers.push(from_array(&pads, &a));
                let mk = |op_type: &str, name: String, input: Vec<String>, output: String| NodeProto {
                    op_type: Some(op_type.into()),
                    name: Some(name),
                    input,
                    output: vec![output],
                    ..Default::default()
                };
                patch.add_nodes.push(mk("Pad", format!("{x4}.Pad"), vec![x.clone(), pads], x4.clone()));
                let mut qin = vec![x4.clone()];
                qin.extend(qx.input.iter().skip(1).cloned());
                patch.add_nodes.push(mk("QuantizeLinear", format!("{x4}.Q"), qin, format!("{x4}.q")));
                let mut din = vec![format!("{x4}.q")];
                din.extend(dx.input.iter().skip(1).cloned());
                patch.add_nodes.push(mk("DequantizeLinear", format!("{x4}.DQ"), din, format!("{x4}.dq")));
                format!("{x4}.dq")
            });
            patch.rewire.push((ci, 0, x4.clone()));
            *moved.entry((dxi, qxi)).or_default() += 1;
            padded.push(node_key(conv).to_owned());
        }
        // The input's old pair goes once every reader moved to the padded value.
        for ((dxi, qxi), n) in moved {
            if view.consumers(&g.node[dxi].output[0]).len() == n && view.consumers(&g.node[qxi].output[0]).len() == 1 {
                patch.remove_nodes.extend([dxi, qxi]);
            }
        }
        Ok((!padded.is_empty()).then_some((patch, padded)))
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, IxDyn};
    use tamp_onnx::TensorValue;
    use tamp_onnx::builder::{Attr, GraphBuilder};

    use super::*;
    use crate::runtime::{Session, SessionConfig};

    /// `x → Q → DQ → Conv(DQ(w), k×k, cin → 8) → Q → DQ → y`, the layout the QDQ pass makes.
    fn qdq_conv(cin: usize, k: usize, u8_weights: bool) -> Model {
        let mut b = GraphBuilder::new("conv", 13);
        let x = b.input_f32("x", &[None, Some(cin as i64), Some(12), Some(10)]);
        let s = b.init_f32("s", ArrayD::from_elem(IxDyn(&[]), 0.02));
        let z = b.init("z", ArrayD::from_elem(IxDyn(&[]), 128u8));
        let n = 8 * cin * k * k;
        let codes = (0..n).map(|i| ((i * 37) % 201) as i32 - 100);
        let (w, wz) = if u8_weights {
            (
                b.init("w", ArrayD::from_shape_vec(IxDyn(&[8, cin, k, k]), codes.map(|c| (c + 128) as u8).collect()).unwrap()),
                b.init("wz", ArrayD::from_elem(IxDyn(&[8]), 128u8)),
            )
        } else {
            (
                b.init("w", ArrayD::from_shape_vec(IxDyn(&[8, cin, k, k]), codes.map(|c| c as i8).collect()).unwrap()),
                b.init("wz", ArrayD::from_elem(IxDyn(&[8]), 0i8)),
            )
        };
        let ws = b.init_f32("ws", ArrayD::from_shape_fn(IxDyn(&[8]), |i| 0.001 * (1 + i[0]) as f32));
        let (os, oz) = (b.init_f32("os", ArrayD::from_elem(IxDyn(&[]), 0.05)), b.init("oz", ArrayD::from_elem(IxDyn(&[]), 100u8)));
        let q = b.op("QuantizeLinear", &[&x, &s, &z], &[]);
        let dq = b.op("DequantizeLinear", &[&q, &s, &z], &[]);
        let wd = b.op("DequantizeLinear", &[&w, &ws, &wz], &[("axis", Attr::Int(0))]);
        let pad = (k / 2) as i64;
        let c = b.op("Conv", &[&dq, &wd], &[("pads", Attr::Ints(vec![pad; 4]))]);
        let cq = b.op("QuantizeLinear", &[&c, &os, &oz], &[]);
        let y = b.op("DequantizeLinear", &[&cq, &os, &oz], &[]);
        b.output_f32(&y, &[None, Some(8), Some(12), Some(10)]);
        b.build()
    }

    fn run(model: &Model, cin: usize) -> ArrayD<f32> {
        let x = TensorValue::F32(ArrayD::from_shape_fn(IxDyn(&[2, cin, 12, 10]), |i| ((i[1] * 120 + i[2] * 10 + i[3]) as f32 * 0.37).sin() * 2.0));
        let mut s = Session::from_model(model, &SessionConfig::default()).unwrap();
        match s.run(&[("x", &x)]).unwrap().remove(0).1 {
            TensorValue::F32(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn small_convs_gain_channels_and_compute_the_same_values() {
        for (cin, u8w) in [(1, false), (3, false), (2, true)] {
            let model = qdq_conv(cin, 3, u8w);
            let (padded, layers) = PadInputChannels.apply(&model).unwrap().unwrap();
            assert_eq!(layers.len(), 1);
            let w = padded.graph().initializer.iter().find(|t| t.name.as_deref() == Some("w")).unwrap();
            assert_eq!(w.dims, [8, 4, 3, 3]);
            let ops: Vec<_> = padded.graph().node.iter().filter_map(|n| n.op_type.as_deref()).collect();
            assert_eq!(ops.iter().filter(|o| **o == "QuantizeLinear").count(), 2, "the input's old pair is gone: {ops:?}");
            assert_eq!(run(&model, cin), run(&padded, cin), "cin {cin}: the added channels add nothing");
        }
        // Four channels already, or a 5×5 kernel (slower padded): left alone.
        assert!(PadInputChannels.apply(&qdq_conv(4, 3, false)).unwrap().is_none());
        assert!(PadInputChannels.apply(&qdq_conv(1, 5, false)).unwrap().is_none());
    }
}
