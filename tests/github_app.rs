#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking
//! GitHub App mode: installation tokens bought with a verified JWT, cached and refreshed, and the
//! sweep redelivering the App webhook's failed deliveries.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use deploy_webhook::domain::ports::Clock;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, Request, Respond, ResponseTemplate};

const APP_ID: u64 = 4242;

/// GitHub's access-token endpoint: verifies the App JWT (RS256, `iss`, the `iat`/`exp` window)
/// with the App's public key and hands out a token that expires after `lifetime`.
struct AccessTokens {
    public_key: Vec<u8>,
    clock: TestClock,
    lifetime: Duration,
    issued: Arc<Mutex<Vec<String>>>,
}

#[derive(Deserialize)]
struct Claims {
    iat: u64,
    exp: u64,
    iss: String,
}

fn verify_jwt(request: &Request, public_key: &[u8], now: u64) -> Result<(), String> {
    let auth = request.headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    let jwt = auth.strip_prefix("Bearer ").ok_or("no bearer")?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_exp = false;
    validation.set_required_spec_claims(&["iss", "exp", "iat"]);
    let claims = jsonwebtoken::decode::<Claims>(jwt, &DecodingKey::from_rsa_der(public_key), &validation)
        .map_err(|e| e.to_string())?
        .claims;
    if claims.iss != APP_ID.to_string() {
        return Err(format!("iss {}", claims.iss));
    }
    if claims.iat > now || claims.exp <= now || claims.exp - claims.iat > 600 {
        return Err(format!("window iat={} exp={} now={now}", claims.iat, claims.exp));
    }
    Ok(())
}

impl Respond for AccessTokens {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let now = self.clock.now_ms() / 1000;
        if let Err(why) = verify_jwt(request, &self.public_key, now) {
            return ResponseTemplate::new(401).set_body_json(json!({"message": format!("bad JWT: {why}")}));
        }
        let installation = request.url.path().split('/').nth(3).unwrap().to_owned();
        let mut issued = self.issued.lock().unwrap();
        let token = format!("ghs_{installation}_{}", issued.len() + 1);
        issued.push(token.clone());
        let expires = UNIX_EPOCH + Duration::from_secs(now) + self.lifetime;
        ResponseTemplate::new(201).set_body_json(json!({
            "token": token, "expires_at": humantime::format_rfc3339_seconds(expires).to_string()
        }))
    }
}

async fn app_with_tokens(lifetime: Duration) -> (TestApp, Arc<Mutex<Vec<String>>>, Vec<u8>) {
    let (pem, public_key) = app_key_pair();
    let app = TestApp::builder().github_app(APP_ID, pem).start().await;
    let issued = Arc::new(Mutex::new(Vec::new()));
    Mock::given(method("POST"))
        .and(path_regex(r"^/app/installations/\d+/access_tokens$"))
        .respond_with(AccessTokens {
            public_key: public_key.clone(),
            clock: app.clock.clone(),
            lifetime,
            issued: issued.clone(),
        })
        .mount(&app.github)
        .await;
    (app, issued, public_key)
}

fn merged_in_installation(number: u64, installation: u64) -> Event {
    let mut pr = merged_pr(number, "master");
    pr["installation"] = json!({"id": installation, "node_id": "x"});
    Event::github("pull_request", &new_delivery_id(), &pr)
}

