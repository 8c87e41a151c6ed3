//! The DynamoDB adapter: one table, string keys `pk`/`sk` (single-table design).
//!
//! | item | pk | sk | what guards it |
//! |---|---|---|---|
//! | delivery ledger | `DELIVERY#<guid>` | `DELIVERY` | claim: not there, failed, or lease expired |
//! | deployment creation | `REPO#<owner/name>` | `CREATE#PR#<n>#ENV#<env>` | claim: not there, or `creating` with an expired lease |
//! | deployment | `REPO#<owner/name>` | `DEPLOYMENT#<id>` | run claim; `status_id` only grows |
//!
//! Every write that guards an effect is a single conditional `UpdateItem`, so two Lambda
//! instances can never both win a claim. Delivery items expire through the table's TTL attribute
//! `expires_at`; creation and deployment items are the history and are kept.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use tracing::warn;

use crate::domain::ports::{Claim, CreationKey, CreationRecord, DeployReport, Lease, Store, StoreError};
use crate::domain::types::{DeliveryId, DeploymentId, DeploymentState, Environment, RepoFullName, Sha};
use crate::domain::{DeploymentCreated, StatusRecord};

/// How long a delivery's ledger entry is kept: GitHub lets a delivery be redelivered for 3 days.
pub const DELIVERY_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

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

    /// Sends a claim: `Ok(Ok(new item))` when won, `Ok(Err(old item))` when the condition failed.
    async fn claim(&self, update: UpdateItemFluentBuilder) -> Result<Result<Item, Option<Item>>, StoreError> {
        let sent = update
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match sent {
            Ok(out) => Ok(Ok(out.attributes.unwrap_or_default())),
            Err(err) => match condition_failed(err) {
                Ok(old) => Ok(Err(old)),
                Err(err) => Err(err),
            },
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

/// `Ok(old item)` if `err` is a failed condition, else the error as a [`StoreError`].
fn condition_failed(err: SdkError<UpdateItemError>) -> Result<Option<Item>, StoreError> {
    match err {
        SdkError::ServiceError(service) => match service.into_err() {
            UpdateItemError::ConditionalCheckFailedException(e) => Ok(e.item),
            other => Err(StoreError::Unavailable(DisplayErrorContext(other).to_string())),
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

fn lease_from(item: &Item, token: String, attempts_attr: &str) -> Lease {
    Lease { token, attempt: get_n(item, attempts_attr).unwrap_or(1) as u32 }
}

fn new_token() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

fn delivery_key(id: &DeliveryId) -> (String, String) {
    (format!("DELIVERY#{id}"), "DELIVERY".to_owned())
}

fn creation_key(key: &CreationKey) -> (String, String) {
    (format!("REPO#{}", key.repo.key()), format!("CREATE#PR#{}#ENV#{}", key.pr_number, key.environment))
}

fn deployment_key(repo: &RepoFullName, id: DeploymentId) -> (String, String) {
    (format!("REPO#{}", repo.key()), format!("DEPLOYMENT#{id}"))
}

fn creation_record(item: &Item) -> Result<Option<CreationRecord>, StoreError> {
    match get_s(item, "state") {
        Some("created") => {
            let id = get_n(item, "deployment_id").ok_or_else(|| corrupt("created item without deployment_id"))?;
            Ok(Some(CreationRecord::Created(DeploymentId(id))))
        }
        Some("rejected") => Ok(Some(CreationRecord::Rejected {
            status: get_n(item, "github_status").unwrap_or(422) as u16,
            message: get_s(item, "message").unwrap_or_default().to_owned(),
        })),
        _ => Ok(None),
    }
}

fn run_state(item: &Item) -> Option<DeploymentState> {
    get_s(item, "run_state").and_then(|s| DeploymentState::parse(s).ok()).filter(|s| s.is_terminal())
}

fn report_to_item(report: &DeployReport) -> AttributeValue {
    let mut m = HashMap::from([
        ("success".to_owned(), AttributeValue::Bool(report.success)),
        ("description".to_owned(), s(&report.description)),
    ]);
    if let Some(u) = &report.log_url {
        m.insert("log_url".to_owned(), s(u));
    }
    if let Some(u) = &report.environment_url {
        m.insert("environment_url".to_owned(), s(u));
    }
    AttributeValue::M(m)
}

fn report_from_item(item: &Item) -> Option<DeployReport> {
    let m = item.get("pending_report")?.as_m().ok()?;
    Some(DeployReport {
        success: *m.get("success")?.as_bool().ok()?,
        description: get_s(m, "description").unwrap_or_default().to_owned(),
        log_url: get_s(m, "log_url").map(str::to_owned),
        environment_url: get_s(m, "environment_url").map(str::to_owned),
    })
}

/// Adds `SET status_* = ...` for `status` to an update, returning the SET clauses.
fn with_status(
    mut update: UpdateItemFluentBuilder,
    status: &StatusRecord,
) -> (UpdateItemFluentBuilder, Vec<&'static str>) {
    let mut sets = vec!["status_id = :sid", "status_state = :sstate"];
    update = update
        .expression_attribute_values(":sid", n(status.id.0))
        .expression_attribute_values(":sstate", s(status.state.as_str()));
    let optional = [
        ("status_description = :sdesc", ":sdesc", &status.description),
        ("status_log_url = :slog", ":slog", &status.log_url),
        ("status_environment_url = :senvurl", ":senvurl", &status.environment_url),
        ("status_creator = :screator", ":screator", &status.creator),
        ("status_created_at = :screated", ":screated", &status.created_at),
    ];
    for (clause, name, value) in optional {
        if let Some(value) = value {
            sets.push(clause);
            update = update.expression_attribute_values(name, s(value.clone()));
        }
    }
    (update, sets)
}

impl Store for DynamoStore {
    async fn claim_delivery(
        &self,
        id: &DeliveryId,
        event: &str,
        lease_for: Duration,
    ) -> Result<Claim<String>, StoreError> {
        let (pk, sk) = delivery_key(id);
        let (now, token) = (now_ms(), new_token());
        let expires = (now / 1000) + DELIVERY_RETENTION.as_secs();
        let update = self
            .update(pk, sk)
            .update_expression(
                "SET #state = :processing, lease_token = :token, lease_until = :until, event_name = :event, \
                 updated_at = :iso, expires_at = :expires, kind = :kind ADD attempts :one",
            )
            .condition_expression(
                "attribute_not_exists(pk) OR #state = :failed OR (#state = :processing AND lease_until < :now)",
            )
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":processing", s("processing"))
            .expression_attribute_values(":failed", s("failed"))
            .expression_attribute_values(":token", s(&token))
            .expression_attribute_values(":until", n(now + lease_for.as_millis() as u64))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":event", s(event))
            .expression_attribute_values(":iso", s(now_iso()))
            .expression_attribute_values(":expires", n(expires))
            .expression_attribute_values(":kind", s("delivery"))
            .expression_attribute_values(":one", n(1));
        Ok(match self.claim(update).await? {
            Ok(item) => Claim::Acquired(lease_from(&item, token, "attempts"), ()),
            Err(Some(old)) if get_s(&old, "state") == Some("done") => {
                Claim::Done(get_s(&old, "outcome").unwrap_or_default().to_owned())
            }
            Err(_) => Claim::Busy,
        })
    }

    async fn complete_delivery(&self, id: &DeliveryId, lease: &Lease, outcome: &str) -> Result<(), StoreError> {
        let (pk, sk) = delivery_key(id);
        let update = self
            .update(pk, sk)
            .update_expression(
                "SET #state = :done, outcome = :outcome, updated_at = :iso REMOVE lease_token, lease_until, last_error",
            )
            .condition_expression("lease_token = :token")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":done", s("done"))
            .expression_attribute_values(":outcome", s(outcome))
            .expression_attribute_values(":iso", s(now_iso()))
            .expression_attribute_values(":token", s(&lease.token));
        self.guarded(update, "complete delivery").await.map(drop)
    }

    async fn abandon_delivery(&self, id: &DeliveryId, lease: &Lease, reason: &str) -> Result<(), StoreError> {
        let (pk, sk) = delivery_key(id);
        let update = self
            .update(pk, sk)
            .update_expression("SET #state = :failed, last_error = :reason, lease_until = :zero, updated_at = :iso")
            .condition_expression("lease_token = :token")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":failed", s("failed"))
            .expression_attribute_values(":reason", s(crate::domain::types::truncate_chars(reason, 500)))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":iso", s(now_iso()))
            .expression_attribute_values(":token", s(&lease.token));
        self.guarded(update, "abandon delivery").await.map(drop)
    }

    async fn claim_deployment_creation(
        &self,
        key: &CreationKey,
        sha: &Sha,
        lease_for: Duration,
    ) -> Result<Claim<CreationRecord>, StoreError> {
        let (pk, sk) = creation_key(key);
        let (now, token) = (now_ms(), new_token());
        let update = self
            .update(pk, sk)
            .update_expression(
                "SET #state = :creating, lease_token = :token, lease_until = :until, sha = :sha, \
                 pr_number = :pr, environment = :env, repository = :repo, updated_at = :iso, kind = :kind \
                 ADD attempts :one",
            )
            .condition_expression("attribute_not_exists(pk) OR (#state = :creating AND lease_until < :now)")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":creating", s("creating"))
            .expression_attribute_values(":token", s(&token))
            .expression_attribute_values(":until", n(now + lease_for.as_millis() as u64))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":sha", s(sha.as_str()))
            .expression_attribute_values(":pr", n(key.pr_number))
            .expression_attribute_values(":env", s(key.environment.as_str()))
            .expression_attribute_values(":repo", s(key.repo.as_str()))
            .expression_attribute_values(":iso", s(now_iso()))
            .expression_attribute_values(":kind", s("deployment_creation"))
            .expression_attribute_values(":one", n(1));
        Ok(match self.claim(update).await? {
            Ok(item) => Claim::Acquired(lease_from(&item, token, "attempts"), ()),
            Err(Some(old)) => match creation_record(&old)? {
                Some(record) => Claim::Done(record),
                None => Claim::Busy,
            },
            Err(None) => Claim::Busy,
        })
    }

    async fn read_deployment_creation(&self, key: &CreationKey) -> Result<Option<CreationRecord>, StoreError> {
        let (pk, sk) = creation_key(key);
        match self.get(pk, sk).await? {
            Some(item) => creation_record(&item),
            None => Ok(None),
        }
    }

    async fn finish_deployment_creation(
        &self,
        key: &CreationKey,
        lease: &Lease,
        record: &CreationRecord,
    ) -> Result<(), StoreError> {
        let (pk, sk) = creation_key(key);
        let update = self
            .update(pk, sk)
            .condition_expression("lease_token = :token")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":token", s(&lease.token))
            .expression_attribute_values(":iso", s(now_iso()));
        let update = match record {
            CreationRecord::Created(id) => update
                .update_expression(
                    "SET #state = :created, deployment_id = :id, updated_at = :iso REMOVE lease_token, lease_until",
                )
                .expression_attribute_values(":created", s("created"))
                .expression_attribute_values(":id", n(id.0)),
            CreationRecord::Rejected { status, message } => update
                .update_expression(
                    "SET #state = :rejected, github_status = :status, message = :message, updated_at = :iso \
                     REMOVE lease_token, lease_until",
                )
                .expression_attribute_values(":rejected", s("rejected"))
                .expression_attribute_values(":status", n(status))
                .expression_attribute_values(":message", s(message)),
        };
        self.guarded(update, "finish deployment creation").await.map(drop)
    }

    async fn release_deployment_creation(&self, key: &CreationKey, lease: &Lease) -> Result<(), StoreError> {
        let (pk, sk) = creation_key(key);
        let update = self
            .update(pk, sk)
            .update_expression("SET lease_until = :zero, updated_at = :iso")
            .condition_expression("lease_token = :token")
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":iso", s(now_iso()))
            .expression_attribute_values(":token", s(&lease.token));
        self.guarded(update, "release deployment creation").await.map(drop)
    }

    async fn claim_deployment_run(
        &self,
        d: &DeploymentCreated,
        lease_for: Duration,
    ) -> Result<Claim<DeploymentState, Option<DeployReport>>, StoreError> {
        let (pk, sk) = deployment_key(&d.repo, d.id);
        let (now, token) = (now_ms(), new_token());
        let mut sets = vec![
            "run_state = :running",
            "run_token = :token",
            "run_lease_until = :until",
            "deployment_id = :id",
            "repository = :repo",
            "environment = :env",
            "sha = :sha",
            "git_ref = :ref",
            "updated_at = :iso",
            "kind = :kind",
        ];
        let mut update = self
            .update(pk, sk)
            .condition_expression(
                "attribute_not_exists(run_state) OR (run_state = :running AND run_lease_until < :now)",
            )
            .expression_attribute_values(":running", s("running"))
            .expression_attribute_values(":token", s(&token))
            .expression_attribute_values(":until", n(now + lease_for.as_millis() as u64))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":id", n(d.id.0))
            .expression_attribute_values(":repo", s(d.repo.as_str()))
            .expression_attribute_values(":env", s(d.environment.as_str()))
            .expression_attribute_values(":sha", s(d.sha.as_str()))
            .expression_attribute_values(":ref", s(&d.git_ref))
            .expression_attribute_values(":iso", s(now_iso()))
            .expression_attribute_values(":kind", s("deployment"))
            .expression_attribute_values(":one", n(1));
        if let Some(creator) = &d.creator {
            sets.push("creator = :creator");
            update = update.expression_attribute_values(":creator", s(creator));
        }
        if let Some(created_at) = &d.created_at {
            sets.push("created_at = :created");
            update = update.expression_attribute_values(":created", s(created_at));
        }
        let update = update.update_expression(format!("SET {} ADD run_attempts :one", sets.join(", ")));
        Ok(match self.claim(update).await? {
            Ok(item) => Claim::Acquired(lease_from(&item, token, "run_attempts"), report_from_item(&item)),
            Err(Some(old)) => match run_state(&old) {
                Some(state) => Claim::Done(state),
                None => Claim::Busy,
            },
            Err(None) => Claim::Busy,
        })
    }

    async fn read_deployment_run(
        &self,
        repo: &RepoFullName,
        id: DeploymentId,
    ) -> Result<Option<DeploymentState>, StoreError> {
        let (pk, sk) = deployment_key(repo, id);
        Ok(self.get(pk, sk).await?.as_ref().and_then(run_state))
    }

    async fn finish_deployment_run(
        &self,
        repo: &RepoFullName,
        id: DeploymentId,
        lease: &Lease,
        final_status: &StatusRecord,
    ) -> Result<(), StoreError> {
        let (pk, sk) = deployment_key(repo, id);
        let base = self
            .update(pk, sk)
            .expression_attribute_values(":final", s(final_status.state.as_str()))
            .expression_attribute_values(":token", s(&lease.token))
            .expression_attribute_values(":iso", s(now_iso()));
        // One write ends the run and records its status, unless a newer status is there already
        // (then only the run ends).
        let (with_status, mut sets) = with_status(base.clone(), final_status);
        sets.extend(["run_state = :final", "updated_at = :iso"]);
        let update = with_status
            .update_expression(format!("SET {} REMOVE run_token, run_lease_until, pending_report", sets.join(", ")))
            .condition_expression("run_token = :token AND (attribute_not_exists(status_id) OR status_id <= :sid)");
        if self.guarded(update, "finish deployment run with status").await? {
            return Ok(());
        }
        let update = base
            .update_expression(
                "SET run_state = :final, updated_at = :iso REMOVE run_token, run_lease_until, pending_report",
            )
            .condition_expression("run_token = :token");
        self.guarded(update, "finish deployment run").await.map(drop)
    }

    async fn release_deployment_run(
        &self,
        repo: &RepoFullName,
        id: DeploymentId,
        lease: &Lease,
        report: Option<&DeployReport>,
    ) -> Result<(), StoreError> {
        let (pk, sk) = deployment_key(repo, id);
        let mut update = self
            .update(pk, sk)
            .condition_expression("run_token = :token")
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":iso", s(now_iso()))
            .expression_attribute_values(":token", s(&lease.token));
        update = match report {
            Some(report) => update
                .update_expression("SET run_lease_until = :zero, updated_at = :iso, pending_report = :report")
                .expression_attribute_values(":report", report_to_item(report)),
            None => update.update_expression("SET run_lease_until = :zero, updated_at = :iso"),
        };
        self.guarded(update, "release deployment run").await.map(drop)
    }

    async fn record_deployment_status(
        &self,
        repo: &RepoFullName,
        id: DeploymentId,
        environment: Option<&Environment>,
        status: &StatusRecord,
    ) -> Result<bool, StoreError> {
        let (pk, sk) = deployment_key(repo, id);
        let (mut update, mut sets) = with_status(self.update(pk, sk), status);
        sets.extend(["deployment_id = :id", "repository = :repo", "updated_at = :iso", "kind = :kind"]);
        update = update
            .expression_attribute_values(":id", n(id.0))
            .expression_attribute_values(":repo", s(repo.as_str()))
            .expression_attribute_values(":iso", s(now_iso()))
            .expression_attribute_values(":kind", s("deployment"));
        if let Some(env) = environment {
            sets.push("environment = if_not_exists(environment, :env)");
            update = update.expression_attribute_values(":env", s(env.as_str()));
        }
        let update = update
            .update_expression(format!("SET {}", sets.join(", ")))
            .condition_expression("attribute_not_exists(status_id) OR status_id <= :sid");
        match update.send().await {
            Ok(_) => Ok(true),
            Err(err) => condition_failed(err).map(|_| false),
        }
    }
}
