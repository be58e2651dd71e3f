//! Notifications: generic team webhooks get each job event as JSON, signed with HMAC-SHA256
//! over the exact body (`X-Tamp-Signature: sha256=<hex>`), so receivers can check it came
//! from their Tamp; Slack and Microsoft Teams incoming webhooks get a message in their own
//! format (they cannot check signatures: their URL is the secret). Locally the targets
//! subscribe to the event bus; on AWS the notify function calls [`Webhooks::deliver`].

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

/// How a target wants its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The event itself, HMAC-signed.
    Tamp,
    /// A Slack incoming-webhook message (`text` + Block Kit blocks).
    Slack,
    /// A Microsoft Teams (Workflows) message carrying an Adaptive Card.
    Teams,
}

#[derive(Debug, Clone)]
pub struct Webhooks {
    pub targets: Vec<(String, Format)>,
    pub secret: Vec<u8>,
    /// Event kinds to send (`job.succeeded`, …); empty sends job-level events and quality alerts.
    pub kinds: Vec<String>,
    /// Prefix for links in chat messages (the API's public URL), if known.
    pub base_url: String,
    client: reqwest::Client,
}

impl Webhooks {
    /// Generic signed webhooks at `urls`.
    pub fn new(urls: Vec<String>, secret: Vec<u8>) -> Self {
        let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build().unwrap_or_default();
        Self { targets: urls.into_iter().map(|u| (u, Format::Tamp)).collect(), secret, kinds: Vec::new(), base_url: String::new(), client }
    }

    #[must_use]
    pub fn with_target(mut self, url: String, format: Format) -> Self {
        self.targets.push((url, format));
        self
    }

    /// Whether `event` goes out at all.
    pub fn wanted(&self, event: &TampEvent) -> bool {
        let kind = event.detail_type.trim_start_matches("tamp.");
        if self.kinds.is_empty() { kind.starts_with("job.") || kind == "quality.alert" } else { self.kinds.iter().any(|k| k == kind) }
    }

    /// Sends `event` to every target; the error lists the targets that failed.
    pub async fn deliver(&self, event: &TampEvent) -> Result<usize> {
        if !self.wanted(event) {
            return Ok(0);
        }
        let kind = event.detail_type.trim_start_matches("tamp.");
        let signed = serde_json::to_vec(event).map_err(|e| PortError::Invalid(e.to_string()))?;
        let sig = signature(&self.secret, &signed);
        let mut failures = Vec::new();
        for (url, format) in &self.targets {
            let req = self.client.post(url).header("content-type", "application/json");
            let req = match format {
                Format::Tamp => req.header("x-tamp-event", kind).header("x-tamp-signature", &sig).body(signed.clone()),
                Format::Slack => req.body(slack_message(event, &self.base_url).to_string()),
                Format::Teams => req.body(teams_message(event, &self.base_url).to_string()),
            };
            if let Err(e) = req.send().await.and_then(reqwest::Response::error_for_status) {
                failures.push(format!("{url}: {e}"));
            }
        }
        if failures.is_empty() { Ok(self.targets.len()) } else { Err(PortError::Unavailable(failures.join("; "))) }
    }
}

/// One line saying what happened: `✅ job_x (proj/model@v1) succeeded: 3.5× smaller, 1.33× faster`.
pub fn headline(e: &TampEvent) -> String {
    let kind = e.detail_type.trim_start_matches("tamp.");
    let icon = match kind {
        "job.succeeded" => "✅",
        "job.failed" | "stage.failed" => "❌",
        "quality.alert" => "⚠️",
        "job.cancelled" => "⏹️",
        _ => "ℹ️",
    };
    let what = match kind {
        "job.succeeded" => "succeeded".to_owned(),
        "job.failed" => format!("failed: {}", e.reason.as_deref().unwrap_or("no reason recorded")),
        "job.cancelled" => "was cancelled".to_owned(),
        "quality.alert" => {
            let missed: Vec<String> = e.detail["missed_constraints"].as_array().into_iter().flatten().chain(e.detail["flags"].as_array().into_iter().flatten()).filter_map(|v| v.as_str().map(str::to_owned)).collect();
            format!("artifact needs a look: {}", missed.join("; "))
        }
        other => other.replace('.', " "),
    };
    format!("{icon} {} ({}/{}@{}) {what}", e.job, e.project, e.model, e.version)
}

/// A Slack incoming-webhook payload: plain `text` for notifications, blocks for the channel.
pub fn slack_message(e: &TampEvent, base_url: &str) -> serde_json::Value {
    let link = format!("{base_url}{}", e.link);
    serde_json::json!({
        "text": headline(e),
        "blocks": [
            { "type": "section", "text": { "type": "mrkdwn", "text": headline(e) } },
            { "type": "context", "elements": [
                { "type": "mrkdwn", "text": format!("*{}* · state `{}` · <{link}|{}>", e.detail_type, e.state, e.link) }
            ] }
        ]
    })
}

/// A Microsoft Teams Workflows payload carrying an Adaptive Card.
pub fn teams_message(e: &TampEvent, base_url: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    { "type": "TextBlock", "text": headline(e), "wrap": true, "weight": "Bolder" },
                    { "type": "FactSet", "facts": [
                        { "title": "event", "value": e.detail_type },
                        { "title": "state", "value": e.state },
                        { "title": "job", "value": e.job }
                    ] }
                ],
                "actions": [{ "type": "Action.OpenUrl", "title": "Open job", "url": format!("{base_url}{}", e.link) }]
            }
        }]
    })
}

#[async_trait]
impl Subscriber for Webhooks {
    fn name(&self) -> &str {
        "webhooks"
    }

    async fn on_event(&self, event: &TampEvent) -> Result<()> {
        self.deliver(event).await.map(|_| ())
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

    fn failed() -> TampEvent {
        TampEvent {
            id: "evt_1".into(),
            detail_type: "tamp.job.failed".into(),
            time: 1,
            project: "vision".into(),
            model: "resnet".into(),
            version: "v1".into(),
            job: "job_1".into(),
            state: "failed".into(),
            reason: Some("uploads/vision/resnet/v1/recipe.yaml: line 3: unknown key `stagez`".into()),
            link: "/jobs/job_1".into(),
            detail: serde_json::Value::Null,
        }
    }

    #[test]
    fn chat_messages_name_the_job_and_the_reason() {
        let e = failed();
        let slack = slack_message(&e, "https://api.example");
        assert_eq!(slack["text"], "❌ job_1 (vision/resnet@v1) failed: uploads/vision/resnet/v1/recipe.yaml: line 3: unknown key `stagez`");
        assert!(slack["blocks"][1]["elements"][0]["text"].as_str().unwrap_or_default().contains("<https://api.example/jobs/job_1|/jobs/job_1>"));
        let teams = teams_message(&e, "https://api.example");
        let card = &teams["attachments"][0]["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(card["body"][0]["text"], slack["text"]);
        assert_eq!(card["actions"][0]["url"], "https://api.example/jobs/job_1");
    }

    #[test]
    fn only_job_events_and_alerts_go_out_by_default() {
        let w = Webhooks::new(vec![], vec![]);
        let mut e = failed();
        assert!(w.wanted(&e));
        e.detail_type = "tamp.stage.started".into();
        assert!(!w.wanted(&e));
        e.detail_type = "tamp.quality.alert".into();
        assert!(w.wanted(&e));
    }
}
