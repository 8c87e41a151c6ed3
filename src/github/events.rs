//! Webhook payloads → domain events. Only the fields we use are declared (serde ignores the
//! rest), so GitHub adding fields never breaks us; a known event missing a field we need, or
//! holding a wrong type, is a clear 400.

use serde::Deserialize;
use serde_json::Value;

use crate::domain::event::CommentCommand;
use crate::domain::types::{BranchName, DeploymentId, Environment, InvalidValue, RepoFullName, Sha};
use crate::domain::{DeploymentCreated, DeploymentStatusEvent, MergedPullRequest, WebhookEvent};
use crate::github::{WireStatus, WireUser as User};

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("the {event} payload is not valid: {source}")]
    Json { event: String, source: serde_json::Error },
    #[error("the {event} payload is not valid: {source}")]
    Value { event: String, source: InvalidValue },
}

#[derive(Deserialize)]
struct Repository {
    full_name: String,
    default_branch: Option<String>,
}

#[derive(Deserialize)]
struct Installation {
    id: u64,
}

#[derive(Deserialize)]
struct PullRequestEvent {
    action: String,
    pull_request: PullRequest,
    repository: Repository,
    installation: Option<Installation>,
}

#[derive(Deserialize)]
struct PullRequest {
    number: u64,
    #[serde(default)]
    head: Option<HeadRef>,
    #[serde(default)]
    merged: Option<bool>,
    merge_commit_sha: Option<String>,
    #[serde(default)]
    title: String,
    #[serde(default)]
    merged_at: Option<String>,
    #[serde(default)]
    html_url: String,
    user: User,
    base: BaseRef,
}

#[derive(Deserialize)]
struct HeadRef {
    sha: String,
    #[serde(default)]
    repo: Option<HeadRepo>,
}

#[derive(Deserialize)]
struct HeadRepo {
    full_name: String,
}

/// `push`: the branch, the new head, and which files its commits touched.
#[derive(Deserialize)]
struct PushEvent {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    forced: bool,
    #[serde(default)]
    commits: Vec<PushCommit>,
    repository: Repository,
    installation: Option<Installation>,
}

#[derive(Deserialize)]
struct PushCommit {
    #[serde(default)]
    added: Vec<String>,
    #[serde(default)]
    modified: Vec<String>,
    #[serde(default)]
    removed: Vec<String>,
}

/// A push webhook lists at most this many commits; a longer push may touch any file.
const PUSH_COMMITS_LISTED: usize = 2048;

#[derive(Deserialize)]
struct BaseRef {
    #[serde(rename = "ref")]
    git_ref: String,
}

#[derive(Deserialize)]
struct DeploymentEvent {
    action: String,
    deployment: Deployment,
    repository: Repository,
    installation: Option<Installation>,
}

#[derive(Deserialize)]
struct Deployment {
    id: u64,
    sha: String,
    #[serde(rename = "ref", default)]
    git_ref: String,
    #[serde(default)]
    task: Option<String>,
    environment: String,
    #[serde(default)]
    payload: Value,
    creator: Option<User>,
    description: Option<String>,
    created_at: Option<String>,
    /// The GitHub App that created it (deployments made with an App's installation token).
    #[serde(default)]
    performed_via_github_app: Option<AppRef>,
}

#[derive(Deserialize)]
struct AppRef {
    id: u64,
}

#[derive(Deserialize)]
struct DeploymentStatusPayload {
    deployment_status: WireStatus,
    deployment: DeploymentRef,
    repository: Repository,
    installation: Option<Installation>,
}

#[derive(Deserialize)]
struct DeploymentRef {
    id: u64,
}

#[derive(Deserialize)]
struct CheckSuiteEvent {
    action: String,
    check_suite: CheckSuite,
    repository: Repository,
    installation: Option<Installation>,
}

#[derive(Deserialize)]
struct CheckSuite {
    head_sha: String,
}

#[derive(Deserialize)]
struct StatusEvent {
    sha: String,
    state: String,
    repository: Repository,
    installation: Option<Installation>,
}

fn checks(repository: Repository, sha: &str, installation: Option<Installation>) -> Result<WebhookEvent, InvalidValue> {
    Ok(WebhookEvent::ChecksCompleted {
        repo: RepoFullName::parse(&repository.full_name)?,
        sha: Sha::parse(sha)?,
        installation: installation.map(|i| i.id),
    })
}

