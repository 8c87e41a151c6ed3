//! Versioned documents: an environment's whole run state (lock, queue, recent runs), and the
//! redelivery sweep's record of a webhook, each one JSON document with a version. Every write is
//! a `PutItem` conditioned on the version it was read at, so the domain's state machine is the
//! only thing that decides and two writers can never both win; a lost race returns the stored
//! item, so retrying costs no extra read.

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::domain::gates::ChecksWait;
use crate::domain::ports::{EnvKey, HookRef, StoreError, StoredRepoConfig, Versioned};
use crate::domain::redelivery::RedeliveryState;
use crate::domain::runs::EnvironmentState;
use crate::domain::types::{Environment, RepoFullName, Sha};

use super::{DynamoStore, Item, corrupt, get_n, get_s, n, now_iso, put_condition_failed, s, unavailable};

/// The partition of the sparse `due` index: every environment with work due.
const DUE_PARTITION: &str = "DUE";
pub const DUE_INDEX: &str = "due";

fn environment_key(key: &EnvKey) -> (String, String) {
    (format!("REPO#{}", key.repo.key()), format!("ENV#{}", key.environment))
}

fn checks_wait_key(repo: &RepoFullName, sha: &Sha) -> (String, String) {
    (format!("REPO#{}", repo.key()), format!("WAIT#{sha}"))
}

fn repo_config_key(repo: &RepoFullName) -> (String, String) {
    (format!("CONFIG#{}", repo.key()), "CONFIG".to_owned())
}

fn redelivery_key(hook: &HookRef) -> (String, String) {
    (format!("HOOK#{}", hook.key()), "REDELIVERY".to_owned())
}

fn versioned<T: DeserializeOwned>(item: &Item) -> Result<Versioned<T>, StoreError> {
    let version = get_n(item, "version").unwrap_or(0);
    let doc = get_s(item, "doc").ok_or_else(|| corrupt("versioned item without doc"))?;
    let state = serde_json::from_str(doc).map_err(|e| corrupt(&format!("doc: {e}")))?;
    Ok(Versioned { state, version })
}

fn env_key_of(item: &Item) -> Result<EnvKey, StoreError> {
    let repo = get_s(item, "repository").ok_or_else(|| corrupt("environment item without repository"))?;
    let environment = get_s(item, "environment").ok_or_else(|| corrupt("environment item without environment"))?;
    Ok(EnvKey {
        repo: RepoFullName::parse(repo).map_err(|e| corrupt(&e.to_string()))?,
        environment: Environment::parse(environment).map_err(|e| corrupt(&e.to_string()))?,
    })
}

impl DynamoStore {
    async fn load_doc<T: DeserializeOwned + Default>(
        &self,
        pk: String,
        sk: String,
    ) -> Result<Versioned<T>, StoreError> {
        match self.get(pk, sk).await? {
            Some(item) => versioned(&item),
            None => Ok(Versioned { state: T::default(), version: 0 }),
        }
    }

    /// Writes `doc` (and `attributes`) if the stored version is still `expected`.
    async fn save_doc<T: Serialize + DeserializeOwned + Default>(
        &self,
        (pk, sk): (String, String),
        doc: &T,
        attributes: Vec<(&'static str, AttributeValue)>,
        expected: u64,
    ) -> Result<Result<u64, Versioned<T>>, StoreError> {
        let json = serde_json::to_string(doc).map_err(|e| corrupt(&format!("doc: {e}")))?;
        let version = expected + 1;
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(pk))
            .item("sk", s(sk))
            .item("version", n(version))
            .item("doc", s(json))
            .item("updated_at", s(now_iso()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        for (name, value) in attributes {
            put = put.item(name, value);
        }
        put = if expected == 0 {
            put.condition_expression("attribute_not_exists(pk)")
        } else {
            put.condition_expression("version = :expected").expression_attribute_values(":expected", n(expected))
        };
        match put.send().await {
            Ok(_) => Ok(Ok(version)),
            Err(err) => match put_condition_failed(err)? {
                Some(item) => Ok(Err(versioned(&item)?)),
                // The item vanished (deleted by hand): start from nothing.
                None => Ok(Err(Versioned { state: T::default(), version: 0 })),
            },
        }
    }

    pub(super) async fn load_env(&self, key: &EnvKey) -> Result<Versioned, StoreError> {
        let (pk, sk) = environment_key(key);
        self.load_doc(pk, sk).await
    }

    pub(super) async fn save_env(
        &self,
        key: &EnvKey,
        state: &EnvironmentState,
        expected: u64,
    ) -> Result<Result<u64, Versioned>, StoreError> {
        let mut attributes = vec![
            ("kind", s("environment")),
            ("repository", s(key.repo.as_str())),
            ("environment", s(key.environment.as_str())),
        ];
        if let Some(due) = state.due_at() {
            attributes.extend([("due_pk", s(DUE_PARTITION)), ("due_at", n(due))]);
        }
        self.save_doc(environment_key(key), state, attributes, expected).await
    }

    /// The items of `kind` in the sparse `due` index whose time has come. The index is
    /// eventually consistent: a stale copy only costs a failed conditional write, which returns
    /// the fresh item.
    async fn due(&self, kind: &str, now_ms: u64, limit: usize) -> Result<Vec<Item>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(DUE_INDEX)
            .key_condition_expression("due_pk = :due AND due_at <= :now")
            .filter_expression("kind = :kind")
            .expression_attribute_values(":due", AttributeValue::S(DUE_PARTITION.to_owned()))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":kind", s(kind))
            .limit(limit.min(1000) as i32)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(out.items.unwrap_or_default())
    }

