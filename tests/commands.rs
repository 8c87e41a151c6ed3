#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking
//! Comment commands: every command, who may run them, bots and edits, duplicates, injection.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use deploy_webhook::domain::Environment;
use deploy_webhook::domain::ports::Clock;
use serde_json::{Value, json};
use wiremock::matchers::{body_partial_json, method, path, path_regex};
use wiremock::{Mock, ResponseTemplate};

const COMMENT_ID: u64 = 5001;

fn comment(body: &str, author: &str, on_pr: bool) -> Value {
    let mut p = fixture("issues.opened");
    p["action"] = json!("created");
    p["issue"]["number"] = json!(7);
    if on_pr {
        p["issue"]["pull_request"] = json!({"url": format!("https://api.github.com/repos/{REPO}/pulls/7")});
    }
    p["comment"] = json!({"id": COMMENT_ID, "body": body, "user": {"login": author, "type": "User"}});
    p
}

fn deliver(payload: &Value) -> Event {
    Event::github("issue_comment", &new_delivery_id(), payload)
}

async fn app() -> TestApp {
    let app = TestApp::builder()
        .rules("main=production")
        .settings(|s| {
            s.branch_deploy_environments = HashSet::from([Environment::parse("staging").unwrap()]);
        })
        .start()
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"/issues/comments/\d+/reactions$"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 1})))
        .mount(&app.github)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"/issues/\d+/comments$"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 2})))
        .mount(&app.github)
        .await;
    app
}

async fn permission(app: &TestApp, user: &str, permission: &str, role: &str) {
    Mock::given(method("GET"))
        .and(path(format!("/repos/{REPO}/collaborators/{user}/permission")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"permission": permission, "role_name": role})))
        .mount(&app.github)
        .await;
}

/// (reactions, reply bodies) the bot posted.
async fn said(app: &TestApp) -> (Vec<String>, Vec<String>) {
    let requests = app.github_requests().await;
    let body = |r: &wiremock::Request, k: &str| r.body_json::<Value>().unwrap()[k].as_str().unwrap().to_owned();
    let reactions =
        requests.iter().filter(|r| r.url.path().ends_with("/reactions")).map(|r| body(r, "content")).collect();
    let replies = requests
        .iter()
        .filter(|r| {
            r.method.as_str() == "POST" && r.url.path().ends_with("/comments") && !r.url.path().contains("/comments/")
        })
        .map(|r| body(r, "body"))
        .collect();
    (reactions, replies)
}

async fn deployments_created(app: &TestApp) -> Vec<Value> {
    app.github
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "POST" && r.url.path().ends_with("/deployments"))
        .map(|r| r.body_json().unwrap())
        .collect()
}

async fn github_creates_deployments(app: &TestApp) {
    Mock::given(method("GET"))
        .and(path(format!("/repos/{REPO}/deployments")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&app.github)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("/repos/{REPO}/deployments")))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 900})))
        .mount(&app.github)
        .await;
}

#[tokio::test]
async fn help_and_command_words_with_wrong_arguments_answer_the_list_once() {
    let app = app().await;
    permission(&app, "octocat", "write", "write").await;
    for text in [".help", ".deploy staging now"] {
        let mut payload = comment(text, "octocat", false);
        payload["comment"]["id"] = json!(fastrand::u32(..));
        let event = deliver(&payload);
        assert_eq!(app.send(&event).await.1["status"], "processed");
        // The same delivery again: nothing more, not even a permission read.
        let calls = app.github_calls().await.len();
        assert_eq!(app.send(&event).await.1["status"], "duplicate");
        assert_eq!(app.github_calls().await.len(), calls, "a redelivered command called GitHub");
    }
    let (_, replies) = said(&app).await;
    assert_eq!(replies.len(), 2);
    assert!(replies.iter().all(|r| r.contains(".rollback <environment>")));
}

