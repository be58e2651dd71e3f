//! `tamp serve` (the local stack) and `tamp worker` (one stage of one job: the entry point
//! the Batch container runs too).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use tamp_adapters_local::SqliteStore;
use tamp_adapters_local::batch::EXIT_BAD_INPUT;
use tamp_control::auth::{AuthConfig, JwtConfig, JwtKeys};
use tamp_control::local::{self, ServeConfig};
use tamp_control::{StageManifest, stage_manifest_key};
use tamp_domain::Recipe;
use tamp_domain::job::{RetryPolicy, StageOutput};
use tamp_engine::Dataset;
use tamp_engine::compress::{self, Job, Observer};
use tamp_ports::{MetadataStore, ObjectStore, StageRun};

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
                    JwtKeys::Jwks(serde_json::from_str(&text).with_context(|| format!("{path} is not a JWKS document"))?)
                }
                _ => anyhow::bail!("--jwt-issuer needs a key: --jwt-secret (HS256) or --jwks (RS256)"),
            };
            Some(JwtConfig { issuer: issuer.clone(), audience: audience.clone(), keys })
        }
        _ => None,
    };
    Ok(AuthConfig { jwt, rate_per_min: args.rate_limit.max(1) })
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
        webhooks: args.webhooks.clone(),
        webhook_secret: args.webhook_secret.clone().into_bytes(),
        retry: RetryPolicy { max_attempts: args.max_attempts.max(1), base_delay_s: args.retry_delay, max_delay_s: 300 },
        visibility_s: 60,
        auth: auth_config(args)?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(local::serve(cfg)).map_err(|e| anyhow!("{e}"))
}

#[derive(clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    job: String,
    #[arg(long)]
    stage: usize,
    #[arg(long, default_value_t = 1)]
    attempt: u32,
    #[arg(long, default_value = ".tamp")]
    data_dir: PathBuf,
}

/// Log lines instead of progress bars (worker output goes to a log file).
struct Lines;

impl Observer for Lines {
    fn begin(&mut self, label: &str, _: u64) {
        println!("{label} …");
    }
    fn advance(&mut self, _: u64) {}
    fn end(&mut self, summary: &str) {
        println!("  {summary}");
    }
}

/// Why a worker failed: bad input is reported with its own exit status and never retried.
enum Failure {
    BadInput(anyhow::Error),
    Transient(anyhow::Error),
}

pub fn worker(args: &WorkerArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match rt.block_on(run_stage(args)) {
        Ok(()) => Ok(()),
        Err(Failure::Transient(e)) => Err(e),
        Err(Failure::BadInput(e)) => {
            let msg: Vec<String> = e.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", msg.join(": "));
            std::process::exit(EXIT_BAD_INPUT);
        }
    }
}

