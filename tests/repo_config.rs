#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking
//! `.github/deploy-webhook.yml` end to end: read through the contents API (the GitHub stand-in),
//! layered over the stack's settings and the organisation's file, cached per warm instance,
//! invalidated by a push, kept last-valid when broken, and dry-run on pull requests.

mod common;

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, ResponseTemplate};

const FILE: &str = ".github/deploy-webhook.yml";
const HEAD: &str = "dddddddddddddddddddddddddddddddddddddddd";

fn contents_path(repo: &str) -> String {
    format!("/repos/{repo}/contents/{FILE}")
}

fn content(text: &str, sha: &str) -> ResponseTemplate {
    let encoded = base64::engine::general_purpose::STANDARD.encode(text);
    // GitHub wraps the base64 at 60 characters.
    let wrapped: Vec<String> = encoded.as_bytes().chunks(60).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
    ResponseTemplate::new(200).set_body_json(json!({
        "type": "file", "encoding": "base64", "size": text.len(), "sha": sha, "path": FILE,
        "content": wrapped.join("\n"),
    }))
}

/// A priority above every earlier one's: the stand-in answers with the newest mock that matches.
fn newest() -> u8 {
    static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(250);
    NEXT.fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
}

/// Serves `text` as `repo`'s file on its default branch, replacing what was served.
async fn serve(app: &TestApp, repo: &str, text: &str, sha: &str) {
    Mock::given(method("GET"))
        .and(path(contents_path(repo)))
        .respond_with(content(text, sha))
        .with_priority(newest())
        .mount(&app.github)
        .await;
}

async fn accept_deployments(app: &TestApp) {
    Mock::given(method("POST"))
        .and(path(format!("/repos/{REPO}/deployments")))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 700})))
        .mount(&app.github)
        .await;
}

async fn accept_check_runs(app: &TestApp) {
    Mock::given(method("POST"))
        .and(path(format!("/repos/{REPO}/check-runs")))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 1})))
        .mount(&app.github)
        .await;
}

async fn created_environments(app: &TestApp) -> Vec<String> {
    app.github_requests()
        .await
        .iter()
        .filter(|r| r.method.as_str() == "POST" && r.url.path().ends_with("/deployments"))
        .map(|r| r.body_json::<Value>().unwrap()["environment"].as_str().unwrap().to_owned())
        .collect()
}

async fn check_runs(app: &TestApp) -> Vec<Value> {
    app.github_requests()
        .await
        .iter()
        .filter(|r| r.url.path().ends_with("/check-runs"))
        .map(|r| r.body_json().unwrap())
        .collect()
}

fn push(touching: bool) -> Value {
    let files = if touching { vec![FILE] } else { vec!["src/lib.rs"] };
    json!({
        "ref": "refs/heads/master", "before": SHA, "after": HEAD, "deleted": false,
        "commits": [{"id": HEAD, "added": [], "modified": files, "removed": []}],
        "repository": {"full_name": REPO, "default_branch": "master"},
    })
}

fn pull_request_opened() -> Value {
    let mut p = merged_pr(9, "master");
    p["action"] = json!("opened");
    p["pull_request"]["merged"] = json!(false);
    p["pull_request"]["head"] = json!({"sha": HEAD, "ref": "config", "repo": {"full_name": REPO}});
    p
}

fn org() -> String {
    format!("{}/.github", REPO.split('/').next().unwrap())
}

#[tokio::test]
async fn a_repository_file_chooses_the_environments_and_a_warm_delivery_reads_nothing() {
    let app = TestApp::start().await;
    accept_deployments(&app).await;
    serve(&app, REPO, "environments:\n  production:\n    branches: []\n  docs:\n    branches: [master]\n", "b1").await;
    let (status, body) = app.send(&Event::github("pull_request", &new_delivery_id(), &merged_pr(1, "master"))).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("processed")), "{body}");
    assert_eq!(created_environments(&app).await, ["docs"], "the file's rule, not the stack's @default=production");
    let cold = app.config_calls().await;
    assert_eq!(cold, [contents_path(REPO), contents_path(&org())], "the repository's file, then the organisation's");

    // Warm: the next deliveries make no call for configuration.
    app.send(&Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master"))).await;
    app.send(&Event::github("deployment", &new_delivery_id(), &deployment_created(5, "staging"))).await;
    assert_eq!(app.config_calls().await.len(), 2, "{:?}", app.config_calls().await);
    // The last valid configuration is kept, with the blob it came from.
    let items = app.config_items().await;
    let kept = items.iter().find(|i| attr_s(i, "sk") == Some("CONFIG")).expect("a CONFIG item");
    assert!(attr_s(kept, "doc").is_some_and(|d| d.contains("\"blob\":\"b1\"")), "{kept:?}");
}

