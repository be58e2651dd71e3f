//! Notifications: generic team webhooks get each job event as JSON, signed with HMAC-SHA256
//! over the exact body (`X-Tamp-Signature: sha256=<hex>`), so receivers can check it came
//! from their Tamp; Slack and Microsoft Teams incoming webhooks get a message in their own
//! format (they cannot check signatures: their URL is the secret). Locally the targets
//! subscribe to the event bus; on AWS the notify function calls [`Webhooks::deliver`].

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use sha2::Digest;
use sha2::Sha256;
use tamp_ports::{MetadataStore, Subscriber};
use tamp_ports::{PortError, Result, TampEvent};

/// Record kind of the notify function's delivery ledger.
pub const DELIVERY: &str = "delivery";

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
    /// Event kinds to send (`job.succeeded`, …); empty sends job-level events, quality alerts and `report.ready` (with the report's links).
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
        if self.kinds.is_empty() { kind.starts_with("job.") || kind == "quality.alert" || kind == "report.ready" } else { self.kinds.iter().any(|k| k == kind) }
    }

    /// Sends `event` to every target; the error lists the targets that failed.
    pub async fn deliver(&self, event: &TampEvent) -> Result<usize> {
        if !self.wanted(event) {
            return Ok(0);
        }
        let mut failures = Vec::new();
        for i in 0..self.targets.len() {
            if let Err(e) = self.send_to(event, i).await {
                failures.push(e.to_string());
            }
        }
        if failures.is_empty() { Ok(self.targets.len()) } else { Err(PortError::Unavailable(failures.join("; "))) }
    }

    /// Sends `event` to each target that has not had it yet, recording each delivery in
    /// `ledger` (kind `delivery`, id `<event id>:<target key>`). A retried or duplicated event
    /// reaches only the targets that missed it, so one failing target never makes the others
    /// receive a message twice. Returns how many were sent now.
    pub async fn deliver_once(&self, event: &TampEvent, ledger: &dyn MetadataStore) -> Result<usize> {
        if !self.wanted(event) {
            return Ok(0);
        }
        let (mut sent, mut failures) = (0, Vec::new());
        for i in 0..self.targets.len() {
            let id = format!("{}:{}", event.id, self.target_key(i));
            if ledger.get_record(DELIVERY, &id).await?.is_some() {
                continue;
            }
            match self.send_to(event, i).await {
                Ok(()) => {
                    ledger
                        .put_record(DELIVERY, &id, &serde_json::json!({ "id": id, "event": event.id, "job": event.job, "target": self.target_label(i) }), true)
                        .await?;
                    sent += 1;
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        if failures.is_empty() { Ok(sent) } else { Err(PortError::Unavailable(failures.join("; "))) }
    }

    /// A stable name for target `i` that does not reveal its URL (a Slack URL is the secret).
    pub fn target_key(&self, i: usize) -> String {
        let url = self.targets.get(i).map_or("", |(u, _)| u.as_str());
        hex::encode(&Sha256::digest(url.as_bytes())[..8])
    }

    /// How logs and errors name target `i`: its format and key, never its URL.
    pub fn target_label(&self, i: usize) -> String {
        let format = self.targets.get(i).map_or("?", |(_, f)| match f {
            Format::Tamp => "webhook",
            Format::Slack => "slack",
            Format::Teams => "teams",
        });
        format!("{format} target {}", self.target_key(i))
    }

    /// Sends `event` to target `i` in its format.
    pub async fn send_to(&self, event: &TampEvent, i: usize) -> Result<()> {
        let Some((url, format)) = self.targets.get(i) else { return Ok(()) };
        let kind = event.detail_type.trim_start_matches("tamp.");
        let req = self.client.post(url).header("content-type", "application/json");
        let req = match format {
            Format::Tamp => {
                let signed = serde_json::to_vec(event).map_err(|e| PortError::Invalid(e.to_string()))?;
                req.header("x-tamp-event", kind).header("x-tamp-signature", signature(&self.secret, &signed)).body(signed)
            }
            Format::Slack => req.body(slack_message(event, &self.base_url).to_string()),
            Format::Teams => req.body(teams_message(event, &self.base_url).to_string()),
        };
        // Errors name the target by its key: reqwest's own text carries the URL, which for
        // Slack and Teams is the credential.
        req.send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map(|_| ())
            .map_err(|e| PortError::Unavailable(format!("{}: {}", self.target_label(i), e.without_url())))
    }
}

/// Webhook deliveries through a spool folder. The bus's subscriber only writes the event there
/// (one file per event and target) and returns, so a slow receiver never holds up an upload
/// or a job; [`Outbox::run`] sends what is due, retrying with exponential backoff (1 s
/// doubling to 10 min, 16 tries, about 1.5 h) and keeping undeliverable events in `dead/`.
/// The spool is on disk, so events survive a receiver that is down and a restart.
#[derive(Debug)]
pub struct Outbox {
    dir: std::path::PathBuf,
    hooks: Webhooks,
    wake: tokio::sync::Notify,
}

/// One event waiting for one target.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Pending {
    event: TampEvent,
    target: usize,
    attempts: u32,
    next_at: u64,
}

/// One delivery's name in the spool and in `sent/`: the event id and the target index.
fn delivery_name(event: &TampEvent, target: usize) -> String {
    format!("{}-{target}", event.id)
}

/// Tries before an event is moved to `dead/`.
pub const MAX_TRIES: u32 = 16;

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Outbox {
    pub fn new(dir: std::path::PathBuf, hooks: Webhooks) -> Result<Self> {
        for sub in ["dead", "sent"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| PortError::Unavailable(format!("{}: {e}", dir.display())))?;
        }
        Ok(Self { dir, hooks, wake: tokio::sync::Notify::new() })
    }

    fn write(&self, name: &str, p: &Pending) -> Result<()> {
        let err = |e: std::io::Error| PortError::Unavailable(format!("{}: {e}", self.dir.display()));
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec(p).map_err(|e| PortError::Invalid(e.to_string()))?).map_err(err)?;
        std::fs::rename(&tmp, self.dir.join(name)).map_err(err)
    }

    /// Sends every spooled delivery that is due; returns how many were sent.
    pub async fn drain(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return 0 };
        let mut names: Vec<String> =
            entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".json") && !n.starts_with('.')).collect();
        names.sort(); // oldest first: names start with the event time
        let mut sent = 0;
        for name in names {
            let path = self.dir.join(&name);
            let Some(mut p) = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Pending>(&b).ok()) else {
                let _ = std::fs::rename(&path, self.dir.join("dead").join(&name));
                continue;
            };
            if p.next_at > now_s() {
                continue;
            }
            match self.hooks.send_to(&p.event, p.target).await {
                Ok(()) => {
                    let _ = std::fs::write(self.dir.join("sent").join(delivery_name(&p.event, p.target)), b"");
                    let _ = std::fs::remove_file(&path);
                    sent += 1;
                }
                Err(e) => {
                    p.attempts += 1;
                    if p.attempts >= MAX_TRIES {
                        tracing::error!(event = %p.event.id, error = %e, "webhook undeliverable; kept in outbox/dead");
                        let _ = std::fs::rename(&path, self.dir.join("dead").join(&name));
                    } else {
                        tracing::warn!(event = %p.event.id, attempt = p.attempts, error = %e, "webhook delivery failed; will retry");
                        p.next_at = now_s() + (1u64 << p.attempts.min(10)).min(600);
                        let _ = self.write(&name, &p);
                    }
                }
            }
        }
        sent
    }

    /// Delivers for ever: on each new event, and every second for retries that fall due.
    pub async fn run(self: std::sync::Arc<Self>) {
        loop {
            self.drain().await;
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.wake.notified()).await;
        }
    }
}

