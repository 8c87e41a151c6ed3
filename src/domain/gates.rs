//! Gates: a merge whose required checks are still pending when it should deploy (GitHub answers
//! 409) waits for them instead of being refused for good. It is kept per commit; a `check_suite`
//! `completed` or `status` event for that commit tries its creation again, and so does the sweep
//! every few minutes (in case an event is missed) until `CHECKS_WAIT_MINUTES` have passed: then
//! it is `rejected`, naming the checks that never completed. Failed checks are refused at once.

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::deadline::Deadline;
use super::event::MergedPullRequest;
use super::ports::{Claim, Clock, CreationKey, CreationRecord, DeployAction, GitHub, Store};
use super::service::{EnvironmentResult, Outcome, Service, ServiceError};
use super::types::{DeliveryId, Environment, RepoFullName, Sha};

/// How often the sweep asks GitHub again for a merge that waits.
pub const RETRY_MS: u64 = 5 * 60 * 1000;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChecksWait {
    #[serde(default)]
    pub waiting: Vec<WaitingMerge>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WaitingMerge {
    pub pr: MergedPullRequest,
    pub environment: Environment,
    pub delivery: DeliveryId,
    pub contexts: Vec<String>,
    pub until_ms: u64,
    pub next_try_ms: u64,
}

impl ChecksWait {
    /// When the sweep should look at this commit again.
    pub fn due_at(&self) -> Option<u64> {
        self.waiting.iter().map(|w| w.next_try_ms.min(w.until_ms)).min()
    }

    fn has(&self, number: u64, environment: &Environment) -> bool {
        self.waiting.iter().any(|w| w.pr.number == number && w.environment == *environment)
    }
}

impl<S: Store, G: GitHub, D: DeployAction, C: Clock> Service<S, G, D, C> {
    /// Records that `pr` waits for `contexts` before it deploys to `environment`.
    pub(crate) async fn wait_for_checks(
        &self,
        delivery: &DeliveryId,
        pr: &MergedPullRequest,
        environment: &Environment,
        contexts: &[String],
    ) -> Result<(), ServiceError> {
        let now = self.clock.now_ms();
        let mut current = self.store.load_checks_wait(&pr.repo, &pr.merge_sha).await?;
        for _ in 0..10 {
            if current.state.has(pr.number, environment) {
                return Ok(());
            }
            let mut next = current.state.clone();
            next.waiting.push(WaitingMerge {
                pr: pr.clone(),
                environment: environment.clone(),
                delivery: delivery.clone(),
                contexts: contexts.to_vec(),
                until_ms: now + self.checks_wait_for(&pr.repo, environment).as_millis() as u64,
                next_try_ms: now + RETRY_MS,
            });
            match self.store.save_checks_wait(&pr.repo, &pr.merge_sha, &next, current.version).await? {
                Ok(_) => return Ok(()),
                Err(fresh) => current = fresh,
            }
        }
        Err(ServiceError::InProgress)
    }

    /// Checks changed on `sha`: every merge waiting for them tries again.
    pub(crate) async fn checks_completed(
        &self,
        repo: &RepoFullName,
        sha: &Sha,
        deadline: Deadline,
    ) -> Result<Outcome, ServiceError> {
        let current = self.store.load_checks_wait(repo, sha).await?;
        let (mut created, mut rejected, mut waiting) = (0, 0, 0);
        let now = self.clock.now_ms();
        // (pr number, environment) → still waiting (with its next try), or settled.
        let mut outcome: Vec<(u64, Environment, Option<u64>)> = Vec::new();
        for merge in &current.state.waiting {
            let key =
                CreationKey { repo: repo.clone(), pr_number: merge.pr.number, environment: merge.environment.clone() };
            let settled = if now >= merge.until_ms {
                self.give_up_waiting(merge, &key).await?;
                rejected += 1;
                true
            } else {
                match self.create_deployment_once(&merge.delivery, &merge.pr, &key, true, deadline).await? {
                    EnvironmentResult::WaitingForChecks { .. } => {
                        waiting += 1;
                        false
                    }
                    EnvironmentResult::Rejected { .. } => {
                        rejected += 1;
                        true
                    }
                    _ => {
                        created += 1;
                        true
                    }
                }
            };
            outcome.push((merge.pr.number, merge.environment.clone(), (!settled).then_some(now + RETRY_MS)));
        }
        // Write back what changed, onto whatever another instance added meanwhile.
        let mut current = current;
        for _ in 0..10 {
            let mut next = current.state.clone();
            next.waiting.retain(|w| {
                !outcome.iter().any(|(n, e, still)| *n == w.pr.number && *e == w.environment && still.is_none())
            });
            for w in &mut next.waiting {
                if let Some((_, _, Some(at))) =
                    outcome.iter().find(|(n, e, _)| *n == w.pr.number && *e == w.environment)
                {
                    w.next_try_ms = *at;
                }
            }
            if next == current.state {
                break;
            }
            match self.store.save_checks_wait(repo, sha, &next, current.version).await? {
                Ok(_) => break,
                Err(fresh) => current = fresh,
            }
        }
        if created + rejected + waiting > 0 {
            debug!(%sha, created, rejected, waiting, "checks changed for waiting merges");
        }
        Ok(Outcome::ChecksChecked { created, rejected, waiting })
    }

    async fn give_up_waiting(&self, merge: &WaitingMerge, key: &CreationKey) -> Result<(), ServiceError> {
        let lease = match self
            .store
            .claim_deployment_creation(key, &merge.pr.merge_sha, &merge.delivery, true, self.settings.lease)
            .await?
        {
            Claim::Acquired(lease, ()) => lease,
            // Someone created or refused it meanwhile.
            _ => return Ok(()),
        };
        let minutes = self.checks_wait_for(&merge.pr.repo, &merge.environment).as_secs() / 60;
        let message = format!("required checks still pending after {minutes} min: {}", merge.contexts.join(", "));
        warn!(pr = merge.pr.number, environment = %merge.environment, contexts = ?merge.contexts, "gave up waiting for checks");
        let record = CreationRecord::Rejected { status: 409, message };
        self.store.finish_deployment_creation(key, &lease, &record).await?;
        Ok(())
    }

    /// The sweep's part: commits whose waiting merges are due.
    pub(crate) async fn sweep_checks_waits(&self, deadline: Deadline) -> Result<usize, ServiceError> {
        let due = self.store.due_checks_waits(self.clock.now_ms(), 25).await?;
        let mut handled = 0;
        for (repo, sha) in due {
            match self.repo_config(&repo, deadline).await {
                Ok(super::configuration::RepoConfig::Settings(_)) => {}
                Ok(super::configuration::RepoConfig::Refused(reason)) => {
                    warn!(%repo, %reason, "the repository has no valid configuration; its merges wait");
                    continue;
                }
                Err(err) => {
                    warn!(%repo, error = %err, "could not read the repository's configuration; the next sweep tries again");
                    continue;
                }
            }
            match self.checks_completed(&repo, &sha, deadline).await {
                Ok(_) => handled += 1,
                Err(err) => warn!(%repo, %sha, error = %err, "could not retry merges waiting for checks"),
            }
        }
        Ok(handled)
    }
}
