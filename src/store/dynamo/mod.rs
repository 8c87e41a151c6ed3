//! The DynamoDB adapter: one table, string keys `pk`/`sk` (single-table design), one file per
//! item family.
//!
//! | item | pk | sk | written by |
//! |---|---|---|---|
//! | deployment creation | `REPO#<owner/name>` | `CREATE#PR#<n>#ENV#<env>` | [`creations`]: claim, then result |
//! | deployment | `REPO#<owner/name>` | `DEPLOYMENT#<id>` | [`deployments`]: newest status wins |
//! | environment | `REPO#<owner/name>` | `ENV#<env>` | [`environments`]: the run state, versioned |
//! | comment | `REPO#<owner/name>` | `COMMENT#<id>` | [`comments`]: a command acts and replies once |
//! | write budget | `USER#<login>` | `WRITES#<hour>` | [`comments`]: bot writes for a refused commenter, TTL'd |
//! | redelivery | `HOOK#<app or owner/name#id>` | `REDELIVERY` | [`environments`]: the redelivery sweep's watermark, versioned |
//!
//! Every write that guards an effect is a single conditional write, so two Lambda instances can
//! never both win. Environments with work due carry `due_pk`/`due_at`, the keys of the sparse
//! index `due` that the sweep queries; the others are not in that index at all.

mod comments;
mod creations;
mod deployments;
mod environments;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use tracing::warn;

use crate::domain::StatusRecord;
use crate::domain::gates::ChecksWait;
use crate::domain::ports::{
    Claim, CreationKey, CreationRecord, EnvKey, HookRef, Lease, Store, StoreError, StoredRepoConfig, Versioned,
};
use crate::domain::redelivery::RedeliveryState;
use crate::domain::runs::EnvironmentState;
use crate::domain::types::{DeliveryId, DeploymentId, Environment, RepoFullName, Sha};

pub use environments::DUE_INDEX;

type Item = HashMap<String, AttributeValue>;

#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into() }
    }

    fn update(&self, pk: String, sk: String) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(pk))
            .key("sk", AttributeValue::S(sk))
    }

    async fn get(&self, pk: String, sk: String) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(pk))
            .key("sk", AttributeValue::S(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(out.item)
    }

    /// Claims the item at (`pk`, `sk`) by writing it whole: `fields`, a new lease good for
    /// `lease_for`, and `attempts`, the number of claims the item has had. A PutItem, not an
    /// UpdateItem: the claimant knows every field, and a new item (the usual case) takes one
    /// write. An existing item is taken only if `may_take(old item, now)`, by a second write
    /// conditioned on the `attempts` and `state` it was read with, so that of two claimants that
    /// read the same item exactly one wins, and a holder that finished in between is not
    /// overwritten. `expect_existing` starts with a read instead of a write that would fail.
    /// `Ok(Err(item))`: not ours, with what is stored.
    async fn claim(
        &self,
        (pk, sk): (String, String),
        fields: Item,
        lease_for: Duration,
        expect_existing: bool,
        may_take: impl Fn(&Item, u64) -> bool,
    ) -> Result<Result<Lease, Option<Item>>, StoreError> {
        let (now, token) = (now_ms(), new_token());
        let put = |attempt: u64| {
            self.client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(fields.clone()))
                .item("pk", s(&pk))
                .item("sk", s(&sk))
                .item("lease_token", s(&token))
                .item("lease_until", n(now + lease_for.as_millis() as u64))
                .item("attempts", n(attempt))
                .item("updated_at", s(now_iso()))
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
        };
        let known = if expect_existing { self.get(pk.clone(), sk.clone()).await? } else { None };
        let old = match known {
            Some(old) => old,
            None => match put(1).condition_expression("attribute_not_exists(pk)").send().await {
                Ok(_) => return Ok(Ok(Lease { token, attempt: 1 })),
                Err(err) => match put_condition_failed(err)? {
                    Some(old) => old,
                    None => return Ok(Err(None)),
                },
            },
        };
        if !may_take(&old, now) {
            return Ok(Err(Some(old)));
        }
        let attempts = get_n(&old, "attempts").unwrap_or(1);
        let state = get_s(&old, "state").unwrap_or_default().to_owned();
        let taken = put(attempts + 1)
            .condition_expression("attempts = :attempts AND #state = :state")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":attempts", n(attempts))
            .expression_attribute_values(":state", s(state))
            .send()
            .await;
        match taken {
            Ok(_) => Ok(Ok(Lease { token, attempt: (attempts + 1) as u32 })),
            Err(err) => Ok(Err(put_condition_failed(err)?)),
        }
    }

    /// Sends a write guarded by our lease; a lost lease is logged, not an error: the effect is
    /// recorded under its own key by whoever holds it now.
    async fn guarded(&self, update: UpdateItemFluentBuilder, what: &str) -> Result<bool, StoreError> {
        match update.send().await {
            Ok(_) => Ok(true),
            Err(err) => {
                condition_failed(err)?;
                warn!("{what}: the lease was lost to another attempt");
                Ok(false)
            }
        }
    }
}

