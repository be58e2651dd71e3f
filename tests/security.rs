//! End-to-end security and resilience of `tamp serve` (issue 14; `docs/security.md` maps
//! each PRD §13 point to these tests): tenancy between projects, erasure, a server killed
//! mid-job, hostile uploads, bad data reaching workers, models with external data.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

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
    for (method, route) in
        [("DELETE", "/projects/alpha"), ("DELETE", "/models/alpha.fm"), ("DELETE", &format!("/jobs/{}", ids[0])), ("POST", &format!("/jobs/{}/cancel", ids[0]))]
    {
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
        let body = |p: &str| {
            if with_policy {
                format!(r#"{{"project":"{p}","model":"fm","version":"v1","policy":"{p}.p"}}"#)
            } else {
                format!(r#"{{"project":"{p}","model":"fm","version":"v1"}}"#)
            }
        };
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
    for route in [
        "/models/alpha.fm/best".to_owned(),
        format!("/jobs/{}", ids[0]),
        format!("/artifacts/{alpha_art}"),
        "/models/alpha.fm".into(),
        "/policies/alpha.p".into(),
    ] {
        assert_eq!(json("GET", &format!("{url}{route}"), b"", &[]).0, 404, "{route} survived the deletion");
    }
    assert_eq!(json("GET", &format!("{url}/jobs"), b"", &[("Authorization", &alpha_ed)]).0, 401, "alpha's token survived");
    let alpha_jobs: Vec<String> = ids[..1].iter().cloned().chain(cancel.iter().step_by(2).cloned()).collect();
    assert_erased(server.data.path(), "alpha", &alpha_jobs, "beta");
    let (_, audit) = json("GET", &format!("{url}/audit"), b"", &[]);
    assert!(audit["audit"].as_array().unwrap().iter().any(|a| a["action"] == "delete" && a["resource"] == "project alpha"), "{audit}");
    // Beta is whole.
    let (s, still) = json("GET", &format!("{url}/models/beta.fm/best"), b"", &[("Authorization", &beta_viewer)]);
    assert_eq!(s, 200, "{still}");
    assert_eq!(http("GET", still["uri"].as_str().unwrap(), b"", &[]).0, 200);
}

/// Nothing of `project` or of its `jobs` is left in the data folder `data` (the store, the
/// logs, the scratch, the event log, every metadata table but the audit log, which keeps the
/// deletion's own record); `kept` (a project that must still be there) proves the dump read.
fn assert_erased(data: &Path, project: &str, jobs: &[String], kept: &str) {
    for f in files_under(&data.join("store")).iter().chain(files_under(&data.join("logs")).iter()).chain(files_under(&data.join("work")).iter()) {
        assert!(!f.contains(project) && !jobs.iter().any(|j| f.contains(j.as_str())), "left behind: {f}");
    }
    let events = std::fs::read_to_string(data.join("events.jsonl")).unwrap();
    assert!(
        !events.contains(&format!("\"{project}\"")) && !jobs.iter().any(|j| events.contains(j.as_str())),
        "the event log kept {project}'s events: {events}"
    );
    let dump = Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys\nc=sqlite3.connect(sys.argv[1])\nfor (t,) in c.execute(\"select name from sqlite_master where type='table'\"):\n  if t!='audit':\n    for r in c.execute(f'select * from {t}'): print(t, r)")
        .arg(data.join("tamp.db"))
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains(kept), "the dump read nothing: {dump}");
    assert!(!dump.contains(project) && !jobs.iter().any(|j| dump.contains(j.as_str())), "metadata kept {project}: {dump}");
}

/// A project deleted while its finished job's report is still being written (a slow render
/// on a busy machine; CI once left `reports/<job>/` and a `report.ready` line behind this
/// way), and one deleted while its job's worker runs a stage: each deletion waits for the
/// report or stops the worker, and nothing of the project is left.
#[test]
fn projects_deleted_while_a_report_renders_or_a_stage_runs_leave_nothing() {
    let server = serve(&[], &[("TAMP_FAULT_SLOW_REPORT", "4"), ("TAMP_FAULT_SLEEP_BEFORE_PUBLISH", "4")]);
    let url = server.url.clone();
    let kept = submit_cnn(&url, "kept", "fm", "v1");
    assert_eq!(wait_for_job(&url, &kept, Duration::from_secs(240))["state"], "succeeded");
    // The report of `done` is held for 4 s after the job reads succeeded.
    let done = submit_cnn(&url, "gone", "fm", "v1");
    assert_eq!(wait_for_job(&url, &done, Duration::from_secs(240))["state"], "succeeded");
    let (s, d) = json("DELETE", &format!("{url}/projects/gone"), b"", &[]);
    assert_eq!(s, 200, "{d}");
    std::thread::sleep(Duration::from_secs(5)); // past the held report
    assert_erased(server.data.path(), "gone", std::slice::from_ref(&done), "kept");
    // A worker held for 4 s before it publishes its artifact.
    let running = submit_cnn(&url, "gone2", "fm", "v1");
    let t = Instant::now();
    while json("GET", &format!("{url}/jobs/{running}"), b"", &[]).1["stages"][0]["state"] != "running" {
        assert!(t.elapsed() < Duration::from_secs(120), "the stage never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (s, d) = json("DELETE", &format!("{url}/projects/gone2"), b"", &[]);
    assert_eq!(s, 200, "{d}");
    std::thread::sleep(Duration::from_secs(5)); // past the held worker
    assert_erased(server.data.path(), "gone2", &[running], "kept");
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
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(" worker ") && c.contains(&id))
            .collect()
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
    let onnx = std::fs::read_dir(data.path().join(format!("store/artifacts/{id}/0")))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".onnx"))
        .count();
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
        if let Some(j) = j["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["project"] == project && j["version"] == version && ["succeeded", "failed", "cancelled"].contains(&j["state"].as_str().unwrap()))
        {
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
    for (project, version, expect) in
        [("p", "big", "at most 262144 bytes"), ("p", "latin1", "not UTF-8"), ("boom", "v1", "internal error"), ("p", "runs", "latency_runs")]
    {
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
    model
        .save(
            tmp.path().join("model.onnx"),
            &tamp_onnx::SaveOptions { external_data: tamp_onnx::ExternalData::Always { location: "weights.bin".into(), threshold: 1024 } },
        )
        .unwrap();
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
