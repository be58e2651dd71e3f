//! Tamp's AWS adapters: S3 as the object store, DynamoDB as the metadata store and SQS as the
//! queue, EventBridge as the event bus, AWS Batch as the
//! batch runner. They pass the same conformance suite as the local adapters, run
//! against the moto emulator that `make test` starts — never against SDK mocks.
//!
//! Client construction reads the standard AWS environment (`AWS_REGION`, credentials,
//! `AWS_ENDPOINT_URL` for an emulator or a VPC endpoint); with a custom endpoint S3 uses
//! path-style addressing.

pub mod batch;
pub mod dynamo;
pub mod events;
pub mod secrets;

pub use aws_config::SdkConfig;
pub use batch::AwsBatchRunner;
pub use dynamo::DynamoStore;
pub use events::EventBridgeBus;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use tamp_domain::job::Timestamp;
use tamp_ports::{Delivery, ObjectMeta, ObjectStore, PortError, PutOutcome, Queue, Result, check_key};

/// Loads the shared AWS configuration from the environment, with rustls over *ring* as the
/// HTTPS client (what the SDK's default client does with aws-lc, whose C build cost minutes of
/// every cold build).
pub async fn aws_config() -> aws_config::SdkConfig {
    use aws_smithy_http_client::{Builder, tls};
    let https = Builder::new().tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring)).build_https();
    aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(https).load().await
}

/// A required setting from the environment, or an error naming it.
pub fn env_var(name: &str) -> std::result::Result<String, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(format!("{name} is not set (the Terraform module sets it on every function and job definition)")),
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> PortError {
    PortError::Unavailable(format!("{what}: {e}"))
}

/// Longest a presigned URL may live.
pub const MAX_PRESIGN: Duration = Duration::from_secs(15 * 60);

/// Files above this size go up as multipart uploads by default (S3's single PUT takes up to
/// 5 GiB, but one part failing then costs the whole file).
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 64 << 20;
/// S3's smallest part (all but the last).
pub const MIN_PART_SIZE: u64 = 5 << 20;

#[derive(Debug, Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// SSE-KMS key for every write, when the bucket's policy requires one.
    kms_key_id: Option<String>,
    multipart_threshold: u64,
    part_size: u64,
}

impl S3Store {
    pub fn new(config: &aws_config::SdkConfig, bucket: impl Into<String>) -> Self {
        let path_style = config.endpoint_url().is_some();
        let s3 = aws_sdk_s3::config::Builder::from(config).force_path_style(path_style).build();
        Self {
            client: aws_sdk_s3::Client::from_conf(s3),
            bucket: bucket.into(),
            kms_key_id: None,
            multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
            part_size: 16 << 20,
        }
    }

    /// Sends `x-amz-server-side-encryption: aws:kms` with this key id on every write.
    #[must_use]
    pub fn with_kms_key(mut self, key_id: Option<String>) -> Self {
        self.kms_key_id = key_id.filter(|k| !k.is_empty());
        self
    }

    /// Files of at least `threshold` bytes are uploaded in parts of `part_size` (≥ 5 MiB).
    #[must_use]
    pub fn with_multipart(mut self, threshold: u64, part_size: u64) -> Self {
        self.part_size = part_size.max(MIN_PART_SIZE);
        self.multipart_threshold = threshold.max(self.part_size);
        self
    }

    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn sse(&self) -> (Option<aws_sdk_s3::types::ServerSideEncryption>, Option<String>) {
        match &self.kms_key_id {
            Some(k) => (Some(aws_sdk_s3::types::ServerSideEncryption::AwsKms), Some(k.clone())),
            None => (None, None),
        }
    }

