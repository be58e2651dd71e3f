//! The HTTP API (axum). The same router serves `tamp serve` and, later, the api Lambda.
//! Errors are RFC 9457 problem documents (`application/problem+json`).
//!
//! Every route but `/healthz`, `/openapi.json` and signed links needs a bearer credential
//! (see [`crate::auth`]). Routes: uploads (`PUT /uploads/{project}/{model}/{version}/{file}`,
//! `recipe.yaml` last starts the job), jobs (`POST /jobs` with `Idempotency-Key`,
//! `GET /jobs?status=`, `GET /jobs/{id}`, `POST /jobs/{id}/cancel`), catalog (`/projects`,
//! `/projects/{p}/models`, `/models/{id}`, `/models/{id}/versions` with presigned upload
//! links), policies (`POST /policies` validated with line numbers, `GET /policies/{id}`),
//! artifacts (`GET /models/{id}/best?target_runtime=`, `GET /artifacts/{id}`, signed
//! `GET /objects/{key}`), `GET /reports/{job}`, auth (`POST /tokens`, `GET /audit`). The
//! OpenAPI 3.1 document is generated from the annotations below (utoipa).

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use futures_util::StreamExt;
use serde::Deserialize;
use tamp_domain::job::valid_name;
use tamp_ports::{AuditRecord, PortError, Role};

use utoipa::OpenApi as _;

use crate::auth::{Auth, Principal, mint};
use crate::erasure::{delete_artifact, delete_job, delete_model, delete_project, delete_token, delete_upload, delete_version, list_tokens};
use crate::handlers::{self, Services};
pub use crate::problem::Problem;
use crate::{catalog, jobs};

/// Download links live this long.
const LINK_TTL: Duration = Duration::from_secs(10 * 60);

#[derive(Clone)]
pub struct AppState {
    pub svc: Services,
    /// The local object store, for `/objects/…` links and streamed uploads; on AWS, S3 serves
    /// presigned links itself and this is `None`.
    pub files: Option<Arc<dyn tamp_ports::SignedLinks>>,
    pub auth: Arc<Auth>,
    pub limits: Limits,
    /// Prometheus metrics (`GET /metrics`), where this process keeps them (`tamp serve`).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// Size limits of the API (each breach is a 413 or 400 saying which limit and how to fix it).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest upload (model, dataset) in bytes.
    pub max_upload_bytes: u64,
    /// Largest JSON request body in bytes.
    pub max_json_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_upload_bytes: 8 << 30, max_json_bytes: 1 << 20 }
    }
}

/// Longest upload file name (bytes); with the other path parts it stays far below the
/// file system's 255-byte name limit.
pub const MAX_FILE_NAME: usize = 128;

/// Checks an uploaded file's name: 1–128 bytes of letters, digits, spaces and `._-+@=,()`,
/// not starting with a dot. NUL, slashes, control characters and overlong names are refused
/// with a 400 here, never passed to the file system.
pub fn check_file_name(file: &str) -> Result<(), Problem> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || " ._-+@=,()".contains(c);
    if file.is_empty() || file.len() > MAX_FILE_NAME || file.starts_with('.') || !file.chars().all(ok_char) || file.trim() != file {
        let shown: String = file.chars().take(40).map(|c| if c.is_control() { '?' } else { c }).collect();
        return Err(Problem::bad_request(format!(
            "bad file name '{shown}{}': use 1–{MAX_FILE_NAME} letters, digits, spaces and ._-+@=,() (not starting with a dot)",
            if file.chars().count() > 40 { "…" } else { "" }
        )));
    }
    Ok(())
}

