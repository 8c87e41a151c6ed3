//! The repository's configuration for a delivery: its `.github/deploy-webhook.yml`, the
//! organisation's, and what it `_extends`, read through the GitHub port and resolved over the
//! stack's settings (pure: [`crate::repo_config`]). Per warm instance, files are kept with their
//! blob sha and read again at most every `config_recheck`; a push that touches one makes this
//! instance read it at once. An invalid file never half-applies: the last valid configuration
//! (in the store) stays in force, and the repository is told by a check run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use super::deadline::Deadline;
use super::ports::{
    Clock, DeployAction, EnvKey, GitHub, GitHubError, NewCheckRun, RepoBlob, StackTargets, Store, StoredConfigFile,
    StoredRepoConfig,
};
use super::service::{Outcome, Service, ServiceError, ServiceSettings};
use super::types::{RepoFullName, Sha};
use crate::repo_config::dry_run;
use crate::repo_config::parse::too_large;
use crate::repo_config::{
    BrokenConfig, CONFIG_PATH, ConfigIssue, EnvironmentSettings, Layer, MAX_FILE_BYTES, RepoFile, RepoSettings,
    StackDefaults, parse, resolve,
};

/// How many `_extends` a file may chain.
pub const MAX_EXTENDS: usize = 3;
/// Errors kept in the store and shown by `.status` (the check run lists them all, up to 50 lines).
const MAX_KEPT_ERRORS: usize = 20;
/// Parsed files kept per instance.
const MAX_PARSED: usize = 2_000;
/// The name of the check run on commits and pull requests.
pub const CHECK_NAME: &str = "deploy-webhook/config";

/// A repository's configuration for this delivery.
#[derive(Clone, Debug, PartialEq)]
pub enum RepoConfig {
    Settings(Arc<RepoSettings>),
    /// No valid configuration was ever read: nothing deploys, for this reason.
    Refused(String),
}

/// A default branch's file (`None`: there is none), and when it was read (Unix ms).
type CachedFile = (Option<Arc<RepoBlob>>, u64);
/// `(repository, blob sha or "")` of every file a configuration was resolved from.
type FilesKey = Vec<(String, String)>;

type Parsed = Result<RepoFile, Vec<ConfigIssue>>;

