//! The service: what each delivery means and which effects it runs, in which order, guarded by
//! the store's claims so that every effect happens once.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use tracing::{info, warn};

use super::deadline::Deadline;
use super::event::{Delivery, DeploymentCreated, DeploymentStatusEvent, MergedPullRequest, WebhookEvent};
use super::ports::{
    Claim, CreationKey, CreationRecord, DeployAction, DeployReport, GitHub, GitHubError, Lease, NewDeployment,
    NewStatus, Store, StoreError,
};
use super::rules::DeployRules;
use super::types::{DeliveryId, DeploymentId, DeploymentState, Environment, truncate_chars};

/// GitHub rejects deployment descriptions longer than this.
const DESCRIPTION_LIMIT: usize = 140;

#[derive(Clone, Debug)]
pub struct ServiceSettings {
    pub rules: DeployRules,
    /// How long a claim stays ours. It must outlast the function's timeout, or a slow attempt
    /// could be taken over while it still works.
    pub lease: Duration,
    /// How long a delivery waits for another attempt that holds the same work before answering
    /// "in progress".
    pub busy_wait: Duration,
    pub busy_poll: Duration,
}

impl ServiceSettings {
    pub fn new(rules: DeployRules) -> Self {
        Self {
            rules,
            lease: Duration::from_secs(60),
            busy_wait: Duration::from_secs(3),
            busy_poll: Duration::from_millis(200),
        }
    }
}

