//! What every technique works with: the job, the input model, the metric and how candidates
//! are evaluated, the measured baseline, and the observer; plus the two things every
//! technique does with a candidate model (save and judge it, compare its outputs).

use std::path::Path;

use tamp_domain::recipe::FineTune;
use tamp_domain::results::{Agreement, Candidate, Measured, TrainReport};
use tamp_engine::EngineError;
use tamp_engine::eval::{self, EvalConfig};
use tamp_engine::passes::cluster;
use tamp_engine::perf::{self, SpeedComparison};
use tamp_onnx::{Model, SaveOptions};
use tamp_train::finetune::Task;

use crate::judge::{self, check_baseline};
use crate::{Job, Observer, Result, io_err};

/// Rounds of interleaved timing per candidate (15 rounds: the median's interval covers 96 %).
const ROUNDS: usize = 15;

/// The state a run shares with its stages.
pub struct Context<'a, 'o> {
    pub job: &'a Job<'a>,
    /// The input model, loaded once.
    pub model: &'a Model,
    pub obs: &'o mut dyn Observer,
    pub metric: String,
    pub eval_cfg: EvalConfig,
    baseline: Measured,
    /// Why the running stage made no candidate (set by [`Context::not_applied`]).
    pub(crate) nothing_because: Option<String>,
    /// Candidates a stage skipped, with the reason (they go into the outcome's `not_applied`).
    pub skipped: Vec<String>,
    /// The running stage's `fine_tune` block: [`Context::judge`] trains each candidate first.
    pub fine_tune: Option<FineTune>,
}

/// How [`Context::train_with`] departs from plain fine-tuning.
#[derive(Debug, Default)]
pub struct TrainSpec<'m> {
    /// 4-bit QAT on float latent weights: the weights the 4-bit passes will quantize read
    /// through their quantizer.
    pub four_bit: Option<tamp_train::graph::FourBit>,
    /// Another teacher than the input model.
    pub teacher: Option<&'m Model>,
    /// The student's output trained (default: the one the evaluation scores).
    pub output: Option<String>,
    /// The teacher's output it learns from (default: the same name).
    pub teacher_output: Option<String>,
    /// Only these weights train.
    pub train_only: Option<std::collections::HashSet<String>>,
}

impl<'a, 'o> Context<'a, 'o> {
    /// Measures the baseline (refusing one nothing can be judged against) and returns the
    /// context the stages run in.
    pub fn new(job: &'a Job<'a>, model: &'a Model, obs: &'o mut dyn Observer, metric: String, eval_cfg: EvalConfig) -> Result<Self> {
        let placeholder = Measured {
            metric: metric.clone(),
            value: 0.0,
            latency_ms_p50: 0.0,
            latency_ms_p95: 0.0,
            throughput_b32: None,
            size_bytes: 0,
            sha256: String::new(),
            eval_rows: 0,
            macs_per_sample: None,
        };
        let mut cx = Self { job, model, obs, metric, eval_cfg, baseline: placeholder, nothing_because: None, skipped: Vec::new(), fine_tune: None };
        cx.baseline = cx.measure(job.model_path, model, "baseline")?;
        Ok(cx)
    }

    /// Ends the current step saying why the stage found nothing to change, and returns no
    /// candidates: the runner fails the job with that reason (a stage that does nothing must
    /// not let the job succeed as if it had).
    pub fn not_applied(&mut self, reason: &str) -> Result<Vec<Candidate>> {
        self.obs.end(reason);
        self.nothing_because = Some(reason.to_owned());
        Ok(Vec::new())
    }

    /// The input model as measured on the evaluation set.
    pub fn baseline(&self) -> &Measured {
        &self.baseline
    }

