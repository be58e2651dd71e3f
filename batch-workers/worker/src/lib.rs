//! One stage of one job, over the ports: fetch the inputs (stage k > 0 starts from stage
//! k−1's artifact), run the engine's stage runner on a one-stage recipe, write the artifact
//! and its metadata under content-addressed keys with `put_if_absent`, then the stage
//! manifest last. `tamp worker` runs this with the local adapters; `tamp-batch-worker` (the
//! Batch container) with S3 and DynamoDB.
//!
//! Exit contract (both runners): 0 success; [`EXIT_BAD_INPUT`] for input that will never work
//! (not retried); anything else is retryable. On failure the reason is written to
//! `artifacts/<job>/<stage>/attempt-<n>.error.json` so the orchestrator can name it — AWS
//! Batch only reports "Essential container in task exited".

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use tamp_control::{StageFailure, StageManifest, stage_error_key, stage_manifest_key};
use tamp_domain::Recipe;
use tamp_domain::job::StageOutput;
use tamp_engine::Dataset;
use tamp_pipeline::{self as compress, Job, Observer};
use tamp_ports::{MetadataStore, ObjectStore, StageRun};

pub mod export;
#[cfg(feature = "aws")]
pub mod trials;

/// How a stage's search trials fan out beyond this process: the local runner's worker
/// processes, or Batch jobs. Made per stage, once the evaluation set's key is known.
pub trait TrialsFor: Sync {
    fn trials(&self, run: &StageRun, eval_key: &str) -> Box<dyn tamp_pipeline::search::Trials>;
}

/// Trials as `tamp search-trial` processes of this executable (the local stack).
#[derive(Debug)]
pub struct LocalTrials;

impl TrialsFor for LocalTrials {
    fn trials(&self, _: &StageRun, _: &str) -> Box<dyn tamp_pipeline::search::Trials> {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("tamp"));
        Box::new(tamp_pipeline::search::Subprocess { exe, limit: std::thread::available_parallelism().map_or(2, |n| n.get()) })
    }
}

/// Exit status for input that will never work (the runners do not retry it).
pub const EXIT_BAD_INPUT: i32 = 3;

/// Why a stage failed: bad input is reported with its own exit status and never retried.
#[derive(Debug)]
pub enum Failure {
    BadInput(anyhow::Error),
    Transient(anyhow::Error),
}

impl Failure {
    pub fn message(&self) -> String {
        let (Self::BadInput(e) | Self::Transient(e)) = self;
        e.chain().map(ToString::to_string).collect::<Vec<_>>().join(": ")
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Self::BadInput(_) => EXIT_BAD_INPUT,
            Self::Transient(_) => 1,
        }
    }
}

/// Log lines instead of progress bars (worker output goes to a log).
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

/// Runs stage `run` of its job in `scratch` (emptied first and removed after). A failure
/// is also recorded in the store (best effort) for the orchestrator. A panic anywhere in the
/// stage is caught and reported as bad input with its message (it is the input that drove
/// the code there), never as the runtime's "exit status 101".
pub async fn run_stage(
    files: &dyn ObjectStore,
    meta: &dyn MetadataStore,
    run: &StageRun,
    scratch: &Path,
    trials: Option<&dyn TrialsFor>,
) -> std::result::Result<(), Failure> {
    use futures_util::FutureExt;
    let mut renames = Vec::new();
    let result = match std::panic::AssertUnwindSafe(stage(files, meta, run, scratch, &mut renames, trials)).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            Err(Failure::BadInput(anyhow!(
                "Tamp hit an internal error on this input ({what}); the job's inputs drove it there: please report it with the model and recipe"
            )))
        }
    };
    let _ = std::fs::remove_dir_all(scratch);
    let result = result.map_err(|f| f.scrubbed(scratch, &renames));
    if let Err(f) = &result {
        let doc = StageFailure { reason: f.message(), retryable: matches!(f, Failure::Transient(_)) };
        if let Ok(body) = serde_json::to_vec(&doc) {
            let _ = files.put(&stage_error_key(run), body).await;
        }
    }
    result
}