/// What a delivery did, for the response and the delivery's record.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Pong,
    Ignored {
        reason: String,
    },
    /// This delivery id completed before; nothing was done again.
    Duplicate {
        recorded: String,
    },
    /// A merged PR: one result per environment it deploys to.
    DeploymentsRequested {
        results: Vec<(Environment, EnvironmentResult)>,
    },
    /// A `deployment` event: the run's final state.
    Deployed {
        id: DeploymentId,
        state: DeploymentState,
        already: bool,
    },
    StatusRecorded {
        id: DeploymentId,
        state: DeploymentState,
        applied: bool,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum EnvironmentResult {
    Created(DeploymentId),
    /// An earlier delivery (or attempt) of the same merge created it.
    AlreadyCreated(DeploymentId),
    Rejected {
        status: u16,
        message: String,
    },
}

impl Outcome {
    /// The one-word status of the response: `processed`, `duplicate`, `ignored`, `rejected`, `pong`.
    pub fn status(&self) -> &'static str {
        match self {
            Self::Pong => "pong",
            Self::Ignored { .. } => "ignored",
            Self::Duplicate { .. } => "duplicate",
            Self::DeploymentsRequested { results } => {
                if results.iter().all(|(_, r)| matches!(r, EnvironmentResult::Rejected { .. })) {
                    "rejected"
                } else if results.iter().all(|(_, r)| matches!(r, EnvironmentResult::AlreadyCreated(_))) {
                    "duplicate"
                } else {
                    "processed"
                }
            }
            Self::Deployed { already: true, .. } => "duplicate",
            Self::Deployed { .. } => "processed",
            Self::StatusRecorded { applied: true, .. } => "processed",
            Self::StatusRecorded { applied: false, .. } => "stale",
        }
    }

    /// Details for the response body: ids and states only, never payload text.
    pub fn detail(&self) -> serde_json::Value {
        match self {
            Self::Pong => json!({}),
            Self::Ignored { reason } => json!({ "reason": reason }),
            Self::Duplicate { recorded } => json!({ "recorded": recorded }),
            Self::DeploymentsRequested { results } => json!({
                "deployments": results.iter().map(|(env, r)| match r {
                    EnvironmentResult::Created(id) => json!({"environment": env.as_str(), "result": "created", "deployment_id": id.0}),
                    EnvironmentResult::AlreadyCreated(id) => json!({"environment": env.as_str(), "result": "already_created", "deployment_id": id.0}),
                    EnvironmentResult::Rejected { status, message } => json!({"environment": env.as_str(), "result": "rejected", "github_status": status, "message": message}),
                }).collect::<Vec<_>>()
            }),
            Self::Deployed { id, state, .. } => {
                json!({ "deployment_id": id.0, "state": state.as_str() })
            }
            Self::StatusRecorded { id, state, .. } => {
                json!({ "deployment_id": id.0, "state": state.as_str() })
            }
        }
    }

    /// The short form kept on the delivery's record and echoed for a duplicate.
    pub fn summary(&self) -> String {
        json!({ "status": self.status(), "detail": self.detail() }).to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    GitHub(#[from] GitHubError),
    /// Another attempt holds this work and did not finish while we waited.
    #[error("another attempt is processing this work")]
    InProgress,
}

pub struct Service<S, G, D> {
    store: S,
    github: G,
    deployer: D,
    settings: ServiceSettings,
    managed: HashSet<Environment>,
}

impl<S: Store, G: GitHub, D: DeployAction> Service<S, G, D> {
    pub fn new(store: S, github: G, deployer: D, settings: ServiceSettings) -> Self {
        let managed = settings.rules.environments().cloned().collect();
        Self { store, github, deployer, settings, managed }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Environments this deployer runs: every rule's environment, and any with a deploy hook.
    pub fn manages(&self, environment: &Environment) -> bool {
        self.managed.contains(environment) || self.deployer.configured_for(environment)
    }

    /// Turns an event into the work it calls for. Pure: what needs no effect is answered here.
    fn plan(&self, event: WebhookEvent) -> Plan {
        match event {
            WebhookEvent::Ping { .. } => Plan::Answer(Outcome::Pong),
            WebhookEvent::Ignored { reason } => Plan::Answer(Outcome::Ignored { reason }),
            WebhookEvent::PullRequestMerged(pr) => {
                let envs = self.settings.rules.environments_for(&pr.base_branch, pr.default_branch.as_deref());
                if envs.is_empty() {
                    Plan::Answer(Outcome::Ignored {
                        reason: format!("no deploy rule for base branch {}", pr.base_branch),
                    })
                } else {
                    Plan::Effects(Work::CreateDeployments(pr, envs))
                }
            }
            WebhookEvent::DeploymentCreated(d) => {
                if self.manages(&d.environment) {
                    Plan::Effects(Work::RunDeployment(d))
                } else {
                    Plan::Answer(Outcome::Ignored {
                        reason: format!("environment {} is not managed by this deployer", d.environment),
                    })
                }
            }
            WebhookEvent::DeploymentStatus(s) => Plan::RecordStatus(s),
        }
    }

    pub async fn handle(&self, delivery: Delivery, deadline: Deadline) -> Result<Outcome, ServiceError> {
        let id = delivery.id;
        let work = match self.plan(delivery.event) {
            Plan::Answer(outcome) => return Ok(outcome),
            // Recording a status is idempotent by itself (newer wins): no ledger write needed.
            Plan::RecordStatus(status) => return self.record_status(&status).await,
            Plan::Effects(work) => work,
        };

        let lease = match self.store.claim_delivery(&id, work.event_name(), self.settings.lease).await? {
            Claim::Acquired(lease, ()) => lease,
            Claim::Done(recorded) => {
                info!("delivery already completed");
                return Ok(Outcome::Duplicate { recorded });
            }
            Claim::Busy => return Err(ServiceError::InProgress),
        };

        let result = match work {
            Work::CreateDeployments(pr, envs) => self.create_deployments(&id, &pr, envs, deadline).await,
            Work::RunDeployment(d) => self.run_deployment(&id, &d, deadline).await,
        };

        // The delivery is only answered 2xx once it is recorded done. If that write fails the
        // effects are still recorded under their own keys, so the 5xx costs a redelivery that
        // finds them and answers "duplicate", never a second effect.
        let result = match result {
            Ok(outcome) => match self.store.complete_delivery(&id, &lease, &outcome.summary()).await {
                Ok(()) => return Ok(outcome),
                Err(err) => {
                    warn!(error = %err, "the work is done but the delivery could not be recorded done");
                    ServiceError::Store(err)
                }
            },
            Err(err) => err,
        };
        if let Err(store_err) = self.store.abandon_delivery(&id, &lease, &result.to_string()).await {
            warn!(error = %store_err, "could not mark the delivery failed; its lease will expire");
        }
        Err(result)
    }

    async fn record_status(&self, event: &DeploymentStatusEvent) -> Result<Outcome, ServiceError> {
        let applied = self
            .store
            .record_deployment_status(&event.repo, event.deployment_id, event.environment.as_ref(), &event.status)
            .await?;
        Ok(Outcome::StatusRecorded { id: event.deployment_id, state: event.status.state, applied })
    }

    async fn create_deployments(
        &self,
        delivery: &DeliveryId,
        pr: &MergedPullRequest,
        envs: Vec<Environment>,
        deadline: Deadline,
    ) -> Result<Outcome, ServiceError> {
        let mut results = Vec::with_capacity(envs.len());
        for environment in envs {
            let key = CreationKey { repo: pr.repo.clone(), pr_number: pr.number, environment: environment.clone() };
            let result = self.create_deployment(delivery, pr, &key, deadline).await?;
            results.push((environment, result));
        }
        Ok(Outcome::DeploymentsRequested { results })
    }

    async fn create_deployment(
        &self,
        delivery: &DeliveryId,
        pr: &MergedPullRequest,
        key: &CreationKey,
        deadline: Deadline,
    ) -> Result<EnvironmentResult, ServiceError> {
        let lease = match self.store.claim_deployment_creation(key, &pr.merge_sha, self.settings.lease).await? {
            Claim::Acquired(lease, ()) => lease,
            Claim::Done(record) => return Ok(already(record)),
            Claim::Busy => match self.wait_for(deadline, || self.store.read_deployment_creation(key)).await? {
                Some(record) => return Ok(already(record)),
                None => return Err(ServiceError::InProgress),
            },
        };

        match self.create_deployment_claimed(delivery, pr, key, &lease, deadline).await {
            Ok(result) => Ok(result),
            Err(err) => {
                if let Err(store_err) = self.store.release_deployment_creation(key, &lease).await {
                    warn!(error = %store_err, "could not release the creation claim; its lease will expire");
                }
                Err(err)
            }
        }
    }

    async fn create_deployment_claimed(
        &self,
        delivery: &DeliveryId,
        pr: &MergedPullRequest,
        key: &CreationKey,
        lease: &Lease,
        deadline: Deadline,
    ) -> Result<EnvironmentResult, ServiceError> {
        let marker = key.marker();
        // An earlier attempt held this claim: it may have created the deployment and died before
        // recording it. Look for our marker before creating a second one.
        if lease.attempt > 1 {
            if let Some(id) =
                self.github.find_deployment(&pr.repo, &pr.merge_sha, &key.environment, &marker, deadline).await?
            {
                info!(deployment_id = %id, "found the deployment an earlier attempt created");
                self.store.finish_deployment_creation(key, lease, &CreationRecord::Created(id)).await?;
                return Ok(EnvironmentResult::AlreadyCreated(id));
            }
        }

        let request = new_deployment(delivery, pr, key, &marker);
        let record = self.github.create_deployment(&pr.repo, &request, deadline).await?;
        self.store.finish_deployment_creation(key, lease, &record).await?;
        Ok(match record {
            CreationRecord::Created(id) => {
                info!(deployment_id = %id, environment = %key.environment, "deployment created");
                EnvironmentResult::Created(id)
            }
            CreationRecord::Rejected { status, message } => {
                info!(github_status = status, environment = %key.environment, "GitHub rejected the deployment");
                EnvironmentResult::Rejected { status, message }
            }
        })
    }

    async fn run_deployment(
        &self,
        delivery: &DeliveryId,
        deployment: &DeploymentCreated,
        deadline: Deadline,
    ) -> Result<Outcome, ServiceError> {
        let (repo, id) = (&deployment.repo, deployment.id);
        let (lease, pending_report) = match self.store.claim_deployment_run(deployment, self.settings.lease).await? {
            Claim::Acquired(lease, pending) => (lease, pending),
            Claim::Done(state) => {
                return Ok(Outcome::Deployed { id, state, already: true });
            }
            Claim::Busy => match self.wait_for(deadline, || self.store.read_deployment_run(repo, id)).await? {
                Some(state) => {
                    return Ok(Outcome::Deployed { id, state, already: true });
                }
                None => return Err(ServiceError::InProgress),
            },
        };

        let mut report_to_keep = None;
        let result = self
            .run_deployment_claimed(delivery, deployment, &lease, pending_report, &mut report_to_keep, deadline)
            .await;
        if result.is_err() {
            if let Err(store_err) = self.store.release_deployment_run(repo, id, &lease, report_to_keep.as_ref()).await {
                warn!(error = %store_err, "could not release the run claim; its lease will expire");
            }
        }
        result
    }

    async fn run_deployment_claimed(
        &self,
        delivery: &DeliveryId,
        deployment: &DeploymentCreated,
        lease: &Lease,
        pending_report: Option<DeployReport>,
        report_to_keep: &mut Option<DeployReport>,
        deadline: Deadline,
    ) -> Result<Outcome, ServiceError> {
        let (repo, id) = (&deployment.repo, deployment.id);
        let mut in_progress_posted = false;
        // An earlier attempt may have posted statuses and died before recording the end.
        if lease.attempt > 1 {
            let statuses = self.github.list_deployment_statuses(repo, id, deadline).await?;
            if let Some(last) = statuses.iter().filter(|s| s.state.is_terminal()).max_by_key(|s| s.id) {
                info!(state = %last.state, "an earlier attempt finished this deployment");
                self.store.finish_deployment_run(repo, id, lease, last).await?;
                return Ok(Outcome::Deployed { id, state: last.state, already: true });
            }
            in_progress_posted = statuses.iter().any(|s| s.state == DeploymentState::InProgress);
        }

        if !in_progress_posted && pending_report.is_none() {
            let status = NewStatus {
                state: DeploymentState::InProgress,
                description: truncate_chars(
                    &format!("Deploying {} to {}", deployment.sha.short(), deployment.environment),
                    DESCRIPTION_LIMIT,
                ),
                log_url: None,
                environment_url: None,
            };
            self.github.create_deployment_status(repo, id, &status, deadline).await?;
        }

        let report = match pending_report {
            Some(report) => report,
            None => self.deployer.deploy(deployment, delivery, deadline).await,
        };
        *report_to_keep = Some(report.clone());

        let final_status = NewStatus {
            state: if report.success { DeploymentState::Success } else { DeploymentState::Failure },
            description: truncate_chars(&report.description, DESCRIPTION_LIMIT),
            log_url: report.log_url.clone(),
            environment_url: report.environment_url.clone(),
        };
        let posted = self.github.create_deployment_status(repo, id, &final_status, deadline).await?;
        self.store.finish_deployment_run(repo, id, lease, &posted).await?;
        info!(deployment_id = %id, state = %posted.state, "deployment finished");
        Ok(Outcome::Deployed { id, state: posted.state, already: false })
    }

    /// Polls `read` until it yields a finished result or the wait (cut to the budget) runs out.
    async fn wait_for<T, F, Fut>(&self, deadline: Deadline, read: F) -> Result<Option<T>, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, StoreError>>,
    {
        // Keep a margin of the budget for answering.
        let wait = deadline.cap(self.settings.busy_wait).saturating_sub(Duration::from_millis(500));
        let until = Deadline::after(wait);
        loop {
            if let Some(done) = read().await? {
                return Ok(Some(done));
            }
            if until.remaining() < self.settings.busy_poll {
                return Ok(None);
            }
            tokio::time::sleep(self.settings.busy_poll).await;
        }
    }
}

enum Plan {
    /// Answered without any effect (ping, ignored events).
    Answer(Outcome),
    RecordStatus(DeploymentStatusEvent),
    /// Work with effects on GitHub: guarded by the delivery ledger.
    Effects(Work),
}

enum Work {
    CreateDeployments(MergedPullRequest, Vec<Environment>),
    RunDeployment(DeploymentCreated),
}

impl Work {
    fn event_name(&self) -> &'static str {
        match self {
            Self::CreateDeployments(..) => "pull_request",
            Self::RunDeployment(_) => "deployment",
        }
    }
}

fn already(record: CreationRecord) -> EnvironmentResult {
    match record {
        CreationRecord::Created(id) => EnvironmentResult::AlreadyCreated(id),
        CreationRecord::Rejected { status, message } => EnvironmentResult::Rejected { status, message },
    }
}

/// The deployment request for one merged PR and environment: the merge commit on the base
/// repository, with who and what in the payload for the deploy action and for people.
pub fn new_deployment(delivery: &DeliveryId, pr: &MergedPullRequest, key: &CreationKey, marker: &str) -> NewDeployment {
    NewDeployment {
        sha: pr.merge_sha.clone(),
        environment: key.environment.clone(),
        description: truncate_chars(&format!("Deploy #{}: {}", pr.number, pr.title), DESCRIPTION_LIMIT),
        production_environment: key.environment.is_production(),
        payload: json!({
            "deploy_user": pr.author,
            "pull_request": { "number": pr.number, "url": pr.html_url, "base_ref": pr.base_branch.as_str() },
            "deploy_webhook": { "marker": marker, "delivery": delivery.as_str() },
        }),
    }
}