/// Authenticates and rate-limits every route but `/healthz` and signed `/objects/…` links
/// (their signature is the credential); the principal rides in the request extensions.
async fn authenticate(State(st): State<AppState>, mut req: axum::extract::Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if path == "/healthz" || path == "/openapi.json" || path.starts_with("/objects/") {
        return next.run(req).await;
    }
    // Refused credentials are counted per client address (the peer; API Gateway's source IP
    // header where the Lambda serves the API).
    let client = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .or_else(|| req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()).map(|v| v.split(',').next().unwrap_or_default().trim().to_owned()))
        .unwrap_or_else(|| "unknown".into());
    if let Err(problem) = st.auth.login_allowed(&client) {
        return problem.into_response();
    }
    // A presigned upload link is its own credential: editor on that one key's project.
    if path.starts_with("/uploads/")
        && req.method() == axum::http::Method::PUT
        && let Some(q) = req.uri().query().and_then(signed_query)
    {
        // Signed over the key as it is; clients send it percent-encoded.
        let key = percent_encoding::percent_decode_str(path.trim_start_matches('/')).decode_utf8_lossy().into_owned();
        if !st.files.as_ref().is_some_and(|f| f.verify("PUT", &key, q.0, &q.1, st.svc.clock.now())) {
            st.auth.login_failed(&client);
            return Problem::forbidden("the upload link is invalid or expired; ask POST /models/{id}/versions for new ones").into_response();
        }
        let project = key.split('/').nth(1).unwrap_or_default().to_owned();
        req.extensions_mut().insert(Principal { actor: "presigned-upload".into(), grants: vec![(project, Role::Editor)] });
        return next.run(req).await;
    }
    let principal = match st.auth.authenticate(req.headers(), st.svc.clock.now()).await {
        Ok(p) => p,
        Err(problem) => {
            if problem.status == StatusCode::UNAUTHORIZED {
                st.auth.login_failed(&client);
            }
            return problem.into_response();
        }
    };
    if let Err(problem) = st.auth.rate_limit(&principal.actor) {
        return problem.into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// `expires` and `signature` from a query string, when both are there.
fn signed_query(q: &str) -> Option<(u64, String)> {
    let mut expires = None;
    let mut signature = None;
    for pair in q.split('&') {
        match pair.split_once('=') {
            Some(("expires", v)) => expires = v.parse().ok(),
            Some(("signature", v)) => signature = Some(v.to_owned()),
            _ => {}
        }
    }
    Some((expires?, signature?))
}

pub(crate) async fn audit(st: &AppState, who: &Principal, action: &str, resource: &str, detail: String) -> Result<(), Problem> {
    let rec = AuditRecord { time: st.svc.clock.now(), actor: who.actor.clone(), action: action.into(), resource: resource.into(), detail };
    st.svc.meta.append_audit(&rec).await.map_err(Problem::from)
}

pub(crate) type ApiResult = Result<Response, Problem>;

pub fn router(state: AppState) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .route("/uploads/{project}/{model}/{version}/{file}", put(upload).delete(delete_upload))
        .route("/jobs", post(jobs::create_job).get(jobs::list_jobs))
        .route("/jobs/{id}", get(jobs::get_job).delete(delete_job))
        .route("/jobs/{id}/cancel", post(jobs::cancel_job))
        .route("/models/{id}/best", get(best))
        .route("/artifacts/{id}", get(artifact).delete(delete_artifact))
        .route("/objects/{*key}", get(download))
        .route("/tokens", post(create_token).get(list_tokens))
        .route("/projects", post(create_project).get(list_projects))
        .route("/projects/{project}/models", post(create_model).get(list_models))
        .route("/models/{id}", get(get_model).delete(delete_model))
        .route("/models", post(catalog::create_model))
        .route("/models/{id}/versions", post(create_version).get(catalog::list_versions))
        .route("/policies", post(create_policy).get(catalog::list_policies))
        .route("/policies/validate", post(catalog::validate_policy))
        .route("/policy-templates", get(catalog::policy_templates))
        .route("/policies/{id}", get(get_policy))
        .route("/reports/{job}", get(report))
        .route("/audit", get(list_audit))
        .route("/projects/{project}", get(catalog::get_project).delete(delete_project))
        .route("/models/{id}/versions/{version}", get(catalog::get_version).delete(delete_version))
        .route("/tokens/{id}", axum::routing::delete(delete_token))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), timed))
        .layer(axum::middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(axum::extract::DefaultBodyLimit::max(state.limits.max_json_bytes))
        .with_state(state)
}

