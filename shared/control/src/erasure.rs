//! Deletion routes (data-subject erasure): projects, models, versions, jobs, artifacts,
//! uploads and tokens, each authorised and audited; the work is `handlers::delete_scope` and
//! `handlers::delete_job`, over the ports.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use tamp_ports::Role;

use crate::api::{ApiResult, AppState, ProblemDoc, audit, check_file_name, check_names, project_of};
use crate::auth::Principal;
use crate::handlers;
use crate::problem::Problem;

fn deleted(d: &handlers::Deleted) -> ApiResult {
    Ok(Json(serde_json::json!({ "deleted": d })).into_response())
}

/// Deletes a project and everything of it: jobs, artifacts, reports, logs, uploads, models,
/// versions, policies, its tokens (admin on the project). Audited.
#[utoipa::path(delete, path = "/projects/{project}", tag = "catalog", params(("project" = String, Path)), responses((status = 200, description = "what was removed", body = serde_json::Value), (status = 403, body = ProblemDoc), (status = 404, body = ProblemDoc)))]
pub(crate) async fn delete_project(State(st): State<AppState>, Extension(who): Extension<Principal>, Path(project): Path<String>) -> ApiResult {
    check_names(&[&project])?;
    who.require(&project, Role::Admin)?;
    let known = st.svc.meta.get_record("project", &project).await?.is_some() || !st.svc.store.list(&format!("uploads/{project}/")).await?.is_empty();
    if !known {
        return Err(Problem::not_found(format!("no project '{project}'")));
    }
    let d = handlers::delete_scope(&st.svc, handlers::Scope::Project(&project)).await?;
    audit(&st, &who, "delete", &format!("project {project}"), serde_json::to_string(&d).unwrap_or_default()).await?;
    deleted(&d)
}

/// Deletes a model with its versions, jobs, artifacts and uploads (admin on its project).
#[utoipa::path(delete, path = "/models/{id}", tag = "catalog", params(("id" = String, Path)), responses((status = 200, body = serde_json::Value), (status = 403, body = ProblemDoc)))]
pub(crate) async fn delete_model(State(st): State<AppState>, Extension(who): Extension<Principal>, Path(id): Path<String>) -> ApiResult {
    let (project, model) = id.split_once('.').ok_or_else(|| Problem::bad_request(format!("model ids are <project>.<model>, not '{id}'")))?;
    check_names(&[project, model])?;
    who.require(project, Role::Admin)?;
    let d = handlers::delete_scope(&st.svc, handlers::Scope::Model(project, model)).await?;
    audit(&st, &who, "delete", &format!("model {id}"), serde_json::to_string(&d).unwrap_or_default()).await?;
    deleted(&d)
}

/// Deletes one version of a model: its uploads, jobs and artifacts (admin on its project).
#[utoipa::path(delete, path = "/models/{id}/versions/{version}", tag = "catalog", params(("id" = String, Path), ("version" = String, Path)), responses((status = 200, body = serde_json::Value), (status = 403, body = ProblemDoc)))]
pub(crate) async fn delete_version(State(st): State<AppState>, Extension(who): Extension<Principal>, Path((id, version)): Path<(String, String)>) -> ApiResult {
    let (project, model) = id.split_once('.').ok_or_else(|| Problem::bad_request(format!("model ids are <project>.<model>, not '{id}'")))?;
    check_names(&[project, model, &version])?;
    who.require(project, Role::Admin)?;
    let d = handlers::delete_scope(&st.svc, handlers::Scope::Version(project, model, &version)).await?;
    audit(&st, &who, "delete", &format!("version {id}/{version}"), serde_json::to_string(&d).unwrap_or_default()).await?;
    deleted(&d)
}

/// Deletes a job with its artifacts, report and logs (editor on its project); a running job
/// is cancelled first.
#[utoipa::path(delete, path = "/jobs/{id}", tag = "jobs", params(("id" = String, Path)), responses((status = 200, body = serde_json::Value), (status = 404, body = ProblemDoc)))]
pub(crate) async fn delete_job(State(st): State<AppState>, Extension(who): Extension<Principal>, Path(id): Path<String>) -> ApiResult {
    let job = st.svc.meta.get_job(&id).await?.ok_or_else(|| Problem::not_found(format!("no job {id}")))?;
    who.require(&job.project, Role::Editor)?;
    let mut d = handlers::Deleted::default();
    handlers::delete_job(&st.svc, &job, &mut d).await?;
    audit(&st, &who, "delete", &format!("job {id}"), serde_json::to_string(&d).unwrap_or_default()).await?;
    deleted(&d)
}