impl Failure {
    /// The same failure with the scratch folder's path taken out of its message: users see
    /// the names of the files they uploaded, never the worker's absolute paths.
    /// `renames`: (local folder, the store prefix its files came from).
    fn scrubbed(self, scratch: &Path, renames: &[(PathBuf, String)]) -> Self {
        let clean = |e: anyhow::Error| {
            let mut msg = e.chain().map(ToString::to_string).collect::<Vec<_>>().join(": ");
            for (local, prefix) in renames {
                msg = msg.replace(&local.display().to_string(), prefix);
            }
            anyhow!("{}", msg.replace(&format!("{}/", scratch.display()), "").replace(&scratch.display().to_string(), "the stage's inputs"))
        };
        match self {
            Self::BadInput(e) => Self::BadInput(clean(e)),
            Self::Transient(e) => Self::Transient(clean(e)),
        }
    }
}

/// The file name part of an object key (`uploads/p/m/v/calib.npz` → `calib.npz`).
fn base_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

async fn stage(
    files: &dyn ObjectStore,
    meta: &dyn MetadataStore,
    run: &StageRun,
    work: &Path,
    renames: &mut Vec<(PathBuf, String)>,
    trials: Option<&dyn TrialsFor>,
) -> std::result::Result<(), Failure> {
    let bad = |e: anyhow::Error| Failure::BadInput(e);
    let transient = |e: anyhow::Error| Failure::Transient(e);
    let job = meta.get_job(&run.job).await.map_err(|e| transient(e.into()))?.ok_or_else(|| bad(anyhow!("no job {}", run.job)))?;
    let mut recipe = Recipe::from_yaml(&job.recipe_yaml).map_err(|e| bad(e.into()))?;
    let stage = recipe.policy.stages.get(run.stage).cloned().ok_or_else(|| bad(anyhow!("job {} has no stage {}", job.id, run.stage)))?;
    recipe.policy.stages = vec![stage];
    let model_key = if run.stage == 0 {
        job.inputs.model.clone()
    } else {
        job.stages
            .get(run.stage - 1)
            .and_then(|s| s.output.as_ref())
            .map(|o| o.artifact_key.clone())
            .ok_or_else(|| bad(anyhow!("stage {} has no output to build on", run.stage - 1)))?
    };
    let _ = std::fs::remove_dir_all(work);
    // Each input keeps its uploaded file name in a folder of its own (the model's folder also
    // holds its external data), so every message can name what the user sent.
    let folder = |name: &str, key: &str| -> std::result::Result<PathBuf, Failure> {
        let dir = work.join("in").join(name);
        std::fs::create_dir_all(&dir).map_err(|e| Failure::Transient(anyhow!("{}: {e}", dir.display())))?;
        Ok(dir.join(base_name(key)))
    };
    let fetch = |key: String, path: PathBuf| async move {
        files.get_to_file(&key, &path).await.map(|()| path).map_err(|e| Failure::Transient(anyhow!("fetching {key}: {e}")))
    };
    let prefix_of = |key: &str| key.rsplit_once('/').map_or(String::new(), |(p, _)| p.to_owned());
    let model_path = folder("model", &model_key)?;
    renames.push((model_path.parent().map(Path::to_path_buf).unwrap_or_default(), prefix_of(&model_key)));
    let model = fetch(model_key.clone(), model_path).await?;
    // External data the model names comes from beside it in the store, confined to its prefix.
    let model_bytes = std::fs::read(&model).map_err(|e| transient(anyhow!("{model_key}: {e}")))?;
    let locations = tamp_onnx::Model::external_locations(&model_bytes, Path::new(base_name(&model_key))).map_err(|e| bad(anyhow!("{model_key}: {e}")))?;
    drop(model_bytes);
    let prefix = prefix_of(&model_key);
    for loc in locations {
        let key = format!("{prefix}/{loc}");
        tamp_ports::check_key(&key).map_err(|e| bad(anyhow!("{model_key}: external data '{loc}': {e}")))?;
        if files.head(&key).await.map_err(|e| transient(e.into()))?.is_none() {
            return Err(bad(anyhow!("{model_key} keeps weights in '{loc}', which was not uploaded: upload it to {key} before recipe.yaml")));
        }
        let path = model.parent().map(|d| d.join(&loc)).unwrap_or_default();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| transient(anyhow!("{}: {e}", dir.display())))?;
        }
        fetch(key, path).await?;
    }
    let eval_key = job.inputs.evaluation.clone().ok_or_else(|| bad(anyhow!("the job has no evaluation data")))?;
    let eval_path = folder("eval", &eval_key)?;
    renames.push((eval_path.parent().map(Path::to_path_buf).unwrap_or_default(), prefix_of(&eval_key)));
    let evaluation = Dataset::load(fetch(eval_key.clone(), eval_path).await?).map_err(|e| bad(anyhow!("{e}")))?;
    let calibration = match &job.inputs.calibration {
        Some(k) if *k != eval_key => {
            let path = folder("calib", k)?;
            renames.push((path.parent().map(Path::to_path_buf).unwrap_or_default(), prefix_of(k)));
            Dataset::load(fetch(k.clone(), path).await?).map_err(|e| bad(anyhow!("{e}")))?
        }
        _ => evaluation.clone(),
    };
    let train = match &job.inputs.train {
        Some(k) => {
            let path = folder("train", k)?;
            renames.push((path.parent().map(Path::to_path_buf).unwrap_or_default(), prefix_of(k)));
            Some(Dataset::load(fetch(k.clone(), path).await?).map_err(|e| bad(anyhow!("{e}")))?)
        }
        None => None,
    };
    // Files the recipe names (a distill stage's teacher or student file), uploaded beside the
    // model and resolved against the recipe's folder, as `tamp compress` resolves them.
    let recipe_dir = work.join("in").join("recipe");
    let named = recipe_files(&recipe);
    let upload_prefix = prefix_of(&job.inputs.model);
    for (what, rel) in &named {
        let key = format!("{upload_prefix}/{rel}");
        if tamp_ports::check_key(&key).is_err() {
            return Err(bad(anyhow!("the recipe's {what} '{rel}' must be a path inside the upload folder ({upload_prefix}/), without '..' or a leading '/'")));
        }
        if files.head(&key).await.map_err(|e| transient(e.into()))?.is_none() {
            return Err(bad(anyhow!("the recipe's {what} '{rel}' was not uploaded: upload it to {key} before recipe.yaml")));
        }
        let path = recipe_dir.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| transient(anyhow!("{}: {e}", dir.display())))?;
        }
        fetch(key, path).await?;
    }
    let recipe_path = recipe_dir.join("recipe.yaml");
    if !named.is_empty() {
        renames.push((recipe_dir.clone(), upload_prefix.clone()));
        // The job's recipe beside them: the manifest records it with its hash.
        std::fs::write(&recipe_path, &job.recipe_yaml).map_err(|e| transient(anyhow!("{}: {e}", recipe_path.display())))?;
    }
    let out = work.join("out");
    let fan_out = trials.map(|t| t.trials(run, &eval_key));
    // A search stage keeps its journal in the store under one key per stage, shared by its
    // attempts, uploaded after every batch of trials: an attempt after a dead container
    // resumes where it stopped and re-measures nothing it finished. Uploading from inside the
    // (synchronous) pipeline needs a multi-thread runtime (both worker binaries have one).
    let search_dir = work.join("search");
    let journal = JournalUpload { files, key: search_journal_key(run) };
    let searching = recipe.policy.stages.iter().any(|s| matches!(s, tamp_domain::recipe::Stage::Search(_)));
    let can_block = tokio::runtime::Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread;
    if searching && can_block && files.head(&journal.key).await.map_err(|e| transient(e.into()))?.is_some() {
        std::fs::create_dir_all(&search_dir).map_err(|e| transient(anyhow!("{}: {e}", search_dir.display())))?;
        fetch(journal.key.clone(), search_dir.join("journal.jsonl")).await?;
        println!("search journal from {} (an earlier attempt's trials are not measured again)", journal.key);
    }
    let j = Job {
        model_path: &model,
        recipe: &recipe,
        recipe_path: (!named.is_empty()).then_some(recipe_path.as_path()),
        calibration: &calibration,
        evaluation: &evaluation,
        train: train.as_ref(),
        out_dir: &out,
        reproducible: true,
        analyse: true,
        search_dir: can_block.then_some(search_dir.as_path()),
        journal_sink: (searching && can_block).then_some(&journal as &dyn tamp_pipeline::search::JournalSink),
        trials: fan_out.as_deref(),
        // The export function converts the job's final artifact once the job succeeds.
        export: false,
    };
    println!("job {} stage {} attempt {}: {} on {}", job.id, run.stage, run.attempt, recipe.policy.name, model_key);
    let pipeline = || compress::run(&j, &mut Lines);
    let outcome = if can_block { tokio::task::block_in_place(pipeline) } else { pipeline() };
    let outcome = outcome.map_err(|e| match e {
        tamp_engine::EngineError::Io { .. } => transient(e.into()),
        other => bad(anyhow!("{model_key}: {other}")),
    })?;
    println!("chosen {}: {}", outcome.chosen, outcome.reason);
    fault_point();
    publish(files, run, &out, &outcome.warnings).await.map_err(transient)
}

