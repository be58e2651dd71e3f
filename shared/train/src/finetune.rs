//! Fine-tuning an ONNX graph on `train.npz`: seeded batches streamed from the dataset, the
//! loss the recipe names (cross-entropy on labels, distillation from the input model, MSE or
//! cosine), AdamW or SGD with momentum, cosine or step schedule with warm-up; and what the
//! stage made kept intact:
//! - weights that are exactly zero stay zero (masked gradients and updates): pruned
//!   channels' leftovers, unstructured and N:M sparsity;
//! - clustered layers train their codebooks (the graph reads `Gather(codebook, indices)`,
//!   so the gradient reaches the centroids, never individual weights);
//! - low-rank factors train as the two factors they are;
//! - fake-quantized weights (QAT) train in float and are rounded back on write-back.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use candle_core::{D, DType, Tensor, Var};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use tamp_data::{Dataset, Labels};
use tamp_domain::recipe::{BatchNormMode, FineTune, LearningRate, LossKind, LrSchedule, OptimizerKind};
pub use tamp_domain::results::{LrTrial, TrainReport};
use tamp_onnx::Model;

use crate::graph::{FourBit, GraphError, GraphOptions, Mode, Result, TrainGraph, to_candle};

/// What the job knows about the task.
#[derive(Debug, Clone, Default)]
pub struct Task<'a> {
    /// The output trained on (the one the evaluation scores).
    pub output: String,
    /// The input model, whose outputs are the distillation targets.
    pub teacher: Option<&'a Model>,
    /// 4-bit QAT: the weights the 4-bit pass will quantize train through its quantizer.
    pub fake_quant_4bit: Option<FourBit>,
    /// The teacher's output the student's `output` learns from (default: the same name).
    pub teacher_output: Option<String>,
    /// Only these weights train (default: all).
    pub train_only: Option<std::collections::HashSet<String>>,
}

/// Training progress: (step, total steps, running loss).
pub type Progress<'p> = &'p mut dyn FnMut(usize, usize, f64);

/// Fine-tunes `student` on `data` and returns it with the updated weights.
pub fn fine_tune(student: &Model, task: &Task<'_>, data: &Dataset, cfg: &FineTune, progress: Progress<'_>) -> Result<(Model, TrainReport)> {
    let started = Instant::now();
    let _pages = crate::alloc::keep_freed_pages();
    let mut rows: Vec<usize> = (0..data.rows).collect();
    rows.shuffle(&mut ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x7a3d));
    if let Some(m) = cfg.max_rows {
        rows.truncate(m);
    }
    let mut trials = Vec::new();
    let lr = match cfg.lr {
        LearningRate::Value(v) => v,
        LearningRate::Auto => search_lr(student, task, data, &rows, cfg, &mut trials)?,
    };
    let (model, mut report) = train(student, task, data, &rows, cfg, lr, progress)?;
    report.lr_trials = trials;
    report.wall_seconds = started.elapsed().as_secs_f64();
    Ok((model, report))
}

/// Successive halving over learning rates: every candidate trains a short budget on 90 % of
/// the rows and is scored by its loss on the held-back 10 %; the better half trains twice
/// as long in the next round.
fn search_lr(student: &Model, task: &Task<'_>, data: &Dataset, rows: &[usize], cfg: &FineTune, trials: &mut Vec<LrTrial>) -> Result<f64> {
    let base = match cfg.optimizer {
        OptimizerKind::Adamw => [1e-4, 3e-4, 1e-3, 3e-3],
        OptimizerKind::Sgd => [3e-3, 1e-2, 3e-2, 1e-1],
    };
    let held = (rows.len() / 10).clamp(1, 2048);
    let (val, fit) = rows.split_at(held);
    let total = total_steps(cfg, rows.len());
    let mut alive: Vec<f64> = base.to_vec();
    let mut budget = (total / 8).max(4);
    let mut round = 0;
    while alive.len() > 1 {
        let mut scored = Vec::new();
        for &lr in &alive {
            let short = FineTune { steps: Some(budget), epochs: 1.0, lr: LearningRate::Value(lr), ..cfg.clone() };
            let (m, _) = train(student, task, data, fit, &short, lr, &mut |_, _, _| {})?;
            let loss = validation_loss(&m, task, data, val, cfg)?;
            trials.push(LrTrial { lr, round, steps: budget, validation_loss: loss });
            scored.push((loss, lr));
        }
        scored.sort_by(|a, b| a.0.total_cmp(&b.0));
        alive = scored.iter().take(alive.len().div_ceil(2)).map(|s| s.1).collect();
        if alive.len() == 1 {
            break;
        }
        budget *= 2;
        round += 1;
    }
    Ok(alive[0])
}

