#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking
//! Merged pull requests become exactly one GitHub deployment per environment, whatever the
//! redeliveries, duplicate hooks, races and GitHub failures.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, ResponseTemplate};

fn deployments_path() -> String {
    format!("/repos/{REPO}/deployments")
}

async fn mount_created(app: &TestApp, id: u64, expect: u64) {
    Mock::given(method("POST"))
        .and(path(deployments_path()))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": id})))
        .expect(expect)
        .mount(&app.github)
        .await;
}

fn creation_items(items: &[Item]) -> Vec<&Item> {
    items_with_sk_prefix(items, "CREATE#")
}

#[tokio::test]
async fn a_merged_pr_creates_one_deployment_of_the_merge_commit_with_the_exact_request() {
    let app = TestApp::start().await;
    let delivery = new_delivery_id();
    let expected_body = json!({
        "ref": SHA,
        "task": "deploy",
        "auto_merge": false,
        "environment": "production",
        "description": "Deploy #2: Update the README with new information.",
        "production_environment": true,
        "payload": {
            "deploy_user": "Codertocat",
            "pull_request": {"number": 2, "url": format!("https://github.com/{REPO}/pull/2"), "base_ref": "master"},
            "deploy_webhook": {"marker": "codertocat/hello-world#2#production", "delivery": delivery, "merged_at": "2026-11-22T19:02:00Z"},
        },
    });
    Mock::given(method("POST"))
        .and(path(deployments_path()))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("accept", "application/vnd.github+json"))
        .and(header("x-github-api-version", "2022-11-28"))
        .and(body_json(&expected_body))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 145988746})))
        .expect(1)
        .mount(&app.github)
        .await;

    let (status, body) = app.send(&Event::github("pull_request", &delivery, &merged_pr(2, "master"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "processed");
    assert_eq!(body["detail"]["deployments"][0]["deployment_id"], 145988746);
    assert_eq!(body["detail"]["deployments"][0]["result"], "created");

    let requests = app.github_requests().await;
    assert!(requests[0].headers.get("user-agent").unwrap().to_str().unwrap().starts_with("deploy-webhook/"));

    let items = app.items().await;
    let creation = creation_items(&items);
    assert_eq!(creation.len(), 1);
    assert_eq!(attr_s(creation[0], "pk"), Some("REPO#codertocat/hello-world"));
    assert_eq!(attr_s(creation[0], "state"), Some("created"));
    assert_eq!(attr_n(creation[0], "deployment_id"), Some(145988746));
    assert_eq!(attr_s(creation[0], "sha"), Some(SHA));
    // The delivery's audit trail is on the creation item; there is no separate ledger item.
    assert_eq!(attr_s(creation[0], "delivery"), Some(delivery.as_str()));
    assert_eq!(items.len(), 1);
}

#[tokio::test]
async fn a_pr_from_a_fork_deploys_the_merge_commit_on_the_base_repository() {
    let app = TestApp::start().await;
    let mut payload = merged_pr(7, "master");
    payload["pull_request"]["head"]["repo"]["full_name"] = json!("forker/Hello-World");
    payload["pull_request"]["head"]["sha"] = json!("1111111111111111111111111111111111111111");
    Mock::given(method("POST"))
        .and(path(deployments_path()))
        .and(wiremock::matchers::body_partial_json(json!({"ref": SHA})))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 5})))
        .expect(1)
        .mount(&app.github)
        .await;
    let (status, _) = app.send(&Event::github("pull_request", &new_delivery_id(), &payload)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn rules_choose_environments_and_long_titles_are_cut_to_140_characters() {
    let app = TestApp::builder().rules("master=production,master=audit,release/*=staging").start().await;
    Mock::given(method("POST"))
        .and(path(deployments_path()))
        .and(wiremock::matchers::body_partial_json(json!({"environment": "staging", "production_environment": false})))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 30})))
        .expect(1)
        .mount(&app.github)
        .await;
    let mut payload = merged_pr(3, "release/1.0");
    payload["pull_request"]["title"] = json!("ü".repeat(300));
    let (status, body) = app.send(&Event::github("pull_request", &new_delivery_id(), &payload)).await;
    assert_eq!(status, 200, "{body}");
    let sent: Value = app.github_requests().await[0].body_json().unwrap();
    assert_eq!(sent["description"].as_str().unwrap().chars().count(), 140);

    // Two rules for one branch: one deployment for each environment.
    let app = TestApp::builder().rules("master=production,master=audit").start().await;
    mount_created(&app, 40, 2).await;
    let (status, body) = app.send(&Event::github("pull_request", &new_delivery_id(), &merged_pr(4, "master"))).await;
    assert_eq!(status, 200);
    let envs: Vec<&str> =
        body["detail"]["deployments"].as_array().unwrap().iter().map(|d| d["environment"].as_str().unwrap()).collect();
    assert_eq!(envs, ["production", "audit"]);
}