/// What this warm instance has read.
#[derive(Default)]
pub struct ConfigCache {
    /// The default branch's file of each repository.
    files: Mutex<HashMap<String, CachedFile>>,
    /// Each repository's configuration, keyed by the files it was resolved from.
    resolved: Mutex<HashMap<String, (FilesKey, RepoConfig)>>,
    /// Each file parsed, by its label and blob sha: a warm delivery parses nothing.
    parsed: Mutex<HashMap<(String, String), Parsed>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ConfigCache {
    fn forget_file(&self, repo: &str) {
        lock(&self.files).remove(repo);
    }
}

/// The files of one configuration, found by following `_extends`, with their problems.
struct Gathered {
    layers: Vec<Layer>,
    issues: Vec<ConfigIssue>,
    /// (repo, blob sha or "") of every file consulted: the cache key.
    key: FilesKey,
}

impl Gathered {
    /// The settings the gathered files make, or every problem in them.
    fn resolve(&self, stack: &StackDefaults) -> Result<RepoSettings, Vec<ConfigIssue>> {
        if self.issues.is_empty() { resolve(stack, &self.layers) } else { Err(self.issues.clone()) }
    }
}

/// The stack's settings as the base layer: `ServiceSettings` and what the deploy action holds.
pub fn stack_defaults(settings: &ServiceSettings, targets: StackTargets) -> StackDefaults {
    let mut stack = StackDefaults {
        environments: Vec::new(),
        commands: crate::repo_config::CommandSettings {
            permissions: settings.chatops_permissions.clone(),
            sha_deploys: settings.allow_sha_deployments,
        },
        default_hook: targets.default_hook,
        hooks: targets.hooks,
        default_environment_url: targets.default_environment_url,
        environment_urls: targets.environment_urls,
        default_timeout: settings.run_timeout,
        timeouts: settings.run_timeouts.clone(),
        required_contexts: settings.required_contexts.clone(),
        checks_wait: settings.checks_wait,
        default_hook_secret: targets.default_hook_secret,
        hook_secret_names: targets.hook_secret_names,
        default_slack: targets.default_slack,
        slack_names: targets.slack_names,
        limits: settings.limits.clone(),
        unchecked_secret_names: false,
    };
    let mut environments: Vec<EnvironmentSettings> = Vec::new();
    for rule in settings.rules.rules() {
        stack.entry(&mut environments, &rule.environment).branches.push(rule.pattern.clone());
    }
    let mut branch_deploys: Vec<_> = settings.branch_deploy_environments.iter().cloned().collect();
    branch_deploys.sort();
    for name in branch_deploys {
        stack.entry(&mut environments, &name).branch_deploys = true;
    }
    // An environment managed only through its own `DEPLOY_HOOK_URL_<SUFFIX>` is the suffix
    // lower-cased: one name, never several spellings sharing one hook.
    let named: std::collections::HashSet<String> = environments.iter().map(|e| e.name.env_var_suffix()).collect();
    let mut hook_only: Vec<&String> = stack.hooks.keys().filter(|s| !named.contains(*s)).collect();
    hook_only.sort();
    for suffix in hook_only {
        if let Ok(name) = crate::domain::types::Environment::parse(&suffix.to_ascii_lowercase()) {
            environments.push(stack.environment(&name));
        }
    }
    stack.environments = environments;
    stack
}

impl<S: Store, G: GitHub, D: DeployAction, C: Clock> Service<S, G, D, C> {
    /// The repository's configuration: from this instance's cache when it is fresh (no call),
    /// else read again. GitHub unreachable with nothing read yet is an error (a 5xx: the
    /// delivery comes again), never a deploy with settings it was not meant to use.
    pub async fn repo_config(&self, repo: &RepoFullName, deadline: Deadline) -> Result<RepoConfig, ServiceError> {
        if let Some(config) = self.fresh_config(repo) {
            return Ok(config);
        }
        let gathered = self.gather(repo, None, deadline).await?;
        if let Some((key, cached)) = lock(&self.config_cache.resolved).get(repo.as_str())
            && *key == gathered.key
        {
            return Ok(cached.clone());
        }
        Ok(self.settle(repo, gathered, None).await?.0)
    }

    /// The configuration this instance resolved for `repo`, while every file it came from is
    /// fresh in the cache with the same blob: the warm path, with no file cloned or parsed.
    fn fresh_config(&self, repo: &RepoFullName) -> Option<RepoConfig> {
        let now = self.clock.now_ms();
        let recheck = self.settings.config_recheck.as_millis() as u64;
        let resolved = lock(&self.config_cache.resolved);
        let (key, config) = resolved.get(repo.as_str())?;
        let files = lock(&self.config_cache.files);
        let fresh = key.iter().all(|(name, sha)| {
            files.get(name).is_some_and(|(blob, read_at)| {
                now.saturating_sub(*read_at) < recheck && blob.as_ref().map_or("", |b| b.sha.as_str()) == sha
            })
        });
        fresh.then(|| config.clone())
    }

