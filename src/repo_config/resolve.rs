//! Layers into settings: the stack's settings first, then the organisation's file, then what the
//! repository `_extends` (outermost first), then the repository's file. A later layer overrides
//! an earlier one key by key; lists are replaced, not merged. What the operator pinned, or did
//! not allow, is an error in the file that tries it, never silently ignored.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use reqwest::Url;

use super::parse::{ConfigIssue, locate, nearest};
use super::schema::{ActionFile, EnvironmentFile, RepoFile};
use super::settings::{ActionSettings, CommandSettings, EnvironmentSettings, RepoSettings, SecretName, SourceFile};
use crate::domain::rules::BranchPattern;
use crate::domain::types::Environment;

/// Repository roles, weakest first.
pub const ROLES: [&str; 5] = ["read", "triage", "write", "maintain", "admin"];

/// Every key a file can set, as pin patterns name them (`*` for an environment's name). Kept
/// equal to the JSON Schema's by a test.
pub const TOP_KEYS: [&str; 3] = ["_extends", "environments", "commands"];
pub const ENVIRONMENT_KEYS: [&str; 9] = [
    "branches",
    "production",
    "environment_url",
    "timeout_minutes",
    "required_contexts",
    "checks_wait_minutes",
    "branch_deploys",
    "action",
    "slack",
];
pub const COMMAND_KEYS: [&str; 2] = ["permissions", "sha_deploys"];

/// The stack's settings, as the base of every repository's, and what the operator allows.
#[derive(Clone, Debug)]
pub struct StackDefaults {
    /// The environments the stack's settings name (`DEPLOY_RULES`, `BRANCH_DEPLOY_ENVIRONMENTS`,
    /// `DEPLOY_HOOK_URL_<ENV>`), in rule order.
    pub environments: Vec<EnvironmentSettings>,
    pub commands: CommandSettings,
    /// `DEPLOY_HOOK_URL`.
    pub default_hook: Option<String>,
    /// `DEPLOY_HOOK_URL_<SUFFIX>`.
    pub hooks: HashMap<String, String>,
    pub default_environment_url: Option<String>,
    pub environment_urls: HashMap<String, String>,
    pub default_timeout: Duration,
    pub timeouts: HashMap<String, Duration>,
    pub required_contexts: HashMap<String, Vec<String>>,
    pub checks_wait: Duration,
    /// Whether `HOOK_SIGNING_SECRET` is set, and the suffixes of `HOOK_SIGNING_SECRET_<NAME>`.
    pub default_hook_secret: bool,
    pub hook_secret_names: HashSet<String>,
    /// Whether `SLACK_WEBHOOK_URL` is set, and the suffixes of `SLACK_WEBHOOK_URL_<NAME>`.
    pub default_slack: bool,
    pub slack_names: HashSet<String>,
    pub limits: OperatorLimits,
    /// Offline checks (`check-config` without the stack's settings): any secret name is taken
    /// as held, since the stack's are unknown there.
    pub unchecked_secret_names: bool,
}

/// What no repository file can widen.
#[derive(Clone, Debug, Default)]
pub struct OperatorLimits {
    /// `PINNED_SETTINGS`: key patterns (`commands.permissions`, `environments.*.action`,
    /// `environments.production`) a file may not set.
    pub pins: Vec<Vec<String>>,
    /// `ALLOWED_HOOK_HOSTS` (default: the hosts of the stack's own hooks): `host` or `*.domain`.
    pub allowed_hook_hosts: Vec<String>,
    /// `COMMAND_PERMISSION_FLOOR`: the weakest role a file may let run commands (index in [`ROLES`]).
    pub permission_floor: usize,
}

impl StackDefaults {
    /// What the stack says for an environment a file names: its `_<SUFFIX>` settings, else the
    /// unsuffixed ones.
    pub fn environment(&self, name: &Environment) -> EnvironmentSettings {
        if let Some(known) = self.environments.iter().find(|e| &e.name == name) {
            return known.clone();
        }
        let suffix = name.env_var_suffix();
        let action = match self.hooks.get(&suffix).or(self.default_hook.as_ref()) {
            Some(url) => ActionSettings::Hook { url: url.clone(), secret: self.hook_secret_for(&suffix) },
            None => ActionSettings::Succeed,
        };
        EnvironmentSettings {
            name: name.clone(),
            branches: Vec::new(),
            production: name.is_production(),
            environment_url: self.environment_urls.get(&suffix).or(self.default_environment_url.as_ref()).cloned(),
            timeout: self.timeouts.get(&suffix).copied().unwrap_or(self.default_timeout),
            required_contexts: self.required_contexts.get(&suffix).cloned(),
            checks_wait: self.checks_wait,
            branch_deploys: false,
            action,
            slack: if self.slack_names.contains(&suffix) {
                Some(SecretName::Named(suffix))
            } else {
                self.default_slack.then_some(SecretName::Default)
            },
        }
    }

