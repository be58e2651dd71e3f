//! Catalog and policy routes in the PRD's form: `GET /projects/{id}`, `POST /models` (the
//! earlier `POST /projects/{p}/models` stays), `GET /models/{id}/versions[/{version}]` with
//! each version's state from its newest job, `GET /policies`, `POST /policies/validate`
//! (errors with the line they point at, for the UI's editor) and `GET /policy-templates`
//! (the recipes of `configs/policy_examples/`, built in).

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use tamp_ports::Role;

use crate::api::{ApiResult, AppState, ProblemDoc, body, check_names, project_exists, project_of};
use crate::auth::Principal;
use crate::problem::Problem;
use crate::views;

#[utoipa::path(get, path = "/projects/{id}", tag = "catalog", params(("id" = String, Path)), responses((status = 200, description = "the project with its models", body = serde_json::Value), (status = 404, body = ProblemDoc)))]
pub(crate) async fn get_project(State(st): State<AppState>, Extension(who): Extension<Principal>, Path(id): Path<String>) -> ApiResult {
    check_names(&[&id])?;
    who.require(&id, Role::Viewer)?;
    let mut p = st.svc.meta.get_record("project", &id).await?.ok_or_else(|| Problem::not_found(format!("no project '{id}'")))?;
    p["models"] = st.svc.meta.list_records("model", &format!("{id}.")).await?.into();
    Ok(Json(p).into_response())
}

/// The PRD's model request.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewModelPrd {
    project_id: String,
    name: String,
    #[serde(default)]
    task: Option<String>,
    /// Only `onnx` is taken.
    #[serde(default)]
    framework: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

#[utoipa::path(post, path = "/models", tag = "catalog", request_body = NewModelPrd, responses((status = 201, body = serde_json::Value), (status = 400, body = ProblemDoc), (status = 404, body = ProblemDoc), (status = 409, body = ProblemDoc)))]
pub(crate) async fn create_model(State(st): State<AppState>, Extension(who): Extension<Principal>, b: Bytes) -> ApiResult {
    let req: NewModelPrd = body(&b)?;
    check_names(&[&req.project_id, &req.name])?;
    who.require(&req.project_id, Role::Editor)?;
    if let Some(f) = req.framework.as_deref().filter(|f| !f.eq_ignore_ascii_case("onnx")) {
        return Err(Problem::bad_request(format!("framework `{f}` is not taken: Tamp compresses ONNX models (export yours to ONNX first)")));
    }
    if req.description.as_ref().is_some_and(|d| d.len() > 2000) {
        return Err(Problem::bad_request("description is at most 2000 characters"));
    }
    project_exists(&st, &req.project_id).await?;
    let id = format!("{}.{}", req.project_id, req.name);
    let doc = serde_json::json!({
        "id": id, "project": req.project_id, "project_id": req.project_id, "name": req.name, "task": req.task,
        "framework": "onnx", "description": req.description, "created_at": st.svc.clock.now(), "created_by": who.actor,
    });
    if !st.svc.meta.put_record("model", &id, &doc, true).await? {
        return Err(Problem::new(StatusCode::CONFLICT, "conflict", format!("model '{id}' exists")));
    }
    Ok((StatusCode::CREATED, Json(doc)).into_response())
}

/// Each version with `state` and `latest_job` from its newest job.
async fn with_states(st: &AppState, model_id: &str, mut versions: Vec<serde_json::Value>) -> Result<Vec<serde_json::Value>, Problem> {
    let (project, model) = model_id.split_once('.').unwrap_or((model_id, ""));
    let jobs = st.svc.meta.list_jobs(None, 1000).await?;
    for v in &mut versions {
        let name = v["version"].as_str().unwrap_or_default().to_owned();
        let (state, job) = views::version_state(project, model, &name, &jobs);
        v["state"] = state.into();
        v["latest_job"] = job.into();
        v["model_version_id"] = v["id"].clone();
    }
    Ok(versions)
}

#[utoipa::path(get, path = "/models/{id}/versions", tag = "catalog", params(("id" = String, Path)), responses((status = 200, description = "the versions, each with state (uploading, processing, ready, failed, cancelled) and latest_job", body = serde_json::Value)))]
pub(crate) async fn list_versions(State(st): State<AppState>, Extension(who): Extension<Principal>, Path(id): Path<String>) -> ApiResult {
    who.require(project_of(&id), Role::Viewer)?;
    let versions = st.svc.meta.list_records("version", &format!("{id}/")).await?;
    Ok(Json(serde_json::json!({ "versions": with_states(&st, &id, versions).await? })).into_response())
}

