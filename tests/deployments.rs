#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking
//! `deployment` events run the environment's deploy and report statuses once; `deployment_status`
//! events record the newest state.

mod common;

use common::*;
use serde_json::{Value, json};
use wiremock::matchers::{body_json, body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const DEPLOYMENT_ID: u64 = 145988746;

fn statuses_path(id: u64) -> String {
    format!("/repos/{REPO}/deployments/{id}/statuses")
}

fn status_response(id: u64, state: &str) -> ResponseTemplate {
    ResponseTemplate::new(201).set_body_json(json!({
        "id": id, "state": state, "description": "x", "creator": {"login": "deploy-bot"},
        "created_at": "2026-11-22T19:00:00Z", "environment_url": "", "log_url": ""
    }))
}

async fn mount_status(app: &TestApp, state: &str, status_id: u64, expect: u64) {
    Mock::given(method("POST"))
        .and(path(statuses_path(DEPLOYMENT_ID)))
        .and(body_partial_json(json!({"state": state})))
        .respond_with(status_response(status_id, state))
        .expect(expect)
        .mount(&app.github)
        .await;
}

fn deployment_item(items: &[Item]) -> &Item {
    let found = items_with_sk_prefix(items, "DEPLOYMENT#");
    assert_eq!(found.len(), 1, "one deployment item");
    found[0]
}

#[tokio::test]
async fn a_deployment_without_a_hook_reports_in_progress_then_success() {
    let app = TestApp::builder().environment_url("https://hello-world.example.com").start().await;
    Mock::given(method("POST"))
        .and(path(statuses_path(DEPLOYMENT_ID)))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(body_json(json!({"state": "in_progress", "description": "Deploying f95f852 to production"})))
        .respond_with(status_response(1, "in_progress"))
        .expect(1)
        .mount(&app.github)
        .await;
    Mock::given(method("POST"))
        .and(path(statuses_path(DEPLOYMENT_ID)))
        .and(body_json(json!({
            "state": "success",
            "description": "Deployed f95f852 to production",
            "environment_url": "https://hello-world.example.com"
        })))
        .respond_with(status_response(2, "success"))
        .expect(1)
        .mount(&app.github)
        .await;

    let (status, body) = app
        .send(&Event::github("deployment", &new_delivery_id(), &deployment_created(DEPLOYMENT_ID, "production")))
        .await;
    assert_eq!((status, body["status"].as_str()), (200, Some("processed")), "{body}");
    assert_eq!(body["detail"]["state"], "success");

    // in_progress strictly before success.
    let calls = app.github_requests().await;
    let states: Vec<String> =
        calls.iter().map(|r| r.body_json::<Value>().unwrap()["state"].as_str().unwrap().to_owned()).collect();
    assert_eq!(states, ["in_progress", "success"]);

    // The environment ran it and is free again, with it as its last success.
    let env = app.environment("production").await;
    assert!(env.get("running").is_none() && env.get("lease").is_none() && env.get("queue").is_none(), "{env}");
    assert_eq!(env["recent"][0]["id"], DEPLOYMENT_ID);
    assert_eq!(env["recent"][0]["state"], "success");
    assert_eq!(env["last_success"]["sha"], "f95f852bd8fca8fcc58a9a2d6c842781e32a215e");
    // Two writes for the whole delivery: the run's claim and its end (version 2), nothing else.
    let items = app.items().await;
    assert_eq!(items.len(), 1, "only the environment item");
    assert_eq!(attr_n(&items[0], "version"), Some(2));
    assert!(!items[0].contains_key("due_at"), "nothing left for the sweep");
}

#[tokio::test]
async fn the_deploy_hook_gets_a_signed_description_and_its_answer_decides_the_status() {
    let hook = MockServer::start().await;
    let app = TestApp::builder().hook(Some("PRODUCTION"), &format!("{}/deploy", hook.uri())).start().await;
    Mock::given(method("POST"))
        .and(path("/deploy"))
        .and(body_partial_json(json!({
            "deployment_id": DEPLOYMENT_ID, "repository": REPO, "environment": "production",
            "sha": "f95f852bd8fca8fcc58a9a2d6c842781e32a215e", "ref": "master"
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "log_url": "https://ci.example.com/runs/1", "environment_url": "https://prod.example.com"
        })))
        .expect(1)
        .mount(&hook)
        .await;
    mount_status(&app, "in_progress", 1, 1).await;
    Mock::given(method("POST"))
        .and(path(statuses_path(DEPLOYMENT_ID)))
        .and(body_partial_json(json!({
            "state": "success", "log_url": "https://ci.example.com/runs/1", "environment_url": "https://prod.example.com"
        })))
        .respond_with(status_response(2, "success"))
        .expect(1)
        .mount(&app.github)
        .await;

    let (status, body) = app
        .send(&Event::github("deployment", &new_delivery_id(), &deployment_created(DEPLOYMENT_ID, "production")))
        .await;
    assert_eq!(status, 200, "{body}");

    let request = &hook.received_requests().await.unwrap()[0];
    let signature = request.headers.get("x-hub-signature-256").unwrap().to_str().unwrap();
    assert_eq!(signature, sign(HOOK_SECRET, &request.body), "the hook's body is signed with the hook secret");
}

#[tokio::test]
async fn a_failing_or_unreachable_hook_reports_failure() {
    let hook = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(500)).expect(1).mount(&hook).await;
    let app = TestApp::builder().hook(None, &hook.uri()).start().await;
    mount_status(&app, "in_progress", 1, 1).await;
    Mock::given(method("POST"))
        .and(path(statuses_path(DEPLOYMENT_ID)))
        .and(body_json(json!({"state": "failure", "description": "Deploy hook answered 500"})))
        .respond_with(status_response(2, "failure"))
        .expect(1)
        .mount(&app.github)
        .await;
    let (status, body) = app
        .send(&Event::github("deployment", &new_delivery_id(), &deployment_created(DEPLOYMENT_ID, "production")))
        .await;
    assert_eq!((status, body["detail"]["state"].as_str()), (200, Some("failure")), "{body}");
    assert_eq!(app.environment("production").await["recent"][0]["state"], "failure");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let app = TestApp::builder().hook(None, &nowhere).start().await;
    mount_status(&app, "in_progress", 1, 1).await;
    mount_status(&app, "failure", 2, 1).await;
    let (status, body) = app
        .send(&Event::github("deployment", &new_delivery_id(), &deployment_created(DEPLOYMENT_ID, "production")))
        .await;
    assert_eq!((status, body["detail"]["state"].as_str()), (200, Some("failure")), "{body}");
}

