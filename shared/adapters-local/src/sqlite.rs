//! SQLite (bundled, via rusqlite) as the metadata store — DynamoDB's part locally. Jobs are
//! stored as JSON documents with their state, revision and creation time in columns;
//! every change is a conditional `UPDATE … WHERE revision = ?`, job creation and its
//! idempotency key share one transaction, and the best-artifact pointer moves only to a
//! higher score. Schema changes are numbered migrations recorded in `user_version`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tamp_domain::job::{Job, JobState};
use tamp_ports::{ArtifactRecord, AuditRecord, Created, MetadataStore, PortError, Result, TokenRecord};

const MIGRATIONS: &[&str] = &[
    // 1: jobs, idempotency keys, artifacts, best pointers.
    "CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        revision INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE INDEX jobs_by_state ON jobs(state, created_at);
    CREATE TABLE idempotency (key TEXT PRIMARY KEY, job_id TEXT NOT NULL);
    CREATE TABLE artifacts (id TEXT PRIMARY KEY, model_id TEXT NOT NULL, runtime TEXT NOT NULL, score REAL NOT NULL, doc TEXT NOT NULL);
    CREATE TABLE best (model_id TEXT NOT NULL, runtime TEXT NOT NULL, artifact_id TEXT NOT NULL, score REAL NOT NULL, PRIMARY KEY (model_id, runtime));",
    // 2: API tokens (hashed) and the audit log.
    "CREATE TABLE tokens (id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, doc TEXT NOT NULL);
    CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, time INTEGER NOT NULL, doc TEXT NOT NULL);",
    // 3: catalog records (projects, models, versions, policies).
    "CREATE TABLE records (kind TEXT NOT NULL, id TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (kind, id));",
];

#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

fn db(e: rusqlite::Error) -> PortError {
    match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DatabaseBusy || f.code == rusqlite::ErrorCode::DatabaseLocked => {
            PortError::Unavailable(format!("sqlite busy: {e}"))
        }
        other => PortError::Unavailable(format!("sqlite: {other}")),
    }
}

fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| PortError::Invalid(e.to_string()))
}

fn parse<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| PortError::Invalid(format!("stored record does not parse: {e}")))
}

impl SqliteStore {
    /// Opens (creating and migrating) the database at `path`; `:memory:` for tests.
    pub fn open(path: &Path) -> Result<Self> {
        let mut conn = Connection::open(path).map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(db)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(db)?;
        // Deleted records are overwritten, not left in free pages (data-subject erasure).
        conn.pragma_update(None, "secure_delete", "ON").map_err(db)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(db)?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(PortError::Invalid(format!("{} was written by a newer Tamp (schema {version}, this build knows {known})", path.display())));
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction().map_err(db)?;
            tx.execute_batch(m).map_err(db)?;
            tx.pragma_update(None, "user_version", i as i64 + 1).map_err(db)?;
            tx.commit().map_err(db)?;
        }
        Ok(Self { conn: Arc::new(Mutex::new(conn)) })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut guard = self.conn.lock().map_err(|_| PortError::Unavailable("metadata store lock poisoned".into()))?;
        f(&mut guard)
    }
}

#[async_trait]
impl MetadataStore for SqliteStore {
    async fn create_job(&self, job: &Job, idempotency_key: &str) -> Result<Created> {
        let doc = json(job)?;
        self.with(|c| {
            let tx = c.transaction().map_err(db)?;
            let existing: Option<String> =
                tx.query_row("SELECT job_id FROM idempotency WHERE key = ?1", [idempotency_key], |r| r.get(0)).optional().map_err(db)?;
            if let Some(id) = existing {
                return Ok(Created::Duplicate(id));
            }
            let inserted = tx
                .execute(
                    "INSERT OR IGNORE INTO jobs (id, state, revision, created_at, doc) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![job.id, job.state.as_str(), job.revision as i64, job.created_at as i64, doc],
                )
                .map_err(db)?;
            if inserted == 0 {
                return Err(PortError::Conflict(format!("job {} already exists", job.id)));
            }
            tx.execute("INSERT INTO idempotency (key, job_id) VALUES (?1, ?2)", params![idempotency_key, job.id]).map_err(db)?;
            tx.commit().map_err(db)?;
            Ok(Created::New)
        })
    }

    async fn get_job(&self, id: &str) -> Result<Option<Job>> {
        let doc: Option<String> = self.with(|c| c.query_row("SELECT doc FROM jobs WHERE id = ?1", [id], |r| r.get(0)).optional().map_err(db))?;
        doc.map(|d| parse(&d)).transpose()
    }

