//! Prometheus metrics of the local stack (`GET /metrics` on `tamp serve`, admin only):
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `tamp_jobs` | gauge, read from the store at each scrape | `state` |
//! | `tamp_queue_messages`, `tamp_queue_dead_letters` | gauge | |
//! | `tamp_queue_oldest_message_age_seconds` | gauge | |
//! | `tamp_api_request_duration_seconds` | histogram | `method`, `route` (the matched pattern, never the ids), `status` |
//! | `tamp_stage_duration_seconds` | histogram, started → finished | `kind`, `outcome` |
//! | `tamp_worker_failures_total` | counter | `kind` |
//! | `tamp_events_total` | counter | `kind` |
//!
//! The `prometheus` crate (TiKV's) keeps the registry and writes the text format; stage
//! timings come from the bus's own stage events, so the same numbers hold whatever runs the
//! stages. On AWS the functions' numbers go to CloudWatch instead (embedded metric format).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use prometheus::{Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use tamp_domain::job::JobState;
use tamp_ports::{MetadataStore, PortError, Subscriber, TampEvent};

/// What the queue holds now: messages, dead letters, age of the oldest message in seconds.
pub type QueueProbe = Arc<dyn Fn() -> (usize, usize, f64) + Send + Sync>;

pub struct Metrics {
    registry: Registry,
    jobs: IntGaugeVec,
    queue_messages: IntGauge,
    queue_dead: IntGauge,
    queue_oldest: Gauge,
    api: HistogramVec,
    stages: HistogramVec,
    failures: IntCounterVec,
    events: IntCounterVec,
    /// (job, stage, attempt) → when its `stage.started` arrived.
    started: Mutex<HashMap<(String, u64, u64), u64>>,
    queue: Option<QueueProbe>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn registered<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: prometheus::Result<T>) -> prometheus::Result<T> {
    let c = c?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    pub fn new(queue: Option<QueueProbe>) -> prometheus::Result<Self> {
        let r = Registry::new();
        let secs = vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
        let stage_secs = vec![1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4.0 * 3600.0];
        Ok(Self {
            jobs: registered(&r, IntGaugeVec::new(Opts::new("tamp_jobs", "Jobs by state"), &["state"]))?,
            queue_messages: registered(&r, IntGauge::new("tamp_queue_messages", "Messages on the orchestrator queue"))?,
            queue_dead: registered(&r, IntGauge::new("tamp_queue_dead_letters", "Messages moved to the dead-letter list"))?,
            queue_oldest: registered(&r, Gauge::new("tamp_queue_oldest_message_age_seconds", "Age of the oldest message on the queue"))?,
            api: registered(
                &r,
                HistogramVec::new(HistogramOpts::new("tamp_api_request_duration_seconds", "API request latency").buckets(secs), &["method", "route", "status"]),
            )?,
            stages: registered(
                &r,
                HistogramVec::new(
                    HistogramOpts::new("tamp_stage_duration_seconds", "Stage attempts, started to finished").buckets(stage_secs),
                    &["kind", "outcome"],
                ),
            )?,
            failures: registered(&r, IntCounterVec::new(Opts::new("tamp_worker_failures_total", "Stage attempts that failed"), &["kind"]))?,
            events: registered(&r, IntCounterVec::new(Opts::new("tamp_events_total", "Events published on the bus"), &["kind"]))?,
            registry: r,
            started: Mutex::default(),
            queue,
        })
    }

    /// Records one API request.
    pub fn observe_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.api.with_label_values(&[method, route, &status.to_string()]).observe(seconds);
    }

    /// The text exposition, with job counts read from `meta` now.
    pub async fn render(&self, meta: &dyn MetadataStore) -> Result<String, PortError> {
        for state in [JobState::Queued, JobState::Planning, JobState::Running, JobState::Succeeded, JobState::Failed, JobState::Cancelled] {
            let n = meta.list_jobs(Some(state), usize::MAX >> 1).await?.len();
            self.jobs.with_label_values(&[state.as_str()]).set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        if let Some(probe) = &self.queue {
            let (messages, dead, oldest) = probe();
            self.queue_messages.set(i64::try_from(messages).unwrap_or(i64::MAX));
            self.queue_dead.set(i64::try_from(dead).unwrap_or(i64::MAX));
            self.queue_oldest.set(oldest);
        }
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).map_err(|e| PortError::Invalid(e.to_string()))?;
        String::from_utf8(out).map_err(|e| PortError::Invalid(e.to_string()))
    }
}

#[async_trait]
impl Subscriber for Metrics {
    fn name(&self) -> &str {
        "metrics"
    }

    async fn on_event(&self, e: &TampEvent) -> Result<(), PortError> {
        let kind = e.detail_type.trim_start_matches("tamp.");
        self.events.with_label_values(&[kind]).inc();
        let d = &e.detail;
        let (Some(stage), Some(attempt)) = (d["stage"].as_u64(), d["attempt"].as_u64()) else { return Ok(()) };
        let key = (e.job.clone(), stage, attempt);
        let stage_kind = d["kind"].as_str().unwrap_or("unknown");
        let mut started = self.started.lock().map_err(|_| PortError::Unavailable("metrics lock poisoned".into()))?;
        match kind {
            "stage.started" => {
                started.insert(key, e.time);
            }
            "stage.succeeded" | "stage.failed" => {
                let outcome = if kind == "stage.succeeded" { "succeeded" } else { "failed" };
                if let Some(t0) = started.remove(&key) {
                    self.stages.with_label_values(&[stage_kind, outcome]).observe(e.time.saturating_sub(t0) as f64);
                }
                if outcome == "failed" {
                    self.failures.with_label_values(&[stage_kind]).inc();
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn event(kind: &str, time: u64, detail: serde_json::Value) -> TampEvent {
        TampEvent {
            id: format!("evt_{kind}"),
            detail_type: format!("tamp.{kind}"),
            time,
            project: "p".into(),
            model: "m".into(),
            version: "v".into(),
            job: "job_1".into(),
            state: "running".into(),
            reason: None,
            link: String::new(),
            detail,
        }
    }

    #[tokio::test]
    async fn stage_events_become_durations_and_failures() {
        let m = Metrics::new(None).unwrap();
        let d = serde_json::json!({ "stage": 0, "attempt": 1, "kind": "ptq" });
        m.on_event(&event("stage.started", 100, d.clone())).await.unwrap();
        m.on_event(&event("stage.failed", 130, d)).await.unwrap();
        let families = m.registry.gather();
        let find = |name: &str| families.iter().find(|f| f.name() == name).unwrap().clone();
        let h = find("tamp_stage_duration_seconds");
        assert_eq!(h.get_metric()[0].get_histogram().get_sample_sum(), 30.0);
        assert_eq!(find("tamp_worker_failures_total").get_metric()[0].get_counter().get_value(), 1.0);
        assert_eq!(find("tamp_events_total").get_metric().len(), 2);
    }
}
