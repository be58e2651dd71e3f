//! End-to-end: `tamp serve` in the background with the reference CNN — through the upload
//! folder and through the API only — plus signed webhooks, duplicates, bad recipes, RBAC and
//! JWTs, and a worker killed mid-stage. Needs `make models` (the Makefile's `test` target
//! does it). The security tests (tenancy, erasure, restart, hostile input) are `security.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

/// Upload folder → job → best artifact over the API; a signed `job.succeeded` webhook;
/// a killed worker retried without duplicate artifacts; POST /jobs idempotent on its key;
/// a bad recipe ends in `failed` with the line.
#[test]
fn upload_folder_to_best_artifact_with_signed_webhook() {
    let (hook, deliveries) = webhook_receiver();
    let marker = tempfile::tempdir().unwrap();
    let crash = marker.path().join("crashed-once");
    let (slack, slack_got) = webhook_receiver();
    let server = serve(&["--webhook", &hook, "--webhook-secret", "s3cret", "--slack-webhook", &slack], &[("TAMP_FAULT_CRASH_ONCE", crash.to_str().unwrap())]);
    let url = server.url.clone();
    assert_eq!(json("GET", &format!("{url}/healthz"), b"", &[]).0, 200);

    let up = server.data.path().join("store/uploads/demo/fmnist/v1");
    for f in ["model.onnx", "calib.npz", "eval.npz"] {
        upload_file(&up, f, &std::fs::read(cnn().join(f)).unwrap());
    }
    upload_file(&up, "recipe.yaml", &recipe());
    let jobs = wait_for_jobs(&url, 1, Duration::from_secs(30));
    let id = jobs[0]["id"].as_str().unwrap().to_owned();
    let job = wait_for_job(&url, &id, Duration::from_secs(180));
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(crash.exists(), "the fault hook never fired");
    assert_eq!(job["stages"][0]["attempt"], 2, "the killed attempt must be retried: {job}");

    let (s, best) = json("GET", &format!("{url}/models/demo.fmnist/best?target_runtime=onnxruntime"), b"", &[]);
    assert_eq!(s, 200, "{best}");
    assert_eq!(best["runtime"], "onnxruntime");
    assert_eq!(best["opset"]["ai.onnx"], 17);
    assert!(best["size_bytes"].as_u64().unwrap() > 10_000);
    assert!(best["metrics"]["task"]["value"].as_f64().unwrap() >= 0.99 * best["metrics"]["task"]["baseline"].as_f64().unwrap(), "{best}");
    // Most of the 9 convolutions run integer; which ones stay float for speed is timed
    // on the machine running the test, so the bar leaves room for a different CPU.
    assert!(best["compatibility"]["onnxruntime"]["integer_kernels"]["QLinearConv"].as_u64().unwrap() >= 5);
    let (s, bytes) = http("GET", best["uri"].as_str().unwrap(), b"", &[]);
    assert_eq!(s, 200);
    assert_eq!(bytes.len() as u64, best["size_bytes"].as_u64().unwrap());
    let (s, _) = http("GET", &format!("{}x", best["uri"].as_str().unwrap()), b"", &[]);
    assert_eq!(s, 403, "a tampered link must be refused");
    let artifacts = std::fs::read_dir(server.data.path().join(format!("store/artifacts/{id}/0")))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".onnx"))
        .count();
    assert_eq!(artifacts, 1, "one artifact despite two attempts");
    let scratch: Vec<_> = std::fs::read_dir(server.data.path().join("work")).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(scratch.is_empty(), "scratch of the killed attempt leaked: {scratch:?}");

    // The webhook got job.created and job.succeeded, signed over the exact body.
    let start = Instant::now();
    loop {
        let got = deliveries.lock().unwrap().clone();
        if let Some((head, body)) = got.iter().find(|(h, _)| h.to_ascii_lowercase().contains("x-tamp-event: job.succeeded")) {
            let sig = head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("x-tamp-signature:").map(|v| v.trim().to_owned())).unwrap();
            assert!(tamp_control::notify::verify(b"s3cret", body, &sig), "bad HMAC");
            assert!(!tamp_control::notify::verify(b"wrong", body, &sig));
            let event: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert_eq!(event["job"], id.as_str());
            assert_eq!(event["detail_type"], "tamp.job.succeeded");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no job.succeeded webhook: {got:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The Slack target got the same event as a Block Kit message naming the job.
    let start = Instant::now();
    loop {
        let got = slack_got.lock().unwrap().clone();
        let bodies: Vec<serde_json::Value> = got.iter().filter_map(|(_, b)| serde_json::from_slice(b).ok()).collect();
        if let Some(m) = bodies.iter().find(|m| m["text"].as_str().is_some_and(|t| t.contains(&id) && t.contains("succeeded"))) {
            assert_eq!(m["blocks"][0]["type"], "section", "{m}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no Slack message: {bodies:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // POST /jobs with one Idempotency-Key twice: one job.
    let body = br#"{"project":"demo","model":"fmnist","version":"v1"}"#;
    let (s1, a) = json("POST", &format!("{url}/jobs"), body, &[("Idempotency-Key", "k-1"), ("Content-Type", "application/json")]);
    let (s2, b) = json("POST", &format!("{url}/jobs"), body, &[("Idempotency-Key", "k-1"), ("Content-Type", "application/json")]);
    assert_eq!((s1, s2), (201, 200), "{a} {b}");
    assert_eq!(a["job"], b["job"]);
    assert_eq!(b["duplicate"], true);
    wait_for_job(&url, a["job"].as_str().unwrap(), Duration::from_secs(120));

    // A recipe with a typo: the job fails at once, naming the key and line.
    let bad = String::from_utf8(recipe()).unwrap().replace("per_channel_weights", "per_chanel_weights");
    let up2 = server.data.path().join("store/uploads/demo/fmnist/v2");
    upload_file(&up2, "model.onnx", &std::fs::read(cnn().join("model.onnx")).unwrap());
    upload_file(&up2, "recipe.yaml", bad.as_bytes());
    let start = Instant::now();
    let failed = loop {
        let (_, j) = json("GET", &format!("{url}/jobs?status=failed"), b"", &[]);
        if let Some(f) = j["jobs"].as_array().unwrap().iter().find(|j| j["version"] == "v2") {
            break f.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(20), "bad recipe did not fail a job");
        std::thread::sleep(Duration::from_millis(200));
    };
    let reason = failed["reason"].as_str().unwrap();
    assert!(reason.contains("per_chanel_weights") && reason.contains("line 10"), "{reason}");
}

/// The same through the API only: project → model → version with presigned upload links →
/// PUT the inputs through the links (no bearer token) → a stored policy (bad YAML refused
/// with its line) → POST /jobs naming the policy → poll → best → download → report.
#[test]
fn api_only_flow() {
    let server = serve(&[], &[]);
    let url = server.url.clone();
    // The OpenAPI 3.1 document is served without credentials and covers the routes.
    let (s, doc) = json("GET", &format!("{url}/openapi.json"), b"", &[("Authorization", "")]);
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    for path in ["/jobs", "/jobs/{id}", "/models/{id}/best", "/models/{id}/versions", "/policies", "/tokens", "/uploads/{project}/{model}/{version}/{file}"] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing from the OpenAPI document");
    }
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert_eq!(json("POST", &format!("{url}/projects"), br#"{"name":"web"}"#, &[]).0, 201);
    assert_eq!(json("POST", &format!("{url}/projects"), br#"{"name":"web"}"#, &[]).0, 409);
    assert_eq!(json("POST", &format!("{url}/projects/web/models"), br#"{"name":"fmnist","task":"classification"}"#, &[]).0, 201);
    let (s, v) = json("POST", &format!("{url}/models/web.fmnist/versions"), br#"{"version":"v7"}"#, &[]);
    assert_eq!(s, 201, "{v}");
    for f in ["model.onnx", "calib.npz", "eval.npz"] {
        let link = v["upload_urls"][f].as_str().unwrap();
        let (s, r) = json("PUT", link, &std::fs::read(cnn().join(f)).unwrap(), &[("Authorization", "")]);
        assert_eq!(s, 201, "{f}: {r}");
    }
    let link = v["upload_urls"]["model.onnx"].as_str().unwrap();
    let forged = link.replace("v7/model.onnx", "v8/model.onnx");
    assert_eq!(json("PUT", &forged, b"x", &[("Authorization", "")]).0, 403, "a link for one key must not open another");

    let bad =
        serde_json::json!({ "project": "web", "name": "int8", "yaml": String::from_utf8(recipe()).unwrap().replace("symmetric", "symetric") }).to_string();
    let (s, p) = json("POST", &format!("{url}/policies"), bad.as_bytes(), &[]);
    assert_eq!(s, 422, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("symetric") && p["detail"].as_str().unwrap().contains("line 11"), "{p}");
    let good = serde_json::json!({ "project": "web", "name": "int8", "yaml": String::from_utf8(recipe()).unwrap() }).to_string();
    assert_eq!(json("POST", &format!("{url}/policies"), good.as_bytes(), &[]).0, 201);
    let (s, r) = json("POST", &format!("{url}/jobs"), br#"{"project":"web","model":"fmnist","version":"v7","policy":"web.int8"}"#, &[]);
    assert_eq!(s, 201, "{r}");
    let id = r["job"].as_str().unwrap().to_owned();
    let job = wait_for_job(&url, &id, Duration::from_secs(180));
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["policy"], "ptq-8bit");
    let (_, versions) = json("GET", &format!("{url}/models/web.fmnist/versions"), b"", &[]);
    assert_eq!(versions["versions"][0]["version"], "v7");
    let (s, rep) = json("GET", &format!("{url}/reports/{id}"), b"", &[]);
    assert_eq!(s, 200);
    assert!(rep["stages"][0]["candidates"]["candidates"].as_array().is_some_and(|c| !c.is_empty()), "{rep}");
    let (_, best) = json("GET", &format!("{url}/models/web.fmnist/best"), b"", &[]);
    let (s, bytes) = http("GET", best["uri"].as_str().unwrap(), b"", &[]);
    assert_eq!(s, 200);
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), best["sha256"].as_str().unwrap());
    let (s, after) = json("POST", &format!("{url}/jobs/{id}/cancel"), b"", &[]);
    assert_eq!((s, after["state"].as_str()), (200, Some("succeeded")), "a terminal job never changes");
    let (s, p) = json("PUT", &format!("{url}/uploads/Bad/fmnist/v1/model.onnx"), b"x", &[]);
    assert_eq!(s, 400, "{p}");
    assert_eq!(p["status"], 400);
    let (s, _) = json("GET", &format!("{url}/jobs/job_nope"), b"", &[]);
    assert_eq!(s, 404);
    // A corrupt model: the worker reports bad input, the job fails at once with the reason
    // (no retries), and the earlier job and its best artifact are untouched.
    let bytes = std::fs::read(cnn().join("model.onnx")).unwrap();
    for (f, b) in [("model.onnx", bytes[..bytes.len() / 3].to_vec()), ("eval.npz", std::fs::read(cnn().join("eval.npz")).unwrap())] {
        assert_eq!(http("PUT", &format!("{url}/uploads/web/fmnist/v8/{f}"), &b, &[]).0, 201);
    }
    let _ = &server;
    let (_, r) = json("PUT", &format!("{url}/uploads/web/fmnist/v8/recipe.yaml"), &recipe(), &[]);
    let bad = wait_for_job(&url, r["job"].as_str().unwrap(), Duration::from_secs(60));
    assert_eq!(bad["state"], "failed", "{bad}");
    assert_eq!(bad["stages"][0]["attempt"], 1, "bad input must not be retried: {bad}");
    assert!(
        bad["reason"].as_str().unwrap().contains("not a valid ONNX model") && bad["reason"].as_str().unwrap().contains("uploads/web/fmnist/v8/model.onnx"),
        "the reason names the file: {bad}"
    );
    let (_, best_after) = json("GET", &format!("{url}/models/web.fmnist/best"), b"", &[]);
    assert_eq!(best_after["artifact_id"], best["artifact_id"]);
    // Every event went to the event log.
    let log = std::fs::read_to_string(server.data.path().join("events.jsonl")).unwrap();
    assert!(log.contains("tamp.job.created") && log.contains("tamp.job.succeeded") && log.contains("tamp.report.ready"), "{log}");
    // The report step stored the finished job's report, and the API serves that document.
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(server.data.path().join(format!("store/reports/{id}/report.json"))).unwrap()).unwrap();
    assert_eq!(stored, rep, "the API served the stored report");
    // The rendered report, by `?format=` or by `Accept`.
    let (s, pdf) = http("GET", &format!("{url}/reports/{id}?format=pdf"), b"", &[]);
    assert!(s == 200 && pdf.starts_with(b"%PDF-"), "{s}");
    let (s, html) = http("GET", &format!("{url}/reports/{id}"), b"", &[("Accept", "text/html,application/xhtml+xml")]);
    let html = String::from_utf8_lossy(&html);
    assert!(s == 200 && html.contains("<h2>Cost projection</h2>") && html.contains("Recommendation:"), "{s}");
    let verdict = rep["summary"]["recommendation"].as_str().unwrap_or_default();
    assert!(["ship", "ship_with_caveats"].contains(&verdict), "int8 ResNet-8 within budget: {}", rep["summary"]);
    assert_eq!(http("GET", &format!("{url}/reports/{id}?format=docx"), b"", &[]).0, 400);
    assert_eq!(http("GET", &format!("{url}/reports/{id}"), b"", &[("Accept", "image/png")]).0, 406);
}

/// Many jobs at once on the same upload (distinct Idempotency-Keys), with fewer worker slots
/// than jobs: every one completes, none is lost or duplicated.
#[test]
fn concurrent_jobs_all_complete() {
    let server = serve(&["--concurrency", "2"], &[]);
    let url = server.url.clone();
    for f in ["model.onnx", "calib.npz", "eval.npz"] {
        assert_eq!(http("PUT", &format!("{url}/uploads/load/fmnist/v1/{f}"), &std::fs::read(cnn().join(f)).unwrap(), &[]).0, 201);
    }
    // A fast stage: no timing runs to speak of, a small evaluation sample.
    let fast = String::from_utf8(recipe()).unwrap() + "evaluation:\n  samples: 256\n  latency_runs: 5\n";
    let up = server.data.path().join("store/uploads/load/fmnist/v1");
    upload_file(&up, "recipe.yaml", fast.as_bytes());
    let first = wait_for_jobs(&url, 1, Duration::from_secs(30))[0]["id"].as_str().unwrap().to_owned();
    let n = 24;
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let body = br#"{"project":"load","model":"fmnist","version":"v1"}"#;
                let (s, r) = json("POST", &format!("{url}/jobs"), body, &[("Idempotency-Key", &format!("load-{i}"))]);
                assert_eq!(s, 201, "{r}");
                r["job"].as_str().unwrap().to_owned()
            })
        })
        .collect();
    let mut ids: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    ids.push(first);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n + 1, "duplicate job ids");
    // Prometheus scrapes while the jobs run: every job is counted in some state.
    let during = scrape(&url);
    let states = ["queued", "planning", "running", "succeeded", "failed", "cancelled"];
    let counted: f64 = states.iter().map(|s| sample(&during, &format!("tamp_jobs{{state=\"{s}\"}}"))).sum();
    assert_eq!(counted, (n + 1) as f64, "{during}");
    assert!(during.contains("tamp_queue_messages ") && during.contains("tamp_queue_oldest_message_age_seconds "), "{during}");
    for id in &ids {
        assert_eq!(wait_for_job(&url, id, Duration::from_secs(300))["state"], "succeeded");
    }
    let (_, all) = json("GET", &format!("{url}/jobs?status=succeeded&limit=1000"), b"", &[]);
    assert_eq!(all["jobs"].as_array().unwrap().len(), n + 1);
    let after = scrape(&url);
    assert_eq!(sample(&after, "tamp_jobs{state=\"succeeded\"}"), (n + 1) as f64, "{after}");
    assert_eq!(sample(&after, "tamp_api_request_duration_seconds_count{method=\"POST\",route=\"/jobs\",status=\"201\"}"), n as f64, "{after}");
    let stages: f64 = after.lines().filter(|l| l.starts_with("tamp_stage_duration_seconds_count{") && l.contains("outcome=\"succeeded\"")).map(value).sum();
    assert_eq!(stages, (n + 1) as f64, "one timed stage per job: {after}");
    // Job counts span every project: viewers may not scrape.
    let (_, viewer) = json("POST", &format!("{url}/tokens"), br#"{"subject":"dash","project":"load","role":"viewer","ttl_days":1}"#, &[]);
    let bearer = format!("Bearer {}", viewer["token"].as_str().unwrap());
    assert_eq!(http("GET", &format!("{url}/metrics"), b"", &[("Authorization", &bearer)]).0, 403);
}

fn scrape(url: &str) -> String {
    let (s, body) = http("GET", &format!("{url}/metrics"), b"", &[]);
    assert_eq!(s, 200);
    String::from_utf8(body).unwrap()
}

fn value(line: &str) -> f64 {
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// The value of the sample named exactly `name` (with its labels), 0 when absent.
fn sample(text: &str, name: &str) -> f64 {
    text.lines().find(|l| l.starts_with(&format!("{name} "))).map_or(0.0, value)
}

fn hs256(secret: &[u8], claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), claims, &jsonwebtoken::EncodingKey::from_secret(secret)).unwrap()
}

/// RBAC with API tokens and JWTs: viewers cannot create jobs or upload policies, editors
/// cannot mint tokens, missing/forged/expired/wrong-audience credentials get 401, the rate
/// limit answers 429 with Retry-After, and token creation and downloads are audited.
#[test]
fn rbac_jwt_and_rate_limit() {
    let secret = "0123456789abcdef0123456789abcdef-test";
    let server = serve(&["--jwt-issuer", "https://idp.example", "--jwt-audience", "tamp", "--jwt-secret", secret, "--rate-limit", "40"], &[]);
    let url = server.url.clone();
    let mint = |role: &str, project: &str| {
        let body = serde_json::json!({ "subject": format!("{role}-user"), "project": project, "role": role }).to_string();
        let (s, r) = json("POST", &format!("{url}/tokens"), body.as_bytes(), &[]);
        assert_eq!(s, 201, "{r}");
        format!("Bearer {}", r["token"].as_str().unwrap())
    };
    let viewer = mint("viewer", "team");
    let editor = mint("editor", "team");
    let job_body = br#"{"project":"team","model":"m","version":"v1"}"#;

    let (s, p) = json("POST", &format!("{url}/jobs"), job_body, &[("Authorization", &viewer)]);
    assert_eq!(s, 403, "viewer created a job: {p}");
    let (s, _) = json("PUT", &format!("{url}/uploads/team/m/v1/recipe.yaml"), &recipe(), &[("Authorization", &viewer)]);
    assert_eq!(s, 403, "viewer uploaded a policy");
    let policy = serde_json::json!({ "project": "team", "name": "p", "yaml": String::from_utf8(recipe()).unwrap() }).to_string();
    assert_eq!(json("POST", &format!("{url}/policies"), policy.as_bytes(), &[("Authorization", &viewer)]).0, 403, "viewer created a policy");
    assert_eq!(json("GET", &format!("{url}/jobs"), b"", &[("Authorization", &viewer)]).0, 200);
    let (s, _) = json("GET", &format!("{url}/models/other.m/best"), b"", &[("Authorization", &viewer)]);
    assert_eq!(s, 403, "a team token read another project");
    let (s, p) = json("POST", &format!("{url}/tokens"), br#"{"subject":"x","project":"team","role":"viewer"}"#, &[("Authorization", &editor)]);
    assert_eq!(s, 403, "editor minted a token: {p}");
    // The editor may upload (the job then fails: no model uploaded) and create jobs.
    let (s, p) = json("PUT", &format!("{url}/uploads/team/m/v1/recipe.yaml"), &recipe(), &[("Authorization", &editor)]);
    assert_eq!(s, 201, "{p}");

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims =
        |aud: &str, exp: u64| serde_json::json!({ "sub": "alice", "iss": "https://idp.example", "aud": aud, "exp": exp, "tamp_roles": { "team": "editor" } });
    let good = format!("Bearer {}", hs256(secret.as_bytes(), &claims("tamp", now + 600)));
    assert_eq!(json("POST", &format!("{url}/jobs"), job_body, &[("Authorization", &good)]).0, 201);
    for (bad, why) in [
        (format!("Bearer {}", hs256(b"another-secret-another-secret-0000", &claims("tamp", now + 600))), "forged"),
        (format!("Bearer {}", hs256(secret.as_bytes(), &claims("tamp", now - 3600))), "expired"),
        (format!("Bearer {}", hs256(secret.as_bytes(), &claims("someone-else", now + 600))), "wrong audience"),
        ("Bearer tamp_0000".to_owned(), "unknown token"),
        (String::new(), "no credential"),
    ] {
        let (s, p) = json("GET", &format!("{url}/jobs"), b"", &[("Authorization", &bad)]);
        assert_eq!(s, 401, "{why}: {p}");
        assert_eq!(p["status"], 401);
    }

    // The viewer has made 4 requests; 40 per minute allowed.
    let mut limited = None;
    for i in 0..60 {
        let (s, head) = {
            let (s, b) = http("GET", &format!("{url}/jobs"), b"", &[("Authorization", &viewer)]);
            (s, b)
        };
        if s == 429 {
            limited = Some((i, head));
            break;
        }
    }
    let (i, body) = limited.expect("no 429 within 60 requests at a 40/min limit");
    assert!(i >= 30, "limited after only {i} requests");
    assert!(String::from_utf8_lossy(&body).contains("requests per minute"));
    // Other principals are not affected.
    assert_eq!(json("GET", &format!("{url}/jobs"), b"", &[]).0, 200);

    let (_, audit) = json("GET", &format!("{url}/audit"), b"", &[]);
    let actions: Vec<&str> = audit["audit"].as_array().unwrap().iter().map(|a| a["action"].as_str().unwrap()).collect();
    assert!(actions.iter().filter(|a| **a == "token.create").count() >= 2 && actions.contains(&"policy.upload"), "{actions:?}");
    let (s, _) = json("GET", &format!("{url}/audit"), b"", &[("Authorization", &editor)]);
    assert_eq!(s, 403);
}

/// The client verbs against `tamp serve`: login, jobs submit --wait, list, get, best,
/// download (sha256 checked), and a clear error for a bad token.
#[test]
fn client_verbs() {
    let server = serve(&[], &[]);
    let cfg = tempfile::tempdir().unwrap();
    let t = |args: &[&str]| {
        let o = Command::new(tamp()).args(args).env("TAMP_CONFIG_DIR", cfg.path()).env_remove("TAMP_URL").env_remove("TAMP_TOKEN").output().unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (ok, out, err) = t(&["login", "--local", server.data.path().to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let dir = cnn();
    let (ok, out, err) = t(&[
        "jobs",
        "submit",
        "--project",
        "cli",
        "--model",
        "fmnist",
        "--version",
        "v1",
        "--model-file",
        dir.join("model.onnx").to_str().unwrap(),
        "--data",
        dir.join("calib.npz").to_str().unwrap(),
        "--eval",
        dir.join("eval.npz").to_str().unwrap(),
        "--recipe",
        root().join("configs/policy_examples/ptq_8bit.yaml").to_str().unwrap(),
        "--wait",
    ]);
    assert!(ok, "{out}{err}");
    let job: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(job["state"], "succeeded", "{job}");
    // The recipe upload was seen twice (the PUT and the folder watcher): still one job.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(json("GET", &format!("{}/jobs", server.url), b"", &[]).1["jobs"].as_array().unwrap().len(), 1);
    let (ok, out, _) = t(&["jobs", "list", "--status", "succeeded"]);
    assert!(ok && out.contains(job["id"].as_str().unwrap()), "{out}");
    let (ok, out, _) = t(&["best", "cli.fmnist"]);
    assert!(ok && out.contains("\"runtime\": \"onnxruntime\""), "{out}");
    let file = cfg.path().join("best.onnx");
    let (ok, out, err) = t(&["download", "cli.fmnist", "-o", file.to_str().unwrap()]);
    assert!(ok && out.contains("verified"), "{out}{err}");
    assert!(std::fs::metadata(&file).unwrap().len() > 10_000);
    let (ok, _, err) = t(&["jobs", "list", "--token", "tamp_wrong"]);
    assert!(!ok && err.contains("401") && err.lines().count() == 1, "{err}");
}

/// A stage that always crashes: retried up to the budget, then the job fails naming the
/// attempts and the cause.
#[test]
fn a_stage_that_always_fails_ends_the_job_failed() {
    let server = serve(&["--max-attempts", "2"], &[("TAMP_FAULT_CRASH_ALWAYS", "1")]);
    let url = server.url.clone();
    let up = server.data.path().join("store/uploads/flaky/fmnist/v1");
    for f in ["model.onnx", "calib.npz", "eval.npz"] {
        upload_file(&up, f, &std::fs::read(cnn().join(f)).unwrap());
    }
    let fast = String::from_utf8(recipe()).unwrap() + "evaluation:\n  samples: 128\n  latency_runs: 5\n";
    upload_file(&up, "recipe.yaml", fast.as_bytes());
    let id = wait_for_jobs(&url, 1, Duration::from_secs(30))[0]["id"].as_str().unwrap().to_owned();
    let job = wait_for_job(&url, &id, Duration::from_secs(120));
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["stages"][0]["attempt"], 2);
    let reason = job["reason"].as_str().unwrap();
    assert!(reason.contains("after 2 attempt(s)") && reason.contains("killed by signal 9"), "{reason}");
    let log = std::fs::read_to_string(server.data.path().join("events.jsonl")).unwrap();
    assert_eq!(log.matches("tamp.stage.failed").count(), 2, "{log}");
    assert!(log.contains("tamp.job.failed"));
}

/// RS256 JWTs checked against a JWKS (file, and the same served over HTTP): the right key
/// passes, an unknown `kid` and an HS256 token are refused.
#[test]
fn rs256_jwks() {
    let fixtures = root().join("tests/fixtures");
    let pem = std::fs::read(fixtures.join("jwt-test-rsa.pem")).unwrap();
    let jwks = std::fs::read(fixtures.join("jwt-test-jwks.json")).unwrap();
    // Serve the JWKS over HTTP too.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let jwks_url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let body = jwks.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 2048];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).as_bytes(),
            );
            let _ = stream.write_all(&body);
        }
    });
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({ "sub": "bob", "iss": "https://idp.example", "aud": "tamp", "exp": now + 600, "tamp_roles": { "*": "viewer" } });
    let sign = |kid: &str| {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        h.kid = Some(kid.into());
        format!("Bearer {}", jsonwebtoken::encode(&h, &claims, &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap())
    };
    for source in [fixtures.join("jwt-test-jwks.json").to_str().unwrap().to_owned(), jwks_url] {
        let server = serve(&["--jwt-issuer", "https://idp.example", "--jwt-audience", "tamp", "--jwks", &source], &[]);
        let url = server.url.clone();
        assert_eq!(json("GET", &format!("{url}/jobs"), b"", &[("Authorization", &sign("test-key-1"))]).0, 200, "{source}");
        assert_eq!(json("GET", &format!("{url}/jobs"), b"", &[("Authorization", &sign("other-key"))]).0, 401);
        let hs = format!("Bearer {}", hs256(b"0123456789abcdef0123456789abcdef", &claims));
        assert_eq!(json("GET", &format!("{url}/jobs"), b"", &[("Authorization", &hs)]).0, 401, "HS256 accepted where RS256 is configured");
        // Viewer everywhere: cannot create projects.
        assert_eq!(json("POST", &format!("{url}/projects"), br#"{"name":"x"}"#, &[("Authorization", &sign("test-key-1"))]).0, 403);
    }
}
