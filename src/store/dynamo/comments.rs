//! Comment items: one per comment command, so that a comment delivered twice acts and replies
//! once. Claimed like a creation (absent, or `working` with an expired lease), then `done` with
//! the outcome it answered.

use std::time::Duration;

use crate::domain::ports::{Claim, Lease, StoreError};
use crate::domain::types::{DeliveryId, RepoFullName};

use super::{DynamoStore, get_s, lease_from, n, new_token, now_iso, now_ms, s};

fn comment_key(repo: &RepoFullName, id: u64) -> (String, String) {
    (format!("REPO#{}", repo.key()), format!("COMMENT#{id}"))
}

impl DynamoStore {
    pub(super) async fn claim_comment_item(
        &self,
        repo: &RepoFullName,
        id: u64,
        delivery: &DeliveryId,
        lease_for: Duration,
    ) -> Result<Claim<String>, StoreError> {
        let (pk, sk) = comment_key(repo, id);
        let (now, token) = (now_ms(), new_token());
        let update = self
            .update(pk, sk)
            .update_expression(
                "SET #state = :working, lease_token = :token, lease_until = :until, delivery = :delivery, \
                 updated_at = :iso, kind = :kind ADD attempts :one",
            )
            .condition_expression("attribute_not_exists(pk) OR (#state = :working AND lease_until < :now)")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":working", s("working"))
            .expression_attribute_values(":token", s(&token))
            .expression_attribute_values(":until", n(now + lease_for.as_millis() as u64))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":delivery", s(delivery.as_str()))
            .expression_attribute_values(":iso", s(now_iso()))
            .expression_attribute_values(":kind", s("comment"))
            .expression_attribute_values(":one", n(1));
        Ok(match self.claim(update).await? {
            Ok(item) => Claim::Acquired(lease_from(&item, token, "attempts"), ()),
            Err(Some(old)) if get_s(&old, "state") == Some("done") => {
                Claim::Done(get_s(&old, "outcome").unwrap_or_default().to_owned())
            }
            Err(_) => Claim::Busy,
        })
    }

    pub(super) async fn finish_comment_item(
        &self,
        repo: &RepoFullName,
        id: u64,
        lease: &Lease,
        outcome: &str,
    ) -> Result<(), StoreError> {
        let (pk, sk) = comment_key(repo, id);
        let update = self
            .update(pk, sk)
            .update_expression(
                "SET #state = :done, outcome = :outcome, updated_at = :iso REMOVE lease_token, lease_until",
            )
            .condition_expression("lease_token = :token")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":done", s("done"))
            .expression_attribute_values(":outcome", s(outcome))
            .expression_attribute_values(":iso", s(now_iso()))
            .expression_attribute_values(":token", s(&lease.token));
        self.guarded(update, "finish comment").await.map(drop)
    }

    pub(super) async fn release_comment_item(
        &self,
        repo: &RepoFullName,
        id: u64,
        lease: &Lease,
    ) -> Result<(), StoreError> {
        let (pk, sk) = comment_key(repo, id);
        self.release_claim(pk, sk, lease, "release comment").await
    }
}