    fn put_request(&self, key: &str) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
        let (sse, kms) = self.sse();
        self.client.put_object().bucket(&self.bucket).key(key).set_server_side_encryption(sse).set_ssekms_key_id(kms)
    }

    /// Uploads `path` in parts; with `if_absent`, completes with `If-None-Match: *`. A failed
    /// upload is aborted so no parts linger (the bucket's lifecycle rule also expires them).
    async fn multipart(&self, key: &str, path: &Path, if_absent: bool) -> Result<PutOutcome> {
        use tokio::io::AsyncReadExt;
        let (sse, kms) = self.sse();
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms)
            .send()
            .await
            .map_err(|e| unavailable("s3 create multipart", e.into_service_error()))?;
        let upload_id = created.upload_id().ok_or_else(|| PortError::Unavailable("s3 create multipart: no upload id".into()))?.to_owned();
        let parts = async {
            let mut file = tokio::fs::File::open(path).await.map_err(|e| unavailable(&path.display().to_string(), e))?;
            let mut parts = Vec::new();
            for number in 1.. {
                let mut buf = Vec::with_capacity(self.part_size as usize);
                (&mut file).take(self.part_size).read_to_end(&mut buf).await.map_err(|e| unavailable(&path.display().to_string(), e))?;
                if buf.is_empty() && number > 1 {
                    break;
                }
                let last = (buf.len() as u64) < self.part_size;
                let out = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .body(ByteStream::from(buf))
                    .send()
                    .await
                    .map_err(|e| unavailable("s3 upload part", e.into_service_error()))?;
                parts.push(aws_sdk_s3::types::CompletedPart::builder().part_number(number).set_e_tag(out.e_tag().map(str::to_owned)).build());
                if last {
                    break;
                }
            }
            Ok::<_, PortError>(parts)
        }
        .await;
        let abort = || async {
            let _ = self.client.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(&upload_id).send().await;
        };
        let parts = match parts {
            Ok(p) => p,
            Err(e) => {
                abort().await;
                return Err(e);
            }
        };
        let mut complete = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(aws_sdk_s3::types::CompletedMultipartUpload::builder().set_parts(Some(parts)).build());
        if if_absent {
            complete = complete.if_none_match("*");
        }
        match complete.send().await {
            Ok(_) => Ok(PutOutcome::Created),
            Err(e) if is_precondition_failed(&e) => {
                abort().await;
                Ok(PutOutcome::Exists)
            }
            Err(e) => {
                abort().await;
                Err(unavailable("s3 complete multipart", e.into_service_error()))
            }
        }
    }

    /// Creates the bucket (tests and local emulators; Terraform owns real buckets).
    pub async fn create_bucket(&self) -> Result<()> {
        match self.client.create_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.code(), Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")) => Ok(()),
            Err(e) => Err(unavailable("create bucket", e.into_service_error())),
        }
    }

    /// `GetObject`, with a missing key as `NotFound`.
    async fn get_object(&self, key: &str) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput> {
        check_key(key)?;
        self.client.get_object().bucket(&self.bucket).key(key).send().await.map_err(|e| {
            let e = e.into_service_error();
            if e.is_no_such_key() { PortError::NotFound(key.to_owned()) } else { unavailable("s3 get", e) }
        })
    }

    fn presign_config(ttl: Duration, now: Timestamp) -> Result<PresigningConfig> {
        if ttl > MAX_PRESIGN {
            return Err(PortError::Invalid(format!("presigned URLs live at most {} s", MAX_PRESIGN.as_secs())));
        }
        PresigningConfig::builder().start_time(UNIX_EPOCH + Duration::from_secs(now)).expires_in(ttl).build().map_err(|e| PortError::Invalid(e.to_string()))
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        check_key(key)?;
        self.put_request(key).body(ByteStream::from(bytes)).send().await.map_err(|e| unavailable("s3 put", e.into_service_error()))?;
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<PutOutcome> {
        check_key(key)?;
        match self.put_request(key).if_none_match("*").body(ByteStream::from(bytes)).send().await {
            Ok(_) => Ok(PutOutcome::Created),
            // 412: the key exists; immutable artifacts are content-addressed, so this is the
            // same object written by an earlier attempt.
            Err(e) if is_precondition_failed(&e) => Ok(PutOutcome::Exists),
            Err(e) => Err(unavailable("s3 conditional put", e.into_service_error())),
        }
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<()> {
        check_key(key)?;
        if file_size(path)? >= self.multipart_threshold {
            return self.multipart(key, path, false).await.map(|_| ());
        }
        let body = ByteStream::from_path(path).await.map_err(|e| unavailable(&path.display().to_string(), e))?;
        self.put_request(key).body(body).send().await.map_err(|e| unavailable("s3 put", e.into_service_error()))?;
        Ok(())
    }

    async fn put_if_absent_file(&self, key: &str, path: &Path) -> Result<PutOutcome> {
        check_key(key)?;
        if file_size(path)? >= self.multipart_threshold {
            // Cheap check first: parts of a large model are not uploaded again for nothing.
            if self.head(key).await?.is_some() {
                return Ok(PutOutcome::Exists);
            }
            return self.multipart(key, path, true).await;
        }
        let body = ByteStream::from_path(path).await.map_err(|e| unavailable(&path.display().to_string(), e))?;
        match self.put_request(key).if_none_match("*").body(body).send().await {
            Ok(_) => Ok(PutOutcome::Created),
            Err(e) if is_precondition_failed(&e) => Ok(PutOutcome::Exists),
            Err(e) => Err(unavailable("s3 conditional put", e.into_service_error())),
        }
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>> {
        let out = self.get_object(key).await?;
        Ok(out.body.collect().await.map_err(|e| unavailable("s3 read", e))?.into_bytes().to_vec())
    }

    async fn get_to_file(&self, key: &str, path: &Path) -> Result<()> {
        let out = self.get_object(key).await?;
        let mut reader = out.body.into_async_read();
        let mut file = tokio::fs::File::create(path).await.map_err(|e| unavailable(&path.display().to_string(), e))?;
        tokio::io::copy(&mut reader, &mut file).await.map_err(|e| unavailable("s3 download", e))?;
        Ok(())
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        check_key(key)?;
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(o) => {
                let version = format!("{}:{}", o.e_tag().unwrap_or_default(), o.version_id().unwrap_or_default());
                Ok(Some(ObjectMeta { key: key.to_owned(), size: o.content_length().unwrap_or(0).max(0) as u64, version }))
            }
            Err(e) => {
                let e = e.into_service_error();
                if e.is_not_found() { Ok(None) } else { Err(unavailable("s3 head", e)) }
            }
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(prefix).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| unavailable("s3 list", e.into_service_error()))?;
            keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_owned)));
        }
        keys.sort();
        Ok(keys)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        self.client.delete_object().bucket(&self.bucket).key(key).send().await.map_err(|e| unavailable("s3 delete", e.into_service_error()))?;
        Ok(())
    }

    async fn presign_get(&self, key: &str, ttl: Duration, now: Timestamp) -> Result<String> {
        check_key(key)?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(Self::presign_config(ttl, now)?)
            .await
            .map_err(|e| unavailable("s3 presign", e))?;
        Ok(req.uri().to_owned())
    }

    async fn presign_put(&self, key: &str, ttl: Duration, now: Timestamp) -> Result<String> {
        check_key(key)?;
        let req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(Self::presign_config(ttl, now)?)
            .await
            .map_err(|e| unavailable("s3 presign", e))?;
        Ok(req.uri().to_owned())
    }
}