    /// Resolves what was gathered: valid → in force (and kept in the store when it changed);
    /// invalid → the last valid one stays in force, marked broken (`commit`: the push that broke
    /// it, when known). Also answers the problems found (none when valid).
    async fn settle(
        &self,
        repo: &RepoFullName,
        gathered: Gathered,
        commit: Option<&Sha>,
    ) -> Result<(RepoConfig, Vec<ConfigIssue>), ServiceError> {
        let resolved = gathered.resolve(&self.stack);
        let mut problems = Vec::new();
        let stored = self.store.load_repo_config(repo).await?;
        let config = match resolved {
            Ok(settings) => {
                let files: Vec<StoredConfigFile> = gathered
                    .layers
                    .iter()
                    .map(|l| StoredConfigFile { repo: l.repo.clone(), blob: l.blob.clone(), text: l.source.clone() })
                    .collect();
                let wanted = StoredRepoConfig { valid: true, files, broken: None };
                if stored.state != wanted {
                    self.save_config(repo, &wanted, stored.version).await?;
                }
                RepoConfig::Settings(Arc::new(settings))
            }
            Err(issues) => {
                problems.clone_from(&issues);
                let own_blob = gathered.key.first().map(|(_, blob)| blob.clone()).unwrap_or_default();
                let broken = BrokenConfig {
                    commit: commit.map(|c| c.as_str().to_owned()),
                    blob: own_blob,
                    // Enough to act on, and the item stays far below DynamoDB's 400 KB.
                    errors: issues.iter().take(MAX_KEPT_ERRORS).map(ToString::to_string).collect(),
                };
                warn!(%repo, errors = issues.len(), "the repository's configuration is invalid; the last valid one stays in force");
                let last_valid = self.last_valid(&stored.state);
                let keep_commit = stored.state.broken.as_ref().filter(|b| b.blob == broken.blob && commit.is_none());
                let broken = match keep_commit {
                    Some(known) => known.clone(),
                    None => broken,
                };
                if stored.state.broken.as_ref() != Some(&broken) {
                    let wanted = StoredRepoConfig { broken: Some(broken.clone()), ..stored.state.clone() };
                    self.save_config(repo, &wanted, stored.version).await?;
                }
                match last_valid {
                    Some(mut settings) => {
                        settings.broken = Some(broken);
                        RepoConfig::Settings(Arc::new(settings))
                    }
                    None => RepoConfig::Refused(format!(
                        "no valid configuration: {} ({} problem{} in all; see the check run {CHECK_NAME})",
                        issues.first().map(ToString::to_string).unwrap_or_default(),
                        issues.len(),
                        if issues.len() == 1 { "" } else { "s" }
                    )),
                }
            }
        };
        lock(&self.config_cache.resolved).insert(repo.as_str().to_owned(), (gathered.key, config.clone()));
        Ok((config, problems))
    }

    /// Saves what is kept of the configuration; a concurrent writer's newer record wins.
    async fn save_config(
        &self,
        repo: &RepoFullName,
        wanted: &StoredRepoConfig,
        expected: u64,
    ) -> Result<(), ServiceError> {
        if let Err(newer) = self.store.save_repo_config(repo, wanted, expected).await? {
            info!(%repo, version = newer.version, "another instance recorded the configuration first");
        }
        Ok(())
    }

    /// The last valid configuration, re-resolved over today's stack settings.
    fn last_valid(&self, stored: &StoredRepoConfig) -> Option<RepoSettings> {
        if !stored.valid {
            return None;
        }
        let layers: Option<Vec<Layer>> = stored
            .files
            .iter()
            .map(|f| {
                let label = format!("{}:{CONFIG_PATH}", f.repo);
                let file = parse(&label, &f.text).ok()?;
                Some(Layer { repo: f.repo.clone(), blob: f.blob.clone(), label, source: f.text.clone(), file })
            })
            .collect();
        resolve(&self.stack, &layers?).ok()
    }

    /// The environment's settings for the run engine: this instance's resolved configuration of
    /// the repository (every entry point resolves it before driving a run), else the stack's.
    pub(crate) fn environment_settings(&self, key: &EnvKey) -> EnvironmentSettings {
        self.with_environment_settings(key, EnvironmentSettings::clone)
    }

    /// `read` applied to those settings, without copying them (the run engine asks for its
    /// timeout at every write).
    pub(crate) fn with_environment_settings<T>(&self, key: &EnvKey, read: impl FnOnce(&EnvironmentSettings) -> T) -> T {
        if let Some((_, RepoConfig::Settings(settings))) = lock(&self.config_cache.resolved).get(key.repo.as_str())
            && let Some(env) = settings.environment(&key.environment)
        {
            return read(env);
        }
        read(&self.stack.environment(&key.environment))
    }

    /// The name of the secret that signs `environment`'s hook calls and callbacks in the
    /// repository's settings (`None`: it has no hook).
    pub async fn hook_secret_of(
        &self,
        repo: &RepoFullName,
        environment: &crate::domain::Environment,
        deadline: Deadline,
    ) -> Result<Option<crate::repo_config::SecretName>, ServiceError> {
        if let RepoConfig::Refused(_) = self.repo_config(repo, deadline).await? {
            return Ok(None);
        }
        let key = EnvKey { repo: repo.clone(), environment: environment.clone() };
        Ok(match self.environment_settings(&key).action {
            crate::repo_config::ActionSettings::Hook { secret, .. } => Some(secret),
            crate::repo_config::ActionSettings::Succeed => None,
        })
    }