#[tokio::test]
async fn the_same_delivery_twice_creates_one_deployment() {
    let app = TestApp::start().await;
    mount_created(&app, 1, 1).await;
    let event = Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master"));
    assert_eq!(app.send(&event).await.1["status"], "processed");
    let (status, body) = app.send(&event).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("duplicate")));
    assert_eq!(body["detail"]["deployments"][0]["result"], "already_created");
    assert_eq!(body["detail"]["deployments"][0]["deployment_id"], 1);
}

#[tokio::test]
async fn two_deliveries_of_one_merge_create_one_deployment() {
    let app = TestApp::start().await;
    mount_created(&app, 9, 1).await;
    // A repository hook and an organisation hook: different delivery ids, same merge.
    let first = Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master"));
    let second = Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master"));
    assert_eq!(app.send(&first).await.1["status"], "processed");
    let (status, body) = app.send(&second).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("duplicate")), "{body}");
    assert_eq!(body["detail"]["deployments"][0]["result"], "already_created");
    assert_eq!(body["detail"]["deployments"][0]["deployment_id"], 9);
    assert_eq!(creation_items(&app.items().await).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deliveries_of_one_merge_create_one_deployment() {
    let app = TestApp::start().await;
    // A slow GitHub keeps the first claim busy while the others arrive.
    Mock::given(method("POST"))
        .and(path(deployments_path()))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 77})).set_delay(Duration::from_millis(400)))
        .expect(1)
        .mount(&app.github)
        .await;
    let handler = Arc::clone(&app.handler);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let handler = Arc::clone(&handler);
            let event = Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master"));
            tokio::spawn(async move {
                let response = handler.handle(event.request()).await;
                let body: Value = serde_json::from_slice(response.body().as_ref()).unwrap();
                (response.status().as_u16(), body)
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["detail"]["deployments"][0]["deployment_id"], 77);
        statuses.push(body["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(statuses.iter().filter(|s| *s == "processed").count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| *s == "duplicate").count(), 7, "{statuses:?}");
    assert_eq!(creation_items(&app.items().await).len(), 1);
}

#[tokio::test]
async fn a_502_then_201_is_retried_within_the_delivery_without_a_duplicate() {
    let app = TestApp::start().await;
    Mock::given(method("POST"))
        .and(path(deployments_path()))
        .respond_with(ResponseTemplate::new(502))
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(&app.github)
        .await;
    mount_created(&app, 12, 1).await;
    // After a 502 the POST may have been applied: the client looks before posting again.
    Mock::given(method("GET"))
        .and(path(deployments_path()))
        .and(query_param("sha", SHA))
        .and(query_param("environment", "production"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .expect(1)
        .mount(&app.github)
        .await;
    let (status, body) = app.send(&Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master"))).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("processed")), "{body}");
}

#[tokio::test]
async fn a_timed_out_post_that_github_applied_is_found_not_repeated() {
    let app = TestApp::builder()
        .retry(deploy_webhook::github::client::RetryPolicy {
            max_attempts: 3,
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(20),
            attempt_timeout: Duration::from_millis(300),
        })
        .start()
        .await;
    // GitHub creates the deployment but its answer comes too late.
    Mock::given(method("POST"))
        .and(path(deployments_path()))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 21})).set_delay(Duration::from_secs(2)))
        .expect(1)
        .mount(&app.github)
        .await;
    Mock::given(method("GET"))
        .and(path(deployments_path()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"id": 20, "payload": {"deploy_webhook": {"marker": "codertocat/hello-world#1#production"}}},
            {"id": 21, "payload": {"deploy_webhook": {"marker": "codertocat/hello-world#2#production"}}}
        ])))
        .expect(1)
        .mount(&app.github)
        .await;
    let (status, body) = app.send(&Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["detail"]["deployments"][0]["deployment_id"], 21);
}