impl DynamoStore {
    /// Frees a claim at once (its work failed): the next attempt may take it without waiting
    /// for the lease to run out.
    async fn release_claim(&self, pk: String, sk: String, lease: &Lease, what: &str) -> Result<(), StoreError> {
        let update = self
            .update(pk, sk)
            .update_expression("SET lease_until = :zero, updated_at = :iso")
            .condition_expression("lease_token = :token")
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":iso", s(now_iso()))
            .expression_attribute_values(":token", s(&lease.token));
        self.guarded(update, what).await.map(drop)
    }
}

/// [`condition_failed`], for a PutItem.
fn put_condition_failed(err: SdkError<PutItemError>) -> Result<Option<Item>, StoreError> {
    match err {
        SdkError::ServiceError(service) => match service.into_err() {
            PutItemError::ConditionalCheckFailedException(e) => Ok(e.item),
            other => Err(unavailable(other)),
        },
        other => Err(unavailable(other)),
    }
}

/// `Ok(old item)` if `err` is a failed condition, else the error as a [`StoreError`].
fn condition_failed(err: SdkError<UpdateItemError>) -> Result<Option<Item>, StoreError> {
    match err {
        SdkError::ServiceError(service) => match service.into_err() {
            UpdateItemError::ConditionalCheckFailedException(e) => Ok(e.item),
            other => Err(unavailable(other)),
        },
        other => Err(unavailable(other)),
    }
}

fn unavailable<E: std::error::Error + 'static>(err: E) -> StoreError {
    StoreError::Unavailable(DisplayErrorContext(err).to_string())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn now_iso() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn get_s<'a>(item: &'a Item, key: &str) -> Option<&'a str> {
    item.get(key).and_then(|v| v.as_s().ok()).map(String::as_str)
}

fn get_n(item: &Item, key: &str) -> Option<u64> {
    item.get(key).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok())
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

fn new_token() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// The item that records which webhook events this stack has received: one attribute
/// `seen_<event>` per kind, the time (ms) it was last recorded.
const SEEN_KEY: (&str, &str) = ("STACK", "EVENTS_SEEN");
const SEEN_PREFIX: &str = "seen_";

impl Store for DynamoStore {
    async fn load_seen_events(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let item = self.get(SEEN_KEY.0.to_owned(), SEEN_KEY.1.to_owned()).await?.unwrap_or_default();
        Ok(item
            .keys()
            .filter_map(|k| k.strip_prefix(SEEN_PREFIX).map(|event| (event.to_owned(), get_n(&item, k).unwrap_or(0))))
            .collect())
    }

