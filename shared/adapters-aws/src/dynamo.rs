//! DynamoDB as the metadata store: one table, partition key `PK`, sort key `SK`, and a
//! sparse index `GSI1` (`GSI1PK`, `GSI1SK`) listing jobs by state.
//!
//! | item | PK | SK | notes |
//! |---|---|---|---|
//! | job | `JOB#<id>` | `JOB` | `doc`, `revision`; `GSI1PK = STATE#<state>#<shard>` (4 shards by id hash, so one busy state is not one hot key), `GSI1SK = <created, 20 digits>#<id>` |
//! | idempotency | `IDEM#<key>` | `IDEM` | `job_id`; written in the job's transaction |
//! | job's key | `JOBIDEM#<job id>` | `IDEM` | `key`: the idempotency key, so deleting a job deletes it too |
//! | artifact | `ART#<id>` | `ART` | `doc` |
//! | best pointer | `BEST#<model>#<runtime>` | `BEST` | moved only by a conditional update to a higher score |
//! | token | `TOKEN#<hash>` | `TOKEN` | `doc`; its id reserved as `TOKENID#<id>` (with `hash`) in the same transaction |
//! | audit | `AUDIT` | `<time, 20 digits>#<random>` | newest first by a reverse query |
//! | record | `REC#<kind>` | `<id>` | catalog documents; prefix listing with `begins_with` |

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType, Put, ScalarAttributeType,
    TransactWriteItem,
};
use tamp_domain::job::{Job, JobState};
use tamp_ports::{ArtifactRecord, AuditRecord, Created, MetadataStore, PortError, Result, TokenRecord};

const SHARDS: u64 = 4;
const STATES: [JobState; 6] = [JobState::Queued, JobState::Planning, JobState::Running, JobState::Succeeded, JobState::Failed, JobState::Cancelled];

#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

type Item = HashMap<String, AttributeValue>;

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> PortError {
    PortError::Unavailable(format!("dynamodb {what}: {e}"))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| PortError::Invalid(e.to_string()))
}

fn doc<T: serde::de::DeserializeOwned>(item: &Item) -> Result<T> {
    let text = item.get("doc").and_then(|v| v.as_s().ok()).ok_or_else(|| PortError::Invalid("item without doc".into()))?;
    serde_json::from_str(text).map_err(|e| PortError::Invalid(format!("stored record does not parse: {e}")))
}

fn shard(id: &str) -> u64 {
    // FNV-1a: stable across processes and versions (std's hasher is not).
    id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)) % SHARDS
}

/// The table's TTL attribute (epoch seconds); the Terraform module enables TTL on it.
pub const TTL_ATTRIBUTE: &str = "expires_at";

fn key(pk: impl Into<String>, sk: impl Into<String>) -> Item {
    HashMap::from([("PK".to_owned(), s(pk)), ("SK".to_owned(), s(sk))])
}

impl DynamoStore {
    pub fn new(config: &aws_config::SdkConfig, table: impl Into<String>) -> Self {
        Self { client: aws_sdk_dynamodb::Client::new(config), table: table.into() }
    }

    /// Creates the table and its index (tests and emulators; Terraform owns real tables).
    pub async fn create_table(&self) -> Result<()> {
        let attr = |name: &str| AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build();
        let ks = |name: &str, t: KeyType| KeySchemaElement::builder().attribute_name(name).key_type(t).build();
        let gsi = GlobalSecondaryIndex::builder()
            .index_name("GSI1")
            .key_schema(ks("GSI1PK", KeyType::Hash).map_err(|e| PortError::Invalid(e.to_string()))?)
            .key_schema(ks("GSI1SK", KeyType::Range).map_err(|e| PortError::Invalid(e.to_string()))?)
            .projection(Projection::builder().projection_type(ProjectionType::All).build())
            .build()
            .map_err(|e| PortError::Invalid(e.to_string()))?;
        let mut req = self.client.create_table().table_name(&self.table).billing_mode(BillingMode::PayPerRequest).global_secondary_indexes(gsi);
        for a in ["PK", "SK", "GSI1PK", "GSI1SK"] {
            req = req.attribute_definitions(attr(a).map_err(|e| PortError::Invalid(e.to_string()))?);
        }
        req = req
            .key_schema(ks("PK", KeyType::Hash).map_err(|e| PortError::Invalid(e.to_string()))?)
            .key_schema(ks("SK", KeyType::Range).map_err(|e| PortError::Invalid(e.to_string()))?);
        req.send().await.map_err(|e| unavailable("create table", e.into_service_error()))?;
        Ok(())
    }