fn total_steps(cfg: &FineTune, rows: usize) -> usize {
    cfg.steps.unwrap_or_else(|| ((cfg.epochs * rows as f64) / cfg.batch_size as f64).ceil().max(1.0) as usize)
}

/// Feeds for one batch (sequence inputs cut to the batch's longest row).
fn batch_feeds(g: &TrainGraph, data: &Dataset, idx: &[usize], lengths: Option<&[usize]>) -> Result<HashMap<String, Tensor>> {
    let arrays = match lengths {
        Some(l) => data.select_trimmed(idx, idx.iter().map(|&i| l[i]).max().unwrap_or(1)),
        None => data.select(idx),
    }
    .map_err(|e| GraphError::Other(e.to_string()))?;
    // Integer inputs (token ids, masks) stay on the host on a GPU: their shape arithmetic and
    // index checks read them there; float inputs go to the device.
    let dev = |v: &tamp_onnx::TensorValue| {
        if matches!(v, tamp_onnx::TensorValue::F32(_) | tamp_onnx::TensorValue::F64(_)) { g.device().clone() } else { candle_core::Device::Cpu }
    };
    arrays.iter().filter(|(k, _)| g.inputs.contains(k)).map(|(k, v)| Ok((k.clone(), to_candle(v, &dev(v))?))).collect()
}

/// The loss of one batch.
struct Objective {
    kind: LossKind,
    temperature: f64,
    distill_weight: f64,
}

impl Objective {
    fn resolve(cfg: &FineTune, data: &Dataset, has_teacher: bool) -> Result<Self> {
        let classes = matches!(data.labels, Some(Labels::Classes(_)));
        let kind = match cfg.loss {
            LossKind::Auto if classes => LossKind::CrossEntropy,
            LossKind::Auto => LossKind::Auto,
            k => k,
        };
        if kind == LossKind::CrossEntropy && !classes {
            return Err(GraphError::Other(format!("loss `cross_entropy` needs integer `labels` in {}; add them, or use `loss: kl`", data.path.display())));
        }
        if matches!(kind, LossKind::Mse | LossKind::Cosine) && !has_teacher && !matches!(data.labels, Some(Labels::Values(_))) {
            return Err(GraphError::Other("this loss needs float `labels` in train.npz, or the input model as teacher".into()));
        }
        let distill_weight = if kind == LossKind::CrossEntropy && has_teacher && cfg.loss == LossKind::Auto { cfg.distill_weight } else { 0.0 };
        Ok(Self { kind, temperature: cfg.temperature, distill_weight })
    }

    fn name(&self) -> String {
        match self.kind {
            LossKind::CrossEntropy if self.distill_weight > 0.0 => "ce+kl".into(),
            LossKind::CrossEntropy => "ce".into(),
            LossKind::Kl => "kl".into(),
            LossKind::Mse => "mse".into(),
            LossKind::Cosine => "cosine".into(),
            LossKind::Auto => "kl|cosine".into(),
        }
    }

