//! Who asked for a deployment. The lock and the commands act on it (a lock holder's own
//! deployments run through the lock), so it is taken from the payload
//! (`deploy_webhook.requested_by`, `deploy_user`) only for deployments this deployer created:
//! they carry its marker and were created by its own credentials (its App, or its token's user).
//! Anyone else with Deployments: write could write any name there; for their deployments the
//! requester is the deployment's creator.

use tracing::debug;

use super::Deadline;
use super::event::DeploymentCreated;
use super::ports::{Clock, DeployAction, GitHub, Store};
use super::service::Service;

impl<S: Store, G: GitHub, D: DeployAction, C: Clock> Service<S, G, D, C> {
    /// Whether `d`'s payload may name its requester. When GitHub cannot say who we are, it may
    /// not: a deployment then counts as its creator's (it waits behind a lock it might have
    /// passed; it never passes one it should not).
    pub(crate) async fn requester_trusted(&self, d: &DeploymentCreated, deadline: Deadline) -> bool {
        if d.payload.pointer("/deploy_webhook/marker").and_then(|m| m.as_str()).is_none() {
            return false;
        }
        match self.github.created_by_us(&d.repo, d.creator.as_deref(), d.created_via_app, deadline).await {
            Ok(ours) => ours,
            Err(err) => {
                debug!(error = %err, "could not tell who this deployer is; the payload's requester is not used");
                false
            }
        }
    }
}
