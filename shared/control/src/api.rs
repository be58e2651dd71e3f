//! The HTTP API (axum). The same router serves `tamp serve` and, later, the api Lambda.
//! Errors are RFC 9457 problem documents (`application/problem+json`).
//!
//! | route | does |
//! |---|---|
//! | `GET /healthz` | liveness |
//! | `PUT /uploads/{project}/{model}/{version}/{file}` | stores an input; `recipe.yaml` (last) starts the job |
//! | `POST /jobs` `{project, model, version}` | starts a job from an uploaded version (`Idempotency-Key` honoured) |
//! | `GET /jobs?status=&limit=` · `GET /jobs/{id}` · `POST /jobs/{id}/cancel` | jobs |
//! | `GET /models/{project.model}/best?target_runtime=` | the best artifact with a signed download URL |
//! | `GET /artifacts/{id}` | artifact metadata with a signed download URL |
//! | `GET /objects/{key}?expires=&signature=` | signed download (local object store) |

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use futures_util::StreamExt;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use tamp_adapters_local::FolderStore;
use tamp_domain::job::{JobState, Signal, valid_name};
use tamp_ports::{ObjectStore, PortError};

use crate::handlers::{self, HandlerError, Ingested, Services};

/// Download links live this long.
const LINK_TTL: Duration = Duration::from_secs(10 * 60);

#[derive(Clone)]
pub struct AppState {
    pub svc: Services,
    /// The local object store, for signed downloads.
    pub files: Arc<FolderStore>,
}

/// A problem document.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub title: &'static str,
    pub detail: String,
}

impl Problem {
    fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        Self { status, title, detail: detail.into() }
    }
    fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not found", detail)
    }
    fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad request", detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "type": "about:blank", "title": self.title, "status": self.status.as_u16(), "detail": self.detail });
        (self.status, [(header::CONTENT_TYPE, "application/problem+json")], body.to_string()).into_response()
    }
}

impl From<HandlerError> for Problem {
    fn from(e: HandlerError) -> Self {
        match e {
            HandlerError::Invalid(m) => Self::bad_request(m),
            HandlerError::Port(p) => p.into(),
        }
    }
}

impl From<PortError> for Problem {
    fn from(e: PortError) -> Self {
        match e {
            PortError::NotFound(m) => Self::not_found(m),
            PortError::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m),
            PortError::Invalid(m) => Self::bad_request(m),
            PortError::Unavailable(m) => Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
        }
    }
}

type ApiResult = Result<Response, Problem>;

pub fn router(state: AppState) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { Json(serde_json::json!({ "status": "ok" })) }))
        .route("/uploads/{project}/{model}/{version}/{file}", put(upload))
        .route("/jobs", post(create_job).get(list_jobs))
        .route("/jobs/{id}", get(get_job))
        .route("/jobs/{id}/cancel", post(cancel_job))
        .route("/models/{id}/best", get(best))
        .route("/artifacts/{id}", get(artifact))
        .route("/objects/{*key}", get(download))
        .with_state(state)
}

fn check_names(parts: &[&str]) -> Result<(), Problem> {
    match parts.iter().find(|p| !valid_name(p)) {
        Some(bad) => Err(Problem::bad_request(format!("'{bad}' is not a valid name (lowercase letters, digits, - and _; at most 64)"))),
        None => Ok(()),
    }
}

fn ingested(outcome: Ingested) -> ApiResult {
    Ok(match outcome {
        Ingested::Created(id) => (StatusCode::CREATED, Json(serde_json::json!({ "job": id, "link": format!("/jobs/{id}") }))).into_response(),
        Ingested::Duplicate(id) => (StatusCode::OK, Json(serde_json::json!({ "job": id, "link": format!("/jobs/{id}"), "duplicate": true }))).into_response(),
        Ingested::Ignored(why) => return Err(Problem::bad_request(why)),
    })
}

/// Streams the request body to a temporary file (models can be gigabytes), then stores it.
async fn upload(State(st): State<AppState>, Path((project, model, version, file)): Path<(String, String, String, String)>, body: Body) -> ApiResult {
    check_names(&[&project, &model, &version])?;
    if file.starts_with('.') || file.contains('/') || file.is_empty() {
        return Err(Problem::bad_request(format!("bad file name '{file}'")));
    }
    let key = format!("uploads/{project}/{model}/{version}/{file}");
    let tmp = st.files.root().join(format!(".upload-{}", tamp_adapters_local::random_hex(8)));
    let written = async {
        use tokio::io::AsyncWriteExt;
        let mut f = tokio::fs::File::create(&tmp).await.map_err(|e| Problem::from(PortError::Unavailable(e.to_string())))?;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Problem::bad_request(format!("upload interrupted: {e}")))?;
            f.write_all(&chunk).await.map_err(|e| Problem::from(PortError::Unavailable(e.to_string())))?;
        }
        f.flush().await.map_err(|e| Problem::from(PortError::Unavailable(e.to_string())))?;
        st.svc.store.put_file(&key, &tmp).await.map_err(Problem::from)
    }
    .await;
    let _ = std::fs::remove_file(&tmp);
    written?;
    if file == "recipe.yaml" {
        let version = st.svc.store.head(&key).await?.map(|m| m.version).unwrap_or_default();
        return ingested(handlers::ingest(&st.svc, &key, &version).await?);
    }
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "key": key }))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateJob {
    project: String,
    model: String,
    version: String,
}