fn file_size(path: &Path) -> Result<u64> {
    std::fs::metadata(path).map(|m| m.len()).map_err(|e| unavailable(&path.display().to_string(), e))
}

/// HTTP 412 from a conditional write: the key exists.
fn is_precondition_failed<E: ProvideErrorMetadata>(e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> bool {
    e.raw_response().is_some_and(|r| r.status().as_u16() == 412) || e.code() == Some("PreconditionFailed")
}

/// SQS with a redrive policy: after `max_receives` deliveries a message moves to the DLQ.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
    dlq_url: String,
}

fn whole_seconds(d: Duration) -> i32 {
    d.as_secs_f64().ceil().min(f64::from(i32::MAX)) as i32
}

impl SqsQueue {
    pub fn new(config: &aws_config::SdkConfig, url: impl Into<String>, dlq_url: impl Into<String>) -> Self {
        Self { client: aws_sdk_sqs::Client::new(config), url: url.into(), dlq_url: dlq_url.into() }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn dlq_url(&self) -> &str {
        &self.dlq_url
    }

    /// Puts a message that can never succeed straight on the DLQ, with why (`tamp_reason`)
    /// and its original message id as attributes, where an operator sees it and can replay
    /// it once the cause is fixed (SQS's redrive only moves messages that failed
    /// `maxReceiveCount` times, and would retry a poison message that often first).
    pub async fn park(&self, body: &str, reason: &str, message_id: &str) -> Result<()> {
        let attr = |v: &str| {
            aws_sdk_sqs::types::MessageAttributeValue::builder().data_type("String").string_value(v).build().map_err(|e| unavailable("sqs attribute", e))
        };
        // SQS attribute values are at most 256 KiB; a reason is one line.
        let reason: String = reason.chars().take(4096).collect();
        self.client
            .send_message()
            .queue_url(&self.dlq_url)
            .message_body(body)
            .message_attributes("tamp_reason", attr(&reason)?)
            .message_attributes("tamp_message_id", attr(if message_id.is_empty() { "-" } else { message_id })?)
            .send()
            .await
            .map_err(|e| unavailable("sqs park", e.into_service_error()))?;
        Ok(())
    }

    /// Creates `name` and `name-dlq` with the redrive policy (tests and emulators; Terraform
    /// owns real queues).
    pub async fn create(config: &aws_config::SdkConfig, name: &str, max_receives: u32) -> Result<Self> {
        let client = aws_sdk_sqs::Client::new(config);
        let dlq = client.create_queue().queue_name(format!("{name}-dlq")).send().await.map_err(|e| unavailable("sqs create dlq", e.into_service_error()))?;
        let dlq_url = dlq.queue_url().unwrap_or_default().to_owned();
        let attrs = client
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| unavailable("sqs dlq arn", e.into_service_error()))?;
        let arn = attrs.attributes().and_then(|a| a.get(&QueueAttributeName::QueueArn)).cloned().unwrap_or_default();
        let redrive = serde_json::json!({ "deadLetterTargetArn": arn, "maxReceiveCount": max_receives.to_string() }).to_string();
        let q = client
            .create_queue()
            .queue_name(name)
            .attributes(QueueAttributeName::RedrivePolicy, redrive)
            .send()
            .await
            .map_err(|e| unavailable("sqs create", e.into_service_error()))?;
        Ok(Self { client, url: q.queue_url().unwrap_or_default().to_owned(), dlq_url })
    }
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, body: String, delay: Duration) -> Result<()> {
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .delay_seconds(whole_seconds(delay).min(900))
            .send()
            .await
            .map_err(|e| unavailable("sqs send", e.into_service_error()))?;
        Ok(())
    }

    async fn receive(&self, max: usize, visibility: Duration) -> Result<Vec<Delivery>> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .visibility_timeout(whole_seconds(visibility))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .wait_time_seconds(0)
            .send()
            .await
            .map_err(|e| unavailable("sqs receive", e.into_service_error()))?;
        Ok(out
            .messages()
            .iter()
            .map(|m| Delivery {
                id: m.message_id().unwrap_or_default().to_owned(),
                receipt: m.receipt_handle().unwrap_or_default().to_owned(),
                body: m.body().unwrap_or_default().to_owned(),
                receive_count: m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1),
            })
            .collect())
    }

    async fn ack(&self, receipt: &str) -> Result<()> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| unavailable("sqs delete", e.into_service_error()))?;
        Ok(())
    }

    async fn dead_letters(&self) -> Result<Vec<String>> {
        // Peek: a zero visibility timeout leaves them on the DLQ.
        let out = self
            .client
            .receive_message()
            .queue_url(&self.dlq_url)
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .send()
            .await
            .map_err(|e| unavailable("sqs dlq", e.into_service_error()))?;
        Ok(out.messages().iter().filter_map(|m| m.body().map(str::to_owned)).collect())
    }
}

/// A unique suffix for test resource names.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{prefix}-{}-{nanos}", std::process::id())
}
