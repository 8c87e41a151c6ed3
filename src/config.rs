//! Every setting, read once at cold start into a typed struct. A missing or invalid setting fails
//! init with a message that names the variable; nothing reads the environment during a request.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::Url;
use secrecy::SecretString;

use crate::deploy::hook::DeployTargets;
use crate::domain::ports::HookRef;
use crate::domain::rules::{DeployRules, RulesError};
use crate::github::auth::{AppCredentials, AuthConfig, BadAppKey};
use crate::github::client::ExtraCaCerts;
use crate::http::signature::{HookSecrets, WebhookSecrets};
use crate::repo_config::OperatorLimits;
use crate::repo_config::resolve::{ROLES, is_loopback, parse_pins};

pub const DEFAULT_GITHUB_API_URL: &str = "https://api.github.com";

#[derive(Debug)]
pub struct Config {
    /// `GITHUB_WEBHOOK_SECRET`: verifies GitHub's deliveries, and nothing else.
    pub webhook_secrets: WebhookSecrets,
    /// `HOOK_SIGNING_SECRET`, `HOOK_SIGNING_SECRET_<ENV>`: signs hook calls and verifies their
    /// callbacks, per environment, and nothing else.
    pub hook_secrets: HookSecrets,
    /// `GITHUB_TOKEN`, or `GITHUB_APP_ID` + `GITHUB_APP_PRIVATE_KEY`: exactly one of the two.
    pub github_auth: AuthConfig,
    /// `REDELIVER_HOOKS` (token mode): repository webhooks whose failed deliveries the sweep
    /// redelivers. In App mode the App's own webhook is always covered.
    pub redeliver_hooks: Vec<HookRef>,
    /// `REDELIVERY_MAX_ATTEMPTS`: redeliveries per delivery before giving up.
    pub redelivery_max_attempts: u32,
    /// `BRANCH_DEPLOY_ENVIRONMENTS`: where `.deploy to <env>` may deploy (default: none).
    pub branch_deploy_environments: Vec<crate::domain::Environment>,
    /// `ALLOW_SHA_DEPLOYMENTS=true`: `.deploy <sha> to <env>` is allowed.
    pub allow_sha_deployments: bool,
    /// `CHATOPS_PERMISSIONS` (default `write,admin`).
    pub chatops_permissions: Vec<String>,
    /// `DEPLOY_REQUIRED_CONTEXTS_<ENV>`: the checks a deployment there needs.
    pub required_contexts: HashMap<String, Vec<String>>,
    /// `CHECKS_WAIT_MINUTES`: how long a merge waits for pending checks.
    pub checks_wait: Duration,
    /// `SLACK_WEBHOOK_URL`, `SLACK_WEBHOOK_URL_<ENV>`.
    pub slack: crate::deploy::slack::SlackTargets,
    pub github_api_url: String,
    pub table: String,
    pub rules: DeployRules,
    pub deploy_targets: DeployTargets,
    /// The whole delivery's time budget: GitHub gives up after 10 s.
    pub delivery_budget: Duration,
    pub deploy_hook_timeout: Duration,
    /// `DEPLOY_TIMEOUT_MINUTES`: how long a run may wait for its result.
    pub deploy_timeout: Duration,
    /// `DEPLOY_TIMEOUT_MINUTES_<ENV>`, keyed by the environment's setting suffix.
    pub deploy_timeouts: HashMap<String, Duration>,
    /// `PUBLIC_URL`: the base of callback URLs, for a custom domain.
    pub public_url: Option<String>,
    /// `EXTRA_CA_CERTS_FILE`: CA certificates trusted besides the compiled-in web PKI roots.
    pub extra_ca_certs: ExtraCaCerts,
    /// `PINNED_SETTINGS`, `ALLOWED_HOOK_HOSTS`, `COMMAND_PERMISSION_FLOOR`: what repository files
    /// may not widen.
    pub repo_limits: OperatorLimits,
    /// `CONFIG_RECHECK_SECONDS`: how long a warm instance trusts the configuration files it read.
    pub config_recheck: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error("{0} is set but holds no secret (it is empty or only commas)")]
    EmptySecrets(String),
    #[error("{hook} is set, so {needs} must be set: the hook's calls and callbacks are signed with it")]
    NoHookSecret { hook: String, needs: String },
    #[error(
        "{0} holds a secret that is also in GITHUB_WEBHOOK_SECRET: a deploy hook must not be able to sign GitHub deliveries"
    )]
    SharedHookSecret(String),
    /// The value is not shown: a URL can be a credential (a Slack webhook URL is one).
    #[error("{0} is not a valid https:// URL (its value is not shown)")]
    BadUrl(String),
    #[error("{name} must be an https:// URL (http:// only for a loopback address), got {shown}")]
    NotHttps { name: String, shown: String },
    #[error("DEPLOY_RULES is not valid: {0}")]
    BadRules(#[from] RulesError),
    #[error("{name} must be a whole number of milliseconds between {min} and {max}, got {value:?}")]
    BadMillis { name: &'static str, value: String, min: u64, max: u64 },
    #[error("{0} holds characters not allowed in an HTTP header")]
    BadToken(&'static str),
    #[error("no GitHub credentials: set GITHUB_TOKEN, or GITHUB_APP_ID and GITHUB_APP_PRIVATE_KEY")]
    NoAuth,
    #[error("set either GITHUB_TOKEN or GITHUB_APP_ID and GITHUB_APP_PRIVATE_KEY, not both")]
    TwoAuths,
    #[error("GITHUB_APP_ID must be the App's numeric id, got {0:?}")]
    BadAppId(String),
    #[error(transparent)]
    BadAppKey(#[from] BadAppKey),
    #[error("REDELIVER_HOOKS entries are owner/repo#hook_id, got {0:?}")]
    BadHook(String),
    #[error("REDELIVERY_MAX_ATTEMPTS must be a whole number from 1 to 20, got {0:?}")]
    BadAttempts(String),
    #[error("{name} is not a valid list: {value:?}")]
    BadList { name: &'static str, value: String },
    #[error("{name} must be true or false, got {value:?}")]
    BadBool { name: &'static str, value: String },
    #[error("{name} must be a number of minutes between 0.05 and 1440, got {value:?}")]
    BadMinutes { name: String, value: String },
    #[error(
        "PINNED_SETTINGS names {0:?}, which is not a key of the configuration file (e.g. commands.permissions, environments.*.action, environments.production)"
    )]
    BadPin(String),
    #[error("COMMAND_PERMISSION_FLOOR must be one of read, triage, write, maintain, admin, got {0:?}")]
    BadFloor(String),
    #[error("ALLOWED_HOOK_HOSTS entries are host names or *.domain, got {0:?}")]
    BadHookHost(String),
    #[error("CONFIG_RECHECK_SECONDS must be a whole number from 0 to 3600, got {0:?}")]
    BadRecheck(String),
    #[error("EXTRA_CA_CERTS_FILE ({path:?}): {reason}")]
    BadCaBundle { path: String, reason: String },
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads the settings from `vars` (the process environment in production, a list in tests).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let vars: HashMap<String, String> = vars.into_iter().collect();
        let get = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());

        let secrets_raw = get("GITHUB_WEBHOOK_SECRET").ok_or(ConfigError::Missing("GITHUB_WEBHOOK_SECRET"))?;
        let webhook_secrets =
            WebhookSecrets::from_list(secrets_raw).ok_or(ConfigError::EmptySecrets("GITHUB_WEBHOOK_SECRET".into()))?;

        let github_auth = match (get("GITHUB_TOKEN"), get("GITHUB_APP_ID"), get("GITHUB_APP_PRIVATE_KEY")) {
            (Some(token), None, None) => {
                if token.chars().any(|c| !c.is_ascii_graphic()) {
                    return Err(ConfigError::BadToken("GITHUB_TOKEN"));
                }
                AuthConfig::Token(SecretString::from(token.to_owned()))
            }
            (None, Some(id), Some(_)) => {
                let app_id =
                    id.parse::<u64>().ok().filter(|id| *id > 0).ok_or_else(|| ConfigError::BadAppId(id.to_owned()))?;
                // The PEM keeps its line breaks: read it untrimmed from `vars`.
                let pem = SecretString::from(vars.get("GITHUB_APP_PRIVATE_KEY").cloned().unwrap_or_default());
                AuthConfig::App(AppCredentials::new(app_id, &pem)?)
            }
            (None, None, None) => return Err(ConfigError::NoAuth),
            (None, Some(_), None) => return Err(ConfigError::Missing("GITHUB_APP_PRIVATE_KEY")),
            (None, None, Some(_)) => return Err(ConfigError::Missing("GITHUB_APP_ID")),
            (Some(_), _, _) => return Err(ConfigError::TwoAuths),
        };
        let redeliver_hooks = match get("REDELIVER_HOOKS") {
            Some(raw) => raw
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(|h| HookRef::parse(h).ok_or_else(|| ConfigError::BadHook(h.to_owned())))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let branch_deploy_environments = match get("BRANCH_DEPLOY_ENVIRONMENTS") {
            Some(raw) => raw
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(|e| {
                    crate::domain::Environment::parse(e)
                        .map_err(|_| ConfigError::BadList { name: "BRANCH_DEPLOY_ENVIRONMENTS", value: raw.to_owned() })
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let checks_wait = match get("CHECKS_WAIT_MINUTES") {
            Some(raw) => minutes("CHECKS_WAIT_MINUTES", raw)?,
            None => Duration::from_secs(60 * 60),
        };
        let allow_sha_deployments = match get("ALLOW_SHA_DEPLOYMENTS") {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(ConfigError::BadBool { name: "ALLOW_SHA_DEPLOYMENTS", value: other.to_owned() }),
        };
        let chatops_permissions = match get("CHATOPS_PERMISSIONS") {
            Some(raw) => {
                let list: Vec<String> =
                    raw.split(',').map(|p| p.trim().to_ascii_lowercase()).filter(|p| !p.is_empty()).collect();
                let known = ["admin", "maintain", "write", "triage", "read"];
                if list.is_empty() || list.iter().any(|p| !known.contains(&p.as_str())) {
                    return Err(ConfigError::BadList { name: "CHATOPS_PERMISSIONS", value: raw.to_owned() });
                }
                list
            }
            None => vec!["write".to_owned(), "admin".to_owned()],
        };
        let redelivery_max_attempts = match get("REDELIVERY_MAX_ATTEMPTS") {
            Some(raw) => raw
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=20).contains(n))
                .ok_or_else(|| ConfigError::BadAttempts(raw.to_owned()))?,
            None => 5,
        };

        let github_api_url = match get("GITHUB_API_URL") {
            Some(url) => http_url("GITHUB_API_URL", url)?.trim_end_matches('/').to_owned(),
            None => DEFAULT_GITHUB_API_URL.to_owned(),
        };

        let table = get("DEPLOYMENTS_TABLE").ok_or(ConfigError::Missing("DEPLOYMENTS_TABLE"))?.to_owned();

        let rules = match get("DEPLOY_RULES") {
            Some(raw) => DeployRules::parse(raw)?,
            None => DeployRules::default(),
        };

        let mut deploy_targets = DeployTargets::default();
        let mut deploy_timeouts = HashMap::new();
        let mut required_contexts = HashMap::new();
        let mut slack = crate::deploy::slack::SlackTargets::default();
        let mut env_hook_secrets = HashMap::new();
        for (name, value) in &vars {
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            if name == "DEPLOY_HOOK_URL" {
                deploy_targets.default_hook = Some(http_url(name, value)?);
            } else if let Some(env) = name.strip_prefix("DEPLOY_HOOK_URL_") {
                deploy_targets.hooks.insert(env.to_owned(), http_url(name, value)?);
            } else if name == "ENVIRONMENT_URL" {
                deploy_targets.default_environment_url = Some(http_url(name, value)?);
            } else if let Some(env) = name.strip_prefix("ENVIRONMENT_URL_") {
                deploy_targets.environment_urls.insert(env.to_owned(), http_url(name, value)?);
            } else if name == "SLACK_WEBHOOK_URL" {
                slack.default_url = Some(http_url(name, value)?);
            } else if let Some(env) = name.strip_prefix("SLACK_WEBHOOK_URL_") {
                slack.urls.insert(env.to_owned(), http_url(name, value)?);
            } else if let Some(env) = name.strip_prefix("DEPLOY_REQUIRED_CONTEXTS_") {
                let contexts = value.split(',').map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned).collect();
                required_contexts.insert(env.to_owned(), contexts);
            } else if let Some(env) = name.strip_prefix("DEPLOY_TIMEOUT_MINUTES_") {
                deploy_timeouts.insert(env.to_owned(), minutes(name, value)?);
            } else if let Some(env) = name.strip_prefix("HOOK_SIGNING_SECRET_") {
                let secrets =
                    WebhookSecrets::from_list(value).ok_or_else(|| ConfigError::EmptySecrets(name.clone()))?;
                env_hook_secrets.insert(env.to_owned(), secrets);
            }
        }
        let default_hook_secrets = match vars.get("HOOK_SIGNING_SECRET").filter(|v| !v.trim().is_empty()) {
            Some(raw) => {
                Some(WebhookSecrets::from_list(raw).ok_or(ConfigError::EmptySecrets("HOOK_SIGNING_SECRET".into()))?)
            }
            None => None,
        };
        let hook_secrets = hook_secrets(&deploy_targets, default_hook_secrets, env_hook_secrets, &webhook_secrets)?;

        deploy_targets.named = rules
            .environments()
            .chain(branch_deploy_environments.iter())
            .map(crate::domain::Environment::env_var_suffix)
            .collect();

        let delivery_budget = millis(get("DELIVERY_BUDGET_MS"), "DELIVERY_BUDGET_MS", 8_000, 1_000, 9_500)?;
        let deploy_hook_timeout = millis(get("DEPLOY_HOOK_TIMEOUT_MS"), "DEPLOY_HOOK_TIMEOUT_MS", 5_000, 100, 9_000)?;
        let deploy_timeout = match get("DEPLOY_TIMEOUT_MINUTES") {
            Some(raw) => minutes("DEPLOY_TIMEOUT_MINUTES", raw)?,
            None => Duration::from_secs(30 * 60),
        };
        let public_url = match get("PUBLIC_URL") {
            Some(url) => Some(http_url("PUBLIC_URL", url)?.trim_end_matches('/').to_owned()),
            None => None,
        };

        let extra_ca_certs = match get("EXTRA_CA_CERTS_FILE") {
            Some(path) => extra_ca_certs(path)?,
            None => ExtraCaCerts::default(),
        };

        let pins = parse_pins(get("PINNED_SETTINGS").unwrap_or_default()).map_err(ConfigError::BadPin)?;
        let permission_floor = match get("COMMAND_PERMISSION_FLOOR") {
            Some(raw) => ROLES
                .iter()
                .position(|r| r.eq_ignore_ascii_case(raw))
                .ok_or_else(|| ConfigError::BadFloor(raw.to_owned()))?,
            // The weakest role the operator lets run commands.
            None => chatops_permissions.iter().filter_map(|p| ROLES.iter().position(|r| r == p)).min().unwrap_or(2),
        };
        let allowed_hook_hosts = match get("ALLOWED_HOOK_HOSTS") {
            Some(raw) => raw
                .split(',')
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .map(|h| {
                    let bare = h.strip_prefix("*.").unwrap_or(&h);
                    let ok =
                        !bare.is_empty() && bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
                    if ok { Ok(h) } else { Err(ConfigError::BadHookHost(h)) }
                })
                .collect::<Result<Vec<_>, _>>()?,
            // The hosts of the stack's own hooks.
            None => {
                let mut hosts: Vec<String> = deploy_targets
                    .default_hook
                    .iter()
                    .chain(deploy_targets.hooks.values())
                    .filter_map(|u| Url::parse(u).ok().and_then(|u| u.host_str().map(str::to_ascii_lowercase)))
                    .collect();
                hosts.sort();
                hosts.dedup();
                hosts
            }
        };
        let config_recheck = match get("CONFIG_RECHECK_SECONDS") {
            Some(raw) => raw
                .parse::<u64>()
                .ok()
                .filter(|s| *s <= 3600)
                .map(Duration::from_secs)
                .ok_or_else(|| ConfigError::BadRecheck(raw.to_owned()))?,
            None => Duration::from_secs(300),
        };

        Ok(Self {
            repo_limits: OperatorLimits { pins, allowed_hook_hosts, permission_floor },
            config_recheck,
            webhook_secrets,
            hook_secrets,
            github_auth,
            redeliver_hooks,
            redelivery_max_attempts,
            branch_deploy_environments,
            allow_sha_deployments,
            chatops_permissions,
            required_contexts,
            checks_wait,
            slack,
            github_api_url,
            table,
            rules,
            deploy_targets,
            delivery_budget,
            deploy_hook_timeout,
            deploy_timeout,
            deploy_timeouts,
            public_url,
            extra_ca_certs,
        })
    }
}

/// The hooks' secrets: every configured hook has one (its environment's, else the default), and
/// none of them is also a webhook secret.
fn hook_secrets(
    targets: &DeployTargets,
    default: Option<WebhookSecrets>,
    by_environment: HashMap<String, WebhookSecrets>,
    webhook: &WebhookSecrets,
) -> Result<HookSecrets, ConfigError> {
    if targets.default_hook.is_some() && default.is_none() {
        return Err(ConfigError::NoHookSecret { hook: "DEPLOY_HOOK_URL".into(), needs: "HOOK_SIGNING_SECRET".into() });
    }
    let mut hooks: Vec<&String> = targets.hooks.keys().collect();
    hooks.sort();
    for env in hooks {
        if default.is_none() && !by_environment.contains_key(env) {
            return Err(ConfigError::NoHookSecret {
                hook: format!("DEPLOY_HOOK_URL_{env}"),
                needs: format!("HOOK_SIGNING_SECRET_{env} or HOOK_SIGNING_SECRET"),
            });
        }
    }
    let secrets = HookSecrets::new(default, by_environment);
    let mut lists: Vec<(String, &WebhookSecrets)> = secrets.lists().collect();
    lists.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some((name, _)) = lists.into_iter().find(|(_, list)| list.shares_with(webhook)) {
        return Err(ConfigError::SharedHookSecret(name));
    }
    Ok(secrets)
}

/// A PEM bundle read once at init (a file in the package, `/var/task/…`, or a layer, `/opt/…`).
fn extra_ca_certs(path: &str) -> Result<ExtraCaCerts, ConfigError> {
    let bad = |reason: String| ConfigError::BadCaBundle { path: path.to_owned(), reason };
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
    ExtraCaCerts::from_pem(&pem).map_err(bad)
}

/// An `https://` URL; `http://` only on a loopback address (local runs and tests), where nothing
/// travels over a network.
fn http_url(name: &str, value: &str) -> Result<String, ConfigError> {
    let url = Url::parse(value).ok().filter(|u| u.host().is_some());
    match url {
        Some(url) if url.scheme() == "https" => Ok(value.to_owned()),
        Some(url) if url.scheme() == "http" && is_loopback(&url) => Ok(value.to_owned()),
        Some(url) if url.scheme() == "http" => Err(ConfigError::NotHttps {
            name: name.to_owned(),
            // Scheme and host only: a path or query can hold a credential.
            shown: format!("http://{}/…", url.host_str().unwrap_or_default()),
        }),
        _ => Err(ConfigError::BadUrl(name.to_owned())),
    }
}

/// Minutes, fractions allowed (see [`crate::repo_config::resolve::minutes`]).
fn minutes(name: &str, raw: &str) -> Result<Duration, ConfigError> {
    raw.trim()
        .parse::<f64>()
        .ok()
        .and_then(crate::repo_config::resolve::minutes)
        .ok_or_else(|| ConfigError::BadMinutes { name: name.to_owned(), value: raw.to_owned() })
}

fn millis(raw: Option<&str>, name: &'static str, default: u64, min: u64, max: u64) -> Result<Duration, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Duration::from_millis(default));
    };
    match raw.parse::<u64>() {
        Ok(ms) if (min..=max).contains(&ms) => Ok(Duration::from_millis(ms)),
        _ => Err(ConfigError::BadMillis { name, value: raw.to_owned(), min, max }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const MINIMAL: &[(&str, &str)] =
        &[("GITHUB_WEBHOOK_SECRET", "whsec-alpha,whsec-beta"), ("GITHUB_TOKEN", "ghp_x"), ("DEPLOYMENTS_TABLE", "t")];

    #[test]
    fn minimal_settings_get_defaults() {
        let c = Config::from_vars(vars(MINIMAL)).unwrap();
        assert_eq!(c.github_api_url, "https://api.github.com");
        assert_eq!(c.rules, DeployRules::default());
        assert!(matches!(&c.github_auth, AuthConfig::Token(t) if t.expose_secret() == "ghp_x"));
        assert_eq!(c.redelivery_max_attempts, 5);
        assert!(c.redeliver_hooks.is_empty());
        assert_eq!(c.delivery_budget, Duration::from_millis(8000));
        assert_eq!(c.deploy_timeout, Duration::from_secs(1800));
        assert_eq!(c.public_url, None);
    }

    #[test]
    fn exactly_one_way_to_authenticate() {
        let base: Vec<_> = vars(MINIMAL).into_iter().filter(|(k, _)| k != "GITHUB_TOKEN").collect();
        let with = |extra: &[(&str, &str)]| {
            let mut v = base.clone();
            v.extend(vars(extra));
            Config::from_vars(v).map(|c| c.github_auth)
        };
        let err = |extra: &[(&str, &str)]| with(extra).unwrap_err().to_string();
        assert!(err(&[]).contains("GITHUB_TOKEN") && err(&[]).contains("GITHUB_APP_ID"));
        assert!(err(&[("GITHUB_APP_ID", "12")]).contains("GITHUB_APP_PRIVATE_KEY"));
        assert!(err(&[("GITHUB_APP_PRIVATE_KEY", "x")]).contains("GITHUB_APP_ID"));
        assert!(
            err(&[("GITHUB_APP_ID", "12"), ("GITHUB_APP_PRIVATE_KEY", "not a key")]).contains("GITHUB_APP_PRIVATE_KEY")
        );
        assert!(err(&[("GITHUB_APP_ID", "twelve"), ("GITHUB_APP_PRIVATE_KEY", "x")]).contains("GITHUB_APP_ID"));
        assert!(
            err(&[("GITHUB_TOKEN", "t"), ("GITHUB_APP_ID", "12"), ("GITHUB_APP_PRIVATE_KEY", "x")])
                .contains("not both")
        );
        let ok = vars(MINIMAL);
        let hooks = |raw: &str| {
            let mut v = ok.clone();
            v.push(("REDELIVER_HOOKS".into(), raw.into()));
            Config::from_vars(v)
        };
        assert_eq!(hooks("octo/app#12, octo/web#13").unwrap().redeliver_hooks.len(), 2);
        assert!(hooks("octo/app").unwrap_err().to_string().contains("REDELIVER_HOOKS"));
    }

    #[test]
    fn each_missing_setting_is_named() {
        for missing in ["GITHUB_WEBHOOK_SECRET", "GITHUB_TOKEN", "DEPLOYMENTS_TABLE"] {
            let v: Vec<_> = vars(MINIMAL).into_iter().filter(|(k, _)| k != missing).collect();
            let err = Config::from_vars(v).unwrap_err().to_string();
            assert!(err.contains(missing), "{err}");
        }
    }

    #[test]
    fn bad_values_are_named() {
        let with = |k: &str, v: &str| {
            let mut all = vars(MINIMAL);
            all.push((k.to_owned(), v.to_owned()));
            Config::from_vars(all).unwrap_err().to_string()
        };
        assert!(with("GITHUB_API_URL", "not a url").contains("GITHUB_API_URL"));
        assert!(with("GITHUB_API_URL", "ftp://x").contains("GITHUB_API_URL"));
        assert!(with("DEPLOY_RULES", "main").contains("DEPLOY_RULES"));
        assert!(with("DEPLOY_HOOK_URL_STAGING", "nope").contains("DEPLOY_HOOK_URL_STAGING"));
        assert!(with("DELIVERY_BUDGET_MS", "20000").contains("DELIVERY_BUDGET_MS"));
        assert!(with("GITHUB_WEBHOOK_SECRET", " , ").contains("GITHUB_WEBHOOK_SECRET"));
        assert!(with("DEPLOY_TIMEOUT_MINUTES", "0").contains("DEPLOY_TIMEOUT_MINUTES"));
        assert!(with("DEPLOY_TIMEOUT_MINUTES_STAGING", "soon").contains("DEPLOY_TIMEOUT_MINUTES_STAGING"));
        assert!(with("PUBLIC_URL", "deploy.example.com").contains("PUBLIC_URL"));
    }

    #[test]
    fn urls_are_https_except_on_loopback_and_errors_never_show_them_whole() {
        let with = |k: &str, v: &str| {
            let mut all = vars(MINIMAL);
            all.extend(vars(&[(k, v), ("HOOK_SIGNING_SECRET", "hooksec")]));
            Config::from_vars(all)
        };
        let slack = "http://hooks.slack.com/services/T0/B0/credential-part";
        for name in ["GITHUB_API_URL", "DEPLOY_HOOK_URL", "DEPLOY_HOOK_URL_STAGING", "PUBLIC_URL", "SLACK_WEBHOOK_URL"]
        {
            let err = with(name, slack).unwrap_err().to_string();
            assert!(err.contains(name) && err.contains("https://"), "{err}");
            assert!(!err.contains("credential-part") && !err.contains("/services"), "{err}");
            assert!(with(name, "https://deploy.example.com/x").is_ok(), "{name}");
            for local in ["http://127.0.0.1:8791/sync", "http://localhost:9000/x", "http://[::1]:8790"] {
                assert!(with(name, local).is_ok(), "{name} {local}");
            }
        }
        let err = with("SLACK_WEBHOOK_URL", "hooks.slack.com/services/T0/B0/credential-part").unwrap_err();
        assert!(!err.to_string().contains("credential-part"), "{err}");
        assert!(
            with("SLACK_WEBHOOK_URL_PROD", "http://10.0.0.1/hook")
                .unwrap_err()
                .to_string()
                .contains("SLACK_WEBHOOK_URL_PROD")
        );
    }

    #[test]
    fn reads_rules_hooks_and_enterprise_urls() {
        let mut v = vars(MINIMAL);
        v.extend(vars(&[
            ("GITHUB_API_URL", "https://ghe.example.com/api/v3/"),
            ("DEPLOY_RULES", "main=production,release/*=staging"),
            ("DEPLOY_HOOK_URL", "https://deploy.example.com/all"),
            ("DEPLOY_HOOK_URL_STAGING", "https://deploy.example.com/staging"),
            ("HOOK_SIGNING_SECRET", "hooksec-all"),
            ("ENVIRONMENT_URL_PRODUCTION", "https://example.com"),
        ]));
        let c = Config::from_vars(v).unwrap();
        assert_eq!(c.github_api_url, "https://ghe.example.com/api/v3");
        assert_eq!(c.rules.rules().len(), 2);
        let staging = crate::domain::Environment::parse("staging").unwrap();
        assert_eq!(c.deploy_targets.hook_for(&staging), Some("https://deploy.example.com/staging"));
        assert_eq!(
            c.deploy_targets.hook_for(&crate::domain::Environment::production()),
            Some("https://deploy.example.com/all")
        );
        assert_eq!(
            c.deploy_targets.environment_url_for(&crate::domain::Environment::production()),
            Some("https://example.com")
        );
    }

    #[test]
    fn extra_ca_certs_are_read_and_checked_at_init() {
        let with = |path: &str| {
            let mut v = vars(MINIMAL);
            v.push(("EXTRA_CA_CERTS_FILE".to_owned(), path.to_owned()));
            Config::from_vars(v)
        };
        assert!(Config::from_vars(vars(MINIMAL)).unwrap().extra_ca_certs.is_empty());
        let bundle = concat!(env!("CARGO_MANIFEST_DIR"), "/src/store/amazon-roots.pem");
        assert_eq!(with(bundle).unwrap().extra_ca_certs.len(), 5);
        for bad in ["/nonexistent/ca.pem", concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")] {
            assert!(with(bad).unwrap_err().to_string().contains("EXTRA_CA_CERTS_FILE"));
        }
    }

    #[test]
    fn hooks_have_secrets_of_their_own_never_the_webhook_secret() {
        let with = |extra: &[(&str, &str)]| {
            let mut v = vars(MINIMAL);
            v.extend(vars(extra));
            Config::from_vars(v)
        };
        let err = |extra: &[(&str, &str)]| with(extra).unwrap_err().to_string();
        assert!(err(&[("DEPLOY_HOOK_URL", "https://h")]).contains("HOOK_SIGNING_SECRET"));
        let e = err(&[("DEPLOY_HOOK_URL_STAGING", "https://h")]);
        assert!(e.contains("HOOK_SIGNING_SECRET_STAGING") && e.contains("DEPLOY_HOOK_URL_STAGING"), "{e}");
        assert!(err(&[("HOOK_SIGNING_SECRET_STAGING", " , ")]).contains("HOOK_SIGNING_SECRET_STAGING"));
        // A hook secret that is also a webhook secret would let the hook forge deliveries.
        for name in ["HOOK_SIGNING_SECRET", "HOOK_SIGNING_SECRET_STAGING"] {
            let e = err(&[
                ("DEPLOY_HOOK_URL", "https://h"),
                ("HOOK_SIGNING_SECRET", "hooksec-1"),
                (name, "new,whsec-beta"),
            ]);
            assert!(e.contains(name) && !e.contains("whsec-beta"), "{e}");
        }

        let c = with(&[
            ("DEPLOY_HOOK_URL_STAGING", "https://h/staging"),
            ("DEPLOY_HOOK_URL_PRODUCTION", "https://h/production"),
            ("HOOK_SIGNING_SECRET", "hooksec-default"),
            ("HOOK_SIGNING_SECRET_STAGING", "hooksec-staging-new,hooksec-staging-old"),
        ])
        .unwrap();
        let staging = crate::domain::Environment::parse("staging").unwrap();
        let production = crate::domain::Environment::production();
        let sign = |env: &crate::domain::Environment| c.hook_secrets.for_environment(env).unwrap().sign(b"{}");
        let expected = |secret: &str| WebhookSecrets::from_list(secret).unwrap().sign(b"{}");
        assert_eq!(sign(&staging), expected("hooksec-staging-new"));
        assert_eq!(sign(&production), expected("hooksec-default"));
        assert!(
            c.hook_secrets
                .for_environment(&staging)
                .unwrap()
                .verify(Some(expected("hooksec-staging-old").as_bytes()), b"{}")
                .is_ok()
        );
        let shown = format!("{c:?}");
        assert!(!shown.contains("hooksec"), "{shown}");
        // No hook, no secret needed; none configured means no callback can verify.
        assert!(Config::from_vars(vars(MINIMAL)).unwrap().hook_secrets.for_environment(&production).is_none());
    }

    #[test]
    fn what_repository_files_may_not_widen() {
        let with = |extra: &[(&str, &str)]| {
            let mut v = vars(MINIMAL);
            v.extend(vars(extra));
            Config::from_vars(v)
        };
        let c =
            with(&[("DEPLOY_HOOK_URL_STAGING", "https://Deploy.Example.com/s"), ("HOOK_SIGNING_SECRET", "h")]).unwrap();
        assert_eq!(c.repo_limits.allowed_hook_hosts, ["deploy.example.com"], "default: the stack's own hook hosts");
        assert_eq!(ROLES[c.repo_limits.permission_floor], "write", "default: the weakest of CHATOPS_PERMISSIONS");
        assert_eq!(c.config_recheck, Duration::from_secs(300));
        let c = with(&[
            ("PINNED_SETTINGS", "commands.permissions, environments.*.action"),
            ("ALLOWED_HOOK_HOSTS", "*.deploys.example.com,hooks.example.org"),
            ("COMMAND_PERMISSION_FLOOR", "maintain"),
            ("CONFIG_RECHECK_SECONDS", "60"),
        ])
        .unwrap();
        assert_eq!(c.repo_limits.pins.len(), 2);
        assert_eq!(c.repo_limits.allowed_hook_hosts, ["*.deploys.example.com", "hooks.example.org"]);
        assert_eq!(ROLES[c.repo_limits.permission_floor], "maintain");
        assert_eq!(c.config_recheck, Duration::from_secs(60));
        for (name, bad) in [
            ("PINNED_SETTINGS", "environments.*.colour"),
            ("COMMAND_PERMISSION_FLOOR", "owner"),
            ("ALLOWED_HOOK_HOSTS", "https://x.example.com/"),
            ("CONFIG_RECHECK_SECONDS", "-1"),
        ] {
            let err = with(&[(name, bad)]).unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let c = Config::from_vars(vars(MINIMAL)).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("ghp_x") && !shown.contains("whsec-"), "{shown}");
    }
}