    /// `student` [N, …]; `teacher` the input model's output; `labels` per row.
    fn loss(&self, student: &Tensor, teacher: Option<&Tensor>, labels: Option<&Tensor>) -> Result<Tensor> {
        let flat = |t: &Tensor| -> candle_core::Result<Tensor> {
            let n = t.dim(0)?;
            t.reshape((n, t.elem_count() / n.max(1)))
        };
        let s = flat(student)?;
        let kl = |t: &Tensor| -> Result<Tensor> {
            let temp = self.temperature;
            let ls = candle_nn::ops::log_softmax(&s.affine(1.0 / temp, 0.0)?, D::Minus1)?;
            let lt = candle_nn::ops::log_softmax(&flat(t)?.affine(1.0 / temp, 0.0)?, D::Minus1)?;
            let pt = lt.exp()?;
            Ok((pt.mul(&(lt - ls)?)?.sum(D::Minus1)?.mean_all()? * (temp * temp))?)
        };
        let cosine = |t: &Tensor| -> Result<Tensor> {
            let t = flat(t)?;
            let dot = s.mul(&t)?.sum(D::Minus1)?;
            let norms = (s.sqr()?.sum(D::Minus1)?.sqrt()? * t.sqr()?.sum(D::Minus1)?.sqrt()?)?;
            Ok((1.0 - dot.div(&(norms + 1e-8)?)?.mean_all()?)?)
        };
        let target = || teacher.or(labels).ok_or_else(|| GraphError::Other("no target for this loss".into()));
        Ok(match self.kind {
            LossKind::CrossEntropy => {
                let y = labels.ok_or_else(|| GraphError::Other("cross-entropy needs labels".into()))?;
                let ce = candle_nn::loss::cross_entropy(&s, y)?;
                match teacher {
                    Some(t) if self.distill_weight > 0.0 => ((ce * (1.0 - self.distill_weight))? + (kl(t)? * self.distill_weight)?)?,
                    _ => ce,
                }
            }
            LossKind::Kl => kl(target()?)?,
            LossKind::Mse => s.sub(&flat(target()?)?)?.sqr()?.mean_all()?,
            LossKind::Cosine => cosine(target()?)?,
            // No labels: class scores distil by KL, anything else by cosine.
            LossKind::Auto => {
                let t = target()?;
                if looks_like_class_scores(&s) { kl(t)? } else { cosine(t)? }
            }
        })
    }
}

/// Rows that are not unit-norm and have few columns read as class scores.
fn looks_like_class_scores(s: &Tensor) -> bool {
    s.dim(1).is_ok_and(|c| c <= 1000)
        && s.sqr().and_then(|q| q.sum(D::Minus1)).and_then(|n| n.mean_all()).and_then(|m| m.to_scalar::<f32>()).is_ok_and(|m| (m - 1.0).abs() > 0.05)
}

/// The optimizer state for one weight.
struct Slot {
    var: Var,
    m: Tensor,
    v: Tensor,
    /// 1 where the weight may move, 0 where it must stay zero.
    mask: Option<Tensor>,
    decay: bool,
    /// Both AdamW moments in one `(2, n)` tensor, for the fused GPU step.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    mv: Option<Tensor>,
    /// The AdamW moments and the mask as host vectors, for the fused CPU step.
    host: Option<HostAdamW>,
}

/// AdamW's state for one weight on the CPU: the step in one loop over plain vectors. Written
/// with candle's ops it is ~13 tensor ops a weight, each allocating its result: on ResNet-8
/// (30 small weights) about 400 ops a step, a tenth of the step.
struct HostAdamW {
    m: Vec<f32>,
    v: Vec<f32>,
    mask: Option<Vec<f32>>,
}

/// The same arithmetic as the op-by-op step and the GPU kernel: bias-corrected moments,
/// decoupled weight decay (`decay` = 1 − lr·wd), the mask on the gradient and the result.
fn host_adamw(h: &mut HostAdamW, w: &mut [f32], g: &[f32], k: &AdamWScalars) {
    for (i, ((w, &g), (m, v))) in w.iter_mut().zip(g).zip(h.m.iter_mut().zip(h.v.iter_mut())).enumerate() {
        let keep = h.mask.as_ref().map_or(1.0, |mask| mask[i]);
        let g = g * keep;
        *m = k.b1 * *m + (1.0 - k.b1) * g;
        *v = k.b2 * *v + (1.0 - k.b2) * g * g;
        *w = (*w * k.decay - k.step_size * *m / (v.sqrt() / k.bc2_sqrt + k.eps)) * keep;
    }
}

/// One AdamW step's scalars (host side).
struct AdamWScalars {
    b1: f32,
    b2: f32,
    step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
    decay: f32,
}

