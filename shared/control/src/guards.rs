//! Per-job guards within one process. Work that writes on a job's behalf after its stages
//! (carrying out a job's effects, which publishes its events and writes its report; exporting
//! its artifact) holds the job's guard shared and first checks that the job still exists;
//! erasing the job holds it exclusively. So an erasure waits for such work in flight, and
//! work that starts after it finds no job and writes nothing: nothing of a deleted job can
//! appear after its deletion returned.
//!
//! The guard is local to the process: locally one `tamp serve` does all of this work. On AWS
//! each Lambda has its own (empty) guards; there the report and export functions check the
//! job record before writing (`docs/security.md` says what is left to the race there).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

/// The guards of the jobs this process is working on or erasing.
#[derive(Clone, Default)]
pub struct JobGuards(Arc<Mutex<HashMap<String, Arc<RwLock<()>>>>>);

impl std::fmt::Debug for JobGuards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobGuards").finish_non_exhaustive()
    }
}

/// A held guard; the job's entry is forgotten when its last holder lets go.
pub struct Held<G> {
    guard: Option<G>,
    lock: Arc<RwLock<()>>,
    job: String,
    guards: JobGuards,
}

impl<G> Drop for Held<G> {
    fn drop(&mut self) {
        drop(self.guard.take());
        // A poisoned map only means another thread panicked holding it; the map is whole.
        let mut m = self.guards.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Under the map's lock nobody can take a new handle: two means the map's and ours.
        if Arc::strong_count(&self.lock) == 2 {
            m.remove(&self.job);
        }
    }
}

impl JobGuards {
    fn of(&self, job: &str) -> Arc<RwLock<()>> {
        let mut m = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        m.entry(job.to_owned()).or_default().clone()
    }

    /// Work on `job`'s behalf; never taken twice by one task (the lock is fair, so a nested
    /// shared take behind a waiting erasure would wait for ever).
    pub async fn shared(&self, job: &str) -> Held<OwnedRwLockReadGuard<()>> {
        let lock = self.of(job);
        let guard = lock.clone().read_owned().await;
        Held { guard: Some(guard), lock, job: job.to_owned(), guards: self.clone() }
    }

    /// Erasing `job`: waits for the work in flight on it.
    pub async fn exclusive(&self, job: &str) -> Held<OwnedRwLockWriteGuard<()>> {
        let lock = self.of(job);
        let guard = lock.clone().write_owned().await;
        Held { guard: Some(guard), lock, job: job.to_owned(), guards: self.clone() }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    /// An erasure waits for work in flight on its job, not for work on other jobs, and the
    /// guard is forgotten once the erasure is done.
    #[tokio::test]
    async fn erasure_waits_for_work_in_flight_on_its_job_only() {
        let g = JobGuards::default();
        let work = g.shared("a").await;
        let other = g.shared("b").await;
        let erase = tokio::spawn({
            let g = g.clone();
            async move { drop(g.exclusive("a").await) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!erase.is_finished(), "the erasure did not wait for the work in flight");
        drop(work);
        tokio::time::timeout(Duration::from_secs(5), erase).await.unwrap().unwrap();
        assert_eq!(g.len(), 1, "the erased job's guard was kept: only b's is left");
        drop(other);
        assert_eq!(g.len(), 0, "a guard nobody holds was kept");
    }
}
