//! The layers, pins and dry run, without I/O; the JSON Schema against the types.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::dry_run::{changes, table};
use super::resolve::{COMMAND_KEYS, ENVIRONMENT_KEYS, TOP_KEYS, parse_pins};
use super::*;
use crate::domain::rules::BranchPattern;
use crate::domain::types::{BranchName, Environment};

fn env(name: &str) -> Environment {
    Environment::parse(name).unwrap()
}

/// A stack like the README's: `@default=production`, a hook for staging, two named secrets.
fn stack() -> StackDefaults {
    let mut s = StackDefaults {
        environments: Vec::new(),
        commands: CommandSettings { permissions: vec!["write".into(), "admin".into()], sha_deploys: false },
        default_hook: None,
        hooks: HashMap::from([("STAGING".to_owned(), "https://deploy.example.com/staging".to_owned())]),
        default_environment_url: None,
        environment_urls: HashMap::new(),
        default_timeout: Duration::from_secs(1800),
        timeouts: HashMap::new(),
        required_contexts: HashMap::new(),
        checks_wait: Duration::from_secs(3600),
        default_hook_secret: true,
        hook_secret_names: HashSet::from(["STAGING".to_owned(), "WEB_HOOK".to_owned()]),
        default_slack: false,
        slack_names: HashSet::from(["RELEASES".to_owned()]),
        limits: OperatorLimits {
            pins: Vec::new(),
            allowed_hook_hosts: vec!["deploy.example.com".into(), "*.deploys.example.net".into()],
            permission_floor: 2,
        },
        unchecked_secret_names: false,
    };
    let mut production = s.environment(&env("production"));
    production.branches = vec![BranchPattern::DefaultBranch];
    s.environments = vec![production];
    s
}

fn layer(repo: &str, source: &str) -> Layer {
    let label = format!("{repo}:{CONFIG_PATH}");
    Layer {
        repo: repo.into(),
        blob: format!("blob-{repo}"),
        file: parse(&label, source).unwrap(),
        label,
        source: source.into(),
    }
}

fn errors(layers: &[Layer]) -> Vec<ConfigIssue> {
    resolve(&stack(), layers).unwrap_err()
}

#[test]
fn no_file_is_the_stacks_settings() {
    let s = resolve(&stack(), &[]).unwrap();
    assert_eq!(s.environments_for(&BranchName::parse("main").unwrap(), Some("main")), [env("production")]);
    assert_eq!(s.environment(&env("production")).unwrap().action, ActionSettings::Succeed);
    assert!(s.sources.is_empty());
}

#[test]
fn precedence_is_stack_then_org_then_extends_then_repo() {
    let org = layer(
        "octo/.github",
        "environments:\n  production:\n    timeout_minutes: 10\n    environment_url: https://org.example.com\n    required_contexts: [org-ci]\n",
    );
    let shared = layer(
        "octo/shared",
        "environments:\n  production:\n    timeout_minutes: 20\n    required_contexts: [shared-ci]\n",
    );
    let repo = layer("octo/api", "_extends: shared\nenvironments:\n  production:\n    required_contexts: [api-ci]\n");
    let s = resolve(&stack(), &[org, shared, repo]).unwrap();
    let p = s.environment(&env("production")).unwrap();
    assert_eq!(p.timeout, Duration::from_secs(1200), "_extends over the organisation");
    assert_eq!(p.environment_url.as_deref(), Some("https://org.example.com"), "the organisation over the stack");
    assert_eq!(p.required_contexts, Some(vec!["api-ci".to_owned()]), "the repository over all, lists replaced");
    assert_eq!(p.branches, [BranchPattern::DefaultBranch], "the stack's rule kept");
    let sources: Vec<&str> = s.sources.iter().map(|f| f.repo.as_str()).collect();
    assert_eq!(sources, ["octo/.github", "octo/shared", "octo/api"]);
}