pub(crate) fn check_names(parts: &[&str]) -> Result<(), Problem> {
    match parts.iter().find(|p| !valid_name(p)) {
        Some(bad) => Err(Problem::bad_request(format!("'{bad}' is not a valid name (lowercase letters, digits, - and _; at most 64)"))),
        None => Ok(()),
    }
}

/// Streams the request body to a temporary file (models can be gigabytes), then stores it.
#[utoipa::path(put, path = "/uploads/{project}/{model}/{version}/{file}", tag = "uploads", params(("project" = String, Path), ("model" = String, Path), ("version" = String, Path), ("file" = String, Path)), request_body(content = Vec<u8>, content_type = "application/octet-stream"), responses((status = 201, description = "stored; for recipe.yaml, the job it started", body = serde_json::Value), (status = 400, body = ProblemDoc), (status = 403, body = ProblemDoc)))]
async fn upload(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((project, model, version, file)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    check_names(&[&project, &model, &version])?;
    who.require(&project, Role::Editor)?;
    check_file_name(&file)?;
    let key = format!("uploads/{project}/{model}/{version}/{file}");
    let max = if file == "recipe.yaml" { tamp_domain::recipe::MAX_RECIPE_BYTES as u64 } else { st.limits.max_upload_bytes };
    let too_large = |what: u64| {
        let hint = if file == "recipe.yaml" {
            "recipes are a few lines of YAML"
        } else {
            "ask the operator to raise `tamp serve --max-upload-bytes`, or upload large weights as external data files"
        };
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload too large",
            format!("{file} is {what} bytes or more, over the {max}-byte limit for this file ({hint})"),
        )
    };
    // Refused from the declared length before a byte is read; counted again while streaming.
    if let Some(len) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
        && len > max
    {
        return Err(too_large(len));
    }
    let tmp = st.files.as_ref().map_or_else(std::env::temp_dir, |f| f.staging_dir()).join(format!(".upload-{}", tamp_domain::ids::random_hex(8)));
    let written = async {
        use tokio::io::AsyncWriteExt;
        let mut f = tokio::fs::File::create(&tmp).await.map_err(|e| Problem::from(PortError::Unavailable(e.to_string())))?;
        let mut stream = body.into_data_stream();
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Problem::bad_request(format!("upload interrupted: {e}")))?;
            total += chunk.len() as u64;
            if total > max {
                return Err(too_large(total));
            }
            f.write_all(&chunk).await.map_err(|e| Problem::from(PortError::Unavailable(e.to_string())))?;
        }
        f.flush().await.map_err(|e| Problem::from(PortError::Unavailable(e.to_string())))?;
        st.svc.store.put_file(&key, &tmp).await.map_err(Problem::from)
    }
    .await;
    let _ = std::fs::remove_file(&tmp);
    written?;
    if file == "recipe.yaml" {
        audit(&st, &who, "policy.upload", &key, String::new()).await?;
        let version = st.svc.store.head(&key).await?.map(|m| m.version).unwrap_or_default();
        return crate::jobs::created(&st, handlers::ingest(&st.svc, &key, &version).await?).await;
    }
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "key": key }))).into_response())
}

#[derive(Deserialize)]
struct BestQuery {
    target_runtime: Option<String>,
}

async fn artifact_view(st: &AppState, a: &tamp_ports::ArtifactRecord) -> Result<serde_json::Value, Problem> {
    let now = st.svc.clock.now();
    let url = st.svc.store.presign_get(&a.key, LINK_TTL, now).await?;
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
        // Exported runtimes (tflite): the file's precision and tensors, the ONNX artifact's
        // metrics it came from, and why the runtime did not measure it, if it did not.
        "format": m.get("format").cloned().unwrap_or_else(|| "onnx".into()),
        "precision": m.get("precision"),
        "inputs": m.get("inputs"),
        "source_metrics": m.get("source_metrics"),
        "not_evaluated": m.get("not_evaluated"),
    }))
}

