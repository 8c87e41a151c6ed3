//! The service: what each delivery means and which use case handles it. The use cases live in
//! their own files: [`super::creation`] (merged PR → deployments), [`super::runner`] (a
//! deployment's run, callbacks, the sweep).

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use super::commands::CommandResult;
use super::configuration::RepoConfig;
use super::deadline::Deadline;
use super::event::{Delivery, DeploymentStatusEvent, WebhookEvent};
use super::features::{self, Event as FeatureEvent, Feature};
use super::ports::{Clock, DeployAction, EnvKey, GitHub, GitHubError, Store, StoreError, SystemClock};
use super::rules::DeployRules;
use super::runs::{RunSettings, Verdict};
use super::types::{DeploymentId, DeploymentState, Environment};
use crate::repo_config::RepoSettings;

#[derive(Clone, Debug)]
pub struct ServiceSettings {
    pub rules: DeployRules,
    /// How long a claim or an environment's lease stays ours. It must outlast the function's
    /// timeout, or a slow attempt could be taken over while it still works.
    pub lease: Duration,
    /// How long a delivery waits for another attempt that holds the same work before answering
    /// "in progress".
    pub busy_wait: Duration,
    pub busy_poll: Duration,
    /// A run with no result by then ends in `error` (`DEPLOY_TIMEOUT_MINUTES`).
    pub run_timeout: Duration,
    /// Per environment (keyed by [`Environment::env_var_suffix`]).
    pub run_timeouts: std::collections::HashMap<String, Duration>,
    /// After a failed step (GitHub down), the sweep tries again from this long after.
    pub retry_after: Duration,
    /// `PUBLIC_URL`: the base of callback URLs when the API sits behind a custom domain.
    pub public_url: Option<String>,
    /// Webhooks whose failed deliveries the sweep redelivers (the App's; `REDELIVER_HOOKS`).
    pub redelivery_hooks: Vec<super::ports::HookRef>,
    pub redelivery_max_attempts: u32,
    /// `BRANCH_DEPLOY_ENVIRONMENTS`: where `.deploy to <env>` may deploy a pull request's head.
    pub branch_deploy_environments: HashSet<Environment>,
    /// `ALLOW_SHA_DEPLOYMENTS`: whether `.deploy <sha> to <env>` is allowed.
    pub allow_sha_deployments: bool,
    /// `CHATOPS_PERMISSIONS`: who may run commands (`maintain` counts as `write`).
    pub chatops_permissions: Vec<String>,
    /// `DEPLOY_REQUIRED_CONTEXTS_<ENV>`, keyed by the environment's setting suffix.
    pub required_contexts: std::collections::HashMap<String, Vec<String>>,
    /// The web address of the GitHub the API belongs to, for links in replies.
    pub github_html_url: String,
    /// `CHECKS_WAIT_MINUTES`: how long a merge waits for pending checks before it is rejected.
    pub checks_wait: Duration,
    /// What repository files may not widen (`PINNED_SETTINGS`, `ALLOWED_HOOK_HOSTS`,
    /// `COMMAND_PERMISSION_FLOOR`).
    pub limits: crate::repo_config::OperatorLimits,
    /// `CONFIG_RECHECK_SECONDS`: how long a warm instance trusts the files it read.
    pub config_recheck: Duration,
}

impl ServiceSettings {
    pub fn new(rules: DeployRules) -> Self {
        Self {
            rules,
            lease: Duration::from_secs(60),
            busy_wait: Duration::from_secs(3),
            busy_poll: Duration::from_millis(200),
            run_timeout: Duration::from_secs(30 * 60),
            run_timeouts: Default::default(),
            retry_after: Duration::from_secs(30),
            public_url: None,
            redelivery_hooks: Vec::new(),
            redelivery_max_attempts: 5,
            branch_deploy_environments: HashSet::new(),
            allow_sha_deployments: false,
            chatops_permissions: vec!["write".to_owned(), "admin".to_owned()],
            required_contexts: Default::default(),
            github_html_url: "https://github.com".to_owned(),
            checks_wait: Duration::from_secs(60 * 60),
            limits: crate::repo_config::OperatorLimits {
                permission_floor: crate::repo_config::resolve::ROLES.iter().position(|r| *r == "write").unwrap_or(2),
                ..Default::default()
            },
            config_recheck: Duration::from_secs(300),
        }
    }
}