    /// `name`'s settings in `environments`, added there (with the stack's settings for it) when
    /// missing.
    pub fn entry<'a>(
        &self,
        environments: &'a mut Vec<EnvironmentSettings>,
        name: &Environment,
    ) -> &'a mut EnvironmentSettings {
        let index = match environments.iter().position(|e| &e.name == name) {
            Some(index) => index,
            None => {
                environments.push(self.environment(name));
                environments.len() - 1
            }
        };
        &mut environments[index]
    }

    /// `HOOK_SIGNING_SECRET_<SUFFIX>` if the stack holds it, else `HOOK_SIGNING_SECRET`.
    pub fn hook_secret_for(&self, suffix: &str) -> SecretName {
        if self.hook_secret_names.contains(suffix) { SecretName::Named(suffix.to_owned()) } else { SecretName::Default }
    }

    /// The settings of a repository with no file.
    pub fn settings(&self) -> RepoSettings {
        RepoSettings {
            environments: self.environments.clone(),
            commands: self.commands.clone(),
            sources: Vec::new(),
            broken: None,
        }
    }
}

/// One file to apply: where it is, its text (for line numbers), what it says.
#[derive(Clone, Debug)]
pub struct Layer {
    pub repo: String,
    pub blob: String,
    pub label: String,
    pub source: String,
    pub file: RepoFile,
}

/// Applies `layers` (outermost first) over the stack's settings. Every problem of every layer is
/// reported, not only the first.
pub fn resolve(stack: &StackDefaults, layers: &[Layer]) -> Result<RepoSettings, Vec<ConfigIssue>> {
    let mut settings = stack.settings();
    let mut issues = Vec::new();
    for layer in layers {
        let first = issues.len();
        apply(stack, layer, &mut settings, &mut issues);
        // In the file's order, as a person reads it.
        issues[first..].sort_by_key(|i| (i.line, i.column));
        settings.sources.push(SourceFile { repo: layer.repo.clone(), blob: layer.blob.clone() });
    }
    if issues.is_empty() { Ok(settings) } else { Err(issues) }
}

fn apply(stack: &StackDefaults, layer: &Layer, settings: &mut RepoSettings, issues: &mut Vec<ConfigIssue>) {
    let mut issue = |path: &[&str], message: String| {
        let (line, column) = locate(&layer.source, path);
        issues.push(ConfigIssue { file: layer.label.clone(), line, column, key: Some(path.join(".")), message });
    };
    for path in set_keys(&layer.file) {
        let segments: Vec<&str> = path.iter().map(String::as_str).collect();
        if let Some(pin) = stack.limits.pins.iter().find(|pin| pin_covers(pin, &segments)) {
            issue(
                &segments,
                format!("this setting is pinned by the stack's operator (PINNED_SETTINGS: {})", pin.join(".")),
            );
        }
    }
    for (name, env_file) in layer.file.environments.iter().flat_map(|m| m.iter()) {
        let environment = match Environment::parse(name) {
            // Exactly as written: `"production "` would pass a pin on `production` and then
            // configure it.
            Ok(environment) if environment.as_str() == name => environment,
            Ok(_) => {
                issue(&["environments", name], "an environment name has no leading or trailing spaces".to_owned());
                continue;
            }
            Err(e) => {
                issue(&["environments", name], format!("not a valid environment name: {e}"));
                continue;
            }
        };
        // GitHub's environment names ignore case: `Production` beside `production` is one
        // environment on GitHub and two here.
        if let Some(other) =
            settings.environments.iter().find(|e| e.name != environment && e.name.as_str().eq_ignore_ascii_case(name))
        {
            issue(
                &["environments", name],
                format!("`{name}` differs from `{}` only by case: use one spelling", other.name),
            );
            continue;
        }
        let env = stack.entry(&mut settings.environments, &environment);
        apply_environment(stack, name, env_file, env, &mut issue);
    }
    if let Some(commands) = &layer.file.commands {
        if let Some(permissions) = &commands.permissions {
            let mut roles = Vec::new();
            for p in permissions {
                let role = p.trim().to_ascii_lowercase();
                match ROLES.iter().position(|r| *r == role) {
                    None => {
                        let hint = nearest(&role, &ROLES).map(|n| format!("; did you mean `{n}`?")).unwrap_or_default();
                        issue(
                            &["commands", "permissions"],
                            format!("`{p}` is not a role: expected one of {}{hint}", ROLES.join(", ")),
                        );
                    }
                    Some(i) if i < stack.limits.permission_floor => issue(
                        &["commands", "permissions"],
                        format!(
                            "`{role}` is weaker than the stack allows to run commands (COMMAND_PERMISSION_FLOOR={})",
                            ROLES[stack.limits.permission_floor]
                        ),
                    ),
                    Some(_) => roles.push(role),
                }
            }
            if permissions.is_empty() {
                issue(&["commands", "permissions"], "name at least one role (`[admin]` for admins only)".to_owned());
            }
            settings.commands.permissions = roles;
        }
        if let Some(sha) = commands.sha_deploys {
            settings.commands.sha_deploys = sha;
        }
    }
}

