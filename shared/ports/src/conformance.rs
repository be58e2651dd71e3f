//! The port contracts as executable checks. Each adapter's tests call these with a fresh
//! instance; the AWS adapters run the same functions against the emulator. A check panics
//! with what broke.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic is the report

use std::time::Duration;

use tamp_domain::job::{Job, JobInputs, JobStage, JobState, StageState};

use crate::{ArtifactRecord, AuditRecord, Created, MetadataStore, ObjectStore, PortError, PutOutcome, Queue, Role, TokenRecord};

/// put/get/head/list/delete, `put_if_absent` never overwrites, bad keys refused.
pub async fn object_store(store: &dyn ObjectStore) {
    store.put("a/b/one.bin", b"one".to_vec()).await.unwrap();
    assert_eq!(store.get("a/b/one.bin").await.unwrap(), b"one");
    let meta = store.head("a/b/one.bin").await.unwrap().expect("head of an existing key");
    assert_eq!(meta.size, 3);
    assert!(store.head("a/b/none.bin").await.unwrap().is_none());
    assert!(matches!(store.get("a/b/none.bin").await, Err(PortError::NotFound(_))));

    assert_eq!(store.put_if_absent("a/c/two.bin", b"two".to_vec()).await.unwrap(), PutOutcome::Created);
    assert_eq!(store.put_if_absent("a/c/two.bin", b"other".to_vec()).await.unwrap(), PutOutcome::Exists);
    assert_eq!(store.get("a/c/two.bin").await.unwrap(), b"two", "put_if_absent overwrote");

    store.put("a/b/one.bin", b"uno!".to_vec()).await.unwrap();
    let meta2 = store.head("a/b/one.bin").await.unwrap().unwrap();
    assert_ne!(meta.version, meta2.version, "a rewrite must change the version marker");

    assert_eq!(store.list("a/").await.unwrap(), vec!["a/b/one.bin".to_owned(), "a/c/two.bin".to_owned()]);
    assert_eq!(store.list("a/c/").await.unwrap(), vec!["a/c/two.bin".to_owned()]);
    assert!(store.list("zzz/").await.unwrap().is_empty());

    let dir = std::env::temp_dir().join(format!("tamp-conformance-{}-{:p}", std::process::id(), store));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("src.bin");
    std::fs::write(&src, vec![7u8; 100_000]).unwrap();
    store.put_file("big/file.bin", &src).await.unwrap();
    let dst = dir.join("dst.bin");
    store.get_to_file("big/file.bin", &dst).await.unwrap();
    assert_eq!(std::fs::read(&dst).unwrap(), vec![7u8; 100_000]);
    let _ = std::fs::remove_dir_all(&dir);

    store.delete("a/b/one.bin").await.unwrap();
    assert!(store.head("a/b/one.bin").await.unwrap().is_none());
    for bad in ["", "/abs", "a/../b", "a//b", "a/./b"] {
        assert!(matches!(store.put(bad, vec![]).await, Err(PortError::Invalid(_))), "key '{bad}' accepted");
    }
    let url = store.presign_get("a/c/two.bin", Duration::from_secs(300), 1000).await.unwrap();
    assert!(url.contains("a/c/two.bin") || url.contains("a%2Fc%2Ftwo.bin"), "{url}");
    assert!(store.presign_get("a/c/two.bin", Duration::from_secs(3600), 1000).await.is_err(), "presigned URLs are capped at 15 minutes");
    let put = store.presign_put("up/x.bin", Duration::from_secs(300), 1000).await.unwrap();
    assert!(put.contains("up/x.bin") && put != store.presign_get("up/x.bin", Duration::from_secs(300), 1000).await.unwrap(), "{put}");
}

fn job(id: &str, created_at: u64) -> Job {
    Job {
        id: id.into(),
        project: "p".into(),
        model: "m".into(),
        version: "v1".into(),
        policy: "ptq".into(),
        recipe_yaml: "policy: {name: ptq, stages: [ptq: {}]}".into(),
        inputs: JobInputs { model: "uploads/p/m/v1/model.onnx".into(), calibration: None, evaluation: None, train: None },
        state: JobState::Queued,
        stages: vec![JobStage {
            index: 0,
            kind: "ptq".into(),
            state: StageState::Pending,
            attempt: 0,
            max_attempts: 3,
            not_before: None,
            reason: None,
            output: None,
            updated_at: 0,
            started_at: None,
            device: tamp_domain::recipe::Device::Cpu,
        }],
        reason: None,
        created_at,
        updated_at: created_at,
        revision: 0,
        outbox: Vec::new(),
    }
}