fn labels_for(data: &Dataset, idx: &[usize], dev: &candle_core::Device) -> Result<Option<Tensor>> {
    Ok(match &data.labels {
        Some(Labels::Classes(_)) => {
            let v: Vec<u32> = data.class_labels(idx).unwrap_or_default().iter().map(|&c| c.max(0) as u32).collect();
            Some(Tensor::from_vec(v, idx.len(), dev)?)
        }
        Some(Labels::Values(_)) => data.value_labels(idx).map(|a| crate::graph::to_candle(&tamp_onnx::TensorValue::F32(a), dev)).transpose()?,
        None => None,
    })
}

fn lr_at(cfg: &FineTune, lr: f64, step: usize, total: usize) -> f64 {
    if step < cfg.warmup_steps {
        return lr * (step + 1) as f64 / cfg.warmup_steps as f64;
    }
    let t = step - cfg.warmup_steps;
    let span = total.saturating_sub(cfg.warmup_steps).max(1);
    match cfg.schedule {
        LrSchedule::Constant => lr,
        LrSchedule::Step => lr * cfg.decay.powi((t / cfg.decay_every) as i32),
        LrSchedule::Cosine => lr * 0.5 * (1.0 + (std::f64::consts::PI * t as f64 / span as f64).cos()),
    }
}