/// The project part of a `<project>.<model>` id.
pub(crate) fn project_of(model_id: &str) -> &str {
    model_id.split_once('.').map_or(model_id, |(p, _)| p)
}

#[utoipa::path(get, path = "/models/{id}/best", tag = "artifacts", params(("id" = String, Path, description = "<project>.<model>"), ("target_runtime" = Option<String>, Query)), responses((status = 200, description = "the best artifact: runtime, opset, signed uri, size, metrics, compression, compatibility", body = serde_json::Value), (status = 404, body = ProblemDoc)))]
async fn best(State(st): State<AppState>, Extension(who): Extension<Principal>, Path(id): Path<String>, Query(q): Query<BestQuery>) -> ApiResult {
    who.require(project_of(&id), Role::Viewer)?;
    let runtime = q.target_runtime.unwrap_or_else(|| "onnxruntime".into());
    let a = st.svc.meta.best_artifact(&id, &runtime).await?.ok_or_else(|| Problem::not_found(format!("model {id} has no artifact for {runtime} yet")))?;
    audit(&st, &who, "download", &a.id, format!("link to {}", a.key)).await?;
    Ok(Json(artifact_view(&st, &a).await?).into_response())
}

#[utoipa::path(get, path = "/artifacts/{id}", tag = "artifacts", params(("id" = String, Path)), responses((status = 200, description = "artifact metadata with a signed download uri", body = serde_json::Value), (status = 404, body = ProblemDoc)))]
async fn artifact(State(st): State<AppState>, Extension(who): Extension<Principal>, Path(id): Path<String>) -> ApiResult {
    let a = st.svc.meta.get_artifact(&id).await?.ok_or_else(|| Problem::not_found(format!("no artifact {id}")))?;
    who.require(project_of(&a.model_id), Role::Viewer)?;
    audit(&st, &who, "download", &a.id, format!("link to {}", a.key)).await?;
    Ok(Json(artifact_view(&st, &a).await?).into_response())
}

#[derive(Deserialize)]
struct Signed {
    expires: u64,
    signature: String,
}

#[utoipa::path(get, path = "/objects/{key}", tag = "artifacts", security(()), params(("key" = String, Path), ("expires" = u64, Query), ("signature" = String, Query)), responses((status = 200, description = "the object bytes", body = Vec<u8>, content_type = "application/octet-stream"), (status = 403, body = ProblemDoc)))]
async fn download(State(st): State<AppState>, Path(key): Path<String>, Query(q): Query<Signed>) -> ApiResult {
    let Some(files) = &st.files else { return Err(Problem::not_found("objects are served by the bucket's own presigned links here")) };
    if !files.verify("GET", &key, q.expires, &q.signature, st.svc.clock.now()) {
        return Err(Problem::new(StatusCode::FORBIDDEN, "forbidden", "the link is invalid or expired; ask the API for a new one"));
    }
    let bytes = st.svc.store.get(&key).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    subject: String,
    /// A project name, or `*` for every project.
    project: String,
    role: String,
    #[serde(default = "default_ttl_days")]
    ttl_days: u64,
}

fn default_ttl_days() -> u64 {
    30
}

