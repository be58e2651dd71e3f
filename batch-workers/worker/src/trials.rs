//! Search trials fanned out as AWS Batch jobs (the `aws` feature). The stage's container
//! uploads each trial artifact and its spec under the attempt's prefix, submits one Batch job
//! per trial (`tamp-batch-worker search-trial --spec-key K`, same queue and job definition as
//! itself), and collects each result object; the search appends them to its journal in the
//! order it asked. A trial container downloads its artifact and the evaluation set, measures
//! with the same code as every other trial runner, and writes the result object.
//!
//! Trial jobs carry `trial` in their parameters and no `stage`/`attempt`, so their state
//! changes are not stage messages (`message_from_state_change` ignores them).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use aws_sdk_batch::types::{ContainerOverrides, JobStatus};
use tamp_adapters_aws::S3Store;
use tamp_engine::EngineError;
use tamp_pipeline::search::{TrialResult, TrialSpec, Trials, trial};
use tamp_ports::ObjectStore;

use crate::TrialsFor;

/// Where trial jobs go: the queue and job definition (`TAMP_BATCH_QUEUE`,
/// `TAMP_BATCH_JOB_DEFINITION`; in a Batch container the queue defaults to `AWS_BATCH_JQ_NAME`
/// and the definition to the running job's own).
#[derive(Debug, Clone)]
pub struct BatchTarget {
    pub bucket: String,
    pub kms_key_id: Option<String>,
    pub queue: String,
    pub definition: String,
}

impl BatchTarget {
    pub async fn from_env(bucket: &str) -> Option<Self> {
        let queue = std::env::var("TAMP_BATCH_QUEUE").or_else(|_| std::env::var("AWS_BATCH_JQ_NAME")).ok()?;
        let definition = match std::env::var("TAMP_BATCH_JOB_DEFINITION") {
            Ok(d) => d,
            Err(_) => {
                let id = std::env::var("AWS_BATCH_JOB_ID").ok()?;
                let batch = aws_sdk_batch::Client::new(&tamp_adapters_aws::aws_config().await);
                let out = batch.describe_jobs().jobs(id).send().await.ok()?;
                out.jobs().first()?.job_definition()?.to_owned()
            }
        };
        Some(Self { bucket: bucket.to_owned(), kms_key_id: std::env::var("TAMP_KMS_KEY_ID").ok(), queue, definition })
    }
}

impl TrialsFor for BatchTarget {
    fn trials(&self, run: &tamp_ports::StageRun, eval_key: &str) -> Box<dyn Trials> {
        Box::new(BatchTrials {
            target: self.clone(),
            prefix: format!("artifacts/{}/{}/attempt-{}/trials", run.job, run.stage, run.attempt),
            name: format!("{}-t", run.name()),
            job: run.job.clone(),
            eval_key: eval_key.to_owned(),
            poll: Duration::from_millis(std::env::var("TAMP_TRIAL_POLL_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)),
        })
    }
}

/// One stage's trials on Batch.
#[derive(Debug)]
pub struct BatchTrials {
    target: BatchTarget,
    prefix: String,
    /// Trial `n`'s Batch job is `<stage run's name>-t<n>`.
    name: String,
    job: String,
    eval_key: String,
    poll: Duration,
}

impl Trials for BatchTrials {
    fn measure(&self, specs: &[TrialSpec], workers: usize, done: &mut dyn FnMut(usize)) -> tamp_pipeline::Result<Vec<TrialResult>> {
        // The stage runs inside the worker's runtime; the SDK calls get a runtime of their own
        // on a thread of their own.
        let out = std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| anyhow!(e))?;
                rt.block_on(self.run(specs, workers))
            })
            .join()
            .unwrap_or_else(|_| Err(anyhow!("the trial submitter panicked")))
        })
        .map_err(|e| EngineError::Config(format!("search trials on AWS Batch: {e:#}")))?;
        done(out.len());
        Ok(out)
    }
}