#[tokio::test]
async fn a_rate_limit_with_retry_after_is_waited_out() {
    let app = TestApp::start().await;
    Mock::given(method("POST"))
        .and(path(deployments_path()))
        .respond_with(
            ResponseTemplate::new(403)
                .insert_header("retry-after", "1")
                .set_body_json(json!({"message": "You have exceeded a secondary rate limit."})),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&app.github)
        .await;
    mount_created(&app, 13, 1).await;
    let started = Instant::now();
    let (status, body) = app.send(&Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master"))).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("processed")), "{body}");
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After was not honoured");
    // A rate-limited request was not applied, so no lookup was needed.
    assert_eq!(app.github_calls().await.iter().filter(|(m, _)| m == "GET").count(), 0);
}

#[tokio::test]
async fn a_rate_limit_longer_than_the_budget_fails_fast_with_5xx() {
    let app = TestApp::start().await;
    Mock::given(method("POST"))
        .and(path(deployments_path()))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "120"))
        .expect(1)
        .mount(&app.github)
        .await;
    let started = Instant::now();
    let (status, _) = app.send(&Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master"))).await;
    assert_eq!(status, 502);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn github_down_is_5xx_then_a_redelivery_creates_exactly_one_deployment() {
    let app = TestApp::start().await;
    let down = Mock::given(method("POST"))
        .and(path(deployments_path()))
        .respond_with(ResponseTemplate::new(503))
        .mount_as_scoped(&app.github)
        .await;
    Mock::given(method("GET"))
        .and(path(deployments_path()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&app.github)
        .await;
    let event = Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master"));
    let (status, body) = app.send(&event).await;
    assert_eq!((status, body["status"].as_str()), (502, Some("error")), "{body}");
    assert!(!body["message"].as_str().unwrap().contains("503"), "internal detail leaked: {body}");
    // The claim is released at once, for the redelivery.
    let items = app.items().await;
    assert_eq!(attr_s(creation_items(&items)[0], "state"), Some("creating"));
    assert_eq!(attr_n(creation_items(&items)[0], "lease_until"), Some(0));
    drop(down);

    mount_created(&app, 14, 1).await;
    let (status, body) = app.send(&event).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("processed")), "{body}");
    let items = app.items().await;
    assert_eq!(attr_s(creation_items(&items)[0], "state"), Some("created"));
    assert_eq!(attr_n(creation_items(&items)[0], "attempts"), Some(2));
}

#[tokio::test]
async fn dynamodb_unreachable_is_503_and_github_is_not_called() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let app = TestApp::builder().dynamo_endpoint(&endpoint).start().await;
    let (status, body) = app.send(&Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master"))).await;
    assert_eq!((status, body["status"].as_str()), (503, Some("error")), "{body}");
    assert!(app.github_calls().await.is_empty());
}