/// Deletes one artifact: its record, the best pointer at it, and its stored objects.
#[utoipa::path(delete, path = "/artifacts/{id}", tag = "artifacts", params(("id" = String, Path)), responses((status = 200, body = serde_json::Value), (status = 404, body = ProblemDoc)))]
pub(crate) async fn delete_artifact(State(st): State<AppState>, Extension(who): Extension<Principal>, Path(id): Path<String>) -> ApiResult {
    let a = st.svc.meta.get_artifact(&id).await?.ok_or_else(|| Problem::not_found(format!("no artifact {id}")))?;
    who.require(project_of(&a.model_id), Role::Editor)?;
    st.svc.meta.delete_artifact(&id).await?;
    for key in [&a.key, &a.metadata_key] {
        st.svc.store.delete(key).await?;
    }
    audit(&st, &who, "delete", &format!("artifact {id}"), a.key.clone()).await?;
    deleted(&handlers::Deleted { objects: 2, records: 1, ..Default::default() })
}

/// Deletes one uploaded file (a model, a dataset, a recipe) of a version.
#[utoipa::path(delete, path = "/uploads/{project}/{model}/{version}/{file}", tag = "uploads", params(("project" = String, Path), ("model" = String, Path), ("version" = String, Path), ("file" = String, Path)), responses((status = 200, body = serde_json::Value), (status = 404, body = ProblemDoc)))]
pub(crate) async fn delete_upload(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((project, model, version, file)): Path<(String, String, String, String)>,
) -> ApiResult {
    check_names(&[&project, &model, &version])?;
    who.require(&project, Role::Editor)?;
    check_file_name(&file)?;
    let key = format!("uploads/{project}/{model}/{version}/{file}");
    if st.svc.store.head(&key).await?.is_none() {
        return Err(Problem::not_found(format!("no upload {key}")));
    }
    st.svc.store.delete(&key).await?;
    audit(&st, &who, "delete", &key, String::new()).await?;
    deleted(&handlers::Deleted { objects: 1, ..Default::default() })
}

/// Revokes a token (admin on its project; anyone may revoke their own).
#[utoipa::path(delete, path = "/tokens/{id}", tag = "auth", params(("id" = String, Path)), responses((status = 200, body = serde_json::Value), (status = 404, body = ProblemDoc)))]
pub(crate) async fn delete_token(State(st): State<AppState>, Extension(who): Extension<Principal>, Path(id): Path<String>) -> ApiResult {
    let t = st.svc.meta.list_tokens().await?.into_iter().find(|t| t.id == id).ok_or_else(|| Problem::not_found(format!("no token {id}")))?;
    if who.actor != format!("token:{id}") {
        who.require(&t.project, Role::Admin)?;
    }
    st.svc.meta.delete_token(&id).await?;
    audit(&st, &who, "token.delete", &id, format!("{} on {}", t.subject, t.project)).await?;
    deleted(&handlers::Deleted { tokens: 1, ..Default::default() })
}

/// Tokens the caller administers (never their secrets: those were shown once).
#[utoipa::path(get, path = "/tokens", tag = "auth", responses((status = 200, body = serde_json::Value)))]
pub(crate) async fn list_tokens(State(st): State<AppState>, Extension(who): Extension<Principal>) -> ApiResult {
    let mut tokens = st.svc.meta.list_tokens().await?;
    tokens.retain(|t| who.role_on(&t.project) == Some(Role::Admin) || (t.project == "*" && who.role_on("*") == Some(Role::Admin)));
    let view: Vec<serde_json::Value> = tokens.iter().map(|t| serde_json::json!({ "id": t.id, "subject": t.subject, "project": t.project, "role": t.role, "created_at": t.created_at, "expires_at": t.expires_at, "created_by": t.created_by })).collect();
    Ok(Json(serde_json::json!({ "tokens": view })).into_response())
}
