//! The ports: what the domain needs from the outside world. Adapters implement them
//! (`store::dynamo`, `github::client`, `deploy::hook`); tests implement them in memory.

use std::future::Future;
use std::time::Duration;

use serde_json::Value;

use super::deadline::Deadline;
use super::event::StatusRecord;
use super::gates::ChecksWait;
use super::redelivery::RedeliveryState;
use super::runs::{DeploymentToRun, EnvironmentState, RunResult};
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
    /// A later merge was already deployed or queued in the environment: none was created.
    Superseded,
    /// GitHub answered 409 and every required check that has not passed is still pending.
    ChecksPending {
        contexts: Vec<String>,
    },
    /// Recorded while the merge waits for its checks (`CHECKS_WAIT_MINUTES`).
    WaitingForChecks,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("the store holds an item it cannot read: {0}")]
    Corrupt(String),
}

/// One environment of one repository: the unit of "one run at a time".
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EnvKey {
    pub repo: RepoFullName,
    pub environment: Environment,
}

/// A state document with the version it was read at (0: never written).
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned<T = EnvironmentState> {
    pub state: T,
    pub version: u64,
}

/// What is kept of a repository's configuration: the files of its last valid configuration
/// (re-resolved over the stack's settings when read), and what broke it since.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredRepoConfig {
    /// Whether a valid configuration was ever in force (with no file at all, `files` is empty).
    #[serde(default)]
    pub valid: bool,
    pub files: Vec<StoredConfigFile>,
    pub broken: Option<crate::repo_config::BrokenConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredConfigFile {
    pub repo: String,
    pub blob: String,
    pub text: String,
}