async fn run_stage(args: &WorkerArgs) -> std::result::Result<(), Failure> {
    let bad = |e: anyhow::Error| Failure::BadInput(e);
    let transient = |e: anyhow::Error| Failure::Transient(e);
    let meta = SqliteStore::open(&local::db_path(&args.data_dir)).map_err(|e| transient(e.into()))?;
    let files = local::object_store(&args.data_dir, "http://127.0.0.1").map_err(|e| transient(e.into()))?;
    let job = meta.get_job(&args.job).await.map_err(|e| transient(e.into()))?.ok_or_else(|| bad(anyhow!("no job {}", args.job)))?;
    let mut recipe = Recipe::from_yaml(&job.recipe_yaml).map_err(|e| bad(e.into()))?;
    let stage = recipe.policy.stages.get(args.stage).cloned().ok_or_else(|| bad(anyhow!("job {} has no stage {}", job.id, args.stage)))?;
    recipe.policy.stages = vec![stage];
    let model_key = if args.stage == 0 {
        job.inputs.model.clone()
    } else {
        job.stages.get(args.stage - 1).and_then(|s| s.output.as_ref()).map(|o| o.artifact_key.clone()).ok_or_else(|| bad(anyhow!("stage {} has no output to build on", args.stage - 1)))?
    };
    let run = StageRun { job: job.id.clone(), stage: args.stage, attempt: args.attempt };
    let work = args.data_dir.join("work").join(run.name());
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| transient(e.into()))?;
    let result = async {
        let fetch = |key: String, name: &'static str| {
            let (files, path) = (&files, work.join(name));
            async move { files.get_to_file(&key, &path).await.map(|()| path).map_err(|e| transient(anyhow!("fetching {key}: {e}"))) }
        };
        let model = fetch(model_key.clone(), "model.onnx").await?;
        let eval_key = job.inputs.evaluation.clone().ok_or_else(|| bad(anyhow!("the job has no evaluation data")))?;
        let evaluation = Dataset::load(fetch(eval_key.clone(), "eval.npz").await?).map_err(|e| bad(e.into()))?;
        let calibration = match &job.inputs.calibration {
            Some(k) if *k != eval_key => Dataset::load(fetch(k.clone(), "calib.npz").await?).map_err(|e| bad(e.into()))?,
            _ => evaluation.clone(),
        };
        let out = work.join("out");
        let j = Job { model_path: &model, recipe: &recipe, recipe_path: None, calibration: &calibration, evaluation: &evaluation, out_dir: &out };
        println!("job {} stage {} attempt {}: {} on {}", job.id, args.stage, args.attempt, recipe.policy.name, model_key);
        let outcome = compress::run(&j, &mut Lines).map_err(|e| match e {
            tamp_engine::EngineError::Io { .. } => transient(e.into()),
            other => bad(other.into()),
        })?;
        println!("chosen {}: {}", outcome.chosen, outcome.reason);
        // Fault injection for tests: TAMP_FAULT_CRASH_ONCE=<marker file> makes the first worker
        // that sees no marker create it and die by SIGKILL after its work, before publishing;
        // TAMP_FAULT_CRASH_ALWAYS=1 makes every worker die that way.
        let once = std::env::var_os("TAMP_FAULT_CRASH_ONCE").is_some_and(|m| std::fs::OpenOptions::new().write(true).create_new(true).open(m).is_ok());
        if once || std::env::var_os("TAMP_FAULT_CRASH_ALWAYS").is_some() {
            let _ = std::process::Command::new("kill").args(["-9", &std::process::id().to_string()]).status();
        }
        publish(&files, &run, &out).await.map_err(transient)
    }
    .await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// Writes the stage's artifacts under content-addressed keys, then the stage manifest last.
async fn publish(files: &impl ObjectStore, run: &StageRun, out: &Path) -> Result<()> {
    let metadata: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("best.json"))?)?;
    let sha = metadata["sha256"].as_str().ok_or_else(|| anyhow!("best.json has no sha256"))?.to_owned();
    let base = format!("artifacts/{}/{}", run.job, run.stage);
    let (artifact_key, metadata_key) = (format!("{base}/{sha}.onnx"), format!("{base}/{sha}.json"));
    // Immutable: a retry that produced the same bytes finds them there (not an error).
    files.put_if_absent(&artifact_key, std::fs::read(out.join("best.onnx"))?).await?;
    files.put_if_absent(&metadata_key, std::fs::read(out.join("best.json"))?).await?;
    for name in ["candidates.json", "manifest.json"] {
        files.put(&format!("{base}/attempt-{}/{name}", run.attempt), std::fs::read(out.join(name))?).await?;
    }
    let size_bytes = std::fs::metadata(out.join("best.onnx"))?.len();
    let manifest = StageManifest { output: StageOutput { artifact_key, sha256: sha, size_bytes, metadata_key }, metadata };
    files.put(&stage_manifest_key(run), serde_json::to_vec_pretty(&manifest)?).await?;
    Ok(())
}
