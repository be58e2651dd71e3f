//! Task metrics as plugins. Each metric is a small [`Metric`] that sees batches of model
//! output (rows × features) with their targets and reports one number at the end. Adding
//! one means one struct here and one line in [`REGISTRY`].

use ndarray::{ArrayView2, Axis};

use crate::error::{EngineError, Result};

/// Targets for one batch.
#[derive(Debug, Clone, Copy)]
pub struct Targets<'a> {
    /// Class index per row.
    pub classes: Option<&'a [i64]>,
    /// Reference values per row (same width as the output).
    pub values: Option<ArrayView2<'a, f32>>,
}

/// A streaming task metric.
pub trait Metric: Send {
    /// Updates with one batch of outputs (rows × features).
    fn update(&mut self, output: ArrayView2<'_, f32>, targets: Targets<'_>) -> Result<()>;
    /// The final value.
    fn finish(&self) -> Result<f64>;
}

/// Name, what it needs, description, constructor.
pub struct MetricDef {
    pub name: &'static str,
    pub needs: Needs,
    pub about: &'static str,
    pub make: fn() -> Box<dyn Metric>,
}

/// What targets a metric needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    Classes,
    Values,
}

/// Every metric Tamp knows.
pub static REGISTRY: &[MetricDef] = &[
    MetricDef { name: "top1", needs: Needs::Classes, about: "top-1 accuracy (%)", make: || Box::new(TopK::new(1)) },
    MetricDef { name: "top5", needs: Needs::Classes, about: "top-5 accuracy (%)", make: || Box::new(TopK::new(5)) },
    MetricDef { name: "f1_macro", needs: Needs::Classes, about: "macro-averaged F1 (%)", make: || Box::new(F1 { macro_avg: true, ..F1::default() }) },
    MetricDef { name: "f1_micro", needs: Needs::Classes, about: "micro-averaged F1 (%)", make: || Box::new(F1::default()) },
    MetricDef { name: "roc_auc", needs: Needs::Classes, about: "ROC AUC (binary, or one-vs-rest macro)", make: || Box::new(RocAuc::default()) },
    MetricDef { name: "cosine", needs: Needs::Values, about: "mean cosine similarity to reference outputs", make: || Box::new(Cosine::default()) },
    MetricDef { name: "mse", needs: Needs::Values, about: "mean squared error", make: || Box::new(ErrorMean { squared: true, ..ErrorMean::default() }) },
    MetricDef { name: "mae", needs: Needs::Values, about: "mean absolute error", make: || Box::new(ErrorMean::default()) },
];

/// Whether a larger value of the metric is better (false for error metrics).
pub use tamp_domain::results::higher_is_better;

/// Looks a metric up by name.
pub fn lookup(name: &str) -> Result<&'static MetricDef> {
    REGISTRY.iter().find(|d| d.name == name).ok_or_else(|| EngineError::Metric {
        metric: name.to_owned(),
        message: format!("unknown; choose one of {}", REGISTRY.iter().map(|d| d.name).collect::<Vec<_>>().join(", ")),
    })
}

fn need<T>(metric: &str, v: Option<T>, what: &str) -> Result<T> {
    v.ok_or_else(|| EngineError::Metric { metric: metric.to_owned(), message: format!("needs {what} in the dataset's `labels` array") })
}

/// Class labels must index the model's output: `0..classes` (binary scores with one output
/// column take 0 and 1). Checked before a metric counts anything, so a label of −5 or 2⁶³−1
/// is an error naming the row, not a silent 0 % or an allocation panic.
fn check_classes(metric: &str, labels: &[i64], columns: usize) -> Result<()> {
    let classes = columns.max(2) as i64;
    match labels.iter().position(|&l| !(0..classes).contains(&l)) {
        None => Ok(()),
        Some(i) => Err(EngineError::Metric {
            metric: metric.to_owned(),
            message: format!(
                "label {} (row {i} of this batch) is not a class index of the model's output: labels must be 0–{} for its {columns} output column(s); check that `labels` belongs to this model and task",
                labels[i],
                classes - 1
            ),
        }),
    }
}

fn argmax(row: ndarray::ArrayView1<'_, f32>) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Top-k accuracy. A row counts when its label is among the k largest outputs; ties are
/// broken by index, as `numpy.argsort` on the negated scores does.
pub struct TopK {
    k: usize,
    hit: usize,
    n: usize,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        Self { k, hit: 0, n: 0 }
    }
}

impl Metric for TopK {
    fn update(&mut self, out: ArrayView2<'_, f32>, t: Targets<'_>) -> Result<()> {
        let labels = need("topk", t.classes, "class labels")?;
        check_classes("topk", labels, out.ncols())?;
        for (row, &label) in out.axis_iter(Axis(0)).zip(labels) {
            let Ok(label) = usize::try_from(label) else { continue };
            if label >= row.len() {
                self.n += 1;
                continue;
            }
            let target = row[label];
            // Rank of the label: how many scores beat it (ties before it count too).
            let better = row.iter().enumerate().filter(|&(i, &v)| v > target || (v == target && i < label)).count();
            self.hit += usize::from(better < self.k);
            self.n += 1;
        }
        Ok(())
    }
    fn finish(&self) -> Result<f64> {
        Ok(if self.n == 0 { 0.0 } else { 100.0 * self.hit as f64 / self.n as f64 })
    }
}

