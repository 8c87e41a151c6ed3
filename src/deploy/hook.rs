//! The deploy action: `POST` a signed JSON description of the deployment to the environment's
//! hook URL (`DEPLOY_HOOK_URL_<ENVIRONMENT>` or `DEPLOY_HOOK_URL`). With no hook configured the
//! deployment succeeds at once, as in GitHub's guide.
//!
//! Two modes, chosen by the hook's answer:
//! - synchronous: 2xx (other than 202) within `DEPLOY_HOOK_TIMEOUT_MS` is `success`, optionally
//!   with JSON `description`, `log_url`, `environment_url`; any other answer, or none, `failure`;
//! - asynchronous: `202 Accepted`; the result comes later, signed, to the request's `callback_url`.
//!
//! The hook is called at least once per deployment: after a crash at the wrong moment it may be
//! called again with the same `deployment_id`, so it should dedupe on it.

use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

use reqwest::{Client, StatusCode};
use serde::Deserialize;
use serde_json::json;
use tracing::{debug, warn};

use crate::deploy::slack::{self, SlackTargets};
use crate::domain::Deadline;
use crate::domain::ports::{Announcement, DeployAction, HookAnswer, HookCall, StackTargets};
use crate::domain::runs::RunResult;
use crate::domain::types::{DeploymentState, Environment};
use crate::http::signature::HookSecrets;
use crate::repo_config::ActionSettings;

/// Where each environment deploys to and is served from.
#[derive(Clone, Debug, Default)]
pub struct DeployTargets {
    pub default_hook: Option<String>,
    /// Keyed by [`Environment::env_var_suffix`].
    pub hooks: HashMap<String, String>,
    pub default_environment_url: Option<String>,
    pub environment_urls: HashMap<String, String>,
    /// Setting suffixes of the environments named in `DEPLOY_RULES` or
    /// `BRANCH_DEPLOY_ENVIRONMENTS`: those are managed under their exact names, never also
    /// under a hook's suffix.
    pub named: std::collections::HashSet<String>,
}

impl DeployTargets {
    pub fn hook_for(&self, environment: &Environment) -> Option<&str> {
        self.hooks.get(&environment.env_var_suffix()).or(self.default_hook.as_ref()).map(String::as_str)
    }

    pub fn environment_url_for(&self, environment: &Environment) -> Option<&str> {
        self.environment_urls
            .get(&environment.env_var_suffix())
            .or(self.default_environment_url.as_ref())
            .map(String::as_str)
    }
}

/// What the stack's hook, URL, secret and Slack settings configure, as the base of every
/// repository's settings (names of secrets, never secrets).
pub fn stack_targets_of(targets: &DeployTargets, secrets: &HookSecrets, slack: &SlackTargets) -> StackTargets {
    let (default_hook_secret, hook_secret_names) = secrets.names();
    StackTargets {
        default_hook: targets.default_hook.clone(),
        hooks: targets.hooks.clone(),
        default_environment_url: targets.default_environment_url.clone(),
        environment_urls: targets.environment_urls.clone(),
        default_hook_secret,
        hook_secret_names,
        default_slack: slack.default_url.is_some(),
        slack_names: slack.urls.keys().cloned().collect(),
    }
}

pub struct HookDeployer {
    http: Client,
    targets: DeployTargets,
    secrets: HookSecrets,
    timeout: Duration,
    slack: SlackTargets,
    html_url: String,
}

/// What a delivery keeps for itself after the hook answers: time to post the final status.
const AFTER_HOOK_RESERVE: Duration = Duration::from_millis(1500);

impl HookDeployer {
    /// `http` is the process's shared client ([`crate::github::client::http_client`]).
    /// `secrets`: the hooks' own (`HOOK_SIGNING_SECRET[_<ENV>]`), never the webhook secret.
    pub fn new(http: Client, targets: DeployTargets, secrets: HookSecrets, timeout: Duration) -> Self {
        Self { http, targets, secrets, timeout, slack: SlackTargets::default(), html_url: "https://github.com".into() }
    }

    /// Also posts Slack notices (`SLACK_WEBHOOK_URL[_<ENV>]`), with links to `html_url`.
    pub fn with_slack(mut self, slack: SlackTargets, html_url: &str) -> Self {
        self.slack = slack;
        self.html_url = html_url.trim_end_matches('/').to_owned();
        self
    }