    pub(super) async fn due_envs(&self, now_ms: u64, limit: usize) -> Result<Vec<(EnvKey, Versioned)>, StoreError> {
        self.due("environment", now_ms, limit)
            .await?
            .iter()
            .map(|item| Ok((env_key_of(item)?, versioned(item)?)))
            .collect()
    }

    pub(super) async fn load_checks_wait_doc(
        &self,
        repo: &RepoFullName,
        sha: &Sha,
    ) -> Result<Versioned<ChecksWait>, StoreError> {
        let (pk, sk) = checks_wait_key(repo, sha);
        self.load_doc(pk, sk).await
    }

    pub(super) async fn save_checks_wait_doc(
        &self,
        repo: &RepoFullName,
        sha: &Sha,
        state: &ChecksWait,
        expected: u64,
    ) -> Result<Result<u64, Versioned<ChecksWait>>, StoreError> {
        let mut attributes =
            vec![("kind", s("checks_wait")), ("repository", s(repo.as_str())), ("sha", s(sha.as_str()))];
        if let Some(due) = state.due_at() {
            attributes.extend([("due_pk", s(DUE_PARTITION)), ("due_at", n(due))]);
        }
        self.save_doc(checks_wait_key(repo, sha), state, attributes, expected).await
    }

    pub(super) async fn due_checks_wait_docs(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(RepoFullName, Sha)>, StoreError> {
        self.due("checks_wait", now_ms, limit)
            .await?
            .iter()
            .map(|item| {
                let repo = get_s(item, "repository").and_then(|r| RepoFullName::parse(r).ok());
                let sha = get_s(item, "sha").and_then(|r| Sha::parse(r).ok());
                repo.zip(sha).ok_or_else(|| corrupt("checks wait item without repository or sha"))
            })
            .collect()
    }

    pub(super) async fn load_repo_config_doc(
        &self,
        repo: &RepoFullName,
    ) -> Result<Versioned<StoredRepoConfig>, StoreError> {
        let (pk, sk) = repo_config_key(repo);
        self.load_doc(pk, sk).await
    }

    pub(super) async fn save_repo_config_doc(
        &self,
        repo: &RepoFullName,
        config: &StoredRepoConfig,
        expected: u64,
    ) -> Result<Result<u64, Versioned<StoredRepoConfig>>, StoreError> {
        let attributes = vec![("kind", s("repo_config")), ("repository", s(repo.as_str()))];
        self.save_doc(repo_config_key(repo), config, attributes, expected).await
    }

    pub(super) async fn load_redelivery_doc(&self, hook: &HookRef) -> Result<Versioned<RedeliveryState>, StoreError> {
        let (pk, sk) = redelivery_key(hook);
        self.load_doc(pk, sk).await
    }

    pub(super) async fn save_redelivery_doc(
        &self,
        hook: &HookRef,
        state: &RedeliveryState,
        expected: u64,
    ) -> Result<Result<u64, Versioned<RedeliveryState>>, StoreError> {
        self.save_doc(redelivery_key(hook), state, vec![("kind", s("redelivery"))], expected).await
    }
}
