//! Job routes: `POST /jobs` in the PRD's form (`model_version_id`, `policy_id`,
//! `target_runtimes`, `constraints`) and in the earlier one (`project`, `model`, `version`,
//! `policy`), `GET /jobs` (with current stage, health and ETA for the dashboard),
//! `GET /jobs/{id}` (with its timeline) and `POST /jobs/{id}/cancel`.

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use tamp_domain::job::{Job, JobState, Signal};
use tamp_ports::Role;

use crate::api::{ApiResult, AppState, ProblemDoc, check_names, project_of};
use crate::auth::Principal;
use crate::handlers::{self, Ingested};
use crate::problem::Problem;
use crate::views::{self, StageTimes};

/// Succeeded jobs whose stage times feed the estimates.
const HISTORY: usize = 200;

async fn stage_times(st: &AppState) -> Result<StageTimes, Problem> {
    Ok(StageTimes::from_jobs(&st.svc.meta.list_jobs(Some(JobState::Succeeded), HISTORY).await?))
}

/// The answer to a request that created (201) or found (200) a job: its id, state, link and
/// the estimated minutes to completion.
pub(crate) async fn created(st: &AppState, outcome: Ingested) -> ApiResult {
    let (status, id, duplicate) = match outcome {
        Ingested::Created(id) => (StatusCode::CREATED, id, false),
        Ingested::Duplicate(id) => (StatusCode::OK, id, true),
        Ingested::Ignored(why) => return Err(Problem::bad_request(why)),
    };
    let job = st.svc.meta.get_job(&id).await?;
    let now = st.svc.clock.now();
    let eta = match &job {
        Some(j) => views::estimate(j, &stage_times(st).await?, now),
        None => None,
    };
    let mut doc = serde_json::json!({
        "job_id": id,
        "job": id,
        "status": job.as_ref().map_or("queued", |j| j.state.as_str()),
        "link": format!("/jobs/{id}"),
        "estimated_completion_minutes": eta.as_ref().map(|e| e.minutes()),
        "reason": job.as_ref().and_then(|j| j.reason.clone()),
    });
    if duplicate {
        doc["duplicate"] = true.into();
    }
    Ok((status, Json(doc)).into_response())
}

/// The PRD's job request.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateJobPrd {
    /// `<project>.<model>/<version>` (the `id` of `GET /models/{id}/versions/{version}`).
    model_version_id: String,
    /// A stored policy `<project>.<name>`; without it, the version's uploaded recipe.yaml.
    #[serde(default)]
    policy_id: Option<String>,
    /// Replaces the policy's `targets` (onnxruntime, tflite, tensorrt, openvino).
    #[serde(default)]
    target_runtimes: Option<Vec<String>>,
    /// Set on top of the policy's constraints.
    #[serde(default)]
    constraints: JobConstraints,
}

/// The job's constraints (each replaces the policy's where given).
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobConstraints {
    /// The largest metric drop, in percent of the original, a candidate may have.
    #[serde(default)]
    max_metric_drop_pct: Option<f64>,
    /// The slowest P50 latency (ms, batch 1) a candidate may have.
    #[serde(default)]
    max_latency_ms_p50: Option<f64>,
    /// The smallest size ratio (original / compressed) a candidate must reach.
    #[serde(default)]
    min_compression_ratio: Option<f64>,
}

impl JobConstraints {
    fn pairs(&self) -> Vec<(String, f64)> {
        [
            ("max_metric_drop_pct", self.max_metric_drop_pct),
            ("max_latency_ms_p50", self.max_latency_ms_p50),
            ("min_compression_ratio", self.min_compression_ratio),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
        .collect()
    }
}

/// The earlier job request (still served).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateJob {
    project: String,
    model: String,
    version: String,
    /// A stored policy (`<project>.<name>`) instead of the version's uploaded recipe.yaml.
    #[serde(default)]
    policy: Option<String>,
}

