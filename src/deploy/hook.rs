//! The deploy action: `POST` a signed JSON description of the deployment to the environment's
//! hook URL (`DEPLOY_HOOK_URL_<ENVIRONMENT>` or `DEPLOY_HOOK_URL`); a 2xx answer means success.
//! With no hook configured the deployment succeeds at once, as in GitHub's guide.
//!
//! The hook may answer JSON with `log_url`, `environment_url` and `description`; they go into the
//! final deployment status. The hook is called at least once per deployment: after a crash at the
//! wrong moment it may be called again with the same `deployment_id`, so it should dedupe on it.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::Client;
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

use crate::domain::ports::{DeployAction, DeployReport};
use crate::domain::types::{DeliveryId, Environment};
use crate::domain::{Deadline, DeploymentCreated};
use crate::http::signature::WebhookSecrets;

/// Where each environment deploys to and is served from.
#[derive(Clone, Debug, Default)]
pub struct DeployTargets {
    pub default_hook: Option<String>,
    /// Keyed by [`Environment::env_var_suffix`].
    pub hooks: HashMap<String, String>,
    pub default_environment_url: Option<String>,
    pub environment_urls: HashMap<String, String>,
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

pub struct HookDeployer {
    http: Client,
    targets: DeployTargets,
    secrets: WebhookSecrets,
    timeout: Duration,
}

impl HookDeployer {
    /// `http` is the process's shared client ([`crate::github::client::http_client`]).
    pub fn new(http: Client, targets: DeployTargets, secrets: WebhookSecrets, timeout: Duration) -> Self {
        Self { http, targets, secrets, timeout }
    }
}

#[derive(Deserialize, Default)]
struct HookAnswer {
    log_url: Option<String>,
    environment_url: Option<String>,
    description: Option<String>,
}

impl DeployAction for HookDeployer {
    fn configured_for(&self, environment: &Environment) -> bool {
        self.targets.hooks.contains_key(&environment.env_var_suffix())
    }

    async fn deploy(&self, d: &DeploymentCreated, delivery: &DeliveryId, deadline: Deadline) -> DeployReport {
        let environment_url = self.targets.environment_url_for(&d.environment).map(str::to_owned);
        let Some(url) = self.targets.hook_for(&d.environment) else {
            return DeployReport {
                success: true,
                description: format!("Deployed {} to {}", d.sha.short(), d.environment),
                log_url: None,
                environment_url,
            };
        };
        let body = json!({
            "deployment_id": d.id.0,
            "repository": d.repo.as_str(),
            "environment": d.environment.as_str(),
            "ref": d.git_ref,
            "sha": d.sha.as_str(),
            "task": d.task,
            "creator": d.creator,
            "payload": d.payload,
            "delivery_id": delivery.as_str(),
        })
        .to_string();
        // Leave time after the hook to post the final status.
        let timeout = deadline.cap(self.timeout).saturating_sub(Duration::from_millis(1500));
        let sent = self
            .http
            .post(url)
            .timeout(timeout.max(Duration::from_millis(100)))
            .header("Content-Type", "application/json")
            .header("X-Hub-Signature-256", self.secrets.sign(body.as_bytes()))
            .header("X-GitHub-Delivery", delivery.as_str())
            .body(body)
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => {
                let answer: HookAnswer = resp.json().await.unwrap_or_default();
                info!(deployment_id = %d.id, "deploy hook succeeded");
                DeployReport {
                    success: true,
                    description: answer
                        .description
                        .unwrap_or_else(|| format!("Deployed {} to {}", d.sha.short(), d.environment)),
                    log_url: answer.log_url,
                    environment_url: answer.environment_url.or(environment_url),
                }
            }
            Ok(resp) => {
                let status = resp.status();
                let answer: HookAnswer = resp.json().await.unwrap_or_default();
                warn!(deployment_id = %d.id, %status, "deploy hook failed");
                DeployReport {
                    success: false,
                    description: answer
                        .description
                        .unwrap_or_else(|| format!("Deploy hook answered {}", status.as_u16())),
                    log_url: answer.log_url,
                    environment_url: None,
                }
            }
            Err(err) => {
                let what = if err.is_timeout() { "timed out" } else { "could not be reached" };
                warn!(deployment_id = %d.id, "deploy hook {what}");
                DeployReport {
                    success: false,
                    description: format!("Deploy hook {what}"),
                    log_url: None,
                    environment_url: None,
                }
            }
        }
    }
}