fn train(student: &Model, task: &Task<'_>, data: &Dataset, rows: &[usize], cfg: &FineTune, lr: f64, progress: Progress<'_>) -> Result<(Model, TrainReport)> {
    if rows.is_empty() {
        return Err(GraphError::Other(format!("{} has no rows to train on", data.path.display())));
    }
    let mut g = TrainGraph::new(
        student,
        &GraphOptions { trainable: true, learn_scales: cfg.learn_scales, fake_quant_4bit: task.fake_quant_4bit, train_only: task.train_only.clone() },
    )?;
    if !g.outputs.contains(&task.output) {
        return Err(GraphError::Other(format!("the model has no output '{}' to train; its outputs: {}", task.output, g.outputs.join(", "))));
    }
    let mut teacher = task.teacher.map(|t| TrainGraph::new(t, &GraphOptions::default())).transpose()?;
    let objective = Objective::resolve(cfg, data, teacher.is_some())?;
    let mut extra = crate::losses::Extra::new(cfg, student, task.teacher)?;
    let lengths = data.sequence_lengths().map_err(|e| GraphError::Other(e.to_string()))?;
    let dev = g.device().clone();
    let mut masked_zeros = 0usize;
    let mut slots: Vec<Slot> = Vec::new();
    let quantized: std::collections::HashSet<String> = g.quantized_weights().map(str::to_owned).collect();
    for (name, var) in g.params().iter() {
        // Detached: a mask derived from the variable would record every product with it,
        // chaining each step's moments to the last (memory grew ~0.4 GB a step on MiniLM).
        let t = &var.as_tensor().detach();
        let zeros = t.eq(&t.zeros_like()?)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()? as usize;
        // A trained float weight has no exact zeros but those a pass made. A quantized one
        // rounds small weights to zero (a few %): only a pruned share (≥ 10 %) is held.
        let pruned = if quantized.contains(name) { zeros * 10 >= t.elem_count() } else { zeros > 0 };
        let mask = (t.rank() >= 2 && pruned).then(|| t.ne(&t.zeros_like()?).and_then(|m| m.to_dtype(DType::F32))).transpose()?;
        if mask.is_some() {
            masked_zeros += zeros;
        }
        slots.push(Slot { var: var.clone(), m: t.zeros_like()?, v: t.zeros_like()?, mask, decay: t.rank() >= 2, mv: None, host: None });
    }
    let mut report = TrainReport {
        rows: rows.len(),
        batch_size: cfg.batch_size,
        lr,
        loss: format!("{}{}", objective.name(), extra.name()),
        masked_tensors: slots.iter().filter(|s| s.mask.is_some()).count(),
        masked_zeros,
        fake_quantized: g.quantized_weights().count(),
        trainable_params: slots.iter().map(|s| s.var.elem_count()).sum(),
        device: Some(if g.device().is_cpu() { "cpu" } else { "cuda:0" }.into()),
        ..TrainReport::default()
    };
    let total = total_steps(cfg, rows.len());
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = rows.to_vec();
    let mut losses = Vec::with_capacity(total);
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
    let mode = if cfg.batch_norm == BatchNormMode::Train { Mode::Train } else { Mode::Eval };
    let (student_names, teacher_names) = (extra.student_names(), extra.teacher_names());
    let out: Vec<&str> = std::iter::once(task.output.as_str()).chain(student_names.iter().map(String::as_str)).collect();
    let teacher_out = task.teacher_output.as_deref().unwrap_or(&task.output);
    let teacher_wanted: Vec<&str> = std::iter::once(teacher_out).chain(teacher_names.iter().map(String::as_str)).collect();
    let mut step = 0;
    // The teacher's answer for each row, after its first epoch (rank-2 outputs only: one row
    // each, whatever the batch's padding).
    let mut cached: HashMap<usize, Vec<f32>> = HashMap::new();
    'outer: loop {
        order.shuffle(&mut rng);
        for idx in order.chunks(cfg.batch_size) {
            if step >= total {
                break 'outer;
            }
            // A last short batch would make batch statistics noisy: skipped.
            if idx.len() < cfg.batch_size.min(rows.len()) {
                continue;
            }
            let feeds = batch_feeds(&g, data, idx, lengths.as_deref())?;
            // Intermediate values are not cached: the teacher runs on every batch then.
            let mut teacher_values = HashMap::new();
            let target = match teacher.as_mut() {
                Some(t) if extra.needs_teacher_values() => {
                    teacher_values = t.forward(&feeds, Mode::Eval, &teacher_wanted)?;
                    Some(teacher_values.get(teacher_out).ok_or_else(|| missing(teacher_out))?.detach())
                }
                Some(t) => Some(teacher_targets(t, &feeds, idx, teacher_out, &mut cached, &dev)?),
                None => None,
            };
            let labels = labels_for(data, idx, &dev)?;
            let values = g.forward(&feeds, mode, &out)?;
            let y = values.get(&task.output).ok_or_else(|| missing(&task.output))?.clone();
            let mut loss = objective.loss(&y, target.as_ref(), labels.as_ref())?;
            if !extra.is_empty() {
                let (more, projections) = extra.loss(&values, &teacher_values, (&y, target.as_ref()))?;
                for var in projections {
                    let z = var.as_tensor().zeros_like()?;
                    slots.push(Slot { var, m: z.clone(), v: z, mask: None, decay: false, mv: None, host: None });
                }
                if let Some(more) = more {
                    loss = (loss + more)?;
                }
            }
            drop(values);
            let value = f64::from(loss.to_scalar::<f32>()?);
            if !value.is_finite() {
                return Err(GraphError::Other(format!(
                    "the training loss became {value} at step {step} (learning rate {lr:.2e}); lower `lr` or use `lr: auto`"
                )));
            }
            losses.push(value);
            let grads = loss.backward()?;
            let rate = lr_at(cfg, lr, step, total);
            let t = (step + 1) as i32;
            for s in &mut slots {
                // Detached: a gradient computed from activations would otherwise keep that
                // step's whole graph alive through the moments (MiniLM ran out of memory).
                let Some(gr) = grads.get(s.var.as_tensor()).map(Tensor::detach) else { continue };
                let gr = match &s.mask {
                    Some(m) => gr.mul(m)?,
                    None => gr,
                };
                let w = &s.var.as_tensor().detach();
                // One fused kernel per weight on a GPU (the same arithmetic as below): on the
                // H200, MiniLM's step went from 40–48 ms to 32–37 ms with the same cosine.
                // `TAMP_FUSED_ADAMW=0` steps op by op (the comparison in scripts/gpu_bench.sh).
                #[cfg(feature = "cuda")]
                if cfg.optimizer == OptimizerKind::Adamw
                    && w.device().is_cuda()
                    && w.dtype() == DType::F32
                    && std::env::var_os("TAMP_FUSED_ADAMW").is_none_or(|v| v != "0")
                {
                    // Allocated once (an eager `get_or_insert` argument would zero a new
                    // tensor on the device every step); a clone shares the storage.
                    let mv = match &s.mv {
                        Some(mv) => mv.clone(),
                        None => s.mv.insert(Tensor::zeros((2, w.elem_count()), DType::F32, w.device())?).clone(),
                    };
                    let decay = if s.decay && cfg.weight_decay > 0.0 { 1.0 - rate * cfg.weight_decay } else { 1.0 };
                    let k = crate::adamw_cuda::Step {
                        b1: b1 as f32,
                        b2: b2 as f32,
                        step_size: (rate / (1.0 - b1.powi(t))) as f32,
                        bc2_sqrt: (1.0 - b2.powi(t)).sqrt() as f32,
                        eps: eps as f32,
                        decay: decay as f32,
                    };
                    crate::adamw_cuda::step(s.var.as_tensor(), &mv, &gr, k)?;
                    continue;
                }
                if cfg.optimizer == OptimizerKind::Adamw
                    && w.device().is_cpu()
                    && w.dtype() == DType::F32
                    && std::env::var_os("TAMP_FUSED_ADAMW").is_none_or(|v| v != "0")
                {
                    if s.host.is_none() {
                        let mask = s.mask.as_ref().map(|m| m.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()).transpose()?;
                        s.host = Some(HostAdamW { m: vec![0.0; w.elem_count()], v: vec![0.0; w.elem_count()], mask });
                    }
                    let decay = if s.decay && cfg.weight_decay > 0.0 { 1.0 - rate * cfg.weight_decay } else { 1.0 };
                    let k = AdamWScalars {
                        b1: b1 as f32,
                        b2: b2 as f32,
                        step_size: (rate / (1.0 - b1.powi(t))) as f32,
                        bc2_sqrt: (1.0 - b2.powi(t)).sqrt() as f32,
                        eps: eps as f32,
                        decay: decay as f32,
                    };
                    let mut wv = w.flatten_all()?.to_vec1::<f32>()?;
                    let g = grads.get(s.var.as_tensor()).map(|g| g.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()).transpose()?.unwrap_or_default();
                    if let Some(h) = s.host.as_mut().filter(|_| g.len() == wv.len()) {
                        host_adamw(h, &mut wv, &g, &k);
                        s.var.set(&Tensor::from_vec(wv, w.shape(), w.device())?)?;
                        continue;
                    }
                }
                let next = match cfg.optimizer {
                    OptimizerKind::Adamw => {
                        s.m = ((&s.m * b1)? + (&gr * (1.0 - b1))?)?.detach();
                        s.v = ((&s.v * b2)? + (gr.sqr()? * (1.0 - b2))?)?.detach();
                        let mh = (&s.m / (1.0 - b1.powi(t)))?;
                        let vh = (&s.v / (1.0 - b2.powi(t)))?;
                        let upd = mh.div(&(vh.sqrt()? + eps)?)?;
                        let decayed = if s.decay && cfg.weight_decay > 0.0 { (w * (1.0 - rate * cfg.weight_decay))? } else { w.clone() };
                        (decayed - (upd * rate)?)?
                    }
                    OptimizerKind::Sgd => {
                        let gr = if s.decay && cfg.weight_decay > 0.0 { (gr + (w * cfg.weight_decay)?)? } else { gr };
                        s.m = ((&s.m * cfg.momentum)? + gr)?.detach();
                        (w - (&s.m * rate)?)?
                    }
                };
                let next = match &s.mask {
                    Some(m) => next.mul(m)?,
                    None => next,
                };
                s.var.set(&next.detach())?;
            }
            step += 1;
            progress(step, total, value);
        }
        if order.len() < cfg.batch_size && step == 0 {
            return Err(GraphError::Other(format!("{} rows are fewer than one batch of {}; lower `batch_size`", order.len(), cfg.batch_size)));
        }
    }
    report.steps = step;
    report.epochs = (step * cfg.batch_size) as f64 / rows.len() as f64;
    let tenth = (losses.len() / 10).max(1);
    report.loss_start = mean(&losses[..tenth.min(losses.len())]);
    report.loss_end = mean(&losses[losses.len().saturating_sub(tenth)..]);
    Ok((g.write_back(student)?, report))
}