async fn create_job(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let req: CreateJob = serde_json::from_slice(&body).map_err(|e| Problem::bad_request(format!("request body: {e}")))?;
    check_names(&[&req.project, &req.model, &req.version])?;
    let key = format!("uploads/{}/{}/{}/recipe.yaml", req.project, req.model, req.version);
    let meta = st.svc.store.head(&key).await?.ok_or_else(|| Problem::bad_request(format!("{key} has not been uploaded (PUT /{key})")))?;
    // The Idempotency-Key replaces the object version in the ingest key, so a retried POST
    // finds the first job and a new key asks for a new run of the same upload.
    let marker = match headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        Some(k) if !k.is_empty() && k.len() <= 200 => format!("api:{k}"),
        Some(_) => return Err(Problem::bad_request("Idempotency-Key must be 1–200 visible characters")),
        None => format!("api:{}:{}", meta.version, tamp_adapters_local::random_hex(8)),
    };
    ingested(handlers::ingest(&st.svc, &key, &marker).await?)
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
    limit: Option<usize>,
}

async fn list_jobs(State(st): State<AppState>, Query(q): Query<ListQuery>) -> ApiResult {
    let state = match q.status.as_deref() {
        None => None,
        Some(s) => Some(JobState::parse(s).ok_or_else(|| Problem::bad_request(format!("unknown status '{s}' (queued, planning, running, succeeded, failed, cancelled)")))?),
    };
    let jobs = st.svc.meta.list_jobs(state, q.limit.unwrap_or(100).min(1000)).await?;
    Ok(Json(serde_json::json!({ "jobs": jobs })).into_response())
}

async fn get_job(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let job = st.svc.meta.get_job(&id).await?.ok_or_else(|| Problem::not_found(format!("no job {id}")))?;
    Ok(Json(job).into_response())
}

async fn cancel_job(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let job = handlers::signal(&st.svc, &id, &Signal::Cancel { reason: "cancelled through the API".into() }).await?.ok_or_else(|| Problem::not_found(format!("no job {id}")))?;
    Ok(Json(job).into_response())
}

#[derive(Deserialize)]
struct BestQuery {
    target_runtime: Option<String>,
}

fn artifact_view(st: &AppState, a: &tamp_ports::ArtifactRecord) -> Result<serde_json::Value, Problem> {
    let now = st.svc.clock.now();
    let url = st.svc.store.presign_get(&a.key, LINK_TTL, now)?;
    let m = &a.metadata;
    Ok(serde_json::json!({
        "artifact_id": a.id,
        "model_id": a.model_id,
        "job": a.job,
        "stage": a.stage,
        "runtime": a.runtime,
        "opset": m["opset"],
        "uri": url,
        "uri_expires_at": now + LINK_TTL.as_secs(),
        "key": a.key,
        "size_bytes": a.size_bytes,
        "sha256": a.sha256,
        "compression": m["compression"],
        "metrics": m["metrics"],
        "compatibility": m["compatibility"],
        "flags": m["flags"],
        "missed_constraints": m["missed_constraints"],
    }))
}

async fn best(State(st): State<AppState>, Path(id): Path<String>, Query(q): Query<BestQuery>) -> ApiResult {
    let runtime = q.target_runtime.unwrap_or_else(|| "onnxruntime".into());
    let a = st.svc.meta.best_artifact(&id, &runtime).await?.ok_or_else(|| Problem::not_found(format!("model {id} has no artifact for {runtime} yet")))?;
    Ok(Json(artifact_view(&st, &a)?).into_response())
}

async fn artifact(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let a = st.svc.meta.get_artifact(&id).await?.ok_or_else(|| Problem::not_found(format!("no artifact {id}")))?;
    Ok(Json(artifact_view(&st, &a)?).into_response())
}

#[derive(Deserialize)]
struct Signed {
    expires: u64,
    signature: String,
}

async fn download(State(st): State<AppState>, Path(key): Path<String>, Query(q): Query<Signed>) -> ApiResult {
    if !st.files.verify(&key, q.expires, &q.signature, st.svc.clock.now()) {
        return Err(Problem::new(StatusCode::FORBIDDEN, "forbidden", "the link is invalid or expired; ask the API for a new one"));
    }
    let bytes = st.files.get(&key).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}
