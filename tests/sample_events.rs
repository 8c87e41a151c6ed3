#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking
//! The sample events in `events/` (what `make run`, `make invoke` and the README use) are valid
//! API Gateway events, signed with the sample secret, and do what their names say.

mod common;

use common::*;
use serde_json::json;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, ResponseTemplate};

const SAMPLE_SECRET: &str = "sample-webhook-secret";

async fn run(name: &str) -> (u16, serde_json::Value) {
    let app = TestApp::builder().secret(SAMPLE_SECRET).start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/repos/[^/]+/[^/]+/deployments$"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 1})))
        .mount(&app.github)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/repos/[^/]+/[^/]+/deployments/\d+/statuses$"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 2, "state": "success"})))
        .mount(&app.github)
        .await;
    // Comment commands: the commenter may write; reactions and replies are accepted.
    Mock::given(method("GET"))
        .and(path_regex(r"^/repos/[^/]+/[^/]+/collaborators/[^/]+/permission$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"permission": "write", "role_name": "write"})))
        .mount(&app.github)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/repos/[^/]+/[^/]+/issues/(comments/\d+/reactions|\d+/comments)$"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 3})))
        .mount(&app.github)
        .await;
    let file = format!("{}/events/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    let request = lambda_http::request::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    app.send_request(request).await
}

#[tokio::test]
async fn every_sample_event_does_what_its_name_says() {
    let expected = [
        ("ping", 200, "pong"),
        ("rest_v1_ping", 200, "pong"),
        ("function_url_ping", 200, "pong"),
        ("pull_request_merged", 200, "processed"),
        ("pull_request_merged_form", 200, "processed"),
        ("pull_request_merged_base64", 200, "processed"),
        ("pull_request_merged_no_rule", 200, "ignored"),
        ("pull_request_closed_unmerged", 200, "ignored"),
        ("pull_request_opened", 200, "ignored"),
        ("issues_opened_ignored", 200, "ignored"),
        ("deployment_created", 200, "processed"),
        ("deployment_status_success", 200, "processed"),
        ("deployment_status_failure", 200, "processed"),
        ("bad_signature", 401, "unauthorized"),
        ("issue_comment_help", 200, "processed"),
        ("issue_comment_status", 200, "processed"),
        ("issue_comment_lock", 200, "processed"),
        ("issue_comment_unlock", 200, "processed"),
        // Refused here: no earlier success to roll back to, and staging takes no branch deploys
        // in this test's settings (make run has both).
        ("issue_comment_rollback", 200, "refused"),
        ("issue_comment_deploy_staging", 200, "refused"),
    ];
    // The shipped events are the files directly in events/; a user's own live in events/local/
    // (git-ignored, README "Trying events yourself"), which this does not read.
    let mut on_disk: Vec<String> = std::fs::read_dir(format!("{}/events", env!("CARGO_MANIFEST_DIR")))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".json").map(str::to_owned))
        .collect();
    on_disk.sort();
    let mut names: Vec<String> = expected.iter().map(|(name, _, _)| (*name).to_owned()).collect();
    names.sort();
    assert_eq!(
        on_disk, names,
        "every file in events/ has an expectation here (your own events belong in events/local/)"
    );
    for (name, status, word) in expected {
        let (got_status, body) = run(name).await;
        assert_eq!((got_status, body["status"].as_str()), (status, Some(word)), "events/{name}.json: {body}");
    }
}