    async fn update_job(&self, job: &Job, expected_revision: u64) -> Result<()> {
        let doc = json(job)?;
        self.with(|c| {
            let n = c
                .execute(
                    "UPDATE jobs SET state = ?1, revision = ?2, doc = ?3 WHERE id = ?4 AND revision = ?5",
                    params![job.state.as_str(), job.revision as i64, doc, job.id, expected_revision as i64],
                )
                .map_err(db)?;
            if n == 1 {
                return Ok(());
            }
            let exists: Option<i64> = c.query_row("SELECT revision FROM jobs WHERE id = ?1", [&job.id], |r| r.get(0)).optional().map_err(db)?;
            Err(match exists {
                None => PortError::NotFound(format!("job {}", job.id)),
                Some(r) => PortError::Conflict(format!("job {} is at revision {r}, not {expected_revision}", job.id)),
            })
        })
    }

    async fn list_jobs(&self, state: Option<JobState>, limit: usize) -> Result<Vec<Job>> {
        let docs: Vec<String> = self.with(|c| {
            let limit = limit.min(i64::MAX as usize) as i64;
            let mut out = Vec::new();
            match state {
                Some(s) => {
                    let mut st = c.prepare("SELECT doc FROM jobs WHERE state = ?1 ORDER BY created_at DESC, id DESC LIMIT ?2").map_err(db)?;
                    let rows = st.query_map(params![s.as_str(), limit], |r| r.get::<_, String>(0)).map_err(db)?;
                    for r in rows {
                        out.push(r.map_err(db)?);
                    }
                }
                None => {
                    let mut st = c.prepare("SELECT doc FROM jobs ORDER BY created_at DESC, id DESC LIMIT ?1").map_err(db)?;
                    let rows = st.query_map(params![limit], |r| r.get::<_, String>(0)).map_err(db)?;
                    for r in rows {
                        out.push(r.map_err(db)?);
                    }
                }
            }
            Ok(out)
        })?;
        docs.iter().map(|d| parse(d)).collect()
    }

