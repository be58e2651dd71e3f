//! Folds `BatchNormalization` into the `Conv` or `Gemm` (transB=1) feeding it, when the
//! layer's output feeds only that BN and every parameter is a constant:
//! W' = W·γ/√(σ²+ε) per output channel, b' = (b − μ)·γ/√(σ²+ε) + β.
//! The folded layer takes over the BN's output name, so consumers need no rewiring.

use ndarray::{ArrayD, Axis, IxDyn};
use tamp_onnx::graph::{attr_float, attr_int};
use tamp_onnx::proto::NodeProto;
use tamp_onnx::tensor::{from_array, to_array};
use tamp_onnx::{GraphView, Model, OnnxError, Pass, Patch};

/// The BN-folding pass.
#[derive(Debug, Default, Clone, Copy)]
pub struct FoldBatchNorm;

fn constant(view: &GraphView<'_>, name: &str) -> Option<ArrayD<f32>> {
    view.constant(name).and_then(|t| to_array::<f32>(t).ok())
}

impl Pass for FoldBatchNorm {
    /// Batch norms folded.
    type Report = usize;

    fn name(&self) -> &str {
        "fold-batch-norm"
    }

    fn build(&self, model: &Model) -> Result<Option<(Patch, Self::Report)>, OnnxError> {
        let g = model.graph();
        let view = GraphView::new(g);
        let outputs: std::collections::HashSet<&str> = g.output.iter().filter_map(|o| o.name.as_deref()).collect();
        let mut patch = Patch::default();
        for (bi, bn) in g.node.iter().enumerate() {
            if bn.op_type.as_deref() != Some("BatchNormalization") || bn.output.len() != 1 || bn.input.len() != 5 {
                continue;
            }
            let x = &bn.input[0];
            let Some(li) = view.producer(x) else { continue };
            let layer = &g.node[li];
            let op = layer.op_type.as_deref().unwrap_or("");
            let foldable = op == "Conv" || (op == "Gemm" && attr_int(layer, "transB", 0) == 1 && attr_float(layer, "alpha", 1.0) == 1.0);
            if !foldable || view.consumers(x) != [bi] || outputs.contains(x.as_str()) || patch.remove_nodes.contains(&li) {
                continue;
            }
            let params: Option<Vec<ArrayD<f32>>> = bn.input[1..].iter().map(|n| constant(&view, n)).collect();
            let (Some(params), Some(w)) = (params, layer.input.get(1).and_then(|n| constant(&view, n))) else { continue };
            let (gamma, beta, mean, var) = (&params[0], &params[1], &params[2], &params[3]);
            let eps = attr_float(bn, "epsilon", 1e-5);
            let cout = w.shape()[0];
            if [gamma, beta, mean, var].iter().any(|p| p.len() != cout) {
                continue;
            }
            let factor: Vec<f32> = (0..cout).map(|c| gamma[c] / (var[c] + eps).sqrt()).collect();
            let mut w2 = w.clone();
            for (c, mut row) in w2.axis_iter_mut(Axis(0)).enumerate() {
                row.mapv_inplace(|v| v * factor[c]);
            }
            let b = layer.input.get(2).filter(|n| !n.is_empty()).and_then(|n| constant(&view, n));
            let b2 = ArrayD::from_shape_fn(IxDyn(&[cout]), |i| {
                let c = i[0];
                (b.as_ref().map_or(0.0, |b| b[c]) - mean[c]) * factor[c] + beta[c]
            });
            let stem = layer.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| bn.output[0].clone());
            let (wn, bname) = (format!("{stem}.w"), format!("{stem}.b"));
            patch.add_initializers.push(from_array(&wn, &w2));
            patch.add_initializers.push(from_array(&bname, &b2));
            patch.add_nodes.push(NodeProto { input: vec![layer.input[0].clone(), wn, bname], output: bn.output.clone(), ..layer.clone() });
            patch.remove_nodes.insert(li);
            patch.remove_nodes.insert(bi);
        }
        let folded = patch.remove_nodes.len() / 2;
        Ok((!patch.is_empty()).then_some((patch, folded)))
    }
}
