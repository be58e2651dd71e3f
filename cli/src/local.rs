//! The local stack behind `tamp serve`: data under one folder (`.tamp/`), the API on
//! 127.0.0.1, a watcher playing S3 notifications for `uploads/…/recipe.yaml`, the
//! orchestrator consuming the in-process queue, a reconcile loop, and `tamp worker`
//! subprocesses playing Batch.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tamp_adapters_local::batch::RunLimits;
use tamp_adapters_local::{FolderStore, LocalBus, MemoryQueue, ProcessRunner, SqliteStore};
use tamp_domain::job::RetryPolicy;
use tamp_ports::Subscriber;
use tamp_ports::{Clock, Message, MetadataStore, PortError, Queue, Role, SystemClock};

use tamp_control::api::{AppState, router};
use tamp_control::auth::{self, Auth, AuthConfig};
use tamp_control::handlers::{self, Services};
use tamp_control::notify::{Format, Outbox, Webhooks};

/// How `tamp serve` runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    /// 0 picks a free port.
    pub port: u16,
    /// The `tamp` executable started as the worker.
    pub worker_program: PathBuf,
    pub concurrency: usize,
    /// GPU slots for GPU stages (one run per GPU); 0 keeps them on CPU slots.
    pub gpus: usize,
    pub webhooks: Vec<String>,
    pub webhook_secret: Vec<u8>,
    pub retry: RetryPolicy,
    /// Seconds a message stays hidden while the orchestrator handles it.
    pub visibility_s: u64,
    pub auth: AuthConfig,
    /// Slack incoming-webhook URLs (Block Kit messages).
    pub slack: Vec<String>,
    /// Microsoft Teams Workflows URLs (Adaptive Cards).
    pub teams: Vec<String>,
    /// Wall-clock limit of one stage attempt.
    pub attempt_timeout: Option<Duration>,
    pub limits: tamp_control::api::Limits,
    /// In-memory dataset limit handed to workers (`TAMP_MAX_NPZ_BYTES`).
    pub max_npz_bytes: Option<u64>,
    /// The built web UI (`ui/dist`), served at `/`.
    pub ui_dir: Option<PathBuf>,
    /// What the UI reads from `/config.json` (how to log in).
    pub ui_config: serde_json::Value,
}

/// Where the bootstrap admin token is kept (mode 0600), created on the first start.
pub fn admin_token_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("admin-token")
}

/// Mints the local admin token (`*`, admin, one year) once; later starts keep it.
async fn bootstrap_admin(data_dir: &std::path::Path, meta: &dyn MetadataStore, now: u64) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let path = admin_token_path(data_dir);
    if let Ok(existing) = std::fs::read_to_string(&path)
        && meta.token_by_hash(&auth::token_hash(existing.trim())).await?.is_some_and(|t| t.expires_at > now)
    {
        return Ok(());
    }
    let (rec, token) = auth::mint("local-admin", "*", Role::Admin, Duration::from_secs(365 * 86_400), "tamp serve", now);
    meta.put_token(&rec).await?;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
    std::io::Write::write_all(&mut f, token.as_bytes())?;
    Ok(())
}

/// Paths inside the data folder.
pub fn db_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("tamp.db")
}

/// The secret signing download links, created once per data folder.
pub fn link_secret(data_dir: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let p = data_dir.join(".secret");
    match std::fs::read(&p) {
        Ok(s) if s.len() >= 32 => Ok(s),
        _ => {
            use std::os::unix::fs::OpenOptionsExt;
            let s = tamp_adapters_local::random_hex(32).into_bytes();
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&p)?;
            std::io::Write::write_all(&mut f, &s)?;
            Ok(s)
        }
    }
}

/// Opens the object store of a data folder (the worker uses the same one).
pub fn object_store(data_dir: &std::path::Path, base_url: &str) -> Result<FolderStore, PortError> {
    let secret = link_secret(data_dir).map_err(|e| PortError::Unavailable(format!("{}: {e}", data_dir.display())))?;
    FolderStore::new(data_dir.join("store"), base_url, &secret)
}

