#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking
//! Runs: asynchronous hooks and their callbacks, one run per environment with the newest queued
//! deployment winning, merge order, timeouts through the sweep, and runs ended by someone else.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// GitHub's statuses endpoint for any deployment: answers 201 with a fresh status id.
struct Statuses(Arc<AtomicU64>);

impl Respond for Statuses {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let id = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        ResponseTemplate::new(201).set_body_json(json!({"id": id, "state": body["state"]}))
    }
}

async fn github_accepts_statuses(app: &TestApp) {
    Mock::given(method("POST"))
        .and(path_regex(r"^/repos/[^/]+/[^/]+/deployments/\d+/statuses$"))
        .respond_with(Statuses(Arc::default()))
        .mount(&app.github)
        .await;
}

/// The statuses GitHub received, in order, as (deployment id, state, description).
async fn posted(app: &TestApp) -> Vec<(u64, String, String)> {
    app.github
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "POST" && r.url.path().ends_with("/statuses"))
        .map(|r| {
            let id = r.url.path().split('/').nth(5).unwrap().parse().unwrap();
            let body: Value = r.body_json().unwrap();
            (id, body["state"].as_str().unwrap().to_owned(), body["description"].as_str().unwrap_or("").to_owned())
        })
        .collect()
}

fn states_of(posts: &[(u64, String, String)], id: u64) -> Vec<&str> {
    posts.iter().filter(|p| p.0 == id).map(|p| p.1.as_str()).collect()
}

/// A deploy hook that answers `status` to every request.
async fn hook_answering(status: u16) -> MockServer {
    let hook = MockServer::start().await;
    Mock::given(method("POST")).and(path("/deploy")).respond_with(ResponseTemplate::new(status)).mount(&hook).await;
    hook
}

/// The callback URL the hook received for `deployment_id`.
async fn callback_url(hook: &MockServer, deployment_id: u64) -> String {
    let requests = hook.received_requests().await.unwrap();
    let request = requests
        .iter()
        .rev()
        .map(|r| r.body_json::<Value>().unwrap())
        .find(|b| b["deployment_id"] == deployment_id)
        .unwrap_or_else(|| panic!("the hook was not called for {deployment_id}"));
    request["callback_url"].as_str().unwrap().to_owned()
}

async fn async_app() -> (TestApp, MockServer) {
    let hook = hook_answering(202).await;
    let app = TestApp::builder().hook(None, &format!("{}/deploy", hook.uri())).start().await;
    github_accepts_statuses(&app).await;
    (app, hook)
}

fn deployment(id: u64, created_at: &str) -> Event {
    let mut payload = deployment_created(id, "production");
    payload["deployment"]["created_at"] = json!(created_at);
    Event::github("deployment", &new_delivery_id(), &payload)
}

