//! What a function reads from its environment (the Terraform module sets every variable;
//! `infra/` has a test that checks the two agree). A missing variable fails the cold start
//! with its name.

use std::sync::Arc;

use tamp_adapters_aws::{AwsBatchRunner, DynamoStore, EventBridgeBus, S3Store, SqsQueue, aws_config, env_var};
use tamp_control::Services;
use tamp_control::notify::{Format, Webhooks};
use tamp_domain::job::RetryPolicy;
use tamp_ports::SystemClock;

use crate::Error;

/// The environment variables the functions read (the infra wiring test reads this list).
pub const ENV_VARS: &[&str] = &[
    "TAMP_BUCKET",
    "TAMP_TABLE",
    "TAMP_QUEUE_URL",
    "TAMP_DLQ_URL",
    "TAMP_SOURCE_DLQ_URL",
    "TAMP_EVENT_BUS",
    "TAMP_BATCH_QUEUE",
    "TAMP_BATCH_JOB_DEFINITION",
    "TAMP_BATCH_GPU_QUEUE",
    "TAMP_BATCH_GPU_JOB_DEFINITION",
    "TAMP_MAX_ATTEMPTS",
    "TAMP_RETRY_DELAY_S",
    "TAMP_KMS_KEY_ID",
    "TAMP_PUBLIC_URL",
    "TAMP_JWT_ISSUER",
    "TAMP_JWT_AUDIENCE",
    "TAMP_JWKS_URL",
    "TAMP_RATE_LIMIT",
    "TAMP_SLACK_WEBHOOK_URL",
    "TAMP_TEAMS_WEBHOOK_URL",
    "TAMP_WEBHOOK_URLS",
    "TAMP_WEBHOOK_SECRET",
    "TAMP_SECRETS_PARAMETER",
    "TAMP_EXPORT_IN_PLACE_MAX_BYTES",
    "TAMP_SCRATCH",
    "ORT_DYLIB_PATH",
    "LITERT_LIB_PATH",
];

#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub bucket: String,
    pub table: String,
    /// The orchestrator's queue (Tamp messages; Batch state changes arrive there too).
    pub queue_url: String,
    pub dlq_url: String,
    /// The DLQ of the queue this function consumes (ingest's or the orchestrator's), where
    /// messages that can never succeed are parked with their reason.
    pub source_dlq_url: Option<String>,
    pub event_bus: String,
    pub batch_queue: String,
    pub batch_job_definition: String,
    /// GPU stages' queue and job definition (training); without them they run on the CPU
    /// queue.
    pub batch_gpu_queue: Option<String>,
    pub batch_gpu_job_definition: Option<String>,
    pub retry: RetryPolicy,
    pub kms_key_id: Option<String>,
    /// The API's public URL, for links in chat messages.
    pub public_url: String,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub jwks_url: Option<String>,
    pub rate_limit: u32,
    pub slack_webhook_url: Option<String>,
    pub teams_webhook_url: Option<String>,
    pub webhook_urls: Vec<String>,
    pub webhook_secret: String,
    /// SSM SecureString parameter holding the webhook targets and HMAC key (on AWS).
    pub secrets_parameter: Option<String>,
    /// The export function converts artifacts up to this size itself and hands larger ones
    /// to a Batch CPU stage (default 256 MiB: the artifact, its conversion, ONNX Runtime and
    /// LiteRT sessions fit the function's 3 GB with room; see docs/architecture.md).
    pub export_in_place_max_bytes: u64,
    /// Scratch space for conversions (`TAMP_SCRATCH`, default the temp dir: Lambda's /tmp).
    pub scratch: std::path::PathBuf,
}

fn opt(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn num<T: std::str::FromStr>(name: &str, default: T) -> Result<T, Error> {
    match opt(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| Error::Config(format!("{name}={v} is not a number"))),
    }
}