    async fn record_seen_event(&self, event: &str, now_ms: u64) -> Result<(), StoreError> {
        self.update(SEEN_KEY.0.to_owned(), SEEN_KEY.1.to_owned())
            .update_expression("SET #seen = :now, kind = :kind")
            .expression_attribute_names("#seen", format!("{SEEN_PREFIX}{event}"))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":kind", s("events_seen"))
            .send()
            .await
            .map(drop)
            .map_err(unavailable)
    }

    async fn claim_deployment_creation(
        &self,
        key: &CreationKey,
        sha: &Sha,
        delivery: &DeliveryId,
        after_wait: bool,
        lease_for: Duration,
    ) -> Result<Claim<CreationRecord>, StoreError> {
        self.claim_creation(key, sha, delivery, after_wait, lease_for).await
    }

    async fn load_checks_wait(&self, repo: &RepoFullName, sha: &Sha) -> Result<Versioned<ChecksWait>, StoreError> {
        self.load_checks_wait_doc(repo, sha).await
    }

    async fn save_checks_wait(
        &self,
        repo: &RepoFullName,
        sha: &Sha,
        state: &ChecksWait,
        expected: u64,
    ) -> Result<Result<u64, Versioned<ChecksWait>>, StoreError> {
        self.save_checks_wait_doc(repo, sha, state, expected).await
    }

    async fn due_checks_waits(&self, now_ms: u64, limit: usize) -> Result<Vec<(RepoFullName, Sha)>, StoreError> {
        self.due_checks_wait_docs(now_ms, limit).await
    }

    async fn read_deployment_creation(&self, key: &CreationKey) -> Result<Option<CreationRecord>, StoreError> {
        self.read_creation(key).await
    }

    async fn finish_deployment_creation(
        &self,
        key: &CreationKey,
        lease: &Lease,
        record: &CreationRecord,
    ) -> Result<(), StoreError> {
        self.finish_creation(key, lease, record).await
    }

    async fn release_deployment_creation(&self, key: &CreationKey, lease: &Lease) -> Result<(), StoreError> {
        self.release_creation(key, lease).await
    }

    async fn record_deployment_status(
        &self,
        repo: &RepoFullName,
        id: DeploymentId,
        environment: Option<&Environment>,
        status: &StatusRecord,
    ) -> Result<bool, StoreError> {
        self.record_status(repo, id, environment, status).await
    }

    async fn load_environment(&self, key: &EnvKey) -> Result<Versioned, StoreError> {
        self.load_env(key).await
    }

    async fn save_environment(
        &self,
        key: &EnvKey,
        state: &EnvironmentState,
        expected: u64,
    ) -> Result<Result<u64, Versioned>, StoreError> {
        self.save_env(key, state, expected).await
    }

    async fn due_environments(&self, now_ms: u64, limit: usize) -> Result<Vec<(EnvKey, Versioned)>, StoreError> {
        self.due_envs(now_ms, limit).await
    }

    async fn claim_comment(
        &self,
        repo: &RepoFullName,
        comment_id: u64,
        delivery: &DeliveryId,
        lease_for: Duration,
    ) -> Result<Claim<String>, StoreError> {
        self.claim_comment_item(repo, comment_id, delivery, lease_for).await
    }

    async fn finish_comment(
        &self,
        repo: &RepoFullName,
        comment_id: u64,
        lease: &Lease,
        outcome: &str,
    ) -> Result<(), StoreError> {
        self.finish_comment_item(repo, comment_id, lease, outcome).await
    }

    async fn release_comment(&self, repo: &RepoFullName, comment_id: u64, lease: &Lease) -> Result<(), StoreError> {
        self.release_comment_item(repo, comment_id, lease).await
    }

    async fn comment_outcome(&self, repo: &RepoFullName, comment_id: u64) -> Result<Option<String>, StoreError> {
        self.comment_outcome_item(repo, comment_id).await
    }

    async fn count_user_write(&self, user: &str, hour: u64, limit: u32) -> Result<bool, StoreError> {
        self.count_user_write_item(user, hour, limit).await
    }

    async fn load_repo_config(&self, repo: &RepoFullName) -> Result<Versioned<StoredRepoConfig>, StoreError> {
        self.load_repo_config_doc(repo).await
    }

    async fn save_repo_config(
        &self,
        repo: &RepoFullName,
        config: &StoredRepoConfig,
        expected: u64,
    ) -> Result<Result<u64, Versioned<StoredRepoConfig>>, StoreError> {
        self.save_repo_config_doc(repo, config, expected).await
    }

    async fn load_redelivery(&self, hook: &HookRef) -> Result<Versioned<RedeliveryState>, StoreError> {
        self.load_redelivery_doc(hook).await
    }

    async fn save_redelivery(
        &self,
        hook: &HookRef,
        state: &RedeliveryState,
        expected: u64,
    ) -> Result<Result<u64, Versioned<RedeliveryState>>, StoreError> {
        self.save_redelivery_doc(hook, state, expected).await
    }
}