#[derive(Deserialize)]
struct IssueCommentEvent {
    action: String,
    comment: Comment,
    issue: Issue,
    repository: Repository,
    installation: Option<Installation>,
}

#[derive(Deserialize)]
struct Comment {
    id: u64,
    #[serde(default)]
    body: String,
    user: CommentUser,
    #[serde(default)]
    performed_via_github_app: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct CommentUser {
    login: String,
    #[serde(rename = "type", default)]
    kind: String,
}

#[derive(Deserialize)]
struct Issue {
    number: u64,
    #[serde(default)]
    pull_request: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Ping {
    zen: Option<String>,
}

/// Parses the JSON of one delivery of `event` (the `X-GitHub-Event` header).
pub fn parse_event(event: &str, json: &[u8]) -> Result<WebhookEvent, EventError> {
    let bad_json = |source| EventError::Json { event: event.to_owned(), source };
    let bad_value = |source| EventError::Value { event: event.to_owned(), source };
    match event {
        "ping" => {
            let ping: Ping = serde_json::from_slice(json).map_err(bad_json)?;
            Ok(WebhookEvent::Ping { zen: ping.zen })
        }
        "pull_request" => {
            let e: PullRequestEvent = serde_json::from_slice(json).map_err(bad_json)?;
            pull_request(e).map_err(bad_value)
        }
        "deployment" => {
            let e: DeploymentEvent = serde_json::from_slice(json).map_err(bad_json)?;
            deployment(e).map_err(bad_value)
        }
        "check_suite" => {
            let e: CheckSuiteEvent = serde_json::from_slice(json).map_err(bad_json)?;
            if e.action != "completed" {
                return Ok(WebhookEvent::Ignored { reason: format!("check_suite action {} is not handled", e.action) });
            }
            checks(e.repository, &e.check_suite.head_sha, e.installation).map_err(bad_value)
        }
        "status" => {
            let e: StatusEvent = serde_json::from_slice(json).map_err(bad_json)?;
            if e.state == "pending" {
                return Ok(WebhookEvent::Ignored { reason: "commit status still pending".to_owned() });
            }
            checks(e.repository, &e.sha, e.installation).map_err(bad_value)
        }
        "issue_comment" => {
            let e: IssueCommentEvent = serde_json::from_slice(json).map_err(bad_json)?;
            issue_comment(e).map_err(bad_value)
        }
        "deployment_status" => {
            let e: DeploymentStatusPayload = serde_json::from_slice(json).map_err(bad_json)?;
            deployment_status(e).map_err(bad_value)
        }
        "push" => {
            let e: PushEvent = serde_json::from_slice(json).map_err(bad_json)?;
            push(e).map_err(bad_value)
        }
        other => {
            // Still insist on JSON, so a garbled body is never answered 2xx.
            serde_json::from_slice::<serde::de::IgnoredAny>(json).map_err(bad_json)?;
            Ok(WebhookEvent::Ignored { reason: format!("event {other} is not handled") })
        }
    }
}

fn push(e: PushEvent) -> Result<WebhookEvent, InvalidValue> {
    let default = e.repository.default_branch.as_deref().map(|b| format!("refs/heads/{b}"));
    if e.deleted || default.as_deref() != Some(e.git_ref.as_str()) {
        return Ok(WebhookEvent::Ignored { reason: "a push to a branch other than the default one".to_owned() });
    }
    let path = crate::repo_config::CONFIG_PATH;
    // A forced push may have dropped commits that touched the file without listing them.
    let touched = e.forced
        || e.commits.len() >= PUSH_COMMITS_LISTED
        || e.commits.iter().any(|c| c.added.iter().chain(&c.modified).chain(&c.removed).any(|p| p == path));
    Ok(WebhookEvent::DefaultBranchPushed {
        repo: RepoFullName::parse(&e.repository.full_name)?,
        after: Sha::parse(&e.after)?,
        touched,
        installation: e.installation.map(|i| i.id),
    })
}

fn pull_request(e: PullRequestEvent) -> Result<WebhookEvent, InvalidValue> {
    if matches!(e.action.as_str(), "opened" | "synchronize" | "reopened") {
        let head = e.pull_request.head.as_ref().ok_or(InvalidValue { what: "pull_request.head", reason: "missing" })?;
        // A deleted fork has no head repository: a fork all the same.
        let from_fork = head.repo.as_ref().is_none_or(|r| !r.full_name.eq_ignore_ascii_case(&e.repository.full_name));
        return Ok(WebhookEvent::PullRequestUpdated {
            repo: RepoFullName::parse(&e.repository.full_name)?,
            number: e.pull_request.number,
            head_sha: Sha::parse(&head.sha)?,
            from_fork,
            installation: e.installation.map(|i| i.id),
        });
    }
    if e.action != "closed" {
        return Ok(WebhookEvent::Ignored { reason: format!("pull_request action {} is not handled", e.action) });
    }
    if e.pull_request.merged != Some(true) {
        return Ok(WebhookEvent::Ignored { reason: "pull request closed without merging".to_owned() });
    }
    let merge_sha = e
        .pull_request
        .merge_commit_sha
        .as_deref()
        .ok_or(InvalidValue { what: "pull_request.merge_commit_sha", reason: "missing on a merged pull request" })
        .and_then(Sha::parse)?;
    Ok(WebhookEvent::PullRequestMerged(MergedPullRequest {
        repo: RepoFullName::parse(&e.repository.full_name)?,
        default_branch: e.repository.default_branch,
        number: e.pull_request.number,
        title: e.pull_request.title,
        html_url: e.pull_request.html_url,
        author: e.pull_request.user.login,
        base_branch: BranchName::parse(&e.pull_request.base.git_ref)?,
        merge_sha,
        merged_at: e.pull_request.merged_at,
        installation: e.installation.map(|i| i.id),
    }))
}

fn deployment(e: DeploymentEvent) -> Result<WebhookEvent, InvalidValue> {
    if e.action != "created" {
        return Ok(WebhookEvent::Ignored { reason: format!("deployment action {} is not handled", e.action) });
    }
    let d = e.deployment;
    Ok(WebhookEvent::DeploymentCreated(DeploymentCreated {
        repo: RepoFullName::parse(&e.repository.full_name)?,
        id: DeploymentId(d.id),
        sha: Sha::parse(&d.sha)?,
        git_ref: d.git_ref,
        task: d.task.unwrap_or_else(|| "deploy".to_owned()),
        environment: Environment::parse(&d.environment)?,
        creator: d.creator.map(|u| u.login),
        created_via_app: d.performed_via_github_app.map(|a| a.id),
        description: d.description,
        created_at: d.created_at,
        payload: d.payload,
        installation: e.installation.map(|i| i.id),
    }))
}

fn issue_comment(e: IssueCommentEvent) -> Result<WebhookEvent, InvalidValue> {
    if e.action != "created" {
        return Ok(WebhookEvent::Ignored { reason: format!("issue_comment action {} is not handled", e.action) });
    }
    let c = e.comment;
    // Bots, this deployer included (its replies are comments too), never command it.
    if c.user.kind == "Bot" || c.user.login.ends_with("[bot]") || c.performed_via_github_app.is_some() {
        return Ok(WebhookEvent::Ignored { reason: "comment by a bot".to_owned() });
    }
    let line = c.body.lines().next().unwrap_or_default().trim();
    if !crate::domain::commands::is_command(line) {
        return Ok(WebhookEvent::Ignored { reason: "comment is not a command".to_owned() });
    }
    Ok(WebhookEvent::Command(CommentCommand {
        repo: RepoFullName::parse(&e.repository.full_name)?,
        installation: e.installation.map(|i| i.id),
        comment_id: c.id,
        author: c.user.login,
        issue: e.issue.number,
        on_pull_request: e.issue.pull_request.is_some(),
        line: line.chars().take(500).collect(),
    }))
}

fn deployment_status(e: DeploymentStatusPayload) -> Result<WebhookEvent, InvalidValue> {
    let status = e.deployment_status;
    Ok(WebhookEvent::DeploymentStatus(DeploymentStatusEvent {
        repo: RepoFullName::parse(&e.repository.full_name)?,
        deployment_id: DeploymentId(e.deployment.id),
        environment: status.environment.as_deref().map(Environment::parse).transpose()?,
        status: status.into_record()?,
        installation: e.installation.map(|i| i.id),
    }))
}
