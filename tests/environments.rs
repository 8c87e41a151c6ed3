#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking
//! Environment names are exact: spellings that share a setting suffix with a managed environment
//! (`STAGING_EU`, `Staging.EU`, `staging/eu`) are other environments, and are not run through its
//! hook, queue or lock.

mod common;

use common::*;
use serde_json::{Value, json};
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn app(rules: &str) -> (TestApp, MockServer) {
    let hook = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).mount(&hook).await;
    let app = TestApp::builder().rules(rules).hook(Some("STAGING_EU"), &format!("{}/eu", hook.uri())).start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"/deployments/\d+/statuses$"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 1, "state": "success"})))
        .mount(&app.github)
        .await;
    (app, hook)
}

async fn deploy(app: &TestApp, id: u64, environment: &str) -> Value {
    app.send(&Event::github("deployment", &new_delivery_id(), &deployment_created(id, environment))).await.1
}

#[tokio::test]
async fn a_hook_only_environment_is_managed_under_its_suffix_lower_cased_and_no_other_spelling() {
    let (app, hook) = app("main=production").await;
    for (i, other) in ["STAGING_EU", "Staging.EU", "staging/eu", "staging-eu", "Staging_eu"].iter().enumerate() {
        let body = deploy(&app, 70 + i as u64, other).await;
        assert_eq!(body["status"], "ignored", "{other}: {body}");
    }
    assert!(hook.received_requests().await.unwrap().is_empty(), "the hook ran for another spelling");
    assert!(app.github_calls().await.is_empty());
    let body = deploy(&app, 80, "staging_eu").await;
    assert_eq!((body["status"].as_str(), body["detail"]["state"].as_str()), (Some("processed"), Some("success")));
    assert_eq!(hook.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_environment_named_in_the_rules_is_managed_under_that_exact_name_only() {
    let (app, hook) = app("main=production,release/*=staging-eu").await;
    for (i, other) in ["STAGING-EU", "staging_eu", "Staging.EU"].iter().enumerate() {
        assert_eq!(deploy(&app, 90 + i as u64, other).await["status"], "ignored", "{other}");
    }
    assert!(hook.received_requests().await.unwrap().is_empty());
    assert_eq!(deploy(&app, 99, "staging-eu").await["status"], "processed");
    let calls = hook.received_requests().await.unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].body_json::<Value>().unwrap()["environment"], "staging-eu");
}