#[tokio::test]
async fn bots_edits_and_comments_without_an_exact_command_word_are_ignored_and_cost_nothing() {
    let app = app().await;
    let mut bot = comment(".status", "deploy-webhook[bot]", true);
    bot["comment"]["user"]["type"] = json!("Bot");
    let mut edited = comment(".status", "octocat", true);
    edited["action"] = json!("edited");
    let mut payloads = vec![bot, edited];
    for text in ["thanks, looks good", "...", ".NET rocks", ".helpme", ".Help", ".frobnicate production", "."] {
        payloads.push(comment(text, "octocat", true));
    }
    for payload in payloads {
        let (status, body) = app.send(&deliver(&payload)).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("ignored")), "{payload} {body}");
    }
    assert!(app.github_calls().await.is_empty());
    assert!(app.items().await.is_empty(), "nothing stored for a comment that is not a command");
}

#[tokio::test]
async fn a_commenter_without_permission_gets_one_reaction_within_an_hourly_budget_and_nothing_else() {
    let app = app().await;
    // Start of an hour on the service's clock: the whole test falls in one budget hour.
    let now = app.clock.now_ms();
    app.clock.advance(Duration::from_millis(3_600_000 - now % 3_600_000 + 1_000));
    permission(&app, "visitor", "read", "triage").await;
    let (status, body) = app.send(&deliver(&comment(".lock production", "visitor", true))).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("refused")), "{body}");
    // The permission read came first; the only write is one 😕.
    let calls = app.github_calls().await;
    assert_eq!(
        calls,
        [
            ("GET".to_owned(), format!("/repos/{REPO}/collaborators/visitor/permission")),
            ("POST".to_owned(), format!("/repos/{REPO}/issues/comments/{COMMENT_ID}/reactions")),
        ]
    );
    let (reactions, replies) = said(&app).await;
    assert_eq!((reactions, replies), (vec!["confused".to_owned()], vec![]));
    assert_eq!(app.environment("production").await, Value::Null, "no lock");

    // More comments (and the same one redelivered): 😕 at most 3 times in the hour, across them all.
    let mut sent = vec![deliver(&comment(".lock production", "visitor", true))];
    for (i, text) in [".help", ".status", ".unlock production", ".rollback production"].iter().enumerate() {
        let mut payload = comment(text, "visitor", i % 2 == 0);
        payload["comment"]["id"] = json!(COMMENT_ID + 1 + i as u64);
        sent.push(deliver(&payload));
    }
    for event in &sent {
        assert_eq!(app.send(event).await.1["status"], "refused");
    }
    let (reactions, replies) = said(&app).await;
    assert_eq!(reactions.len(), 3, "{reactions:?}");
    assert!(replies.is_empty());
    let items = app.items().await;
    assert!(items_with_sk_prefix(&items, "COMMENT#").is_empty(), "no comment claimed for a refused commenter");
    let budget = items_with_sk_prefix(&items, "WRITES#");
    assert_eq!(budget.len(), 1, "{items:?}");
    assert_eq!(attr_s(budget[0], "pk"), Some("USER#visitor"));
    assert_eq!(attr_n(budget[0], "writes"), Some(3));
    let hour = attr_s(budget[0], "sk").unwrap().trim_start_matches("WRITES#").parse::<u64>().unwrap();
    assert_eq!(attr_n(budget[0], "expires_at"), Some((hour + 2) * 3600), "forgotten (TTL) after the hour");

    // Another stranger has a budget of their own.
    permission(&app, "passerby", "none", "").await;
    let mut other = comment(".status", "passerby", false);
    other["comment"]["id"] = json!(COMMENT_ID + 9);
    assert_eq!(app.send(&deliver(&other)).await.1["status"], "refused");
    assert_eq!(said(&app).await.0.len(), 4);
}

#[tokio::test]
async fn maintain_in_chatops_permissions_means_the_maintain_role() {
    let app = TestApp::builder().settings(|s| s.chatops_permissions = vec!["maintain".to_owned()]).start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"/reactions$|/comments$"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 1})))
        .mount(&app.github)
        .await;
    permission(&app, "maya", "write", "maintain").await;
    permission(&app, "walt", "write", "write").await;
    let mut by_walt = comment(".help", "walt", false);
    by_walt["comment"]["id"] = json!(COMMENT_ID + 1);
    assert_eq!(app.send(&deliver(&by_walt)).await.1["status"], "refused", "write is not maintain");
    assert_eq!(app.send(&deliver(&comment(".help", "maya", false))).await.1["status"], "processed");
}

