//! An in-process queue with SQS semantics: at-least-once delivery, delay, visibility timeout,
//! receive counts and a dead-letter list after `max_receives` deliveries.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tamp_ports::{Delivery, PortError, Queue, Result};

#[derive(Debug)]
struct Entry {
    id: String,
    body: String,
    visible_at: Instant,
    sent_at: Instant,
    receive_count: u32,
    receipt: Option<String>,
}

#[derive(Debug)]
pub struct MemoryQueue {
    max_receives: u32,
    inner: Mutex<(Vec<Entry>, Vec<String>)>,
    notify: tokio::sync::Notify,
}

impl MemoryQueue {
    pub fn new(max_receives: u32) -> Self {
        Self { max_receives: max_receives.max(1), inner: Mutex::new((Vec::new(), Vec::new())), notify: tokio::sync::Notify::new() }
    }

    /// Waits until a message may be available or `timeout` passes (long polling).
    pub async fn wait(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.notify.notified()).await;
    }

    /// Messages held, dead letters, and the age of the oldest message in seconds (metrics).
    pub fn stats(&self) -> (usize, usize, f64) {
        self.lock().map_or((0, 0, 0.0), |g| {
            let oldest = g.0.iter().map(|e| e.sent_at.elapsed().as_secs_f64()).fold(0.0, f64::max);
            (g.0.len(), g.1.len(), oldest)
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, (Vec<Entry>, Vec<String>)>> {
        self.inner.lock().map_err(|_| PortError::Unavailable("queue lock poisoned".into()))
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    async fn send(&self, body: String, delay: Duration) -> Result<()> {
        let now = Instant::now();
        self.lock()?.0.push(Entry { id: crate::random_hex(8), body, visible_at: now + delay, sent_at: now, receive_count: 0, receipt: None });
        self.notify.notify_one();
        Ok(())
    }

    async fn receive(&self, max: usize, visibility: Duration) -> Result<Vec<Delivery>> {
        let now = Instant::now();
        let mut guard = self.lock()?;
        let (entries, dead) = &mut *guard;
        // Messages delivered too often go to the dead-letter list instead.
        let max_receives = self.max_receives;
        let mut i = 0;
        while i < entries.len() {
            if entries[i].visible_at <= now && entries[i].receive_count >= max_receives {
                dead.push(entries.remove(i).body);
            } else {
                i += 1;
            }
        }
        let mut out = Vec::new();
        for e in entries.iter_mut().filter(|e| e.visible_at <= now).take(max) {
            e.receive_count += 1;
            e.visible_at = now + visibility;
            let receipt = format!("{}:{}", e.id, crate::random_hex(6));
            e.receipt = Some(receipt.clone());
            out.push(Delivery { id: e.id.clone(), receipt, body: e.body.clone(), receive_count: e.receive_count });
        }
        Ok(out)
    }

    async fn ack(&self, receipt: &str) -> Result<()> {
        let mut guard = self.lock()?;
        guard.0.retain(|e| e.receipt.as_deref() != Some(receipt));
        Ok(())
    }

    async fn dead_letters(&self) -> Result<Vec<String>> {
        Ok(self.lock()?.1.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        tamp_ports::conformance::queue(&MemoryQueue::new(3), 3).await;
    }
}
