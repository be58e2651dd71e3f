//! End-to-end: `tamp serve` in the background with the reference CNN — through the upload
//! folder and through the API only — plus signed webhooks, duplicates, bad recipes and a
//! worker killed mid-stage. Needs `make models` (the Makefile's `test` target does it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())).join("..")
}

fn tamp() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("tamp")
}

fn cnn() -> PathBuf {
    let dir = root().join("models/fmnist-resnet8");
    assert!(dir.join("model.onnx").exists(), "run `make models`");
    dir
}

/// A `tamp serve` child, killed on drop.
struct Server {
    child: Child,
    url: String,
    data: tempfile::TempDir,
}

/// Admin tokens by `host:port`: `http` sends the server's token unless a request names its
/// own `Authorization` (an empty one sends none).
static TOKENS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(extra: &[&str], envs: &[(&str, &str)]) -> Server {
    let data = tempfile::tempdir().unwrap();
    let (child, url) = start(data.path(), extra, envs);
    Server { child, url, data }
}

/// Starts `tamp serve` on the data folder `data` (new or left by an earlier server).
fn start(data: &Path, extra: &[&str], envs: &[(&str, &str)]) -> (Child, String) {
    let mut cmd = Command::new(tamp());
    cmd.arg("serve").arg("--data-dir").arg(data).args(["--port", "0", "--retry-delay", "0"]).args(extra).stdout(Stdio::piped()).stderr(Stdio::inherit());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.split("API on ").nth(1).and_then(|s| s.split(';').next()).unwrap_or_else(|| panic!("no URL in: {line}")).to_owned();
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap().trim().to_owned();
    TOKENS.lock().unwrap().push((url.trim_start_matches("http://").to_owned(), token));
    (child, url)
}

/// Minimal HTTP/1.1 client: (status, body).
fn http(method: &str, url: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut s = TcpStream::connect(host).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    let own_auth = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
    if !own_auth && let Some((_, t)) = TOKENS.lock().unwrap().iter().find(|(h, _)| h == host) {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in headers.iter().filter(|(_, v)| !v.is_empty()) {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // A server refusing a large body (413) may answer and close before reading it all.
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => resp.extend_from_slice(&buf[..n]),
            Err(e) if resp.is_empty() => panic!("{method} {url}: {e}"),
            Err(_) => break,
        }
    }
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = resp[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..end]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[end + 2..end + 2 + n]);
        b = &b[end + 4 + n..];
    }
}

fn json(method: &str, url: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let (s, b) = http(method, url, body, headers);
    (s, serde_json::from_slice(&b).unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&b).into_owned())))
}