fn apply_environment(
    stack: &StackDefaults,
    name: &str,
    file: &EnvironmentFile,
    env: &mut EnvironmentSettings,
    issue: &mut impl FnMut(&[&str], String),
) {
    let at = |key: &'static str| ["environments", name, key];
    if let Some(branches) = &file.branches {
        env.branches.clear();
        for raw in branches {
            let raw = raw.trim();
            if raw.is_empty() || raw.contains(char::is_whitespace) {
                issue(&at("branches"), format!("`{raw}` is not a branch name or pattern"));
            } else if raw == "@default" {
                env.branches.push(BranchPattern::DefaultBranch);
            } else {
                env.branches.push(BranchPattern::Glob(raw.strip_prefix("refs/heads/").unwrap_or(raw).to_owned()));
            }
        }
    }
    if let Some(production) = file.production {
        env.production = production;
    }
    if let Some(url) = &file.environment_url {
        match Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "https" | "http") && u.host().is_some() => {
                env.environment_url = Some(url.clone())
            }
            _ => issue(&at("environment_url"), format!("`{url}` is not an http(s) URL")),
        }
    }
    if let Some(m) = file.timeout_minutes {
        match minutes(m) {
            Some(d) => env.timeout = d,
            None => issue(&at("timeout_minutes"), format!("{m} is not between 0.05 and 1440 minutes")),
        }
    }
    if let Some(contexts) = &file.required_contexts {
        env.required_contexts = Some(contexts.iter().map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()).collect());
    }
    if let Some(m) = file.checks_wait_minutes {
        match minutes(m) {
            Some(d) => env.checks_wait = d,
            None => issue(&at("checks_wait_minutes"), format!("{m} is not between 0.05 and 1440 minutes")),
        }
    }
    if let Some(b) = file.branch_deploys {
        env.branch_deploys = b;
    }
    match &file.action {
        None => {}
        Some(ActionFile::None) => env.action = ActionSettings::Succeed,
        Some(ActionFile::Hook(hook)) => {
            let url_ok = match hook_url_problem(&hook.url, &stack.limits.allowed_hook_hosts) {
                Some(problem) => {
                    issue(&["environments", name, "action", "hook", "url"], problem);
                    false
                }
                None => true,
            };
            let secret = match &hook.secret {
                Some(given) => {
                    let suffix = SecretName::suffix_of(given);
                    if stack.hook_secret_names.contains(&suffix) || stack.unchecked_secret_names {
                        Some(SecretName::Named(suffix))
                    } else {
                        issue(
                            &["environments", name, "action", "hook", "secret"],
                            format!(
                                "the stack holds no secret `{given}`: its operator sets HOOK_SIGNING_SECRET_{suffix} (the file names a secret, never holds one)"
                            ),
                        );
                        None
                    }
                }
                None => {
                    let secret = stack.hook_secret_for(&env.name.env_var_suffix());
                    if secret == SecretName::Default && !stack.default_hook_secret {
                        issue(
                            &["environments", name, "action", "hook"],
                            "a hook needs a signing secret: name one the stack holds (`secret: <name>`)".to_owned(),
                        );
                        None
                    } else {
                        Some(secret)
                    }
                }
            };
            if let (true, Some(secret)) = (url_ok, secret) {
                env.action = ActionSettings::Hook { url: hook.url.clone(), secret };
            }
        }
    }
    if let Some(slack) = &file.slack {
        if slack.enabled == Some(false) {
            env.slack = None;
        } else if let Some(given) = &slack.secret {
            let suffix = SecretName::suffix_of(given);
            if stack.slack_names.contains(&suffix) || stack.unchecked_secret_names {
                env.slack = Some(SecretName::Named(suffix));
            } else {
                issue(
                    &["environments", name, "slack", "secret"],
                    format!("the stack holds no Slack webhook `{given}`: its operator sets SLACK_WEBHOOK_URL_{suffix}"),
                );
            }
        } else if slack.enabled == Some(true) && env.slack.is_none() {
            if stack.default_slack {
                env.slack = Some(SecretName::Default);
            } else {
                issue(
                    &["environments", name, "slack"],
                    "the stack holds no SLACK_WEBHOOK_URL: name one it holds (`secret: <name>`)".to_owned(),
                );
            }
        }
    }
}