/// Where a search stage's journal is kept between its attempts.
pub fn search_journal_key(run: &StageRun) -> String {
    format!("artifacts/{}/{}/search-journal.jsonl", run.job, run.stage)
}

/// Uploads the search journal from inside the pipeline (which runs under `block_in_place`).
struct JournalUpload<'a> {
    files: &'a dyn ObjectStore,
    key: String,
}

impl std::fmt::Debug for JournalUpload<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalUpload").field("key", &self.key).finish_non_exhaustive()
    }
}

impl tamp_pipeline::search::JournalSink for JournalUpload<'_> {
    fn save(&self, journal: &Path) -> tamp_pipeline::Result<()> {
        let io = |e: std::io::Error| tamp_engine::EngineError::Io { path: journal.to_owned(), source: e };
        let bytes = std::fs::read(journal).map_err(io)?;
        let records = bytes.iter().filter(|&&b| b == b'\n').count().saturating_sub(1);
        tokio::runtime::Handle::current()
            .block_on(self.files.put(&self.key, bytes))
            .map_err(|e| io(std::io::Error::other(format!("uploading the search journal to {}: {e}", self.key))))?;
        // Fault injection: `TAMP_FAULT_CRASH_AFTER_JOURNAL=<records>:<marker>` dies once, by
        // SIGKILL, right after a journal of at least that many records is uploaded.
        let fault = std::env::var("TAMP_FAULT_CRASH_AFTER_JOURNAL").unwrap_or_default();
        if let Some((n, marker)) = fault.split_once(':')
            && n.parse::<usize>().is_ok_and(|n| records >= n)
            && std::fs::OpenOptions::new().write(true).create_new(true).open(marker).is_ok()
        {
            die();
        }
        Ok(())
    }
}