pub trait Store: Send + Sync {
    /// Claims a creation: absent, or its holder's lease ran out; with `after_wait`, also one
    /// that waits for its checks.
    fn claim_deployment_creation(
        &self,
        key: &CreationKey,
        sha: &Sha,
        delivery: &DeliveryId,
        after_wait: bool,
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

    /// Records a status on the deployment's item unless a newer one is there. Returns whether
    /// it was applied.
    fn record_deployment_status(
        &self,
        repo: &RepoFullName,
        id: DeploymentId,
        environment: Option<&Environment>,
        status: &StatusRecord,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The environment's state, read strongly consistent.
    fn load_environment(&self, key: &EnvKey) -> impl Future<Output = Result<Versioned, StoreError>> + Send;

    /// Writes `state` if the stored version is still `expected`: `Ok(Ok(new version))`, or
    /// `Ok(Err(what is stored now))` when another writer came first.
    fn save_environment(
        &self,
        key: &EnvKey,
        state: &EnvironmentState,
        expected: u64,
    ) -> impl Future<Output = Result<Result<u64, Versioned>, StoreError>> + Send;

    /// Environments whose state is due (see [`EnvironmentState::due_at`]) at `now_ms`, at most
    /// `limit`. Costs in proportion to what is due, never to the table.
    fn due_environments(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(EnvKey, Versioned)>, StoreError>> + Send;

    /// Claims the handling of one comment command: it acts and replies once, however often the
    /// comment is delivered. `Done` carries the recorded outcome.
    fn claim_comment(
        &self,
        repo: &RepoFullName,
        comment_id: u64,
        delivery: &DeliveryId,
        lease_for: Duration,
    ) -> impl Future<Output = Result<Claim<String>, StoreError>> + Send;

    fn finish_comment(
        &self,
        repo: &RepoFullName,
        comment_id: u64,
        lease: &Lease,
        outcome: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn release_comment(
        &self,
        repo: &RepoFullName,
        comment_id: u64,
        lease: &Lease,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The recorded outcome of a comment command already done, if any: a read, so that a
    /// redelivered comment is answered `duplicate` before anything is asked of GitHub. A store
    /// that cannot tell answers `None` (the claim still dedupes).
    fn comment_outcome(
        &self,
        _repo: &RepoFullName,
        _comment_id: u64,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send {
        async { Ok(None) }
    }

    /// Counts one bot write caused by `user` in `hour` (hours since the epoch) if fewer than
    /// `limit` were counted: `true` when counted (the write may go ahead), `false` when the
    /// budget is spent. The count holds across instances; it is forgotten (TTL) after the hour.
    /// A store that cannot count refuses, so that nothing is written unbounded.
    fn count_user_write(
        &self,
        _user: &str,
        _hour: u64,
        _limit: u32,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        async { Err(StoreError::Unavailable("this store keeps no write budget".to_owned())) }
    }

    /// The merges that wait for checks on `sha`.
    fn load_checks_wait(
        &self,
        repo: &RepoFullName,
        sha: &Sha,
    ) -> impl Future<Output = Result<Versioned<ChecksWait>, StoreError>> + Send;

    fn save_checks_wait(
        &self,
        repo: &RepoFullName,
        sha: &Sha,
        state: &ChecksWait,
        expected: u64,
    ) -> impl Future<Output = Result<Result<u64, Versioned<ChecksWait>>, StoreError>> + Send;

    /// Commits whose waiting merges are due (a retry, or the end of the wait).
    fn due_checks_waits(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(RepoFullName, Sha)>, StoreError>> + Send;

    /// What the redelivery sweep knows of one webhook's deliveries.
    /// The repository's last valid configuration files, and what is broken since (absent:
    /// version 0). Stores without it (test doubles) have none.
    fn load_repo_config(
        &self,
        _repo: &RepoFullName,
    ) -> impl Future<Output = Result<Versioned<StoredRepoConfig>, StoreError>> + Send {
        async { Ok(Versioned { state: StoredRepoConfig::default(), version: 0 }) }
    }

    /// Saves it if still at `expected` (else the newer one).
    fn save_repo_config(
        &self,
        _repo: &RepoFullName,
        _config: &StoredRepoConfig,
        expected: u64,
    ) -> impl Future<Output = Result<Result<u64, Versioned<StoredRepoConfig>>, StoreError>> + Send {
        async move { Ok(Ok(expected + 1)) }
    }

    fn load_redelivery(
        &self,
        hook: &HookRef,
    ) -> impl Future<Output = Result<Versioned<RedeliveryState>, StoreError>> + Send;

    /// Writes it if the stored version is still `expected` (see [`Store::save_environment`]).
    fn save_redelivery(
        &self,
        hook: &HookRef,
        state: &RedeliveryState,
        expected: u64,
    ) -> impl Future<Output = Result<Result<u64, Versioned<RedeliveryState>>, StoreError>> + Send;

    /// The webhook events this stack has received (the kinds [`super::features`] tracks), each
    /// with when it was last recorded (ms). One small item for the whole stack, read once per
    /// cold start. A store that does not keep it (the in-memory fakes) knows none.
    fn load_seen_events(&self) -> impl Future<Output = Result<Vec<(String, u64)>, StoreError>> + Send {
        async { Ok(Vec::new()) }
    }

    /// Records that an event of this kind arrived at `now_ms` (at most once a day per kind and
    /// instance: see `Service::note_event`).
    fn record_seen_event(&self, _event: &str, _now_ms: u64) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }
}

/// A webhook whose deliveries GitHub lists: the App's, or a repository's (`owner/repo#id`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookRef {
    App,
    Repo { repo: RepoFullName, hook_id: u64 },
}

impl HookRef {
    pub fn parse(raw: &str) -> Option<Self> {
        let (repo, id) = raw.trim().split_once('#')?;
        Some(Self::Repo { repo: RepoFullName::parse(repo).ok()?, hook_id: id.parse().ok()? })
    }

    /// The store's key for it.
    pub fn key(&self) -> String {
        match self {
            Self::App => "app".to_owned(),
            Self::Repo { repo, hook_id } => format!("{}#{hook_id}", repo.key()),
        }
    }
}

impl std::fmt::Display for HookRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::App => f.write_str("the App's webhook"),
            Self::Repo { repo, hook_id } => write!(f, "{repo}#{hook_id}"),
        }
    }
}

/// One attempt of one webhook delivery, as GitHub lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookDelivery {
    pub id: u64,
    pub guid: String,
    /// RFC 3339.
    pub delivered_at: String,
    /// The answer's status; 0 when there was none (a timeout).
    pub status_code: u16,
    pub event: String,
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
    /// The status checks that must pass first (`None`: GitHub's default, every check).
    pub required_contexts: Option<Vec<String>>,
}

/// A commenter's access to a repository, as GitHub answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permission {
    /// `admin`, `write`, `read` or `none` (`maintain` is reported as `write`).
    pub permission: String,
    /// The finer role: `admin`, `maintain`, `write`, `triage`, `read`, or a custom one.
    pub role: Option<String>,
}

