//! The work of erasure over the ports (the routes are `erasure`): a job, or everything of a
//! project, a model or a version, with what the runner, the store, the metadata and the event
//! log keep of it.

use tamp_domain::job::{Job, Signal};

use crate::handlers::{Result, Services, artifact_id, signal};

/// What a deletion removed, for the audit record and the response.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Deleted {
    pub jobs: usize,
    pub objects: usize,
    pub records: usize,
    pub tokens: usize,
}

async fn delete_prefix(svc: &Services, prefix: &str, d: &mut Deleted) -> Result<()> {
    for key in svc.store.list(prefix).await? {
        svc.store.delete(&key).await?;
        d.objects += 1;
    }
    Ok(())
}

/// Deletes one job and everything it made: its artifacts (records, best pointers, objects),
/// its report, the runner's logs and the job record with its idempotency keys. A job still
/// running is cancelled first, and its workers stopped before anything of it is deleted.
pub async fn delete_job(svc: &Services, job: &Job, d: &mut Deleted) -> Result<()> {
    if !job.state.is_terminal() {
        signal(svc, &job.id, &Signal::Cancel { reason: "deleted".into() }).await?;
    }
    // Work in flight on the job (its events and report, its export) ends first; work that
    // starts later finds no job. The runner's workers are stopped before their objects go.
    let _erasing = svc.guards.exclusive(&job.id).await;
    svc.runner.purge(&job.id).await?;
    for s in 0..job.stages.len().max(1) {
        svc.meta.delete_artifact(&artifact_id(&job.id, s)).await?;
    }
    delete_prefix(svc, &format!("artifacts/{}/", job.id), d).await?;
    delete_prefix(svc, &format!("reports/{}/", job.id), d).await?;
    // Last, so a deletion that fails half-way can be run again and finds the job.
    svc.meta.delete_job(&job.id).await?;
    d.jobs += 1;
    Ok(())
}

/// What to delete: a whole project, one model of it, or one version of a model.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    Project(&'a str),
    Model(&'a str, &'a str),
    Version(&'a str, &'a str, &'a str),
}

/// Deletes everything of `scope` (data-subject erasure): jobs and their artifacts, reports
/// and logs; uploads (models, datasets, recipes); catalog records; for a project also its
/// policies, its tokens and its lines in a local event log. The audit log keeps the record
/// of the deletion itself.
pub async fn delete_scope(svc: &Services, scope: Scope<'_>) -> Result<Deleted> {
    let mut d = Deleted::default();
    let (project, model, version) = match scope {
        Scope::Project(p) => (p, None, None),
        Scope::Model(p, m) => (p, Some(m), None),
        Scope::Version(p, m, v) => (p, Some(m), Some(v)),
    };
    let jobs = svc.meta.list_jobs(None, 100_000).await?;
    for j in jobs.iter().filter(|j| j.project == project && model.is_none_or(|m| j.model == m) && version.is_none_or(|v| j.version == v)) {
        delete_job(svc, j, &mut d).await?;
    }
    let uploads = match (model, version) {
        (None, _) => format!("uploads/{project}/"),
        (Some(m), None) => format!("uploads/{project}/{m}/"),
        (Some(m), Some(v)) => format!("uploads/{project}/{m}/{v}/"),
    };
    delete_prefix(svc, &uploads, &mut d).await?;
    let mut records: Vec<(&str, String)> = Vec::new();
    let ids = |docs: Vec<serde_json::Value>| docs.into_iter().filter_map(|r| r["id"].as_str().map(str::to_owned)).collect::<Vec<_>>();
    match (model, version) {
        (None, _) => {
            for kind in ["version", "model", "policy"] {
                for id in ids(svc.meta.list_records(kind, &format!("{project}.")).await?) {
                    records.push((kind, id));
                }
            }
            records.push(("project", project.to_owned()));
        }
        (Some(m), None) => {
            for id in ids(svc.meta.list_records("version", &format!("{project}.{m}/")).await?) {
                records.push(("version", id));
            }
            records.push(("model", format!("{project}.{m}")));
        }
        (Some(m), Some(v)) => records.push(("version", format!("{project}.{m}/{v}"))),
    }
    for (kind, id) in records {
        d.records += usize::from(svc.meta.delete_record(kind, &id).await?);
    }
    if model.is_none() {
        for t in svc.meta.list_tokens().await?.into_iter().filter(|t| t.project == project) {
            d.tokens += usize::from(svc.meta.delete_token(&t.id).await?);
        }
        svc.bus.purge_project(project).await?;
    }
    Ok(d)
}
