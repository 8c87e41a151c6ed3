//! Chat notices: a Slack incoming-webhook message when a deployment starts and when it ends
//! (`SLACK_WEBHOOK_URL`, or `SLACK_WEBHOOK_URL_<ENV>` for one environment). Best effort: a short
//! timeout, and a failure is logged and never fails or repeats a deployment.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::Client;
use serde_json::json;
use tracing::warn;

use crate::domain::ports::Announcement;
use crate::domain::types::{DeploymentState, Environment};

/// A notice never takes more of a delivery's budget than this.
const TIMEOUT: Duration = Duration::from_millis(1500);

#[derive(Clone, Debug, Default)]
pub struct SlackTargets {
    pub default_url: Option<String>,
    /// Keyed by [`Environment::env_var_suffix`].
    pub urls: HashMap<String, String>,
}

impl SlackTargets {
    /// The webhook held under `name` (`SLACK_WEBHOOK_URL` or `SLACK_WEBHOOK_URL_<NAME>`).
    pub fn named(&self, name: &crate::repo_config::SecretName) -> Option<&str> {
        match name {
            crate::repo_config::SecretName::Default => self.default_url.as_deref(),
            crate::repo_config::SecretName::Named(suffix) => self.urls.get(suffix).map(String::as_str),
        }
    }

    pub fn url_for(&self, environment: &Environment) -> Option<&str> {
        self.urls.get(&environment.env_var_suffix()).or(self.default_url.as_ref()).map(String::as_str)
    }
}

/// Slack's three special characters in message text.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn link(url: &str, label: &str) -> String {
    format!("<{}|{}>", url.replace('|', "%7C").replace('>', "%3E"), escape(label))
}

/// The message text for `a`.
pub fn text(a: &Announcement<'_>, html_url: &str) -> String {
    let repo = a.repo.as_str();
    let commit = link(&format!("{html_url}/{repo}/commit/{}", a.sha.as_str()), a.sha.short());
    let pr =
        a.pr.map(|n| format!(" ({})", link(&format!("{html_url}/{repo}/pull/{n}"), &format!("#{n}"))))
            .unwrap_or_default();
    let who = a.requester.map(|w| format!(" by {}", escape(w))).unwrap_or_default();
    let env = escape(a.environment.as_str());
    let mut out = match a.state {
        DeploymentState::InProgress => format!(":rocket: *{env}*: deploying {commit}{pr} of {}{who}", escape(repo)),
        state => {
            let icon = if state == DeploymentState::Success { ":white_check_mark:" } else { ":x:" };
            let took = a
                .duration_ms
                .map(|ms| format!(" in {}", humantime::format_duration(Duration::from_secs(ms / 1000))))
                .unwrap_or_default();
            format!("{icon} *{env}*: {state} {commit}{pr} of {}{who}{took}", escape(repo))
        }
    };
    if let Some(url) = a.log_url {
        out.push_str(&format!(" · {}", link(url, "log")));
    }
    if let Some(url) = a.environment_url {
        out.push_str(&format!(" · {}", link(url, "open")));
    }
    out
}

pub async fn post(http: &Client, url: &str, text: String) {
    let sent = http.post(url).timeout(TIMEOUT).json(&json!({ "text": text })).send().await;
    match sent {
        Ok(resp) if resp.status().is_success() => {}
        Ok(resp) => warn!(status = %resp.status(), "the Slack notice was refused; the deployment goes on"),
        Err(err) => warn!(timeout = err.is_timeout(), "the Slack notice could not be sent; the deployment goes on"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::types::{DeploymentId, RepoFullName, Sha};

    #[test]
    fn notices_carry_links_and_cannot_inject_markup() {
        let repo = RepoFullName::parse("octo/app").unwrap();
        let env = Environment::parse("production").unwrap();
        let sha = Sha::parse(&"a".repeat(40)).unwrap();
        let a = Announcement {
            repo: &repo,
            environment: &env,
            deployment: DeploymentId(9),
            sha: &sha,
            pr: Some(12),
            requester: Some("<!channel>"),
            state: DeploymentState::Success,
            duration_ms: Some(95_000),
            log_url: Some("https://ci.example.com/9"),
            environment_url: None,
            slack: None,
        };
        let t = text(&a, "https://github.com");
        assert!(
            t.starts_with(":white_check_mark: *production*: success <https://github.com/octo/app/commit/aaaa"),
            "{t}"
        );
        assert!(t.contains("(<https://github.com/octo/app/pull/12|#12>)") && t.contains("in 1m 35s"), "{t}");
        assert!(t.contains("by &lt;!channel&gt;") && t.ends_with("<https://ci.example.com/9|log>"), "{t}");
    }
}
