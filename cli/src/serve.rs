//! `tamp serve` (the local stack) and `tamp worker` (one stage of one job: the entry point
//! the Batch container runs too).

use std::path::PathBuf;

use crate::local::{self, ServeConfig};
use anyhow::{Context, Result, anyhow};
use tamp_adapters_local::SqliteStore;
use tamp_control::auth::{AuthConfig, JwtConfig, JwtKeys};
use tamp_domain::job::RetryPolicy;
use tamp_worker::Failure;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Where jobs, uploads, artifacts and logs live.
    #[arg(long, default_value = ".tamp")]
    data_dir: PathBuf,
    /// API port on 127.0.0.1 (0 picks a free one; the URL is printed and written to <data-dir>/serve.json).
    #[arg(long, default_value_t = 8470)]
    port: u16,
    /// Stage workers running at once.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// GPUs for training stages, one stage per GPU (default: the GPUs `nvidia-smi -L`
    /// lists; 0 trains on the CPU, with a warning in the stage's record).
    #[arg(long)]
    gpus: Option<usize>,
    /// POST job events here, signed with --webhook-secret (repeatable).
    #[arg(long = "webhook")]
    webhooks: Vec<String>,
    /// HMAC key for webhook signatures (X-Tamp-Signature: sha256=…).
    #[arg(long, env = "TAMP_WEBHOOK_SECRET", default_value = "")]
    webhook_secret: String,
    /// Attempts per stage before the job fails.
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// Seconds before the second attempt (doubling after).
    #[arg(long, default_value_t = 2)]
    retry_delay: u64,
    /// Requests per minute per token or JWT subject (beyond: 429 with Retry-After).
    #[arg(long, default_value_t = 1000)]
    rate_limit: u32,
    /// Accept JWTs from this issuer (with --jwt-audience and a key).
    #[arg(long, requires = "jwt_audience")]
    jwt_issuer: Option<String>,
    #[arg(long, requires = "jwt_issuer")]
    jwt_audience: Option<String>,
    /// HS256 shared secret for JWTs.
    #[arg(long, env = "TAMP_JWT_SECRET", conflicts_with = "jwks")]
    jwt_secret: Option<String>,
    /// The RS256 keys JWTs are signed with: a JWKS file, or an http(s) URL fetched at start.
    #[arg(long)]
    jwks: Option<String>,
    /// Post job events to a Slack incoming webhook (repeatable).
    #[arg(long = "slack-webhook")]
    slack: Vec<String>,
    /// Post job events to a Microsoft Teams Workflows URL as Adaptive Cards (repeatable).
    #[arg(long = "teams-webhook")]
    teams: Vec<String>,
    /// Wall-clock limit of one stage attempt, in seconds (past it the stage fails, not retried).
    #[arg(long, default_value_t = 6 * 3600)]
    attempt_timeout: u64,
    /// Largest upload (model or dataset file) in bytes.
    #[arg(long, default_value_t = 8 << 30)]
    max_upload_bytes: u64,
    /// Most bytes of dataset arrays a worker holds in memory (compressed npz members count
    /// decompressed; large uncompressed inputs are streamed and do not count).
    #[arg(long, default_value_t = tamp_engine::dataset::DEFAULT_MAX_DECODED_BYTES)]
    max_npz_bytes: u64,
    /// Refused credentials per minute from one address before it is locked out for the minute.
    #[arg(long, default_value_t = 20)]
    failed_login_limit: u32,
    /// The built web UI (default: $TAMP_UI_DIR, else ui/dist).
    #[arg(long)]
    ui_dir: Option<PathBuf>,
    /// OIDC issuer the UI logs in with (authorization code + PKCE); without it the UI asks for an API token.
    #[arg(long, requires = "ui_oidc_client_id")]
    ui_oidc_issuer: Option<String>,
    #[arg(long, requires = "ui_oidc_issuer")]
    ui_oidc_client_id: Option<String>,
}

