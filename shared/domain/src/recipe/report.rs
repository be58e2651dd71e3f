//! The recipe's `report:` section: what the report needs that the run cannot measure (the
//! traffic to serve, the instance and its price), the thresholds behind its risk flags, and
//! how much robustness analysis to run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `report:` in a recipe. Every key has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReportSettings {
    /// Peak requests per second the model must serve (cost projection). Default 100.
    pub qps: f64,
    /// The instance type the cost is projected on (a key of the price table).
    pub instance: String,
    /// Extra or overriding prices: instance type → vCPUs and USD per hour.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub prices: BTreeMap<String, InstancePrice>,
    /// Hours an instance runs per month.
    pub hours_per_month: f64,
    /// Share of an instance's measured capacity planned for (headroom for peaks).
    pub target_utilization: f64,
    /// Largest per-cohort metric drop, in percent of the cohort's baseline, before the
    /// report flags a cohort regression and `quality.alert` is raised (default: the
    /// constraint `max_metric_drop_pct`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cohort_max_drop_pct: Option<f64>,
    /// Calibration representativeness below this score (0–1) is flagged, naming the layers.
    pub min_calibration_score: f64,
    /// Run the robustness analysis (seeded input shifts, outlier inputs).
    pub robustness: bool,
    /// Evaluation rows the robustness and coverage analyses use (a seeded sample).
    pub analysis_rows: usize,
    pub seed: u64,
}

/// One instance type's price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstancePrice {
    pub vcpus: u32,
    pub usd_per_hour: f64,
}

impl Default for ReportSettings {
    fn default() -> Self {
        Self {
            qps: 100.0,
            instance: "c7i.xlarge".into(),
            prices: BTreeMap::new(),
            hours_per_month: 730.0,
            target_utilization: 0.6,
            cohort_max_drop_pct: None,
            min_calibration_score: 0.9,
            robustness: true,
            analysis_rows: 256,
            seed: 0,
        }
    }
}

impl ReportSettings {
    /// Values the schema accepts but a report cannot use: (key, message).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.qps) {
            return Some(("qps", "must be a number > 0 (requests per second)".into()));
        }
        if !positive(self.hours_per_month) || self.hours_per_month > 744.0 {
            return Some(("hours_per_month", "must be in (0, 744]".into()));
        }
        if !(positive(self.target_utilization) && self.target_utilization <= 1.0) {
            return Some(("target_utilization", "must be in (0, 1]".into()));
        }
        if self.cohort_max_drop_pct.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
            return Some(("cohort_max_drop_pct", "must be a number ≥ 0 (percent)".into()));
        }
        if !(0.0..=1.0).contains(&self.min_calibration_score) {
            return Some(("min_calibration_score", "must be in [0, 1]".into()));
        }
        if self.analysis_rows == 0 || self.analysis_rows > 100_000 {
            return Some(("analysis_rows", "must be 1–100000".into()));
        }
        if let Some((k, _)) = self.prices.iter().find(|(_, p)| !(positive(p.usd_per_hour) && p.vcpus > 0)) {
            return Some(("prices", format!("`{k}`: vcpus must be ≥ 1 and usd_per_hour > 0")));
        }
        None
    }
}