/// The teacher's `output` for the rows `idx`: from `cache` when every row is there, else
/// computed (and cached when it is one vector per row).
fn teacher_targets(
    teacher: &mut TrainGraph,
    feeds: &HashMap<String, Tensor>,
    idx: &[usize],
    output: &str,
    cache: &mut HashMap<usize, Vec<f32>>,
    dev: &candle_core::Device,
) -> Result<Tensor> {
    if let Some(first) = idx.first().and_then(|i| cache.get(i)) {
        let width = first.len();
        if idx.iter().all(|i| cache.contains_key(i)) {
            let flat: Vec<f32> = idx.iter().flat_map(|i| cache[i].iter().copied()).collect();
            return Ok(Tensor::from_vec(flat, (idx.len(), width), dev)?);
        }
    }
    let t = teacher.forward(feeds, Mode::Eval, &[output])?.remove(output).ok_or_else(|| missing(output))?.detach();
    if t.rank() == 2 && t.dtype() == DType::F32 {
        for (row, values) in idx.iter().zip(t.to_vec2::<f32>()?) {
            cache.insert(*row, values);
        }
    }
    Ok(t)
}

fn missing(output: &str) -> GraphError {
    GraphError::Other(format!("the graph computed no '{output}'"))
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 }
}

/// The objective's loss on held-back rows (in eval mode).
fn validation_loss(model: &Model, task: &Task<'_>, data: &Dataset, rows: &[usize], cfg: &FineTune) -> Result<f64> {
    let mut g = TrainGraph::new(model, &GraphOptions { fake_quant_4bit: task.fake_quant_4bit, ..GraphOptions::default() })?;
    let mut teacher = task.teacher.map(|t| TrainGraph::new(t, &GraphOptions::default())).transpose()?;
    let objective = Objective::resolve(cfg, data, teacher.is_some())?;
    let lengths = data.sequence_lengths().map_err(|e| GraphError::Other(e.to_string()))?;
    let out = [task.output.as_str()];
    let dev = g.device().clone();
    let mut sum = 0.0;
    let mut n = 0usize;
    for idx in rows.chunks(cfg.batch_size) {
        let feeds = batch_feeds(&g, data, idx, lengths.as_deref())?;
        let target = match teacher.as_mut() {
            Some(t) => {
                let name = task.teacher_output.as_deref().unwrap_or(&task.output);
                t.forward(&feeds, Mode::Eval, &[name])?.remove(name)
            }
            None => None,
        };
        let labels = labels_for(data, idx, &dev)?;
        let y = g.forward(&feeds, Mode::Eval, &out)?.remove(&task.output).ok_or_else(|| missing(&task.output))?;
        sum += f64::from(objective.loss(&y, target.as_ref(), labels.as_ref())?.to_scalar::<f32>()?) * idx.len() as f64;
        n += idx.len();
    }
    let v = sum / n.max(1) as f64;
    Ok(if v.is_finite() { v } else { f64::INFINITY })
}