fn wait_for_job(url: &str, id: &str, within: Duration) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let (s, j) = json("GET", &format!("{url}/jobs/{id}"), b"", &[]);
        assert_eq!(s, 200, "{j}");
        if ["succeeded", "failed", "cancelled"].contains(&j["state"].as_str().unwrap()) {
            return j;
        }
        assert!(start.elapsed() < within, "job {id} still {} after {within:?}: {j}", j["state"]);
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_for_jobs(url: &str, n: usize, within: Duration) -> Vec<serde_json::Value> {
    let start = Instant::now();
    loop {
        let (_, j) = json("GET", &format!("{url}/jobs"), b"", &[]);
        let jobs = j["jobs"].as_array().unwrap().clone();
        if jobs.len() >= n {
            return jobs;
        }
        assert!(start.elapsed() < within, "{} job(s) after {within:?}, expected {n}", jobs.len());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Writes a file the way an uploader should: to a temporary name, then renamed.
fn upload_file(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    let tmp = dir.join(format!(".{name}.part"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(tmp, dir.join(name)).unwrap();
}

fn recipe() -> Vec<u8> {
    std::fs::read(root().join("configs/policy_examples/ptq_8bit.yaml")).unwrap()
}

/// Webhook deliveries seen so far: (headers, body).
type Deliveries = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Records webhook deliveries.
fn webhook_receiver() -> (String, Deliveries) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut r = BufReader::new(stream);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let len = head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())).unwrap_or(0);
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            sink.lock().unwrap().push((head, body));
            let _ = r.get_mut().write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (url, got)
}

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
    assert!(best["compatibility"]["onnxruntime"]["integer_kernels"]["QLinearConv"].as_u64().unwrap() >= 8);
    let (s, bytes) = http("GET", best["uri"].as_str().unwrap(), b"", &[]);
    assert_eq!(s, 200);
    assert_eq!(bytes.len() as u64, best["size_bytes"].as_u64().unwrap());
    let (s, _) = http("GET", &format!("{}x", best["uri"].as_str().unwrap()), b"", &[]);
    assert_eq!(s, 403, "a tampered link must be refused");
    let artifacts = std::fs::read_dir(server.data.path().join(format!("store/artifacts/{id}/0"))).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".onnx")).count();
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

    let bad = serde_json::json!({ "project": "web", "name": "int8", "yaml": String::from_utf8(recipe()).unwrap().replace("symmetric", "symetric") }).to_string();
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
    assert!(bad["reason"].as_str().unwrap().contains("not a valid ONNX model") && bad["reason"].as_str().unwrap().contains("uploads/web/fmnist/v8/model.onnx"), "the reason names the file: {bad}");
    let (_, best_after) = json("GET", &format!("{url}/models/web.fmnist/best"), b"", &[]);
    assert_eq!(best_after["artifact_id"], best["artifact_id"]);
    // Every event went to the event log.
    let log = std::fs::read_to_string(server.data.path().join("events.jsonl")).unwrap();
    assert!(log.contains("tamp.job.created") && log.contains("tamp.job.succeeded") && log.contains("tamp.report.ready"), "{log}");
    // The report step stored the finished job's report, and the API serves that document.
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(server.data.path().join(format!("store/reports/{id}/report.json"))).unwrap()).unwrap();
    assert_eq!(stored, rep, "the API served the stored report");
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
    for id in &ids {
        assert_eq!(wait_for_job(&url, id, Duration::from_secs(300))["state"], "succeeded");
    }
    let (_, all) = json("GET", &format!("{url}/jobs?status=succeeded&limit=1000"), b"", &[]);
    assert_eq!(all["jobs"].as_array().unwrap().len(), n + 1);
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
    let claims = |aud: &str, exp: u64| serde_json::json!({ "sub": "alice", "iss": "https://idp.example", "aud": aud, "exp": exp, "tamp_roles": { "team": "editor" } });
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
        "jobs", "submit", "--project", "cli", "--model", "fmnist", "--version", "v1",
        "--model-file", dir.join("model.onnx").to_str().unwrap(), "--data", dir.join("calib.npz").to_str().unwrap(),
        "--eval", dir.join("eval.npz").to_str().unwrap(), "--recipe", root().join("configs/policy_examples/ptq_8bit.yaml").to_str().unwrap(), "--wait",
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
            let _ = stream.write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).as_bytes());
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


/// Mints a token over the API with the server's admin token.
fn mint_token(url: &str, role: &str, project: &str) -> String {
    let body = serde_json::json!({ "subject": format!("{role}-{project}"), "project": project, "role": role }).to_string();
    let (s, r) = json("POST", &format!("{url}/tokens"), body.as_bytes(), &[]);
    assert_eq!(s, 201, "{r}");
    format!("Bearer {}", r["token"].as_str().unwrap())
}

/// Uploads the reference CNN's inputs and recipe to `<project>/<model>/<version>` through the
/// API; returns the job the recipe started.
fn submit_cnn(url: &str, project: &str, model: &str, version: &str) -> String {
    for f in ["model.onnx", "calib.npz", "eval.npz"] {
        let (s, r) = json("PUT", &format!("{url}/uploads/{project}/{model}/{version}/{f}"), &std::fs::read(cnn().join(f)).unwrap(), &[]);
        assert_eq!(s, 201, "{r}");
    }
    let (s, r) = json("PUT", &format!("{url}/uploads/{project}/{model}/{version}/recipe.yaml"), &recipe(), &[]);
    assert_eq!(s, 201, "{r}");
    r["job"].as_str().unwrap().to_owned()
}

