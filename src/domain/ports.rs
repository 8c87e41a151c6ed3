//! The ports: what the domain needs from the outside world. Adapters implement them
//! (`store::dynamo`, `github::client`, `deploy::hook`); tests implement them in memory.

use std::future::Future;
use std::time::Duration;

use serde_json::Value;

use super::deadline::Deadline;
use super::event::{DeploymentCreated, StatusRecord};
use super::types::{DeliveryId, DeploymentId, DeploymentState, Environment, RepoFullName, Sha};

// ---------------------------------------------------------------- store

/// A lease on a piece of work, taken by a conditional write. `attempt` counts the takes, so an
/// attempt above 1 knows that an earlier one may have done part of the work and died.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub token: String,
    pub attempt: u32,
}

/// The answer to "may I do this piece of work?", decided by one conditional write.
#[derive(Clone, Debug, PartialEq)]
pub enum Claim<Done, Pending = ()> {
    /// The work is ours to do, with what an earlier failed attempt left for us.
    Acquired(Lease, Pending),
    /// The work was done already; here is its result.
    Done(Done),
    /// Another attempt holds a live lease on it right now.
    Busy,
}

/// The key of the "create a deployment" effect: one merged PR, one environment.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CreationKey {
    pub repo: RepoFullName,
    pub pr_number: u64,
    pub environment: Environment,
}

impl CreationKey {
    /// The marker we put into the deployment's payload so that a retry can find a deployment an
    /// earlier attempt created but did not record.
    pub fn marker(&self) -> String {
        format!("{}#{}#{}", self.repo.key(), self.pr_number, self.environment)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreationRecord {
    Created(DeploymentId),
    /// GitHub refused it for good (409 failed status checks, 422 validation), with its message.
    Rejected {
        status: u16,
        message: String,
    },
}

/// What the deploy action reported, kept when posting the final status failed so that a retry
/// posts it without running the action again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployReport {
    pub success: bool,
    pub description: String,
    pub log_url: Option<String>,
    pub environment_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("the store holds an item it cannot read: {0}")]
    Corrupt(String),
}

pub trait Store: Send + Sync {
    /// Claims a delivery for processing. `Done` carries the outcome recorded when it completed.
    fn claim_delivery(
        &self,
        id: &DeliveryId,
        event: &str,
        lease_for: Duration,
    ) -> impl Future<Output = Result<Claim<String>, StoreError>> + Send;

    fn complete_delivery(
        &self,
        id: &DeliveryId,
        lease: &Lease,
        outcome: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Marks a claimed delivery failed and frees it at once for a redelivery.
    fn abandon_delivery(
        &self,
        id: &DeliveryId,
        lease: &Lease,
        reason: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn claim_deployment_creation(
        &self,
        key: &CreationKey,
        sha: &Sha,
        lease_for: Duration,
    ) -> impl Future<Output = Result<Claim<CreationRecord>, StoreError>> + Send;

    /// The recorded result of a creation, if it has finished.
    fn read_deployment_creation(
        &self,
        key: &CreationKey,
    ) -> impl Future<Output = Result<Option<CreationRecord>, StoreError>> + Send;

    fn finish_deployment_creation(
        &self,
        key: &CreationKey,
        lease: &Lease,
        record: &CreationRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn release_deployment_creation(
        &self,
        key: &CreationKey,
        lease: &Lease,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Claims the run of a deployment (post `in_progress`, deploy, post the result). `Done`
    /// carries the final state; `Acquired` carries a report an earlier attempt could not post.
    fn claim_deployment_run(
        &self,
        deployment: &DeploymentCreated,
        lease_for: Duration,
    ) -> impl Future<Output = Result<Claim<DeploymentState, Option<DeployReport>>, StoreError>> + Send;

    fn read_deployment_run(
        &self,
        repo: &RepoFullName,
        id: DeploymentId,
    ) -> impl Future<Output = Result<Option<DeploymentState>, StoreError>> + Send;

    /// Ends the run with its final status, which is also recorded as the deployment's latest
    /// status unless a newer one is there already.
    fn finish_deployment_run(
        &self,
        repo: &RepoFullName,
        id: DeploymentId,
        lease: &Lease,
        final_status: &StatusRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn release_deployment_run(
        &self,
        repo: &RepoFullName,
        id: DeploymentId,
        lease: &Lease,
        report: Option<&DeployReport>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records a status on the deployment's item unless a newer one is there. Returns whether
    /// it was applied.
    fn record_deployment_status(
        &self,
        repo: &RepoFullName,
        id: DeploymentId,
        environment: Option<&Environment>,
        status: &StatusRecord,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

// ---------------------------------------------------------------- GitHub

/// `POST /repos/{repo}/deployments`, as the domain asks for it.
#[derive(Clone, Debug, PartialEq)]
pub struct NewDeployment {
    pub sha: Sha,
    pub environment: Environment,
    pub description: String,
    pub production_environment: bool,
    pub payload: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NewStatus {
    pub state: DeploymentState,
    pub description: String,
    pub log_url: Option<String>,
    pub environment_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    /// 5xx, timeouts, connection failures or rate limits that outlast the budget: worth a retry.
    #[error("GitHub is unavailable: {0}")]
    Unavailable(String),
    /// An answer that retrying won't change (401 bad token, 404 no access, ...).
    #[error("GitHub answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("GitHub sent an answer we cannot read: {0}")]
    BadResponse(String),
}

pub trait GitHub: Send + Sync {
    /// `Ok(Err(..))` when GitHub refuses the deployment for good (409/422).
    fn create_deployment(
        &self,
        repo: &RepoFullName,
        request: &NewDeployment,
        deadline: Deadline,
    ) -> impl Future<Output = Result<CreationRecord, GitHubError>> + Send;

    /// A deployment of `sha` to `environment` whose payload carries `marker`.
    fn find_deployment(
        &self,
        repo: &RepoFullName,
        sha: &Sha,
        environment: &Environment,
        marker: &str,
        deadline: Deadline,
    ) -> impl Future<Output = Result<Option<DeploymentId>, GitHubError>> + Send;

    fn create_deployment_status(
        &self,
        repo: &RepoFullName,
        id: DeploymentId,
        status: &NewStatus,
        deadline: Deadline,
    ) -> impl Future<Output = Result<StatusRecord, GitHubError>> + Send;

    fn list_deployment_statuses(
        &self,
        repo: &RepoFullName,
        id: DeploymentId,
        deadline: Deadline,
    ) -> impl Future<Output = Result<Vec<StatusRecord>, GitHubError>> + Send;
}

// ---------------------------------------------------------------- deploy action

pub trait DeployAction: Send + Sync {
    /// Whether this action has something configured for `environment` (a hook URL).
    fn configured_for(&self, environment: &Environment) -> bool;

    /// Runs the environment's deploy. Never fails as such: a failed deploy is a report with
    /// `success: false`, posted to GitHub as `failure`.
    fn deploy(
        &self,
        deployment: &DeploymentCreated,
        delivery: &DeliveryId,
        deadline: Deadline,
    ) -> impl Future<Output = DeployReport> + Send;
}