    /// How long a merge into `environment` waits for its pending required checks.
    pub(crate) fn checks_wait_for(
        &self,
        repo: &RepoFullName,
        environment: &crate::domain::Environment,
    ) -> std::time::Duration {
        let key = EnvKey { repo: repo.clone(), environment: environment.clone() };
        self.with_environment_settings(&key, |e| e.checks_wait)
    }

    /// The default branch's file of `repo`, from the cache while fresh. A failed read with a
    /// stale copy keeps the copy (logged); with none, the error.
    async fn default_file(&self, repo: &str, deadline: Deadline) -> Result<Option<Arc<RepoBlob>>, ServiceError> {
        let now = self.clock.now_ms();
        let recheck = self.settings.config_recheck.as_millis() as u64;
        let cached = lock(&self.config_cache.files).get(repo).cloned();
        if let Some((blob, read_at)) = &cached
            && now.saturating_sub(*read_at) < recheck
        {
            return Ok(blob.clone());
        }
        let Ok(name) = RepoFullName::parse(repo) else {
            return Ok(None);
        };
        match self.github.get_file(&name, CONFIG_PATH, None, deadline).await {
            Ok(blob) => {
                let blob = blob.map(Arc::new);
                lock(&self.config_cache.files).insert(repo.to_owned(), (blob.clone(), now));
                Ok(blob)
            }
            Err(err @ GitHubError::Unavailable(_)) => match cached {
                Some((blob, _)) => {
                    warn!(%repo, error = %err, "could not read the configuration again; keeping the copy read before");
                    Ok(blob)
                }
                None => Err(err.into()),
            },
            Err(err) => Err(err.into()),
        }
    }

    /// The layers of `repo`'s configuration: the organisation's file, then what the file
    /// `_extends` (outermost first), then the file itself (`own`: the default branch's, or a
    /// pull request's proposal).
    async fn gather(
        &self,
        repo: &RepoFullName,
        own: Option<Option<Arc<RepoBlob>>>,
        deadline: Deadline,
    ) -> Result<Gathered, ServiceError> {
        let own = match own {
            Some(own) => own,
            None => self.default_file(repo.as_str(), deadline).await?,
        };
        let mut issues = Vec::new();
        let mut chain: Vec<Layer> = Vec::new();
        let mut key: Vec<(String, String)> = Vec::new();
        let owner = repo.owner().to_owned();
        let mut next: Option<(String, Option<Arc<RepoBlob>>)> = Some((repo.as_str().to_owned(), own));
        let mut depth = 0;
        while let Some((name, blob)) = next.take() {
            key.push((name.clone(), blob.as_ref().map(|b| b.sha.clone()).unwrap_or_default()));
            let Some(blob) = blob else {
                if depth > 0 {
                    issues.push(ConfigIssue {
                        file: chain.last().map(|l| l.label.clone()).unwrap_or_default(),
                        line: None,
                        column: None,
                        key: Some("_extends".to_owned()),
                        message: format!("{name} has no {CONFIG_PATH} this installation can read"),
                    });
                }
                break;
            };
            let label = format!("{name}:{CONFIG_PATH}");
            let file = match self.parse_once(&label, &blob) {
                Ok(file) => file,
                Err(mut problems) => {
                    issues.append(&mut problems);
                    break;
                }
            };
            let extends = file.extends.clone();
            chain.push(Layer {
                repo: name.clone(),
                blob: blob.sha.clone(),
                label: label.clone(),
                source: blob.text.clone(),
                file,
            });
            let Some(target) = extends else { break };
            let target = if target.contains('/') { target } else { format!("{owner}/{target}") };
            let same_owner = target.split('/').next().is_some_and(|o| o.eq_ignore_ascii_case(&owner));
            let problem = if RepoFullName::parse(&target).is_err() {
                Some(format!("`{target}` is not a repository"))
            } else if !same_owner {
                // Another owner's file is another tenant's: never read on this one's behalf.
                Some(format!("`{target}` belongs to another owner: only {owner}'s repositories can be extended"))
            } else if key.iter().any(|(seen, _)| seen.eq_ignore_ascii_case(&target)) {
                Some(format!("`{target}` is already in the chain: a cycle"))
            } else if depth + 1 > MAX_EXTENDS {
                Some(format!("at most {MAX_EXTENDS} files can be chained with _extends"))
            } else {
                None
            };
            if let Some(message) = problem {
                let (line, column) = crate::repo_config::parse::locate(&blob.text, &["_extends"]);
                issues.push(ConfigIssue { file: label, line, column, key: Some("_extends".to_owned()), message });
                break;
            }
            depth += 1;
            let blob = self.default_file(&target, deadline).await?;
            next = Some((target, blob));
        }
        chain.reverse();
        // The organisation's defaults, under everything (unless this is that repository, or the
        // chain already holds it).
        let org = format!("{owner}/.github");
        if !repo.as_str().eq_ignore_ascii_case(&org) && !chain.iter().any(|l| l.repo.eq_ignore_ascii_case(&org)) {
            let blob = self.default_file(&org, deadline).await?;
            key.push((org.clone(), blob.as_ref().map(|b| b.sha.clone()).unwrap_or_default()));
            if let Some(blob) = blob {
                let label = format!("{org}:{CONFIG_PATH}");
                match self.parse_once(&label, &blob) {
                    Ok(file) if file.extends.is_none() => chain.insert(
                        0,
                        Layer { repo: org.clone(), blob: blob.sha.clone(), label, source: blob.text.clone(), file },
                    ),
                    Ok(_) => issues.push(ConfigIssue {
                        file: label,
                        line: None,
                        column: None,
                        key: Some("_extends".to_owned()),
                        message: "the organisation's defaults cannot extend another file".to_owned(),
                    }),
                    Err(mut problems) => issues.append(&mut problems),
                }
            }
        }
        Ok(Gathered { layers: chain, issues, key })
    }

