//! Activation smoothing before dynamic int8 (SmoothQuant, Xiao et al., ICML 2023), with the
//! strength chosen per layer by measured error.
//!
//! Dynamic int8 quantizes each MatMul input with one range per tensor at run time, so a few
//! wide channels (a transformer's LayerNorm outputs carry channels 15× wider than the
//! median) set the step for all the others. Dividing input channel `k` by `s_k` and
//! multiplying weight row `k` by `s_k` leaves the float product unchanged and moves range from
//! the activation, quantized per tensor, into the weights, quantized per column. With
//! `s_k = amax_k^α / wmax_k^(1−α)` the paper's fixed α = 0.5 made all-MiniLM-L6-v2 *worse*
//! here on some layers (a scaled weight row widens its whole column's int8 step), so each
//! site's α is chosen from a small grid by the error it gives on captured calibration inputs:
//! `‖Qa(X/s)·Qw(s·W) − X·W‖²`, with `Qa` as `DynamicQuantizeLinear` (per row of the batch,
//! pad tokens left out) and `Qw` as the dynamic pass's symmetric per-column weights. A site is
//! smoothed only where that error falls to at most half of the unsmoothed one; the others stay
//! untouched (no extra node).
//!
//! The division is one `Mul` by a constant vector in front of the site's MatMuls (a site: the
//! MatMuls reading one activation, which share its run-time quantization). The model stays
//! float and computes the same function; the dynamic pass then quantizes it as usual.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ndarray::{Array1, Array2, ArrayD, Axis, Ix2, IxDyn};
use serde::{Deserialize, Serialize};
pub use tamp_domain::results::SmoothedSite;
use tamp_onnx::proto::NodeProto;
use tamp_onnx::tensor::{from_array, to_array};
use tamp_onnx::{GraphView, Model, Patch, TensorValue};

use crate::capture::capture;
use crate::dataset::Dataset;
use crate::error::{EngineError, Result};
use crate::passes::dynamic::{DynamicConfig, quantizable_nodes};
use crate::passes::quantize::node_key;
use crate::runtime::SessionConfig;

/// How sites are measured and when one is smoothed.
#[derive(Debug, Clone, PartialEq)]
pub struct SmoothConfig {
    /// Calibration rows run through the model (seeded draw).
    pub rows: usize,
    pub seed: u64,
    /// Most token rows kept per site for the error measurement (whole calibration rows).
    pub tokens: usize,
    /// Largest weight code (127; 63 for 7-bit weights).
    pub weight_qmax: f32,
    /// The migration strengths tried.
    pub alphas: Vec<f32>,
    /// A site is smoothed when its best error is at most this share of the unsmoothed error.
    pub max_error_ratio: f64,
    pub session: SessionConfig,
}

impl Default for SmoothConfig {
    fn default() -> Self {
        Self {
            rows: 64,
            seed: 0,
            tokens: 1024,
            weight_qmax: 127.0,
            alphas: vec![0.1, 0.2, 0.3, 0.4, 0.5],
            max_error_ratio: 0.5,
            session: SessionConfig { intra_threads: 2, intra_spinning: false, ..SessionConfig::default() },
        }
    }
}

/// What smoothing measured: the sites it smoothed and how many it looked at.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SmoothReport {
    pub sites: usize,
    pub smoothed: Vec<SmoothedSite>,
    pub calibration_rows: usize,
}

/// A site: the MatMuls (graph node indices) reading one activation by constant weights
/// that only they read.
struct Site {
    value: String,
    readers: Vec<usize>,
    /// Weight rows × all readers' columns, side by side.
    weight: Array2<f32>,
    /// Each reader's number of columns in `weight`, in `readers` order.
    cols: Vec<usize>,
}

