//! Comment items: one per comment command, so that a comment delivered twice acts and replies
//! once. Claimed like a creation (absent, or `working` with an expired lease), then `done` with
//! the outcome it answered.

use std::time::Duration;

use crate::domain::ports::{Claim, Lease, StoreError};
use crate::domain::types::{DeliveryId, RepoFullName};

use super::{DynamoStore, Item, condition_failed, get_n, get_s, n, now_iso, s};

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
        let fields = Item::from([
            ("state".to_owned(), s("working")),
            ("delivery".to_owned(), s(delivery.as_str())),
            ("kind".to_owned(), s("comment")),
        ]);
        let may_take = |old: &Item, now: u64| {
            get_s(old, "state") == Some("working") && get_n(old, "lease_until").unwrap_or(0) < now
        };
        Ok(match self.claim(comment_key(repo, id), fields, lease_for, false, may_take).await? {
            Ok(lease) => Claim::Acquired(lease, ()),
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

    /// The outcome of a comment that is `done`, by a consistent read.
    pub(super) async fn comment_outcome_item(
        &self,
        repo: &RepoFullName,
        id: u64,
    ) -> Result<Option<String>, StoreError> {
        let (pk, sk) = comment_key(repo, id);
        Ok(self
            .get(pk, sk)
            .await?
            .filter(|item| get_s(item, "state") == Some("done"))
            .map(|item| get_s(&item, "outcome").unwrap_or_default().to_owned()))
    }

    /// The `USER#<login>` / `WRITES#<hour>` counter: one UpdateItem that adds 1 only while the
    /// count is below `limit`, and sets `expires_at` (the table's TTL) an hour after the hour.
    pub(super) async fn count_user_write_item(&self, user: &str, hour: u64, limit: u32) -> Result<bool, StoreError> {
        let update = self
            .update(format!("USER#{}", user.to_ascii_lowercase()), format!("WRITES#{hour}"))
            .update_expression("ADD writes :one SET expires_at = :expires")
            .condition_expression("attribute_not_exists(writes) OR writes < :limit")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":limit", n(limit))
            .expression_attribute_values(":expires", n((hour + 2) * 3600));
        match update.send().await {
            Ok(_) => Ok(true),
            Err(err) => condition_failed(err).map(|_| false),
        }
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