fn artifact(id: &str, score: f64) -> ArtifactRecord {
    ArtifactRecord {
        id: id.into(),
        job: "job_a".into(),
        stage: 0,
        model_id: "p.m".into(),
        runtime: "onnxruntime".into(),
        key: format!("artifacts/job_a/0/{id}.onnx"),
        metadata_key: format!("artifacts/job_a/0/{id}.json"),
        sha256: id.into(),
        size_bytes: 10,
        metadata: serde_json::json!({"runtime": "onnxruntime"}),
        score,
        eligible: true,
        created_at: 5,
    }
}

/// Idempotent creation, conditional updates, listing by state, best-artifact pointer.
pub async fn metadata_store(store: &dyn MetadataStore) {
    assert_eq!(store.create_job(&job("job_a", 1), "upload:x").await.unwrap(), Created::New);
    assert_eq!(store.create_job(&job("job_b", 2), "upload:x").await.unwrap(), Created::Duplicate("job_a".into()), "same idempotency key, second job");
    assert!(store.get_job("job_b").await.unwrap().is_none(), "a duplicate must not be stored");
    assert!(matches!(store.create_job(&job("job_a", 1), "upload:y").await, Err(PortError::Conflict(_))), "same job id twice");

    let mut j = store.get_job("job_a").await.unwrap().unwrap();
    assert_eq!(j, job("job_a", 1));
    j.state = JobState::Planning;
    j.revision = 1;
    store.update_job(&j, 0).await.unwrap();
    let mut stale = j.clone();
    stale.state = JobState::Failed;
    stale.revision = 2;
    assert!(matches!(store.update_job(&stale, 0).await, Err(PortError::Conflict(_))), "a stale revision must lose");
    assert_eq!(store.get_job("job_a").await.unwrap().unwrap().state, JobState::Planning);
    assert!(matches!(store.update_job(&job("job_zz", 0), 0).await, Err(PortError::NotFound(_)) | Err(PortError::Conflict(_))));

    store.create_job(&job("job_c", 3), "upload:z").await.unwrap();
    let ids: Vec<String> = store.list_jobs(None, 10).await.unwrap().into_iter().map(|j| j.id).collect();
    assert_eq!(ids, ["job_c", "job_a"], "newest first");
    let planning: Vec<String> = store.list_jobs(Some(JobState::Planning), 10).await.unwrap().into_iter().map(|j| j.id).collect();
    assert_eq!(planning, ["job_a"]);
    assert_eq!(store.list_jobs(None, 1).await.unwrap().len(), 1);

    assert!(store.put_artifact(&artifact("art_1", 0.5)).await.unwrap());
    assert!(!store.put_artifact(&artifact("art_2", 0.4)).await.unwrap(), "a worse artifact must not become best");
    assert_eq!(store.best_artifact("p.m", "onnxruntime").await.unwrap().unwrap().id, "art_1");
    assert!(store.put_artifact(&artifact("art_3", 0.9)).await.unwrap());
    assert_eq!(store.best_artifact("p.m", "onnxruntime").await.unwrap().unwrap().id, "art_3");
    store.put_artifact(&artifact("art_3", 0.9)).await.unwrap(); // re-recording is harmless
    assert_eq!(store.best_artifact("p.m", "onnxruntime").await.unwrap().unwrap().id, "art_3");
    assert_eq!(store.get_artifact("art_2").await.unwrap().unwrap(), artifact("art_2", 0.4));
    assert!(store.best_artifact("p.m", "tflite").await.unwrap().is_none());
    let missed = ArtifactRecord { eligible: false, model_id: "p.n".into(), ..artifact("art_4", 99.0) };
    assert!(!store.put_artifact(&missed).await.unwrap(), "an artifact that missed its constraints became best");
    assert!(store.best_artifact("p.n", "onnxruntime").await.unwrap().is_none(), "not even as the first one");
    assert!(store.get_artifact("art_4").await.unwrap().is_some(), "it is still recorded");

    let token = TokenRecord {
        id: "tok_1".into(),
        hash: "ab".repeat(32),
        subject: "ci".into(),
        project: "p".into(),
        role: Role::Editor,
        created_at: 1,
        expires_at: 100,
        created_by: "admin".into(),
    };
    store.put_token(&token).await.unwrap();
    assert_eq!(store.token_by_hash(&"ab".repeat(32)).await.unwrap(), Some(token.clone()));
    assert!(store.token_by_hash(&"cd".repeat(32)).await.unwrap().is_none());
    assert!(matches!(store.put_token(&token).await, Err(PortError::Conflict(_))), "a token id or hash twice");

    for (t, action) in [(1, "token.create"), (2, "download")] {
        store.append_audit(&AuditRecord { time: t, actor: "tok_1".into(), action: action.into(), resource: "r".into(), detail: String::new() }).await.unwrap();
    }
    let audit: Vec<String> = store.list_audit(10).await.unwrap().into_iter().map(|a| a.action).collect();
    assert_eq!(audit, ["download", "token.create"], "newest first");

    assert!(store.put_record("model", "p.a", &serde_json::json!({"n": 1}), true).await.unwrap());
    assert!(!store.put_record("model", "p.a", &serde_json::json!({"n": 2}), true).await.unwrap(), "if_absent overwrote");
    assert_eq!(store.get_record("model", "p.a").await.unwrap(), Some(serde_json::json!({"n": 1})));
    assert!(store.put_record("model", "p.a", &serde_json::json!({"n": 3}), false).await.unwrap());
    store.put_record("model", "q.b", &serde_json::json!({"n": 4}), true).await.unwrap();
    store.put_record("project", "p.z", &serde_json::json!({}), true).await.unwrap();
    assert_eq!(store.list_records("model", "p.").await.unwrap(), vec![serde_json::json!({"n": 3})]);
    assert_eq!(store.list_records("model", "").await.unwrap().len(), 2);
    assert!(store.get_record("project", "p.a").await.unwrap().is_none(), "kinds are separate");

    // Deletion removes the record, its idempotency keys and pointers, and nothing else.
    store.delete_job("job_a").await.unwrap();
    assert!(store.get_job("job_a").await.unwrap().is_none());
    assert_eq!(store.create_job(&job("job_d", 4), "upload:x").await.unwrap(), Created::New, "a deleted job's idempotency key still blocks new jobs");
    store.delete_job("job_a").await.unwrap(); // absent: no error
    assert!(store.get_job("job_c").await.unwrap().is_some());
    store.delete_artifact("art_3").await.unwrap();
    assert!(store.get_artifact("art_3").await.unwrap().is_none());
    assert!(store.best_artifact("p.m", "onnxruntime").await.unwrap().is_none(), "a best pointer outlived its artifact");
    assert!(store.get_artifact("art_1").await.unwrap().is_some());
    store.delete_artifact("art_3").await.unwrap();
    assert!(store.delete_record("model", "p.a").await.unwrap());
    assert!(!store.delete_record("model", "p.a").await.unwrap());
    assert!(store.get_record("model", "q.b").await.unwrap().is_some());
    assert_eq!(store.list_tokens().await.unwrap(), vec![token.clone()]);
    assert!(store.delete_token("tok_1").await.unwrap());
    assert!(!store.delete_token("tok_1").await.unwrap());
    assert!(store.token_by_hash(&"ab".repeat(32)).await.unwrap().is_none(), "a deleted token still authenticates");
    assert!(store.list_tokens().await.unwrap().is_empty());
}