/// F1 from argmax predictions.
#[derive(Default)]
pub struct F1 {
    macro_avg: bool,
    tp: Vec<usize>,
    fp: Vec<usize>,
    fneg: Vec<usize>,
}

impl Metric for F1 {
    fn update(&mut self, out: ArrayView2<'_, f32>, t: Targets<'_>) -> Result<()> {
        let labels = need("f1", t.classes, "class labels")?;
        check_classes("f1", labels, out.ncols())?;
        let classes = out.ncols().max(2);
        for v in [&mut self.tp, &mut self.fp, &mut self.fneg] {
            if v.len() < classes {
                v.resize(classes, 0);
            }
        }
        for (row, &label) in out.axis_iter(Axis(0)).zip(labels) {
            let pred = argmax(row);
            let label = label.max(0) as usize;
            if pred == label {
                self.tp[label] += 1;
            } else {
                self.fp[pred] += 1;
                self.fneg[label] += 1;
            }
        }
        Ok(())
    }
    fn finish(&self) -> Result<f64> {
        let f1 = |tp: usize, fp: usize, fneg: usize| {
            let d = 2 * tp + fp + fneg;
            if d == 0 { 0.0 } else { 2.0 * tp as f64 / d as f64 }
        };
        Ok(100.0
            * if self.macro_avg {
                // Classes that never occur in labels nor predictions are left out, as sklearn does.
                let scores: Vec<f64> =
                    (0..self.tp.len()).filter(|&c| self.tp[c] + self.fp[c] + self.fneg[c] > 0).map(|c| f1(self.tp[c], self.fp[c], self.fneg[c])).collect();
                if scores.is_empty() { 0.0 } else { scores.iter().sum::<f64>() / scores.len() as f64 }
            } else {
                f1(self.tp.iter().sum(), self.fp.iter().sum(), self.fneg.iter().sum())
            })
    }
}

/// ROC AUC by the rank-sum (Mann–Whitney) formula, ties given half credit. Binary when the
/// output has one column (score) or two (score = logit₁ − logit₀); otherwise one-vs-rest
/// macro average over classes present in the labels.
#[derive(Default)]
pub struct RocAuc {
    scores: Vec<Vec<f32>>,
    labels: Vec<i64>,
}

fn auc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut i) = (0.0f64, 0);
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += (i..=j).filter(|&k| positive[idx[k]]).count() as f64 * avg_rank;
        i = j + 1;
    }
    let np = positive.iter().filter(|&&p| p).count() as f64;
    let nn = positive.len() as f64 - np;
    (np > 0.0 && nn > 0.0).then(|| (rank_sum - np * (np + 1.0) / 2.0) / (np * nn))
}

impl Metric for RocAuc {
    fn update(&mut self, out: ArrayView2<'_, f32>, t: Targets<'_>) -> Result<()> {
        let labels = need("roc_auc", t.classes, "class labels")?;
        check_classes("roc_auc", labels, out.ncols())?;
        for (row, &l) in out.axis_iter(Axis(0)).zip(labels) {
            self.scores.push(row.to_vec());
            self.labels.push(l);
        }
        Ok(())
    }
    fn finish(&self) -> Result<f64> {
        let width = self.scores.first().map_or(0, Vec::len);
        let err = |m: &str| EngineError::Metric { metric: "roc_auc".into(), message: m.into() };
        if width == 0 {
            return Err(err("needs at least one output column and one row"));
        }
        if width <= 2 {
            let s: Vec<f32> = self.scores.iter().map(|r| if width == 1 { r[0] } else { r[1] - r[0] }).collect();
            let pos: Vec<bool> = self.labels.iter().map(|&l| l == 1).collect();
            return auc(&s, &pos).ok_or_else(|| err("needs both classes in the labels"));
        }
        let mut aucs = Vec::new();
        for c in 0..width {
            let pos: Vec<bool> = self.labels.iter().map(|&l| l == c as i64).collect();
            let s: Vec<f32> = self.scores.iter().map(|r| r[c]).collect();
            aucs.extend(auc(&s, &pos));
        }
        if aucs.is_empty() {
            return Err(err("needs at least two classes in the labels"));
        }
        Ok(aucs.iter().sum::<f64>() / aucs.len() as f64)
    }
}

/// Mean cosine similarity of each output row to its reference row.
#[derive(Default)]
pub struct Cosine {
    sum: f64,
    n: usize,
}