    fn job_item(job: &Job) -> Result<Item> {
        let mut item = key(format!("JOB#{}", job.id), "JOB");
        item.insert("doc".into(), s(to_json(job)?));
        item.insert("revision".into(), n(job.revision));
        item.insert("GSI1PK".into(), s(format!("STATE#{}#{}", job.state.as_str(), shard(&job.id))));
        item.insert("GSI1SK".into(), s(format!("{:020}#{}", job.created_at, job.id)));
        Ok(item)
    }

    async fn get(&self, pk: String, sk: &str) -> Result<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("get", e.into_service_error()))?;
        Ok(out.item)
    }

    /// Deletes one item; returns whether it existed.
    async fn delete(&self, pk: String, sk: &str) -> Result<bool> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| unavailable("delete", e.into_service_error()))?;
        Ok(out.attributes().is_some_and(|a| !a.is_empty()))
    }

    fn put(&self, item: Item, condition: &str) -> Result<TransactWriteItem> {
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(condition)
            .build()
            .map_err(|e| PortError::Invalid(e.to_string()))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// Runs a transaction; returns which items' conditions failed (empty on success).
    async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<Vec<bool>> {
        match self.client.transact_write_items().set_transact_items(Some(items)).send().await {
            Ok(_) => Ok(Vec::new()),
            Err(e) => {
                let e = e.into_service_error();
                if let aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c) = &e {
                    return Ok(c.cancellation_reasons().iter().map(|r| r.code() == Some("ConditionalCheckFailed")).collect());
                }
                Err(unavailable("transaction", e))
            }
        }
    }
}

#[async_trait]
impl MetadataStore for DynamoStore {
    async fn create_job(&self, job: &Job, idempotency_key: &str) -> Result<Created> {
        let mut idem = key(format!("IDEM#{idempotency_key}"), "IDEM");
        idem.insert("job_id".into(), s(job.id.clone()));
        let mut back = key(format!("JOBIDEM#{}", job.id), "IDEM");
        back.insert("key".into(), s(idempotency_key));
        let failed = self
            .transact(vec![
                self.put(idem, "attribute_not_exists(PK)")?,
                self.put(Self::job_item(job)?, "attribute_not_exists(PK)")?,
                self.put(back, "attribute_not_exists(PK)")?,
            ])
            .await?;
        if failed.is_empty() {
            return Ok(Created::New);
        }
        if failed.first() == Some(&true) {
            let item = self.get(format!("IDEM#{idempotency_key}"), "IDEM").await?.ok_or_else(|| PortError::Conflict("idempotency record vanished".into()))?;
            let id = item.get("job_id").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
            return Ok(Created::Duplicate(id));
        }
        Err(PortError::Conflict(format!("job {} already exists", job.id)))
    }

    async fn get_job(&self, id: &str) -> Result<Option<Job>> {
        self.get(format!("JOB#{id}"), "JOB").await?.map(|i| doc(&i)).transpose()
    }