    /// How long the hook may take: the setting, cut to what is left of the delivery's budget
    /// after the reserve for posting the result (the reserve comes off the budget, never off
    /// the setting).
    pub fn wait_for(&self, deadline: Deadline) -> Duration {
        self.timeout.min(deadline.remaining().saturating_sub(AFTER_HOOK_RESERVE)).max(Duration::from_millis(100))
    }
}

#[derive(Deserialize, Default)]
struct HookAnswerBody {
    log_url: Option<String>,
    environment_url: Option<String>,
    description: Option<String>,
}

fn finished(
    state: DeploymentState,
    description: String,
    answer: HookAnswerBody,
    env_url: Option<String>,
) -> HookAnswer {
    HookAnswer::Finished(RunResult {
        state,
        description: answer.description.filter(|d| !d.trim().is_empty()).unwrap_or(description),
        log_url: answer.log_url.filter(|u| !u.is_empty()),
        environment_url: answer.environment_url.filter(|u| !u.is_empty()).or(env_url),
    })
}

impl DeployAction for HookDeployer {
    async fn announce(&self, announcement: &Announcement<'_>) {
        if let Some(url) = announcement.slack.and_then(|name| self.slack.named(name)) {
            slack::post(&self.http, url, slack::text(announcement, &self.html_url)).await;
        }
    }

    fn stack_targets(&self) -> StackTargets {
        stack_targets_of(&self.targets, &self.secrets, &self.slack)
    }

    async fn deploy(&self, call: &HookCall<'_>, deadline: Deadline) -> HookAnswer {
        let d = call.deployment;
        let environment_url = call.environment_url.map(str::to_owned);
        let deployed = format!("Deployed {} to {}", d.sha.short(), call.environment);
        let ActionSettings::Hook { url, secret } = call.action else {
            return finished(DeploymentState::Success, deployed, HookAnswerBody::default(), environment_url);
        };
        // Config and the repository's settings make sure a hook has a secret; without one, no
        // unsigned call.
        let Some(secrets) = self.secrets.named(secret) else {
            warn!(deployment_id = %d.id, "no hook signing secret for this environment; the hook is not called");
            return finished(DeploymentState::Failure, "No hook signing secret".to_owned(), Default::default(), None);
        };
        let deadline_iso = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(call.deadline_ms));
        let body = json!({
            "deployment_id": d.id.0,
            "repository": call.repo.as_str(),
            "environment": call.environment.as_str(),
            "ref": d.git_ref,
            "sha": d.sha.as_str(),
            "task": d.task,
            "creator": d.creator,
            "payload": d.payload,
            "delivery_id": d.delivery,
            "callback_url": call.callback_url,
            "deadline": deadline_iso.to_string(),
        })
        .to_string();
        let sent = self
            .http
            .post(url)
            .timeout(self.wait_for(deadline))
            .header("Content-Type", "application/json")
            .header("X-Hub-Signature-256", secrets.sign(body.as_bytes()))
            .header("X-GitHub-Delivery", d.delivery.as_str())
            .body(body)
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status() == StatusCode::ACCEPTED => {
                debug!(deployment_id = %d.id, "deploy hook accepted the deployment; waiting for its callback");
                HookAnswer::Accepted
            }
            Ok(resp) if resp.status().is_success() => {
                let answer: HookAnswerBody = resp.json().await.unwrap_or_default();
                debug!(deployment_id = %d.id, "deploy hook succeeded");
                finished(DeploymentState::Success, deployed, answer, environment_url)
            }
            Ok(resp) => {
                let status = resp.status();
                let answer: HookAnswerBody = resp.json().await.unwrap_or_default();
                warn!(deployment_id = %d.id, %status, "deploy hook failed");
                finished(DeploymentState::Failure, format!("Deploy hook answered {}", status.as_u16()), answer, None)
            }
            Err(err) => {
                let what = if err.is_timeout() { "timed out" } else { "could not be reached" };
                warn!(deployment_id = %d.id, "deploy hook {what}");
                let mut result =
                    finished(DeploymentState::Failure, format!("Deploy hook {what}"), Default::default(), None);
                if let HookAnswer::Finished(r) = &mut result {
                    r.environment_url = None;
                }
                result
            }
        }
    }
}