/// Starts a job on an uploaded model version. A request with the same `Idempotency-Key` from
/// the same caller on the same version returns the first job (200).
#[utoipa::path(post, path = "/jobs", tag = "jobs",
    request_body(content = CreateJobPrd, description = "the PRD's form; the earlier `{project, model, version, policy}` form is accepted too"),
    params(("Idempotency-Key" = Option<String>, Header, description = "a retried POST with the same key returns the first job")),
    responses((status = 201, description = "job created: job_id, status, link, estimated_completion_minutes", body = serde_json::Value), (status = 200, description = "duplicate of an earlier request", body = serde_json::Value), (status = 400, body = ProblemDoc), (status = 403, body = ProblemDoc), (status = 404, body = ProblemDoc), (status = 422, description = "the policy with these overrides is not a valid recipe; detail names key and line", body = ProblemDoc)))]
pub(crate) async fn create_job(State(st): State<AppState>, Extension(who): Extension<Principal>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let raw: serde_json::Value = serde_json::from_slice(&body).map_err(|e| Problem::bad_request(format!("request body: {e}")))?;
    let (req, overrides) = if raw.get("model_version_id").is_some() {
        // The path names the field (`constraints.max_latency_ms_p50: invalid type …`).
        let prd: CreateJobPrd =
            serde_path_to_error::deserialize(raw).map_err(|e| Problem::bad_request(format!("request body: {}: {}", e.path(), e.inner())))?;
        let (model_id, version) = prd.model_version_id.split_once('/').ok_or_else(|| {
            Problem::bad_request(format!(
                "model_version_id is `<project>.<model>/<version>` (as GET /models/{{id}}/versions returns it), not `{}`",
                prd.model_version_id
            ))
        })?;
        let (project, model) = model_id.split_once('.').ok_or_else(|| Problem::bad_request(format!("model ids are <project>.<model>, not '{model_id}'")))?;
        let req = CreateJob { project: project.into(), model: model.into(), version: version.into(), policy: prd.policy_id };
        (req, Some((prd.target_runtimes, prd.constraints)))
    } else {
        (
            serde_json::from_value::<CreateJob>(raw).map_err(|e| {
                Problem::bad_request(format!("request body: {e} (or send the PRD's form: model_version_id, policy_id, target_runtimes, constraints)"))
            })?,
            None,
        )
    };
    check_names(&[&req.project, &req.model, &req.version])?;
    who.require(&req.project, Role::Editor)?;
    // Keys are scoped to the caller, the project, the model version and what runs on it: the
    // same key from another caller or project is another request, never its duplicate.
    let scope = format!("{}|{}/{}/{}", who.actor, req.project, req.model, req.version);
    let marker_of = |what: &str| match headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        Some(k) if !k.is_empty() && k.len() <= 200 => Ok(format!("api:{scope}|{what}|{k}")),
        Some(_) => Err(Problem::bad_request("Idempotency-Key must be 1–200 visible characters")),
        None => Ok(format!("api:{scope}|{what}|{}", tamp_domain::ids::random_hex(8))),
    };
    let (yaml, source, what) = if let Some(pid) = &req.policy {
        if project_of(pid) != req.project {
            return Err(Problem::bad_request(format!("policy {pid} belongs to another project")));
        }
        let policy = st.svc.meta.get_record("policy", pid).await?.ok_or_else(|| Problem::not_found(format!("no policy {pid} (POST /policies)")))?;
        (policy["yaml"].as_str().unwrap_or_default().to_owned(), format!("policy {pid}"), format!("policy {pid}"))
    } else {
        let key = format!("uploads/{}/{}/{}/recipe.yaml", req.project, req.model, req.version);
        let meta = st.svc.store.head(&key).await?.ok_or_else(|| {
            Problem::bad_request(format!("{key} has not been uploaded (PUT /{key}), and no policy was named (policy_id, or policy in the earlier form)"))
        })?;
        if overrides.is_none() {
            // The Idempotency-Key replaces the object version in the ingest key, so a retried
            // POST finds the first job and a new key asks for a new run of the same upload.
            return created(&st, handlers::ingest(&st.svc, &key, &marker_of(&format!("upload@{}", meta.version))?).await?).await;
        }
        let text = String::from_utf8(st.svc.store.get(&key).await?).map_err(|_| Problem::bad_request(format!("{key} is not UTF-8 text")))?;
        (text, key, format!("upload@{}", meta.version))
    };
    let yaml = match overrides {
        Some((runtimes, constraints)) if runtimes.is_some() || !constraints.pairs().is_empty() => {
            let constraints = constraints.pairs();
            tamp_domain::recipe::apply_job_overrides(&yaml, runtimes.as_deref(), &constraints)
                .map_err(|e| Problem::invalid_recipe(&e, &format!("{source} with this request's overrides")))?
        }
        _ => yaml,
    };
    // The overrides are part of what runs, so part of what a retry must repeat.
    let marker = marker_of(&format!("{what}|{}", &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(yaml.as_bytes()))[..16]))?;
    created(&st, handlers::start_job(&st.svc, &req.project, &req.model, &req.version, &yaml, &source, &marker).await?).await
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    status: Option<String>,
    limit: Option<usize>,
    project: Option<String>,
}