/// `POST .../deployments` answering 201, recording the Authorization header of each call.
async fn deployments_recording_auth(app: &TestApp) -> Arc<Mutex<Vec<String>>> {
    struct Record(Arc<Mutex<Vec<String>>>);
    impl Respond for Record {
        fn respond(&self, request: &Request) -> ResponseTemplate {
            let auth = request.headers.get("authorization").unwrap().to_str().unwrap().to_owned();
            let mut seen = self.0.lock().unwrap();
            seen.push(auth);
            ResponseTemplate::new(201).set_body_json(json!({"id": 100 + seen.len()}))
        }
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    Mock::given(method("POST"))
        .and(path_regex(r"^/repos/[^/]+/[^/]+/deployments$"))
        .respond_with(Record(seen.clone()))
        .mount(&app.github)
        .await;
    seen
}

#[tokio::test]
async fn one_installation_token_serves_many_deliveries_and_two_installations_get_two() {
    let (app, issued, _) = app_with_tokens(Duration::from_secs(3600)).await;
    let seen = deployments_recording_auth(&app).await;
    for n in 1..=3 {
        let (status, body) = app.send(&merged_in_installation(n, 7)).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(*issued.lock().unwrap(), ["ghs_7_1"]);
    let (status, _) = app.send(&merged_in_installation(4, 8)).await;
    assert_eq!(status, 200);
    assert_eq!(issued.lock().unwrap().len(), 2);
    let seen = seen.lock().unwrap();
    assert_eq!(seen[..3], ["Bearer ghs_7_1", "Bearer ghs_7_1", "Bearer ghs_7_1"]);
    assert_eq!(seen[3], "Bearer ghs_8_2");
}

#[tokio::test]
async fn a_token_is_renewed_five_minutes_before_it_expires() {
    let (app, issued, _) = app_with_tokens(Duration::from_secs(10 * 60)).await;
    deployments_recording_auth(&app).await;
    app.send(&merged_in_installation(1, 7)).await;
    app.clock.advance(Duration::from_secs(4 * 60));
    app.send(&merged_in_installation(2, 7)).await;
    assert_eq!(issued.lock().unwrap().len(), 1, "6 minutes left: still good");
    app.clock.advance(Duration::from_secs(2 * 60));
    app.send(&merged_in_installation(3, 7)).await;
    assert_eq!(issued.lock().unwrap().len(), 2, "4 minutes left: renewed");
}

#[tokio::test]
async fn a_refused_token_is_refreshed_once_and_the_call_retried() {
    let (app, issued, _) = app_with_tokens(Duration::from_secs(3600)).await;
    // The first token is refused (revoked): one refresh, one retry, then the deployment.
    Mock::given(method("POST"))
        .and(path_regex(r"^/repos/[^/]+/[^/]+/deployments$"))
        .and(wiremock::matchers::header("authorization", "Bearer ghs_7_1"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"message": "Bad credentials"})))
        .mount(&app.github)
        .await;
    let seen = deployments_recording_auth(&app).await;
    let (status, body) = app.send(&merged_in_installation(1, 7)).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("processed")), "{body}");
    assert_eq!(*issued.lock().unwrap(), ["ghs_7_1", "ghs_7_2"]);
    assert_eq!(*seen.lock().unwrap(), ["Bearer ghs_7_2"]);
    // Every token refused: one refresh only, then a 502 naming no token.
    app.github.reset().await;
    let (app2, issued2, _) = app_with_tokens(Duration::from_secs(3600)).await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/repos/[^/]+/[^/]+/deployments$"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"message": "Bad credentials"})))
        .mount(&app2.github)
        .await;
    let (status, body) = app2.send(&merged_in_installation(1, 7)).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(issued2.lock().unwrap().len(), 2);
    assert!(!body.to_string().contains("ghs_"), "{body}");
}

#[tokio::test]
async fn without_an_installation_in_the_payload_it_is_looked_up_for_the_repository() {
    let (app, issued, public_key) = app_with_tokens(Duration::from_secs(3600)).await;
    struct Lookup(Vec<u8>, TestClock);
    impl Respond for Lookup {
        fn respond(&self, request: &Request) -> ResponseTemplate {
            match verify_jwt(request, &self.0, self.1.now_ms() / 1000) {
                Ok(()) => ResponseTemplate::new(200).set_body_json(json!({"id": 31})),
                Err(_) => ResponseTemplate::new(401),
            }
        }
    }
    Mock::given(method("GET"))
        .and(path(format!("/repos/{REPO}/installation")))
        .respond_with(Lookup(public_key, app.clock.clone()))
        .expect(1)
        .mount(&app.github)
        .await;
    deployments_recording_auth(&app).await;
    for n in [1, 2] {
        let mut pr = merged_pr(n, "master");
        pr.as_object_mut().unwrap().remove("installation");
        app.send(&Event::github("pull_request", &new_delivery_id(), &pr)).await;
    }
    assert_eq!(*issued.lock().unwrap(), ["ghs_31_1"]);
}

