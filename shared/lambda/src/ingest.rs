//! The ingest function: S3 "Object Created" events for `uploads/…/recipe.yaml`, delivered by
//! EventBridge to an SQS queue (and so wrapped in SQS records). The classic S3 notification
//! shape (`Records[]`, URL-encoded keys) is accepted too, and S3's `s3:TestEvent` is skipped.
//! Idempotent on bucket + key + version: redelivered or duplicated events make one job.

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use tamp_adapters_aws::SqsQueue;
use tamp_control::Services;
use tamp_control::handlers::{self, Ingested};

use crate::{Error, for_each_record};

/// One object-created notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub bucket: String,
    pub key: String,
    /// `<etag>:<version id>`: the same form `ObjectStore::head` reports.
    pub version: String,
}

/// Decodes a key from the classic S3 notification (form encoding: `+` is a space).
pub fn decode_key(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit));
        match (bytes[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(h)) => {
                out.push(u8::from_str_radix(std::str::from_utf8(h).unwrap_or("00"), 16).unwrap_or(0));
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The uploads a message body announces: an EventBridge S3 event, or a classic S3
/// notification. `s3:TestEvent` and other shapes give none.
pub fn uploads(body: &serde_json::Value) -> Vec<Upload> {
    if body["source"] == "aws.s3" && body["detail-type"] == "Object Created" {
        let d = &body["detail"];
        let (Some(bucket), Some(key)) = (d["bucket"]["name"].as_str(), d["object"]["key"].as_str()) else { return Vec::new() };
        let etag = d["object"]["etag"].as_str().or_else(|| d["object"]["eTag"].as_str()).unwrap_or_default();
        let vid = d["object"]["version-id"].as_str().unwrap_or_default();
        return vec![Upload { bucket: bucket.to_owned(), key: key.to_owned(), version: format!("{}:{vid}", etag.trim_matches('"')) }];
    }
    body["Records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["eventName"].as_str().is_some_and(|n| n.starts_with("ObjectCreated:")))
        .filter_map(|r| {
            let s3 = &r["s3"];
            Some(Upload {
                bucket: s3["bucket"]["name"].as_str()?.to_owned(),
                key: decode_key(s3["object"]["key"].as_str()?),
                version: format!(
                    "{}:{}",
                    s3["object"]["eTag"].as_str().unwrap_or_default().trim_matches('"'),
                    s3["object"]["versionId"].as_str().unwrap_or_default()
                ),
            })
        })
        .collect()
}

/// Ingests every upload in the batch; a message that can never be ingested goes to `dlq`.
pub async fn handle(svc: &Services, dlq: Option<&SqsQueue>, event: SqsEvent) -> Result<SqsBatchResponse, Error> {
    Ok(for_each_record(event, dlq, |body| async move { ingest_body(svc, &body).await }).await)
}

/// Ingests the uploads in one message body.
pub async fn ingest_body(svc: &Services, body: &str) -> Result<(), Error> {
    let value: serde_json::Value = serde_json::from_str(body).map_err(|e| Error::Invalid(format!("not JSON: {e}")))?;
    if value["Event"] == "s3:TestEvent" {
        tracing::info!("s3:TestEvent skipped");
        return Ok(());
    }
    for u in uploads(&value) {
        let outcome = handlers::ingest(svc, &u.key, &format!("{}/{}", u.bucket, u.version)).await?;
        match &outcome {
            Ingested::Created(job) => tracing::info!(key = %u.key, job, "job created"),
            Ingested::Duplicate(job) => tracing::info!(key = %u.key, job, "duplicate upload event"),
            Ingested::Ignored(why) => tracing::debug!(key = %u.key, why, "not a trigger"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn classic_keys_are_url_decoded() {
        assert_eq!(decode_key("uploads/p/m/v1/recipe.yaml"), "uploads/p/m/v1/recipe.yaml");
        assert_eq!(decode_key("uploads/p/my+model/v%C3%A9/recipe.yaml"), "uploads/p/my model/vé/recipe.yaml");
        assert_eq!(decode_key("100%"), "100%");
        assert_eq!(decode_key("a%2"), "a%2");
    }
}