/// At-least-once delivery, visibility timeout, ack, dead letters after `max_receives`.
/// `max_receives` is what the adapter under test was configured with.
pub async fn queue(q: &dyn Queue, max_receives: u32) {
    // Whole seconds: SQS counts delays and visibility timeouts in seconds.
    q.send("one".into(), Duration::ZERO).await.unwrap();
    q.send("later".into(), Duration::from_secs(1)).await.unwrap();
    let got = q.receive(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(got.iter().map(|d| d.body.as_str()).collect::<Vec<_>>(), ["one"], "delayed message delivered early");
    assert_eq!(got[0].receive_count, 1);
    assert!(q.receive(10, Duration::from_secs(1)).await.unwrap().is_empty(), "in-flight message delivered twice");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let mut again = q.receive(10, Duration::from_secs(30)).await.unwrap();
    again.sort_by(|a, b| a.body.cmp(&b.body));
    assert_eq!(again.iter().map(|d| d.body.as_str()).collect::<Vec<_>>(), ["later", "one"], "unacked message must come back");
    let one = again.iter().find(|d| d.body == "one").unwrap();
    assert_eq!(one.receive_count, 2);
    for d in &again {
        q.ack(&d.receipt).await.unwrap();
    }
    assert!(q.receive(10, Duration::ZERO).await.unwrap().is_empty());

    q.send("poison".into(), Duration::ZERO).await.unwrap();
    for _ in 0..max_receives {
        let d = q.receive(1, Duration::ZERO).await.unwrap();
        assert_eq!(d.len(), 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(q.receive(1, Duration::ZERO).await.unwrap().is_empty(), "poison message not dead-lettered");
    assert_eq!(q.dead_letters().await.unwrap(), ["poison"]);
}
