#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking
//! Bad input, tried systematically at the webhook boundary: whatever arrives, the handler never
//! panics, answers a clear 2xx or 4xx (never a 5xx: nothing here is a transient failure), and
//! stores nothing and calls no one for what it refuses.

mod common;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, ResponseTemplate};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn config(cases: u32) -> Config {
    Config { cases, failure_persistence: None, ..Config::default() }
}

/// Sends `event` and checks the answer is a clear 2xx/4xx with a JSON body; for a 4xx, checks that
/// nothing was stored and GitHub was not called.
async fn check(app: &TestApp, event: &Event) -> (u16, Value) {
    let before = (app.items().await.len(), app.github_calls().await.len());
    let (status, body) = app.send(event).await;
    assert!(matches!(status, 200 | 400 | 401 | 405 | 413 | 415), "status {status}: {body}");
    assert!(body["status"].is_string(), "{body}");
    if status != 200 {
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
        let after = (app.items().await.len(), app.github_calls().await.len());
        assert_eq!(before, after, "a refused delivery stored something or called GitHub: {body}");
    }
    (status, body)
}

fn any_event_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("ping".to_owned()),
        Just("pull_request".to_owned()),
        Just("deployment".to_owned()),
        Just("deployment_status".to_owned()),
        "[a-z_]{1,20}",
    ]
}

fn any_content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("application/json".to_owned())),
        Just(Some("application/x-www-form-urlencoded".to_owned())),
        Just(Some("application/json; charset=utf-8".to_owned())),
        "[ -~]{0,40}".prop_map(Some),
    ]
}

#[test]
fn arbitrary_bodies_headers_and_signatures_never_panic_or_store_anything() {
    let rt = runtime();
    let app = rt.block_on(TestApp::start());
    let strategy = (
        proptest::collection::vec(any::<u8>(), 0..2048),
        any_event_name(),
        any_content_type(),
        prop_oneof![Just(0u8), Just(1), Just(2), Just(3)], // signature: valid, wrong, garbage, missing
        any::<bool>(),                                     // base64
        "[ -~]{0,60}",                                     // delivery id
    );
    TestRunner::new(config(300))
        .run(&strategy, |(body, event_name, content_type, signature, base64, delivery)| {
            rt.block_on(async {
                let mut event = Event::github(&event_name, &delivery, &json!({}));
                event.body = body;
                event.base64 = base64;
                match &content_type {
                    Some(ct) => event.set("content-type", ct),
                    None => event.remove("content-type"),
                };
                match signature {
                    0 => event.resign(SECRET),
                    1 => event.resign("wrong"),
                    2 => event.set("x-hub-signature-256", "sha256=zz"),
                    _ => event.remove("x-hub-signature-256"),
                };
                let (status, _) = check(&app, &event).await;
                if signature != 0 {
                    assert_eq!(status, 401);
                }
            });
            Ok(())
        })
        .unwrap();
    rt.block_on(async { assert!(app.items().await.is_empty()) });
}