impl Settings {
    /// Reads the environment. Every function needs the data plane (bucket, table, queue, bus,
    /// Batch queue and job definition); the rest is optional.
    pub fn from_env() -> Result<Self, Error> {
        let req = |n: &str| env_var(n).map_err(Error::Config);
        Ok(Self {
            bucket: req("TAMP_BUCKET")?,
            table: req("TAMP_TABLE")?,
            queue_url: req("TAMP_QUEUE_URL")?,
            dlq_url: opt("TAMP_DLQ_URL").unwrap_or_default(),
            source_dlq_url: opt("TAMP_SOURCE_DLQ_URL"),
            event_bus: req("TAMP_EVENT_BUS")?,
            batch_queue: req("TAMP_BATCH_QUEUE")?,
            batch_job_definition: req("TAMP_BATCH_JOB_DEFINITION")?,
            batch_gpu_queue: opt("TAMP_BATCH_GPU_QUEUE"),
            batch_gpu_job_definition: opt("TAMP_BATCH_GPU_JOB_DEFINITION"),
            retry: RetryPolicy { max_attempts: num("TAMP_MAX_ATTEMPTS", 3u32)?.max(1), base_delay_s: num("TAMP_RETRY_DELAY_S", 30)?, max_delay_s: 900 },
            kms_key_id: opt("TAMP_KMS_KEY_ID"),
            public_url: opt("TAMP_PUBLIC_URL").unwrap_or_default(),
            jwt_issuer: opt("TAMP_JWT_ISSUER"),
            jwt_audience: opt("TAMP_JWT_AUDIENCE"),
            jwks_url: opt("TAMP_JWKS_URL"),
            rate_limit: num("TAMP_RATE_LIMIT", 1000)?,
            slack_webhook_url: opt("TAMP_SLACK_WEBHOOK_URL"),
            teams_webhook_url: opt("TAMP_TEAMS_WEBHOOK_URL"),
            webhook_urls: opt("TAMP_WEBHOOK_URLS").map(|v| v.split(',').map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).collect()).unwrap_or_default(),
            webhook_secret: opt("TAMP_WEBHOOK_SECRET").unwrap_or_default(),
            secrets_parameter: opt("TAMP_SECRETS_PARAMETER"),
            export_in_place_max_bytes: num("TAMP_EXPORT_IN_PLACE_MAX_BYTES", 256u64 << 20)?,
            scratch: opt("TAMP_SCRATCH").map_or_else(std::env::temp_dir, std::path::PathBuf::from),
        })
    }

    /// Fills the webhook targets and HMAC key from the SecureString parameter named by
    /// `TAMP_SECRETS_PARAMETER` (`{"slack_webhook_url", "teams_webhook_url", "webhook_urls",
    /// "webhook_secret"}`, each optional). Without it, the plain variables stand (local runs).
    pub async fn with_secrets(mut self) -> Result<Self, Error> {
        let Some(name) = self.secrets_parameter.clone() else { return Ok(self) };
        let v = tamp_adapters_aws::secrets::load_json(&aws_config().await, &name).await.map_err(|e| Error::Config(e.to_string()))?;
        let text = |k: &str| v[k].as_str().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
        self.slack_webhook_url = text("slack_webhook_url");
        self.teams_webhook_url = text("teams_webhook_url");
        self.webhook_urls = v["webhook_urls"].as_array().map(|a| a.iter().filter_map(|u| u.as_str().map(str::to_owned)).collect()).unwrap_or_default();
        self.webhook_secret = text("webhook_secret").unwrap_or_default();
        Ok(self)
    }

    /// The ports on AWS. Clients are built once per cold start (no network until used).
    /// Batch on the CPU queue, and on the GPU queue for GPU stages where it is configured.
    pub fn batch_runner(&self, config: &tamp_adapters_aws::SdkConfig) -> AwsBatchRunner {
        let runner = AwsBatchRunner::new(config, &self.batch_queue, &self.batch_job_definition);
        match (&self.batch_gpu_queue, &self.batch_gpu_job_definition) {
            (Some(q), Some(d)) => runner.with_gpu(q, d),
            _ => runner,
        }
    }

    pub async fn services(&self) -> Services {
        let config = aws_config().await;
        Services {
            store: Arc::new(S3Store::new(&config, &self.bucket).with_kms_key(self.kms_key_id.clone())),
            meta: Arc::new(DynamoStore::new(&config, &self.table)),
            queue: Arc::new(SqsQueue::new(&config, &self.queue_url, &self.dlq_url)),
            runner: Arc::new(self.batch_runner(&config)),
            bus: Arc::new(EventBridgeBus::new(&config, &self.event_bus)),
            clock: Arc::new(SystemClock),
            retry: self.retry,
            guards: Default::default(),
        }
    }

    /// Where poison messages of this function's source queue go (`TAMP_SOURCE_DLQ_URL`).
    pub async fn parking(&self) -> Option<SqsQueue> {
        let url = self.source_dlq_url.clone()?;
        Some(SqsQueue::new(&aws_config().await, url.clone(), url))
    }

    /// The notify function's targets. Generic webhooks need a signing secret.
    pub fn webhooks(&self) -> Result<Webhooks, Error> {
        if !self.webhook_urls.is_empty() && self.webhook_secret.len() < 16 {
            return Err(Error::Config("TAMP_WEBHOOK_URLS needs TAMP_WEBHOOK_SECRET (at least 16 characters) so receivers can verify events".into()));
        }
        let mut w = Webhooks::new(self.webhook_urls.clone(), self.webhook_secret.clone().into_bytes());
        if let Some(u) = &self.slack_webhook_url {
            w = w.with_target(u.clone(), Format::Slack);
        }
        if let Some(u) = &self.teams_webhook_url {
            w = w.with_target(u.clone(), Format::Teams);
        }
        w.base_url = self.public_url.trim_end_matches('/').to_owned();
        Ok(w)
    }
}