fn sites(model: &Model, exclude: &BTreeSet<String>) -> Result<Vec<Site>> {
    let g = model.graph();
    let view = GraphView::new(g);
    let units: BTreeSet<String> = quantizable_nodes(model, &DynamicConfig::default())?.into_iter().filter(|u| !exclude.contains(u)).collect();
    let initializers: BTreeSet<&str> = g.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
    let mut by_value: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, n) in g.node.iter().enumerate() {
        if n.op_type.as_deref() == Some("MatMul") && units.contains(node_key(n)) {
            by_value.entry(n.input[0].clone()).or_default().push(i);
        }
    }
    let mut out = Vec::new();
    'site: for (value, readers) in by_value {
        let mut parts = Vec::new();
        for &r in &readers {
            let w = &g.node[r].input[1];
            // The weight must be an initializer read by this site alone (it is rewritten).
            if !initializers.contains(w.as_str()) || view.consumers(w).iter().any(|c| !readers.contains(c)) {
                continue 'site;
            }
            let Some(a) = view.constant(w).and_then(|t| to_array::<f32>(t).ok()) else { continue 'site };
            let Ok(a) = a.into_dimensionality::<Ix2>() else { continue 'site };
            parts.push(a);
        }
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        let Ok(weight) = ndarray::concatenate(Axis(1), &views) else { continue };
        let cols = parts.iter().map(|p| p.ncols()).collect();
        out.push(Site { value, readers, weight, cols });
    }
    Ok(out)
}

/// What was captured of one site's input: per-channel |max| over every calibration row, and
/// up to `tokens` token rows grouped as the runtime quantizes them (one matrix per row).
#[derive(Default)]
struct Captured {
    amax: Vec<f32>,
    matrices: Vec<Array2<f32>>,
    tokens: usize,
}

impl Captured {
    fn add(&mut self, a: &ArrayD<f32>, keep: usize) -> Result<()> {
        let k = *a.shape().last().unwrap_or(&0);
        if self.amax.is_empty() {
            self.amax = vec![0.0; k];
        }
        // Token inputs [rows, tokens.., k]: one quantization range per row (a batch of one,
        // as served). A 2-D input [rows, k]: the batch is one matrix.
        let mats: Vec<Array2<f32>> = if a.ndim() >= 3 {
            a.axis_iter(Axis(0))
                .map(|r| Array2::from_shape_vec((r.len() / k.max(1), k), r.iter().copied().collect()))
                .collect::<std::result::Result<_, _>>()
                .map_err(shape_err)?
        } else {
            vec![Array2::from_shape_vec((a.len() / k.max(1), k), a.iter().copied().collect()).map_err(shape_err)?]
        };
        for m in mats {
            for row in m.rows() {
                for (x, &v) in self.amax.iter_mut().zip(row) {
                    *x = x.max(v.abs());
                }
            }
            if self.tokens < keep {
                self.tokens += m.nrows();
                self.matrices.push(m);
            }
        }
        Ok(())
    }
}

fn shape_err(e: ndarray::ShapeError) -> EngineError {
    EngineError::Config(format!("activation smoothing: {e}"))
}

/// `DynamicQuantizeLinear` and back: one asymmetric uint8 range over the matrix, holding 0.
fn fake_quant_activation(x: &Array2<f32>) -> Array2<f32> {
    let (lo, hi) = x.iter().fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
    if hi <= lo {
        return x.clone();
    }
    let s = (hi - lo) / 255.0;
    let z = (-lo / s).round().clamp(0.0, 255.0);
    x.mapv(|v| ((v / s).round() + z).clamp(0.0, 255.0) - z) * s
}

/// Symmetric per-column weights, as the dynamic pass stores them.
fn fake_quant_weight(w: &Array2<f32>, qmax: f32) -> Array2<f32> {
    let mut q = w.clone();
    for mut col in q.columns_mut() {
        let amax = col.iter().fold(0f32, |m, v| m.max(v.abs()));
        if amax > 0.0 {
            let s = amax / qmax;
            col.mapv_inplace(|v| (v / s).round().clamp(-qmax, qmax) * s);
        }
    }
    q
}