#[tokio::test]
async fn deployments_to_environments_we_do_not_manage_are_ignored() {
    let app = TestApp::start().await;
    let (status, body) =
        app.send(&Event::github("deployment", &new_delivery_id(), &deployment_created(DEPLOYMENT_ID, "qa"))).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ignored")), "{body}");
    assert!(app.github_calls().await.is_empty());
    assert!(app.items().await.is_empty());

    // A hook for an environment makes it managed.
    let app = TestApp::builder().hook(Some("QA"), "http://127.0.0.1:9/unused").start().await;
    mount_status(&app, "in_progress", 1, 1).await;
    mount_status(&app, "failure", 2, 1).await;
    let (status, body) =
        app.send(&Event::github("deployment", &new_delivery_id(), &deployment_created(DEPLOYMENT_ID, "qa"))).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("processed")), "{body}");
}

#[tokio::test]
async fn a_deployment_event_delivered_twice_or_by_two_hooks_posts_its_statuses_once() {
    let app = TestApp::start().await;
    mount_status(&app, "in_progress", 1, 1).await;
    mount_status(&app, "success", 2, 1).await;
    let payload = deployment_created(DEPLOYMENT_ID, "production");
    let event = Event::github("deployment", &new_delivery_id(), &payload);
    assert_eq!(app.send(&event).await.1["status"], "processed");
    assert_eq!(app.send(&event).await.1["status"], "duplicate");
    let (status, body) = app.send(&Event::github("deployment", &new_delivery_id(), &payload)).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("duplicate")), "{body}");
    assert_eq!(body["detail"]["state"], "success");
}