/// What a command needs to know of a pull request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullRequestHead {
    pub open: bool,
    pub head_sha: Sha,
    /// `owner/name` of the head's repository; another one than the base's is a fork.
    pub head_repo: Option<String>,
    pub head_ref: String,
}

/// A file read through the contents API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoBlob {
    /// The blob's sha: the same content has the same sha.
    pub sha: String,
    pub size: u64,
    /// The text (empty when larger than the configuration's cap, which `size` shows).
    pub text: String,
}

/// `POST /repos/{repo}/check-runs`, completed at once.
#[derive(Clone, Debug, PartialEq)]
pub struct NewCheckRun {
    pub name: String,
    pub head_sha: String,
    pub success: bool,
    pub title: String,
    pub summary: String,
    /// Problems in files of this repository: (path, line, message).
    pub annotations: Vec<(String, u64, String)>,
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

    /// The login our statuses are posted as (the token's user, or the App's `<slug>[bot]`):
    /// a terminal status by any other creator was posted by someone else.
    fn own_login(&self, deadline: Deadline) -> impl Future<Output = Result<String, GitHubError>> + Send;

    fn permission(
        &self,
        repo: &RepoFullName,
        user: &str,
        deadline: Deadline,
    ) -> impl Future<Output = Result<Permission, GitHubError>> + Send;

    fn pull_request(
        &self,
        repo: &RepoFullName,
        number: u64,
        deadline: Deadline,
    ) -> impl Future<Output = Result<PullRequestHead, GitHubError>> + Send;

    /// Reacts to an issue comment (`eyes`, `rocket`, `confused`).
    fn react(
        &self,
        repo: &RepoFullName,
        comment_id: u64,
        content: &str,
        deadline: Deadline,
    ) -> impl Future<Output = Result<(), GitHubError>> + Send;

    /// Comments on an issue or pull request.
    fn comment(
        &self,
        repo: &RepoFullName,
        issue: u64,
        body: &str,
        deadline: Deadline,
    ) -> impl Future<Output = Result<(), GitHubError>> + Send;

    /// A delivery named the GitHub App installation of `repo`: later calls for it use it.
    fn remember_installation(&self, _repo: &RepoFullName, _installation: u64) {}

    /// Whether a deployment with this `creator` (login) and `via_app` (`performed_via_github_app`)
    /// was created by this deployer's own credentials: in App mode, its App; with a token, the
    /// token's user. Only then does its payload's requester count. Unknown: `false`.
    fn created_by_us(
        &self,
        _repo: &RepoFullName,
        _creator: Option<&str>,
        _via_app: Option<u64>,
        _deadline: Deadline,
    ) -> impl Future<Output = Result<bool, GitHubError>> + Send {
        async { Ok(false) }
    }

    /// A file of `repo` at `git_ref` (default: the default branch). `None`: no such file, or no
    /// access to it (the repository is not in the installation). Test doubles have none.
    fn get_file(
        &self,
        _repo: &RepoFullName,
        _path: &str,
        _git_ref: Option<&str>,
        _deadline: Deadline,
    ) -> impl Future<Output = Result<Option<RepoBlob>, GitHubError>> + Send {
        async { Ok(None) }
    }

