#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking
//! The HTTP edge end to end through the real handler: signatures, headers, bodies, encodings.
//! Whatever is refused stores nothing and calls nothing.

mod common;

use common::*;
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

async fn assert_nothing_happened(app: &TestApp) {
    assert!(app.items().await.is_empty(), "something was stored");
    assert!(app.github_calls().await.is_empty(), "GitHub was called");
}

#[tokio::test]
async fn ping_answers_pong_without_storing_anything() {
    let app = TestApp::start().await;
    let delivery = new_delivery_id();
    let (status, body) = app.send(&Event::github("ping", &delivery, &fixture("ping"))).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "pong");
    assert_eq!(body["delivery"], delivery);
    assert_nothing_happened(&app).await;
}

#[tokio::test]
async fn a_wrong_or_missing_signature_is_401_and_nothing_is_done() {
    let app = TestApp::start().await;
    let payload = merged_pr(2, "master");

    let mut wrong_secret = Event::github("pull_request", &new_delivery_id(), &payload);
    wrong_secret.resign("not-the-secret");
    let (status, body) = app.send(&wrong_secret).await;
    assert_eq!((status, body["status"].as_str()), (401, Some("unauthorized")));

    let mut tampered = Event::github("pull_request", &new_delivery_id(), &payload);
    tampered.body.extend_from_slice(b" ");
    assert_eq!(app.send(&tampered).await.0, 401);

    let mut missing = Event::github("pull_request", &new_delivery_id(), &payload);
    missing.remove("x-hub-signature-256");
    let (status, body) = app.send(&missing).await;
    assert_eq!(status, 401);
    assert!(body["message"].as_str().unwrap().contains("X-Hub-Signature-256"));

    let mut sha1_only = Event::github("pull_request", &new_delivery_id(), &payload);
    sha1_only.set("x-hub-signature-256", "sha1=0000");
    assert_eq!(app.send(&sha1_only).await.0, 401);

    assert_nothing_happened(&app).await;
}

#[tokio::test]
async fn headers_are_matched_case_insensitively() {
    let app = TestApp::start().await;
    let mut event = Event::github("ping", &new_delivery_id(), &fixture("ping"));
    // REST API (v1) events keep the sender's spelling.
    for name in ["x-github-event", "x-github-delivery", "x-hub-signature-256"] {
        let value = event.headers.remove(name).unwrap();
        let upper = name.split('-').map(|p| p[..1].to_uppercase() + &p[1..]).collect::<Vec<_>>().join("-");
        event.headers.insert(upper, value);
    }
    assert_eq!(app.send(&event).await.0, 200);
}

#[tokio::test]
async fn missing_event_or_delivery_headers_are_400() {
    let app = TestApp::start().await;
    for header in ["x-github-event", "x-github-delivery"] {
        let mut event = Event::github("ping", &new_delivery_id(), &fixture("ping"));
        event.remove(header);
        let (status, body) = app.send(&event).await;
        assert_eq!(status, 400, "without {header}");
        assert_eq!(body["status"], "bad_request");
    }
    let mut bad_id = Event::github("ping", "not a guid", &fixture("ping"));
    bad_id.resign(SECRET);
    assert_eq!(app.send(&bad_id).await.0, 400);
    assert_nothing_happened(&app).await;
}

#[tokio::test]
async fn only_post_is_accepted() {
    let app = TestApp::start().await;
    let mut event = Event::github("ping", &new_delivery_id(), &fixture("ping"));
    event.method = "GET".into();
    assert_eq!(app.send(&event).await.0, 405);
}

#[tokio::test]
async fn malformed_json_with_a_valid_signature_is_400_saying_what_is_wrong() {
    let app = TestApp::start().await;
    let mut event = Event::github("pull_request", &new_delivery_id(), &json!({}));
    event.body = b"{\"action\": \"closed\", ".to_vec();
    event.resign(SECRET);
    let (status, body) = app.send(&event).await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("pull_request payload is not valid"), "{body}");

    // Valid JSON, wrong type in a known field.
    let mut payload = merged_pr(2, "master");
    payload["pull_request"]["number"] = json!("two");
    let (status, body) = app.send(&Event::github("pull_request", &new_delivery_id(), &payload)).await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("invalid type"), "{body}");

    // A merged PR without a usable merge commit.
    let mut payload = merged_pr(2, "master");
    payload["pull_request"]["merge_commit_sha"] = json!("abc");
    let (status, body) = app.send(&Event::github("pull_request", &new_delivery_id(), &payload)).await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("sha"), "{body}");

    // Garbage under an event we ignore is still not a 2xx.
    let mut event = Event::github("issues", &new_delivery_id(), &json!({}));
    event.body = b"not json".to_vec();
    event.resign(SECRET);
    assert_eq!(app.send(&event).await.0, 400);

    let mut event = Event::github("ping", &new_delivery_id(), &json!({}));
    event.body = Vec::new();
    event.resign(SECRET);
    let (status, body) = app.send(&event).await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("empty"));

    let mut event = Event::github("ping", &new_delivery_id(), &fixture("ping"));
    event.set("content-type", "text/plain");
    assert_eq!(app.send(&event).await.0, 415);

    assert_nothing_happened(&app).await;
}

#[tokio::test]
async fn form_encoded_and_base64_bodies_work() {
    let app = TestApp::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/repos/{REPO}/deployments")))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 11})))
        .expect(2)
        .mount(&app.github)
        .await;

    let form = Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master")).form_encoded();
    let (status, body) = app.send(&form).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "processed");

    let mut b64 = Event::github("pull_request", &new_delivery_id(), &merged_pr(3, "master"));
    b64.base64 = true;
    let (status, body) = app.send(&b64).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "processed");

    // A form body whose signature is over something else is refused.
    let mut forged = Event::github("pull_request", &new_delivery_id(), &merged_pr(4, "master")).form_encoded();
    forged.body.extend_from_slice(b"&x=1");
    assert_eq!(app.send(&forged).await.0, 401);
}

#[tokio::test]
async fn events_and_actions_we_do_not_handle_are_ignored_with_2xx() {
    let app = TestApp::start().await;
    let mut opened = merged_pr(2, "master");
    opened["action"] = json!("opened");
    let mut unmerged = merged_pr(2, "master");
    unmerged["pull_request"]["merged"] = json!(false);
    let cases = [
        ("issues", fixture("issues.opened")),
        ("pull_request", opened),
        ("pull_request", unmerged),
        ("pull_request", merged_pr(2, "feature/no-rule")),
    ];
    for (event, payload) in cases {
        let (status, body) = app.send(&Event::github(event, &new_delivery_id(), &payload)).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("ignored")), "{body}");
        assert!(body["detail"]["reason"].is_string());
    }
    assert_nothing_happened(&app).await;
}
