//! Commands in pull request and issue comments: `.deploy`, `.rollback`, `.lock`, `.unlock`,
//! `.status`, `.help`. Each comment acts and replies once (its own claim), only for commenters
//! whose permission is in `CHATOPS_PERMISSIONS`, and goes through the same queue and lock as
//! merges: a command creates a deployment; GitHub's `deployment` event then runs it.
//!
//! Nothing of the comment's text reaches a reply unescaped: environment names are checked
//! against the managed ones, reasons are escaped so they cannot mention anyone or inject
//! markdown.

use std::fmt::Write as _;

use serde_json::json;
use tracing::{debug, warn};

use super::deadline::Deadline;
use super::event::CommentCommand;
use super::ports::{
    Claim, Clock, CreationRecord, DeployAction, EnvKey, GitHub, Lease, NewDeployment, Permission, Store,
};
use super::runs::{DESCRIPTION_LIMIT, Phase, Trigger, Verdict};
use super::service::{Outcome, Service, ServiceError};
use super::types::{DeliveryId, DeploymentId, Environment, Sha, truncate_chars};
use crate::repo_config::RepoSettings;

/// A parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    /// `.deploy to <env>`: the pull request's head commit.
    DeployBranch {
        environment: String,
    },
    /// `.deploy <sha> to <env>`.
    DeploySha {
        sha: String,
        environment: String,
    },
    Rollback {
        environment: String,
    },
    Lock {
        environment: String,
        reason: String,
    },
    Unlock {
        environment: String,
    },
    Status,
    /// Not a command we know (or wrong arguments): the answer is the help.
    Unknown,
}

/// The words that make a comment a command: its first line's first word must be one of them,
/// exactly (`...`, `.NET rocks` or `.helpme` are not commands and cost nothing).
pub const COMMAND_WORDS: [&str; 6] = [".deploy", ".rollback", ".lock", ".unlock", ".status", ".help"];

/// Whether a comment's first line is a command: its first word is exactly a command word.
pub fn is_command(line: &str) -> bool {
    line.split_whitespace().next().is_some_and(|word| COMMAND_WORDS.contains(&word))
}

/// Bot writes (reactions) a commenter without permission can cause per hour, across every
/// instance: the count is kept in DynamoDB.
pub const REFUSED_WRITES_PER_HOUR: u32 = 3;

impl Command {
    pub fn parse(line: &str) -> Self {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [".help"] => Self::Help,
            [".status"] => Self::Status,
            [".deploy", "to", env] => Self::DeployBranch { environment: (*env).to_owned() },
            [".deploy", sha, "to", env] => Self::DeploySha { sha: (*sha).to_owned(), environment: (*env).to_owned() },
            [".rollback", env] => Self::Rollback { environment: (*env).to_owned() },
            [".lock", env, reason @ ..] => Self::Lock { environment: (*env).to_owned(), reason: reason.join(" ") },
            [".unlock", env] => Self::Unlock { environment: (*env).to_owned() },
            _ => Self::Unknown,
        }
    }

    fn environment(&self) -> Option<&str> {
        match self {
            Self::DeployBranch { environment }
            | Self::DeploySha { environment, .. }
            | Self::Rollback { environment }
            | Self::Lock { environment, .. }
            | Self::Unlock { environment } => Some(environment),
            _ => None,
        }
    }
}

/// Text from a comment, made safe to quote in a reply: no control characters, no mentions, no
/// markdown, at most 100 characters.
pub fn escape(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().filter(|c| !c.is_control() && !is_format(*c)).take(100) {
        match c {
            // A zero-width space after `@` keeps GitHub from reading a mention.
            '@' => out.push_str("@\u{200b}"),
            // `&` could start an HTML entity (`&#64;` is an `@`); `$` starts GitHub's math.
            '\\' | '`' | '*' | '_' | '[' | ']' | '(' | ')' | '<' | '>' | '#' | '|' | '~' | '!' | '{' | '}' | '+'
            | '-' | '.' | ':' | '&' | '$' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// Unicode format characters (category Cf) that change how text around them reads without
/// showing themselves: bidirectional overrides and isolates (U+202A–U+202E, U+2066–U+2069), marks
/// (U+200E, U+200F, U+061C), zero-width characters (U+200B–U+200D, U+2060–U+2064, U+FEFF), the
/// soft hyphen, tags (U+E0000 block) and the interlinear annotations (U+FFF9–U+FFFB).
fn is_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}'
        | '\u{E0000}'..='\u{E007F}')
}

