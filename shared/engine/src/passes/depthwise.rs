//! Depthwise-separable replacement: a k×k `Conv` (`group = 1`, `C_in > 1`, k > 1) becomes a
//! depthwise k×k `Conv` (`group = C_in`, the original strides, pads and dilations) followed by
//! a pointwise 1×1 `Conv` carrying the original bias. MACs per output pixel fall from
//! `k²·C_in·C_out` to `k²·C_in + C_in·C_out`.
//!
//! Initialisation is the best separable approximation of the weight: for each input channel
//! `i`, the `[C_out, k²]` slice `W[:, i]` is replaced by its rank-1 SVD `σ·u·vᵀ`, so the
//! depthwise filter is `√σ·v` and the pointwise column `√σ·u` (the slice's dominant
//! spatial pattern, mixed per output channel). What the rank-1 truncation loses is for
//! distillation or fine-tuning to recover.

use std::collections::BTreeSet;

use ndarray::{ArrayD, IxDyn};
use tamp_onnx::builder::{Attr, attribute};
use tamp_onnx::graph::attr_int;
use tamp_onnx::proto::NodeProto;
use tamp_onnx::tensor::{from_array, to_array};
use tamp_onnx::{GraphView, Model, OnnxError, Pass, Patch};

use super::quantize::node_key;

/// The replacement pass.
#[derive(Debug, Clone, Default)]
pub struct Depthwise {
    /// Only these Convs (node names); empty: every eligible one.
    pub layers: BTreeSet<String>,
}

/// One replaced Conv.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SeparatedConv {
    pub layer: String,
    pub kernel: [usize; 2],
    pub channels: [usize; 2],
    /// Relative Frobenius error of the separable approximation.
    pub error: f64,
    pub macs_ratio: f64,
}

impl Pass for Depthwise {
    type Report = Vec<SeparatedConv>;

    fn name(&self) -> &str {
        "depthwise-separable"
    }

