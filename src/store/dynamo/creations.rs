//! Creation items: one per (repository, pull request, environment). A claim is a conditional
//! write (absent, or `creating` with an expired lease); the result is written under the lease.

use std::time::Duration;

use crate::domain::ports::{Claim, CreationKey, CreationRecord, Lease, StoreError};
use crate::domain::types::{DeliveryId, DeploymentId, Sha};

use super::{DynamoStore, Item, corrupt, get_n, get_s, n, now_iso, s};

fn creation_key(key: &CreationKey) -> (String, String) {
    (format!("REPO#{}", key.repo.key()), format!("CREATE#PR#{}#ENV#{}", key.pr_number, key.environment))
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
        Some("superseded") => Ok(Some(CreationRecord::Superseded)),
        Some("waiting") => Ok(Some(CreationRecord::WaitingForChecks)),
        _ => Ok(None),
    }
}

impl DynamoStore {
    pub(super) async fn claim_creation(
        &self,
        key: &CreationKey,
        sha: &Sha,
        delivery: &DeliveryId,
        after_wait: bool,
        lease_for: Duration,
    ) -> Result<Claim<CreationRecord>, StoreError> {
        let fields = Item::from([
            ("state".to_owned(), s("creating")),
            ("sha".to_owned(), s(sha.as_str())),
            ("pr_number".to_owned(), n(key.pr_number)),
            ("environment".to_owned(), s(key.environment.as_str())),
            ("repository".to_owned(), s(key.repo.as_str())),
            ("delivery".to_owned(), s(delivery.as_str())),
            ("kind".to_owned(), s("deployment_creation")),
        ]);
        // A claim whose holder died (its lease ran out) is taken over; so is a merge that waited
        // for checks, when the checks are what brings it back.
        let may_take = |old: &Item, now: u64| match get_s(old, "state") {
            Some("creating") => get_n(old, "lease_until").unwrap_or(0) < now,
            Some("waiting") => after_wait,
            _ => false,
        };
        Ok(match self.claim(creation_key(key), fields, lease_for, after_wait, may_take).await? {
            Ok(lease) => Claim::Acquired(lease, ()),
            Err(Some(old)) => match creation_record(&old)? {
                Some(record) => Claim::Done(record),
                None => Claim::Busy,
            },
            Err(None) => Claim::Busy,
        })
    }

    pub(super) async fn read_creation(&self, key: &CreationKey) -> Result<Option<CreationRecord>, StoreError> {
        let (pk, sk) = creation_key(key);
        match self.get(pk, sk).await? {
            Some(item) => creation_record(&item),
            None => Ok(None),
        }
    }

    pub(super) async fn finish_creation(
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
            CreationRecord::Superseded => update
                .update_expression("SET #state = :superseded, updated_at = :iso REMOVE lease_token, lease_until")
                .expression_attribute_values(":superseded", s("superseded")),
            CreationRecord::WaitingForChecks | CreationRecord::ChecksPending { .. } => update
                .update_expression("SET #state = :waiting, updated_at = :iso REMOVE lease_token, lease_until")
                .expression_attribute_values(":waiting", s("waiting")),
        };
        self.guarded(update, "finish deployment creation").await.map(drop)
    }

    pub(super) async fn release_creation(&self, key: &CreationKey, lease: &Lease) -> Result<(), StoreError> {
        let (pk, sk) = creation_key(key);
        self.release_claim(pk, sk, lease, "release deployment creation").await
    }
}