#[test]
fn a_file_adds_environments_in_its_order_and_can_stop_merges_deploying() {
    let repo = layer(
        "octo/web",
        "environments:\n  staging:\n    branches: ['release/*']\n    branch_deploys: true\n  docs:\n    branches: [main]\n  production:\n    branches: []\n",
    );
    let s = resolve(&stack(), &[repo]).unwrap();
    let names: Vec<&str> = s.environments.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["production", "staging", "docs"]);
    let on = |b: &str| s.environments_for(&BranchName::parse(b).unwrap(), Some("main"));
    assert_eq!(on("main"), [env("docs")]);
    assert_eq!(on("release/2"), [env("staging")]);
    let staging = s.environment(&env("staging")).unwrap();
    assert!(staging.branch_deploys && s.branch_deploys_to(&env("staging")));
    // The stack's hook for staging, with staging's own secret.
    assert_eq!(
        staging.action,
        ActionSettings::Hook {
            url: "https://deploy.example.com/staging".into(),
            secret: SecretName::Named("STAGING".into())
        }
    );
    assert!(!staging.production && s.environment(&env("production")).unwrap().production);
}

#[test]
fn hooks_name_secrets_the_stack_holds_on_hosts_it_allows() {
    let ok = layer(
        "octo/web",
        "environments:\n  preview:\n    action:\n      hook:\n        url: https://eu.deploys.example.net/x\n        secret: web-hook\n    slack:\n      secret: releases\n",
    );
    let s = resolve(&stack(), &[ok]).unwrap();
    let preview = s.environment(&env("preview")).unwrap();
    assert_eq!(
        preview.action,
        ActionSettings::Hook {
            url: "https://eu.deploys.example.net/x".into(),
            secret: SecretName::Named("WEB_HOOK".into())
        }
    );
    assert_eq!(preview.slack, Some(SecretName::Named("RELEASES".into())));

    let bad = layer(
        "octo/web",
        "environments:\n  preview:\n    action:\n      hook:\n        url: https://evil.example.org/x\n        secret: prod-hook\n  other:\n    action:\n      hook:\n        url: http://deploy.example.com/x\n    slack:\n      secret: nope\n",
    );
    let e = errors(&[bad]);
    let keys: Vec<&str> = e.iter().filter_map(|i| i.key.as_deref()).collect();
    assert_eq!(
        keys,
        [
            "environments.preview.action.hook.url",
            "environments.preview.action.hook.secret",
            "environments.other.action.hook.url",
            "environments.other.slack.secret"
        ],
        "{e:#?}"
    );
    assert!(e[0].message.contains("ALLOWED_HOOK_HOSTS"), "{}", e[0]);
    assert!(e[1].message.contains("HOOK_SIGNING_SECRET_PROD_HOOK"), "{}", e[1]);
    assert!(e[2].message.contains("https://"), "{}", e[2]);
    assert_eq!((e[0].line, e[0].column), (Some(5), Some(9)), "{}", e[0]);
}

#[test]
fn pins_and_the_permission_floor_are_errors_in_the_file_that_tries() {
    let mut s = stack();
    s.limits.pins =
        parse_pins("commands.sha_deploys, environments.production, environments.*.timeout_minutes").unwrap();
    let file = layer(
        "octo/api",
        "environments:\n  production:\n    branches: [main]\n  staging:\n    timeout_minutes: 5\ncommands:\n  sha_deploys: true\n  permissions: [triage, admin, wirte]\n",
    );
    let e = resolve(&s, &[file]).unwrap_err();
    let shown: Vec<String> = e.iter().map(ToString::to_string).collect();
    assert!(shown[0].contains("environments.production.branches") && shown[0].contains("pinned"), "{shown:#?}");
    assert!(shown[1].contains("environments.staging.timeout_minutes") && shown[1].contains("pinned"), "{shown:#?}");
    assert!(shown[2].contains("commands.sha_deploys") && shown[2].contains("pinned"), "{shown:#?}");
    assert!(shown[3].contains("`triage`") && shown[3].contains("COMMAND_PERMISSION_FLOOR=write"), "{shown:#?}");
    assert!(shown[4].contains("did you mean `write`?"), "{shown:#?}");
    assert_eq!(e.len(), 5);
    assert!(parse_pins("environments.*.colour").is_err());
    // A pinned environment cannot be reached by another spelling.
    let mut s = stack();
    s.limits.pins = parse_pins("environments.production.action").unwrap();
    for sneaky in ["'production ':\n    action: none\n", "Production:\n    action: none\n"] {
        let file = layer("octo/api", &format!("environments:\n  {sneaky}"));
        let e = resolve(&s, &[file]).unwrap_err();
        assert_eq!(e.len(), 1, "{e:#?}");
    }
    assert!(parse_pins("commands").is_ok());
}