#[tokio::test]
async fn dynamodb_faults_are_retried_by_the_sdk_and_lasting_ones_are_503() {
    let app = TestApp::start().await;
    mount_created(&app, 15, 1).await;
    // More failures than the SDK's attempts: the delivery is refused before any effect.
    inject_dynamo_faults(&app.table, 5, "unavailable").await;
    let event = Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master"));
    let (status, body) = app.send(&event).await;
    assert_eq!(status, 503, "{body}");
    assert!(app.github_calls().await.is_empty());
    inject_dynamo_faults(&app.table, 0, "unavailable").await;

    // One throttle is absorbed by the SDK's retry.
    inject_dynamo_faults(&app.table, 1, "throttle").await;
    let (status, body) = app.send(&event).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("processed")), "{body}");
}

#[tokio::test]
async fn conflicts_and_validation_errors_are_recorded_as_rejected_with_githubs_message() {
    let app = TestApp::start().await;
    Mock::given(method("POST"))
        .and(path(deployments_path()))
        .respond_with(ResponseTemplate::new(409).set_body_json(json!({
            "message": "Conflict: Commit status checks failed for master."
        })))
        .expect(1)
        .mount(&app.github)
        .await;
    let event = Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master"));
    let (status, body) = app.send(&event).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("rejected")), "{body}");
    assert_eq!(body["detail"]["deployments"][0]["github_status"], 409);
    assert!(body["detail"]["deployments"][0]["message"].as_str().unwrap().contains("status checks failed"));
    let items = app.items().await;
    let creation = creation_items(&items);
    assert_eq!(attr_s(creation[0], "state"), Some("rejected"));
    assert!(attr_s(creation[0], "message").unwrap().contains("status checks failed"));

    // Another delivery of the same merge gets the recorded answer, without asking GitHub again.
    let (status, body) = app.send(&Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master"))).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("rejected")));

    let app = TestApp::start().await;
    Mock::given(method("POST"))
        .and(path(deployments_path()))
        .respond_with(ResponseTemplate::new(422).set_body_json(json!({
            "message": "Validation Failed",
            "errors": [{"resource": "Deployment", "field": "ref", "code": "invalid", "message": "No ref found"}]
        })))
        .expect(1)
        .mount(&app.github)
        .await;
    let (status, body) = app.send(&Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master"))).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("rejected")), "{body}");
    assert_eq!(body["detail"]["deployments"][0]["message"], "Validation Failed: No ref found");
}

#[tokio::test]
async fn a_bad_token_is_a_5xx_that_says_to_check_access() {
    let app = TestApp::start().await;
    Mock::given(method("POST"))
        .and(path(deployments_path()))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"message": "Bad credentials"})))
        .expect(1)
        .mount(&app.github)
        .await;
    let (status, body) = app.send(&Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master"))).await;
    assert_eq!(status, 502);
    assert!(body["message"].as_str().unwrap().contains("token"), "{body}");
}

#[tokio::test]
async fn a_retry_after_a_crash_finds_the_deployment_instead_of_creating_another() {
    use deploy_webhook::domain::ports::{Claim, CreationKey, Store};
    use deploy_webhook::domain::{Environment, RepoFullName, Sha};

    let app = TestApp::start().await;
    // An earlier attempt claimed the creation, created the deployment, and died before recording
    // it: its claim is there with a lease that has run out.
    let key =
        CreationKey { repo: RepoFullName::parse(REPO).unwrap(), pr_number: 2, environment: Environment::production() };
    let store = app.handler.service().store();
    let claim = store
        .claim_deployment_creation(&key, &Sha::parse(SHA).unwrap(), &delivery(), false, Duration::ZERO)
        .await
        .unwrap();
    assert!(matches!(claim, Claim::Acquired(_, ())));
    tokio::time::sleep(Duration::from_millis(5)).await;

    Mock::given(method("GET"))
        .and(path(deployments_path()))
        .and(query_param("sha", SHA))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"id": 31, "payload": {"deploy_webhook": {"marker": "codertocat/hello-world#2#production"}}}
        ])))
        .expect(1)
        .mount(&app.github)
        .await;
    mount_created(&app, 99, 0).await;
    let (status, body) = app.send(&Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["detail"]["deployments"][0]["deployment_id"], 31);
    let items = app.items().await;
    assert_eq!(attr_n(creation_items(&items)[0], "deployment_id"), Some(31));
}