    /// `blob` parsed, once per instance. A file over the cap was read without its text (the
    /// client leaves it out), so it is refused by its size.
    fn parse_once(&self, label: &str, blob: &RepoBlob) -> Parsed {
        if blob.size > MAX_FILE_BYTES as u64 {
            return Err(vec![too_large(label, blob.size)]);
        }
        let key = (label.to_owned(), blob.sha.clone());
        if let Some(parsed) = lock(&self.config_cache.parsed).get(&key) {
            return parsed.clone();
        }
        let parsed = parse(label, &blob.text);
        let mut cache = lock(&self.config_cache.parsed);
        // Old versions of files pile up on a long-lived instance: start over past a bound.
        if cache.len() >= MAX_PARSED {
            cache.clear();
        }
        cache.insert(key, parsed.clone());
        parsed
    }

    /// A push to a default branch: a touched configuration file is read again now, and the
    /// commit gets a check run saying whether it is valid.
    pub(crate) async fn config_pushed(
        &self,
        repo: &RepoFullName,
        after: &Sha,
        touched: bool,
        deadline: Deadline,
    ) -> Result<Outcome, ServiceError> {
        if !touched {
            return Ok(Outcome::Ignored { reason: format!("the push does not change {CONFIG_PATH}") });
        }
        self.config_cache.forget_file(repo.as_str());
        // Other repositories may extend this one, or take it as their organisation's defaults.
        lock(&self.config_cache.resolved).clear();
        let gathered = self.gather(repo, None, deadline).await?;
        let (config, issues) = self.settle(repo, gathered, Some(after)).await?;
        let run = match (&config, issues.is_empty()) {
            (RepoConfig::Settings(settings), true) => NewCheckRun {
                name: CHECK_NAME.to_owned(),
                head_sha: after.as_str().to_owned(),
                success: true,
                title: "The configuration is valid and in force".to_owned(),
                summary: effective_summary(settings),
                annotations: Vec::new(),
            },
            _ => failed_check(
                repo,
                after.as_str(),
                &issues,
                "The configuration is invalid; the last valid one stays in force",
            ),
        };
        post_check_run(&self.github, repo, &run, deadline).await?;
        Ok(Outcome::ConfigChecked { valid: issues.is_empty(), changes: 0 })
    }