#[tokio::test]
async fn an_asynchronous_hook_keeps_the_run_in_progress_until_its_signed_callback() {
    let (app, hook) = async_app().await;
    let (status, body) = app.send(&deployment(11, "2026-11-22T19:00:00Z")).await;
    assert_eq!((status, body["detail"]["state"].as_str()), (200, Some("in_progress")), "{body}");

    let url = callback_url(&hook, 11).await;
    assert!(url.starts_with("https://abc123.execute-api.us-east-1.amazonaws.com/callbacks/"), "{url}");
    let sent: Value = hook.received_requests().await.unwrap()[0].body_json().unwrap();
    assert!(sent["deadline"].as_str().unwrap().ends_with('Z'), "{sent}");
    let env = app.environment("production").await;
    assert_eq!(env["running"]["phase"], "awaiting");
    assert!(!env.to_string().contains(url.rsplit('.').next().unwrap()), "the token's secret is stored: {env}");

    // Progress with a log link, then the result.
    let (status, body) = app
        .send(&Event::callback(
            &url,
            &json!({"state": "in_progress", "log_url": "https://ci.example.com/1"}),
            HOOK_SECRET,
        ))
        .await;
    assert_eq!((status, body["status"].as_str()), (200, Some("accepted")), "{body}");
    let done = json!({"state": "success", "description": "Deployed v2", "environment_url": "https://example.com"});
    let (status, body) = app.send(&Event::callback(&url, &done, HOOK_SECRET)).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("accepted")), "{body}");

    // A repeated or late callback changes nothing and posts nothing.
    let (status, body) = app.send(&Event::callback(&url, &done, HOOK_SECRET)).await;
    assert_eq!(
        (status, body["status"].as_str(), body["detail"]["state"].as_str()),
        (200, Some("already_final"), Some("success"))
    );
    let failure = json!({"state": "failure"});
    assert_eq!(app.send(&Event::callback(&url, &failure, HOOK_SECRET)).await.1["status"], "already_final");

    let posts = posted(&app).await;
    assert_eq!(states_of(&posts, 11), ["in_progress", "in_progress", "success"]);
    let requests = app.github_requests().await;
    let progress: Value = requests[1].body_json().unwrap();
    assert_eq!(progress["log_url"], "https://ci.example.com/1");
    let result: Value = requests[2].body_json().unwrap();
    assert_eq!(
        (result["description"].as_str(), result["environment_url"].as_str()),
        (Some("Deployed v2"), Some("https://example.com"))
    );
    let env = app.environment("production").await;
    assert!(env.get("running").is_none() && env.get("lease").is_none(), "{env}");
}

#[tokio::test]
async fn refused_callbacks_store_and_post_nothing() {
    let (app, hook) = async_app().await;
    app.send(&deployment(12, "2026-11-22T19:00:00Z")).await;
    let url = callback_url(&hook, 12).await;
    let before = (app.items().await, posted(&app).await.len());
    let done = json!({"state": "success"});

    let forged = Event::callback(&url, &done, "not-the-secret");
    assert_eq!(app.send(&forged).await.0, 401);
    let mut unsigned = Event::callback(&url, &done, HOOK_SECRET);
    unsigned.remove("x-hub-signature-256");
    assert_eq!(app.send(&unsigned).await.0, 401);
    // Right shape, wrong secret part: no run has it.
    let (base, secret) = url.rsplit_once('.').unwrap();
    let guessed = format!("{base}.{}", "0".repeat(secret.len()));
    assert_eq!(app.send(&Event::callback(&guessed, &done, HOOK_SECRET)).await.0, 404);
    for malformed in ["nonsense", "a.b", &format!("{base}.xyz")] {
        let url = format!("https://abc123.execute-api.us-east-1.amazonaws.com/callbacks/{malformed}");
        assert_eq!(app.send(&Event::callback(&url, &done, HOOK_SECRET)).await.0, 404, "{malformed}");
    }
    assert_eq!(app.send(&Event::callback(&url, &json!({"state": "queued"}), HOOK_SECRET)).await.0, 400);
    let mut not_json = Event::callback(&url, &done, HOOK_SECRET);
    not_json.body = b"{state: success".to_vec();
    not_json.resign(HOOK_SECRET);
    assert_eq!(app.send(&not_json).await.0, 400);

    assert_eq!((app.items().await, posted(&app).await.len()), before, "a refused callback changed something");
    assert_eq!(app.environment("production").await["running"]["phase"], "awaiting");
}

