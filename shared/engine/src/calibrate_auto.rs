//! `method: auto`: each of [`Method::AUTO_CANDIDATES`] is turned into ranges, built into an
//! int8 model and run on calibration rows; the candidate whose float outputs stay closest to
//! fp32's (mean per-row cosine over every float output, or over the one output the user
//! scores: `tamp quantize --output`, the recipe's `evaluation.output`) is kept. Two folds: the ranges come
//! from one half of the calibration sample and are judged on the other half, both ways, so a
//! tight clip that only fits the rows it was measured on is not rewarded (on 24 PP-OCR rows,
//! judging on the same rows preferred 99.99 by 0.015, and held-out evaluation rows did not).
//! The kept method's ranges are then taken from the whole sample. No labels are needed, so
//! `tamp quantize` can do it too. Cost: two more streaming passes over half the rows each,
//! and ten builds and runs on at most [`AUTO_ROWS`] rows.
//!
//! Why: the best clipping differs by model, and by more than any one rule can cover. On the
//! corpus, PP-OCRv4's recogniser wants percentile 99.999 (cosine 0.978 against 0.973 at
//! 99.99 and 0.960 with min-max) while SLANet's table decoder wants 99.99 (0.844 against
//! 0.722 at 99.999): ONNX Runtime's users pick by hand among its three calibrators.

use std::collections::BTreeMap;

use ndarray::Array2;
use serde::{Deserialize, Serialize};
use tamp_onnx::proto::tensor_proto::DataType;
use tamp_onnx::{Model, TensorValue};

use crate::calibrate::{Method, Range, ValueStats};
use crate::dataset::Dataset;
use crate::error::{EngineError, Result};
use crate::runtime::{Session, SessionConfig};

/// Held-out rows the candidates are compared on, over all folds.
pub const AUTO_ROWS: usize = 64;
/// Fewer calibration rows than twice this: one fold (ranges judged on their own rows).
pub const MIN_FOLD_ROWS: usize = 4;

/// One candidate's fidelity: mean per-row cosine of its outputs to fp32's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodTrial {
    pub method: Method,
    pub cosine: f64,
}

/// The candidates and their scores as one line: `minmax 0.9614, percentile 99.99 0.9875, …`.
pub fn describe(trials: &[MethodTrial]) -> String {
    trials.iter().map(|t| format!("{} {:.4}", t.method.label(), t.cosine)).collect::<Vec<_>>().join(", ")
}

/// Ranges `method` picks from the statistics.
pub fn ranges_for(stats: &BTreeMap<String, ValueStats>, method: Method) -> Result<BTreeMap<String, Range>> {
    stats.iter().map(|(k, s)| Ok((k.clone(), s.range(method)?))).collect()
}

/// Every float output of `model` on `rows` (only `scored` when the user named the output
/// the quality is judged on), one rows × features matrix per output (batched as the model
/// allows: a fixed batch dimension runs at that size).
pub fn float_outputs(model: &Model, data: &Dataset, rows: &[usize], scored: Option<&str>, cfg: &SessionConfig) -> Result<Vec<Array2<f32>>> {
    let mut session = Session::from_model(model, cfg)?;
    data.check_against(&session.inputs)?;
    let names: Vec<String> =
        session.outputs.iter().filter(|o| o.elem == DataType::Float && scored.is_none_or(|s| s == o.name)).map(|o| o.name.clone()).collect();
    if let (Some(s), true) = (scored, names.is_empty()) {
        let all: Vec<String> = session.outputs.iter().map(|o| o.name.clone()).collect();
        return Err(EngineError::Config(format!(
            "`auto` calibration scores output '{s}', which is not a float output of the model (its outputs: {}); name one of its float outputs",
            all.join(", ")
        )));
    }
    if names.is_empty() {
        return Err(EngineError::Config("`auto` calibration compares float outputs, and the model has none; pick a method (minmax, percentile, kl)".into()));
    }
    let (batch, rows) = match crate::dataset::fixed_batch(&session.inputs) {
        Some(b) => (b, &rows[..rows.len() - rows.len() % b.max(1)]),
        None => (16, rows),
    };
    if rows.is_empty() {
        return Err(EngineError::Config(format!("`auto` calibration needs at least {batch} calibration rows to run the model at its fixed batch")));
    }
    let mut parts: Vec<Vec<Array2<f32>>> = vec![Vec::new(); names.len()];
    for chunk in tamp_data::batches(rows, batch) {
        let feed = data.select(chunk)?;
        let inputs: Vec<(&str, &TensorValue)> = feed.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let outs = session.run(&inputs)?;
        for (i, name) in names.iter().enumerate() {
            let v = outs.iter().find(|(k, _)| k == name).map(|(_, v)| v).ok_or_else(|| EngineError::Config(format!("output '{name}' missing")))?;
            parts[i].push(crate::eval::as_rows(v)?);
        }
    }
    parts
        .into_iter()
        .map(|p| {
            let views: Vec<_> = p.iter().map(|a| a.view()).collect();
            ndarray::concatenate(ndarray::Axis(0), &views).map_err(|e| EngineError::Config(format!("outputs of different widths across batches: {e}")))
        })
        .collect()
}