/// Why a hook URL from a file cannot be called, if it cannot.
fn hook_url_problem(url: &str, allowed: &[String]) -> Option<String> {
    let Some(parsed) = Url::parse(url).ok().filter(|u| u.host_str().is_some()) else {
        return Some(format!("`{url}` is not a URL"));
    };
    let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
    if parsed.scheme() != "https" && !(parsed.scheme() == "http" && is_loopback(&parsed)) {
        return Some("a hook URL must be https://".to_owned());
    }
    let allowed_host = allowed.iter().any(|pattern| {
        pattern == "*"
            || match pattern.strip_prefix("*.") {
                Some(domain) => host.ends_with(&format!(".{domain}")),
                None => *pattern == host,
            }
    });
    if allowed_host {
        None
    } else if allowed.is_empty() {
        Some("the stack's operator allows no hook hosts for repository files (ALLOWED_HOOK_HOSTS)".to_owned())
    } else {
        Some(format!("{host} is not a hook host the stack allows (ALLOWED_HOOK_HOSTS: {})", allowed.join(", ")))
    }
}

/// Minutes, fractions allowed, from 0.05 to 1440 (`0.1` is 6 s: short timeouts for local runs
/// and tests): a stack setting's or a file's.
pub fn minutes(m: f64) -> Option<Duration> {
    (0.05..=1440.0).contains(&m).then(|| Duration::from_millis((m * 60_000.0).round() as u64))
}

/// A loopback host (`localhost`, `127.0.0.1`, `[::1]`): the only one where `http://` is allowed,
/// since nothing travels over a network.
pub fn is_loopback(url: &Url) -> bool {
    match url.host_str() {
        Some(host) if host.eq_ignore_ascii_case("localhost") => true,
        // IPv6 hosts come bracketed (`[::1]`).
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// The keys a file sets, as paths (`environments.staging.action`).
fn set_keys(file: &RepoFile) -> Vec<Vec<String>> {
    let mut keys = Vec::new();
    let key = |parts: &[&str]| parts.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>();
    if file.extends.is_some() {
        keys.push(key(&["_extends"]));
    }
    for (name, env) in file.environments.iter().flat_map(|m| m.iter()) {
        let value = serde_json::to_value(env).unwrap_or_default();
        let set: Vec<&String> = value.as_object().map(|o| o.keys().collect()).unwrap_or_default();
        if set.is_empty() {
            keys.push(key(&["environments", name]));
        }
        for field in set {
            keys.push(key(&["environments", name, field]));
        }
    }
    if let Some(commands) = &file.commands {
        if commands.permissions.is_some() {
            keys.push(key(&["commands", "permissions"]));
        }
        if commands.sha_deploys.is_some() {
            keys.push(key(&["commands", "sha_deploys"]));
        }
    }
    keys
}

/// A pin covers a key when each of its segments matches the key's (`*` matches any): a shorter
/// pin covers the whole subtree.
fn pin_covers(pin: &[String], key: &[&str]) -> bool {
    pin.len() <= key.len() && pin.iter().zip(key).all(|(p, k)| p == "*" || p == k)
}

/// Reads `PINNED_SETTINGS` patterns, each checked against the keys a file can have.
pub fn parse_pins(raw: &str) -> Result<Vec<Vec<String>>, String> {
    let mut pins = Vec::new();
    for pattern in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let segments: Vec<String> = pattern.split('.').map(str::to_owned).collect();
        let known = match segments.as_slice() {
            [top] => TOP_KEYS.contains(&top.as_str()),
            [top, _] if top == "environments" => true,
            [top, _, field] if top == "environments" => ENVIRONMENT_KEYS.contains(&field.as_str()),
            [top, field] if top == "commands" => COMMAND_KEYS.contains(&field.as_str()),
            _ => false,
        };
        if !known {
            return Err(pattern.to_owned());
        }
        pins.push(segments);
    }
    Ok(pins)
}
