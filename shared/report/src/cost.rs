//! The cost projection (AF-006): instances needed to serve the requested QPS before and
//! after compression, and what they cost per month, from the measured throughput and a
//! stated price table.
//!
//! Capacity of one instance = measured samples/s of one model replica (batch 32 at the
//! recipe's `evaluation.threads` intra-op threads; 1000 / P50 where the batch is fixed)
//! × replicas per instance (vCPUs / threads) × `target_utilization`.
//! Instances = ⌈QPS / capacity⌉ (at least 1); monthly cost = instances × USD/h × hours.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tamp_domain::recipe::{InstancePrice, ReportSettings};

use crate::ReportError;
use crate::model::Row;

/// The price table: where the prices come from, when, and the prices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceTable {
    pub source: String,
    pub date: String,
    pub instances: BTreeMap<String, InstancePrice>,
}

/// The defaults shipped in the repository (`shared/report/prices.yaml`).
pub const DEFAULT_PRICES: &str = include_str!("../prices.yaml");

impl PriceTable {
    /// The repository's default table.
    pub fn defaults() -> Self {
        serde_yaml_ng::from_str(DEFAULT_PRICES).unwrap_or_else(|e| unreachable!("prices.yaml parses (a unit test reads it): {e}"))
    }

    /// The defaults with a recipe's prices added or overriding.
    pub fn with(mut self, settings: &ReportSettings) -> Self {
        if !settings.prices.is_empty() {
            self.source = format!("{}; overridden by the recipe for {}", self.source, settings.prices.keys().cloned().collect::<Vec<_>>().join(", "));
            self.instances.extend(settings.prices.clone());
        }
        self
    }
}

/// One side (before or after) of the projection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Side {
    /// Samples per second of one replica, as measured.
    pub replica_samples_per_s: f64,
    /// How that number was measured.
    pub basis: String,
    pub replicas_per_instance: u32,
    pub instance_capacity_qps: f64,
    pub instances: u64,
    pub monthly_usd: f64,
}

/// Before, after and the saving.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostProjection {
    pub qps: f64,
    pub instance: String,
    pub vcpus: u32,
    pub usd_per_hour: f64,
    pub hours_per_month: f64,
    pub target_utilization: f64,
    pub price_source: String,
    pub price_date: String,
    pub before: Side,
    pub after: Side,
    pub monthly_saving_usd: f64,
    pub saving_pct: f64,
}

fn side(r: &Row, s: &ReportSettings, threads: usize, p: &InstancePrice) -> Result<Side, ReportError> {
    let (rate, basis) = match r.throughput {
        Some(t) if t > 0.0 => (t, format!("batch-32 throughput, {threads} thread(s)")),
        _ if r.p50_ms > 0.0 => (1000.0 / r.p50_ms, format!("1000 / P50 at batch 1, {threads} thread(s)")),
        _ => return Err(ReportError::Missing(format!("a throughput or latency for {}", r.id))),
    };
    let replicas = (p.vcpus / threads.max(1) as u32).max(1);
    let capacity = rate * f64::from(replicas) * s.target_utilization;
    let instances = ((s.qps / capacity).ceil() as u64).max(1);
    Ok(Side {
        replica_samples_per_s: rate,
        basis,
        replicas_per_instance: replicas,
        instance_capacity_qps: capacity,
        instances,
        monthly_usd: instances as f64 * p.usd_per_hour * s.hours_per_month,
    })
}

/// Projects the cost of serving `settings.qps` with the baseline and with the chosen model.
pub fn project(baseline: &Row, chosen: &Row, settings: &ReportSettings, threads: usize, prices: &PriceTable) -> Result<CostProjection, ReportError> {
    let p = prices.instances.get(&settings.instance).ok_or_else(|| {
        ReportError::Missing(format!(
            "a price for instance `{}` (the table has {}; add it under report.prices)",
            settings.instance,
            prices.instances.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    let before = side(baseline, settings, threads, p)?;
    let after = side(chosen, settings, threads, p)?;
    let saving = before.monthly_usd - after.monthly_usd;
    Ok(CostProjection {
        qps: settings.qps,
        instance: settings.instance.clone(),
        vcpus: p.vcpus,
        usd_per_hour: p.usd_per_hour,
        hours_per_month: settings.hours_per_month,
        target_utilization: settings.target_utilization,
        price_source: prices.source.clone(),
        price_date: prices.date.clone(),
        saving_pct: if before.monthly_usd > 0.0 { 100.0 * saving / before.monthly_usd } else { 0.0 },
        monthly_saving_usd: saving,
        before,
        after,
    })
}