/// A GitHub login as it may appear in a reply (GitHub's own characters only).
fn login(user: &str) -> String {
    user.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(39).collect()
}

const HOUR_MS: u64 = 60 * 60 * 1000;

pub const HELP: &str = "**deploy-webhook commands** (the first line of a comment):\n\
- `.deploy to <environment>`: deploy this pull request's head commit (a branch deploy)\n\
- `.deploy <full sha> to <environment>`: deploy any commit of the repository (when enabled)\n\
- `.rollback <environment>`: deploy again the last successful commit before the current one\n\
- `.lock <environment> [reason]`: hold the environment: others' deployments wait until `.unlock`\n\
- `.unlock <environment>`: release it; the newest waiting deployment starts\n\
- `.status`: what is deployed, running, queued and locked, per environment\n\
- `.help`: this list";

/// What a command did, for the response and the comment's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandResult {
    Replied,
    Refused,
    Deployed(DeploymentId),
    Duplicate(String),
}

impl CommandResult {
    pub fn word(&self) -> &'static str {
        match self {
            Self::Replied => "processed",
            Self::Refused => "refused",
            Self::Deployed(_) => "processed",
            Self::Duplicate(_) => "duplicate",
        }
    }
}

impl<S: Store, G: GitHub, D: DeployAction, C: Clock> Service<S, G, D, C> {
    pub(crate) async fn run_command(
        &self,
        delivery: &DeliveryId,
        cmd: &CommentCommand,
        settings: &RepoSettings,
        deadline: Deadline,
    ) -> Result<Outcome, ServiceError> {
        // A comment handled before is answered from its record: nothing asked of GitHub.
        if let Some(recorded) = self.store.comment_outcome(&cmd.repo, cmd.comment_id).await? {
            return Ok(Outcome::Command { comment_id: cmd.comment_id, result: CommandResult::Duplicate(recorded) });
        }
        // Permission next: a read. Nothing is written (no claim, no reply) for someone who may
        // not run commands: at most one 😕, within a per-user hourly budget kept in DynamoDB.
        let permission = self.github.permission(&cmd.repo, &cmd.author, deadline).await?;
        if !Self::may_command(&settings.commands.permissions, &permission) {
            let hour = self.clock.now_ms() / HOUR_MS;
            if self.store.count_user_write(&cmd.author, hour, REFUSED_WRITES_PER_HOUR).await? {
                self.github.react(&cmd.repo, cmd.comment_id, "confused", deadline).await?;
            } else {
                debug!(comment_id = cmd.comment_id, "refused commenter over the hourly budget: no reaction");
            }
            return Ok(Outcome::Command { comment_id: cmd.comment_id, result: CommandResult::Refused });
        }
        let lease = match self.store.claim_comment(&cmd.repo, cmd.comment_id, delivery, self.settings.lease).await? {
            Claim::Acquired(lease, ()) => lease,
            Claim::Done(recorded) => {
                return Ok(Outcome::Command { comment_id: cmd.comment_id, result: CommandResult::Duplicate(recorded) });
            }
            Claim::Busy => return Err(ServiceError::InProgress),
        };
        match self.run_command_claimed(cmd, settings, &lease, deadline).await {
            Ok(result) => {
                let recorded = match &result {
                    CommandResult::Deployed(id) => format!("deployed {id}"),
                    other => other.word().to_owned(),
                };
                self.store.finish_comment(&cmd.repo, cmd.comment_id, &lease, &recorded).await?;
                Ok(Outcome::Command { comment_id: cmd.comment_id, result })
            }
            Err(err) => {
                if let Err(store_err) = self.store.release_comment(&cmd.repo, cmd.comment_id, &lease).await {
                    warn!(error = %store_err, "could not release the comment's claim; its lease will expire");
                }
                Err(err)
            }
        }
    }

