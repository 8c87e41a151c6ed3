//! One repository's effective settings: the stack's, overlaid by the organisation's file, what it
//! `_extends`, and the repository's own. Resolved once per delivery (from the warm cache); the
//! domain reads every per-repository decision from here, never from the stack's `Config`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::domain::rules::{BranchPattern, DeployRule, DeployRules};
use crate::domain::types::{BranchName, Environment};

#[derive(Clone, Debug, PartialEq)]
pub struct RepoSettings {
    /// In the order merges deploy to them.
    pub environments: Vec<EnvironmentSettings>,
    pub commands: CommandSettings,
    /// The files it came from, outermost last (empty: the stack's settings alone).
    pub sources: Vec<SourceFile>,
    /// Set when the newest file is invalid and these are the last valid settings.
    pub broken: Option<BrokenConfig>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EnvironmentSettings {
    pub name: Environment,
    /// The base branches whose merges deploy here.
    pub branches: Vec<BranchPattern>,
    pub production: bool,
    pub environment_url: Option<String>,
    pub timeout: Duration,
    /// `None`: GitHub's default (every check).
    pub required_contexts: Option<Vec<String>>,
    pub checks_wait: Duration,
    pub branch_deploys: bool,
    pub action: ActionSettings,
    /// The Slack webhook to announce on, by the name the stack holds it under.
    pub slack: Option<SecretName>,
}

/// How a deployment is run. Later kinds (GitHub Actions, CodeBuild, Step Functions) are more
/// variants here.
#[derive(Clone, Debug, PartialEq)]
pub enum ActionSettings {
    /// Nothing to call: the deployment succeeds at once.
    Succeed,
    Hook {
        url: String,
        secret: SecretName,
    },
}

/// A secret the stack holds, by name: `Default` is the unsuffixed variable (`HOOK_SIGNING_SECRET`,
/// `SLACK_WEBHOOK_URL`), `Named(SUFFIX)` the one ending in `_SUFFIX`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SecretName {
    Default,
    Named(String),
}

impl SecretName {
    /// The stack setting that holds it, with `prefix` (`HOOK_SIGNING_SECRET`).
    pub fn variable(&self, prefix: &str) -> String {
        match self {
            Self::Default => prefix.to_owned(),
            Self::Named(suffix) => format!("{prefix}_{suffix}"),
        }
    }

    /// A name as a file writes it (`staging-hook`) → `STAGING_HOOK`.
    pub fn suffix_of(name: &str) -> String {
        crate::domain::types::setting_suffix(name)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct CommandSettings {
    /// Roles that may run commands (`maintain` counts as `write`).
    pub permissions: Vec<String>,
    pub sha_deploys: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    /// `owner/repo`.
    pub repo: String,
    /// The file's blob sha on that repository's default branch.
    pub blob: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokenConfig {
    /// The commit that broke it, when known (a push told us).
    pub commit: Option<String>,
    /// The invalid file's blob sha.
    pub blob: String,
    /// Every problem, one line each (`file:line:column: key: message`).
    pub errors: Vec<String>,
}

impl RepoSettings {
    pub fn environment(&self, name: &Environment) -> Option<&EnvironmentSettings> {
        self.environments.iter().find(|e| &e.name == name)
    }

    /// Environments this deployer runs for the repository: every one its settings name.
    pub fn manages(&self, name: &Environment) -> bool {
        self.environment(name).is_some()
    }

    /// Which environments a merge into `branch` deploys to, in order.
    pub fn environments_for(&self, branch: &BranchName, default_branch: Option<&str>) -> Vec<Environment> {
        self.rules().environments_for(branch, default_branch)
    }

    pub fn rules(&self) -> DeployRules {
        let rules = self.environments.iter().flat_map(|e| {
            e.branches.iter().map(|pattern| DeployRule { pattern: pattern.clone(), environment: e.name.clone() })
        });
        DeployRules::from_rules(rules.collect())
    }

    pub fn branch_deploys_to(&self, name: &Environment) -> bool {
        self.environment(name).is_some_and(|e| e.branch_deploys)
    }

    /// The effective settings as a person reads them (`check-config`, the dry run): no secret,
    /// only the names secrets are held under.
    pub fn describe(&self) -> Value {
        let environments: serde_json::Map<String, Value> =
            self.environments.iter().map(|e| (e.name.as_str().to_owned(), e.describe())).collect();
        json!({
            "environments": environments,
            "commands": { "permissions": self.commands.permissions, "sha_deploys": self.commands.sha_deploys },
        })
    }
}

/// A hook URL as shown to people (check runs are readable by anyone who can read the
/// repository): its scheme and host only, since a path or query can hold a credential.
fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}/…", u.scheme()),
            (Some(host), None) => format!("{}://{host}/…", u.scheme()),
            _ => "(a URL)".to_owned(),
        },
        Err(_) => "(a URL)".to_owned(),
    }
}

impl EnvironmentSettings {
    pub fn describe(&self) -> Value {
        let minutes = |d: Duration| {
            let m = d.as_secs_f64() / 60.0;
            if m.fract() == 0.0 { json!(m as u64) } else { json!((m * 100.0).round() / 100.0) }
        };
        json!({
            "branches": self.branches.iter().map(|b| match b {
                BranchPattern::DefaultBranch => "@default".to_owned(),
                BranchPattern::Glob(g) => g.clone(),
            }).collect::<Vec<_>>(),
            "production": self.production,
            "environment_url": self.environment_url,
            "timeout_minutes": minutes(self.timeout),
            "required_contexts": self.required_contexts,
            "checks_wait_minutes": minutes(self.checks_wait),
            "branch_deploys": self.branch_deploys,
            "action": match &self.action {
                ActionSettings::Succeed => json!("none"),
                ActionSettings::Hook { url, secret } => json!({ "hook": {
                    "url": shown_url(url),
                    "secret": secret.variable("HOOK_SIGNING_SECRET"),
                }}),
            },
            "slack": self.slack.as_ref().map(|s| s.variable("SLACK_WEBHOOK_URL")),
        })
    }
}
