#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking
//! Secrets never reach logs: every log line written at TRACE level (ours and the libraries')
//! during successful, failing and forged deliveries is captured and searched for the token, the
//! webhook secret, signatures and payload text.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_secret_signature_or_payload_text_is_ever_logged() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let hook = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(500)).mount(&hook).await;
    let app = TestApp::builder().hook(None, &hook.uri()).start().await;
    Mock::given(method("POST"))
        .and(path_regex("/deployments$"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 1})))
        .up_to_n_times(1)
        .mount(&app.github)
        .await;
    Mock::given(method("POST"))
        .and(path_regex("/deployments$"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"message": "Bad credentials"})))
        .mount(&app.github)
        .await;
    Mock::given(method("POST"))
        .and(path_regex("/statuses$"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 2, "state": "failure"})))
        .mount(&app.github)
        .await;

    let mut signatures = Vec::new();
    let mut send = |event: Event| {
        signatures.push(event.headers["x-hub-signature-256"].as_str().unwrap().to_owned());
        event
    };
    let merged = send(Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master")));
    let refused = send(Event::github("pull_request", &new_delivery_id(), &merged_pr(3, "master")));
    let deploy = send(Event::github("deployment", &new_delivery_id(), &deployment_created(1, "production")));
    let mut forged = Event::github("pull_request", &new_delivery_id(), &merged_pr(4, "master"));
    forged.resign("attacker-guess");
    let forged = send(forged);
    assert_eq!(app.send(&merged).await.0, 200);
    assert_eq!(app.send(&refused).await.0, 502);
    assert_eq!(app.send(&deploy).await.0, 200);
    assert_eq!(app.send(&forged).await.0, 401);

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("delivery handled"), "the capture works: {} bytes", logs.len());
    assert!(logs.contains("delivery failed"), "failures are logged");
    let hex_of = |sig: &str| sig.trim_start_matches("sha256=").to_owned();
    let mut forbidden = vec![
        TOKEN.to_owned(),
        SECRET.to_owned(),
        "Update the README with new information".to_owned(), // PR title (payload text)
    ];
    forbidden.extend(signatures.iter().map(|s| hex_of(s)));
    for needle in forbidden {
        if let Some(at) = logs.find(&needle) {
            panic!("{needle:?} appeared in the logs: …{}…", &logs[at.saturating_sub(300)..(at + 100).min(logs.len())]);
        }
    }
}

#[tokio::test]
async fn each_delivery_logs_one_line_at_info() {
    let captured = Captured::default();
    let writer = captured.clone();
    let only_ours: tracing_subscriber::filter::Targets = "deploy_webhook=info".parse().unwrap();
    let subscriber =
        tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish().with(only_ours);
    let _guard = tracing::subscriber::set_default(subscriber);

    let app = TestApp::start().await;
    Mock::given(method("POST"))
        .and(path_regex("/deployments$"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 1})))
        .mount(&app.github)
        .await;
    Mock::given(method("POST"))
        .and(path_regex("/statuses$"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 2, "state": "success"})))
        .mount(&app.github)
        .await;
    let lines = || String::from_utf8(captured.0.lock().unwrap().clone()).unwrap().lines().count();
    let mut before = lines();
    for event in [
        Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master")),
        Event::github("deployment", &new_delivery_id(), &deployment_created(1, "production")),
        Event::github("deployment_status", &new_delivery_id(), &deployment_status(1, 2, "success")),
        Event::github("ping", &new_delivery_id(), &fixture("ping")),
    ] {
        assert_eq!(app.send(&event).await.0, 200);
        let now = lines();
        let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(now - before, 1, "one INFO line per delivery:\n{logs}");
        before = now;
    }
    app.sweep().await;
    assert_eq!(lines() - before, 0, "an idle sweep's line comes from the Lambda entrypoint only");
}

#[tokio::test]
async fn an_unsigned_request_logs_nothing_the_caller_chose() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let app = TestApp::start().await;
    let mut forged = Event::github("callerchosenevent", "callerchosen-delivery-1", &fixture("ping"));
    forged.resign("not-the-secret");
    assert_eq!(app.send(&forged).await.0, 401);
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("delivery refused"), "the refusal is logged:\n{logs}");
    assert!(!logs.contains("callerchosen"), "headers of an unverified request reached the log:\n{logs}");

    // Once verified, the delivery's headers do label its lines.
    let signed = Event::github("ping", "verified-delivery-2", &fixture("ping"));
    assert_eq!(app.send(&signed).await.0, 200);
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("verified-delivery-2"), "{logs}");
}