#[tokio::test]
async fn lock_holds_deployments_of_others_and_unlock_releases_them() {
    let app = app().await;
    permission(&app, "alice", "write", "maintain").await;
    let reason = "db migration @org/everyone **now** [x](https://evil)";
    let (_, body) = app.send(&deliver(&comment(&format!(".lock production {reason}"), "alice", true))).await;
    assert_eq!(body["status"], "processed", "{body}");
    let env = app.environment("production").await;
    assert_eq!(env["lock"]["holder"], "alice");
    let (reactions, replies) = said(&app).await;
    assert_eq!(reactions, ["eyes"]);
    assert!(replies[0].starts_with("🔒 `production` is locked by @alice: "), "{}", replies[0]);
    assert!(
        !replies[0].contains("@org") && !replies[0].contains("**now**") && !replies[0].contains("]("),
        "{}",
        replies[0]
    );

    // A merge's deployment (by someone else) waits.
    Mock::given(method("POST"))
        .and(path_regex(r"/deployments/\d+/statuses$"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 1, "state": "queued"})))
        .mount(&app.github)
        .await;
    let (_, body) =
        app.send(&Event::github("deployment", &new_delivery_id(), &deployment_created(77, "production"))).await;
    assert_eq!(body["status"], "queued", "{body}");
    let statuses: Vec<Value> = app
        .github
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path().ends_with("/77/statuses"))
        .map(|r| r.body_json().unwrap())
        .collect();
    assert_eq!(statuses[0]["state"], "queued");
    assert!(statuses[0]["description"].as_str().unwrap().starts_with("locked by @alice: db migration"));

    // Someone else cannot take it over; .unlock starts the waiting deployment.
    permission(&app, "bob", "admin", "admin").await;
    let mut other = comment(".lock production mine", "bob", true);
    other["comment"]["id"] = json!(COMMENT_ID + 1);
    assert_eq!(app.send(&deliver(&other)).await.1["status"], "refused");
    let mut unlock = comment(".unlock production", "bob", true);
    unlock["comment"]["id"] = json!(COMMENT_ID + 2);
    assert_eq!(app.send(&deliver(&unlock)).await.1["status"], "processed");
    let env = app.environment("production").await;
    assert!(env.get("lock").is_none(), "{env}");
    assert_eq!(env["recent"][0]["id"], 77, "the waiting deployment ran: {env}");
}

#[tokio::test]
async fn rollback_deploys_the_last_success_before_the_current_one() {
    let app = app().await;
    permission(&app, "alice", "write", "write").await;
    Mock::given(method("POST"))
        .and(path_regex(r"/deployments/\d+/statuses$"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 1, "state": "success"})))
        .mount(&app.github)
        .await;
    let shas = ["1111111111111111111111111111111111111111", "2222222222222222222222222222222222222222"];
    for (i, sha) in shas.iter().enumerate() {
        let mut d = deployment_created(60 + i as u64, "production");
        d["deployment"]["sha"] = json!(sha);
        d["deployment"]["created_at"] = json!(format!("2026-11-22T19:0{i}:00Z"));
        assert_eq!(app.send(&Event::github("deployment", &new_delivery_id(), &d)).await.0, 200);
    }
    github_creates_deployments(&app).await;
    let (_, body) = app.send(&deliver(&comment(".rollback production", "alice", false))).await;
    assert_eq!(
        (body["status"].as_str(), body["detail"]["deployment_id"].as_u64()),
        (Some("processed"), Some(900)),
        "{body}"
    );
    let created = deployments_created(&app).await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["ref"], shas[0]);
    assert_eq!(created[0]["environment"], "production");
    assert_eq!(created[0]["required_contexts"], json!([]));
    assert_eq!(created[0]["payload"]["deploy_webhook"]["requested_by"], "alice");
    let (reactions, replies) = said(&app).await;
    assert_eq!(reactions, ["eyes", "rocket"]);
    assert!(replies[0].contains("deployment #900"), "{replies:?}");
}

