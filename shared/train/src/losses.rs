//! Distillation losses beyond the output's (issue 18), added to the training objective when
//! the `fine_tune` block names them:
//! - **features** (FitNets, Romero et al. 2015): chosen intermediate values of the student
//!   matched to the teacher's by MSE or cosine, through a learned linear projection
//!   (student width → teacher width) when the widths differ; or MiniLM's value relation
//!   (Wang et al. 2020): `softmax(X Xᵀ/√d)` of each side over the sequence, matched by KL,
//!   which needs no projection;
//! - **attention** transfer: attention probability maps (`[N, heads, S, S]`, a Softmax's
//!   output) matched by KL row by row, heads averaged when the counts differ;
//! - **multi-task heads**: further outputs listed under `features` with their own loss
//!   (`kl` on softened class scores, `mse`, `cosine`) and weight;
//! - **contrastive**: in-batch InfoNCE (CRD / SimCSE style) between the student's and the
//!   teacher's output embeddings, each row's own teacher embedding its positive.
//!
//! The projections are trained with the student and dropped afterwards: they are not part of
//! the graph written back.

use std::collections::HashMap;

use candle_core::{D, DType, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tamp_domain::recipe::{Contrastive, FeatureLoss, FeatureMatch, FineTune};
use tamp_onnx::Model;

use crate::graph::{GraphError, Result};

/// The extra terms of one training run.
pub(crate) struct Extra {
    features: Vec<FeatureMatch>,
    attention: Vec<FeatureMatch>,
    contrastive: Option<Contrastive>,
    /// Per feature pair with differing widths: the projection, made at the first batch.
    projections: HashMap<usize, Var>,
    seed: u64,
    temperature: f64,
}

fn teacher_name(f: &FeatureMatch) -> &str {
    f.teacher.as_deref().unwrap_or(&f.student)
}

/// Every value a node of `model` computes, and its inputs.
fn value_names(model: &Model) -> std::collections::HashSet<&str> {
    let g = model.graph();
    g.node.iter().flat_map(|n| n.output.iter().map(String::as_str)).chain(g.input.iter().filter_map(|i| i.name.as_deref())).collect()
}

impl Extra {
    /// Checks every named value exists in its graph before any training.
    pub(crate) fn new(cfg: &FineTune, student: &Model, teacher: Option<&Model>) -> Result<Self> {
        let extra = Self {
            features: cfg.features.clone(),
            attention: cfg.attention.clone(),
            contrastive: cfg.contrastive.clone(),
            projections: HashMap::new(),
            seed: cfg.seed,
            temperature: cfg.temperature,
        };
        if extra.is_empty() {
            return Ok(extra);
        }
        let Some(teacher) = teacher else {
            return Err(GraphError::Other(
                "`features`, `attention` and `contrastive` distil from a teacher: use them in a `distill` stage or with the input model as teacher".into(),
            ));
        };
        let (sv, tv) = (value_names(student), value_names(teacher));
        for (k, f) in extra.features.iter().map(|f| ("features", f)).chain(extra.attention.iter().map(|f| ("attention", f))) {
            if !sv.contains(f.student.as_str()) {
                return Err(GraphError::Other(format!("fine_tune.{k}: the student computes no value '{}'; name a node output of the student", f.student)));
            }
            if !tv.contains(teacher_name(f)) {
                return Err(GraphError::Other(format!(
                    "fine_tune.{k}: the teacher computes no value '{}'; set `teacher:` to its counterpart",
                    teacher_name(f)
                )));
            }
        }
        Ok(extra)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.features.is_empty() && self.attention.is_empty() && self.contrastive.is_none()
    }

    /// Whether the teacher must run on every batch for intermediate values.
    pub(crate) fn needs_teacher_values(&self) -> bool {
        !self.features.is_empty() || !self.attention.is_empty()
    }

    pub(crate) fn student_names(&self) -> Vec<String> {
        self.features.iter().chain(&self.attention).map(|f| f.student.clone()).collect()
    }

    pub(crate) fn teacher_names(&self) -> Vec<String> {
        self.features.iter().chain(&self.attention).map(|f| teacher_name(f).to_owned()).collect()
    }

    /// What the report calls the extra terms (`+features+attention+contrastive`).
    pub(crate) fn name(&self) -> String {
        let mut s = String::new();
        for (on, n) in [(!self.features.is_empty(), "+features"), (!self.attention.is_empty(), "+attention"), (self.contrastive.is_some(), "+contrastive")] {
            if on {
                s.push_str(n);
            }
        }
        s
    }

    /// The extra terms for one batch, and the projections made at this batch (the caller
    /// trains them with the student's weights).
    pub(crate) fn loss(
        &mut self,
        student: &HashMap<String, Tensor>,
        teacher: &HashMap<String, Tensor>,
        output: (&Tensor, Option<&Tensor>),
    ) -> Result<(Option<Tensor>, Vec<Var>)> {
        let get = |m: &HashMap<String, Tensor>, n: &str| m.get(n).cloned().ok_or_else(|| GraphError::Other(format!("the graph computed no '{n}'")));
        let mut total: Option<Tensor> = None;
        let mut add = |t: Tensor| -> Result<()> {
            total = Some(match total.take() {
                Some(acc) => (acc + t)?,
                None => t,
            });
            Ok(())
        };
        let mut made = Vec::new();
        for i in 0..self.features.len() {
            let f = &self.features[i];
            let (s, t) = (get(student, &f.student)?, get(teacher, teacher_name(f))?.detach());
            let (loss, weight) = (f.loss, f.weight);
            let term = match loss {
                FeatureLoss::Relation => relation_kl(&s, &t)?,
                FeatureLoss::Kl => {
                    let temp = self.temperature;
                    let soft = |x: &Tensor| -> Result<Tensor> { Ok(candle_nn::ops::softmax_last_dim(&(rows_per_sample(x)? / temp)?)?) };
                    (kl_probs(&soft(&t)?, &soft(&s)?)? * (temp * temp))?
                }
                FeatureLoss::Mse | FeatureLoss::Cosine => {
                    let (s, t) = (rows(&s)?, rows(&t)?);
                    let s = match self.project(i, &s, &t, &mut made)? {
                        Some(w) => s.matmul(&w)?,
                        None => s,
                    };
                    if loss == FeatureLoss::Mse { s.sub(&t)?.sqr()?.mean_all()? } else { (1.0 - cosine_rows(&s, &t)?.mean_all()?)? }
                }
            };
            add((term * weight)?)?;
        }
        for f in &self.attention {
            let (s, t) = (get(student, &f.student)?, get(teacher, teacher_name(f))?.detach());
            add((attention_kl(&s, &t)? * f.weight)?)?;
        }
        if let Some(c) = &self.contrastive {
            let t = output.1.ok_or_else(|| GraphError::Other("contrastive distillation needs the teacher's output".into()))?;
            add((info_nce(output.0, &t.detach(), c.temperature)? * c.weight)?)?;
        }
        Ok((total, made))
    }

    /// The projection of feature pair `i` when the widths differ (made at its first batch,
    /// seeded, scaled so a random projection keeps the variance).
    fn project(&mut self, i: usize, s: &Tensor, t: &Tensor, made: &mut Vec<Var>) -> Result<Option<Tensor>> {
        let (ds, dt) = (s.dim(1)?, t.dim(1)?);
        if ds == dt {
            return Ok(None);
        }
        if let Some(w) = self.projections.get(&i) {
            return Ok(Some(w.as_tensor().clone()));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ (0x9e37 + i as u64));
        // Uniform on ±√(3/ds): variance 1/ds, so a projected row keeps its scale.
        let a = (3.0 / ds as f32).sqrt();
        let init: Vec<f32> = (0..ds * dt).map(|_| rng.random_range(-a..a)).collect();
        let w = Var::from_tensor(&Tensor::from_vec(init, (ds, dt), s.device())?)?;
        made.push(w.clone());
        let out = w.as_tensor().clone();
        self.projections.insert(i, w);
        Ok(Some(out))
    }
}

/// `[…, d]` as rows of width d; a convolution's `[N, C, H, W]` as rows of its C channels
/// (the projection is then FitNets' 1×1 convolution).
fn rows(t: &Tensor) -> Result<Tensor> {
    let t = &if t.rank() == 4 { t.permute((0, 2, 3, 1))?.contiguous()? } else { t.clone() };
    let d = *t.dims().last().ok_or_else(|| GraphError::Other("a scalar cannot be matched as a feature".into()))?;
    Ok(t.to_dtype(DType::F32)?.reshape((t.elem_count() / d.max(1), d))?)
}

fn cosine_rows(s: &Tensor, t: &Tensor) -> Result<Tensor> {
    let dot = s.mul(t)?.sum(D::Minus1)?;
    let norms = (s.sqr()?.sum(D::Minus1)?.sqrt()? * t.sqr()?.sum(D::Minus1)?.sqrt()?)?;
    Ok(dot.div(&(norms + 1e-8)?)?)
}

/// KL(p ‖ q) over the last axis, averaged over everything else; `p` and `q` probabilities.
fn kl_probs(p: &Tensor, q: &Tensor) -> Result<Tensor> {
    let lp = (p + 1e-8)?.log()?;
    let lq = (q + 1e-8)?.log()?;
    let per = p.mul(&(lp - lq)?)?.sum(D::Minus1)?;
    Ok(per.mean_all()?)
}

/// Attention maps `[N, H, S, S]` (or `[N, S, S]`): KL(teacher ‖ student) per query row.
fn attention_kl(s: &Tensor, t: &Tensor) -> Result<Tensor> {
    let heads_mean = |x: &Tensor| -> Result<Tensor> { Ok(if x.rank() == 4 { x.mean(1)? } else { x.clone() }) };
    let (s, t) = if s.dims() == t.dims() { (s.clone(), t.clone()) } else { (heads_mean(s)?, heads_mean(t)?) };
    if s.dims() != t.dims() {
        return Err(GraphError::Other(format!("attention maps {:?} and {:?} differ beyond their head counts", s.dims(), t.dims())));
    }
    kl_probs(&t, &s)
}

/// MiniLM's value relation: `softmax(X Xᵀ/√d)` of each side (`[N, S, D]`), KL(teacher ‖ student).
fn relation_kl(s: &Tensor, t: &Tensor) -> Result<Tensor> {
    let rel = |x: &Tensor| -> Result<Tensor> {
        let x = if x.rank() == 2 { x.unsqueeze(0)? } else { x.clone() };
        if x.rank() != 3 {
            return Err(GraphError::Other(format!("a relation needs values of shape [N, S, D], not {:?}", x.dims())));
        }
        let d = x.dim(2)? as f64;
        let scores = (x.matmul(&x.t()?)? / d.sqrt())?;
        Ok(candle_nn::ops::softmax_last_dim(&scores.contiguous()?)?)
    };
    kl_probs(&rel(t)?, &rel(s)?)
}

/// In-batch InfoNCE: logits `ŝ t̂ᵀ / τ`, row i's positive is column i.
fn info_nce(s: &Tensor, t: &Tensor, temperature: f64) -> Result<Tensor> {
    let (s, t) = (rows_per_sample(s)?, rows_per_sample(t)?);
    let unit = |x: &Tensor| -> Result<Tensor> { Ok(x.broadcast_div(&(x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()? + 1e-8)?)?) };
    let logits = (unit(&s)?.matmul(&unit(&t)?.t()?)? / temperature)?;
    let n = logits.dim(0)?;
    let targets = Tensor::arange(0u32, n as u32, logits.device())?;
    Ok(candle_nn::loss::cross_entropy(&logits, &targets)?)
}

fn rows_per_sample(t: &Tensor) -> Result<Tensor> {
    let n = t.dim(0)?;
    Ok(t.to_dtype(DType::F32)?.reshape((n, t.elem_count() / n.max(1)))?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use candle_core::Device;

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    fn scalar(x: &Tensor) -> f32 {
        x.to_scalar::<f32>().unwrap()
    }

    #[test]
    fn identical_values_cost_nothing_and_different_ones_do() {
        let a = t(&[0.2, 0.8, 0.5, 0.5, 0.9, 0.1, 0.3, 0.7], &[1, 2, 2, 2]);
        let b = t(&[0.8, 0.2, 0.5, 0.5, 0.1, 0.9, 0.3, 0.7], &[1, 2, 2, 2]);
        assert!(scalar(&attention_kl(&a, &a).unwrap()).abs() < 1e-6);
        assert!(scalar(&attention_kl(&b, &a).unwrap()) > 0.1);
        // Head counts differ: the maps are compared head-averaged.
        let one_head = a.mean_keepdim(1).unwrap();
        assert!(scalar(&attention_kl(&one_head, &a).unwrap()).abs() < 1e-6);
        let x = t(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], &[1, 3, 2]);
        // A zero column added, rescaled so that X Xᵀ/√d is unchanged: (3/2)^¼.
        let c = 1.5f32.powf(0.25);
        let wide = t(&[c, 0.0, 0.0, 0.0, c, 0.0, c, c, 0.0], &[1, 3, 3]);
        assert!(scalar(&relation_kl(&x, &x).unwrap()).abs() < 1e-6);
        assert!(scalar(&relation_kl(&x, &wide).unwrap()).abs() < 1e-6, "the same relations at another width");
        assert!(scalar(&relation_kl(&x, &t(&[0.0, 3.0, 3.0, 0.0, 1.0, 1.0], &[1, 3, 2])).unwrap()) > 0.1);
    }

    #[test]
    fn heads_and_projected_features_add_up_and_projections_are_made_once() {
        let feature = |student: &str, teacher: &str, loss| FeatureMatch { student: student.into(), teacher: Some(teacher.into()), weight: 1.0, loss };
        let mut extra = Extra {
            features: vec![feature("head2", "t_head2", FeatureLoss::Kl), feature("hidden", "t_hidden", FeatureLoss::Mse)],
            attention: Vec::new(),
            contrastive: None,
            projections: HashMap::new(),
            seed: 1,
            temperature: 2.0,
        };
        let logits = t(&[2.0, 0.0, -1.0, 0.5, 0.5, 3.0], &[2, 3]);
        let student: HashMap<String, Tensor> = [("head2".into(), logits.clone()), ("hidden".into(), t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]))].into();
        let teacher: HashMap<String, Tensor> = [("t_head2".into(), logits), ("t_hidden".into(), t(&[0.0; 8], &[2, 4]))].into();
        let (loss, made) = extra.loss(&student, &teacher, (&t(&[0.0; 2], &[2, 1]), None)).unwrap();
        assert_eq!((made.len(), made[0].as_tensor().dims()), (1, &[3usize, 4][..]), "one [3, 4] projection for the 3-wide student value");
        assert!(scalar(&loss.unwrap()) > 0.0, "the projected hidden state is not the teacher's zeros");
        let (_, again) = extra.loss(&student, &teacher, (&t(&[0.0; 2], &[2, 1]), None)).unwrap();
        assert!(again.is_empty(), "made once");
        extra.features.truncate(1);
        let (loss, _) = extra.loss(&student, &teacher, (&t(&[0.0; 2], &[2, 1]), None)).unwrap();
        assert!(scalar(&loss.unwrap()).abs() < 1e-6, "the same head's scores cost nothing");
    }

    #[test]
    fn info_nce_rewards_matching_rows() {
        let s = t(&[1.0, 0.0, 0.0, 1.0], &[2, 2]);
        let swapped = t(&[0.0, 1.0, 1.0, 0.0], &[2, 2]);
        let (matched, wrong) = (scalar(&info_nce(&s, &s, 0.1).unwrap()), scalar(&info_nce(&s, &swapped, 0.1).unwrap()));
        assert!(matched < 1e-3 && wrong > 5.0, "{matched} {wrong}");
    }
}