/// Per-channel scales for strength `alpha`, normalised to geometric mean 1.
fn scales(amax: &[f32], wmax: &Array1<f32>, alpha: f32) -> Array1<f32> {
    let raw: Array1<f32> =
        amax.iter().zip(wmax).map(|(&a, &w)| if a > 0.0 && w > 0.0 { (a.powf(alpha) / w.powf(1.0 - alpha)).clamp(1e-3, 1e3) } else { 1.0 }).collect();
    let mean_log = raw.iter().map(|v| f64::from(v.ln())).sum::<f64>() / raw.len().max(1) as f64;
    raw / (mean_log.exp() as f32)
}

/// Squared error of the quantized site product against the float one, summed over matrices.
fn error(c: &Captured, reference: &[Array2<f32>], weight: &Array2<f32>, s: Option<&Array1<f32>>, qmax: f32) -> f64 {
    let wq = match s {
        Some(s) => fake_quant_weight(&(weight * &s.view().insert_axis(Axis(1))), qmax),
        None => fake_quant_weight(weight, qmax),
    };
    c.matrices
        .iter()
        .zip(reference)
        .map(|(x, y)| {
            let xq = match s {
                Some(s) => fake_quant_activation(&(x / &s.view().insert_axis(Axis(0)))),
                None => fake_quant_activation(x),
            };
            xq.dot(&wq).iter().zip(y).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>()
        })
        .sum()
}