#[tokio::test]
async fn a_live_claim_held_by_another_attempt_answers_409_in_progress() {
    use deploy_webhook::domain::ports::{CreationKey, Store};
    use deploy_webhook::domain::{Environment, RepoFullName, Sha};

    let app = TestApp::builder()
        .settings(|s| {
            s.busy_wait = Duration::from_millis(900);
        })
        .start()
        .await;
    let key =
        CreationKey { repo: RepoFullName::parse(REPO).unwrap(), pr_number: 2, environment: Environment::production() };
    let store = app.handler.service().store();
    store
        .claim_deployment_creation(&key, &Sha::parse(SHA).unwrap(), &delivery(), false, Duration::from_secs(60))
        .await
        .unwrap();

    let event = Event::github("pull_request", &new_delivery_id(), &merged_pr(2, "master"));
    let (status, body) = app.send(&event).await;
    assert_eq!((status, body["status"].as_str()), (409, Some("in_progress")), "{body}");
    assert!(app.github_calls().await.is_empty());
}

fn delivery() -> deploy_webhook::domain::DeliveryId {
    deploy_webhook::domain::DeliveryId::parse(&new_delivery_id()).unwrap()
}

#[tokio::test]
async fn of_two_instances_taking_over_the_same_dead_claim_exactly_one_wins() {
    use deploy_webhook::domain::ports::{Claim, CreationKey, CreationRecord, Store};
    use deploy_webhook::domain::{DeliveryId, Environment, RepoFullName, Sha};

    let app = TestApp::start().await;
    let store = app.handler.service().store();
    let key =
        CreationKey { repo: RepoFullName::parse(REPO).unwrap(), pr_number: 7, environment: Environment::production() };
    let sha = Sha::parse(&"a".repeat(40)).unwrap();
    let delivery = DeliveryId::parse("first").unwrap();
    // The first claimant takes a lease that runs out at once: it died.
    let first = store.claim_deployment_creation(&key, &sha, &delivery, false, Duration::from_millis(1)).await.unwrap();
    assert!(matches!(first, Claim::Acquired(ref lease, ()) if lease.attempt == 1), "{first:?}");
    tokio::time::sleep(Duration::from_millis(20)).await;

    // Two redeliveries take it over at once: both see the expired lease, one gets the item.
    let (a, b) = (DeliveryId::parse("second").unwrap(), DeliveryId::parse("third").unwrap());
    let (a, b) = tokio::join!(
        store.claim_deployment_creation(&key, &sha, &a, false, Duration::from_secs(30)),
        store.claim_deployment_creation(&key, &sha, &b, false, Duration::from_secs(30)),
    );
    let claims = [a.unwrap(), b.unwrap()];
    let won: Vec<_> =
        claims.iter().filter_map(|c| if let Claim::Acquired(l, ()) = c { Some(l) } else { None }).collect();
    assert_eq!(won.len(), 1, "{claims:?}");
    assert_eq!(won[0].attempt, 2, "a takeover knows an earlier attempt may have done part of the work");
    assert!(claims.iter().any(|c| matches!(c, Claim::Busy)), "{claims:?}");

    // Once recorded, a late claim gets the record, not the work.
    store
        .finish_deployment_creation(&key, won[0], &CreationRecord::Created(deploy_webhook::domain::DeploymentId(5)))
        .await
        .unwrap();
    let late = store.claim_deployment_creation(&key, &sha, &delivery, false, Duration::from_secs(30)).await.unwrap();
    assert!(matches!(late, Claim::Done(CreationRecord::Created(_))), "{late:?}");
    let items = app.items().await;
    assert_eq!(attr_n(creation_items(&items)[0], "attempts"), Some(2));
}