    /// A pull request that changes the file: a check run with what would change once merged.
    pub(crate) async fn config_dry_run(
        &self,
        repo: &RepoFullName,
        head_sha: &Sha,
        deadline: Deadline,
    ) -> Result<Outcome, ServiceError> {
        let proposed = self.github.get_file(repo, CONFIG_PATH, Some(head_sha.as_str()), deadline).await?.map(Arc::new);
        let current = self.default_file(repo.as_str(), deadline).await?;
        if proposed.as_ref().map(|b| &b.sha) == current.as_ref().map(|b| &b.sha) {
            return Ok(Outcome::Ignored { reason: format!("the pull request does not change {CONFIG_PATH}") });
        }
        let now = match self.repo_config(repo, deadline).await? {
            RepoConfig::Settings(settings) => (*settings).clone(),
            RepoConfig::Refused(_) => self.stack.settings(),
        };
        let gathered = self.gather(repo, Some(proposed), deadline).await?;
        let (run, outcome) = match gathered.resolve(&self.stack) {
            Ok(after) => {
                let changes = dry_run::changes(&now, &after);
                let run = NewCheckRun {
                    name: CHECK_NAME.to_owned(),
                    head_sha: head_sha.as_str().to_owned(),
                    success: true,
                    title: match changes.len() {
                        0 => "Valid; merging changes nothing".to_owned(),
                        1 => "Valid; merging changes 1 setting".to_owned(),
                        n => format!("Valid; merging changes {n} settings"),
                    },
                    summary: format!("### What changes once this is merged\n\n{}", dry_run::table(&changes)),
                    annotations: Vec::new(),
                };
                (run, Outcome::ConfigChecked { valid: true, changes: changes.len() })
            }
            Err(issues) => (
                failed_check(repo, head_sha.as_str(), &issues, "The proposed configuration is invalid"),
                Outcome::ConfigChecked { valid: false, changes: 0 },
            ),
        };
        post_check_run(&self.github, repo, &run, deadline).await?;
        Ok(outcome)
    }
}

/// Posts a check run; with a token that cannot create them (a personal access token: only Apps
/// can), the result is logged instead and the delivery still succeeds.
async fn post_check_run<G: GitHub>(
    github: &G,
    repo: &RepoFullName,
    run: &NewCheckRun,
    deadline: Deadline,
) -> Result<(), ServiceError> {
    match github.create_check_run(repo, run, deadline).await {
        Ok(()) => Ok(()),
        Err(GitHubError::Api { status, message }) => {
            warn!(%repo, status, %message, title = %run.title, "could not create the check run (a GitHub App can; a token cannot); its result is only logged");
            Ok(())
        }
        Err(other) => Err(other.into()),
    }
}

fn failed_check(repo: &RepoFullName, head_sha: &str, issues: &[ConfigIssue], title: &str) -> NewCheckRun {
    let own = format!("{repo}:{CONFIG_PATH}");
    let mut summary = format!("{} problem{}:\n\n", issues.len(), if issues.len() == 1 { "" } else { "s" });
    for issue in issues {
        summary.push_str(&format!("- {}\n", issue.to_string().replace('\n', " ")));
    }
    NewCheckRun {
        name: CHECK_NAME.to_owned(),
        head_sha: head_sha.to_owned(),
        success: false,
        title: title.to_owned(),
        summary,
        annotations: issues
            .iter()
            // Problems without a line (a missing `_extends` target) are in the summary only.
            .filter(|i| i.file == own && i.line.is_some())
            .map(|i| {
                let what = match &i.key {
                    Some(key) => format!("{key}: {}", i.message),
                    None => i.message.clone(),
                };
                (CONFIG_PATH.to_owned(), i.line.unwrap_or_default(), what)
            })
            .collect(),
    }
}

fn effective_summary(settings: &RepoSettings) -> String {
    let pretty = serde_json::to_string_pretty(&settings.describe()).unwrap_or_default();
    format!("The effective configuration:\n\n```json\n{pretty}\n```\n")
}