/// What a delivery did, for the response.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Pong,
    Ignored {
        reason: String,
    },
    /// A merged PR: one result per environment it deploys to.
    DeploymentsRequested {
        results: Vec<(Environment, EnvironmentResult)>,
    },
    /// A `deployment` event: what its environment did with it, and its state now.
    Deployment {
        id: DeploymentId,
        verdict: Verdict,
        state: DeploymentState,
    },
    StatusRecorded {
        id: DeploymentId,
        state: DeploymentState,
        applied: bool,
    },
    /// A callback from the deploy system.
    Callback {
        id: DeploymentId,
        verdict: Verdict,
    },
    /// A comment command.
    Command {
        comment_id: u64,
        result: CommandResult,
    },
    /// The repository has no valid configuration: nothing deploys.
    Refused {
        reason: String,
    },
    /// A configuration file checked (a push, or a pull request's dry run): a check run posted.
    ConfigChecked {
        valid: bool,
        /// Settings that would change once the pull request is merged.
        changes: usize,
    },
    /// Checks completed on a commit that merges wait for.
    ChecksChecked {
        created: usize,
        rejected: usize,
        waiting: usize,
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
    /// A later merge is already deployed or queued there: this one is not deployed.
    Superseded,
    /// Its required checks are still pending: it is created when they pass.
    WaitingForChecks {
        contexts: Vec<String>,
    },
}

impl Outcome {
    /// The one-word status of the response.
    pub fn status(&self) -> &'static str {
        match self {
            Self::Pong => "pong",
            Self::Ignored { .. } => "ignored",
            Self::Refused { .. } => "refused",
            Self::ConfigChecked { valid: true, .. } => "config_valid",
            Self::ConfigChecked { valid: false, .. } => "config_invalid",
            Self::DeploymentsRequested { results } => {
                let all = |f: fn(&EnvironmentResult) -> bool| results.iter().all(|(_, r)| f(r));
                if all(|r| matches!(r, EnvironmentResult::Rejected { .. })) {
                    "rejected"
                } else if all(|r| matches!(r, EnvironmentResult::Superseded)) {
                    "superseded"
                } else if all(|r| matches!(r, EnvironmentResult::WaitingForChecks { .. })) {
                    "waiting"
                } else if all(|r| matches!(r, EnvironmentResult::AlreadyCreated(_))) {
                    "duplicate"
                } else {
                    "processed"
                }
            }
            Self::Deployment { verdict, .. } => match verdict {
                Verdict::Queued { .. } | Verdict::Locked { .. } => "queued",
                Verdict::Superseded { .. } => "superseded",
                Verdict::Duplicate { .. } => "duplicate",
                Verdict::Stale => "stale",
                _ => "processed",
            },
            Self::StatusRecorded { applied: true, .. } => "processed",
            Self::StatusRecorded { applied: false, .. } => "stale",
            Self::Callback { verdict: Verdict::AlreadyFinal { .. }, .. } => "already_final",
            Self::Callback { .. } => "accepted",
            Self::Command { result, .. } => result.word(),
            Self::ChecksChecked { created: 0, rejected: 0, waiting: 0 } => "ignored",
            Self::ChecksChecked { .. } => "processed",
        }
    }

    /// Details for the response body: ids and states only, never payload text.
    pub fn detail(&self) -> serde_json::Value {
        match self {
            Self::Pong => json!({}),
            Self::Ignored { reason } | Self::Refused { reason } => json!({ "reason": reason }),
            Self::ConfigChecked { changes, .. } => json!({ "changes": changes }),
            Self::DeploymentsRequested { results } => json!({
                "deployments": results.iter().map(|(env, r)| match r {
                    EnvironmentResult::Created(id) => json!({"environment": env.as_str(), "result": "created", "deployment_id": id.0}),
                    EnvironmentResult::AlreadyCreated(id) => json!({"environment": env.as_str(), "result": "already_created", "deployment_id": id.0}),
                    EnvironmentResult::Rejected { status, message } => json!({"environment": env.as_str(), "result": "rejected", "github_status": status, "message": message}),
                    EnvironmentResult::Superseded => json!({"environment": env.as_str(), "result": "superseded"}),
                    EnvironmentResult::WaitingForChecks { contexts } => json!({"environment": env.as_str(), "result": "waiting_for_checks", "contexts": contexts}),
                }).collect::<Vec<_>>()
            }),
            Self::Deployment { id, verdict, state } => {
                let mut detail = json!({ "deployment_id": id.0, "state": state.as_str() });
                match verdict {
                    Verdict::Queued { behind } if behind.0 > 0 => detail["behind"] = json!(behind.0),
                    Verdict::Superseded { by } => detail["superseded_by"] = json!(by.0),
                    _ => {}
                }
                detail
            }
            Self::StatusRecorded { id, state, .. } => json!({ "deployment_id": id.0, "state": state.as_str() }),
            Self::ChecksChecked { created, rejected, waiting } => {
                json!({ "created": created, "rejected": rejected, "waiting": waiting })
            }
            Self::Command { comment_id, result } => match result {
                CommandResult::Deployed(id) => json!({ "comment_id": comment_id, "deployment_id": id.0 }),
                CommandResult::Duplicate(recorded) => json!({ "comment_id": comment_id, "recorded": recorded }),
                _ => json!({ "comment_id": comment_id }),
            },
            Self::Callback { id, verdict } => match verdict {
                Verdict::AlreadyFinal { state } => json!({ "deployment_id": id.0, "state": state.as_str() }),
                _ => json!({ "deployment_id": id.0 }),
            },
        }
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
    /// A callback whose token names no run.
    #[error("no run has this callback token")]
    UnknownRun,
    /// The OS random source failed: no lease or callback secret can be made.
    #[error("the OS random source failed")]
    NoRandomness,
}