// ------------------------------------------------------------------ redelivery

/// `GET /app/hook/deliveries`, paged 2 per page with a cursor, JWT verified; and the attempts
/// endpoint, recording what was redelivered (failing while `attempts_down`).
#[derive(Clone)]
struct Deliveries {
    list: Arc<Mutex<Vec<Value>>>,
    redelivered: Arc<Mutex<Vec<u64>>>,
    attempts_down: Arc<std::sync::atomic::AtomicBool>,
    public_key: Vec<u8>,
    clock: TestClock,
}

impl Respond for Deliveries {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if verify_jwt(request, &self.public_key, self.clock.now_ms() / 1000).is_err() {
            return ResponseTemplate::new(401);
        }
        if request.method.as_str() == "POST" {
            if self.attempts_down.load(std::sync::atomic::Ordering::SeqCst) {
                return ResponseTemplate::new(503);
            }
            let id = request.url.path().split('/').nth(4).unwrap().parse().unwrap();
            self.redelivered.lock().unwrap().push(id);
            return ResponseTemplate::new(202).set_body_json(json!({}));
        }
        let start: usize =
            request.url.query_pairs().find(|(k, _)| k == "cursor").map_or(0, |(_, v)| v.parse().unwrap());
        let list = self.list.lock().unwrap();
        let mut newest_first: Vec<Value> = list.clone();
        newest_first.sort_by(|a, b| b["delivered_at"].as_str().cmp(&a["delivered_at"].as_str()));
        let page: Vec<Value> = newest_first.iter().skip(start).take(2).cloned().collect();
        let mut response = ResponseTemplate::new(200).set_body_json(page);
        if start + 2 < newest_first.len() {
            let next = format!("<{}/app/hook/deliveries?per_page=100&cursor={}>; rel=\"next\"", "http://x", start + 2);
            response = response.insert_header("link", next.as_str());
        }
        response
    }
}

fn iso(clock: &TestClock, ago: Duration) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(clock.now_ms()) - ago;
    humantime::format_rfc3339_seconds(at).to_string()
}

async fn app_with_deliveries(max: u32) -> (TestApp, Deliveries) {
    let (pem, public_key) = app_key_pair();
    let app =
        TestApp::builder().github_app(APP_ID, pem).settings(move |s| s.redelivery_max_attempts = max).start().await;
    let deliveries = Deliveries {
        list: Default::default(),
        redelivered: Default::default(),
        attempts_down: Default::default(),
        public_key,
        clock: app.clock.clone(),
    };
    Mock::given(path_regex(r"^/app/hook/deliveries(/\d+/attempts)?$"))
        .respond_with(deliveries.clone())
        .mount(&app.github)
        .await;
    (app, deliveries)
}

fn delivery(id: u64, guid: &str, delivered_at: &str, status_code: u16) -> Value {
    json!({"id": id, "guid": guid, "delivered_at": delivered_at, "redelivery": false, "duration": 0.5,
           "status": "x", "status_code": status_code, "event": "pull_request", "action": "closed"})
}

#[tokio::test]
async fn failed_deliveries_are_redelivered_once_per_sweep_and_never_4xx_or_after_success() {
    let (app, gh) = app_with_deliveries(5).await;
    let ten_min_ago = iso(&app.clock, Duration::from_secs(600));
    *gh.list.lock().unwrap() = vec![
        delivery(1, "merge-a", &ten_min_ago, 502),
        delivery(2, "merge-b", &ten_min_ago, 200),
        delivery(3, "merge-c", &ten_min_ago, 400),
        delivery(4, "merge-d", &ten_min_ago, 0),
        delivery(5, "merge-e", &ten_min_ago, 503),
        delivery(6, "merge-e", &iso(&app.clock, Duration::from_secs(300)), 200),
    ];
    let report = app.sweep().await;
    assert_eq!((report.redelivery.seen, report.redelivery.redelivered), (5, 2), "{report:?}");
    let mut redelivered = gh.redelivered.lock().unwrap().clone();
    redelivered.sort();
    assert_eq!(redelivered, [1, 4], "5xx and no answer only; not the 400, not the guid that succeeded later");

    // The next sweep a moment later does not repeat them (spaced out).
    app.clock.advance(Duration::from_secs(30));
    assert_eq!(app.sweep().await.redelivery.redelivered, 0);
    // Merge a's redelivery succeeded; d's failed again: only d is redelivered, after its wait.
    gh.list.lock().unwrap().push(delivery(7, "merge-a", &iso(&app.clock, Duration::from_secs(10)), 200));
    gh.list.lock().unwrap().push(delivery(8, "merge-d", &iso(&app.clock, Duration::from_secs(10)), 502));
    app.clock.advance(Duration::from_secs(180));
    assert_eq!(app.sweep().await.redelivery.redelivered, 1);
    assert_eq!(gh.redelivered.lock().unwrap().last(), Some(&8));
}