/// Accuracy (top-1, in %) of a model on labelled rows, computed in candle (used by tests and
/// the training benchmark; the pipeline scores with ONNX Runtime).
pub fn top1(model: &Model, data: &Dataset, rows: &[usize], output: &str) -> Result<f64> {
    let mut g = TrainGraph::new(model, &GraphOptions::default())?;
    let mut correct = 0usize;
    for idx in rows.chunks(256) {
        let feeds = batch_feeds(&g, data, idx, None)?;
        let y = g.forward(&feeds, Mode::Eval, &[output])?;
        let pred = crate::graph::argmax(&y[output])?;
        let labels = data.class_labels(idx).unwrap_or_default();
        correct += pred.iter().zip(labels).filter(|(p, l)| i64::from(**p) == *l).count();
    }
    Ok(100.0 * correct as f64 / rows.len().max(1) as f64)
}

/// Mean cosine similarity (in %) between a model's `output` and the rows' float labels (a
/// sentence encoder against its teacher's embeddings), computed in candle on the current
/// device.
pub fn mean_cosine(model: &Model, data: &Dataset, rows: &[usize], output: &str) -> Result<f64> {
    let mut g = TrainGraph::new(model, &GraphOptions::default())?;
    let lengths = data.sequence_lengths().map_err(|e| GraphError::Other(e.to_string()))?;
    let dev = g.device().clone();
    let mut sum = 0f64;
    for idx in rows.chunks(128) {
        let feeds = batch_feeds(&g, data, idx, lengths.as_deref())?;
        let y = g.forward(&feeds, Mode::Eval, &[output])?.remove(output).ok_or_else(|| missing(output))?.flatten_from(1)?;
        let t = labels_for(data, idx, &dev)?.ok_or_else(|| GraphError::Other("the rows have no float labels".into()))?.flatten_from(1)?;
        let dot = (&y * &t)?.sum(1)?;
        let norms = (y.sqr()?.sum(1)?.sqrt()? * t.sqr()?.sum(1)?.sqrt()?)?;
        sum += f64::from(dot.div(&norms.clamp(1e-12f32, f32::MAX)?)?.sum_all()?.to_scalar::<f32>()?);
    }
    Ok(100.0 * sum / rows.len().max(1) as f64)
}