/// Replaces the value at a random known field of a real payload with an arbitrary JSON value.
fn mutate(mut payload: Value, pointer: &str, value: Value) -> Value {
    if let Some(slot) = payload.pointer_mut(pointer) {
        *slot = value;
    }
    payload
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        "\\PC{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn wrong_types_in_known_fields_are_a_clear_400_or_ignored() {
    let rt = runtime();
    // A mutation can leave a valid event (another number, another branch): GitHub accepts those.
    let app = rt.block_on(async {
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
        app
    });
    let cases = vec![
        ("pull_request", merged_pr(2, "master"), "/pull_request/number"),
        ("pull_request", merged_pr(2, "master"), "/pull_request/merged"),
        ("pull_request", merged_pr(2, "master"), "/pull_request/merge_commit_sha"),
        ("pull_request", merged_pr(2, "master"), "/pull_request/base/ref"),
        ("pull_request", merged_pr(2, "master"), "/pull_request/user"),
        ("pull_request", merged_pr(2, "master"), "/repository/full_name"),
        ("pull_request", merged_pr(2, "master"), "/action"),
        ("deployment", deployment_created(1, "production"), "/deployment/id"),
        ("deployment", deployment_created(1, "production"), "/deployment/sha"),
        ("deployment", deployment_created(1, "production"), "/deployment/environment"),
        ("deployment_status", deployment_status(1, 2, "success"), "/deployment_status/state"),
        ("deployment_status", deployment_status(1, 2, "success"), "/deployment_status/id"),
        ("deployment_status", deployment_status(1, 2, "success"), "/deployment/id"),
    ];
    let strategy = (0..cases.len(), any_json());
    TestRunner::new(config(300))
        .run(&strategy, |(case, value)| {
            let (event_name, payload, pointer) = &cases[case];
            let original = payload.pointer(pointer).cloned();
            let payload = mutate(payload.clone(), pointer, value.clone());
            rt.block_on(async {
                let (status, body) = check(&app, &Event::github(event_name, &new_delivery_id(), &payload)).await;
                // A value of the wrong JSON type is always refused, and says which payload.
                let same_type =
                    original.as_ref().is_some_and(|o| std::mem::discriminant(o) == std::mem::discriminant(&value));
                // serde reads a struct from an object or from an array of its fields (`["login"]`).
                let struct_field = pointer.ends_with("/user") && (value.is_object() || value.is_array());
                let may_be_valid = same_type || value.is_null() || struct_field;
                if !may_be_valid {
                    assert_eq!(status, 400, "{event_name} with {pointer} = {value}: {body}");
                    assert!(body["message"].as_str().unwrap().contains(event_name), "{body}");
                }
            });
            Ok(())
        })
        .unwrap();
}

#[test]
fn unicode_branches_and_titles_are_handled_and_descriptions_stay_under_140() {
    let rt = runtime();
    let app = rt.block_on(async {
        let app = TestApp::builder().rules("*=production").start().await;
        Mock::given(method("POST"))
            .and(path_regex("/deployments$"))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 1})))
            .mount(&app.github)
            .await;
        app
    });
    let strategy = ("\\PC{1,80}", "\\PC{0,400}", 1u64..100_000);
    TestRunner::new(config(60))
        .run(&strategy, |(branch, title, number)| {
            let mut payload = merged_pr(number, &branch);
            payload["pull_request"]["title"] = json!(title);
            rt.block_on(async {
                let (status, body) = check(&app, &Event::github("pull_request", &new_delivery_id(), &payload)).await;
                if branch.trim().is_empty() || branch.chars().any(char::is_control) {
                    return;
                }
                assert_eq!(status, 200, "{body}");
            });
            Ok(())
        })
        .unwrap();
    rt.block_on(async {
        for request in app.github_requests().await {
            let sent: Value = request.body_json().unwrap();
            assert!(sent["description"].as_str().unwrap().chars().count() <= 140);
        }
    });
}

#[test]
fn oversized_truncated_and_deeply_nested_bodies_are_refused_cleanly() {
    let rt = runtime();
    rt.block_on(async {
        let app = TestApp::start().await;
        // Over Lambda's 6 MB limit.
        let mut big = Event::github("ping", &new_delivery_id(), &json!({}));
        big.body = vec![b' '; 6 * 1024 * 1024 + 1];
        big.resign(SECRET);
        assert_eq!(check(&app, &big).await.0, 413);

        // Just under it, valid JSON, signed: parsed and ignored, not a crash.
        let mut large = Event::github("issues", &new_delivery_id(), &json!({}));
        let filler = "x".repeat(5 * 1024 * 1024);
        large.body = serde_json::to_vec(&json!({"action": "opened", "filler": filler})).unwrap();
        large.resign(SECRET);
        assert_eq!(check(&app, &large).await.0, 200);

        // Deep nesting stops at serde_json's recursion limit instead of the stack.
        let mut deep = Event::github("pull_request", &new_delivery_id(), &json!({}));
        deep.body = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes();
        deep.resign(SECRET);
        assert_eq!(check(&app, &deep).await.0, 400);

        // Every prefix of a real delivery, signed as is: a clear 400, never a panic.
        let full = serde_json::to_vec(&merged_pr(2, "master")).unwrap();
        for cut in (0..full.len()).step_by(97) {
            let mut truncated = Event::github("pull_request", &new_delivery_id(), &json!({}));
            truncated.body = full[..cut].to_vec();
            truncated.resign(SECRET);
            assert_eq!(check(&app, &truncated).await.0, 400);
        }
        assert!(app.items().await.is_empty());
    });
}