    /// Evaluates a saved model: the task metric, latency, throughput, size and MACs.
    pub fn measure(&mut self, path: &Path, model: &Model, label: &str) -> Result<Measured> {
        let rows = self.eval_cfg.samples.unwrap_or(self.job.evaluation.rows).min(self.job.evaluation.rows) as u64;
        self.obs.begin(&format!("evaluate {label}"), rows);
        let obs = &mut *self.obs;
        let mut outputs = Vec::new();
        let keep = (label == "baseline").then_some(&mut outputs);
        let r = eval::evaluate(path, self.job.evaluation, &self.eval_cfg, keep, &mut |done, _| obs.advance(done as u64))?;
        if label == "baseline" {
            check_baseline(&self.metric, r.metrics.get(&self.metric).copied(), &outputs, self.job.evaluation)?;
        }
        let value =
            r.metrics.get(&self.metric).copied().ok_or_else(|| tamp_engine::EngineError::Config(format!("metric '{}' produced no value", self.metric)))?;
        let macs = tamp_engine::flops::count(model, self.job.evaluation, 0)?;
        let m = Measured {
            metric: self.metric.clone(),
            value,
            latency_ms_p50: r.latency.p50_ms,
            latency_ms_p95: r.latency.p95_ms,
            throughput_b32: r.throughput.iter().find(|t| t.batch_size == 32 && t.skipped.is_none()).and_then(|t| t.samples_per_s),
            size_bytes: r.model.size_bytes,
            sha256: r.model.sha256,
            eval_rows: r.dataset.evaluated_rows,
            macs_per_sample: Some(macs.per_sample),
        };
        self.obs.end(&format!("{label}: {} {:.4}, P50 {:.3} ms", self.metric, m.value, m.latency_ms_p50));
        Ok(m)
    }

    /// Saves, measures and judges one candidate model against the baseline and the
    /// constraints; the technique fills in its mode and details.
    /// With the stage's `fine_tune` set, the model is trained first (its metric before
    /// training is recorded beside the result).
    pub fn judge(&mut self, model: &Model, id: String, stage: usize, technique: &str) -> Result<Candidate> {
        let (tuned, training) = match self.fine_tune.clone() {
            Some(ft) => {
                let (m, mut report) = self.train(model, &ft, &id)?;
                // Scored after training: an ONNX Runtime evaluation right before training made
                // the training process's memory grow by ~1.7 GB a step on MiniLM (not found
                // why; after training it does not matter).
                report.metric_before = Some(self.quick_score(model)?);
                (Some(m), Some(report))
            }
            None => (None, None),
        };
        let mut c = self.judge_as_is(tuned.as_ref().unwrap_or(model), id, stage, technique)?;
        c.training = training;
        Ok(c)
    }

    /// The task metric of `model` on the rows candidates are measured on.
    pub fn quick_score(&self, model: &Model) -> Result<f64> {
        let data = self.job.evaluation;
        let rows: Vec<usize> = match self.eval_cfg.samples {
            Some(n) => data.sample(n.min(data.rows), self.eval_cfg.seed),
            None => (0..data.rows).collect(),
        };
        // ORT's idle threads must not spin: training runs right after on the same cores.
        let session = tamp_engine::runtime::SessionConfig { intra_spinning: false, ..self.eval_cfg.session.clone() };
        eval::score(model, data, &rows, &self.metric, self.eval_cfg.output.as_deref(), 64, &session)
    }

    /// Fine-tunes `model` on the job's training rows, distilling from the input model.
    pub fn train(&mut self, model: &Model, ft: &FineTune, label: &str) -> Result<(Model, TrainReport)> {
        self.train_with(model, ft, label, TrainSpec::default())
    }

    /// [`Context::train`] with the variations in `spec`.
    pub fn train_with(&mut self, model: &Model, ft: &FineTune, label: &str, spec: TrainSpec<'_>) -> Result<(Model, TrainReport)> {
        let Some(data) = self.job.train else {
            return Err(EngineError::Config("fine-tuning needs training rows: pass `--train train.npz`".into()));
        };
        let session = tamp_engine::Session::from_model(model, &self.eval_cfg.session)?;
        let output = eval::metric_output(&session.outputs, self.eval_cfg.output.as_deref())?;
        drop(session);
        let output = spec.output.unwrap_or(output);
        let task = Task {
            output,
            teacher: Some(spec.teacher.unwrap_or(self.model)),
            fake_quant_4bit: spec.four_bit,
            teacher_output: spec.teacher_output,
            train_only: spec.train_only,
        };
        let rss_reset = perf::reset_peak_rss();
        let obs = &mut *self.obs;
        let mut last = 0;
        let (m, mut report) = tamp_train::finetune::fine_tune(model, &task, data, ft, &mut |step, total, _loss| {
            if last == 0 {
                obs.begin(&format!("fine-tune {label}"), total as u64);
            }
            last = step;
            obs.advance(step as u64);
        })
        .map_err(|e| EngineError::Config(format!("fine-tuning {label}: {e}")))?;
        // The peak covers the training run where the kernel allows a reset, else the process.
        report.peak_rss_mib = (rss_reset || perf::peak_rss_mb() > 0.0).then(perf::peak_rss_mb);
        self.obs.end(&format!(
            "fine-tuned {label}: {} steps ({:.2} epochs of {} rows), loss {:.4} → {:.4}, {:.0} s",
            report.steps, report.epochs, report.rows, report.loss_start, report.loss_end, report.wall_seconds
        ));
        Ok((m, report))
    }

