//! The API in the PRD's form (§11), against a real `tamp serve`: `GET /projects/{id}`,
//! `POST /models`, `GET /models/{id}/versions/{version_id}` with the version's state from its
//! newest job, and `POST /jobs` with `model_version_id`, `policy_id`, `target_runtimes` and
//! `constraints`, answering `job_id`, `status` and `estimated_completion_minutes` from
//! measured stage times. The request bodies are the PRD's examples as written, with this
//! deployment's ids in the id fields.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::time::Duration;

use crate::support::{cnn, http, json, serve, wait_for_job};

fn put_inputs(url: &str, links: &serde_json::Value) {
    for f in ["model.onnx", "calib.npz", "eval.npz"] {
        let link = links[f].as_str().unwrap();
        let target = if link.starts_with("http") { link.to_owned() } else { format!("{url}{link}") };
        let (s, b) = http("PUT", &target, &std::fs::read(cnn().join(f)).unwrap(), &[("Authorization", "")]);
        assert_eq!(s, 201, "{f}: {}", String::from_utf8_lossy(&b));
    }
}

#[test]
fn the_prd_paths_and_bodies_work_as_written() {
    let s = serve(&["--concurrency", "1"], &[]);
    let url = &s.url;

    assert_eq!(json("POST", &format!("{url}/projects"), br#"{"name": "vision"}"#, &[]).0, 201);
    let (st, p) = json("GET", &format!("{url}/projects/vision"), b"", &[]);
    assert_eq!((st, p["id"].as_str(), p["models"].as_array().map(Vec::len)), (200, Some("vision"), Some(0)), "{p}");
    assert_eq!(json("GET", &format!("{url}/projects/nope"), b"", &[]).0, 404);

    // POST /models, the PRD's body.
    let model = br#"{"project_id": "vision", "name": "resnet8", "framework": "onnx", "task": "image-classification"}"#;
    let (st, m) = json("POST", &format!("{url}/models"), model, &[]);
    assert_eq!((st, m["id"].as_str()), (201, Some("vision.resnet8")), "{m}");
    assert_eq!(json("POST", &format!("{url}/models"), model, &[]).0, 409);
    let (st, e) = json("POST", &format!("{url}/models"), br#"{"project_id": "vision", "name": "x", "framework": "pytorch"}"#, &[]);
    assert!(st == 400 && e["detail"].as_str().unwrap().contains("ONNX"), "{e}");
    // The earlier route still creates models.
    assert_eq!(json("POST", &format!("{url}/projects/vision/models"), br#"{"name": "legacy"}"#, &[]).0, 201);

    let (st, v) = json("POST", &format!("{url}/models/vision.resnet8/versions"), br#"{"version": "v1"}"#, &[]);
    assert_eq!(st, 201, "{v}");
    put_inputs(url, &v["upload_urls"]);
    let (st, ver) = json("GET", &format!("{url}/models/vision.resnet8/versions/v1"), b"", &[]);
    assert_eq!((st, ver["state"].as_str(), ver["model_version_id"].as_str()), (200, Some("uploading"), Some("vision.resnet8/v1")), "{ver}");
    assert_eq!(json("GET", &format!("{url}/models/vision.resnet8/versions/v9"), b"", &[]).0, 404);

    let recipe = std::fs::read_to_string(support::root().join("configs/policy_examples/ptq_8bit.yaml")).unwrap();
    let policy = serde_json::json!({ "project": "vision", "name": "int8", "yaml": recipe }).to_string();
    assert_eq!(json("POST", &format!("{url}/policies"), policy.as_bytes(), &[]).0, 201);

    // POST /jobs, the PRD's body.
    let job = br#"{
        "model_version_id": "vision.resnet8/v1",
        "policy_id": "vision.int8",
        "target_runtimes": ["onnxruntime", "tflite"],
        "constraints": {"max_metric_drop_pct": 1.0, "max_latency_ms_p50": 15, "min_compression_ratio": 2.0}
    }"#;
    let (st, created) = json("POST", &format!("{url}/jobs"), job, &[("Idempotency-Key", "prd-1")]);
    assert_eq!(st, 201, "{created}");
    let id = created["job_id"].as_str().unwrap().to_owned();
    assert_eq!(created["status"], "queued", "{created}");
    // No stage has run on this server yet: the default per stage (2 min for one stage).
    assert_eq!(created["estimated_completion_minutes"].as_f64(), Some(2.0), "{created}");
    let (st, dup) = json("POST", &format!("{url}/jobs"), job, &[("Idempotency-Key", "prd-1")]);
    assert_eq!((st, dup["job_id"].as_str()), (200, Some(id.as_str())), "{dup}");

    let done = wait_for_job(url, &id, Duration::from_secs(300));
    assert_eq!(done["state"], "succeeded", "{done}");
    let yaml = done["recipe_yaml"].as_str().unwrap();
    let r = tamp_domain::Recipe::from_yaml(yaml).unwrap();
    assert_eq!(r.targets.iter().map(|t| t.as_str()).collect::<Vec<_>>(), ["onnxruntime", "tflite"]);
    assert_eq!((r.constraints.max_latency_ms_p50, r.constraints.min_compression_ratio), (Some(15.0), Some(2.0)));
    assert!(done["eta"].is_null() && done["health"] == "ok", "{done}");
    let events: Vec<&str> = done["timeline"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["job.created", "stage.started", "stage.succeeded", "job.succeeded"], "{done}");
    let (_, ver) = json("GET", &format!("{url}/models/vision.resnet8/versions/v1"), b"", &[]);
    assert_eq!((ver["state"].as_str(), ver["latest_job"].as_str()), (Some("ready"), Some(id.as_str())), "{ver}");
    let (_, list) = json("GET", &format!("{url}/models/vision.resnet8/versions"), b"", &[]);
    assert_eq!(list["versions"][0]["state"], "ready", "{list}");

    // The next job's estimate is the measured time of the stage that ran.
    let stage = &done["stages"][0];
    let measured = stage["updated_at"].as_u64().unwrap() - stage["started_at"].as_u64().unwrap();
    let (st, again) = json("POST", &format!("{url}/jobs"), job, &[("Idempotency-Key", "prd-2")]);
    assert_eq!(st, 201, "{again}");
    let expected = (measured.max(1) as f64 / 60.0 * 10.0).ceil() / 10.0;
    assert_eq!(again["estimated_completion_minutes"].as_f64(), Some(expected), "measured {measured} s: {again}");
    let (_, jobs) = json("GET", &format!("{url}/jobs?project=vision"), b"", &[]);
    for j in jobs["jobs"].as_array().unwrap() {
        assert!(j["health"].is_string() && j["progress"]["total"] == 1, "{j}");
    }
    wait_for_job(url, again["job_id"].as_str().unwrap(), Duration::from_secs(300));

    // What a wrong body is told.
    let bad = |body: &str| json("POST", &format!("{url}/jobs"), body.as_bytes(), &[]);
    let (st, e) = bad(r#"{"model_version_id": "vision.resnet8/v1", "policy_id": "vision.int8", "target_runtimes": ["coreml"]}"#);
    assert!(st == 422 && e["detail"].as_str().unwrap().contains("coreml") && e["detail"].as_str().unwrap().contains("tflite"), "{e}");
    let (st, e) = bad(r#"{"model_version_id": "vision.resnet8/v1", "policy_id": "vision.int8", "constraints": {"max_latency_ms_p50": "fast"}}"#);
    assert!(st == 400 && e["detail"].as_str().unwrap().contains("max_latency_ms_p50"), "{e}");
    let (st, e) = bad(r#"{"model_version_id": "vision.resnet8/v1", "policy_id": "vision.int8", "constraints": {"max_speed": 1}}"#);
    assert!(st == 400 && e["detail"].as_str().unwrap().contains("min_compression_ratio"), "{e}");
    let (st, e) = bad(r#"{"model_version_id": "resnet8", "policy_id": "vision.int8"}"#);
    assert!(st == 400 && e["detail"].as_str().unwrap().contains("<project>.<model>/<version>"), "{e}");
    assert_eq!(bad(r#"{"model_version_id": "vision.resnet8/v1", "policy_id": "vision.nope"}"#).0, 404);
    let (st, e) = bad(r#"{"model_version_id": "vision.resnet8/v1", "policy_id": "vision.int8", "priority": 1}"#);
    assert!(st == 400 && e["detail"].as_str().unwrap().contains("priority"), "{e}");
}

#[test]
fn policies_validate_with_lines_and_templates_are_built_in() {
    let s = serve(&[], &[]);
    let url = &s.url;
    let body = serde_json::json!({ "yaml": "policy:\n  name: p\n  stages:\n    - ptq:\n        colour: red\n" }).to_string();
    let (st, v) = json("POST", &format!("{url}/policies/validate"), body.as_bytes(), &[]);
    assert_eq!((st, v["valid"].as_bool(), v["errors"][0]["line"].as_u64()), (200, Some(false), Some(5)), "{v}");
    // The 422 of POST /policies names the line too.
    assert_eq!(json("POST", &format!("{url}/projects"), br#"{"name": "p"}"#, &[]).0, 201);
    let body = serde_json::json!({ "project": "p", "name": "bad", "yaml": "policy:\n  name: p\n  stages:\n    - ptq:\n        colour: red\n" }).to_string();
    let (st, e) = json("POST", &format!("{url}/policies"), body.as_bytes(), &[]);
    assert_eq!((st, e["line"].as_u64()), (422, Some(5)), "{e}");
    let (st, t) = json("GET", &format!("{url}/policy-templates"), b"", &[]);
    assert_eq!(st, 200);
    let ids: Vec<&str> = t["templates"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    for want in ["ptq_8bit", "prune50_finetune", "distill_resnet_half", "search_mixed"] {
        assert!(ids.contains(&want), "{ids:?}");
    }
    for t in t["templates"].as_array().unwrap() {
        let body = serde_json::json!({ "yaml": t["yaml"] }).to_string();
        assert_eq!(json("POST", &format!("{url}/policies/validate"), body.as_bytes(), &[]).1["valid"], true, "{}", t["id"]);
    }
    let (_, list) = json("GET", &format!("{url}/policies?project=p"), b"", &[]);
    assert_eq!(list["policies"].as_array().unwrap().len(), 0, "{list}");
}