    /// Creates a completed check run on a commit.
    fn create_check_run(
        &self,
        _repo: &RepoFullName,
        _run: &NewCheckRun,
        _deadline: Deadline,
    ) -> impl Future<Output = Result<(), GitHubError>> + Send {
        async { Ok(()) }
    }

    /// The attempts delivered to `hook` since `since` (RFC 3339), newest first.
    fn list_hook_deliveries(
        &self,
        hook: &HookRef,
        since: &str,
        deadline: Deadline,
    ) -> impl Future<Output = Result<Vec<HookDelivery>, GitHubError>> + Send;

    /// Asks GitHub to deliver attempt `id` again.
    fn redeliver(
        &self,
        hook: &HookRef,
        id: u64,
        deadline: Deadline,
    ) -> impl Future<Output = Result<(), GitHubError>> + Send;
}

// ---------------------------------------------------------------- deploy action

/// One call of the deploy hook for a run.
#[derive(Clone, Debug)]
pub struct HookCall<'a> {
    pub repo: &'a RepoFullName,
    pub environment: &'a Environment,
    pub deployment: &'a DeploymentToRun,
    /// Where the deploy system posts the result of an asynchronous deploy.
    pub callback_url: Option<String>,
    /// The run's deadline (Unix ms): no result by then is an `error`.
    pub deadline_ms: u64,
    /// What the repository's settings say to call (`Succeed`: nothing).
    pub action: &'a crate::repo_config::ActionSettings,
    /// The environment's URL, unless the deploy system gives one.
    pub environment_url: Option<&'a str>,
}

/// What the hook answered.
#[derive(Clone, Debug, PartialEq)]
pub enum HookAnswer {
    /// A synchronous result (2xx: success; any other answer, or none in time: failure).
    Finished(RunResult),
    /// `202 Accepted`: the result comes later through the callback.
    Accepted,
}

/// A deployment starting or ending, for people (chat).
#[derive(Clone, Debug)]
pub struct Announcement<'a> {
    pub repo: &'a RepoFullName,
    pub environment: &'a Environment,
    pub deployment: DeploymentId,
    pub sha: &'a Sha,
    pub pr: Option<u64>,
    pub requester: Option<&'a str>,
    /// `in_progress` when it starts, else how it ended.
    pub state: DeploymentState,
    pub duration_ms: Option<u64>,
    pub log_url: Option<&'a str>,
    pub environment_url: Option<&'a str>,
    /// The Slack webhook the repository's settings name for the environment.
    pub slack: Option<&'a crate::repo_config::SecretName>,
}

/// What the stack's settings configure for deploy actions, as the base of every repository's
/// settings: hooks and URLs by environment suffix, and the names of the secrets it holds (never
/// the secrets).
#[derive(Clone, Debug, Default)]
pub struct StackTargets {
    pub default_hook: Option<String>,
    pub hooks: std::collections::HashMap<String, String>,
    pub default_environment_url: Option<String>,
    pub environment_urls: std::collections::HashMap<String, String>,
    pub default_hook_secret: bool,
    pub hook_secret_names: std::collections::HashSet<String>,
    pub default_slack: bool,
    pub slack_names: std::collections::HashSet<String>,
}

pub trait DeployAction: Send + Sync {
    /// Tells people (Slack) that a deployment starts or ended. Best effort: never fails.
    fn announce(&self, _announcement: &Announcement<'_>) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// What the stack's settings configure (the base of every repository's settings).
    fn stack_targets(&self) -> StackTargets {
        StackTargets::default()
    }

    /// Runs the environment's deploy. Never fails as such: a failed deploy is a `failure` result.
    fn deploy(&self, call: &HookCall<'_>, deadline: Deadline) -> impl Future<Output = HookAnswer> + Send;
}

// ---------------------------------------------------------------- time

/// Wall-clock time in Unix milliseconds, injectable so that timeouts and leases are tested
/// without waiting.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
    }
}
