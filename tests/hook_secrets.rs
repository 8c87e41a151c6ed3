#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking
//! The deploy hooks' secrets are apart from the webhook's: a hook can neither forge a GitHub
//! delivery nor call back a run of another environment, and GitHub's secret is no hook secret.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use serde_json::{Value, json};
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const STAGING_SECRET: &str = "test-staging-hook-secret";

struct Statuses(Arc<AtomicU64>);

impl Respond for Statuses {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let id = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        ResponseTemplate::new(201).set_body_json(json!({"id": id, "state": body["state"]}))
    }
}

/// Production and staging, each with an asynchronous hook; staging has a hook secret of its own,
/// production the default one.
async fn app() -> (TestApp, MockServer) {
    let hook = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(202)).mount(&hook).await;
    let app = TestApp::builder()
        .rules("main=production,release/*=staging")
        .hook(None, &format!("{}/production", hook.uri()))
        .hook(Some("STAGING"), &format!("{}/staging", hook.uri()))
        .hook_secret("STAGING", STAGING_SECRET)
        .start()
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"/deployments/\d+/statuses$"))
        .respond_with(Statuses(Arc::default()))
        .mount(&app.github)
        .await;
    (app, hook)
}

/// Starts deployment `id` in `environment`; returns the callback URL its hook got, after
/// checking the call was signed with `secret`.
async fn start(app: &TestApp, hook: &MockServer, id: u64, environment: &str, secret: &str) -> String {
    let (status, body) =
        app.send(&Event::github("deployment", &new_delivery_id(), &deployment_created(id, environment))).await;
    assert_eq!((status, body["detail"]["state"].as_str()), (200, Some("in_progress")), "{body}");
    let requests = hook.received_requests().await.unwrap();
    let call = requests.iter().find(|r| r.body_json::<Value>().unwrap()["deployment_id"] == id).unwrap();
    assert_eq!(call.url.path(), format!("/{environment}"));
    let signature = call.headers.get("x-hub-signature-256").unwrap().to_str().unwrap();
    assert_eq!(signature, sign(secret, &call.body), "{environment}'s hook call is signed with its hook secret");
    call.body_json::<Value>().unwrap()["callback_url"].as_str().unwrap().to_owned()
}

async fn statuses_posted(app: &TestApp) -> usize {
    app.github_requests().await.iter().filter(|r| r.url.path().ends_with("/statuses")).count()
}

#[tokio::test]
async fn a_delivery_signed_with_a_hook_secret_is_refused() {
    let (app, _hook) = app().await;
    for secret in [HOOK_SECRET, STAGING_SECRET] {
        let mut forged = Event::github("pull_request", &new_delivery_id(), &merged_pr(9, "main"));
        forged.resign(secret);
        let (status, body) = app.send(&forged).await;
        assert_eq!((status, body["status"].as_str()), (401, Some("unauthorized")), "{body}");
    }
    assert!(app.items().await.is_empty());
    assert!(app.github_calls().await.is_empty());
}

#[tokio::test]
async fn a_callback_signed_with_the_webhook_secret_is_refused() {
    let (app, hook) = app().await;
    let url = start(&app, &hook, 31, "production", HOOK_SECRET).await;
    let before = (app.items().await, statuses_posted(&app).await);
    let (status, _) = app.send(&Event::callback(&url, &json!({"state": "success"}), SECRET)).await;
    assert_eq!(status, 401);
    assert_eq!((app.items().await, statuses_posted(&app).await), before);
    // The hook's own secret is accepted.
    let (status, body) = app.send(&Event::callback(&url, &json!({"state": "success"}), HOOK_SECRET)).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("accepted")), "{body}");
}

#[tokio::test]
async fn one_environments_hook_secret_cannot_call_back_another_environments_run() {
    let (app, hook) = app().await;
    let production = start(&app, &hook, 41, "production", HOOK_SECRET).await;
    let staging = start(&app, &hook, 42, "staging", STAGING_SECRET).await;
    let before = (app.items().await, statuses_posted(&app).await);
    let done = json!({"state": "success"});
    assert_eq!(app.send(&Event::callback(&production, &done, STAGING_SECRET)).await.0, 401);
    assert_eq!(app.send(&Event::callback(&staging, &done, HOOK_SECRET)).await.0, 401);
    assert_eq!((app.items().await, statuses_posted(&app).await), before, "a refused callback changed something");
    assert_eq!(app.send(&Event::callback(&staging, &done, STAGING_SECRET)).await.1["status"], "accepted");
    assert_eq!(app.send(&Event::callback(&production, &done, HOOK_SECRET)).await.1["status"], "accepted");
}

#[tokio::test]
async fn a_callback_body_over_4_kb_is_refused_before_anything_reads_it() {
    let (app, hook) = app().await;
    let url = start(&app, &hook, 51, "production", HOOK_SECRET).await;
    let before = (app.items().await, statuses_posted(&app).await);
    // Correctly signed, but too large: 413, whatever it says.
    let big = json!({"state": "success", "description": "x".repeat(4 * 1024)});
    let (status, body) = app.send(&Event::callback(&url, &big, HOOK_SECRET)).await;
    assert_eq!((status, body["status"].as_str()), (413, Some("too_large")), "{body}");
    assert_eq!((app.items().await, statuses_posted(&app).await), before);
    // Just under the cap: read, verified and accepted.
    let mut fits = json!({"state": "success", "description": ""});
    let room = 4 * 1024 - serde_json::to_vec(&fits).unwrap().len();
    fits["description"] = json!("y".repeat(room));
    assert_eq!(serde_json::to_vec(&fits).unwrap().len(), 4 * 1024);
    assert_eq!(app.send(&Event::callback(&url, &fits, HOOK_SECRET)).await.1["status"], "accepted");
}