impl BatchTrials {
    async fn run(&self, specs: &[TrialSpec], workers: usize) -> Result<Vec<TrialResult>> {
        let config = tamp_adapters_aws::aws_config().await;
        let s3 = S3Store::new(&config, &self.target.bucket).with_kms_key(self.target.kms_key_id.clone());
        let batch = aws_sdk_batch::Client::new(&config);
        let mut results: Vec<Option<TrialResult>> = vec![None; specs.len()];
        let mut submitted: Vec<(usize, String, String)> = Vec::new(); // (index, job id, result key)
        let mut next = 0;
        let mut polls = 0u64;
        while results.iter().any(Option::is_none) {
            while submitted.len() < workers.max(1) && next < specs.len() {
                let spec = &specs[next];
                let key = |ext: &str| format!("{}/{}.{ext}", self.prefix, spec.id);
                s3.put_file(&key("onnx"), &spec.file).await.with_context(|| format!("uploading trial {}", spec.id))?;
                // The spec as the trial container reads it: object keys instead of local paths.
                let remote = TrialSpec { file: PathBuf::from(key("onnx")), data: PathBuf::from(&self.eval_key), lock: None, ..spec.clone() };
                s3.put(&key("spec.json"), serde_json::to_vec(&remote)?).await.with_context(|| format!("uploading trial spec {}", spec.id))?;
                let command = vec!["search-trial".to_owned(), "--spec-key".to_owned(), key("spec.json")];
                let job = batch
                    .submit_job()
                    .job_name(format!("{}{}", self.name, spec.id))
                    .job_queue(&self.target.queue)
                    .job_definition(&self.target.definition)
                    .parameters("job", &self.job)
                    .parameters("trial", key("spec.json"))
                    .tags("tamp:job", &self.job)
                    .tags("tamp:queue", &self.target.queue)
                    .container_overrides(ContainerOverrides::builder().set_command(Some(command)).build())
                    .send()
                    .await
                    .map_err(|e| anyhow!("submitting trial {}: {}", spec.id, e.into_service_error()))?;
                submitted.push((next, job.job_id().unwrap_or_default().to_owned(), key("result.json")));
                next += 1;
            }
            tokio::time::sleep(self.poll).await;
            polls += 1;
            let mut still = Vec::new();
            for (i, id, result_key) in submitted.drain(..) {
                let found = s3.head(&result_key).await.with_context(|| result_key.clone())?;
                match found {
                    Some(_) => {
                        let bytes = s3.get(&result_key).await.with_context(|| result_key.clone())?;
                        results[i] = Some(serde_json::from_slice(&bytes).with_context(|| result_key.clone())?);
                        for ext in ["onnx", "spec.json", "result.json"] {
                            let _ = s3.delete(&format!("{}/{}.{ext}", self.prefix, specs[i].id)).await;
                        }
                    }
                    None => {
                        // Every few polls: a trial job that failed ends the search stage (its
                        // attempt is retried as a whole; the trials' results so far are lost).
                        if polls.is_multiple_of(5) {
                            let d =
                                batch.describe_jobs().jobs(&id).send().await.map_err(|e| anyhow!("describing trial job {id}: {}", e.into_service_error()))?;
                            if let Some(j) = d.jobs().first()
                                && j.status() == Some(&JobStatus::Failed)
                            {
                                return Err(anyhow!("trial {} (Batch job {id}) failed: {}", specs[i].id, j.status_reason().unwrap_or("no reason")));
                            }
                        }
                        still.push((i, id, result_key));
                    }
                }
            }
            submitted = still;
        }
        Ok(results.into_iter().flatten().collect())
    }
}

/// The trial container: `tamp-batch-worker search-trial --spec-key K`.
pub async fn trial_main(bucket: &str, spec_key: &str, scratch: &Path) -> Result<()> {
    let config = tamp_adapters_aws::aws_config().await;
    let s3 = S3Store::new(&config, bucket).with_kms_key(std::env::var("TAMP_KMS_KEY_ID").ok());
    let get = |key: String, to: PathBuf| {
        let s3 = &s3;
        async move {
            s3.get_to_file(&key, &to).await.with_context(|| format!("fetching {key}"))?;
            anyhow::Ok(to)
        }
    };
    std::fs::create_dir_all(scratch)?;
    let spec_path = get(spec_key.to_owned(), scratch.join("spec.json")).await?;
    let mut spec: TrialSpec = serde_json::from_slice(&std::fs::read(&spec_path)?)?;
    spec.file = get(spec.file.display().to_string(), scratch.join("trial.onnx")).await?;
    spec.data = get(spec.data.display().to_string(), scratch.join("eval.npz")).await?;
    let r = trial::measure(&spec, None).map_err(|e| anyhow!("trial {}: {e}", spec.id))?;
    let key = spec_key.strip_suffix("spec.json").map_or_else(|| format!("{spec_key}.result.json"), |p| format!("{p}result.json"));
    s3.put(&key, serde_json::to_vec(&r)?).await.with_context(|| format!("writing {key}"))?;
    let _ = std::fs::remove_dir_all(scratch);
    Ok(())
}