#[tokio::test]
async fn branch_deploys_only_where_enabled_and_never_from_forks() {
    let app = app().await;
    permission(&app, "alice", "write", "write").await;
    let head = "3333333333333333333333333333333333333333";
    Mock::given(method("GET"))
        .and(path(format!("/repos/{REPO}/pulls/7")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "state": "open", "head": {"sha": head, "ref": "feature", "repo": {"full_name": REPO}}
        })))
        .mount(&app.github)
        .await;
    github_creates_deployments(&app).await;
    let (_, body) = app.send(&deliver(&comment(".deploy to production", "alice", true))).await;
    assert_eq!(body["status"], "refused", "production is not a branch-deploy environment");
    let mut ok = comment(".deploy to staging", "alice", true);
    ok["comment"]["id"] = json!(COMMENT_ID + 1);
    let (_, body) = app.send(&deliver(&ok)).await;
    assert_eq!(body["status"], "processed", "{body}");
    let created = deployments_created(&app).await;
    assert_eq!((created.len(), created[0]["ref"].as_str()), (1, Some(head)));
    assert_eq!(created[0]["payload"]["pull_request"]["number"], 7);

    // From a fork: refused.
    let fork = app_with_fork_pull().await;
    let (_, body) = fork.send(&deliver(&comment(".deploy to staging", "alice", true))).await;
    assert_eq!(body["status"], "refused");
    assert!(said(&fork).await.1[0].contains("forks"));
    assert!(deployments_created(&fork).await.is_empty());
}

async fn app_with_fork_pull() -> TestApp {
    let app = app().await;
    permission(&app, "alice", "write", "write").await;
    Mock::given(method("GET"))
        .and(path(format!("/repos/{REPO}/pulls/7")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "state": "open", "head": {"sha": "4444444444444444444444444444444444444444", "ref": "x", "repo": {"full_name": "mallory/Hello-World"}}
        })))
        .mount(&app.github)
        .await;
    app
}

#[tokio::test]
async fn sha_deploys_need_the_setting_and_a_full_sha() {
    let app = app().await;
    permission(&app, "alice", "write", "write").await;
    let sha = "5555555555555555555555555555555555555555";
    let (_, body) = app.send(&deliver(&comment(&format!(".deploy {sha} to production"), "alice", false))).await;
    assert_eq!(body["status"], "refused");
    assert!(said(&app).await.1[0].contains("ALLOW_SHA_DEPLOYMENTS"));

    let app = TestApp::builder().settings(|s| s.allow_sha_deployments = true).start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"/reactions$|/comments$"))
        .respond_with(ResponseTemplate::new(201))
        .mount(&app.github)
        .await;
    permission(&app, "alice", "write", "write").await;
    github_creates_deployments(&app).await;
    let (_, body) = app.send(&deliver(&comment(".deploy 5555 to production", "alice", false))).await;
    assert_eq!(body["status"], "refused", "a short sha");
    let mut full = comment(&format!(".deploy {sha} to production"), "alice", false);
    full["comment"]["id"] = json!(COMMENT_ID + 1);
    assert_eq!(app.send(&deliver(&full)).await.1["status"], "processed");
    assert_eq!(deployments_created(&app).await[0]["ref"], sha);
}

#[tokio::test]
async fn unknown_environments_are_refused_without_echoing_them() {
    let app = app().await;
    permission(&app, "alice", "write", "write").await;
    let (_, body) = app.send(&deliver(&comment(".lock @everyone", "alice", false))).await;
    assert_eq!(body["status"], "refused");
    let reply = &said(&app).await.1[0];
    assert!(reply.contains("Unknown environment") && !reply.contains("@everyone"), "{reply}");
}

#[tokio::test]
async fn status_lists_every_environment() {
    let app = app().await;
    permission(&app, "alice", "write", "write").await;
    Mock::given(method("POST"))
        .and(path_regex(r"/deployments/\d+/statuses$"))
        .and(body_partial_json(json!({})))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 1, "state": "success"})))
        .mount(&app.github)
        .await;
    let mut d = deployment_created(61, "production");
    d["deployment"]["payload"] = json!({"pull_request": {"number": 12}});
    app.send(&Event::github("deployment", &new_delivery_id(), &d)).await;
    let (_, body) = app.send(&deliver(&comment(".status", "alice", false))).await;
    assert_eq!(body["status"], "processed", "{body}");
    let reply = &said(&app).await.1[0];
    assert!(reply.contains("| `production` | `f95f852` (#12) | #61 success |"), "{reply}");
    assert!(reply.contains("| `staging` |"), "{reply}");
}

