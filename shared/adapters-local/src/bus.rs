//! The in-process event bus (EventBridge's part locally): every event is appended to a JSON
//! lines log and handed to each subscriber (report, notify); a failing subscriber is logged
//! and does not stop the others.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tamp_ports::{EventBus, PortError, Result, TampEvent};

pub use tamp_ports::Subscriber;

pub struct LocalBus {
    log: Option<Mutex<(PathBuf, std::fs::File)>>,
    subscribers: Vec<Arc<dyn Subscriber>>,
}

impl std::fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBus").field("subscribers", &self.subscribers.iter().map(|s| s.name().to_owned()).collect::<Vec<_>>()).finish()
    }
}

impl LocalBus {
    /// `log`: where events are appended (one JSON object per line), if anywhere.
    pub fn new(log: Option<PathBuf>, subscribers: Vec<Arc<dyn Subscriber>>) -> Result<Self> {
        let log = match log {
            Some(p) => {
                let f = std::fs::OpenOptions::new().create(true).append(true).open(&p).map_err(|e| PortError::Unavailable(format!("{}: {e}", p.display())))?;
                Some(Mutex::new((p, f)))
            }
            None => None,
        };
        Ok(Self { log, subscribers })
    }
}

#[async_trait]
impl EventBus for LocalBus {
    async fn publish(&self, event: &TampEvent) -> Result<()> {
        if let Some(log) = &self.log {
            let line = serde_json::to_string(event).map_err(|e| PortError::Invalid(e.to_string()))?;
            let mut f = log.lock().map_err(|_| PortError::Unavailable("event log lock poisoned".into()))?;
            writeln!(f.1, "{line}").map_err(|e| PortError::Unavailable(format!("event log: {e}")))?;
        }
        for s in &self.subscribers {
            if let Err(e) = s.on_event(event).await {
                tracing::warn!(subscriber = s.name(), event = %event.detail_type, error = %e, "event subscriber failed");
            }
        }
        Ok(())
    }

    /// Rewrites the event log without the project's events (atomically: a temporary file,
    /// then rename, under the log's lock so no event is lost in between).
    async fn purge_project(&self, project: &str) -> Result<()> {
        let Some(log) = &self.log else { return Ok(()) };
        let mut guard = log.lock().map_err(|_| PortError::Unavailable("event log lock poisoned".into()))?;
        let path = guard.0.clone();
        let err = |e: std::io::Error| PortError::Unavailable(format!("{}: {e}", path.display()));
        let text = std::fs::read_to_string(&path).map_err(err)?;
        let kept: String =
            text.lines().filter(|l| serde_json::from_str::<TampEvent>(l).map_or(true, |e| e.project != project)).map(|l| format!("{l}\n")).collect();
        let tmp = path.with_extension("jsonl.tmp");
        std::fs::write(&tmp, kept).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)?;
        guard.1 = std::fs::OpenOptions::new().append(true).open(&path).map_err(err)?;
        Ok(())
    }
}