#[test]
fn invalid_values_are_each_reported_with_their_place() {
    let file = layer(
        "octo/api",
        "environments:\n  staging:\n    timeout_minutes: 0\n    checks_wait_minutes: 5000\n    environment_url: not a url\n  'bad,name':\n    production: true\n",
    );
    let e = errors(&[file]);
    assert_eq!(e.len(), 4, "{e:#?}");
    assert_eq!(e[0].line, Some(3));
    assert_eq!(e[1].line, Some(4));
    assert_eq!(e[2].line, Some(5));
}

#[test]
fn the_dry_run_lists_additions_removals_and_changes() {
    let now = resolve(
        &stack(),
        &[layer("octo/web", "environments:\n  staging:\n    branches: [main]\n  docs:\n    branches: [main]\n")],
    )
    .unwrap();
    let after = resolve(
        &stack(),
        &[layer(
            "octo/web",
            "environments:\n  staging:\n    branches: ['release/*']\n    required_contexts: [ci]\n  preview:\n    branch_deploys: true\ncommands:\n  permissions: [admin]\n",
        )],
    )
    .unwrap();
    let c = changes(&now, &after);
    type Row<'a> = (Option<&'a str>, &'a str, Option<&'a str>, Option<&'a str>);
    let rows: Vec<Row> = c
        .iter()
        .map(|c| (c.environment.as_deref(), c.setting.as_str(), c.before.as_deref(), c.after.as_deref()))
        .collect();
    assert!(rows.contains(&(Some("staging"), "branches", Some("main"), Some("release/*"))), "{rows:#?}");
    assert!(rows.contains(&(Some("staging"), "required_contexts", Some("—"), Some("ci"))), "{rows:#?}");
    let added = rows.iter().find(|r| r.0 == Some("preview")).unwrap();
    assert_eq!((added.1, added.2), ("(environment)", None), "{rows:#?}");
    assert!(added.3.unwrap().starts_with("added: ") && added.3.unwrap().contains("branch_deploys true"), "{rows:#?}");
    assert_eq!(rows.iter().filter(|r| r.0 == Some("preview")).count(), 1, "one row for an added environment");
    let removed = rows.iter().find(|r| r.0 == Some("docs")).unwrap();
    assert!(removed.2.unwrap().contains("branches main") && removed.3.is_none(), "{rows:#?}");
    assert!(rows.contains(&(None, "commands.permissions", Some("write, admin"), Some("admin"))), "{rows:#?}");
    assert!(!rows.iter().any(|r| r.0 == Some("production")), "unchanged environments are not listed: {rows:#?}");
    let md = table(&c);
    assert!(md.starts_with("| Environment | Setting | Now | After merge |"), "{md}");
    assert!(md.contains("| docs | (environment) | action none; branch_deploys false; branches main;"), "{md}");
    assert!(md.contains("| removed |"), "{md}");
    assert_eq!(table(&changes(&now, &now)), "Merging this changes nothing deploy-webhook does.");
}

/// `schema/deploy-webhook.schema.json` is what the types generate: regenerate it with
/// `UPDATE_SCHEMA=1 cargo test --lib repo_config`.
#[test]
fn the_json_schema_in_the_repository_is_the_types_schema() {
    let schema = schemars::schema_for!(RepoFile);
    let generated = serde_json::to_string_pretty(&schema).unwrap() + "\n";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/deploy-webhook.schema.json");
    if std::env::var("UPDATE_SCHEMA").is_ok() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert_eq!(committed, generated, "run UPDATE_SCHEMA=1 cargo test --lib repo_config to regenerate it");

    // The pin patterns know every key the schema has.
    let value = serde_json::to_value(&schema).unwrap();
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v["properties"].as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let sorted = |list: &[&str]| {
        let mut l: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        l.sort();
        l
    };
    assert_eq!(keys(&value), sorted(&TOP_KEYS));
    assert_eq!(keys(&value["$defs"]["EnvironmentFile"]), sorted(&ENVIRONMENT_KEYS));
    assert_eq!(keys(&value["$defs"]["CommandsFile"]), sorted(&COMMAND_KEYS));
}

#[test]
fn the_readme_example_is_a_valid_file() {
    let readme = include_str!("../../README.md");
    let start = readme.find("```yaml\n# yaml-language-server").expect("the README has a complete example");
    let example = &readme[start + 8..];
    let example = &example[..example.find("```").unwrap()];
    let file = layer("octo/api", example);
    resolve(&stack(), &[file]).unwrap();
}