#[utoipa::path(get, path = "/models/{id}/versions/{version_id}", tag = "catalog", params(("id" = String, Path), ("version_id" = String, Path)), responses((status = 200, description = "the version with state and latest_job", body = serde_json::Value), (status = 404, body = ProblemDoc)))]
pub(crate) async fn get_version(State(st): State<AppState>, Extension(who): Extension<Principal>, Path((id, version)): Path<(String, String)>) -> ApiResult {
    who.require(project_of(&id), Role::Viewer)?;
    let v = st
        .svc
        .meta
        .get_record("version", &format!("{id}/{version}"))
        .await?
        .ok_or_else(|| Problem::not_found(format!("no version {version} of model {id}")))?;
    let v = with_states(&st, &id, vec![v]).await?.remove(0);
    Ok(Json(v).into_response())
}

#[derive(Deserialize)]
pub(crate) struct PolicyQuery {
    project: Option<String>,
}

#[utoipa::path(get, path = "/policies", tag = "policies", params(("project" = Option<String>, Query)), responses((status = 200, description = "stored policies the caller may see", body = serde_json::Value)))]
pub(crate) async fn list_policies(State(st): State<AppState>, Extension(who): Extension<Principal>, Query(q): Query<PolicyQuery>) -> ApiResult {
    let prefix = q.project.as_ref().map(|p| format!("{p}.")).unwrap_or_default();
    let mut all = st.svc.meta.list_records("policy", &prefix).await?;
    all.retain(|p| p["project"].as_str().is_some_and(|id| who.role_on(id).is_some()));
    Ok(Json(serde_json::json!({ "policies": all })).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ValidatePolicy {
    /// The recipe YAML.
    yaml: String,
}

/// Checks a recipe without storing it: `valid`, and otherwise the error with the 1-based
/// `line` it points at (what the policy editor marks).
#[utoipa::path(post, path = "/policies/validate", tag = "policies", request_body = ValidatePolicy, responses((status = 200, description = "{valid, errors: [{line, message}], policy: {name, stages}}", body = serde_json::Value)))]
pub(crate) async fn validate_policy(Extension(_who): Extension<Principal>, b: Bytes) -> ApiResult {
    let req: ValidatePolicy = body(&b)?;
    Ok(Json(match tamp_domain::Recipe::from_yaml(&req.yaml) {
        Ok(r) => serde_json::json!({
            "valid": true, "errors": [],
            "policy": { "name": r.policy.name, "stages": r.policy.stages.iter().map(|s| s.kind()).collect::<Vec<_>>(), "targets": r.targets.iter().map(|t| t.as_str()).collect::<Vec<_>>() },
        }),
        Err(e) => serde_json::json!({ "valid": false, "errors": [{ "line": e.line(), "message": e.to_string() }] }),
    })
    .into_response())
}

/// The built-in templates: (id, title, technique, the recipe).
const TEMPLATES: [(&str, &str, &str, &str); 6] = [
    ("ptq_8bit", "PTQ only: int8", "ptq", include_str!("../../../configs/policy_examples/ptq_8bit.yaml")),
    ("ptq_dynamic", "PTQ only: dynamic int8 (transformers)", "ptq", include_str!("../../../configs/policy_examples/ptq_dynamic.yaml")),
    ("ptq_tflite", "PTQ + TFLite export", "ptq", include_str!("../../../configs/policy_examples/ptq_tflite.yaml")),
    ("prune50_finetune", "Prune + fine-tune", "prune", include_str!("../../../configs/policy_examples/prune50_finetune.yaml")),
    ("distill_resnet_half", "Distill to a half-width student", "distill", include_str!("../../../configs/policy_examples/distill_resnet_half.yaml")),
    ("search_mixed", "Search: mixed precision under constraints", "search", include_str!("../../../configs/policy_examples/search_mixed.yaml")),
];

#[utoipa::path(get, path = "/policy-templates", tag = "policies", responses((status = 200, description = "built-in recipe templates: id, title, technique, description, stages, yaml", body = serde_json::Value)))]
pub(crate) async fn policy_templates(Extension(_who): Extension<Principal>) -> ApiResult {
    let list: Vec<serde_json::Value> = TEMPLATES
        .iter()
        .map(|(id, title, technique, yaml)| {
            let r = tamp_domain::Recipe::from_yaml(yaml).ok();
            serde_json::json!({
                "id": id, "title": title, "technique": technique, "yaml": yaml,
                "description": r.as_ref().and_then(|r| r.policy.description.clone()),
                "stages": r.as_ref().map(|r| r.policy.stages.iter().map(|s| s.kind()).collect::<Vec<_>>()),
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "templates": list })).into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_template_is_a_valid_recipe() {
        for (id, _, _, yaml) in super::TEMPLATES {
            tamp_domain::Recipe::from_yaml(yaml).unwrap_or_else(|e| panic!("{id}: {e}"));
        }
    }
}
