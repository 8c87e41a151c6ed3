//! The events this deployer acts on, already validated: the edge turns wire payloads into these.

use serde_json::Value;

use super::types::{BranchName, DeliveryId, DeploymentId, DeploymentState, Environment, RepoFullName, Sha, StatusId};

#[derive(Clone, Debug, PartialEq)]
pub enum WebhookEvent {
    Ping {
        zen: Option<String>,
    },
    PullRequestMerged(MergedPullRequest),
    DeploymentCreated(DeploymentCreated),
    DeploymentStatus(DeploymentStatusEvent),
    /// A new comment whose first line is a command (`.deploy`, `.lock`, …).
    Command(CommentCommand),
    /// A check suite completed, or a commit status changed, on `sha`.
    ChecksCompleted {
        repo: RepoFullName,
        sha: Sha,
        installation: Option<u64>,
    },
    /// A push to a repository's default branch; `touched`: it changes the configuration file.
    DefaultBranchPushed {
        repo: RepoFullName,
        after: Sha,
        touched: bool,
        installation: Option<u64>,
    },
    /// A pull request opened, reopened or pushed to: a dry run if it changes the configuration.
    PullRequestUpdated {
        repo: RepoFullName,
        number: u64,
        head_sha: Sha,
        /// The head is another repository's (a fork's): no dry run.
        from_fork: bool,
        installation: Option<u64>,
    },
    /// An event or action we don't act on, with a short reason for the response.
    Ignored {
        reason: String,
    },
}

impl WebhookEvent {
    /// The repository and GitHub App installation a delivery came from, when it names one.
    pub fn installation(&self) -> Option<(&RepoFullName, u64)> {
        match self {
            Self::PullRequestMerged(e) => e.installation.map(|i| (&e.repo, i)),
            Self::DeploymentCreated(e) => e.installation.map(|i| (&e.repo, i)),
            Self::DeploymentStatus(e) => e.installation.map(|i| (&e.repo, i)),
            Self::Command(e) => e.installation.map(|i| (&e.repo, i)),
            Self::ChecksCompleted { repo, installation, .. } => installation.map(|i| (repo, i)),
            Self::DefaultBranchPushed { repo, installation, .. } => installation.map(|i| (repo, i)),
            Self::PullRequestUpdated { repo, installation, .. } => installation.map(|i| (repo, i)),
            _ => None,
        }
    }

    /// The repository a delivery is about, when it is about one.
    pub fn repo(&self) -> Option<&RepoFullName> {
        match self {
            Self::PullRequestMerged(e) => Some(&e.repo),
            Self::DeploymentCreated(e) => Some(&e.repo),
            Self::DeploymentStatus(e) => Some(&e.repo),
            Self::Command(e) => Some(&e.repo),
            Self::ChecksCompleted { repo, .. }
            | Self::DefaultBranchPushed { repo, .. }
            | Self::PullRequestUpdated { repo, .. } => Some(repo),
            Self::Ping { .. } | Self::Ignored { .. } => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Ping { .. } => "ping",
            Self::PullRequestMerged(_) => "pull_request",
            Self::DeploymentCreated(_) => "deployment",
            Self::DeploymentStatus(_) => "deployment_status",
            Self::Command(_) => "issue_comment",
            Self::ChecksCompleted { .. } => "checks",
            Self::DefaultBranchPushed { .. } => "push",
            Self::PullRequestUpdated { .. } => "pull_request",
            Self::Ignored { .. } => "ignored",
        }
    }
}

/// A pull request that was merged: closed with `merged: true`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MergedPullRequest {
    /// The base repository (where the PR was merged), never the fork's.
    pub repo: RepoFullName,
    pub default_branch: Option<String>,
    pub number: u64,
    pub title: String,
    pub html_url: String,
    pub author: String,
    pub base_branch: BranchName,
    /// `merge_commit_sha`: the merged code on the base repository.
    pub merge_sha: Sha,
    /// `merged_at` (RFC 3339): orders merges, so that an old one delivered late never deploys
    /// over a later one.
    pub merged_at: Option<String>,
    /// `installation.id`, in deliveries to a GitHub App.
    pub installation: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentCreated {
    pub repo: RepoFullName,
    pub id: DeploymentId,
    pub sha: Sha,
    pub git_ref: String,
    pub task: String,
    pub environment: Environment,
    pub creator: Option<String>,
    /// `performed_via_github_app.id`: the App whose token created it, if one did.
    pub created_via_app: Option<u64>,
    pub description: Option<String>,
    pub created_at: Option<String>,
    /// The deployment's `payload` as GitHub sent it (an object, or a string for old clients).
    pub payload: Value,
    pub installation: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentStatusEvent {
    pub repo: RepoFullName,
    pub deployment_id: DeploymentId,
    pub environment: Option<Environment>,
    pub status: StatusRecord,
    pub installation: Option<u64>,
}

/// One deployment status as it is stored: what GitHub says about a deployment at a time.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusRecord {
    pub id: StatusId,
    pub state: DeploymentState,
    pub description: Option<String>,
    pub log_url: Option<String>,
    pub environment_url: Option<String>,
    pub creator: Option<String>,
    pub created_at: Option<String>,
}

/// A comment command: who wrote what where. The text is the caller's: never echoed unescaped.
#[derive(Clone, Debug, PartialEq)]
pub struct CommentCommand {
    pub repo: RepoFullName,
    pub installation: Option<u64>,
    pub comment_id: u64,
    pub author: String,
    /// The issue or pull request number.
    pub issue: u64,
    pub on_pull_request: bool,
    /// The comment's first line, trimmed.
    pub line: String,
}

/// A delivery: its id and what it carries.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub id: DeliveryId,
    pub event: WebhookEvent,
    /// `https://<api domain>[/<stage>]`: where this API is reached, for callback URLs.
    pub callback_base: Option<String>,
}