/// Mean over outputs of the mean per-row cosine of `got` to `want`. A row whose reference is
/// all zeros counts as 1 when the candidate's is too, else 0.
pub fn fidelity(want: &[Array2<f32>], got: &[Array2<f32>]) -> f64 {
    let per_output = want.iter().zip(got).map(|(a, b)| {
        let mut sum = 0.0;
        for (x, y) in a.outer_iter().zip(b.outer_iter()) {
            let dot: f64 = x.iter().zip(y.iter()).map(|(p, q)| f64::from(*p) * f64::from(*q)).sum();
            let nx = x.iter().map(|p| f64::from(*p).powi(2)).sum::<f64>().sqrt();
            let ny = y.iter().map(|p| f64::from(*p).powi(2)).sum::<f64>().sqrt();
            sum += if nx == 0.0 || ny == 0.0 { f64::from(u8::from(nx == ny)) } else { dot / (nx * ny) };
        }
        let c = sum / a.nrows().max(1) as f64;
        if c.is_finite() { c } else { -1.0 }
    });
    let n = want.len().max(1) as f64;
    per_output.sum::<f64>() / n
}

/// The candidate to keep: the highest fidelity; ties (within 1e-6) go to the earlier one,
/// so min-max wins when clipping changes nothing.
pub fn choose(trials: &[MethodTrial]) -> Option<Method> {
    let mut best: Option<&MethodTrial> = None;
    for t in trials {
        if best.is_none_or(|b| t.cosine > b.cosine + 1e-6) {
            best = Some(t);
        }
    }
    best.map(|t| t.method)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fidelity_averages_outputs_and_rows() {
        let a = Array2::from_shape_vec((2, 2), vec![1.0, 0.0, 0.0, 1.0]).unwrap();
        let ortho = Array2::from_shape_vec((2, 2), vec![0.0, 1.0, 1.0, 0.0]).unwrap();
        let one = |x: &Array2<f32>| vec![x.clone()];
        assert!((fidelity(&one(&a), &one(&a)) - 1.0).abs() < 1e-12);
        assert!(fidelity(&one(&a), &one(&ortho)).abs() < 1e-12);
        assert!((fidelity(&[a.clone(), a.clone()], &[a.clone(), ortho]) - 0.5).abs() < 1e-12);
        let zeros = Array2::zeros((1, 2));
        assert_eq!(fidelity(&one(&zeros), &one(&zeros)), 1.0);
    }

    #[test]
    fn ties_go_to_the_earlier_candidate() {
        let t = |method, cosine| MethodTrial { method, cosine };
        assert_eq!(choose(&[t(Method::MinMax, 0.99), t(Method::Entropy, 0.99 + 1e-9)]), Some(Method::MinMax));
        assert_eq!(
            choose(&[t(Method::MinMax, 0.9), t(Method::Percentile { percentile: 99.99 }, 0.95), t(Method::Entropy, 0.94)]),
            Some(Method::Percentile { percentile: 99.99 })
        );
        assert_eq!(choose(&[]), None);
    }
}