/// Starts everything and serves until the process is stopped. Prints the API URL first.
pub async fn serve(cfg: ServeConfig) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    std::fs::create_dir_all(&cfg.data_dir)?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", cfg.port)).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let files = Arc::new(object_store(&cfg.data_dir, &url)?);
    let meta = Arc::new(SqliteStore::open(&db_path(&cfg.data_dir))?);
    bootstrap_admin(&cfg.data_dir, meta.as_ref(), SystemClock.now()).await?;
    let mut auth_cfg = cfg.auth.clone();
    if let Some(jwt) = auth_cfg.jwt.as_mut() {
        jwt.keys = auth::resolve_jwks(jwt.keys.clone()).await?;
    }
    let auth = Arc::new(Auth::new(auth_cfg, meta.clone()));
    let queue = Arc::new(MemoryQueue::new(5));
    // Workers read the dataset limit from their environment.
    let env = cfg.max_npz_bytes.map(|n| ("TAMP_MAX_NPZ_BYTES".to_owned(), n.to_string())).into_iter().collect();
    let runner = Arc::new(
        ProcessRunner::new(
            cfg.worker_program.clone(),
            vec!["worker".into(), "--data-dir".into(), cfg.data_dir.display().to_string()],
            cfg.data_dir.join("logs"),
            queue.clone(),
            cfg.concurrency,
            RunLimits { timeout: cfg.attempt_timeout, scratch: Some(cfg.data_dir.join("work")), env },
        )?
        .with_gpus(cfg.gpus),
    );
    let mut subscribers: Vec<Arc<dyn Subscriber>> = Vec::new();
    let mut hooks = Webhooks::new(cfg.webhooks.clone(), cfg.webhook_secret.clone());
    hooks.base_url = url.clone();
    for u in &cfg.slack {
        hooks = hooks.with_target(u.clone(), Format::Slack);
    }
    for u in &cfg.teams {
        hooks = hooks.with_target(u.clone(), Format::Teams);
    }
    if !hooks.targets.is_empty() {
        let outbox = Arc::new(Outbox::new(cfg.data_dir.join("outbox"), hooks)?);
        tokio::spawn(outbox.clone().run());
        subscribers.push(outbox);
    }
    let reporter = Arc::new(Reporter(std::sync::OnceLock::new()));
    subscribers.push(reporter.clone());
    let exporter = Arc::new(ExportStep(std::sync::OnceLock::new()));
    subscribers.push(exporter.clone());
    let probe = queue.clone();
    let metrics = Arc::new(tamp_control::metrics::Metrics::new(Some(Arc::new(move || probe.stats())))?);
    subscribers.push(metrics.clone());
    let bus = Arc::new(LocalBus::new(Some(cfg.data_dir.join("events.jsonl")), subscribers)?);
    let svc =
        Services { store: files.clone(), meta, queue: queue.clone(), runner, bus, clock: Arc::new(SystemClock), retry: cfg.retry, guards: Default::default() };
    let _ = reporter.0.set(svc.clone());
    let _ = exporter.0.set((svc.clone(), cfg.data_dir.join("work")));
    std::fs::write(cfg.data_dir.join("serve.json"), serde_json::json!({ "url": url, "pid": std::process::id() }).to_string())?;
    println!(
        "tamp serve: API on {url}; web UI at {url}/{}; uploads in {}/uploads/<project>/<model>/<version>/ (recipe.yaml last); admin token in {}",
        if cfg.ui_dir.is_some() { "" } else { " (not built here: make ui)" },
        files.root().display(),
        admin_token_path(&cfg.data_dir).display()
    );

    // Jobs the last process left unfinished go on from what the store shows.
    match handlers::recover(&svc).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(n, "recovered unfinished jobs"),
        Err(e) => tracing::error!(error = %e, "restart recovery failed; reconcile will retry submitted stages"),
    }
    // Jobs that succeeded while the last process was stopping get their exports now.
    let (catch_svc, exporter) = (svc.clone(), tamp_worker::export::InPlace { files: svc.store.clone(), scratch: cfg.data_dir.join("work") });
    tokio::spawn(async move {
        match tamp_control::exports::catch_up(&catch_svc, &exporter, u64::MAX, 200).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(n, "exported for jobs that succeeded before the restart"),
            Err(e) => tracing::error!(error = %e, "export catch-up failed"),
        }
    });
    tokio::spawn(orchestrator(svc.clone(), queue.clone(), cfg.visibility_s));
    tokio::spawn(watcher(svc.clone()));
    tokio::spawn(reconciler(svc.clone()));
    let links: Arc<dyn tamp_ports::SignedLinks> = files;
    let app = router(AppState { svc, files: Some(links), auth, limits: cfg.limits, metrics: Some(metrics) })
        .merge(crate::ui::routes(cfg.ui_dir.as_deref(), cfg.ui_config.clone()));
    axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await?;
    Ok(())
}

/// The report step (the report function's part locally): on a finished job, writes its
/// report document and announces `report.ready`.
struct Reporter(std::sync::OnceLock<Services>);

#[async_trait::async_trait]
impl Subscriber for Reporter {
    fn name(&self) -> &str {
        "report"
    }

    async fn on_event(&self, event: &tamp_ports::TampEvent) -> Result<(), PortError> {
        let Some(svc) = self.0.get() else { return Ok(()) };
        match handlers::write_report(svc, event).await {
            Ok(_) => Ok(()),
            Err(handlers::HandlerError::Port(e)) => Err(e),
            Err(e) => Err(PortError::Invalid(e.to_string())),
        }
    }
}