pub struct Service<S, G, D, C = SystemClock> {
    pub(crate) store: S,
    pub(crate) github: G,
    pub(crate) deployer: D,
    pub(crate) clock: C,
    pub(crate) settings: ServiceSettings,
    /// The stack's settings as the base layer of every repository's.
    pub(crate) stack: std::sync::Arc<crate::repo_config::StackDefaults>,
    pub(crate) config_cache: super::configuration::ConfigCache,
    /// The webhook events this stack has received, as far as this instance knows (see
    /// [`Service::note_event`]).
    seen: std::sync::Mutex<SeenEvents>,
}

/// Which tracked events this stack has received and when each was last recorded (ms).
#[derive(Debug, Default)]
struct SeenEvents {
    /// The stored record has been read (once per cold start).
    loaded: bool,
    at: std::collections::HashMap<String, u64>,
}

/// A kind recorded less than this long ago is not recorded again.
const SEEN_REFRESH_MS: u64 = 24 * 60 * 60 * 1000;

impl<S: Store, G: GitHub, D: DeployAction> Service<S, G, D, SystemClock> {
    pub fn new(store: S, github: G, deployer: D, settings: ServiceSettings) -> Self {
        Self::with_clock(store, github, deployer, SystemClock, settings)
    }
}

impl<S: Store, G: GitHub, D: DeployAction, C: Clock> Service<S, G, D, C> {
    pub fn with_clock(store: S, github: G, deployer: D, clock: C, settings: ServiceSettings) -> Self {
        let stack = std::sync::Arc::new(super::configuration::stack_defaults(&settings, deployer.stack_targets()));
        Self {
            store,
            github,
            deployer,
            clock,
            settings,
            stack,
            config_cache: Default::default(),
            seen: Default::default(),
        }
    }