    async fn update_job(&self, job: &Job, expected_revision: u64) -> Result<()> {
        let r = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(Self::job_item(job)?))
            .condition_expression("revision = :expected")
            .expression_attribute_values(":expected", n(expected_revision))
            .send()
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = e.into_service_error();
                if e.is_conditional_check_failed_exception() {
                    return Err(match self.get(format!("JOB#{}", job.id), "JOB").await? {
                        None => PortError::NotFound(format!("job {}", job.id)),
                        Some(_) => PortError::Conflict(format!("job {} is not at revision {expected_revision}", job.id)),
                    });
                }
                Err(unavailable("update job", e))
            }
        }
    }

    async fn list_jobs(&self, state: Option<JobState>, limit: usize) -> Result<Vec<Job>> {
        let states: Vec<JobState> = state.map_or_else(|| STATES.to_vec(), |s| vec![s]);
        let mut found: Vec<(String, Job)> = Vec::new();
        for st in states {
            for sh in 0..SHARDS {
                let out = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .index_name("GSI1")
                    .key_condition_expression("GSI1PK = :pk")
                    .expression_attribute_values(":pk", s(format!("STATE#{}#{sh}", st.as_str())))
                    .scan_index_forward(false)
                    .limit(limit.clamp(1, 1000) as i32)
                    .send()
                    .await
                    .map_err(|e| unavailable("list jobs", e.into_service_error()))?;
                for item in out.items() {
                    let sk = item.get("GSI1SK").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
                    found.push((sk, doc(item)?));
                }
            }
        }
        found.sort_by(|a, b| b.0.cmp(&a.0));
        Ok(found.into_iter().take(limit).map(|(_, j)| j).collect())
    }

    async fn put_artifact(&self, a: &ArtifactRecord) -> Result<bool> {
        let mut item = key(format!("ART#{}", a.id), "ART");
        item.insert("doc".into(), s(to_json(a)?));
        if let Err(e) = self.client.put_item().table_name(&self.table).set_item(Some(item)).condition_expression("attribute_not_exists(PK)").send().await {
            let e = e.into_service_error();
            if !e.is_conditional_check_failed_exception() {
                return Err(unavailable("put artifact", e));
            }
        }
        if !a.eligible {
            return Ok(false);
        }
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(format!("BEST#{}#{}", a.model_id, a.runtime), "BEST")))
            .update_expression("SET artifact_id = :id, score = :s")
            .condition_expression("attribute_not_exists(PK) OR (score < :s AND artifact_id <> :id)")
            .expression_attribute_values(":id", s(a.id.clone()))
            .expression_attribute_values(":s", n(a.score))
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) => {
                let e = e.into_service_error();
                if e.is_conditional_check_failed_exception() { Ok(false) } else { Err(unavailable("best pointer", e)) }
            }
        }
    }

    async fn get_artifact(&self, id: &str) -> Result<Option<ArtifactRecord>> {
        self.get(format!("ART#{id}"), "ART").await?.map(|i| doc(&i)).transpose()
    }

    async fn best_artifact(&self, model_id: &str, runtime: &str) -> Result<Option<ArtifactRecord>> {
        let Some(best) = self.get(format!("BEST#{model_id}#{runtime}"), "BEST").await? else { return Ok(None) };
        let id = best.get("artifact_id").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
        self.get_artifact(&id).await
    }

    async fn put_token(&self, token: &TokenRecord) -> Result<()> {
        let mut item = key(format!("TOKEN#{}", token.hash), "TOKEN");
        item.insert("doc".into(), s(to_json(token)?));
        // DynamoDB's TTL deletes expired tokens (a day after expiry; reads check expiry anyway).
        item.insert(TTL_ATTRIBUTE.into(), n(token.expires_at + 86_400));
        let mut reserved = key(format!("TOKENID#{}", token.id), "TOKENID");
        reserved.insert("hash".into(), s(token.hash.clone()));
        let failed = self.transact(vec![self.put(item, "attribute_not_exists(PK)")?, self.put(reserved, "attribute_not_exists(PK)")?]).await?;
        if failed.is_empty() { Ok(()) } else { Err(PortError::Conflict(format!("token {} exists", token.id))) }
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>> {
        self.get(format!("TOKEN#{hash}"), "TOKEN").await?.map(|i| doc(&i)).transpose()
    }

    async fn append_audit(&self, record: &AuditRecord) -> Result<()> {
        let mut item = key("AUDIT", format!("{:020}#{}", record.time, crate::unique("a")));
        item.insert("doc".into(), s(to_json(record)?));
        self.client.put_item().table_name(&self.table).set_item(Some(item)).send().await.map_err(|e| unavailable("audit", e.into_service_error()))?;
        Ok(())
    }

    async fn list_audit(&self, limit: usize) -> Result<Vec<AuditRecord>> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("PK = :pk")
            .expression_attribute_values(":pk", s("AUDIT"))
            .scan_index_forward(false)
            .limit(limit.clamp(1, 1000) as i32)
            .send()
            .await
            .map_err(|e| unavailable("list audit", e.into_service_error()))?;
        out.items().iter().map(doc).collect()
    }

    async fn put_record(&self, kind: &str, id: &str, value: &serde_json::Value, if_absent: bool) -> Result<bool> {
        let mut item = key(format!("REC#{kind}"), id);
        item.insert("doc".into(), s(to_json(value)?));
        let mut req = self.client.put_item().table_name(&self.table).set_item(Some(item));
        if if_absent {
            req = req.condition_expression("attribute_not_exists(PK)");
        }
        match req.send().await {
            Ok(_) => Ok(true),
            Err(e) => {
                let e = e.into_service_error();
                if e.is_conditional_check_failed_exception() { Ok(false) } else { Err(unavailable("put record", e)) }
            }
        }
    }

    async fn delete_job(&self, id: &str) -> Result<()> {
        if let Some(back) = self.get(format!("JOBIDEM#{id}"), "IDEM").await?
            && let Some(k) = back.get("key").and_then(|v| v.as_s().ok())
        {
            self.delete(format!("IDEM#{k}"), "IDEM").await?;
        }
        self.delete(format!("JOBIDEM#{id}"), "IDEM").await?;
        self.delete(format!("JOB#{id}"), "JOB").await?;
        Ok(())
    }

    async fn delete_artifact(&self, id: &str) -> Result<()> {
        let Some(item) = self.get(format!("ART#{id}"), "ART").await? else { return Ok(()) };
        let a: ArtifactRecord = doc(&item)?;
        let r = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(format!("BEST#{}#{}", a.model_id, a.runtime), "BEST")))
            .condition_expression("artifact_id = :id")
            .expression_attribute_values(":id", s(id))
            .send()
            .await;
        if let Err(e) = r {
            let e = e.into_service_error();
            if !e.is_conditional_check_failed_exception() {
                return Err(unavailable("delete best pointer", e));
            }
        }
        self.delete(format!("ART#{id}"), "ART").await?;
        Ok(())
    }

    async fn delete_record(&self, kind: &str, id: &str) -> Result<bool> {
        self.delete(format!("REC#{kind}"), id).await
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        // Rare (admin listing, project deletion): a filtered scan of the one table.
        let mut out = Vec::new();
        let mut pages =
            self.client.scan().table_name(&self.table).filter_expression("SK = :t").expression_attribute_values(":t", s("TOKEN")).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| unavailable("list tokens", e.into_service_error()))?;
            for item in page.items() {
                out.push(doc::<TokenRecord>(item)?);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn delete_token(&self, id: &str) -> Result<bool> {
        let hash = match self.get(format!("TOKENID#{id}"), "TOKENID").await? {
            None => return Ok(false),
            Some(item) => match item.get("hash").and_then(|v| v.as_s().ok()) {
                Some(h) => h.clone(),
                None => self.list_tokens().await?.into_iter().find(|t| t.id == id).map(|t| t.hash).unwrap_or_default(),
            },
        };
        if !hash.is_empty() {
            self.delete(format!("TOKEN#{hash}"), "TOKEN").await?;
        }
        self.delete(format!("TOKENID#{id}"), "TOKENID").await
    }

    async fn get_record(&self, kind: &str, id: &str) -> Result<Option<serde_json::Value>> {
        self.get(format!("REC#{kind}"), id).await?.map(|i| doc(&i)).transpose()
    }

    async fn list_records(&self, kind: &str, prefix: &str) -> Result<Vec<serde_json::Value>> {
        let mut out = Vec::new();
        let mut req = self.client.query().table_name(&self.table).expression_attribute_values(":pk", s(format!("REC#{kind}")));
        req = if prefix.is_empty() {
            req.key_condition_expression("PK = :pk")
        } else {
            req.key_condition_expression("PK = :pk AND begins_with(SK, :p)").expression_attribute_values(":p", s(prefix))
        };
        let mut pages = req.into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| unavailable("list records", e.into_service_error()))?;
            for item in page.items() {
                out.push(doc(item)?);
            }
        }
        Ok(out)
    }
}