/// Every file under `dir`, as paths relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                out.push(format!("{}/", e.path().strip_prefix(dir).unwrap().display()));
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out
}

/// Tenancy (issue A and B) and erasure: two projects compress the same model into
/// byte-identical artifacts; a viewer of one reaches nothing of the other through any route;
/// idempotency keys reused across projects and callers make separate jobs; deleting a project
/// leaves nothing of it in the store, the metadata, the logs, the event log or old links,
/// and the other project is untouched.
#[test]
fn tenancy_idempotency_scope_and_project_deletion() {
    let server = serve(&[], &[]);
    let url = server.url.clone();
    for p in ["alpha", "beta"] {
        assert_eq!(json("POST", &format!("{url}/projects"), format!(r#"{{"name":"{p}"}}"#).as_bytes(), &[]).0, 201);
    }
    let ids = [submit_cnn(&url, "alpha", "fm", "v1"), submit_cnn(&url, "beta", "fm", "v1")];
    for id in &ids {
        let j = wait_for_job(&url, id, Duration::from_secs(240));
        assert_eq!(j["state"], "succeeded", "{j}");
    }
    let beta_viewer = mint_token(&url, "viewer", "beta");
    let (s, beta_best) = json("GET", &format!("{url}/models/beta.fm/best"), b"", &[("Authorization", &beta_viewer)]);
    assert_eq!(s, 200, "{beta_best}");
    let (_, alpha_best) = json("GET", &format!("{url}/models/alpha.fm/best"), b"", &[]);
    assert_eq!(alpha_best["sha256"], beta_best["sha256"], "the leak needs byte-identical artifacts: {alpha_best} {beta_best}");
    assert_eq!(beta_best["job"], ids[1].as_str(), "beta's best names another project's job: {beta_best}");
    assert_eq!(beta_best["model_id"], "beta.fm");
    assert_ne!(alpha_best["artifact_id"], beta_best["artifact_id"]);
    assert!(beta_best["key"].as_str().unwrap().contains(&ids[1]), "beta's link points at another job's object: {beta_best}");

    // A viewer of beta reaches nothing of alpha.
    let policy = serde_json::json!({ "project": "alpha", "name": "p", "yaml": String::from_utf8(recipe()).unwrap() }).to_string();
    assert_eq!(json("POST", &format!("{url}/policies"), policy.as_bytes(), &[]).0, 201);
    let alpha_art = alpha_best["artifact_id"].as_str().unwrap();
    for route in [
        "/models/alpha.fm/best".to_owned(),
        format!("/artifacts/{alpha_art}"),
        format!("/jobs/{}", ids[0]),
        format!("/reports/{}", ids[0]),
        "/models/alpha.fm".into(),
        "/models/alpha.fm/versions".into(),
        "/projects/alpha/models".into(),
        "/policies/alpha.p".into(),
    ] {
        let (s, body) = json("GET", &format!("{url}{route}"), b"", &[("Authorization", &beta_viewer)]);
        assert!(s == 403 || s == 404, "beta's viewer read {route}: {s} {body}");
        assert!(!body.to_string().contains(&ids[0]), "{route} leaked alpha's job id: {body}");
    }
    for (method, route) in [("DELETE", "/projects/alpha"), ("DELETE", "/models/alpha.fm"), ("DELETE", &format!("/jobs/{}", ids[0])), ("POST", &format!("/jobs/{}/cancel", ids[0]))] {
        let (s, body) = json(method, &format!("{url}{route}"), b"", &[("Authorization", &beta_viewer)]);
        assert!(s == 403 || s == 404, "beta's viewer could {method} {route}: {s} {body}");
    }
    let (_, listed) = json("GET", &format!("{url}/jobs"), b"", &[("Authorization", &beta_viewer)]);
    assert!(listed["jobs"].as_array().unwrap().iter().all(|j| j["project"] == "beta"), "{listed}");
    let (_, projects) = json("GET", &format!("{url}/projects"), b"", &[("Authorization", &beta_viewer)]);
    assert_eq!(projects["projects"].as_array().unwrap().len(), 1, "{projects}");

    // Idempotency keys are scoped: the same key in another project (stored-policy path and
    // upload path) makes that project's own job.
    let policy_b = policy.replace(r#""project":"alpha""#, r#""project":"beta""#);
    assert_eq!(json("POST", &format!("{url}/policies"), policy_b.as_bytes(), &[]).0, 201);
    let (alpha_ed, beta_ed) = (mint_token(&url, "editor", "alpha"), mint_token(&url, "editor", "beta"));
    let mut cancel = Vec::new();
    for (key, with_policy) in [("same-key", true), ("same-key-2", false)] {
        let body = |p: &str| if with_policy { format!(r#"{{"project":"{p}","model":"fm","version":"v1","policy":"{p}.p"}}"#) } else { format!(r#"{{"project":"{p}","model":"fm","version":"v1"}}"#) };
        let (s1, a) = json("POST", &format!("{url}/jobs"), body("alpha").as_bytes(), &[("Authorization", &alpha_ed), ("Idempotency-Key", key)]);
        let (s2, a2) = json("POST", &format!("{url}/jobs"), body("alpha").as_bytes(), &[("Authorization", &alpha_ed), ("Idempotency-Key", key)]);
        let (s3, b) = json("POST", &format!("{url}/jobs"), body("beta").as_bytes(), &[("Authorization", &beta_ed), ("Idempotency-Key", key)]);
        assert_eq!((s1, s2, s3), (201, 200, 201), "policy={with_policy}: {a} {a2} {b}");
        assert_eq!(a["job"], a2["job"]);
        assert_ne!(a["job"], b["job"], "beta's request returned alpha's job");
        let (_, bj) = json("GET", &format!("{url}/jobs/{}", b["job"].as_str().unwrap()), b"", &[("Authorization", &beta_viewer)]);
        assert_eq!(bj["project"], "beta", "{bj}");
        cancel.extend([a["job"].as_str().unwrap().to_owned(), b["job"].as_str().unwrap().to_owned()]);
    }
    for id in &cancel {
        json("POST", &format!("{url}/jobs/{id}/cancel"), b"", &[]);
    }

    // Erasure: delete alpha (admin of alpha only, audited); keep an old signed link to try.
    let old_link = alpha_best["uri"].as_str().unwrap().to_owned();
    assert_eq!(http("GET", &old_link, b"", &[]).0, 200);
    let (s, d) = json("DELETE", &format!("{url}/projects/alpha"), b"", &[("Authorization", &beta_ed)]);
    assert_eq!(s, 403, "{d}");
    let (s, d) = json("DELETE", &format!("{url}/projects/alpha"), b"", &[]);
    assert_eq!(s, 200, "{d}");
    assert!(d["deleted"]["jobs"].as_u64().unwrap() >= 3 && d["deleted"]["tokens"].as_u64().unwrap() >= 1, "{d}");
    assert_eq!(http("GET", &old_link, b"", &[]).0, 404, "an old link still serves the deleted artifact");
    for route in ["/models/alpha.fm/best".to_owned(), format!("/jobs/{}", ids[0]), format!("/artifacts/{alpha_art}"), "/models/alpha.fm".into(), "/policies/alpha.p".into()] {
        assert_eq!(json("GET", &format!("{url}{route}"), b"", &[]).0, 404, "{route} survived the deletion");
    }
    assert_eq!(json("GET", &format!("{url}/jobs"), b"", &[("Authorization", &alpha_ed)]).0, 401, "alpha's token survived");
    let alpha_jobs: Vec<String> = ids[..1].iter().cloned().chain(cancel.iter().step_by(2).cloned()).collect();
    let data = server.data.path();
    for f in files_under(&data.join("store")).iter().chain(files_under(&data.join("logs")).iter()).chain(files_under(&data.join("work")).iter()) {
        assert!(!f.contains("alpha") && !alpha_jobs.iter().any(|j| f.contains(j.as_str())), "left behind: {f}");
    }
    let events = std::fs::read_to_string(data.join("events.jsonl")).unwrap();
    assert!(!events.contains("\"alpha\"") && !alpha_jobs.iter().any(|j| events.contains(j.as_str())), "the event log kept alpha's events");
    // The metadata, every table but the audit log (which keeps the deletion's own record).
    let dump = Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys\nc=sqlite3.connect(sys.argv[1])\nfor (t,) in c.execute(\"select name from sqlite_master where type='table'\"):\n  if t!='audit':\n    for r in c.execute(f'select * from {t}'): print(t, r)")
        .arg(data.join("tamp.db"))
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("beta"), "the dump read nothing: {dump}");
    assert!(!dump.contains("alpha") && !alpha_jobs.iter().any(|j| dump.contains(j.as_str())), "metadata kept alpha: {dump}");
    let (_, audit) = json("GET", &format!("{url}/audit"), b"", &[]);
    assert!(audit["audit"].as_array().unwrap().iter().any(|a| a["action"] == "delete" && a["resource"] == "project alpha"), "{audit}");
    // Beta is whole.
    let (s, still) = json("GET", &format!("{url}/models/beta.fm/best"), b"", &[("Authorization", &beta_viewer)]);
    assert_eq!(s, 200, "{still}");
    assert_eq!(http("GET", still["uri"].as_str().unwrap(), b"", &[]).0, 200);
}

/// `tamp serve` SIGKILLed while a worker runs a stage: the worker dies with it (no orphan
/// finishes unrecorded), and the restarted server on the same data folder runs the job to the
/// end exactly once, with one artifact set and one `job.succeeded`.
#[test]
fn server_killed_mid_job_finishes_it_once_after_restart() {
    let data = tempfile::tempdir().unwrap();
    let env = [("TAMP_FAULT_SLEEP_BEFORE_PUBLISH", "5")];
    let (mut child, url) = start(data.path(), &[], &env);
    let up = data.path().join("store/uploads/r/fm/v1");
    for f in ["model.onnx", "calib.npz", "eval.npz"] {
        upload_file(&up, f, &std::fs::read(cnn().join(f)).unwrap());
    }
    upload_file(&up, "recipe.yaml", &recipe());
    let id = wait_for_jobs(&url, 1, Duration::from_secs(30))[0]["id"].as_str().unwrap().to_owned();
    let start_t = Instant::now();
    loop {
        let (_, j) = json("GET", &format!("{url}/jobs/{id}"), b"", &[]);
        if j["stages"][0]["state"] == "running" {
            break;
        }
        assert!(start_t.elapsed() < Duration::from_secs(60), "stage never ran: {j}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let workers = || -> Vec<String> {
        std::fs::read_dir("/proc").unwrap().flatten().filter_map(|e| std::fs::read(e.path().join("cmdline")).ok()).map(|c| String::from_utf8_lossy(&c).replace('\0', " ")).filter(|c| c.contains(" worker ") && c.contains(&id)).collect()
    };
    assert!(!workers().is_empty(), "no worker process for {id}");
    child.kill().unwrap();
    child.wait().unwrap();
    let t = Instant::now();
    while !workers().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(5), "the worker outlived its server: {:?}", workers());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut again, url) = start(data.path(), &[], &env);
    let job = wait_for_job(&url, &id, Duration::from_secs(240));
    assert_eq!(job["state"], "succeeded", "{job}");
    let onnx = std::fs::read_dir(data.path().join(format!("store/artifacts/{id}/0"))).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".onnx")).count();
    assert_eq!(onnx, 1, "one artifact set");
    std::thread::sleep(Duration::from_millis(500));
    let events = std::fs::read_to_string(data.path().join("events.jsonl")).unwrap();
    let succeeded = events.lines().filter(|l| l.contains("tamp.job.succeeded") && l.contains(&id)).count();
    assert_eq!(succeeded, 1, "job.succeeded {succeeded} times");
    let (s, best) = json("GET", &format!("{url}/models/r.fm/best"), b"", &[]);
    assert_eq!((s, best["job"].as_str()), (200, Some(id.as_str())), "{best}");
    let _ = again.kill();
    let _ = again.wait();
}

/// Waits for the job of `<project>/<model>/<version>` to end; returns it.
fn wait_for_version(url: &str, project: &str, version: &str, within: Duration) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let (_, j) = json("GET", &format!("{url}/jobs"), b"", &[]);
        if let Some(j) = j["jobs"].as_array().unwrap().iter().find(|j| j["project"] == project && j["version"] == version && ["succeeded", "failed", "cancelled"].contains(&j["state"].as_str().unwrap())) {
            return j.clone();
        }
        assert!(start.elapsed() < within, "no finished job for {project}/{version} after {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Hostile and careless uploads (issue E and G): bad names and oversized recipes get 400/413
/// without server paths; a recipe the watcher cannot read, or whose ingest panics, becomes a
/// failed job saying why and the watcher goes on; a presigned link for a name with a space
/// works once percent-encoded; the link-signing secret is private.
#[test]
fn hostile_uploads_get_clear_errors_and_lose_nothing() {
    let server = serve(&[], &[("TAMP_FAULT_INGEST_PANIC", "uploads/boom/")]);
    let url = server.url.clone();
    let data = server.data.path().display().to_string();
    let long = "x".repeat(300);
    for name in ["a%00b.npz", long.as_str(), "..%2Fescape", "%2E%2Esecret", "new%0Aline"] {
        let (s, body) = http("PUT", &format!("{url}/uploads/p/m/v1/{name}"), b"1", &[]);
        let body = String::from_utf8_lossy(&body);
        assert!(s == 400 || s == 404, "{name}: {s} {body}");
        assert!(!body.contains(&data) && !body.contains("/tmp"), "{name}: a server path in {body}");
    }
    // A 20 MB recipe: refused from its declared length, before the body is sent.
    let host = url.trim_start_matches("http://");
    let token = TOKENS.lock().unwrap().iter().find(|(h, _)| h == host).unwrap().1.clone();
    let mut sock = TcpStream::connect(host).unwrap();
    write!(sock, "PUT /uploads/p/m/v1/recipe.yaml HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n", 20 << 20).unwrap();
    let mut head = [0u8; 4096];
    let n = sock.read(&mut head).unwrap();
    let answer = String::from_utf8_lossy(&head[..n]);
    assert!(answer.starts_with("HTTP/1.1 413") && answer.contains("262144-byte limit"), "{answer}");
    drop(sock);
    let (_, jobs) = json("GET", &format!("{url}/jobs"), b"", &[]);
    assert!(jobs["jobs"].as_array().unwrap().is_empty(), "an oversized recipe started a job");

    // The folder path: an oversized recipe and a non-UTF-8 one each make a failed job with
    // the reason; a panicking ingest fails its own upload; the watcher keeps going.
    let store = server.data.path().join("store/uploads");
    upload_file(&store.join("p/m/big"), "recipe.yaml", &vec![b'#'; 300 << 10]);
    upload_file(&store.join("p/m/latin1"), "recipe.yaml", b"policy:\n  name: caf\xe9\n");
    upload_file(&store.join("boom/m/v1"), "recipe.yaml", &recipe());
    upload_file(&store.join("p/m/runs"), "model.onnx", &std::fs::read(cnn().join("model.onnx")).unwrap());
    upload_file(&store.join("p/m/runs"), "eval.npz", &std::fs::read(cnn().join("eval.npz")).unwrap());
    let runs = String::from_utf8(recipe()).unwrap() + "evaluation:\n  latency_runs: 1000000000\n";
    upload_file(&store.join("p/m/runs"), "recipe.yaml", runs.as_bytes());
    for (project, version, expect) in [("p", "big", "at most 262144 bytes"), ("p", "latin1", "not UTF-8"), ("boom", "v1", "internal error"), ("p", "runs", "latency_runs")] {
        let j = wait_for_version(&url, project, version, Duration::from_secs(30));
        assert_eq!(j["state"], "failed", "{j}");
        let reason = j["reason"].as_str().unwrap();
        assert!(reason.contains(expect) && !reason.contains(&data), "{version}: {reason}");
    }

    // A presigned upload link for a file name with a space, used as given (percent-encoded).
    assert_eq!(json("POST", &format!("{url}/projects"), br#"{"name":"sp"}"#, &[]).0, 201);
    assert_eq!(json("POST", &format!("{url}/projects/sp/models"), br#"{"name":"m"}"#, &[]).0, 201);
    let (s, v) = json("POST", &format!("{url}/models/sp.m/versions"), br#"{"version":"v1","files":["my data.npz"]}"#, &[]);
    assert_eq!(s, 201, "{v}");
    let link = v["upload_urls"]["my data.npz"].as_str().unwrap();
    assert!(link.contains("my%20data.npz"), "{link}");
    let (s, body) = http("PUT", link, b"bytes", &[("Authorization", "")]);
    assert_eq!(s, 201, "{}", String::from_utf8_lossy(&body));
    assert!(server.data.path().join("store/uploads/sp/m/v1/my data.npz").exists());

    use std::os::unix::fs::PermissionsExt;
    for f in [".secret", "admin-token"] {
        let mode = std::fs::metadata(server.data.path().join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f} is {mode:o}");
    }
}

/// Bad data reaching a worker (issue C and E): each job fails with a reason that names the
/// file the user uploaded (never the worker's scratch copy or a server path) and says what to
/// fix; a panicking worker is reported as bad input with its message.
#[test]
fn bad_data_fails_jobs_naming_the_uploaded_file() {
    let server = serve(&[], &[]);
    let url = server.url.clone();
    let data = server.data.path().display().to_string();
    let dir = cnn();
    let eval = tamp_engine::Dataset::load(dir.join("eval.npz")).unwrap();
    let rows: Vec<usize> = (0..256).collect();
    let inputs = eval.select(&rows).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let write = |name: &str, arrays: &std::collections::BTreeMap<String, tamp_onnx::TensorValue>| {
        let p = scratch.path().join(name);
        tamp_engine::dataset::write_npz(&p, arrays).unwrap();
        std::fs::read(p).unwrap()
    };
    let with_labels = |labels: Vec<i64>, zero: bool| {
        let mut m = inputs.clone();
        if zero {
            for v in m.values_mut() {
                if let tamp_onnx::TensorValue::F32(a) = v {
                    a.fill(0.0);
                }
            }
        }
        m.insert("labels".into(), tamp_onnx::TensorValue::I64(ndarray::ArrayD::from_shape_vec(vec![labels.len()], labels).unwrap()));
        m
    };
    let good_labels = eval.class_labels(&rows).unwrap();
    // (version, files uploaded beside the model, what the reason must say)
    type Case<'a> = (&'a str, Vec<(&'a str, Vec<u8>)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        ("badcalib", vec![("calib.npz", b"not a zip at all".to_vec()), ("eval.npz", std::fs::read(dir.join("eval.npz")).unwrap())], "calib.npz"),
        ("neglabels", vec![("eval.npz", write("neg.npz", &with_labels(vec![-5; 256], false)))], "label -5"),
        ("hugelabel", vec![("eval.npz", write("huge.npz", &with_labels(vec![i64::MAX; 256], false)))], "not a class index"),
        ("zeros", vec![("eval.npz", write("zeros.npz", &with_labels(good_labels, true)))], "same output"),
    ];
    for (version, files, expect) in &cases {
        let up = server.data.path().join(format!("store/uploads/bad/fm/{version}"));
        upload_file(&up, "model.onnx", &std::fs::read(dir.join("model.onnx")).unwrap());
        for (name, bytes) in files {
            upload_file(&up, name, bytes);
        }
        upload_file(&up, "recipe.yaml", &recipe());
        let j = wait_for_version(&url, "bad", version, Duration::from_secs(120));
        assert_eq!(j["state"], "failed", "{version}: {j}");
        let reason = j["reason"].as_str().unwrap();
        assert!(reason.contains(expect), "{version}: {reason}");
        assert!(!reason.contains(&data) && !reason.contains("/work/") && !reason.contains("/in/"), "{version}: a server path in {reason}");
        if *version == "badcalib" {
            assert!(reason.contains("uploads/bad/fm/badcalib/calib.npz") && !reason.contains("eval.npz"), "{reason}");
        }
        assert_eq!(j["stages"][0]["attempt"], 1, "bad input must not be retried: {j}");
    }
    let (s, _) = json("GET", &format!("{url}/models/bad.fm/best"), b"", &[]);
    assert_eq!(s, 404, "a failed job on degenerate data became best");
    drop(server);

    let server = serve(&[], &[("TAMP_FAULT_PANIC", "1")]);
    let id = submit_cnn(&server.url, "pan", "fm", "v1");
    let j = wait_for_job(&server.url, &id, Duration::from_secs(120));
    let reason = j["reason"].as_str().unwrap_or_default();
    assert!(j["state"] == "failed" && reason.contains("internal error") && !reason.contains("101"), "{j}");
    assert_eq!(j["stages"][0]["attempt"], 1, "a panic is bad input, not retried: {j}");
}

/// A model keeping its weights in an external data file runs through the service (issue F):
/// the worker fetches the files the model names from beside it; without them the job fails
/// saying which file to upload.
#[test]
fn external_data_model_runs_through_the_service() {
    let server = serve(&[], &[]);
    let url = server.url.clone();
    let tmp = tempfile::tempdir().unwrap();
    let model = tamp_onnx::Model::load(cnn().join("model.onnx")).unwrap();
    model.save(tmp.path().join("model.onnx"), &tamp_onnx::SaveOptions { external_data: tamp_onnx::ExternalData::Always { location: "weights.bin".into(), threshold: 1024 } }).unwrap();
    let small = std::fs::read(tmp.path().join("model.onnx")).unwrap();
    assert!(small.len() < 100_000 && tmp.path().join("weights.bin").exists(), "the weights did not move out");
    for (version, with_weights) in [("v1", true), ("v2", false)] {
        let put = |f: &str, bytes: &[u8]| {
            let (s, r) = json("PUT", &format!("{url}/uploads/ext/fm/{version}/{f}"), bytes, &[]);
            assert_eq!(s, 201, "{r}");
            r
        };
        put("model.onnx", &small);
        if with_weights {
            put("weights.bin", &std::fs::read(tmp.path().join("weights.bin")).unwrap());
        }
        put("calib.npz", &std::fs::read(cnn().join("calib.npz")).unwrap());
        put("eval.npz", &std::fs::read(cnn().join("eval.npz")).unwrap());
        let id = put("recipe.yaml", &recipe())["job"].as_str().unwrap().to_owned();
        let j = wait_for_job(&url, &id, Duration::from_secs(240));
        if with_weights {
            assert_eq!(j["state"], "succeeded", "{j}");
        } else {
            let reason = j["reason"].as_str().unwrap_or_default();
            assert!(j["state"] == "failed" && reason.contains("weights.bin") && reason.contains("uploads/ext/fm/v2/weights.bin"), "{j}");
        }
    }
}
