//! The recipe (policy) a user hands Tamp with a model, in YAML. The PRD's form loads
//! unchanged:
//!
//! ```yaml
//! policy:
//!   name: ptq-8bit
//!   stages:
//!     - ptq:
//!         bits: {weights: [8], activations: [8]}
//!         calibration: {method: kl, samples: 2048}
//!         per_channel_weights: true
//!         symmetric: true
//! constraints: {max_metric_drop_pct: 1.0}
//! ```
//!
//! A recipe may also carry the job (`model`, `data`, `targets`, `constraints`, `objective`).
//! Every struct denies unknown keys; errors name the key, the line and the allowed keys.
//! Parsing checks shape, [`Recipe::validate`] checks values and what this build supports.

mod overrides;
mod path;
mod report;
mod stages;
pub use overrides::{CONSTRAINTS, RUNTIMES, apply_job_overrides};
pub use report::{InstancePrice, ReportSettings};

use serde::{Deserialize, Serialize};

use path::{Key, line_of, render};
pub use stages::*;

/// Recipe format version this build reads.
pub const RECIPE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RecipeError {
    /// YAML that does not parse or does not fit the schema (serde's message names the key
    /// path, the allowed keys and the line).
    #[error("recipe: {0}")]
    Schema(String),
    /// A value the schema accepts but Tamp cannot use.
    #[error("recipe{}: `{path}`: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Invalid { path: String, line: Option<usize>, message: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    #[serde(default = "recipe_version")]
    pub version: u32,
    pub policy: Policy,
    /// The model file, relative to the recipe (a job's upload folder) when not given elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default)]
    pub data: DataRefs,
    #[serde(default = "default_targets")]
    pub targets: Vec<Target>,
    #[serde(default)]
    pub constraints: Constraints,
    #[serde(default)]
    pub objective: Objective,
    #[serde(default)]
    pub evaluation: Evaluation,
    /// The report's cost inputs and risk thresholds.
    #[serde(default)]
    pub report: ReportSettings,
}

fn recipe_version() -> u32 {
    RECIPE_VERSION
}

fn default_targets() -> Vec<Target> {
    vec![Target::Onnxruntime]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Each item is a one-key map (`- ptq: {...}`), not a YAML tag.
    #[serde(with = "serde_yaml_ng::with::singleton_map_recursive")]
    pub stages: Vec<Stage>,
}

/// Largest recipe accepted, in bytes (recipes are small; a 20 MB one was once stored in
/// every job record).
pub const MAX_RECIPE_BYTES: usize = 256 * 1024;

/// Most timed runs a recipe may ask for (`evaluation.latency_runs`).
pub const MAX_LATENCY_RUNS: usize = 100_000;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataRefs {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<String>,
    /// Training rows for stages that fine-tune (default `train.npz` beside the recipe, where
    /// uploaded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Onnxruntime,
    Tflite,
    Tensorrt,
    Openvino,
}

impl Target {
    /// Whether Tamp writes a file of its own for this runtime (TFLite today). ONNX Runtime and
    /// OpenVINO run the ONNX artifact itself; TensorRT builds its engine on the device.
    pub fn converted(self) -> bool {
        self == Target::Tflite
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Target::Onnxruntime => "onnxruntime",
            Target::Tflite => "tflite",
            Target::Tensorrt => "tensorrt",
            Target::Openvino => "openvino",
        }
    }
}

/// Limits a chosen candidate must meet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Constraints {
    /// Largest allowed drop of the task metric, in percent of the baseline (relative).
    pub max_metric_drop_pct: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_latency_ms_p50: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_compression_ratio: Option<f64>,
}

impl Default for Constraints {
    fn default() -> Self {
        Self { max_metric_drop_pct: 1.0, max_latency_ms_p50: None, min_compression_ratio: None }
    }
}

/// What "best" means among the candidates that meet the constraints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Lowest P50 latency on the target runtime.
    #[default]
    Latency,
    /// Smallest file.
    Size,
    /// Highest task metric.
    Metric,
}

/// How candidates are scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Evaluation {
    /// Task metric (default: top1 for class labels, cosine for reference outputs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// The model output the metric scores (default: the first). Name it when the first
    /// output is not the scores (class ids, lengths, several heads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Evaluate a seeded sample of this many rows (all rows when unset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
    /// Timed single-row runs for P50/P95.
    pub latency_runs: usize,
    /// ONNX Runtime intra-op threads for timing (1 makes numbers comparable across machines).
    pub threads: usize,
}