/// The export step (the export function's part locally): on a succeeded job, its final
/// artifact converted for the recipe's other runtimes, in this process and always in place
/// (no Lambda limits here), off the bus's delivery so the next events are not held up.
struct ExportStep(std::sync::OnceLock<(Services, PathBuf)>);

#[async_trait::async_trait]
impl Subscriber for ExportStep {
    fn name(&self) -> &str {
        "export"
    }

    async fn on_event(&self, event: &tamp_ports::TampEvent) -> Result<(), PortError> {
        let Some((svc, scratch)) = self.0.get() else { return Ok(()) };
        if event.detail_type != "tamp.job.succeeded" {
            return Ok(());
        }
        let (svc, event) = (svc.clone(), event.clone());
        let exporter = tamp_worker::export::InPlace { files: svc.store.clone(), scratch: scratch.clone() };
        tokio::spawn(async move {
            if let Err(e) = tamp_control::exports::on_job_succeeded(&svc, &event, &exporter, u64::MAX).await {
                tracing::error!(job = %event.job, error = %e, "export failed");
            }
        });
        Ok(())
    }
}

async fn orchestrator(svc: Services, queue: Arc<MemoryQueue>, visibility_s: u64) {
    loop {
        let batch = match queue.receive(10, Duration::from_secs(visibility_s)).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "queue receive failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if batch.is_empty() {
            queue.wait(Duration::from_millis(200)).await;
            continue;
        }
        for d in batch {
            let msg: Message = match serde_json::from_str(&d.body) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(error = %e, body = %d.body, "dropping a malformed message");
                    let _ = queue.ack(&d.receipt).await;
                    continue;
                }
            };
            match handlers::orchestrate(&svc, &msg).await {
                Ok(()) => {
                    let _ = queue.ack(&d.receipt).await;
                }
                Err(e) if e.retryable() => tracing::warn!(error = %e, "will retry message"),
                Err(e) => {
                    tracing::error!(error = %e, body = %d.body, "message cannot be handled; dropped");
                    let _ = queue.ack(&d.receipt).await;
                }
            }
        }
    }
}

/// Polls `uploads/` for new or rewritten `recipe.yaml` objects (S3 Object Created events).
/// A recipe is taken once it looks the same on two polls in a row, so a file still being
/// written (a plain `cp`) is not read half-way.
async fn watcher(svc: Services) {
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut last_poll: HashMap<String, String> = HashMap::new();
    loop {
        match svc.store.list("uploads/").await {
            Ok(keys) => {
                let mut this_poll = HashMap::new();
                for key in keys.into_iter().filter(|k| k.ends_with("/recipe.yaml")) {
                    let Ok(Some(meta)) = svc.store.head(&key).await else { continue };
                    this_poll.insert(key.clone(), meta.version.clone());
                    if last_poll.get(&key) != Some(&meta.version) || !seen.insert((key.clone(), meta.version.clone())) {
                        continue;
                    }
                    // Each upload is ingested in a task of its own: a panic there (a bug that
                    // bad input reached) fails that upload's job, never the watcher.
                    let (task_svc, task_key, task_version) = (svc.clone(), key.clone(), meta.version.clone());
                    let outcome = tokio::spawn(async move {
                        // Fault injection for tests: a panic while ingesting keys that contain this.
                        if std::env::var("TAMP_FAULT_INGEST_PANIC").is_ok_and(|s| !s.is_empty() && task_key.contains(&s)) {
                            panic!("fault injection: ingest panicked on {task_key}");
                        }
                        handlers::ingest(&task_svc, &task_key, &task_version).await
                    })
                    .await;
                    match outcome {
                        Ok(Ok(outcome)) => tracing::info!(?outcome, key, "ingested"),
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, key, "ingest failed");
                            if e.retryable() {
                                seen.remove(&(key, meta.version));
                            }
                        }
                        Err(join) => {
                            let why = join
                                .try_into_panic()
                                .ok()
                                .and_then(|p| p.downcast_ref::<&str>().map(|s| (*s).to_owned()).or_else(|| p.downcast_ref::<String>().cloned()))
                                .unwrap_or_else(|| "no message".into());
                            tracing::error!(key, why, "ingest panicked");
                            if let Some((p, m, v)) = handlers::upload_prefix(&key) {
                                let reason = format!("{key}: Tamp hit an internal error reading this upload ({why}); please report it with the recipe");
                                if let Err(e) = handlers::fail_upload(&svc, &p, &m, &v, reason, &format!("upload:{key}@{}", meta.version)).await {
                                    tracing::error!(key, error = %e, "could not record the failed upload");
                                }
                            }
                        }
                    }
                }
                last_poll = this_poll;
            }
            Err(e) => tracing::warn!(error = %e, "listing uploads failed"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn reconciler(svc: Services) {
    loop {
        tokio::time::sleep(Duration::from_secs(15)).await;
        if let Err(e) = handlers::reconcile(&svc).await {
            tracing::warn!(error = %e, "reconcile failed");
        }
    }
}
