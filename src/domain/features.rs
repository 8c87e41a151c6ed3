//! What each feature needs from GitHub: the webhook events it must receive and the permissions
//! its token or App must hold. The one list: the README's table "What each feature needs" (the
//! webhook steps, the token's permissions and the App section point at it) and
//! `github-app-manifest.json` are checked against it by `tests/features.rs`, and the function
//! reads it to say which events a stack has never received (`.status`, and the answer to a
//! delivery whose follow-up event may never come).
//!
//! A new feature is one more row of [`FEATURES`]; a new event or permission is one more constant
//! below (with GitHub's names for it).

/// A webhook event: its name in `X-GitHub-Event` (and in an App manifest's `default_events`), and
/// its label in GitHub's "Let me select individual events" list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Event {
    pub name: &'static str,
    pub label: &'static str,
}

pub const PULL_REQUEST: Event = Event { name: "pull_request", label: "Pull requests" };
pub const DEPLOYMENT: Event = Event { name: "deployment", label: "Deployments" };
pub const DEPLOYMENT_STATUS: Event = Event { name: "deployment_status", label: "Deployment statuses" };
pub const ISSUE_COMMENT: Event = Event { name: "issue_comment", label: "Issue comments" };
pub const CHECK_SUITE: Event = Event { name: "check_suite", label: "Check suites" };
pub const STATUS: Event = Event { name: "status", label: "Statuses" };
pub const PUSH: Event = Event { name: "push", label: "Pushes" };
pub const WORKFLOW_RUN: Event = Event { name: "workflow_run", label: "Workflow runs" };

/// A repository (or organisation) permission: its key in an App manifest's `default_permissions`,
/// and its name on GitHub's token and App settings pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Permission {
    pub key: &'static str,
    pub label: &'static str,
}

pub const METADATA: Permission = Permission { key: "metadata", label: "Metadata" };
pub const DEPLOYMENTS: Permission = Permission { key: "deployments", label: "Deployments" };
pub const PULL_REQUESTS: Permission = Permission { key: "pull_requests", label: "Pull requests" };
pub const ISSUES: Permission = Permission { key: "issues", label: "Issues" };
pub const CHECKS: Permission = Permission { key: "checks", label: "Checks" };
pub const COMMIT_STATUSES: Permission = Permission { key: "statuses", label: "Commit statuses" };
pub const CONTENTS: Permission = Permission { key: "contents", label: "Contents" };
pub const ACTIONS: Permission = Permission { key: "actions", label: "Actions" };
pub const MEMBERS: Permission = Permission { key: "members", label: "Members" };
pub const ADMINISTRATION: Permission = Permission { key: "administration", label: "Administration" };
pub const WEBHOOKS: Permission = Permission { key: "repository_hooks", label: "Webhooks" };

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Read,
    Write,
}

impl Access {
    /// As an App manifest spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }

    /// As GitHub's settings pages show it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "read and write",
        }
    }
}

use Access::{Read, Write};

/// Which of a feature's events it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Each of them.
    All,
    /// At least one (the gates hear about checks from `check_suite` or `status`, whichever the
    /// repository's CI uses).
    Any,
}

#[derive(Clone, Copy, Debug)]
pub struct Feature {
    /// A short key, used in answers (`missing_events`).
    pub id: &'static str,
    /// What a person calls it (the README's first column).
    pub name: &'static str,
    pub needs: Needs,
    pub events: &'static [Event],
    pub permissions: &'static [(Permission, Access)],
    /// Only in token mode: an App gets this another way (the manifest leaves it out).
    pub token_only: bool,
    /// What goes wrong when the events never arrive (`.status` says it).
    pub without_events: &'static str,
}

/// Every feature, with what it needs. One row each; the order is the README table's.
#[rustfmt::skip]
pub const FEATURES: &[Feature] = &[
    Feature { id: "deployments", name: "Merged pull requests become deployments, run through the deploy hook, statuses recorded", needs: Needs::All, events: &[PULL_REQUEST, DEPLOYMENT, DEPLOYMENT_STATUS], permissions: &[(DEPLOYMENTS, Write), (PULL_REQUESTS, Read), (METADATA, Read)], token_only: false, without_events: "merges deploy nothing (no `pull_request`), the deployments created never run (no `deployment`), or statuses posted by people are not seen (no `deployment_status`)" },
    Feature { id: "commands", name: "Comment commands (`.deploy`, `.rollback`, `.lock`, `.unlock`, `.status`, `.help`)", needs: Needs::All, events: &[ISSUE_COMMENT], permissions: &[(ISSUES, Write), (PULL_REQUESTS, Read)], token_only: false, without_events: "comments get no answer" },
    Feature { id: "gates", name: "Gates: a merge waits for its pending required checks", needs: Needs::Any, events: &[CHECK_SUITE, STATUS], permissions: &[(CHECKS, Read), (COMMIT_STATUSES, Read)], token_only: false, without_events: "a merge waiting for its checks deploys only when the sweep asks GitHub again (every 5 minutes), not when they pass" },
    Feature { id: "config", name: "Configuration as code (`.github/deploy-webhook.yml`): read per repository, its check runs and the dry run on pull requests", needs: Needs::All, events: &[PUSH, PULL_REQUEST], permissions: &[(CONTENTS, Read), (CHECKS, Write)], token_only: false, without_events: "a changed configuration file is read only when an instance's copy is older than `CONFIG_RECHECK_SECONDS`, and pushes get no check run (no `push`)" },
    Feature { id: "slack", name: "Chat notices (`SLACK_WEBHOOK_URL`)", needs: Needs::All, events: &[], permissions: &[], token_only: false, without_events: "" },
    Feature { id: "redelivery", name: "Failed deliveries redelivered by the sweep, token mode (`REDELIVER_HOOKS`; an App's own webhook needs nothing more)", needs: Needs::All, events: &[], permissions: &[(WEBHOOKS, Write)], token_only: true, without_events: "" },
];

