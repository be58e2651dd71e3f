//! Notifications: team webhooks get each job event as JSON, signed with HMAC-SHA256 over the
//! exact body (`X-Tamp-Signature: sha256=<hex>`), so receivers can check it came from their
//! Tamp. Slack/Teams message formats come with the AWS notify function.

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tamp_adapters_local::bus::Subscriber;
use tamp_ports::{PortError, Result, TampEvent};

/// Signs `body` with `secret`: the value of the `X-Tamp-Signature` header.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks a received signature in constant time.
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.strip_prefix("sha256=") else { return false };
    let Ok(sig) = hex::decode(hex_sig) else { return false };
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

#[derive(Debug, Clone)]
pub struct Webhooks {
    pub urls: Vec<String>,
    pub secret: Vec<u8>,
    /// Event kinds to send (`job.succeeded`, …); empty sends job-level events only.
    pub kinds: Vec<String>,
    client: reqwest::Client,
}

impl Webhooks {
    pub fn new(urls: Vec<String>, secret: Vec<u8>) -> Self {
        let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build().unwrap_or_default();
        Self { urls, secret, kinds: Vec::new(), client }
    }
}

#[async_trait]
impl Subscriber for Webhooks {
    fn name(&self) -> &str {
        "webhooks"
    }

    async fn on_event(&self, event: &TampEvent) -> Result<()> {
        let kind = event.detail_type.trim_start_matches("tamp.");
        let wanted = if self.kinds.is_empty() { kind.starts_with("job.") } else { self.kinds.iter().any(|k| k == kind) };
        if !wanted {
            return Ok(());
        }
        let body = serde_json::to_vec(event).map_err(|e| PortError::Invalid(e.to_string()))?;
        let sig = signature(&self.secret, &body);
        let mut failures = Vec::new();
        for url in &self.urls {
            let sent = self
                .client
                .post(url)
                .header("content-type", "application/json")
                .header("x-tamp-event", kind)
                .header("x-tamp-signature", &sig)
                .body(body.clone())
                .send()
                .await
                .and_then(reqwest::Response::error_for_status);
            if let Err(e) = sent {
                failures.push(format!("{url}: {e}"));
            }
        }
        if failures.is_empty() { Ok(()) } else { Err(PortError::Unavailable(failures.join("; "))) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_reject_tampering() {
        let s = signature(b"k", b"{\"a\":1}");
        assert!(verify(b"k", b"{\"a\":1}", &s));
        assert!(!verify(b"k", b"{\"a\":2}", &s));
        assert!(!verify(b"other", b"{\"a\":1}", &s));
        assert!(!verify(b"k", b"{\"a\":1}", "sha256=zz"));
    }
}