    /// Whether the commenter's access is one the repository's settings allow (`commands.permissions`, `CHATOPS_PERMISSIONS`). GitHub's `permission`
    /// reports `maintain` as `write` and `triage` as `read`; `role_name` is the real role. A
    /// `maintain` role also counts as `write`.
    fn may_command(allowed: &[String], permission: &Permission) -> bool {
        let listed = |p: &str| allowed.iter().any(|a| a == p);
        let role_ok = permission.role.as_deref().is_some_and(|r| listed(r) || (r == "maintain" && listed("write")));
        // The legacy field, for roles GitHub does not name (custom roles): admin, write or read.
        let legacy_ok = match permission.role.as_deref() {
            Some("admin" | "maintain" | "write" | "triage" | "read") => false,
            _ => listed(&permission.permission),
        };
        role_ok || legacy_ok
    }

    async fn refuse(&self, cmd: &CommentCommand, why: &str, deadline: Deadline) -> Result<CommandResult, ServiceError> {
        self.github.react(&cmd.repo, cmd.comment_id, "confused", deadline).await?;
        self.github.comment(&cmd.repo, cmd.issue, why, deadline).await?;
        Ok(CommandResult::Refused)
    }

    async fn run_command_claimed(
        &self,
        cmd: &CommentCommand,
        settings: &RepoSettings,
        _lease: &Lease,
        deadline: Deadline,
    ) -> Result<CommandResult, ServiceError> {
        let command = Command::parse(&cmd.line);
        debug!(comment_id = cmd.comment_id, command = ?std::mem::discriminant(&command), "comment command");
        if matches!(command, Command::Help | Command::Unknown) {
            self.github.comment(&cmd.repo, cmd.issue, HELP, deadline).await?;
            return Ok(CommandResult::Replied);
        }
        let who = login(&cmd.author);
        let environment = match command.environment() {
            None => None,
            Some(raw) => match Environment::parse(raw).ok().filter(|e| settings.manages(e)) {
                Some(env) => Some(env),
                None => {
                    let mut known: Vec<String> =
                        known_environments(settings).iter().map(|e| format!("`{e}`")).collect();
                    known.sort();
                    let why = format!("Unknown environment {}. Environments: {}.", escape(raw), known.join(", "));
                    return self.refuse(cmd, &why, deadline).await;
                }
            },
        };
        self.github.react(&cmd.repo, cmd.comment_id, "eyes", deadline).await?;
        match (command, environment) {
            (Command::Status, _) => {
                let table = self.status_table(cmd, settings, deadline).await?;
                self.github.comment(&cmd.repo, cmd.issue, &table, deadline).await?;
                Ok(CommandResult::Replied)
            }
            (Command::Lock { reason, .. }, Some(env)) => {
                let key = EnvKey { repo: cmd.repo.clone(), environment: env.clone() };
                let reason = reason.chars().filter(|c| !c.is_control()).take(100).collect::<String>();
                let trigger = Trigger::Lock { holder: who.clone(), reason: reason.clone() };
                let verdict = self.act(&key, None, &trigger, deadline).await?.0;
                let reply = match verdict {
                    Verdict::LockedBy { holder, reason } => {
                        return self
                            .refuse(
                                cmd,
                                &format!("`{env}` is already locked by `{}`: {}", login(&holder), escape(&reason)),
                                deadline,
                            )
                            .await;
                    }
                    _ if reason.is_empty() => {
                        format!("🔒 `{env}` is locked by @{who}. Others' deployments wait until `.unlock {env}`.")
                    }
                    _ => format!(
                        "🔒 `{env}` is locked by @{who}: {}. Others' deployments wait until `.unlock {env}`.",
                        escape(&reason)
                    ),
                };
                self.github.comment(&cmd.repo, cmd.issue, &reply, deadline).await?;
                Ok(CommandResult::Replied)
            }
            (Command::Unlock { .. }, Some(env)) => {
                let key = EnvKey { repo: cmd.repo.clone(), environment: env.clone() };
                self.act(&key, None, &Trigger::Unlock, deadline).await?;
                let reply = format!("🔓 `{env}` is unlocked; the newest waiting deployment starts.");
                self.github.comment(&cmd.repo, cmd.issue, &reply, deadline).await?;
                Ok(CommandResult::Replied)
            }
            (Command::Rollback { .. }, Some(env)) => {
                let key = EnvKey { repo: cmd.repo.clone(), environment: env.clone() };
                let state = self.store.load_environment(&key).await?.state;
                let Some(target) = state.rollback_target().and_then(|t| t.sha.clone().map(|sha| (sha, t.id))) else {
                    return self
                        .refuse(
                            cmd,
                            &format!("`{env}` has no earlier successful deployment to roll back to."),
                            deadline,
                        )
                        .await;
                };
                let (sha, from) = target;
                let description = format!("Rollback of {env} to {} (deployment #{from}) by @{who}", sha.short());
                // A rollback goes back to code that ran before: its checks are not asked again.
                self.deploy_for_command(cmd, &env, &sha, description, "rollback", None, Some(Vec::new()), deadline)
                    .await
            }
            (Command::DeployBranch { .. }, Some(env)) => {
                if !settings.branch_deploys_to(&env) {
                    let why = format!(
                        "Branch deploys to `{env}` are not enabled (`branch_deploys` in {}, or `BRANCH_DEPLOY_ENVIRONMENTS`).",
                        crate::repo_config::CONFIG_PATH
                    );
                    return self.refuse(cmd, &why, deadline).await;
                }
                if !cmd.on_pull_request {
                    return self.refuse(cmd, "`.deploy to` works on a pull request.", deadline).await;
                }
                let pull = self.github.pull_request(&cmd.repo, cmd.issue, deadline).await?;
                if !pull.open {
                    return self.refuse(cmd, "This pull request is closed.", deadline).await;
                }
                let from_fork = pull.head_repo.as_deref().is_none_or(|r| !r.eq_ignore_ascii_case(cmd.repo.as_str()));
                if from_fork {
                    let why = "Pull requests from forks are not deployed: their code has not been reviewed for this repository's secrets.";
                    return self.refuse(cmd, why, deadline).await;
                }
                let description = format!("Branch deploy of #{} to {env} by @{who}", cmd.issue);
                let contexts = settings.environment(&env).and_then(|e| e.required_contexts.clone());
                self.deploy_for_command(
                    cmd,
                    &env,
                    &pull.head_sha,
                    description,
                    "deploy",
                    Some(cmd.issue),
                    contexts,
                    deadline,
                )
                .await
            }
            (Command::DeploySha { sha, .. }, Some(env)) => {
                if !settings.commands.sha_deploys {
                    let why = format!(
                        "Deploying a given commit is not enabled (`commands.sha_deploys` in {}, or `ALLOW_SHA_DEPLOYMENTS`).",
                        crate::repo_config::CONFIG_PATH
                    );
                    return self.refuse(cmd, &why, deadline).await;
                }
                let Ok(sha) = Sha::parse(&sha) else {
                    return self.refuse(cmd, "Give the full commit SHA (40 hex digits).", deadline).await;
                };
                let description = format!("Deploy of {} to {env} by @{who}", sha.short());
                let contexts = settings.environment(&env).and_then(|e| e.required_contexts.clone());
                self.deploy_for_command(cmd, &env, &sha, description, "deploy", None, contexts, deadline).await
            }
            _ => {
                self.github.comment(&cmd.repo, cmd.issue, HELP, deadline).await?;
                Ok(CommandResult::Replied)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn deploy_for_command(
        &self,
        cmd: &CommentCommand,
        env: &Environment,
        sha: &Sha,
        description: String,
        kind: &str,
        pr: Option<u64>,
        required_contexts: Option<Vec<String>>,
        deadline: Deadline,
    ) -> Result<CommandResult, ServiceError> {
        let who = login(&cmd.author);
        let marker = format!("{}#comment#{}#{}", cmd.repo.key(), cmd.comment_id, env);
        // An earlier attempt at this comment may have created it before dying.
        let found = self.github.find_deployment(&cmd.repo, sha, env, &marker, deadline).await?;
        let id = match found {
            Some(id) => id,
            None => {
                let mut payload = json!({
                    "deploy_user": who,
                    "deploy_webhook": { "marker": marker, "requested_by": who, "command": kind, "comment_id": cmd.comment_id },
                });
                if let Some(pr) = pr {
                    payload["pull_request"] = json!({ "number": pr });
                }
                let request = NewDeployment {
                    sha: sha.clone(),
                    environment: env.clone(),
                    description: truncate_chars(&description, DESCRIPTION_LIMIT),
                    production_environment: self
                        .environment_settings(&EnvKey { repo: cmd.repo.clone(), environment: env.clone() })
                        .production,
                    payload,
                    required_contexts,
                };
                match self.github.create_deployment(&cmd.repo, &request, deadline).await? {
                    CreationRecord::Created(id) => id,
                    CreationRecord::Rejected { status, message } => {
                        let why = format!("GitHub refused the deployment ({status}): {}", escape(&message));
                        return self.refuse(cmd, &why, deadline).await;
                    }
                    CreationRecord::Superseded | CreationRecord::WaitingForChecks => return Ok(CommandResult::Refused),
                    CreationRecord::ChecksPending { contexts } => {
                        let why = format!(
                            "The required checks have not passed yet ({}); try again once they have.",
                            escape(&contexts.join(", "))
                        );
                        return self.refuse(cmd, &why, deadline).await;
                    }
                }
            }
        };
        self.github.react(&cmd.repo, cmd.comment_id, "rocket", deadline).await?;
        // The description is ours: a validated environment, a login, a commit.
        let reply = format!(
            "🚀 {description}: deployment #{id} of `{}`, see [{env} deployments]({}/{}/deployments/{})",
            sha.short(),
            self.settings.github_html_url,
            cmd.repo,
            env
        );
        self.github.comment(&cmd.repo, cmd.issue, &reply, deadline).await?;
        Ok(CommandResult::Deployed(id))
    }

    async fn status_table(
        &self,
        cmd: &CommentCommand,
        settings: &RepoSettings,
        _deadline: Deadline,
    ) -> Result<String, ServiceError> {
        let mut out = String::from(
            "| Environment | Deployed | Last run | Running | Queued | Lock |\n|---|---|---|---|---|---|\n",
        );
        for env in known_environments(settings) {
            let key = EnvKey { repo: cmd.repo.clone(), environment: env.clone() };
            let state = self.store.load_environment(&key).await?.state;
            let deployed = match &state.last_success {
                Some(s) => {
                    let sha = s.sha.as_ref().map_or("?".to_owned(), |s| format!("`{}`", s.short()));
                    let pr = s.pr.map_or(String::new(), |n| format!(" (#{n})"));
                    format!("{sha}{pr}")
                }
                None => "–".to_owned(),
            };
            let last = state.recent.last().map_or("–".to_owned(), |r| format!("#{} {}", r.id, r.state));
            let running = state.running.as_ref().map_or("–".to_owned(), |r| {
                let phase = match r.phase {
                    Phase::Starting => "starting",
                    Phase::Awaiting => "in progress",
                    Phase::Finishing { .. } => "finishing",
                };
                format!("#{} {phase}", r.deployment.id)
            });
            let queued = if state.queue.is_empty() {
                "–".to_owned()
            } else {
                state.queue.iter().map(|q| format!("#{}", q.id)).collect::<Vec<_>>().join(", ")
            };
            let lock = state.lock.as_ref().map_or("–".to_owned(), |l| {
                if l.reason.is_empty() {
                    format!("🔒 `{}`", login(&l.holder))
                } else {
                    format!("🔒 `{}`: {}", login(&l.holder), escape(&l.reason))
                }
            });
            let _ = writeln!(out, "| `{env}` | {deployed} | {last} | {running} | {queued} | {lock} |");
        }
        if let Some(broken) = &settings.broken {
            let since = broken.commit.as_deref().map_or_else(
                || format!("blob `{}`", broken.blob.get(..7).unwrap_or(&broken.blob)),
                |c| format!("commit {}", c.get(..7).unwrap_or(c)),
            );
            let first = broken.errors.first().map(|e| escape(e)).unwrap_or_default();
            let _ = writeln!(
                out,
                "\n⚠️ The configuration is broken since {since}: `{first}`{}. The last valid one is in force.",
                match broken.errors.len() {
                    1 => String::new(),
                    n => format!(" (and {} more)", n - 1),
                }
            );
        }
        // This reply answers a comment: that event kind arrives (the edge notes it only after).
        self.note_event("issue_comment").await;
        for (feature, events) in self.missing_events(None).await {
            let events = super::features::events_text(&events, feature.needs).replace("**", "");
            let _ = write!(
                out,
                "\n⚠ {}: this deployer has never received {events}; without them {}. Subscribe the webhook (or \
                 the App) to them: README, What each feature needs.\n",
                feature.name, feature.without_events
            );
        }
        Ok(out)
    }
}

/// Every environment the repository's settings name, for `.status` and error messages.
fn known_environments(settings: &RepoSettings) -> Vec<Environment> {
    let mut envs: Vec<Environment> = settings.environments.iter().map(|e| e.name.clone()).collect();
    envs.sort();
    envs.dedup();
    envs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_command_and_nothing_else() {
        assert_eq!(Command::parse(".help"), Command::Help);
        assert_eq!(Command::parse(".status"), Command::Status);
        assert_eq!(Command::parse(".deploy to staging"), Command::DeployBranch { environment: "staging".into() });
        assert_eq!(
            Command::parse(".deploy abc to production"),
            Command::DeploySha { sha: "abc".into(), environment: "production".into() }
        );
        assert_eq!(Command::parse(".rollback production"), Command::Rollback { environment: "production".into() });
        assert_eq!(
            Command::parse(".lock production db migration, do not deploy"),
            Command::Lock { environment: "production".into(), reason: "db migration, do not deploy".into() }
        );
        assert_eq!(Command::parse(".unlock production"), Command::Unlock { environment: "production".into() });
        for unknown in [".deploy", ".deploy staging", ".rollback", ".nuke prod", ".unlock a b", ".help me"] {
            assert_eq!(Command::parse(unknown), Command::Unknown, "{unknown}");
        }
    }

    #[test]
    fn escaped_text_cannot_mention_or_format() {
        let evil = "@org/team **bold** [x](https://evil) <img src=x> `code`\n#1";
        let safe = escape(evil);
        assert!(!safe.contains("@o"), "{safe}");
        assert!(!safe.contains('\n'));
        // Every markdown character is escaped.
        let chars: Vec<char> = safe.chars().collect();
        for (i, c) in chars.iter().enumerate() {
            if "*[]()<>`#".contains(*c) {
                assert_eq!(chars.get(i.wrapping_sub(1)), Some(&'\\'), "{safe}");
            }
        }
        assert_eq!(escape(&"a".repeat(500)).len(), 100);
        // Entities, math and invisible reordering are neutralised too.
        assert_eq!(escape("&#64;team $x$"), "\\&\\#64;team \\$x\\$");
        let bidi = "safe\u{202E}txt.exe\u{2066}x\u{200B}y\u{FEFF}\u{E0041}";
        assert_eq!(escape(bidi), "safetxt\\.exexy");
        assert_eq!(login("bob<script>"), "bobscript");
    }
}