    /// Records that a delivery of `event` (its `X-GitHub-Event`) arrived, if some feature needs
    /// that kind, so that `.status` and answers can say which events a stack never receives.
    /// Cheap by design: the stored record is read once per cold start, and a kind is written at
    /// most once a day per instance (never when the record already has it from the last day), so
    /// a delivery's own writes stay as they are. Best effort: a failure is logged and ignored.
    pub async fn note_event(&self, event: &str) {
        let Some(event) = super::features::tracked(event) else { return };
        let now = self.clock.now_ms();
        let fresh =
            |seen: &SeenEvents| seen.at.get(event.name).is_some_and(|t| now.saturating_sub(*t) < SEEN_REFRESH_MS);
        if self.with_seen(|seen| fresh(seen)) {
            return;
        }
        self.load_seen().await;
        let record = self.with_seen(|seen| {
            let record = !fresh(seen);
            if record {
                // Marked first, so that concurrent deliveries of this instance write it once.
                seen.at.insert(event.name.to_owned(), now);
            }
            record
        });
        if record && let Err(err) = self.store.record_seen_event(event.name, now).await {
            tracing::warn!(error = %err, event = event.name, "could not record the event kind as received");
        }
    }

    /// The features (of `ids`, or all) whose events this stack has never received, with those
    /// events; reads the stored record if this instance has not yet.
    pub async fn missing_events(&self, ids: Option<&[&str]>) -> Vec<(&'static Feature, Vec<FeatureEvent>)> {
        self.load_seen().await;
        let features = features::FEATURES.iter().filter(|f| ids.is_none_or(|ids| ids.contains(&f.id)));
        self.with_seen(|seen| features::missing(features, |name| seen.at.contains_key(name)))
    }

    /// What the answer to `outcome` should add when the event that follows it may never come:
    /// a merge created a deployment but no `deployment` event has ever arrived, or it waits for
    /// checks and no `check_suite` or `status` event has.
    pub async fn missing_events_note(&self, outcome: &Outcome) -> Option<String> {
        let Outcome::DeploymentsRequested { results } = outcome else { return None };
        let mut ids = Vec::new();
        if results.iter().any(|(_, r)| matches!(r, EnvironmentResult::Created(_))) {
            ids.push("deployments");
        }
        if results.iter().any(|(_, r)| matches!(r, EnvironmentResult::WaitingForChecks { .. })) {
            ids.push("gates");
        }
        if ids.is_empty() {
            return None;
        }
        let missing = self.missing_events(Some(&ids)).await;
        // Of the deployments feature only `deployment` is what a merge's answer waits for.
        let events: Vec<FeatureEvent> = missing
            .iter()
            .flat_map(|(_, events)| events.iter().copied())
            .filter(|e| e.name != "pull_request" && e.name != "deployment_status")
            .collect();
        (!events.is_empty()).then(|| {
            format!(
                "this deployer has never received {}: unless the webhook (or the App) is subscribed to it, what \
                 this answer waits for never comes (README: What each feature needs)",
                features::events_text(&events, features::Needs::Any).replace("**", "")
            )
        })
    }

    async fn load_seen(&self) {
        if self.with_seen(|seen| seen.loaded) {
            return;
        }
        let stored = self.store.load_seen_events().await;
        self.with_seen(|seen| {
            seen.loaded = true;
            match stored {
                Ok(stored) => {
                    for (event, at) in stored {
                        let known = seen.at.entry(event).or_insert(at);
                        *known = (*known).max(at);
                    }
                }
                Err(err) => tracing::warn!(error = %err, "could not read which event kinds this stack received"),
            }
        });
    }