#[tokio::test]
async fn layers_are_stack_then_organisation_then_extends_then_repository() {
    let app = TestApp::start().await;
    accept_deployments(&app).await;
    // The organisation adds staging on master; the shared file moves it to release/*; the
    // repository, extending it, adds qa.
    serve(&app, &org(), "environments:\n  staging:\n    branches: [master]\n    timeout_minutes: 5\n", "o1").await;
    serve(&app, "Codertocat/shared", "environments:\n  staging:\n    branches: ['release/*']\n", "s1").await;
    serve(&app, REPO, "_extends: shared\nenvironments:\n  qa:\n    branches: ['release/*']\n", "r1").await;
    app.send(&Event::github("pull_request", &new_delivery_id(), &merged_pr(1, "release/2"))).await;
    assert_eq!(created_environments(&app).await, ["staging", "qa"]);
    app.send(&Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master"))).await;
    assert_eq!(created_environments(&app).await, ["staging", "qa", "production"], "the stack's rule stays");
}

#[tokio::test]
async fn github_down_with_nothing_read_answers_5xx_and_deploys_nothing() {
    let app = TestApp::start().await;
    accept_deployments(&app).await;
    Mock::given(method("GET"))
        .and(path(contents_path(REPO)))
        .respond_with(ResponseTemplate::new(502))
        .mount(&app.github)
        .await;
    let (status, body) = app.send(&Event::github("pull_request", &new_delivery_id(), &merged_pr(1, "master"))).await;
    assert!(status >= 500, "{status} {body}");
    assert!(created_environments(&app).await.is_empty());
}

#[tokio::test]
async fn an_invalid_file_never_valid_refuses_and_a_broken_one_keeps_the_last_valid() {
    let app = TestApp::start().await;
    accept_deployments(&app).await;
    accept_check_runs(&app).await;
    serve(&app, REPO, "environments:\n  docs:\n    brnches: [master]\n", "bad1").await;
    let (status, body) = app.send(&Event::github("pull_request", &new_delivery_id(), &merged_pr(1, "master"))).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("refused")), "{body}");
    let reason = body["detail"]["reason"].as_str().unwrap();
    assert!(reason.contains("brnches") && reason.contains("did you mean `branches`"), "{reason}");
    assert!(created_environments(&app).await.is_empty());

    // Fixed by a push: valid, in force at once, and the commit says so.
    serve(&app, REPO, "environments:\n  docs:\n    branches: [master]\n", "good1").await;
    let (status, body) = app.send(&Event::github("push", &new_delivery_id(), &push(true))).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("config_valid")), "{body}");
    let runs = check_runs(&app).await;
    assert_eq!((runs[0]["head_sha"].as_str(), runs[0]["conclusion"].as_str()), (Some(HEAD), Some("success")));

    // Broken again: the last valid one stays in force, the push's commit gets every error.
    serve(
        &app,
        REPO,
        "environments:\n  docs:\n    branches: [master]\n    timeout_minutes: 0\n    colour: red\n",
        "bad2",
    )
    .await;
    let (_, body) = app.send(&Event::github("push", &new_delivery_id(), &push(true))).await;
    assert_eq!(body["status"], "config_invalid", "{body}");
    let failed = &check_runs(&app).await[1];
    assert_eq!(
        (failed["name"].as_str(), failed["conclusion"].as_str()),
        (Some("deploy-webhook/config"), Some("failure"))
    );
    let annotations = failed["output"]["annotations"].as_array().unwrap();
    assert_eq!(annotations[0]["path"], FILE);
    assert_eq!(annotations[0]["start_line"], 5, "{failed}");
    assert!(annotations[0]["message"].as_str().unwrap().contains("colour"), "{failed}");
    let (_, body) = app.send(&Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master"))).await;
    assert_eq!(body["status"], "processed", "{body}");
    assert_eq!(
        created_environments(&app).await,
        ["production", "docs"],
        "the stack's production, and the last valid file's docs"
    );
    let items = app.config_items().await;
    let kept = items.iter().find(|i| attr_s(i, "sk") == Some("CONFIG")).unwrap();
    let doc = attr_s(kept, "doc").unwrap();
    assert!(doc.contains("good1") && doc.contains(HEAD), "the last valid blob, and the commit that broke it: {doc}");
}

