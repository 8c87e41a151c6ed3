#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking
//! Slack notices: one when a deployment starts and one when it ends; Slack down changes nothing.

mod common;

use common::*;
use serde_json::{Value, json};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn github_accepts_statuses(app: &TestApp) {
    Mock::given(method("POST"))
        .and(path_regex(r"/deployments/\d+/statuses$"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 1, "state": "success"})))
        .mount(&app.github)
        .await;
}

#[tokio::test]
async fn a_deployment_is_announced_when_it_starts_and_when_it_ends() {
    let slack = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(200))
        .expect(2)
        .mount(&slack)
        .await;
    let app = TestApp::builder()
        .slack(&format!("{}/hook", slack.uri()))
        .environment_url("https://app.example.com")
        .start()
        .await;
    github_accepts_statuses(&app).await;
    let mut payload = deployment_created(41, "production");
    payload["deployment"]["payload"] = json!({"deploy_user": "octocat", "pull_request": {"number": 12}});
    let (status, body) = app.send(&Event::github("deployment", &new_delivery_id(), &payload)).await;
    assert_eq!((status, body["detail"]["state"].as_str()), (200, Some("success")), "{body}");
    let texts: Vec<String> = slack
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.body_json::<Value>().unwrap()["text"].as_str().unwrap().to_owned())
        .collect();
    assert!(texts[0].starts_with(":rocket: *production*: deploying <https://github.com/"), "{}", texts[0]);
    // Not created by this deployer: who asked is its creator, not the payload's deploy_user.
    assert!(texts[0].contains("|#12>)") && texts[0].ends_with("by Codertocat"), "{}", texts[0]);
    assert!(texts[1].starts_with(":white_check_mark: *production*: success"), "{}", texts[1]);
    assert!(texts[1].ends_with("<https://app.example.com|open>"), "{}", texts[1]);
}

#[tokio::test]
async fn slack_down_never_fails_or_repeats_a_deployment() {
    let slack = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(500)).expect(2).mount(&slack).await;
    let app = TestApp::builder().slack(&format!("{}/hook", slack.uri())).start().await;
    github_accepts_statuses(&app).await;
    let event = Event::github("deployment", &new_delivery_id(), &deployment_created(42, "production"));
    let (status, body) = app.send(&event).await;
    assert_eq!((status, body["detail"]["state"].as_str()), (200, Some("success")), "{body}");
    assert_eq!(app.send(&event).await.1["status"], "duplicate");
    let posts = app.github_requests().await.len();
    assert_eq!(posts, 2, "in_progress and success, once each");

    // Slack not even reachable: the same.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    let app = TestApp::builder().slack(&nowhere).start().await;
    github_accepts_statuses(&app).await;
    let (status, body) =
        app.send(&Event::github("deployment", &new_delivery_id(), &deployment_created(43, "production"))).await;
    assert_eq!((status, body["detail"]["state"].as_str()), (200, Some("success")), "{body}");
}