#[tokio::test]
async fn a_busy_environment_queues_and_the_newest_queued_deployment_wins() {
    let (app, hook) = async_app().await;
    app.send(&deployment(21, "2026-11-22T19:00:00Z")).await;
    let (status, body) = app.send(&deployment(22, "2026-11-22T19:01:00Z")).await;
    assert_eq!(
        (status, body["status"].as_str(), body["detail"]["behind"].as_u64()),
        (200, Some("queued"), Some(21)),
        "{body}"
    );
    let (_, body) = app.send(&deployment(23, "2026-11-22T19:02:00Z")).await;
    assert_eq!(body["status"], "queued");
    // Redelivered while queued: nothing new.
    assert_eq!(app.send(&deployment(22, "2026-11-22T19:01:00Z")).await.1["status"], "duplicate");
    assert_eq!(hook.received_requests().await.unwrap().len(), 1, "only #21 runs");

    let url = callback_url(&hook, 21).await;
    app.send(&Event::callback(&url, &json!({"state": "success"}), HOOK_SECRET)).await;

    let posts = posted(&app).await;
    assert_eq!(states_of(&posts, 21), ["in_progress", "success"]);
    assert_eq!(states_of(&posts, 22), ["queued", "inactive"]);
    assert_eq!(states_of(&posts, 23), ["queued", "in_progress"]);
    let described =
        |id: u64, state: &str| posts.iter().find(|p| p.0 == id && p.1 == state).map(|p| p.2.clone()).unwrap();
    assert_eq!(described(22, "queued"), "waiting for deployment #21");
    assert_eq!(described(22, "inactive"), "superseded by deployment #23");
    // #21's end is posted before #23 starts, and #22 is set aside before #23 starts too.
    let position = |id: u64, state: &str| posts.iter().position(|p| p.0 == id && p.1 == state).unwrap();
    assert!(position(21, "success") < position(23, "in_progress"));
    assert!(position(22, "inactive") < position(23, "in_progress"));
    assert_eq!(hook.received_requests().await.unwrap().len(), 2, "#23 runs, #22 never");
    let env = app.environment("production").await;
    assert_eq!(env["running"]["deployment"]["id"], 23);
    assert!(env.get("queue").is_none(), "{env}");
}

#[tokio::test]
async fn two_deployments_at_the_same_moment_one_runs_one_queues() {
    let (app, hook) = async_app().await;
    let (a, b) = (deployment(31, "2026-11-22T19:00:00Z"), deployment(32, "2026-11-22T19:00:01Z"));
    let (ra, rb) = tokio::join!(app.send(&a), app.send(&b));
    assert_eq!((ra.0, rb.0), (200, 200));
    assert_eq!(hook.received_requests().await.unwrap().len(), 1, "one run at a time");
    let env = app.environment("production").await;
    // Whichever won the lock runs; the other queues behind it, unless it is the older one and
    // the newer one started first: then it is superseded at once, never run.
    match (ra.1["status"].as_str().unwrap(), rb.1["status"].as_str().unwrap()) {
        ("processed", "queued") => assert_eq!(env["queue"][0]["id"], 32, "{env}"),
        ("superseded", "processed") => assert_eq!(ra.1["detail"]["superseded_by"], 32),
        other => panic!("{other:?}: {ra:?} {rb:?}"),
    }
}

#[tokio::test]
async fn an_older_merge_never_deploys_over_a_later_one() {
    let (app, hook) = async_app().await;
    // PR 5 (merged later) deploys first; PR 4's deployment is created late, with a higher id.
    let mut later = deployment_created(41, "production");
    later["deployment"]["payload"] = json!({"deploy_webhook": {"merged_at": "2026-11-22T19:05:00Z"}});
    app.send(&Event::github("deployment", &new_delivery_id(), &later)).await;
    let mut older = deployment_created(42, "production");
    older["deployment"]["payload"] = json!({"deploy_webhook": {"merged_at": "2026-11-22T19:04:00Z"}});
    let (status, body) = app.send(&Event::github("deployment", &new_delivery_id(), &older)).await;
    assert_eq!(
        (status, body["status"].as_str(), body["detail"]["superseded_by"].as_u64()),
        (200, Some("superseded"), Some(41)),
        "{body}"
    );
    assert_eq!(states_of(&posted(&app).await, 42), ["inactive"]);
    assert_eq!(hook.received_requests().await.unwrap().len(), 1);
    // Its redelivery posts nothing more.
    assert_eq!(app.send(&Event::github("deployment", &new_delivery_id(), &older)).await.1["status"], "duplicate");
    assert_eq!(states_of(&posted(&app).await, 42), ["inactive"]);

    // A merge delivered late is not even created: a later one is already running there.
    let mut pr = merged_pr(4, "master");
    pr["pull_request"]["merged_at"] = json!("2026-11-22T19:04:00Z");
    let (status, body) = app.send(&Event::github("pull_request", &new_delivery_id(), &pr)).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("superseded")), "{body}");
    assert!(app.github_requests().await.iter().all(|r| !r.url.path().ends_with("/deployments")));
}

