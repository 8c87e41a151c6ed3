//! Merged PR → one deployment of the merge commit per environment, exactly once: one conditional
//! write claims the creation, one records what GitHub answered. A merge older than one already
//! deployed or queued in that environment is not deployed at all (`superseded`).

use serde_json::json;
use tracing::{debug, warn};

use super::deadline::Deadline;
use super::event::MergedPullRequest;
use super::ports::{
    Claim, Clock, CreationKey, CreationRecord, DeployAction, EnvKey, GitHub, Lease, NewDeployment, Store,
};
use super::runs::DESCRIPTION_LIMIT;
use super::service::{EnvironmentResult, Outcome, Service, ServiceError};
use super::types::{DeliveryId, Environment, truncate_chars};

impl<S: Store, G: GitHub, D: DeployAction, C: Clock> Service<S, G, D, C> {
    pub(crate) async fn create_deployments(
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

    /// Whether a merge newer than this one already started or waits in the environment. The
    /// `deployment` event checks again (it is the authority); this spares creating a deployment
    /// only to make it `inactive`.
    async fn later_merge_there(&self, pr: &MergedPullRequest, environment: &Environment) -> Result<bool, ServiceError> {
        let Some(merged_at) = &pr.merged_at else { return Ok(false) };
        let key = EnvKey { repo: pr.repo.clone(), environment: environment.clone() };
        let env = self.store.load_environment(&key).await?.state;
        let newer = |time: &str| time > merged_at.as_str();
        Ok(env.started.as_ref().is_some_and(|r| newer(&r.0)) || env.queue.iter().any(|q| newer(&q.rank.0)))
    }

    /// Creates the deployment of one merge in one environment, once. `after_wait`: a retry for a
    /// merge that waits for its checks (it may take the waiting claim).
    pub(crate) async fn create_deployment(
        &self,
        delivery: &DeliveryId,
        pr: &MergedPullRequest,
        key: &CreationKey,
        deadline: Deadline,
    ) -> Result<EnvironmentResult, ServiceError> {
        self.create_deployment_once(delivery, pr, key, false, deadline).await
    }

    pub(crate) async fn create_deployment_once(
        &self,
        delivery: &DeliveryId,
        pr: &MergedPullRequest,
        key: &CreationKey,
        after_wait: bool,
        deadline: Deadline,
    ) -> Result<EnvironmentResult, ServiceError> {
        let lease = match self
            .store
            .claim_deployment_creation(key, &pr.merge_sha, delivery, after_wait, self.settings.lease)
            .await?
        {
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
        if lease.attempt > 1
            && let Some(id) =
                self.github.find_deployment(&pr.repo, &pr.merge_sha, &key.environment, &marker, deadline).await?
        {
            debug!(deployment_id = %id, "found the deployment an earlier attempt created");
            self.store.finish_deployment_creation(key, lease, &CreationRecord::Created(id)).await?;
            return Ok(EnvironmentResult::AlreadyCreated(id));
        }
        if self.later_merge_there(pr, &key.environment).await? {
            debug!(environment = %key.environment, "a later merge is already deployed or queued: not deploying this one");
            self.store.finish_deployment_creation(key, lease, &CreationRecord::Superseded).await?;
            return Ok(EnvironmentResult::Superseded);
        }

        let mut request = new_deployment(delivery, pr, key, &marker);
        let settings =
            self.environment_settings(&EnvKey { repo: key.repo.clone(), environment: key.environment.clone() });
        request.required_contexts = settings.required_contexts;
        request.production_environment = settings.production;
        let record = match self.github.create_deployment(&pr.repo, &request, deadline).await? {
            CreationRecord::ChecksPending { contexts } => {
                // Checks still running: wait for them (a `check_suite` or `status` event, or the
                // sweep) instead of refusing the merge for good.
                self.wait_for_checks(delivery, pr, &key.environment, &contexts).await?;
                self.store.finish_deployment_creation(key, lease, &CreationRecord::WaitingForChecks).await?;
                debug!(environment = %key.environment, contexts = ?contexts, "checks pending: the merge waits for them");
                return Ok(EnvironmentResult::WaitingForChecks { contexts });
            }
            record => record,
        };
        self.store.finish_deployment_creation(key, lease, &record).await?;
        Ok(match record {
            CreationRecord::Created(id) => {
                debug!(deployment_id = %id, environment = %key.environment, "deployment created");
                EnvironmentResult::Created(id)
            }
            CreationRecord::Rejected { status, message } => {
                debug!(github_status = status, environment = %key.environment, "GitHub rejected the deployment");
                EnvironmentResult::Rejected { status, message }
            }
            CreationRecord::Superseded => EnvironmentResult::Superseded,
            CreationRecord::ChecksPending { contexts } => EnvironmentResult::WaitingForChecks { contexts },
            CreationRecord::WaitingForChecks => EnvironmentResult::WaitingForChecks { contexts: Vec::new() },
        })
    }
}

fn already(record: CreationRecord) -> EnvironmentResult {
    match record {
        CreationRecord::Created(id) => EnvironmentResult::AlreadyCreated(id),
        CreationRecord::Rejected { status, message } => EnvironmentResult::Rejected { status, message },
        CreationRecord::Superseded => EnvironmentResult::Superseded,
        CreationRecord::ChecksPending { contexts } => EnvironmentResult::WaitingForChecks { contexts },
        CreationRecord::WaitingForChecks => EnvironmentResult::WaitingForChecks { contexts: Vec::new() },
    }
}

/// The deployment request for one merged PR and environment: the merge commit on the base
/// repository, with who and what in the payload for the deploy action and for people. The
/// merge time travels in the payload so that the `deployment` event can rank it.
pub fn new_deployment(delivery: &DeliveryId, pr: &MergedPullRequest, key: &CreationKey, marker: &str) -> NewDeployment {
    NewDeployment {
        sha: pr.merge_sha.clone(),
        environment: key.environment.clone(),
        description: truncate_chars(&format!("Deploy #{}: {}", pr.number, pr.title), DESCRIPTION_LIMIT),
        production_environment: key.environment.is_production(),
        payload: json!({
            "deploy_user": pr.author,
            "pull_request": { "number": pr.number, "url": pr.html_url, "base_ref": pr.base_branch.as_str() },
            "deploy_webhook": { "marker": marker, "delivery": delivery.as_str(), "merged_at": pr.merged_at },
        }),
        required_contexts: None,
    }
}