    /// [`Context::judge`] without training.
    pub fn judge_as_is(&mut self, model: &Model, id: String, stage: usize, technique: &str) -> Result<Candidate> {
        let file = format!("candidates/{id}.onnx");
        let path = self.job.out_dir.join(&file);
        model.save(&path, &SaveOptions::default())?;
        let measured = self.measure(&path, model, &id)?;
        let coded_size_bytes = cluster::deflated_size(&std::fs::read(&path).map_err(io_err(&path))?);
        let speed = self.compare_speed(&measured, &path)?;
        Ok(judge::judge(&self.baseline, measured, &self.job.recipe.constraints, judge::Made { id, stage, technique, file, coded_size_bytes }, Some(&speed)))
    }

    /// The candidate's speed against the baseline from interleaved timings
    /// ([`perf::compare`]), cached by both files' hashes, the CPU, the thread count and the
    /// runtime: the same artifact on the same kind of machine always gets the same verdict.
    fn compare_speed(&mut self, candidate: &Measured, path: &Path) -> Result<SpeedComparison> {
        let threads = self.eval_cfg.session.intra_threads;
        let per_round = (self.eval_cfg.latency.runs / 10).max(5);
        let cpu = eval::cpu_info();
        let key = format!(
            "{}|{}|{}|{:?}|{threads}|{}|{ROUNDS}x{per_round}",
            self.baseline.sha256,
            candidate.sha256,
            cpu.model,
            cpu.features,
            tamp_engine::runtime::ORT_VERSION
        );
        if let Some(hit) = tamp_engine::cache::load::<SpeedComparison>("speed", &key) {
            return Ok(hit);
        }
        self.obs.begin("interleaved timing against the baseline", 0);
        let cfg = &self.eval_cfg.session;
        let mut base = tamp_engine::Session::from_file(self.job.model_path, cfg)?;
        let mut cand = tamp_engine::Session::from_file(path, cfg)?;
        let s = perf::compare(&mut base, &mut cand, self.job.evaluation, ROUNDS, per_round)?;
        self.obs.end(&format!("speed-up {:.2}× ({:.0} % interval {:.2}–{:.2}×)", s.speedup, s.confidence * 100.0, s.low, s.high));
        tamp_engine::cache::store("speed", &key, &s);
        Ok(s)
    }

    /// How closely `candidate`'s scored output follows `reference`'s on the evaluation rows the
    /// metric uses: mean cosine similarity per row and, for class scores, top-1 agreement.
    pub fn agreement(&self, reference: &Model, candidate: &Model) -> Result<Agreement> {
        let data = self.job.evaluation;
        let rows: Vec<usize> = match self.eval_cfg.samples {
            Some(n) => data.sample(n.min(data.rows), self.eval_cfg.seed),
            None => (0..data.rows).collect(),
        };
        let a = eval::output_rows(reference, data, &rows, self.eval_cfg.output.as_deref(), &self.eval_cfg.session)?;
        let b = eval::output_rows(candidate, data, &rows, self.eval_cfg.output.as_deref(), &self.eval_cfg.session)?;
        let (mean_cosine, top1_agreement) = eval::agreement(&a, &b);
        Ok(Agreement { rows: rows.len(), mean_cosine, top1_agreement })
    }

    /// The deflated size of the input model file (what coded-size ratios compare against).
    pub fn baseline_coded_size(&self) -> Result<u64> {
        let bytes = std::fs::read(self.job.model_path).map_err(io_err(self.job.model_path))?;
        Ok(cluster::deflated_size(&bytes))
    }
}