/// Every event some feature needs, each once, in table order.
pub fn events() -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    for event in FEATURES.iter().flat_map(|f| f.events) {
        if !out.contains(event) {
            out.push(*event);
        }
    }
    out
}

/// Every permission some feature needs, at the highest access any asks for, in table order.
/// `app`: only what a GitHub App needs (without the token-only rows).
pub fn permissions(app: bool) -> Vec<(Permission, Access)> {
    let mut out: Vec<(Permission, Access)> = Vec::new();
    for (permission, access) in FEATURES.iter().filter(|f| !(app && f.token_only)).flat_map(|f| f.permissions) {
        match out.iter_mut().find(|(p, _)| p == permission) {
            Some((_, have)) => *have = (*have).max(*access),
            None => out.push((*permission, *access)),
        }
    }
    out
}

/// The event a delivery's `X-GitHub-Event` names, if some feature needs it.
pub fn tracked(name: &str) -> Option<Event> {
    events().into_iter().find(|e| e.name == name)
}

/// The features whose events `seen` does not cover: for each, the events that would cover it.
pub fn missing<'a>(
    features: impl IntoIterator<Item = &'a Feature>,
    seen: impl Fn(&str) -> bool,
) -> Vec<(&'a Feature, Vec<Event>)> {
    features
        .into_iter()
        .filter_map(|f| {
            let absent: Vec<Event> = f.events.iter().filter(|e| !seen(e.name)).copied().collect();
            let covered = match f.needs {
                Needs::All => absent.is_empty(),
                Needs::Any => absent.len() < f.events.len(),
            };
            (!covered).then_some((f, absent))
        })
        .collect()
}

/// The feature with this id.
pub fn feature(id: &str) -> Option<&'static Feature> {
    FEATURES.iter().find(|f| f.id == id)
}

fn list(items: impl IntoIterator<Item = String>, last: &str) -> String {
    let items: Vec<String> = items.into_iter().collect();
    match items.as_slice() {
        [] => "none".to_owned(),
        [one] => one.clone(),
        [init @ .., end] => format!("{} {last} {end}", init.join(", ")),
    }
}

/// The events of a feature as the README shows them: `**Label** (name)`.
pub fn events_text(events: &[Event], needs: Needs) -> String {
    list(
        events.iter().map(|e| format!("**{}** (`{}`)", e.label, e.name)),
        if needs == Needs::Any { "or" } else { "and" },
    )
}

fn permissions_text(permissions: &[(Permission, Access)]) -> String {
    let text: Vec<String> = permissions.iter().map(|(p, a)| format!("**{}**: {}", p.label, a.label())).collect();
    if text.is_empty() { "none".to_owned() } else { text.join("; ") }
}

/// The README's table "What each feature needs", and the line with everything together.
pub fn readme_table() -> String {
    let mut out = String::from("| Feature | Webhook events | Permissions (token and App) |\n|---|---|---|\n");
    for f in FEATURES {
        let events = if f.events.is_empty() { "none".to_owned() } else { events_text(f.events, f.needs) };
        let mut permissions = permissions_text(f.permissions);
        if f.token_only {
            permissions.push_str(" (token only)");
        }
        out.push_str(&format!("| {} | {} | {} |\n", f.name, events, permissions));
    }
    out.push_str(&format!(
        "\nAll together (what `github-app-manifest.json` asks for): events {}; permissions {}; in token mode \
         also {}.\n",
        list(events().iter().map(|e| format!("**{}**", e.label)), "and"),
        permissions_text(&permissions(true)),
        permissions_text(
            &permissions(false).into_iter().filter(|p| !permissions(true).contains(p)).collect::<Vec<_>>()
        ),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_merge_to_the_highest_access_and_token_only_rows_stay_out_of_the_app() {
        let app = permissions(true);
        assert!(app.contains(&(DEPLOYMENTS, Write)) && app.contains(&(PULL_REQUESTS, Read)), "{app:?}");
        assert_eq!(app.iter().filter(|(p, _)| *p == PULL_REQUESTS).count(), 1);
        assert!(!app.iter().any(|(p, _)| *p == WEBHOOKS));
        assert!(permissions(false).contains(&(WEBHOOKS, Write)));
    }

    #[test]
    fn a_feature_is_missing_when_its_events_never_came() {
        let seen = |names: &'static [&'static str]| move |n: &str| names.contains(&n);
        let gates = feature("gates").into_iter();
        assert_eq!(missing(gates.clone(), seen(&["pull_request"])).len(), 1);
        assert!(missing(gates.clone(), seen(&["status"])).is_empty(), "either event covers the gates");
        let deployments = feature("deployments").into_iter();
        let absent = missing(deployments, seen(&["pull_request", "deployment_status"]));
        assert_eq!(absent[0].1, vec![DEPLOYMENT]);
        assert!(missing(feature("slack"), seen(&[])).is_empty(), "no events, nothing missing");
    }

    #[test]
    fn only_the_events_a_feature_needs_are_tracked() {
        assert_eq!(tracked("check_suite"), Some(CHECK_SUITE));
        assert_eq!(tracked("ping"), None);
        assert_eq!(tracked("issues"), None);
    }
}