    fn with_seen<T>(&self, f: impl FnOnce(&mut SeenEvents) -> T) -> T {
        match self.seen.lock() {
            Ok(mut seen) => f(&mut seen),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// The run engine's settings for an environment (its timeout from the repository's settings).
    pub(crate) fn run_settings(&self, key: &EnvKey) -> RunSettings {
        let timeout = self.with_environment_settings(key, |e| e.timeout);
        RunSettings { lease_ms: self.settings.lease.as_millis() as u64, run_timeout_ms: timeout.as_millis() as u64 }
    }

    pub async fn handle(&self, delivery: Delivery, deadline: Deadline) -> Result<Outcome, ServiceError> {
        if let Some((repo, installation)) = delivery.event.installation() {
            self.github.remember_installation(repo, installation);
        }
        // The configuration's own events, before any configuration is resolved.
        match &delivery.event {
            WebhookEvent::DefaultBranchPushed { repo, after, touched, .. } => {
                return self.config_pushed(repo, after, *touched, deadline).await;
            }
            // The dry run shows the repository's settings: not to whoever opens a pull request
            // from a fork (on a public repository, anyone).
            WebhookEvent::PullRequestUpdated { from_fork: true, .. } => {
                return Ok(Outcome::Ignored { reason: "pull requests from forks get no dry run".to_owned() });
            }
            WebhookEvent::PullRequestUpdated { repo, head_sha, .. } => {
                return self.config_dry_run(repo, head_sha, deadline).await;
            }
            _ => {}
        }
        let settings = match delivery.event.repo() {
            Some(repo) => match self.repo_config(repo, deadline).await? {
                RepoConfig::Settings(settings) => settings,
                RepoConfig::Refused(reason) => return Ok(Outcome::Refused { reason }),
            },
            None => std::sync::Arc::new(self.stack.settings()),
        };
        match delivery.event {
            WebhookEvent::Ping { .. } => Ok(Outcome::Pong),
            WebhookEvent::Ignored { reason } => Ok(Outcome::Ignored { reason }),
            WebhookEvent::PullRequestMerged(pr) => {
                let envs = settings.environments_for(&pr.base_branch, pr.default_branch.as_deref());
                if envs.is_empty() {
                    return Ok(Outcome::Ignored {
                        reason: format!("no deploy rule for base branch {}", pr.base_branch),
                    });
                }
                self.create_deployments(&delivery.id, &pr, envs, deadline).await
            }
            WebhookEvent::DeploymentCreated(d) => {
                if !settings.manages(&d.environment) {
                    return Ok(Outcome::Ignored {
                        reason: format!("environment {} is not managed by this deployer", d.environment),
                    });
                }
                self.run_deployment(&delivery.id, &d, delivery.callback_base.as_deref(), deadline).await
            }
            WebhookEvent::DeploymentStatus(s) => self.record_status(&s, &settings, deadline).await,
            WebhookEvent::Command(c) => self.run_command(&delivery.id, &c, &settings, deadline).await,
            WebhookEvent::ChecksCompleted { repo, sha, .. } => self.checks_completed(&repo, &sha, deadline).await,
            WebhookEvent::DefaultBranchPushed { .. } | WebhookEvent::PullRequestUpdated { .. } => {
                Ok(Outcome::Ignored { reason: "handled above".to_owned() })
            }
        }
    }

    /// Polls `read` until it yields a finished result or the wait (cut to the budget) runs out.
    pub(crate) async fn wait_for<T, F, Fut>(&self, deadline: Deadline, read: F) -> Result<Option<T>, StoreError>
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

    /// Records the status (newer wins: idempotent by itself). A terminal one that someone else
    /// posted (its creator is not us) for a deployment of a managed environment also ends that
    /// deployment there: running, waiting, or not arrived yet. Ours are told apart by who
    /// created them, never by what the run is doing.
    async fn record_status(
        &self,
        event: &DeploymentStatusEvent,
        settings: &RepoSettings,
        deadline: Deadline,
    ) -> Result<Outcome, ServiceError> {
        let applied = self
            .store
            .record_deployment_status(&event.repo, event.deployment_id, event.environment.as_ref(), &event.status)
            .await?;
        if let Some(environment) = event.environment.as_ref().filter(|e| settings.manages(e))
            && event.status.state.is_terminal()
            && !self.posted_by_us(&event.status, deadline).await?
        {
            // Also when not `applied` (a redelivery, or a newer status recorded first): the
            // environment's state is what must know, and applying it again changes nothing.
            let key = EnvKey { repo: event.repo.clone(), environment: environment.clone() };
            self.end_run_from_status(&key, event.deployment_id, event.status.state, deadline).await?;
        }
        Ok(Outcome::StatusRecorded { id: event.deployment_id, state: event.status.state, applied })
    }

    async fn posted_by_us(
        &self,
        status: &super::event::StatusRecord,
        deadline: Deadline,
    ) -> Result<bool, ServiceError> {
        match status.creator.as_deref() {
            Some(creator) => Ok(self.github.own_login(deadline).await?.eq_ignore_ascii_case(creator)),
            None => Ok(false),
        }
    }
}