/// The files a recipe names beside the model: (what, path relative to the upload folder).
fn recipe_files(recipe: &Recipe) -> Vec<(&'static str, String)> {
    use tamp_domain::recipe::{Stage, Student};
    let mut out = Vec::new();
    for stage in &recipe.policy.stages {
        if let Stage::Distill(d) = stage {
            if d.teacher != "input" {
                out.push(("teacher", d.teacher.clone()));
            }
            if let Student::File(f) = &d.student {
                out.push(("student", f.clone()));
            }
        }
    }
    out
}

/// Fault injection for tests: `TAMP_FAULT_CRASH_ONCE=<marker file>` makes the first worker
/// that sees no marker create it and die by SIGKILL after its work, before publishing;
/// `TAMP_FAULT_CRASH_ALWAYS=1` makes every worker die that way;
/// `TAMP_FAULT_CRASH_AFTER_ARTIFACT=<marker>` dies once after the artifact is written but
/// before the stage manifest (a container lost mid-upload);
/// `TAMP_FAULT_PANIC=1` panics there (a bug reached by bad input);
/// `TAMP_FAULT_SLEEP_BEFORE_PUBLISH=<s>` holds every worker that long before publishing (a
/// server killed mid-job).
fn fault_point() {
    if std::env::var_os("TAMP_FAULT_PANIC").is_some() {
        panic!("fault injection: the stage panicked");
    }
    if let Some(secs) = std::env::var("TAMP_FAULT_SLEEP_BEFORE_PUBLISH").ok().and_then(|s| s.parse::<u64>().ok()) {
        std::thread::sleep(std::time::Duration::from_secs(secs));
    }
    let once = std::env::var_os("TAMP_FAULT_CRASH_ONCE").is_some_and(|m| std::fs::OpenOptions::new().write(true).create_new(true).open(m).is_ok());
    if once || std::env::var_os("TAMP_FAULT_CRASH_ALWAYS").is_some() {
        die();
    }
}

fn die() {
    let _ = std::process::Command::new("kill").args(["-9", &std::process::id().to_string()]).status();
}