#[tokio::test]
async fn a_delivery_is_given_up_after_the_cap_and_the_watermark_moves_on() {
    let (app, gh) = app_with_deliveries(2).await;
    *gh.list.lock().unwrap() = vec![delivery(1, "merge-a", &iso(&app.clock, Duration::from_secs(600)), 502)];
    let mut total = 0;
    for _ in 0..10 {
        total += app.sweep().await.redelivery.redelivered;
        app.clock.advance(Duration::from_secs(3600));
    }
    assert_eq!(total, 2);
    let items = app.items().await;
    let record = items.iter().find(|i| attr_s(i, "sk") == Some("REDELIVERY")).unwrap();
    let doc: Value = serde_json::from_str(attr_s(record, "doc").unwrap()).unwrap();
    assert_eq!(doc["retrying"]["merge-a"]["gave_up"], true, "{doc}");
    assert!(doc["watermark"].as_str().is_some());
}

#[tokio::test]
async fn a_sweep_interrupted_by_an_outage_loses_nothing() {
    let (app, gh) = app_with_deliveries(5).await;
    let at = iso(&app.clock, Duration::from_secs(600));
    *gh.list.lock().unwrap() = vec![delivery(1, "merge-a", &at, 502), delivery(2, "merge-b", &at, 502)];
    gh.attempts_down.store(true, std::sync::atomic::Ordering::SeqCst);
    let report = app.sweep().await;
    assert_eq!((report.redelivery.redelivered, report.redelivery.failed_hooks), (0, 1));
    assert!(gh.redelivered.lock().unwrap().is_empty());
    // DynamoDB down for the next one: nothing is recorded, so nothing is lost either.
    gh.attempts_down.store(false, std::sync::atomic::Ordering::SeqCst);
    inject_dynamo_faults(&app.table, 50, "unavailable").await;
    let _ = app.handler.sweep(Duration::from_secs(8)).await;
    inject_dynamo_faults(&app.table, 0, "unavailable").await;
    let before = gh.redelivered.lock().unwrap().len();
    let report = app.sweep().await;
    assert_eq!(report.redelivery.redelivered + before, 2, "{report:?}");
    let mut all = gh.redelivered.lock().unwrap().clone();
    all.sort();
    all.dedup();
    assert_eq!(all, [1, 2]);
}

#[test]
fn the_test_clock_starts_at_the_wall_clock() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(TestClock::default().now_ms() >= now);
}

#[tokio::test]
async fn installation_tokens_are_scoped_to_the_repository_and_the_functions_permissions() {
    let (app, issued, _) = app_with_tokens(Duration::from_secs(3600)).await;
    deployments_recording_auth(&app).await;
    let (status, body) = app.send(&merged_in_installation(1, 7)).await;
    assert_eq!(status, 200, "{body}");
    let asked: Vec<Value> = app
        .github
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path().ends_with("/access_tokens"))
        .map(|r| r.body_json().unwrap())
        .collect();
    // Exactly what the App's manifest grants (tests/features.rs checks the manifest against the
    // features' list: deployments write, issues write, pull requests, statuses, checks, metadata).
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/github-app-manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        asked,
        [json!({
            "repositories": [REPO.split_once('/').unwrap().1],
            "permissions": manifest["default_permissions"],
        })]
    );
    assert_eq!(issued.lock().unwrap().len(), 1);
}
