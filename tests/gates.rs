#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking
//! Gates: required checks per environment, merges that wait for pending checks, failed checks.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

fn checks_409(states: &[(&str, &str)]) -> ResponseTemplate {
    let contexts: Vec<Value> = states.iter().map(|(c, s)| json!({"context": c, "state": s})).collect();
    ResponseTemplate::new(409).set_body_json(json!({
        "message": "Conflict: Commit status checks failed for master.",
        "errors": [{"contexts": contexts, "resource": "Deployment", "field": "required_contexts", "code": "invalid"}]
    }))
}

fn deployments() -> String {
    format!("/repos/{REPO}/deployments")
}

fn check_suite_completed() -> Event {
    let mut p = fixture("ping");
    p = json!({"action": "completed", "check_suite": {"head_sha": SHA, "status": "completed", "conclusion": "success"},
               "repository": p["repository"].clone()});
    p["repository"]["full_name"] = json!(REPO);
    Event::github("check_suite", &new_delivery_id(), &p)
}

async fn posts(app: &TestApp) -> Vec<Value> {
    app.github
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "POST" && r.url.path() == deployments())
        .map(|r| r.body_json().unwrap())
        .collect()
}

#[tokio::test]
async fn a_merge_waits_for_pending_checks_then_deploys_once_they_pass() {
    let app = TestApp::builder()
        .settings(|s| {
            s.required_contexts.insert("PRODUCTION".into(), vec!["ci/build".into(), "ci/test".into()]);
        })
        .start()
        .await;
    let pending = Mock::given(method("POST"))
        .and(path(deployments()))
        .respond_with(checks_409(&[("ci/build", "success"), ("ci/test", "pending")]))
        .mount_as_scoped(&app.github)
        .await;
    let merge = Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master"));
    let (status, body) = app.send(&merge).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("waiting")), "{body}");
    // No check_suite or status event has ever reached this stack: the answer says so.
    let note = body["note"].as_str().unwrap_or_default();
    assert!(note.contains("Check suites (`check_suite`) or Statuses (`status`)"), "{body}");
    assert_eq!(body["detail"]["deployments"][0]["contexts"], json!(["ci/test"]));
    assert_eq!(posts(&app).await[0]["required_contexts"], json!(["ci/build", "ci/test"]));
    // A redelivery while it waits creates nothing.
    assert_eq!(app.send(&merge).await.1["status"], "waiting");
    assert_eq!(posts(&app).await.len(), 1);
    drop(pending);

    Mock::given(method("POST"))
        .and(path(deployments()))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 321})))
        .expect(1)
        .mount(&app.github)
        .await;
    // The retry first looks for a deployment an earlier attempt may have made.
    Mock::given(method("GET"))
        .and(path(deployments()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&app.github)
        .await;
    let (status, body) = app.send(&check_suite_completed()).await;
    assert_eq!((status, body["detail"]["created"].as_u64()), (200, Some(1)), "{body}");
    assert_eq!(app.events_seen().await.iter().filter(|(e, _)| e == "check_suite").count(), 1);
    // The same event again, or a late redelivery of the merge: nothing more.
    assert_eq!(app.send(&check_suite_completed()).await.1["status"], "ignored");
    assert_eq!(app.send(&merge).await.1["status"], "duplicate");
    let items = app.items().await;
    let creation = items_with_sk_prefix(&items, "CREATE#")[0];
    assert_eq!((attr_s(creation, "state"), attr_n(creation, "deployment_id")), (Some("created"), Some(321)));
    let wait = items_with_sk_prefix(&items, "WAIT#")[0];
    assert!(!wait.contains_key("due_at"), "nothing left for the sweep");
}

#[tokio::test]
async fn failed_checks_are_rejected_naming_them() {
    let app = TestApp::start().await;
    Mock::given(method("POST"))
        .and(path(deployments()))
        .respond_with(checks_409(&[("ci/build", "failure"), ("ci/test", "pending")]))
        .mount(&app.github)
        .await;
    let (status, body) = app.send(&Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master"))).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("rejected")), "{body}");
    assert!(
        body["detail"]["deployments"][0]["message"].as_str().unwrap().ends_with("Failed checks: ci/build, ci/test")
    );
    assert!(items_with_sk_prefix(&app.items().await, "WAIT#").is_empty());
}

#[tokio::test]
async fn a_merge_that_waits_too_long_is_rejected_by_the_sweep() {
    let app = TestApp::builder().settings(|s| s.checks_wait = Duration::from_secs(600)).start().await;
    Mock::given(method("POST"))
        .and(path(deployments()))
        .respond_with(checks_409(&[("ci/test", "pending")]))
        .mount(&app.github)
        .await;
    Mock::given(method("GET"))
        .and(path(deployments()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&app.github)
        .await;
    let (_, body) = app.send(&Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master"))).await;
    assert_eq!(body["status"], "waiting", "{body}");
    let items = app.items().await;
    let wait = items_with_sk_prefix(&items, "WAIT#")[0];
    assert!(attr_n(wait, "due_at").is_some(), "{wait:?}");
    // The sweep asks again every 5 minutes while it waits…
    app.clock.advance(Duration::from_secs(301));
    assert_eq!(app.sweep().await.checks_waits, 1);
    assert_eq!(posts(&app).await.len(), 2);
    // …and gives up at the end of the wait.
    app.clock.advance(Duration::from_secs(300));
    assert_eq!(app.sweep().await.checks_waits, 1);
    let items = app.items().await;
    let creation = items_with_sk_prefix(&items, "CREATE#")[0];
    assert_eq!(attr_s(creation, "state"), Some("rejected"));
    assert_eq!(attr_s(creation, "message"), Some("required checks still pending after 10 min: ci/test"));
    assert_eq!(app.sweep().await.checks_waits, 0);
}