/// Writes the stage's artifacts under content-addressed keys, then the stage manifest last.
async fn publish(files: &dyn ObjectStore, run: &StageRun, out: &Path, warnings: &[String]) -> Result<()> {
    let record = std::fs::read(out.join("best.json"))?;
    let artifact: tamp_domain::results::ArtifactMetadata = serde_json::from_slice(&record).map_err(|e| anyhow!("best.json is not an artifact record: {e}"))?;
    let metadata: serde_json::Value = serde_json::from_slice(&record)?;
    let sha = artifact.sha256;
    let base = format!("artifacts/{}/{}", run.job, run.stage);
    let (artifact_key, metadata_key) = (format!("{base}/{sha}.onnx"), format!("{base}/{sha}.json"));
    // Immutable: a retry that produced the same bytes finds them there (not an error) — but
    // a key that exists with another size is not the same content, and that is an error.
    let local_size = std::fs::metadata(out.join("best.onnx"))?.len();
    if files.put_if_absent_file(&artifact_key, &out.join("best.onnx")).await? == tamp_ports::PutOutcome::Exists {
        let stored = files.head(&artifact_key).await?.map(|m| m.size);
        anyhow::ensure!(
            stored == Some(local_size),
            "{artifact_key} exists with {stored:?} bytes, this attempt made {local_size}: content-addressed keys must not differ"
        );
    }
    if std::env::var_os("TAMP_FAULT_CRASH_AFTER_ARTIFACT").is_some_and(|m| std::fs::OpenOptions::new().write(true).create_new(true).open(m).is_ok()) {
        die();
    }
    files.put_if_absent(&metadata_key, std::fs::read(out.join("best.json"))?).await?;
    for name in ["candidates.json", "manifest.json", "analysis.json"] {
        if name == "analysis.json" && !out.join(name).exists() {
            continue; // the analysis failed (the run's log says why); the report shows less
        }
        files.put(&format!("{base}/attempt-{}/{name}", run.attempt), std::fs::read(out.join(name))?).await?;
    }
    // A search stage's front, journal and the chosen config as a recipe.
    for name in ["search/front.json", "search/journal.jsonl", "best.recipe.yaml"] {
        if out.join(name).exists() {
            files.put(&format!("{base}/attempt-{}/{name}", run.attempt), std::fs::read(out.join(name))?).await?;
        }
    }
    for w in warnings {
        println!("warning: {w}");
    }
    let output = StageOutput { artifact_key, sha256: sha, size_bytes: local_size, metadata_key, warnings: warnings.to_vec() };
    let manifest = StageManifest { output, metadata };
    files.put(&stage_manifest_key(run), serde_json::to_vec_pretty(&manifest)?).await?;
    Ok(())
}

/// The scratch folder for a run under `root`.
pub fn scratch_dir(root: &Path, run: &StageRun) -> PathBuf {
    root.join(run.name())
}

/// What both worker binaries take: one attempt of one stage of one job.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[arg(long)]
    pub job: String,
    #[arg(long)]
    pub stage: usize,
    #[arg(long, default_value_t = 1)]
    pub attempt: u32,
}

impl RunArgs {
    pub fn run(&self) -> StageRun {
        // The device is the runner's concern (queue, slot); the stage picks its own from the
        // recipe and what the machine has.
        StageRun { job: self.job.clone(), stage: self.stage, attempt: self.attempt, device: Default::default() }
    }
}

/// The exit contract of both worker binaries: success returns; a failure prints its reason
/// as the last line (`error: …`, which the local runner reads) and exits with its code
/// ([`EXIT_BAD_INPUT`] for bad input, 1 for anything worth retrying).
pub fn finish(outcome: std::result::Result<(), Failure>) {
    if let Err(f) = outcome {
        eprintln!("error: {}", f.message());
        std::process::exit(f.exit_code());
    }
}

/// The AWS wiring of the Batch container.
#[cfg(feature = "aws")]
pub mod aws {
    use super::{Failure, TrialsFor, run_stage, scratch_dir, stage_manifest_key};
    use anyhow::anyhow;
    use tamp_adapters_aws::{DynamoStore, S3Store, aws_config, env_var};
    use tamp_ports::{ObjectStore, StageRun};