fn check_widths(metric: &str, out: &ArrayView2<'_, f32>, r: &ArrayView2<'_, f32>) -> Result<()> {
    if out.dim() != r.dim() {
        return Err(EngineError::Metric { metric: metric.into(), message: format!("output is {:?} but the reference values are {:?}", out.dim(), r.dim()) });
    }
    Ok(())
}

impl Metric for Cosine {
    fn update(&mut self, out: ArrayView2<'_, f32>, t: Targets<'_>) -> Result<()> {
        let r = need("cosine", t.values, "reference values (float)")?;
        check_widths("cosine", &out, &r)?;
        if out.ncols() == 1 {
            // The cosine of two single numbers is ±1, their signs' agreement: a score that
            // cannot tell a good model from a bad one.
            return Err(EngineError::Metric {
                metric: "cosine".into(),
                message: "the output has one value per row, whose cosine to the reference is 1 whenever the signs agree; score it with mae or mse".into(),
            });
        }
        for (a, b) in out.axis_iter(Axis(0)).zip(r.axis_iter(Axis(0))) {
            let dot: f64 = a.iter().zip(b.iter()).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
            let na: f64 = a.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
            let nb: f64 = b.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
            self.sum += if na == 0.0 || nb == 0.0 { 0.0 } else { dot / (na * nb) };
            self.n += 1;
        }
        Ok(())
    }
    fn finish(&self) -> Result<f64> {
        Ok(if self.n == 0 { 0.0 } else { self.sum / self.n as f64 })
    }
}

/// Mean absolute or squared error against reference values.
#[derive(Default)]
pub struct ErrorMean {
    squared: bool,
    sum: f64,
    n: usize,
}

impl Metric for ErrorMean {
    fn update(&mut self, out: ArrayView2<'_, f32>, t: Targets<'_>) -> Result<()> {
        let name = if self.squared { "mse" } else { "mae" };
        let r = need(name, t.values, "reference values (float)")?;
        check_widths(name, &out, &r)?;
        for (&x, &y) in out.iter().zip(r.iter()) {
            let d = f64::from(x) - f64::from(y);
            self.sum += if self.squared { d * d } else { d.abs() };
            self.n += 1;
        }
        Ok(())
    }
    fn finish(&self) -> Result<f64> {
        Ok(if self.n == 0 { 0.0 } else { self.sum / self.n as f64 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn run(name: &str, out: ndarray::Array2<f32>, classes: Option<&[i64]>, values: Option<ndarray::Array2<f32>>) -> f64 {
        let mut m = (lookup(name).unwrap().make)();
        m.update(out.view(), Targets { classes, values: values.as_ref().map(|v| v.view()) }).unwrap();
        m.finish().unwrap()
    }

    #[test]
    fn topk_counts_ties_like_argsort() {
        let out = array![[0.1, 0.9, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]];
        assert!((run("top1", out.clone(), Some(&[1, 1, 0]), None) - 100.0 / 3.0).abs() < 1e-9);
        assert!((run("top5", out, Some(&[1, 1, 0]), None) - 100.0).abs() < 1e-9);
    }

    #[test]
    fn f1_matches_hand_computation() {
        // preds: 0, 1, 1, 2 ; labels: 0, 1, 2, 2
        let out = array![[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        let labels = [0, 1, 2, 2];
        // class0 f1=1, class1 f1=2/3, class2 f1=2/3 → macro 7/9
        assert!((run("f1_macro", out.clone(), Some(&labels), None) - 100.0 * 7.0 / 9.0).abs() < 1e-9);
        assert!((run("f1_micro", out, Some(&labels), None) - 75.0).abs() < 1e-9);
    }

    #[test]
    fn auc_handles_ties_and_perfect_order() {
        let out = array![[0.1], [0.4], [0.35], [0.8]];
        assert!((run("roc_auc", out, Some(&[0, 0, 1, 1]), None) - 0.75).abs() < 1e-9);
        let tied = array![[0.5], [0.5]];
        assert!((run("roc_auc", tied, Some(&[0, 1]), None) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn regression_metrics() {
        let out = array![[1.0, 0.0], [0.0, 2.0]];
        let reference = array![[2.0, 0.0], [0.0, 1.0]];
        assert!((run("cosine", out.clone(), None, Some(reference.clone())) - 1.0).abs() < 1e-9);
        assert!((run("mse", out.clone(), None, Some(reference.clone())) - 0.5).abs() < 1e-9);
        assert!((run("mae", out, None, Some(reference)) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn cosine_of_one_value_per_row_is_refused() {
        let mut m = (lookup("cosine").unwrap().make)();
        let (out, reference) = (array![[0.2], [0.9]], array![[0.9], [0.1]]);
        let e = m.update(out.view(), Targets { classes: None, values: Some(reference.view()) }).unwrap_err().to_string();
        assert!(e.contains("one value per row") && e.contains("mae"), "{e}");
    }

    #[test]
    fn unknown_metric_lists_choices() {
        assert!(lookup("top3").err().unwrap().to_string().contains("top1, top5"));
    }
}