#[tokio::test]
async fn status_names_the_events_a_feature_needs_that_this_stack_never_received() {
    let app = app().await;
    permission(&app, "alice", "write", "write").await;
    // Only comments have arrived: deployments and gates are missing their events.
    app.send(&deliver(&comment(".status", "alice", false))).await;
    let reply = said(&app).await.1[0].clone();
    assert!(reply.contains("⚠ Merged pull requests become deployments"), "{reply}");
    assert!(
        reply.contains(
            "never received Pull requests (`pull_request`), Deployments (`deployment`) and Deployment statuses"
        ),
        "{reply}"
    );
    assert!(
        reply.contains("⚠ Gates") && reply.contains("Check suites (`check_suite`) or Statuses (`status`)"),
        "{reply}"
    );
    assert!(!reply.contains("⚠ Comment commands"), "the comment itself came: {reply}");
    let seen = app.events_seen().await;
    assert_eq!(seen.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>(), ["issue_comment"]);

    // A `status` event covers the gates (either event does); the deployments still lack theirs.
    let mut status = fixture("ping");
    status = json!({"sha": "f95f852bd8fca8fcc58a9a2d6c842781e32a215e", "state": "pending", "context": "ci",
                    "repository": status["repository"].clone()});
    status["repository"]["full_name"] = json!(REPO);
    app.send(&Event::github("status", &new_delivery_id(), &status)).await;
    let mut again = comment(".status", "alice", false);
    again["comment"]["id"] = json!(COMMENT_ID + 1);
    app.send(&deliver(&again)).await;
    let reply = said(&app).await.1[1].clone();
    assert!(!reply.contains("⚠ Gates"), "{reply}");
    assert!(reply.contains("⚠ Merged pull requests become deployments"), "{reply}");
    // The second comment wrote nothing more to the record (recorded at most once a day).
    let after = app.events_seen().await;
    assert_eq!(after.iter().find(|(e, _)| e == "issue_comment"), seen.iter().find(|(e, _)| e == "issue_comment"));
    assert_eq!(after.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>(), ["issue_comment", "status"]);
}

#[tokio::test]
async fn a_deployment_naming_the_lock_holder_passes_the_lock_only_if_this_deployer_created_it() {
    let app = app().await;
    permission(&app, "alice", "write", "write").await;
    // The token's user, this deployer's identity on GitHub, is `deploy-bot` (tests/common).
    Mock::given(method("POST"))
        .and(path_regex(r"/deployments/\d+/statuses$"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 1, "state": "success"})))
        .mount(&app.github)
        .await;
    assert_eq!(app.send(&deliver(&comment(".lock production", "alice", true))).await.1["status"], "processed");
    let claims_alice = json!({
        "deploy_user": "alice",
        "deploy_webhook": {"marker": "codertocat/hello-world#comment#1#production", "requested_by": "alice"},
    });

    // Someone else with Deployments: write writes alice's name into the payload: still held.
    let mut forged = deployment_created(81, "production");
    forged["deployment"]["creator"] = json!({"login": "mallory", "type": "User"});
    forged["deployment"]["payload"] = claims_alice.clone();
    let (_, body) = app.send(&Event::github("deployment", &new_delivery_id(), &forged)).await;
    assert_eq!(body["status"], "queued", "a forged requester passed the lock: {body}");

    // The same payload on a deployment this deployer created is alice's own: it runs.
    let mut ours = deployment_created(82, "production");
    ours["deployment"]["creator"] = json!({"login": "deploy-bot", "type": "User"});
    ours["deployment"]["payload"] = claims_alice;
    let (_, body) = app.send(&Event::github("deployment", &new_delivery_id(), &ours)).await;
    assert_eq!(body["status"], "processed", "{body}");
    let env = app.environment("production").await;
    let state_of =
        |id: u64| env["recent"].as_array().unwrap().iter().find(|r| r["id"] == id).map(|r| r["state"].clone());
    assert_eq!(state_of(82), Some(json!("success")), "{env}");
    assert_eq!(state_of(81), Some(json!("inactive")), "the forged one never ran: {env}");
    let asked_who: usize = app.github_calls().await.iter().filter(|(m, p)| m == "GET" && p == "/user").count();
    assert_eq!(asked_who, 1, "who we are is asked once per cold start");
}