#[async_trait]
impl Subscriber for Outbox {
    fn name(&self) -> &str {
        "webhooks"
    }

    async fn on_event(&self, event: &TampEvent) -> Result<()> {
        if !self.hooks.wanted(event) {
            return Ok(());
        }
        // Event ids are deterministic, so a replayed or duplicated event is spooled only for
        // targets that neither have it nor are waiting for it.
        let spooled: Vec<String> =
            std::fs::read_dir(&self.dir).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
        for target in 0..self.hooks.targets.len() {
            let id = delivery_name(event, target);
            if self.dir.join("sent").join(&id).exists() || spooled.iter().any(|n| n.ends_with(&format!("-{id}.json"))) {
                continue;
            }
            let name = format!("{:020}-{id}.json", event.time);
            self.write(&name, &Pending { event: event.clone(), target, attempts: 0, next_at: 0 })?;
        }
        self.wake.notify_one();
        Ok(())
    }
}

/// One line saying what happened: `✅ job_x (proj/model@v1) succeeded: 3.5× smaller, 1.33× faster`.
pub fn headline(e: &TampEvent) -> String {
    let kind = e.detail_type.trim_start_matches("tamp.");
    let icon = match kind {
        "job.succeeded" => "✅",
        "job.failed" | "stage.failed" => "❌",
        "quality.alert" => "⚠️",
        "report.ready" => "📄",
        "job.cancelled" => "⏹️",
        _ => "ℹ️",
    };
    let what = match kind {
        "job.succeeded" => "succeeded".to_owned(),
        "job.failed" => format!("failed: {}", e.reason.as_deref().unwrap_or("no reason recorded")),
        "job.cancelled" => "was cancelled".to_owned(),
        "quality.alert" => {
            let export = &e.detail["export_failed"];
            let export = export
                .is_object()
                .then(|| format!("no {} file: {}", export["runtime"].as_str().unwrap_or("runtime"), export["reason"].as_str().unwrap_or("no reason recorded")));
            let missed: Vec<String> = e.detail["missed_constraints"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(e.detail["flags"].as_array().into_iter().flatten())
                .chain(e.detail["cohort_regressions"].as_array().into_iter().flatten())
                .filter_map(|v| v.as_str().map(str::to_owned))
                .chain(export)
                .collect();
            format!("artifact needs a look: {}", missed.join("; "))
        }
        "report.ready" => {
            let verdict = e.detail["recommendation"].as_str().unwrap_or("unknown").replace('_', " ");
            let links: Vec<String> =
                e.detail["formats"].as_object().into_iter().flatten().filter_map(|(k, v)| v.as_str().map(|u| format!("{k} {u}"))).collect();
            format!("report ready — recommendation: {verdict}; {}", links.join(" · "))
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
    fn a_failed_export_is_named_in_the_alert() {
        let mut e = failed();
        e.detail_type = "tamp.quality.alert".into();
        e.detail = serde_json::json!({ "artifact": "art_1_0", "export_failed": { "runtime": "tflite", "reason": "node 'a' (Einsum): no builtin" } });
        assert!(headline(&e).ends_with("artifact needs a look: no tflite file: node 'a' (Einsum): no builtin"), "{}", headline(&e));
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

#[cfg(test)]
mod outbox_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn event(id: &str) -> TampEvent {
        TampEvent {
            id: id.into(),
            detail_type: "tamp.job.succeeded".into(),
            time: 7,
            project: "p".into(),
            model: "m".into(),
            version: "v".into(),
            job: "job_1".into(),
            state: "succeeded".into(),
            reason: None,
            link: "/jobs/job_1".into(),
            detail: serde_json::Value::Null,
        }
    }

    /// A receiver that is down when the event is published gets it once it is up; publishing
    /// returns at once whatever the receiver does.
    #[tokio::test]
    async fn outbox_delivers_after_the_receiver_comes_back() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe); // the receiver is down
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::new(dir.path().join("outbox"), Webhooks::new(vec![format!("http://{addr}/hook")], b"k".to_vec())).unwrap();
        let t = std::time::Instant::now();
        outbox.on_event(&event("evt_a")).await.unwrap();
        assert!(t.elapsed() < std::time::Duration::from_millis(200), "publishing waited for the receiver");
        assert_eq!(outbox.drain().await, 0, "delivered to nobody");
        let spooled = std::fs::read_dir(dir.path().join("outbox")).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".json")).count();
        assert_eq!(spooled, 1, "the event must wait on disk");

        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let got = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 65536];
            let mut n = 0;
            loop {
                let k = s.read(&mut buf[n..]).await.unwrap();
                n += k;
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if k == 0 || (text.contains("\r\n\r\n") && text.contains("evt_a")) {
                    break;
                }
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        // The retry falls due after its backoff (2 s after the first failure).
        let t = std::time::Instant::now();
        while outbox.drain().await == 0 {
            assert!(t.elapsed() < std::time::Duration::from_secs(10), "never redelivered");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let request = got.await.unwrap();
        assert!(request.to_ascii_lowercase().contains("x-tamp-signature: sha256="), "{request}");
        let left = std::fs::read_dir(dir.path().join("outbox")).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".json")).count();
        assert_eq!(left, 0);
    }
}