#[utoipa::path(get, path = "/jobs", tag = "jobs", params(("status" = Option<String>, Query, description = "queued, planning, running, succeeded, failed, cancelled"), ("limit" = Option<usize>, Query, description = "at most 1000 (default 100)"), ("project" = Option<String>, Query)), responses((status = 200, description = "jobs the caller may see, newest first, each with current_stage, progress, health and eta", body = serde_json::Value)))]
pub(crate) async fn list_jobs(State(st): State<AppState>, Extension(who): Extension<Principal>, Query(q): Query<ListQuery>) -> ApiResult {
    let state = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            JobState::parse(s)
                .ok_or_else(|| Problem::bad_request(format!("unknown status '{s}' (queued, planning, running, succeeded, failed, cancelled)")))?,
        ),
    };
    let mut jobs = st.svc.meta.list_jobs(state, q.limit.unwrap_or(100).min(1000)).await?;
    jobs.retain(|j| who.role_on(&j.project).is_some() && q.project.as_ref().is_none_or(|p| &j.project == p));
    let times = stage_times(&st).await?;
    let now = st.svc.clock.now();
    let views: Vec<serde_json::Value> = jobs.iter().map(|j| views::job_view(j, &times, now)).collect();
    Ok(Json(serde_json::json!({ "jobs": views })).into_response())
}

async fn job_or_404(st: &AppState, id: &str) -> Result<Job, Problem> {
    st.svc.meta.get_job(id).await?.ok_or_else(|| Problem::not_found(format!("no job {id}")))
}

#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs", params(("id" = String, Path)), responses((status = 200, description = "the job with its stages, current_stage, progress, health, eta and timeline", body = serde_json::Value), (status = 404, body = ProblemDoc)))]
pub(crate) async fn get_job(State(st): State<AppState>, Extension(who): Extension<Principal>, Path(id): Path<String>) -> ApiResult {
    let job = job_or_404(&st, &id).await?;
    who.require(&job.project, Role::Viewer)?;
    let mut v = views::job_view(&job, &stage_times(&st).await?, st.svc.clock.now());
    v["timeline"] = views::timeline(&job).into();
    Ok(Json(v).into_response())
}

#[utoipa::path(post, path = "/jobs/{id}/cancel", tag = "jobs", params(("id" = String, Path)), responses((status = 200, description = "the job after cancelling (a finished job is unchanged)", body = serde_json::Value), (status = 404, body = ProblemDoc)))]
pub(crate) async fn cancel_job(State(st): State<AppState>, Extension(who): Extension<Principal>, Path(id): Path<String>) -> ApiResult {
    let existing = job_or_404(&st, &id).await?;
    who.require(&existing.project, Role::Editor)?;
    let job = handlers::signal(&st.svc, &id, &Signal::Cancel { reason: "cancelled through the API".into() })
        .await?
        .ok_or_else(|| Problem::not_found(format!("no job {id}")))?;
    Ok(Json(job).into_response())
}