#[tokio::test]
async fn a_run_without_a_result_times_out_through_the_sweep_and_the_next_starts() {
    let hook = hook_answering(202).await;
    let app = TestApp::builder()
        .hook(None, &format!("{}/deploy", hook.uri()))
        .settings(|s| s.run_timeout = Duration::from_secs(120))
        .start()
        .await;
    github_accepts_statuses(&app).await;
    app.send(&deployment(51, "2026-11-22T19:00:00Z")).await;
    app.send(&deployment(52, "2026-11-22T19:01:00Z")).await;

    assert_eq!(app.sweep().await.due, 0, "nothing is due before the deadline");
    app.clock.advance(Duration::from_secs(121));
    let report = app.sweep().await;
    assert_eq!((report.due, report.healed), (1, 1), "{report:?}");
    let posts = posted(&app).await;
    assert_eq!(states_of(&posts, 51), ["in_progress", "error"]);
    let error = posts.iter().find(|p| p.0 == 51 && p.1 == "error").unwrap();
    assert_eq!(error.2, "no result from the deploy hook within 2 min");
    assert_eq!(states_of(&posts, 52), ["queued", "in_progress"]);
    // A late callback for the timed-out run is answered, and changes nothing.
    let url = callback_url(&hook, 51).await;
    let (status, body) = app.send(&Event::callback(&url, &json!({"state": "success"}), HOOK_SECRET)).await;
    assert_eq!(
        (status, body["status"].as_str(), body["detail"]["state"].as_str()),
        (200, Some("already_final"), Some("error"))
    );
    assert_eq!(states_of(&posted(&app).await, 51), ["in_progress", "error"]);
}

#[tokio::test]
async fn a_terminal_status_posted_by_someone_else_ends_the_run() {
    let (app, hook) = async_app().await;
    app.send(&deployment(61, "2026-11-22T19:00:00Z")).await;
    app.send(&deployment(62, "2026-11-22T19:01:00Z")).await;
    // A person marks the running deployment failed by hand.
    let mut status = deployment_status(61, 9_000, "failure");
    status["deployment_status"]["environment"] = json!("production");
    let (code, body) = app.send(&Event::github("deployment_status", &new_delivery_id(), &status)).await;
    assert_eq!(code, 200, "{body}");
    let posts = posted(&app).await;
    assert_eq!(states_of(&posts, 61), ["in_progress"], "nothing more is posted for #61");
    assert_eq!(states_of(&posts, 62), ["queued", "in_progress"]);
    assert_eq!(hook.received_requests().await.unwrap().len(), 2);
    let env = app.environment("production").await;
    assert_eq!(env["running"]["deployment"]["id"], 62);
    assert_eq!(env["recent"][0]["state"], "failure");
}

