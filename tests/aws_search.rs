//! Search stages on AWS (part of the `aws` test binary): trials as Batch jobs, collected
//! through the bucket, and a search resuming from its stored journal after a dead container.

use super::*;

/// Plays a search stage's container for `run` (as Batch starts it: the queue and definition
/// it submits trials to come from the environment Batch sets) and every trial job it
/// submits, until the container exits. Returns its exit status and the trial spec keys played.
async fn play_search(st: &Stack, run: &StageRun, envs: &[(&str, &str)]) -> (std::process::ExitStatus, std::collections::BTreeSet<String>) {
    let (id, _) = st.runner.find(run).await.unwrap().into_iter().next().expect("the stage's Batch job");
    let scratch = tempfile::tempdir().unwrap();
    let mut stage = tokio::process::Command::new(worker_bin())
        .args(["worker", "--job", &run.job, "--stage", &run.stage.to_string(), "--attempt", &run.attempt.to_string()])
        .current_dir(root())
        .env("TAMP_BUCKET", &st.settings.bucket)
        .env("TAMP_TABLE", &st.settings.table)
        .env("TAMP_SCRATCH", scratch.path())
        .env("AWS_BATCH_JOB_ATTEMPT", "1")
        .env("AWS_BATCH_JQ_NAME", &st.settings.batch_queue)
        .env("AWS_BATCH_JOB_ID", &id)
        .env("TAMP_TRIAL_POLL_MS", "100")
        .env("TAMP_CACHE_DIR", scratch.path().join("cache"))
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let batch = aws_sdk_batch::Client::new(&aws_config().await);
    let prefix = format!("artifacts/{}/{}/attempt-{}/trials/", run.job, run.stage, run.attempt);
    let mut played = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(s) = stage.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "the search stage did not finish");
        for key in st.svc.store.list(&prefix).await.unwrap().into_iter().filter(|k| k.ends_with(".spec.json")) {
            if played.contains(&key) {
                continue;
            }
            // The trial's Batch job, by its deterministic name.
            let n = key.trim_start_matches(&prefix).trim_end_matches(".spec.json");
            let name = format!("{}-t{n}", run.name());
            let filter = aws_sdk_batch::types::KeyValuesPair::builder().name("JOB_NAME").values(&name).build();
            let found = batch.list_jobs().job_queue(&st.settings.batch_queue).filters(filter).send().await.unwrap();
            let Some(summary) = found.job_summary_list().first() else { continue };
            let described = batch.describe_jobs().jobs(summary.job_id().unwrap()).send().await.unwrap();
            let p = described.jobs()[0].parameters().unwrap();
            assert_eq!(p.get("trial"), Some(&key), "the spec key travels in the parameters");
            assert!(p.get("stage").is_none(), "not a stage run: the orchestrator ignores its state changes");
            let ok = std::process::Command::new(worker_bin())
                .args(["search-trial", "--spec-key", &p["trial"]])
                .current_dir(root())
                .env("TAMP_BUCKET", &st.settings.bucket)
                .env("TAMP_SCRATCH", scratch.path())
                .env("TAMP_CACHE_DIR", scratch.path().join("cache"))
                .status()
                .unwrap();
            assert!(ok.success(), "trial {key}");
            played.insert(key);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    (status, played)
}