    fn build(&self, model: &Model) -> Result<Option<(Patch, Self::Report)>, OnnxError> {
        let g = model.graph();
        let view = GraphView::new(g);
        let mut patch = Patch::default();
        let mut report = Vec::new();
        for (i, n) in g.node.iter().enumerate() {
            if n.op_type.as_deref() != Some("Conv") || attr_int(n, "group", 1) != 1 {
                continue;
            }
            if !self.layers.is_empty() && !self.layers.contains(node_key(n)) {
                continue;
            }
            let (Some(x), Some(wname), Some(y)) = (n.input.first(), n.input.get(1), n.output.first()) else { continue };
            let Some(w) = view.constant(wname).and_then(|t| to_array::<f32>(t).ok()) else { continue };
            if w.ndim() != 4 || view.consumers(wname).len() != 1 {
                continue;
            }
            let (cout, cin, kh, kw) = (w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]);
            if cin < 2 || kh * kw < 2 {
                continue;
            }
            let k = kh * kw;
            let mut dw = ArrayD::<f32>::zeros(IxDyn(&[cin, 1, kh, kw]));
            let mut pw = ArrayD::<f32>::zeros(IxDyn(&[cout, cin, 1, 1]));
            let (mut lost, mut total) = (0f64, 0f64);
            for c in 0..cin {
                let m = faer::Mat::<f64>::from_fn(cout, k, |o, s| f64::from(w[[o, c, s / kw, s % kw]]));
                let svd = m.thin_svd().map_err(|e| OnnxError::Graph(format!("SVD of '{wname}' channel {c} did not converge: {e:?}")))?;
                let sv: Vec<f64> = (0..cout.min(k)).map(|r| svd.S().column_vector()[r]).collect();
                total += sv.iter().map(|v| v * v).sum::<f64>();
                let (u, v) = (svd.U(), svd.V());
                let s = sv[0].max(0.0).sqrt();
                for o in 0..cout {
                    pw[[o, c, 0, 0]] = (u[(o, 0)] * s) as f32;
                }
                for t in 0..k {
                    dw[[c, 0, t / kw, t % kw]] = (v[(t, 0)] * s) as f32;
                }
                lost += sv.iter().skip(1).map(|v| v * v).sum::<f64>();
            }
            let key = node_key(n).to_owned();
            let (dn, pn, mid) = (format!("{wname}.dw"), format!("{wname}.pw"), format!("{y}.dw"));
            patch.add_initializers.push(from_array(&dn, &dw));
            patch.add_initializers.push(from_array(&pn, &pw));
            let mut first_attrs: Vec<_> = n.attribute.iter().filter(|a| a.name.as_deref() != Some("group")).cloned().collect();
            first_attrs.retain(|a| a.name.as_deref() != Some("kernel_shape"));
            first_attrs.push(attribute("group", Attr::Int(cin as i64)));
            first_attrs.push(attribute("kernel_shape", Attr::Ints(vec![kh as i64, kw as i64])));
            patch.add_nodes.push(NodeProto {
                op_type: Some("Conv".into()),
                name: Some(format!("{key}.depthwise")),
                input: vec![x.clone(), dn],
                output: vec![mid.clone()],
                attribute: first_attrs,
                ..Default::default()
            });
            let mut pw_inputs = vec![mid, pn];
            if let Some(b) = n.input.get(2).filter(|b| !b.is_empty()) {
                pw_inputs.push(b.clone());
            }
            patch.add_nodes.push(NodeProto {
                op_type: Some("Conv".into()),
                name: Some(format!("{key}.pointwise")),
                input: pw_inputs,
                output: vec![y.clone()],
                attribute: vec![attribute("kernel_shape", Attr::Ints(vec![1, 1]))],
                ..Default::default()
            });
            patch.remove_nodes.insert(i);
            patch.remove_initializers.insert(wname.clone());
            report.push(SeparatedConv {
                layer: key,
                kernel: [kh, kw],
                channels: [cin, cout],
                error: (lost / total.max(1e-30)).sqrt(),
                macs_ratio: (k * cin + cin * cout) as f64 / (k * cin * cout) as f64,
            });
        }
        Ok((!report.is_empty()).then_some((patch, report)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Session, SessionConfig};
    use tamp_onnx::TensorValue;
    use tamp_onnx::builder::GraphBuilder;

    /// A weight that is exactly separable comes back exactly (ORT agrees with the original
    /// Conv, strides and pads included); a general one reports its approximation error.
    #[test]
    fn separable_weights_are_reproduced_exactly() {
        let (cout, cin) = (6, 4);
        // W[o, i, :, :] = a[o, i] · f_i(:, :): separable by construction.
        let w =
            ArrayD::from_shape_fn(IxDyn(&[cout, cin, 3, 3]), |d| ((d[0] * 3 + d[1]) as f32 * 0.7).sin() * ((d[1] * 5 + d[2] * 3 + d[3]) as f32 * 0.4).cos());
        let mut b = GraphBuilder::new("dw", 17);
        let x = b.input_f32("x", &[Some(2), Some(cin as i64), Some(7), Some(7)]);
        let wi = b.init_f32("w", w);
        let bias = b.init_f32("b", ArrayD::from_shape_fn(IxDyn(&[cout]), |d| d[0] as f32 * 0.1));
        let y = b.op("Conv", &[&x, &wi, &bias], &[("pads", Attr::Ints(vec![1, 1, 1, 1])), ("strides", Attr::Ints(vec![2, 2]))]);
        b.output_f32(&y, &[None, None, None, None]);
        let m = b.build();
        let (q, report) = Depthwise::default().apply(&m).unwrap().unwrap();
        assert_eq!(report.len(), 1);
        assert!(report[0].error < 1e-5, "{report:?}");
        assert!((report[0].macs_ratio - (36.0 + 24.0) / 216.0).abs() < 1e-9);
        let input = TensorValue::F32(ArrayD::from_shape_fn(IxDyn(&[2, cin, 7, 7]), |d| ((d[1] * 13 + d[2] * 7 + d[3] + d[0]) as f32 * 0.3).sin()));
        let run = |m: &Model| match Session::from_model(m, &SessionConfig::default()).unwrap().run(&[("x", &input)]).unwrap().remove(0).1 {
            TensorValue::F32(a) => a,
            _ => panic!(),
        };
        let (a, c) = (run(&m), run(&q));
        let err = (&a - &c).mapv(f32::abs).fold(0f32, |m, &v| m.max(v));
        assert!(err < 1e-4, "separable conv vs original: {err}");
    }
}