/// Smooths the sites of `model` (MatMuls by constant weights the dynamic pass would quantize,
/// minus `exclude`) where the measured error halves, on calibration rows of `data`. Returns
/// the rewritten float model and what was done. Deterministic for the same rows and runtime.
pub fn smooth(model: &Model, data: &Dataset, cfg: &SmoothConfig, exclude: &BTreeSet<String>) -> Result<(Model, SmoothReport)> {
    if data.rows == 0 {
        return Err(EngineError::Config(
            "activation smoothing measures each layer's input on calibration rows, and there are none: pass calibration data (--data), or turn `smooth_activations` off".into(),
        ));
    }
    let sites = sites(model, exclude)?;
    let indices = data.sample(cfg.rows, cfg.seed);
    let values: Vec<String> = sites.iter().map(|s| s.value.clone()).collect();
    let mut captured: HashMap<String, Captured> = values.iter().map(|v| (v.clone(), Captured::default())).collect();
    if !values.is_empty() {
        capture(model, data, &indices, &values, 32, &cfg.session, true, |_, batch| {
            for (name, v) in batch {
                let Some(c) = captured.get_mut(name) else { continue };
                let TensorValue::F32(a) = v else {
                    return Err(EngineError::Config(format!("cannot smooth '{name}': it is {:?}, not float", v.data_type())));
                };
                if a.iter().any(|x| !x.is_finite()) {
                    return Err(EngineError::Config(format!("activation '{name}' holds non-finite values on the calibration data; check the data")));
                }
                c.add(a, cfg.tokens)?;
            }
            Ok(())
        })?;
    }
    let g = model.graph();
    let mut patch = Patch::default();
    let mut report = SmoothReport { sites: sites.len(), smoothed: Vec::new(), calibration_rows: indices.len() };
    for site in &sites {
        let c = &captured[&site.value];
        if c.matrices.is_empty() || c.amax.len() != site.weight.nrows() {
            continue;
        }
        let reference: Vec<Array2<f32>> = c.matrices.iter().map(|x| x.dot(&site.weight)).collect();
        let plain = error(c, &reference, &site.weight, None, cfg.weight_qmax);
        if plain <= 0.0 {
            continue;
        }
        let wmax: Array1<f32> = site.weight.rows().into_iter().map(|r| r.iter().fold(0f32, |m, v| m.max(v.abs()))).collect();
        let best = cfg
            .alphas
            .iter()
            .map(|&a| {
                let s = scales(&c.amax, &wmax, a);
                (error(c, &reference, &site.weight, Some(&s), cfg.weight_qmax) / plain, a, s)
            })
            .min_by(|x, y| x.0.total_cmp(&y.0));
        let Some((ratio, alpha, s)) = best.filter(|b| b.0 <= cfg.max_error_ratio) else { continue };
        let (inv, smoothed) = (format!("{}.smooth_inv", site.value), format!("{}.smoothed", site.value));
        patch.add_initializers.push(from_array(&inv, &s.mapv(|v| 1.0 / v).into_dyn()));
        patch.add_nodes.push(NodeProto {
            op_type: Some("Mul".into()),
            name: Some(format!("{}.Smooth", site.value)),
            input: vec![site.value.clone(), inv],
            output: vec![smoothed.clone()],
            ..Default::default()
        });
        let mut col = 0;
        for (&r, &cols) in site.readers.iter().zip(&site.cols) {
            let scaled = site.weight.slice(ndarray::s![.., col..col + cols]).to_owned() * s.view().insert_axis(Axis(1));
            col += cols;
            let scaled = ArrayD::from_shape_vec(IxDyn(&[scaled.nrows(), cols]), scaled.iter().copied().collect()).map_err(shape_err)?;
            patch.add_initializers.push(from_array(&g.node[r].input[1], &scaled));
            patch.rewire.push((r, 0, smoothed.clone()));
        }
        report.smoothed.push(SmoothedSite {
            value: site.value.clone(),
            layers: site.readers.iter().map(|&r| node_key(&g.node[r]).to_owned()).collect(),
            alpha,
            error_ratio: ratio,
        });
    }
    if patch.is_empty() {
        return Ok((model.clone(), report));
    }
    Ok((patch.apply(model, "smooth-activations")?, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn activation_fake_quant_keeps_zero_exact_and_the_range() {
        let x = array![[-1.0f32, 0.0, 3.0], [0.5, 2.0, -0.25]];
        let q = fake_quant_activation(&x);
        assert_eq!(q[[0, 1]], 0.0);
        let step = 4.0 / 255.0;
        assert!(x.iter().zip(&q).all(|(a, b)| (a - b).abs() <= step / 2.0 + 1e-6), "{q:?}");
    }

    #[test]
    fn scales_move_range_from_a_wide_channel_into_its_weight_row() {
        // Channel 0 is 16× wider than channel 1; weights alike: α = 0.5 gives it 4× the scale.
        let s = scales(&[16.0, 1.0], &array![1.0f32, 1.0], 0.5);
        assert!((s[0] / s[1] - 4.0).abs() < 1e-5 && ((s[0] * s[1]).ln()).abs() < 1e-5, "{s:?}");
        // A dead channel (or weight row) keeps scale 1 before normalising.
        let d = scales(&[0.0, 4.0], &array![1.0f32, 0.0], 0.5);
        assert!((d[0] - d[1]).abs() < 1e-6, "{d:?}");
    }

    #[test]
    fn smoothing_an_outlier_channel_cuts_the_measured_error() {
        // One channel 50× wider than the rest: per-tensor activation steps crush the others.
        let mut x = Array2::<f32>::zeros((64, 8));
        for (i, mut row) in x.rows_mut().into_iter().enumerate() {
            for (k, v) in row.iter_mut().enumerate() {
                let base = ((i * 7 + k * 13) % 17) as f32 / 17.0 - 0.5;
                *v = if k == 0 { base * 50.0 } else { base };
            }
        }
        let w = Array2::from_shape_fn((8, 4), |(k, n)| ((k * 5 + n * 3) % 11) as f32 / 11.0 - 0.45);
        let c = Captured { amax: (0..8).map(|k| x.column(k).iter().fold(0f32, |m, v| m.max(v.abs()))).collect(), matrices: vec![x.clone()], tokens: 64 };
        let reference = vec![x.dot(&w)];
        let plain = error(&c, &reference, &w, None, 127.0);
        let wmax: Array1<f32> = w.rows().into_iter().map(|r| r.iter().fold(0f32, |m, v| m.max(v.abs()))).collect();
        let smoothed = error(&c, &reference, &w, Some(&scales(&c.amax, &wmax, 0.5)), 127.0);
        assert!(smoothed < 0.5 * plain, "{smoothed} vs {plain}");
    }
}