/// The values of every trainable weight (for tests: which stayed zero).
pub fn weights(model: &Model) -> Result<BTreeMap<String, Vec<f32>>> {
    let g = TrainGraph::new(model, &GraphOptions::default())?;
    g.params().iter().map(|(k, v)| Ok((k.clone(), v.as_tensor().flatten_all()?.to_vec1::<f32>()?))).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is the failure report

    use super::*;

    /// The fused CPU step is the op-by-op step (as candle computes it), masks and decay
    /// included, over three steps.
    #[test]
    fn the_fused_host_adamw_step_is_the_op_by_op_step() {
        let dev = candle_core::Device::Cpu;
        let (b1, b2, eps, rate, wd) = (0.9f64, 0.999f64, 1e-8f64, 1e-2f64, 0.05f64);
        let w0: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) / 4.0).collect();
        let mask: Vec<f32> = (0..12).map(|i| if i % 3 == 0 { 0.0 } else { 1.0 }).collect();
        let mt = Tensor::from_vec(mask.clone(), 12, &dev).unwrap();
        let (mut w, mut m, mut v) =
            (Tensor::from_vec(w0.clone(), 12, &dev).unwrap(), Tensor::zeros(12, DType::F32, &dev).unwrap(), Tensor::zeros(12, DType::F32, &dev).unwrap());
        let mut h = HostAdamW { m: vec![0.0; 12], v: vec![0.0; 12], mask: Some(mask) };
        let mut hw = w0;
        for t in 1..=3 {
            let g: Vec<f32> = (0..12).map(|i| ((i * 7 + t * 3) % 11) as f32 / 5.0 - 1.0).collect();
            let gr = Tensor::from_vec(g.clone(), 12, &dev).unwrap().mul(&mt).unwrap();
            m = ((&m * b1).unwrap() + (&gr * (1.0 - b1)).unwrap()).unwrap();
            v = ((&v * b2).unwrap() + (gr.sqr().unwrap() * (1.0 - b2)).unwrap()).unwrap();
            let upd = (&m / (1.0 - b1.powi(t))).unwrap().div(&((&v / (1.0 - b2.powi(t))).unwrap().sqrt().unwrap() + eps).unwrap()).unwrap();
            w = ((&w * (1.0 - rate * wd)).unwrap() - (upd * rate).unwrap()).unwrap().mul(&mt).unwrap();
            let k = AdamWScalars {
                b1: b1 as f32,
                b2: b2 as f32,
                step_size: (rate / (1.0 - b1.powi(t))) as f32,
                bc2_sqrt: (1.0 - b2.powi(t)).sqrt() as f32,
                eps: eps as f32,
                decay: (1.0 - rate * wd) as f32,
            };
            host_adamw(&mut h, &mut hw, &g, &k);
            for (a, b) in w.to_vec1::<f32>().unwrap().iter().zip(&hw) {
                assert!((a - b).abs() < 1e-6, "step {t}: {a} vs {b}");
            }
        }
        assert!(hw.iter().step_by(3).all(|&x| x == 0.0), "masked weights moved");
    }
}