impl Default for Evaluation {
    fn default() -> Self {
        Self { metric: None, output: None, samples: None, latency_runs: 100, threads: 1 }
    }
}

impl Recipe {
    /// Parses and validates a recipe.
    pub fn from_yaml(source: &str) -> Result<Self, RecipeError> {
        if source.len() > MAX_RECIPE_BYTES {
            return Err(RecipeError::Schema(format!(
                "the recipe is {} bytes; recipes are at most {MAX_RECIPE_BYTES} bytes (a policy is a few lines of YAML)",
                source.len()
            )));
        }
        let recipe: Recipe = serde_yaml_ng::from_str(source).map_err(|e| RecipeError::Schema(e.to_string()))?;
        recipe.validate(Some(source))?;
        Ok(recipe)
    }

    /// Checks values and support; `source` (the YAML text) lets errors carry line numbers.
    /// The recipe as YAML (what `from_yaml` reads back to an equal recipe).
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).unwrap_or_default()
    }

    pub fn validate(&self, source: Option<&str>) -> Result<(), RecipeError> {
        let invalid = |path: &[Key<'_>], message: String| RecipeError::Invalid { path: render(path), line: source.and_then(|s| line_of(s, path)), message };
        if self.version != RECIPE_VERSION {
            return Err(invalid(&[Key::Field("version")], format!("this Tamp reads recipe version {RECIPE_VERSION}, not {}", self.version)));
        }
        if self.policy.name.trim().is_empty() {
            return Err(invalid(&[Key::Field("policy"), Key::Field("name")], "must not be empty".into()));
        }
        if self.policy.stages.is_empty() {
            return Err(invalid(&[Key::Field("policy"), Key::Field("stages")], "a policy needs at least one stage, e.g. `- ptq: {}`".into()));
        }
        for (index, stage) in self.policy.stages.iter().enumerate() {
            stage.validate(&At { index, kind: stage.kind(), source })?;
        }
        if let Some(t) = self.targets.iter().find(|t| !matches!(t, Target::Onnxruntime | Target::Tflite)) {
            return Err(invalid(&[Key::Field("targets")], format!("target `{}` has no exporter in this build; available: onnxruntime, tflite", t.as_str())));
        }
        if self.targets.is_empty() {
            return Err(invalid(&[Key::Field("targets")], "list at least one target runtime, e.g. [onnxruntime]".into()));
        }
        let c = &self.constraints;
        if !(c.max_metric_drop_pct.is_finite() && c.max_metric_drop_pct >= 0.0) {
            return Err(invalid(
                &[Key::Field("constraints"), Key::Field("max_metric_drop_pct")],
                "must be a number ≥ 0 (percent of the baseline metric)".into(),
            ));
        }
        if c.max_latency_ms_p50.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
            return Err(invalid(&[Key::Field("constraints"), Key::Field("max_latency_ms_p50")], "must be a number > 0 (milliseconds)".into()));
        }
        if c.min_compression_ratio.is_some_and(|v| !(v.is_finite() && v >= 1.0)) {
            return Err(invalid(&[Key::Field("constraints"), Key::Field("min_compression_ratio")], "must be a number ≥ 1".into()));
        }
        if self.evaluation.samples == Some(0) || self.evaluation.latency_runs == 0 {
            return Err(invalid(&[Key::Field("evaluation")], "`samples` and `latency_runs` must be at least 1".into()));
        }
        if self.evaluation.latency_runs > MAX_LATENCY_RUNS {
            return Err(invalid(
                &[Key::Field("evaluation"), Key::Field("latency_runs")],
                format!("{} timed runs asked; at most {MAX_LATENCY_RUNS} (P50/P95 settle within a few hundred)", self.evaluation.latency_runs),
            ));
        }
        if let Some((key, message)) = self.report.problem() {
            return Err(invalid(&[Key::Field("report"), Key::Field(key)], message));
        }
        if !(1..=256).contains(&self.evaluation.threads) {
            return Err(invalid(&[Key::Field("evaluation"), Key::Field("threads")], format!("{} threads asked; use 1–256", self.evaluation.threads)));
        }
        Ok(())
    }

    /// The PTQ stages, in order.
    pub fn ptq_stages(&self) -> impl Iterator<Item = &PtqStage> {
        self.policy.stages.iter().filter_map(|s| match s {
            Stage::Ptq(p) => Some(p),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRD: &str = "policy:
  name: ptq-8bit
  stages:
    - ptq:
        bits: {weights: [8], activations: [8]}
        calibration: {method: kl, samples: 2048}
        per_channel_weights: true
        symmetric: true
";

    /// The PRD's prune-then-PTQ sample (its `search:` stage aside, which arrives with the
    /// search issue): `sensitivity: "magnitude"` and `finetune:` as the PRD writes them.
    #[test]
    fn the_prd_prune_then_ptq_sample_loads_unchanged() {
        let r = "policy:
  name: prune_then_ptq
  stages:
    - pruning:
        type: structured_channel
        target_sparsity: 0.5
        schedule: iterative
        sensitivity: \"magnitude\"
        finetune: {epochs: 3, lr: 3e-5}
    - ptq:
        bits: {weights: [8, 4], activations: [8]}
        calibration: {method: kl, samples: 2048}
";
        let r = Recipe::from_yaml(r).unwrap();
        let Stage::Pruning(p) = &r.policy.stages[0] else { panic!("pruning first") };
        assert!(p.sensitivity && p.schedule == PruningSchedule::Iterative);
        let ft = p.fine_tune.as_ref().unwrap();
        assert_eq!((ft.epochs, ft.lr), (3.0, LearningRate::Value(3e-5)));
    }

    #[test]
    fn the_prd_form_loads_unchanged() {
        let r = Recipe::from_yaml(PRD).unwrap();
        let p = r.ptq_stages().next().unwrap();
        assert_eq!(p.calibration.method, CalibrationMethod::Kl);
        assert_eq!(p.calibration.samples, 2048);
        assert_eq!(r.targets, vec![Target::Onnxruntime]);
        assert_eq!(r.constraints.max_metric_drop_pct, 1.0);
    }

    #[test]
    fn auto_calibration_loads_and_the_search_refuses_it() {
        let r = Recipe::from_yaml(&PRD.replace("method: kl", "method: auto")).unwrap();
        assert_eq!(r.ptq_stages().next().unwrap().calibration.method, CalibrationMethod::Auto);
        let search = "policy:\n  name: s\n  stages:\n    - search: {calibration_methods: [minmax, auto]}\n";
        let e = Recipe::from_yaml(search).unwrap_err().to_string();
        assert!(e.contains("calibration_methods") && e.contains("auto"), "{e}");
    }

    #[test]
    fn unknown_keys_name_the_key_the_line_and_the_allowed_keys() {
        let bad = PRD.replace("per_channel_weights", "per_chanel_weights");
        let e = Recipe::from_yaml(&bad).unwrap_err().to_string();
        assert!(e.contains("per_chanel_weights") && e.contains("line 7") && e.contains("per_channel_weights"), "{e}");
        let e = Recipe::from_yaml(&format!("{PRD}colour: blue\n")).unwrap_err().to_string();
        assert!(e.contains("colour") && e.contains("line 9") && e.contains("constraints"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key_and_the_line() {
        let e = Recipe::from_yaml(&PRD.replace("samples: 2048", "samples: 0")).unwrap_err();
        assert_eq!(e, RecipeError::Invalid { path: "policy.stages[0].ptq.calibration.samples".into(), line: Some(6), message: "must be 1–1000000".into() });
        let e = Recipe::from_yaml(&PRD.replace("method: kl", "method: magic")).unwrap_err().to_string();
        assert!(e.contains("magic") && e.contains("minmax") && e.contains("line 6"), "{e}");
        let e = Recipe::from_yaml(&PRD.replace("weights: [8]", "weights: [3]")).unwrap_err().to_string();
        assert!(e.contains("line 5") && e.contains("3-bit"), "{e}");
        let e = Recipe::from_yaml(&format!("{PRD}constraints:\n  max_metric_drop_pct: -1\n")).unwrap_err().to_string();
        assert!(e.contains("line 10") && e.contains("max_metric_drop_pct"), "{e}");
        let r = "policy:\n  name: p\n  stages:\n    - ptq:\n        symmetric_activations: true\n";
        let e = Recipe::from_yaml(r).unwrap_err().to_string();
        assert!(e.contains("line 5") && e.contains("activation_type: int8"), "{e}");
        let r = "policy:\n  name: p\n  stages:\n    - ptq: {activation_type: int8, symmetric_activations: true}\n";
        assert!(Recipe::from_yaml(r).is_ok());
        let r = "policy:\n  name: p\n  stages:\n    - ptq:\n        mode: static\n        smooth_activations: true\n";
        let e = Recipe::from_yaml(r).unwrap_err().to_string();
        assert!(e.contains("line 6") && e.contains("smooth_activations") && e.contains("mode: dynamic"), "{e}");
        assert!(Recipe::from_yaml("policy:\n  name: p\n  stages:\n    - ptq: {mode: dynamic, smooth_activations: true}\n").is_ok());
        let e = Recipe::from_yaml("policy:\n  name: p\n  stages:\n    - ptq: {activation_type: int4}\n").unwrap_err().to_string();
        assert!(e.contains("int4") && e.contains("uint8"), "{e}");
    }

    #[test]
    fn search_and_distill_stages_load_and_their_mistakes_name_the_line() {
        let r = "policy:\n  name: p\n  stages:\n    - ptq: {}\n    - search: {budget_trials: 10}\n";
        let s = Recipe::from_yaml(r).unwrap();
        assert!(matches!(&s.policy.stages[1], Stage::Search(x) if x.budget_trials == 10 && x.space.len() == 3));
        for (bad, key) in [
            ("{space: [int8]}", "space"),
            ("{objectives: [size, size]}", "objectives"),
            ("{budget_minutes: -1}", "budget_minutes"),
            ("{ptq: {layers: {conv1: int4}}}", "layers"),
            ("{space: [int2]}", "int2"),
        ] {
            let e = Recipe::from_yaml(&format!("policy:\n  name: p\n  stages:\n    - search: {bad}\n")).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("line 4"), "{bad}: {e}");
        }
        let l = Recipe::from_yaml("policy:\n  name: p\n  stages:\n    - ptq: {layers: {conv1: int4, fc: float}}\n").unwrap();
        assert!(matches!(&l.policy.stages[0], Stage::Ptq(p) if p.layers["conv1"] == Precision::Int4));
        // Distillation: the PRD's key and Tamp's, each student form, and their mistakes.
        let r = "policy:\n  name: p\n  stages:\n    - distillation: {teacher: t.onnx, student: {layers: {keep_every: 2}}}\n";
        let d = Recipe::from_yaml(r).unwrap();
        assert!(matches!(&d.policy.stages[0], Stage::Distill(s) if s.student == Student::Layers(LayerChoice { keep_every: Some(2), keep: vec![] })));
        for ok in ["student: input", "student: {width: 0.5}", "student: {bottleneck: 0.5}", "student: {file: s.onnx}", "student: {layers: {keep: [1, 3, 5]}}"] {
            Recipe::from_yaml(&format!("policy:\n  name: p\n  stages:\n    - distill: {{{ok}}}\n")).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, says) in [
            ("student: {width: 1.5}", "outside (0, 1)"),
            ("student: {bottleneck: 0}", "block-internal width"),
            ("student: {layers: {keep_every: 2, keep: [1]}}", "not both"),
            ("student: {layers: {}}", "which layers stay"),
            ("student: {depth: 3}", "unknown variant"),
        ] {
            let e = Recipe::from_yaml(&format!("policy:\n  name: p\n  stages:\n    - distill: {{{bad}}}\n")).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        // Known keys with settings this build cannot honour say so, with the line.
        let r = "policy:\n  name: p\n  stages:\n    - pruning:\n        type: structured_channel\n        schedule: iterative\n        steps: 1\n";
        let e = Recipe::from_yaml(r).unwrap_err().to_string();
        assert!(e.contains("line 7") && e.contains("needs 2–100"), "{e}");
        let r = "policy:\n  name: p\n  stages:\n    - pruning:\n        type: block\n        pattern: 4:2\n";
        let e = Recipe::from_yaml(r).unwrap_err().to_string();
        assert!(e.contains("line 6") && e.contains("N:M"), "{e}");
        let r = "policy:\n  name: p\n  stages:\n    - ptq:\n        mode: dynamic\n        fine_tune: true\n";
        let e = Recipe::from_yaml(r).unwrap_err().to_string();
        assert!(e.contains("line 5") && e.contains("static QDQ"), "{e}");
        let r = "policy:\n  name: p\n  stages:\n    - qat:\n        bits: {weights: [4]}\n        fine_tune: {epochs: 1}\n";
        assert_eq!(Recipe::from_yaml(r).unwrap().policy.stages[0].fine_tune().map(|f| f.epochs), Some(1.0));
        let r = "policy:\n  name: p\n  stages:\n    - pruning: {type: block, pattern: 2:4}\n";
        assert_eq!(Recipe::from_yaml(r).unwrap().policy.stages.len(), 1);
        let r = "policy:\n  name: p\n  stages:\n    - pruning: {type: structured_channel, target_sparsity: 0.5, fine_tune: true}\n";
        assert_eq!(Recipe::from_yaml(r).unwrap().policy.stages[0].fine_tune(), Some(&FineTune::default()));
        let r = "policy:\n  name: p\n  stages:\n    - pruning:\n        fine_tune: {epochs: 2, lr: -1}\n";
        let e = Recipe::from_yaml(r).unwrap_err().to_string();
        assert!(e.contains("line 5") && e.contains("learning rate"), "{e}");
        let r = "policy:\n  name: p\n  stages:\n    - pruning:\n        fine_tune: {epochs: 2, optimiser: sgd}\n";
        assert!(Recipe::from_yaml(r).unwrap_err().to_string().contains("optimizer"), "unknown keys list the allowed ones");
        let r = "policy:\n  name: p\n  stages:\n    - qat: {}\n";
        assert!(Recipe::from_yaml(r).unwrap().policy.stages[0].fine_tune().is_some(), "a qat stage trains by default");
        let r = "policy:\n  name: p\n  stages:\n    - pruning: {fine_tune: {lr: auto}}\n";
        assert_eq!(Recipe::from_yaml(r).unwrap().policy.stages[0].fine_tune().unwrap().lr, LearningRate::Auto);
        let r = "policy:\n  name: p\n  stages:\n    - pruning:\n        type: attention_head\n        criterion: l2\n";
        let e = Recipe::from_yaml(r).unwrap_err().to_string();
        assert!(e.contains("line 6") && e.contains("structured_channel"), "{e}");
        let r = "policy:\n  name: p\n  stages:\n    - pruning: {criterion: bn_scale}\n";
        assert_eq!(
            Recipe::from_yaml(r).unwrap().policy.stages[0],
            Stage::Pruning(PruningStage { criterion: ImportanceCriterion::BnScale, ..PruningStage::default() })
        );
        let e = Recipe::from_yaml("policy:\n  name: p\n  stages:\n    - pruning: {criterion: taylor}\n").unwrap_err().to_string();
        assert!(e.contains("taylor") && e.contains("bn_scale"), "{e}");
        let r = "policy:\n  name: p\n  stages:\n    - pruning: {sparsity: 0.5}\n";
        assert!(Recipe::from_yaml(r).unwrap_err().to_string().contains("target_sparsity"), "unknown keys list the allowed ones");
        let e = Recipe::from_yaml("policy:\n  name: p\n  stages:\n    - squash: {}\n").unwrap_err().to_string();
        assert!(e.contains("squash") && e.contains("ptq"), "{e}");
    }

    #[test]
    fn empty_and_malformed_yaml_are_errors() {
        assert!(Recipe::from_yaml("").is_err());
        assert!(Recipe::from_yaml("policy: [").unwrap_err().to_string().contains("line"));
        assert!(Recipe::from_yaml("policy:\n  name: p\n  stages: []\n").unwrap_err().to_string().contains("at least one stage"));
    }

    #[test]
    fn round_trips_through_yaml() {
        let r = Recipe::from_yaml(PRD).unwrap();
        let text = serde_yaml_ng::to_string(&r).unwrap();
        assert_eq!(Recipe::from_yaml(&text).unwrap(), r);
    }
}

#[cfg(test)]
mod examples {
    use super::*;

    /// Every recipe shipped under configs/ loads and validates.
    #[test]
    fn shipped_examples_load() {
        let manifest = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
        let dir = std::path::Path::new(&manifest).join("../../configs/policy_examples");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            Recipe::from_yaml(&text).unwrap_or_else(|e| panic!("{}: {e}", entry.path().display()));
            n += 1;
        }
        assert!(n >= 3, "expected the example recipes in {}", dir.display());
    }
}