    /// Runs `run` with S3 (`TAMP_BUCKET`, `TAMP_KMS_KEY_ID`) and DynamoDB (`TAMP_TABLE`),
    /// scratch space in `TAMP_SCRATCH` (default the temp dir). A Batch-level retry
    /// (`AWS_BATCH_JOB_ATTEMPT` > 1) of an attempt whose manifest is already written exits 0
    /// without redoing the work: the earlier container finished and died before reporting.
    pub async fn run(run: &StageRun) -> Result<(), Failure> {
        let config = aws_config().await;
        let bucket = env_var("TAMP_BUCKET").map_err(|e| Failure::BadInput(anyhow!(e)))?;
        let table = env_var("TAMP_TABLE").map_err(|e| Failure::BadInput(anyhow!(e)))?;
        let files = S3Store::new(&config, bucket).with_kms_key(std::env::var("TAMP_KMS_KEY_ID").ok());
        let meta = DynamoStore::new(&config, table);
        let batch_attempt = std::env::var("AWS_BATCH_JOB_ATTEMPT").ok().and_then(|a| a.parse::<u32>().ok()).unwrap_or(1);
        if batch_attempt > 1 && files.head(&stage_manifest_key(run)).await.map_err(|e| Failure::Transient(e.into()))?.is_some() {
            println!("{}: already published by Batch attempt < {batch_attempt}; nothing to do", run.name());
            return Ok(());
        }
        let root = std::env::var_os("TAMP_SCRATCH").map_or_else(std::env::temp_dir, std::path::PathBuf::from);
        let batch = crate::trials::BatchTarget::from_env(files.bucket()).await;
        run_stage(&files, &meta, run, &scratch_dir(&root, run), batch.as_ref().map(|b| b as &dyn TrialsFor)).await
    }

    /// An export stage's container: `tamp-batch-worker export --job J --runtime R` (submitted
    /// by the export function for artifacts too large to convert in a Lambda). Converts the
    /// job's final artifact, records it and announces `artifact.exported` on the team bus
    /// (`TAMP_EVENT_BUS`); a file that will never be made is recorded and announced as a
    /// quality alert, and the container exits 0 (a Batch retry would not help).
    pub async fn export(job: &str, runtime: &str) -> Result<(), Failure> {
        use tamp_ports::Clock;
        let config = aws_config().await;
        let setting = |k: &str| env_var(k).map_err(|e| Failure::BadInput(anyhow!(e)));
        let files = std::sync::Arc::new(S3Store::new(&config, setting("TAMP_BUCKET")?).with_kms_key(std::env::var("TAMP_KMS_KEY_ID").ok()));
        let meta = DynamoStore::new(&config, setting("TAMP_TABLE")?);
        let bus = tamp_adapters_aws::EventBridgeBus::new(&config, setting("TAMP_EVENT_BUS")?);
        let port = |e: tamp_control::handlers::HandlerError| if e.retryable() { Failure::Transient(e.into()) } else { Failure::BadInput(e.into()) };
        let j = tamp_ports::MetadataStore::get_job(&meta, job)
            .await
            .map_err(|e| Failure::Transient(e.into()))?
            .ok_or_else(|| Failure::BadInput(anyhow!("no job {job}")))?;
        let source = tamp_control::exports::final_artifact(&meta, &j).await.map_err(port)?;
        let root = std::env::var_os("TAMP_SCRATCH").map_or_else(std::env::temp_dir, std::path::PathBuf::from);
        let exporter = crate::export::InPlace { files: files.clone(), scratch: root };
        let now = tamp_ports::SystemClock.now();
        let done = tamp_control::exports::export_runtime(files.as_ref(), &meta, &bus, now, &j, &source, runtime, &exporter).await.map_err(port)?;
        println!("{job} {runtime}: {done:?}");
        Ok(())
    }

    /// A search trial's container: `tamp-batch-worker search-trial --spec-key K`.
    pub async fn trial(spec_key: &str) -> Result<(), Failure> {
        let bucket = env_var("TAMP_BUCKET").map_err(|e| Failure::BadInput(anyhow!(e)))?;
        let root = std::env::var_os("TAMP_SCRATCH").map_or_else(std::env::temp_dir, std::path::PathBuf::from);
        let scratch = root.join(format!("trial-{}", std::process::id()));
        crate::trials::trial_main(&bucket, spec_key, &scratch).await.map_err(Failure::Transient)
    }
}