/// Measured records of a search journal (its lines after the header).
fn journal_records(text: &str) -> Vec<serde_json::Value> {
    text.lines().skip(1).map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A stack with one job of a 6-trial, 3-worker search stage on the reference CNN, its first
/// stage attempt submitted.
async fn search_job() -> (Stack, tamp_domain::job::Job) {
    let st = stack().await;
    for f in ["model.onnx", "calib.npz", "eval.npz"] {
        st.put(&format!("uploads/vision/searched/v1/{f}"), cnn_file(f)).await;
    }
    let recipe = "policy:\n  name: searched\n  stages:\n    - search: {budget_trials: 6, workers: 3, rows: 512, calibration_methods: [minmax], latency_runs: 10, confirm: 2}\n";
    st.put("uploads/vision/searched/v1/recipe.yaml", recipe.as_bytes().to_vec()).await;
    assert_eq!(st.run_ingest(1).await, 1);
    let job = st.only_job().await;
    st.run_orchestrator(1, 10).await;
    (st, job)
}

/// A search stage on AWS: its container submits each trial as a Batch job (named after the
/// stage run, the trial's spec key in `parameters`) and collects the results from the bucket
/// into its journal; the test plays every container, the stage's and each trial's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_stage_runs_its_trials_as_batch_jobs() {
    let (st, job) = search_job().await;
    let run = StageRun { job: job.id.clone(), stage: 0, attempt: 1, device: Default::default() };
    let (status, played) = play_search(&st, &run, &[]).await;
    assert!(status.success(), "the stage's container: {status}");
    st.state_change(&run, "SUCCEEDED", Some(0)).await;
    while st.run_orchestrator(1, 3).await > 0 {}
    let j = st.svc.meta.get_job(&job.id).await.unwrap().unwrap();
    assert_eq!(j.state.as_str(), "succeeded", "{j:?}");
    // Every measured record of the journal came from a trial job; nothing is left behind.
    let journal = String::from_utf8(st.svc.store.get(&format!("artifacts/{}/0/attempt-1/search/journal.jsonl", job.id)).await.unwrap()).unwrap();
    let measured = journal.lines().skip(1).count();
    assert_eq!(played.len(), measured, "one Batch job per record (reference score, trials, probes):\n{journal}");
    let prefix = format!("artifacts/{}/0/attempt-1/trials/", job.id);
    assert!(st.svc.store.list(&prefix).await.unwrap().is_empty(), "trial objects are cleaned up");
    assert!(st.svc.store.head(&format!("artifacts/{}/0/attempt-1/best.recipe.yaml", job.id)).await.unwrap().is_some());
}

/// A search stage whose container dies mid-way: the journal it uploaded after each batch of
/// trials is in the store, and the orchestrator's next attempt resumes from it, measuring
/// only what the first attempt had not. (Whether a resumed search reaches the front of a
/// straight run is the CLI's test, `search::a_killed_search_resumes_…`; two jobs measured
/// apart get different P50s, and the walk reads them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_stage_resumes_from_its_stored_journal_after_its_container_dies() {
    let (st, job) = search_job().await;
    let a1 = StageRun { job: job.id.clone(), stage: 0, attempt: 1, device: Default::default() };
    // One key per stage, shared by its attempts (`tamp_worker::search_journal_key`).
    let key = format!("artifacts/{}/0/search-journal.jsonl", job.id);
    let stored = || async { journal_records(&String::from_utf8(st.svc.store.get(&key).await.unwrap()).unwrap()) };

    // Attempt 1 dies (SIGKILL) right after uploading a journal of 2 or more records.
    let marker = tempfile::tempdir().unwrap();
    let crash = marker.path().join("crashed");
    let fault = format!("2:{}", crash.display());
    let (status, played1) = play_search(&st, &a1, &[("TAMP_FAULT_CRASH_AFTER_JOURNAL", &fault)]).await;
    assert!(!status.success() && crash.exists(), "the fault hook fired: {status}");
    let kept = stored().await;
    assert!(kept.len() >= 2, "{} records kept", kept.len());
    assert_eq!(played1.len(), kept.len(), "attempt 1 uploaded every record it measured before dying");
    st.container_died_and_retried(&a1).await;

    // Attempt 2 resumes: the kept records are replayed, and it measures only the rest.
    let a2 = StageRun { attempt: 2, ..a1.clone() };
    let (status, played2) = play_search(&st, &a2, &[]).await;
    assert!(status.success(), "{status}");
    let resumed = stored().await;
    assert!(resumed.len() > kept.len(), "the search went on: {} records", resumed.len());
    assert_eq!(resumed[..kept.len()], kept[..], "the kept records are replayed as they were, not re-measured");
    assert_eq!(played2.len(), resumed.len() - kept.len(), "attempt 2 measured only what was missing");
    let mut asked = std::collections::BTreeSet::new();
    for r in &resumed {
        assert!(asked.insert((r["kind"].to_string(), r["config"].to_string())), "measured twice: {r}");
    }
    let published = String::from_utf8(st.svc.store.get(&format!("artifacts/{}/0/attempt-2/search/journal.jsonl", job.id)).await.unwrap()).unwrap();
    assert_eq!(journal_records(&published), resumed, "the attempt's published journal is the whole search");
    st.state_change(&a2, "SUCCEEDED", Some(0)).await;
    while st.run_orchestrator(1, 3).await > 0 {}
    let j = st.svc.meta.get_job(&job.id).await.unwrap().unwrap();
    assert_eq!(j.state.as_str(), "succeeded", "{j:?}");
}
