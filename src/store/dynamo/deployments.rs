//! Deployment items: the newest status GitHub reported for each deployment (`status_id` only
//! grows), the history that `.status` and rollbacks read.

use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;

use crate::domain::StatusRecord;
use crate::domain::ports::StoreError;
use crate::domain::types::{DeploymentId, Environment, RepoFullName};

use super::{DynamoStore, condition_failed, n, now_iso, s};

fn deployment_key(repo: &RepoFullName, id: DeploymentId) -> (String, String) {
    (format!("REPO#{}", repo.key()), format!("DEPLOYMENT#{id}"))
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

impl DynamoStore {
    pub(super) async fn record_status(
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