#[tokio::test]
async fn a_push_that_touches_the_file_is_read_at_once_and_others_read_nothing() {
    let app = TestApp::start().await;
    accept_deployments(&app).await;
    accept_check_runs(&app).await;
    serve(&app, REPO, "environments:\n  docs:\n    branches: [master]\n", "v1").await;
    app.send(&Event::github("pull_request", &new_delivery_id(), &merged_pr(1, "master"))).await;
    let (_, body) = app.send(&Event::github("push", &new_delivery_id(), &push(false))).await;
    assert_eq!(body["status"], "ignored", "{body}");
    assert_eq!(app.config_calls().await.len(), 2);
    serve(&app, REPO, "environments:\n  api-docs:\n    branches: [master]\n", "v2").await;
    app.send(&Event::github("push", &new_delivery_id(), &push(true))).await;
    app.send(&Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master"))).await;
    let created = created_environments(&app).await;
    assert_eq!(created, ["production", "docs", "production", "api-docs"], "the new file at once");
}

#[tokio::test]
async fn a_pull_request_that_changes_the_file_gets_a_dry_run_table() {
    let app = TestApp::start().await;
    accept_check_runs(&app).await;
    serve(&app, REPO, "environments:\n  docs:\n    branches: [master]\n", "now").await;
    Mock::given(method("GET"))
        .and(path(contents_path(REPO)))
        .and(query_param("ref", HEAD))
        .respond_with(content(
            "environments:\n  docs:\n    branches: ['release/*']\n  preview:\n    branch_deploys: true\n",
            "proposed",
        ))
        .with_priority(newest())
        .mount(&app.github)
        .await;
    let (status, body) = app.send(&Event::github("pull_request", &new_delivery_id(), &pull_request_opened())).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("config_valid")), "{body}");
    let run = &check_runs(&app).await[0];
    assert_eq!((run["head_sha"].as_str(), run["conclusion"].as_str()), (Some(HEAD), Some("success")));
    let summary = run["output"]["summary"].as_str().unwrap();
    assert!(summary.contains("| docs | branches | master | release/* |"), "{summary}");
    assert!(summary.contains("| preview | (environment) | — | added: "), "{summary}");

    // A proposal that breaks the file: a failing check run, nothing else changes.
    Mock::given(method("GET"))
        .and(path(contents_path(REPO)))
        .and(query_param("ref", HEAD))
        .respond_with(content("environments:\n  docs:\n    branches: [master]\n    action: {lambda: x}\n", "broken"))
        .with_priority(newest())
        .mount(&app.github)
        .await;
    let (_, body) = app.send(&Event::github("pull_request", &new_delivery_id(), &pull_request_opened())).await;
    assert_eq!(body["status"], "config_invalid", "{body}");
    let run = &check_runs(&app).await[1];
    assert_eq!(run["conclusion"], "failure");
    assert_eq!(run["output"]["annotations"][0]["start_line"], 4, "{run}");

    // A pull request that leaves the file alone: nothing posted.
    Mock::given(method("GET"))
        .and(path(contents_path(REPO)))
        .and(query_param("ref", HEAD))
        .respond_with(content("environments:\n  docs:\n    branches: [master]\n", "now"))
        .with_priority(newest())
        .mount(&app.github)
        .await;
    let (_, body) = app.send(&Event::github("pull_request", &new_delivery_id(), &pull_request_opened())).await;
    assert_eq!(body["status"], "ignored", "{body}");
    assert_eq!(check_runs(&app).await.len(), 2);
}

#[tokio::test]
async fn a_first_file_that_is_broken_leaves_the_stacks_settings_in_force() {
    let app = TestApp::start().await;
    accept_deployments(&app).await;
    accept_check_runs(&app).await;
    // No file anywhere: the stack's settings, valid, and kept as such.
    let (_, body) = app.send(&Event::github("pull_request", &new_delivery_id(), &merged_pr(1, "master"))).await;
    assert_eq!(body["status"], "processed", "{body}");
    serve(&app, REPO, "environments:\n  docs:\n    branches: [master]\n    colour: red\n", "first-bad").await;
    let (_, body) = app.send(&Event::github("push", &new_delivery_id(), &push(true))).await;
    assert_eq!(body["status"], "config_invalid", "{body}");
    let (_, body) = app.send(&Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master"))).await;
    assert_eq!(body["status"], "processed", "the last valid configuration (no file) stays: {body}");
    assert_eq!(created_environments(&app).await, ["production", "production"]);
}

#[tokio::test]
async fn forks_get_no_dry_run_and_a_rate_limited_read_is_never_no_file() {
    let app = TestApp::start().await;
    accept_check_runs(&app).await;
    let mut fork = pull_request_opened();
    fork["pull_request"]["head"]["repo"] = json!({"full_name": "stranger/Hello-World"});
    let (status, body) = app.send(&Event::github("pull_request", &new_delivery_id(), &fork)).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ignored")), "{body}");
    assert!(app.config_calls().await.is_empty() && check_runs(&app).await.is_empty());

    // A secondary rate limit answers 403 without a wait: GitHub unavailable, not "no file".
    Mock::given(method("GET"))
        .and(path(contents_path(REPO)))
        .respond_with(
            ResponseTemplate::new(403).set_body_json(json!({"message": "You have exceeded a secondary rate limit"})),
        )
        .mount(&app.github)
        .await;
    accept_deployments(&app).await;
    let (status, body) = app.send(&Event::github("pull_request", &new_delivery_id(), &merged_pr(1, "master"))).await;
    assert!(status >= 500, "{status} {body}");
    assert!(created_environments(&app).await.is_empty());
}