fn auth_config(args: &ServeArgs) -> Result<AuthConfig> {
    let jwt = match (&args.jwt_issuer, &args.jwt_audience) {
        (Some(issuer), Some(audience)) => {
            let keys = match (&args.jwt_secret, &args.jwks) {
                (Some(secret), None) if secret.len() >= 32 => JwtKeys::Hs256(secret.clone().into_bytes()),
                (Some(_), None) => anyhow::bail!("--jwt-secret must be at least 32 characters"),
                (None, Some(url)) if url.starts_with("http://") || url.starts_with("https://") => JwtKeys::JwksUrl(url.clone()),
                (None, Some(path)) => {
                    let text = std::fs::read_to_string(path).with_context(|| format!("reading the JWKS {path}"))?;
                    JwtKeys::Jwks(std::sync::Arc::new(tamp_control::auth::Jwks::fixed(
                        serde_json::from_str(&text).with_context(|| format!("{path} is not a JWKS document"))?,
                    )))
                }
                _ => anyhow::bail!("--jwt-issuer needs a key: --jwt-secret (HS256) or --jwks (RS256)"),
            };
            Some(JwtConfig { issuer: issuer.clone(), audience: audience.clone(), keys })
        }
        _ => None,
    };
    Ok(AuthConfig { jwt, rate_per_min: args.rate_limit.max(1), failed_logins_per_min: args.failed_login_limit.max(1) })
}

/// The UI's `/config.json`: the API is this origin; log in with a token, or with OIDC.
fn ui_config(args: &ServeArgs) -> serde_json::Value {
    let auth = match (&args.ui_oidc_issuer, &args.ui_oidc_client_id) {
        (Some(issuer), Some(client_id)) => serde_json::json!({ "mode": "oidc", "issuer": issuer, "client_id": client_id, "scope": "openid profile" }),
        _ => serde_json::json!({ "mode": "token", "hint": format!("the admin token is in {}", crate::local::admin_token_path(&args.data_dir).display()) }),
    };
    serde_json::json!({ "api_base_url": "", "auth": auth })
}

pub fn serve(args: &ServeArgs) -> Result<()> {
    if !args.webhooks.is_empty() && args.webhook_secret.is_empty() {
        anyhow::bail!("--webhook needs --webhook-secret (or TAMP_WEBHOOK_SECRET) so receivers can verify events");
    }
    let cfg = ServeConfig {
        data_dir: args.data_dir.clone(),
        port: args.port,
        worker_program: std::env::current_exe().context("locating the tamp executable for workers")?,
        concurrency: args.concurrency,
        gpus: args.gpus.unwrap_or_else(gpu_count),
        webhooks: args.webhooks.clone(),
        webhook_secret: args.webhook_secret.clone().into_bytes(),
        retry: RetryPolicy { max_attempts: args.max_attempts.max(1), base_delay_s: args.retry_delay, max_delay_s: 300 },
        visibility_s: 60,
        auth: auth_config(args)?,
        slack: args.slack.clone(),
        teams: args.teams.clone(),
        attempt_timeout: Some(std::time::Duration::from_secs(args.attempt_timeout.max(1))),
        limits: tamp_control::api::Limits { max_upload_bytes: args.max_upload_bytes, ..Default::default() },
        max_npz_bytes: Some(args.max_npz_bytes),
        ui_dir: crate::ui::locate(args.ui_dir.as_deref()),
        ui_config: ui_config(args),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(local::serve(cfg)).map_err(|e| anyhow!("{e}"))
}

#[derive(clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    run: tamp_worker::RunArgs,
    #[arg(long, default_value = ".tamp")]
    data_dir: PathBuf,
}

/// A worker started by `tamp serve` dies with it (the kernel's parent-death signal), so no
/// orphan finishes a stage nobody records; if the server is already gone, it exits now.
fn die_with_server() {
    let Some(parent) = std::env::var("TAMP_PARENT_PID").ok().and_then(|p| p.parse::<i32>().ok()) else { return };
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if nix::unistd::getppid().as_raw() != parent {
        eprintln!("error: the tamp serve that started this worker (pid {parent}) is gone");
        std::process::exit(1);
    }
}

pub fn worker(args: &WorkerArgs) -> Result<()> {
    die_with_server();
    // Multi-thread: the stage's pipeline runs under `block_in_place` (search journal uploads).
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let run = args.run.run();
    let outcome = rt.block_on(async {
        let meta = SqliteStore::open(&local::db_path(&args.data_dir)).map_err(|e| Failure::Transient(e.into()))?;
        let files = local::object_store(&args.data_dir, "http://127.0.0.1").map_err(|e| Failure::Transient(e.into()))?;
        tamp_worker::run_stage(&files, &meta, &run, &tamp_worker::scratch_dir(&args.data_dir.join("work"), &run), Some(&tamp_worker::LocalTrials)).await
    });
    tamp_worker::finish(outcome);
    Ok(())
}

/// The GPUs this machine has, as `nvidia-smi -L` lists them (0 without the driver's tool).
fn gpu_count() -> usize {
    std::process::Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or(0, |o| String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.starts_with("GPU ")).count())
}