/// Mints an API token (admin on the project, or on `*` for a `*` token). The token string is
/// in this response only; the store keeps its hash.
#[utoipa::path(post, path = "/tokens", tag = "auth", request_body = CreateToken, responses((status = 201, description = "the token, shown this once", body = serde_json::Value), (status = 403, body = ProblemDoc)))]
async fn create_token(State(st): State<AppState>, Extension(who): Extension<Principal>, body: Bytes) -> ApiResult {
    let req: CreateToken = serde_json::from_slice(&body).map_err(|e| Problem::bad_request(format!("request body: {e}")))?;
    if req.project != "*" {
        check_names(&[&req.project])?;
    }
    let role = Role::parse(&req.role).ok_or_else(|| Problem::bad_request(format!("unknown role '{}' (viewer, editor, admin)", req.role)))?;
    if !(1..=365).contains(&req.ttl_days) {
        return Err(Problem::bad_request("ttl_days must be 1–365"));
    }
    if req.subject.trim().is_empty() || req.subject.len() > 200 {
        return Err(Problem::bad_request("subject must be 1–200 characters"));
    }
    who.require(&req.project, Role::Admin)?;
    let now = st.svc.clock.now();
    let (rec, token) = mint(&req.subject, &req.project, role, Duration::from_secs(req.ttl_days * 86_400), &who.actor, now);
    st.svc.meta.put_token(&rec).await?;
    audit(&st, &who, "token.create", &rec.id, format!("{} as {:?} on {}", rec.subject, rec.role, rec.project).to_lowercase()).await?;
    Ok((
        StatusCode::CREATED,
        Json(
            serde_json::json!({ "id": rec.id, "token": token, "subject": rec.subject, "project": rec.project, "role": rec.role, "expires_at": rec.expires_at }),
        ),
    )
        .into_response())
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

/// The audit log, newest first (admin on every project).
#[utoipa::path(get, path = "/audit", tag = "auth", params(("limit" = Option<usize>, Query)), responses((status = 200, description = "audit records, newest first", body = serde_json::Value)))]
async fn list_audit(State(st): State<AppState>, Extension(who): Extension<Principal>, Query(q): Query<AuditQuery>) -> ApiResult {
    who.require("*", Role::Admin)?;
    let records = st.svc.meta.list_audit(q.limit.unwrap_or(100).min(10_000)).await?;
    Ok(Json(serde_json::json!({ "audit": records })).into_response())
}

pub(crate) fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, Problem> {
    serde_json::from_slice(bytes).map_err(|e| Problem::bad_request(format!("request body: {e}")))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewProject {
    name: String,
}

/// Creates a project (admin on it, or on `*`).
#[utoipa::path(post, path = "/projects", tag = "catalog", request_body = NewProject, responses((status = 201, body = serde_json::Value), (status = 409, body = ProblemDoc)))]
async fn create_project(State(st): State<AppState>, Extension(who): Extension<Principal>, b: Bytes) -> ApiResult {
    let req: NewProject = body(&b)?;
    check_names(&[&req.name])?;
    who.require(&req.name, Role::Admin)?;
    let doc = serde_json::json!({ "id": req.name, "created_at": st.svc.clock.now(), "created_by": who.actor });
    if !st.svc.meta.put_record("project", &req.name, &doc, true).await? {
        return Err(Problem::new(StatusCode::CONFLICT, "conflict", format!("project '{}' exists", req.name)));
    }
    Ok((StatusCode::CREATED, Json(doc)).into_response())
}

#[utoipa::path(get, path = "/projects", tag = "catalog", responses((status = 200, body = serde_json::Value)))]
async fn list_projects(State(st): State<AppState>, Extension(who): Extension<Principal>) -> ApiResult {
    let mut all = st.svc.meta.list_records("project", "").await?;
    all.retain(|p| p["id"].as_str().is_some_and(|id| who.role_on(id).is_some()));
    Ok(Json(serde_json::json!({ "projects": all })).into_response())
}

pub(crate) async fn project_exists(st: &AppState, project: &str) -> Result<(), Problem> {
    match st.svc.meta.get_record("project", project).await? {
        Some(_) => Ok(()),
        None => Err(Problem::not_found(format!("no project '{project}' (POST /projects)"))),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewModel {
    name: String,
    #[serde(default)]
    task: Option<String>,
}

#[utoipa::path(post, path = "/projects/{project}/models", operation_id = "create_project_model", tag = "catalog", params(("project" = String, Path)), request_body = NewModel, responses((status = 201, body = serde_json::Value), (status = 409, body = ProblemDoc)))]
async fn create_model(State(st): State<AppState>, Extension(who): Extension<Principal>, Path(project): Path<String>, b: Bytes) -> ApiResult {
    let req: NewModel = body(&b)?;
    check_names(&[&project, &req.name])?;
    who.require(&project, Role::Editor)?;
    project_exists(&st, &project).await?;
    let id = format!("{project}.{}", req.name);
    let doc =
        serde_json::json!({ "id": id, "project": project, "name": req.name, "task": req.task, "created_at": st.svc.clock.now(), "created_by": who.actor });
    if !st.svc.meta.put_record("model", &id, &doc, true).await? {
        return Err(Problem::new(StatusCode::CONFLICT, "conflict", format!("model '{id}' exists")));
    }
    Ok((StatusCode::CREATED, Json(doc)).into_response())
}

#[utoipa::path(get, path = "/projects/{project}/models", tag = "catalog", params(("project" = String, Path)), responses((status = 200, body = serde_json::Value)))]
async fn list_models(State(st): State<AppState>, Extension(who): Extension<Principal>, Path(project): Path<String>) -> ApiResult {
    who.require(&project, Role::Viewer)?;
    let models = st.svc.meta.list_records("model", &format!("{project}.")).await?;
    Ok(Json(serde_json::json!({ "models": models })).into_response())
}

#[utoipa::path(get, path = "/models/{id}", tag = "catalog", params(("id" = String, Path)), responses((status = 200, body = serde_json::Value), (status = 404, body = ProblemDoc)))]
async fn get_model(State(st): State<AppState>, Extension(who): Extension<Principal>, Path(id): Path<String>) -> ApiResult {
    who.require(project_of(&id), Role::Viewer)?;
    let m = st.svc.meta.get_record("model", &id).await?.ok_or_else(|| Problem::not_found(format!("no model {id}")))?;
    Ok(Json(m).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewVersion {
    version: String,
    /// Extra file names to get upload links for (model.onnx, calib.npz, eval.npz and
    /// recipe.yaml always come).
    #[serde(default)]
    files: Vec<String>,
}

/// Records a version and returns presigned upload links (model bytes never pass through the
/// API's JSON routes); PUT the inputs, then `recipe.yaml` last (or POST /jobs with a policy).
#[utoipa::path(post, path = "/models/{id}/versions", tag = "catalog", params(("id" = String, Path)), request_body = NewVersion, responses((status = 201, description = "the version and presigned PUT links for its inputs", body = serde_json::Value), (status = 400, body = ProblemDoc), (status = 403, body = ProblemDoc), (status = 404, description = "no such model", body = ProblemDoc)))]
async fn create_version(State(st): State<AppState>, Extension(who): Extension<Principal>, Path(id): Path<String>, b: Bytes) -> ApiResult {
    let req: NewVersion = body(&b)?;
    let (project, model) = id.split_once('.').ok_or_else(|| Problem::bad_request(format!("model ids are <project>.<model>, not '{id}'")))?;
    check_names(&[project, model, &req.version])?;
    who.require(project, Role::Editor)?;
    st.svc.meta.get_record("model", &id).await?.ok_or_else(|| Problem::not_found(format!("no model {id} (POST /projects/{project}/models)")))?;
    let prefix = format!("uploads/{project}/{model}/{}/", req.version);
    let now = st.svc.clock.now();
    let mut links = serde_json::Map::new();
    if req.files.len() > 64 {
        return Err(Problem::bad_request("ask for at most 64 extra upload links at once"));
    }
    for f in ["model.onnx", "calib.npz", "eval.npz", "train.npz", "recipe.yaml"].iter().map(|s| (*s).to_owned()).chain(req.files.clone()) {
        check_file_name(&f)?;
        links.insert(f.clone(), serde_json::Value::String(st.svc.store.presign_put(&format!("{prefix}{f}"), LINK_TTL, now).await?));
    }
    let vid = format!("{id}/{}", req.version);
    let doc = serde_json::json!({ "id": vid, "model_id": id, "version": req.version, "prefix": prefix, "state": "uploading", "created_at": now, "created_by": who.actor });
    st.svc.meta.put_record("version", &vid, &doc, true).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "version": doc, "upload_urls": links, "upload_urls_expire_at": now + LINK_TTL.as_secs(), "method": "PUT" })),
    )
        .into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewPolicy {
    project: String,
    name: String,
    /// The recipe YAML.
    yaml: String,
}

/// Stores a policy after validating it; YAML errors come back as 422 naming key and line.
#[utoipa::path(post, path = "/policies", tag = "policies", request_body = NewPolicy, responses((status = 201, body = serde_json::Value), (status = 422, description = "the YAML does not validate; detail names the key and line", body = ProblemDoc)))]
async fn create_policy(State(st): State<AppState>, Extension(who): Extension<Principal>, b: Bytes) -> ApiResult {
    let req: NewPolicy = body(&b)?;
    check_names(&[&req.project, &req.name])?;
    who.require(&req.project, Role::Editor)?;
    if let Err(e) = tamp_domain::Recipe::from_yaml(&req.yaml) {
        return Err(Problem::invalid_recipe(&e, ""));
    }
    let id = format!("{}.{}", req.project, req.name);
    let doc =
        serde_json::json!({ "id": id, "project": req.project, "name": req.name, "yaml": req.yaml, "updated_at": st.svc.clock.now(), "updated_by": who.actor });
    st.svc.meta.put_record("policy", &id, &doc, false).await?;
    audit(&st, &who, "policy.change", &id, String::new()).await?;
    Ok((StatusCode::CREATED, Json(doc)).into_response())
}

#[utoipa::path(get, path = "/policies/{id}", tag = "policies", params(("id" = String, Path)), responses((status = 200, body = serde_json::Value), (status = 404, body = ProblemDoc)))]
async fn get_policy(State(st): State<AppState>, Extension(who): Extension<Principal>, Path(id): Path<String>) -> ApiResult {
    who.require(project_of(&id), Role::Viewer)?;
    let p = st.svc.meta.get_record("policy", &id).await?.ok_or_else(|| Problem::not_found(format!("no policy {id}")))?;
    Ok(Json(p).into_response())
}

/// The job's report: the stored document the report step wrote, or (while the job runs) one
/// built now: per stage, the candidates table and the manifest of its last attempt.
/// The format `GET /reports/{job}` answers in: `?format=` first, else the `Accept` header.
fn report_format(query: Option<&str>, accept: Option<&str>) -> Result<&'static str, Problem> {
    match query {
        Some("json") => return Ok("json"),
        Some("html") => return Ok("html"),
        Some("pdf") => return Ok("pdf"),
        Some(other) => return Err(Problem::bad_request(format!("format `{other}` is not offered; use json, html or pdf"))),
        None => {}
    }
    let accept = accept.unwrap_or("application/json");
    // The first listed type we offer wins (q-values are rare from browsers and curl alike).
    for t in accept.split(',').map(|t| t.split(';').next().unwrap_or("").trim()) {
        match t {
            "application/json" | "*/*" | "application/*" => return Ok("json"),
            "text/html" | "text/*" => return Ok("html"),
            "application/pdf" => return Ok("pdf"),
            _ => {}
        }
    }
    Err(Problem::new(
        StatusCode::NOT_ACCEPTABLE,
        "not acceptable",
        format!("`{accept}`: the report is offered as application/json, text/html and application/pdf"),
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ReportQuery {
    /// `json` (default), `html` or `pdf`; overrides `Accept`.
    format: Option<String>,
}

#[utoipa::path(get, path = "/reports/{job}", tag = "reports", params(("job" = String, Path), ReportQuery), responses(
    (status = 200, description = "JSON: per stage the candidates and manifest, and the summary (recommendation, flags, cost); HTML or PDF: the rendered report (after the job ends)", body = serde_json::Value),
    (status = 404, body = ProblemDoc), (status = 406, body = ProblemDoc)))]
async fn report(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(job): Path<String>,
    Query(q): Query<ReportQuery>,
    headers: axum::http::HeaderMap,
) -> ApiResult {
    let j = st.svc.meta.get_job(&job).await?.ok_or_else(|| Problem::not_found(format!("no job {job}")))?;
    who.require(&j.project, Role::Viewer)?;
    let format = report_format(q.format.as_deref(), headers.get(axum::http::header::ACCEPT).and_then(|v| v.to_str().ok()))?;
    if format != "json" {
        let bytes = match st.svc.store.get(&handlers::report_doc_key(&j.id, format)).await {
            Ok(b) => b,
            Err(tamp_ports::PortError::NotFound(_)) => {
                return Err(Problem::not_found(format!(
                    "no {format} report for {job} yet: it is rendered when the job ends (state now: {}); the JSON report is available now",
                    j.state.as_str()
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let ctype = if format == "pdf" { "application/pdf" } else { "text/html; charset=utf-8" };
        let disposition = format!("inline; filename=\"{}-report.{format}\"", j.id);
        return Ok(([(axum::http::header::CONTENT_TYPE, ctype.to_owned()), (axum::http::header::CONTENT_DISPOSITION, disposition)], bytes).into_response());
    }
    if j.state.is_terminal()
        && let Ok(bytes) = st.svc.store.get(&handlers::report_key(&j.id)).await
        && let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&bytes)
    {
        return Ok(Json(doc).into_response());
    }
    let doc = handlers::build_report(&st.svc, &j.id).await?.ok_or_else(|| Problem::not_found(format!("no job {job}")))?;
    Ok(Json(doc).into_response())
}

/// Prometheus text exposition (admins only: job counts span every project).
async fn metrics(State(st): State<AppState>, Extension(who): Extension<Principal>) -> ApiResult {
    who.require("*", Role::Admin)?;
    let Some(m) = &st.metrics else {
        return Err(Problem::new(StatusCode::NOT_FOUND, "not found", "this deployment exports metrics to CloudWatch, not /metrics"));
    };
    let text = m.render(st.svc.meta.as_ref()).await?;
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// Times each routed request for `tamp_api_request_duration_seconds` (by route pattern).
async fn timed(State(st): State<AppState>, req: axum::extract::Request, next: Next) -> Response {
    let Some(m) = st.metrics.clone() else { return next.run(req).await };
    let route = req.extensions().get::<axum::extract::MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let t0 = std::time::Instant::now();
    let resp = next.run(req).await;
    m.observe_request(&method, &route, resp.status().as_u16(), t0.elapsed().as_secs_f64());
    resp
}

#[utoipa::path(get, path = "/healthz", tag = "meta", security(()), responses((status = 200, body = serde_json::Value)))]
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// An RFC 9457 problem document, as every error is sent.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents the shape `Problem` serialises to
pub(crate) struct ProblemDoc {
    r#type: String,
    title: String,
    status: u16,
    detail: String,
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some("an API token (tamp_…) or a JWT")).build()),
        );
    }
}

/// The OpenAPI document as pretty JSON (what `tamp openapi` prints and `ui/openapi.json` holds).
pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

/// The OpenAPI 3.1 document, generated from the handlers' annotations.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Tamp API", description = "Compress ONNX models and prove what it did."),
    paths(healthz, upload, jobs::create_job, jobs::list_jobs, jobs::get_job, jobs::cancel_job, catalog::get_project, catalog::create_model, catalog::get_version, catalog::list_policies, catalog::validate_policy, catalog::policy_templates, best, artifact, download, create_token, list_audit, create_project, list_projects, create_model, list_models, get_model, create_version, catalog::list_versions, create_policy, get_policy, report, crate::erasure::delete_project, crate::erasure::delete_model, crate::erasure::delete_version, crate::erasure::delete_job, crate::erasure::delete_artifact, crate::erasure::delete_upload, crate::erasure::delete_token, crate::erasure::list_tokens),
    components(schemas(ProblemDoc, jobs::CreateJob, jobs::CreateJobPrd, jobs::JobConstraints, catalog::NewModelPrd, catalog::ValidatePolicy, NewProject, NewModel, NewVersion, NewPolicy, CreateToken)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;