#[tokio::test]
async fn github_failing_on_the_final_status_is_5xx_and_the_retry_does_not_rerun_the_deploy() {
    let hook = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).expect(1).mount(&hook).await;
    let app = TestApp::builder().hook(None, &hook.uri()).start().await;
    mount_status(&app, "in_progress", 1, 1).await;
    let down = Mock::given(method("POST"))
        .and(path(statuses_path(DEPLOYMENT_ID)))
        .and(body_partial_json(json!({"state": "success"})))
        .respond_with(ResponseTemplate::new(500))
        .mount_as_scoped(&app.github)
        .await;
    Mock::given(method("GET"))
        .and(path(statuses_path(DEPLOYMENT_ID)))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"id": 1, "state": "in_progress", "description": "Deploying", "creator": {"login": "deploy-bot"}}
        ])))
        .mount(&app.github)
        .await;
    let event = Event::github("deployment", &new_delivery_id(), &deployment_created(DEPLOYMENT_ID, "production"));
    let (status, body) = app.send(&event).await;
    assert_eq!(status, 502, "{body}");
    drop(down);

    mount_status(&app, "success", 2, 1).await;
    let (status, body) = app.send(&event).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("processed")), "{body}");
    // The hook ran once (checked by its expect(1)); in_progress was posted once.
    let posts: Vec<String> = app
        .github
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .map(|r| r.body_json::<Value>().unwrap()["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(posts.iter().filter(|s| *s == "in_progress").count(), 1, "{posts:?}");
}

#[tokio::test]
async fn a_retry_after_a_crash_does_not_post_in_progress_twice() {
    use deploy_webhook::domain::ports::{EnvKey, Store};
    use deploy_webhook::domain::runs::{self, Ctx, DeploymentToRun, Rank, RunSettings, Trigger};
    use deploy_webhook::domain::{DeploymentId, Environment, RepoFullName, Sha};

    let app = TestApp::start().await;
    let payload = deployment_created(DEPLOYMENT_ID, "production");
    // An earlier instance took the run, posted in_progress and died: its lease ran out.
    let key = EnvKey { repo: RepoFullName::parse(REPO).unwrap(), environment: Environment::production() };
    let d = DeploymentToRun {
        id: DeploymentId(DEPLOYMENT_ID),
        sha: Sha::parse(payload["deployment"]["sha"].as_str().unwrap()).unwrap(),
        git_ref: "main".into(),
        task: "deploy".into(),
        creator: None,
        payload: Value::Null,
        rank: Rank(payload["deployment"]["created_at"].as_str().unwrap().into(), DEPLOYMENT_ID),
        callback_base: None,
        delivery: "dead".into(),
        arrived_ms: 0,
        requester: None,
        pr: None,
    };
    let settings = RunSettings { lease_ms: 1, run_timeout_ms: 3_600_000_000_000 };
    let ctx = Ctx { now: 0, token: "dead-instance", secret: "its-secret" };
    let dead = runs::apply(&Default::default(), &Trigger::Arrived(d), &ctx, &settings).state;
    let store = app.handler.service().store();
    store.save_environment(&key, &dead, 0).await.unwrap().unwrap();

    Mock::given(method("GET"))
        .and(path(statuses_path(DEPLOYMENT_ID)))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"id": 1, "state": "in_progress", "description": "Deploying", "creator": {"login": "deploy-bot"}}
        ])))
        .expect(1)
        .mount(&app.github)
        .await;
    mount_status(&app, "in_progress", 9, 0).await;
    mount_status(&app, "success", 2, 1).await;
    let (status, body) = app.send(&Event::github("deployment", &new_delivery_id(), &payload)).await;
    assert_eq!(
        (status, body["status"].as_str(), body["detail"]["state"].as_str()),
        (200, Some("processed"), Some("success")),
        "{body}"
    );
    let env = app.environment("production").await;
    assert!(env.get("running").is_none() && env.get("lease").is_none(), "{env}");
    assert_eq!(env["recent"][0]["state"], "success");
}

#[tokio::test]
async fn deployment_statuses_are_recorded_and_an_older_one_never_overwrites_a_newer_one() {
    let app = TestApp::start().await;
    let newer = deployment_status(DEPLOYMENT_ID, 200, "success");
    let older = deployment_status(DEPLOYMENT_ID, 100, "in_progress");

    let (status, body) = app.send(&Event::github("deployment_status", &new_delivery_id(), &newer)).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("processed")), "{body}");
    let (status, body) = app.send(&Event::github("deployment_status", &new_delivery_id(), &older)).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("stale")), "{body}");
    // The same status again (a redelivery, or our own status echoed back) is a harmless no-op.
    let (status, body) = app.send(&Event::github("deployment_status", &new_delivery_id(), &newer)).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("processed")), "{body}");

    let items = app.items().await;
    let item = deployment_item(&items);
    assert_eq!(attr_s(item, "status_state"), Some("success"));
    assert_eq!(attr_n(item, "status_id"), Some(200));
    assert_eq!(attr_s(item, "status_creator"), Some("Codertocat"));
    assert!(attr_s(item, "status_created_at").is_some());
    assert_eq!(attr_s(item, "environment"), Some("production"));
    // A terminal status by someone else (Codertocat) for a managed environment: GitHub is asked
    // once who we are (cached for the cold start), and nothing else is called.
    assert_eq!(
        app.github_calls().await,
        [("GET".to_owned(), "/user".to_owned())],
        "recording a status asks GitHub only who we are"
    );

    let mut failure = deployment_status(DEPLOYMENT_ID, 300, "failure");
    failure["deployment_status"]["description"] = json!("Deploy failed: 3 tests");
    failure["deployment_status"]["log_url"] = json!("https://ci.example.com/runs/3");
    assert_eq!(app.send(&Event::github("deployment_status", &new_delivery_id(), &failure)).await.0, 200);
    let items = app.items().await;
    let item = deployment_item(&items);
    assert_eq!(attr_s(item, "status_state"), Some("failure"));
    assert_eq!(attr_s(item, "status_description"), Some("Deploy failed: 3 tests"));
    assert_eq!(attr_s(item, "status_log_url"), Some("https://ci.example.com/runs/3"));
}