#[tokio::test]
async fn a_start_that_failed_is_retried_by_the_sweep() {
    let (app, hook) = async_app().await;
    app.github.reset().await;
    let down = Mock::given(method("POST")).respond_with(ResponseTemplate::new(503)).mount_as_scoped(&app.github).await;
    let (status, _) = app.send(&deployment(71, "2026-11-22T19:00:00Z")).await;
    assert_eq!(status, 502);
    drop(down);
    app.github.reset().await;
    github_accepts_statuses(&app).await;
    // The failed post may have been applied: the sweep asks GitHub first (nothing was).
    Mock::given(method("GET"))
        .and(path_regex(r"/deployments/71/statuses$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .expect(1)
        .mount(&app.github)
        .await;
    assert_eq!(app.sweep().await.due, 0, "not before the retry time");
    app.clock.advance(Duration::from_secs(31));
    assert_eq!(app.sweep().await.healed, 1);
    assert_eq!(states_of(&posted(&app).await, 71), ["in_progress"]);
    assert_eq!(hook.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_redelivery_right_after_a_failed_step_reconciles_before_posting_again() {
    let (app, _hook) = async_app().await;
    app.github.reset().await;
    // in_progress is applied but answered 500, and GitHub is down for the checks after it.
    let down = Mock::given(method("POST")).respond_with(ResponseTemplate::new(500)).mount_as_scoped(&app.github).await;
    let event = deployment(72, "2026-11-22T19:00:00Z");
    assert_eq!(app.send(&event).await.0, 502);
    drop(down);
    app.github.reset().await;
    github_accepts_statuses(&app).await;
    Mock::given(method("GET"))
        .and(path_regex(r"/deployments/72/statuses$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([{"id": 5, "state": "in_progress"}])))
        .expect(1)
        .mount(&app.github)
        .await;
    let (status, body) = app.send(&event).await;
    assert_eq!((status, body["detail"]["state"].as_str()), (200, Some("in_progress")), "{body}");
    assert!(states_of(&posted(&app).await, 72).is_empty(), "in_progress is not posted again");
}

#[tokio::test]
async fn the_hook_gets_its_whole_timeout_within_the_budget() {
    // DEPLOY_HOOK_TIMEOUT_MS=1000 and a hook answering in 0.4 s: success (it was a failure
    // after 0.1 s when the reserve came off the setting).
    let hook = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(400)))
        .mount(&hook)
        .await;
    let app = TestApp::builder()
        .hook(None, &format!("{}/deploy", hook.uri()))
        .hook_timeout(Duration::from_millis(1000))
        .start()
        .await;
    github_accepts_statuses(&app).await;
    let (status, body) = app.send(&deployment(81, "2026-11-22T19:00:00Z")).await;
    assert_eq!((status, body["detail"]["state"].as_str()), (200, Some("success")), "{body}");
}

#[tokio::test]
async fn a_deployment_older_than_all_its_environment_remembers_gets_inactive_unless_it_has_a_final_status() {
    use deploy_webhook::domain::ports::{EnvKey, Store};
    use deploy_webhook::domain::runs::{EnvironmentState, Rank};
    use deploy_webhook::domain::{Environment, RepoFullName};

    let (app, hook) = async_app().await;
    // The environment has run deployments up to #900 and forgotten those up to #800.
    let key = EnvKey { repo: RepoFullName::parse(REPO).unwrap(), environment: Environment::production() };
    let remembered = EnvironmentState {
        started: Some(Rank("2026-06-01T00:00:00Z".into(), 900)),
        forgotten_up_to: Some(Rank("2026-05-01T00:00:00Z".into(), 800)),
        ..Default::default()
    };
    app.handler.service().store().save_environment(&key, &remembered, 0).await.unwrap().unwrap();
    let statuses = |id: u64| format!("/repos/{REPO}/deployments/{id}/statuses");
    // #41's delivery comes very late and it never got a final status; #42 ran long ago.
    Mock::given(method("GET"))
        .and(path(statuses(41)))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"id": 7, "state": "queued", "description": "waiting", "creator": {"login": "deploy-bot"}}
        ])))
        .expect(1)
        .mount(&app.github)
        .await;
    Mock::given(method("GET"))
        .and(path(statuses(42)))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"id": 9, "state": "success", "description": "deployed", "creator": {"login": "deploy-bot"}},
            {"id": 8, "state": "in_progress", "description": "deploying", "creator": {"login": "deploy-bot"}}
        ])))
        .expect(1)
        .mount(&app.github)
        .await;

    for id in [41, 42] {
        let (status, body) = app.send(&deployment(id, "2026-04-01T00:00:00Z")).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("stale")), "{body}");
    }
    assert_eq!(posted(&app).await, vec![(41, "inactive".to_owned(), "superseded by deployment #900".to_owned())]);
    assert!(hook.received_requests().await.unwrap().is_empty(), "a forgotten deployment is never run");
    let env = app.environment("production").await;
    assert!(env.get("running").is_none() && env.get("queue").is_none(), "{env}");
}