    async fn put_artifact(&self, a: &ArtifactRecord) -> Result<bool> {
        let doc = json(a)?;
        self.with(|c| {
            let tx = c.transaction().map_err(db)?;
            tx.execute(
                "INSERT OR IGNORE INTO artifacts (id, model_id, runtime, score, doc) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![a.id, a.model_id, a.runtime, a.score, doc],
            )
            .map_err(db)?;
            let best: Option<(String, f64)> = tx
                .query_row("SELECT artifact_id, score FROM best WHERE model_id = ?1 AND runtime = ?2", params![a.model_id, a.runtime], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
                .map_err(db)?;
            let better = a.eligible
                && match &best {
                    None => true,
                    Some((id, score)) => *id != a.id && a.score > *score,
                };
            if better {
                tx.execute(
                    "INSERT OR REPLACE INTO best (model_id, runtime, artifact_id, score) VALUES (?1, ?2, ?3, ?4)",
                    params![a.model_id, a.runtime, a.id, a.score],
                )
                .map_err(db)?;
            }
            tx.commit().map_err(db)?;
            Ok(better)
        })
    }

    async fn get_artifact(&self, id: &str) -> Result<Option<ArtifactRecord>> {
        let doc: Option<String> = self.with(|c| c.query_row("SELECT doc FROM artifacts WHERE id = ?1", [id], |r| r.get(0)).optional().map_err(db))?;
        doc.map(|d| parse(&d)).transpose()
    }

    async fn best_artifact(&self, model_id: &str, runtime: &str) -> Result<Option<ArtifactRecord>> {
        let doc: Option<String> = self.with(|c| {
            c.query_row(
                "SELECT a.doc FROM best b JOIN artifacts a ON a.id = b.artifact_id WHERE b.model_id = ?1 AND b.runtime = ?2",
                params![model_id, runtime],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)
        })?;
        doc.map(|d| parse(&d)).transpose()
    }

    async fn put_token(&self, token: &TokenRecord) -> Result<()> {
        let doc = json(token)?;
        self.with(|c| {
            let n = c.execute("INSERT OR IGNORE INTO tokens (id, hash, doc) VALUES (?1, ?2, ?3)", params![token.id, token.hash, doc]).map_err(db)?;
            if n == 0 { Err(PortError::Conflict(format!("token {} exists", token.id))) } else { Ok(()) }
        })
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>> {
        let doc: Option<String> = self.with(|c| c.query_row("SELECT doc FROM tokens WHERE hash = ?1", [hash], |r| r.get(0)).optional().map_err(db))?;
        doc.map(|d| parse(&d)).transpose()
    }

    async fn append_audit(&self, record: &AuditRecord) -> Result<()> {
        let doc = json(record)?;
        self.with(|c| c.execute("INSERT INTO audit (time, doc) VALUES (?1, ?2)", params![record.time as i64, doc]).map(|_| ()).map_err(db))
    }

    async fn put_record(&self, kind: &str, id: &str, doc: &serde_json::Value, if_absent: bool) -> Result<bool> {
        let text = json(doc)?;
        let sql = if if_absent {
            "INSERT OR IGNORE INTO records (kind, id, doc) VALUES (?1, ?2, ?3)"
        } else {
            "INSERT OR REPLACE INTO records (kind, id, doc) VALUES (?1, ?2, ?3)"
        };
        self.with(|c| c.execute(sql, params![kind, id, text]).map(|n| n == 1).map_err(db))
    }

    async fn get_record(&self, kind: &str, id: &str) -> Result<Option<serde_json::Value>> {
        let doc: Option<String> =
            self.with(|c| c.query_row("SELECT doc FROM records WHERE kind = ?1 AND id = ?2", [kind, id], |r| r.get(0)).optional().map_err(db))?;
        doc.map(|d| parse(&d)).transpose()
    }

    async fn list_records(&self, kind: &str, prefix: &str) -> Result<Vec<serde_json::Value>> {
        let docs: Vec<String> = self.with(|c| {
            let mut st = c.prepare("SELECT doc FROM records WHERE kind = ?1 AND substr(id, 1, length(?2)) = ?2 ORDER BY id").map_err(db)?;
            let rows = st.query_map(params![kind, prefix], |r| r.get::<_, String>(0)).map_err(db)?;
            rows.map(|r| r.map_err(db)).collect()
        })?;
        docs.iter().map(|d| parse(d)).collect()
    }

    async fn delete_job(&self, id: &str) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction().map_err(db)?;
            tx.execute("DELETE FROM idempotency WHERE job_id = ?1", [id]).map_err(db)?;
            tx.execute("DELETE FROM jobs WHERE id = ?1", [id]).map_err(db)?;
            tx.commit().map_err(db)
        })
    }

    async fn delete_artifact(&self, id: &str) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction().map_err(db)?;
            tx.execute("DELETE FROM best WHERE artifact_id = ?1", [id]).map_err(db)?;
            tx.execute("DELETE FROM artifacts WHERE id = ?1", [id]).map_err(db)?;
            tx.commit().map_err(db)
        })
    }

    async fn delete_record(&self, kind: &str, id: &str) -> Result<bool> {
        self.with(|c| c.execute("DELETE FROM records WHERE kind = ?1 AND id = ?2", [kind, id]).map(|n| n == 1).map_err(db))
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        let docs: Vec<String> = self.with(|c| {
            let mut st = c.prepare("SELECT doc FROM tokens ORDER BY id").map_err(db)?;
            let rows = st.query_map([], |r| r.get::<_, String>(0)).map_err(db)?;
            rows.map(|r| r.map_err(db)).collect()
        })?;
        docs.iter().map(|d| parse(d)).collect()
    }

    async fn delete_token(&self, id: &str) -> Result<bool> {
        self.with(|c| c.execute("DELETE FROM tokens WHERE id = ?1", [id]).map(|n| n == 1).map_err(db))
    }

    async fn list_audit(&self, limit: usize) -> Result<Vec<AuditRecord>> {
        let docs: Vec<String> = self.with(|c| {
            let mut st = c.prepare("SELECT doc FROM audit ORDER BY seq DESC LIMIT ?1").map_err(db)?;
            let rows = st.query_map(params![limit.min(i64::MAX as usize) as i64], |r| r.get::<_, String>(0)).map_err(db)?;
            rows.map(|r| r.map_err(db)).collect()
        })?;
        docs.iter().map(|d| parse(d)).collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("tamp.db")).unwrap();
        tamp_ports::conformance::metadata_store(&store).await;
        // Reopening keeps the data and does not re-run migrations.
        drop(store);
        let again = SqliteStore::open(&dir.path().join("tamp.db")).unwrap();
        assert!(again.get_job("job_c").await.unwrap().is_some());
    }
}
