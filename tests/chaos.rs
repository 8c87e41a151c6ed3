#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking
//! Chaos: merges into a few environments delivered out of order (some redelivered, some only
//! late), through the real handler and a real local DynamoDB, while a stateful GitHub stand-in
//! fails, times out and rate-limits, DynamoDB throttles and goes away, "instances" die between an
//! effect and its state write, a deploy-hook stand-in answers 202 for most deployments and then
//! calls back late, out of order, twice or never, and the sweep runs between rounds (with the
//! clock moved past lease expiry, so it takes over the dead instances' work, and finally past the
//! run timeout, so runs whose callback never came time out). Every `deployment` and
//! `deployment_status` event GitHub would send is delivered too, shuffled, some twice, some late.
//! Failed deliveries are recovered as in production: the GitHub stand-in records every attempt
//! on the repository webhook it came through (guid, event, the handler's status, 0 for no answer,
//! `delivered_at` on the test clock) and lists them on the hook deliveries endpoints; the sweep
//! (the rounds move the clock past its backoff) asks for redeliveries, which the driver then sends
//! (same guid and body). The driver never redelivers on its own. Then, from GitHub's status
//! timeline, its deliveries and the stored state:
//!
//! - 0 overlapping runs in any environment (a run: a deployment's first `in_progress` to its
//!   terminal status, in GitHub's global order of status posts), and no hook call for a
//!   deployment while another run of its environment is live;
//! - every deployment GitHub created ends in exactly one terminal state (`success`, `failure`,
//!   `error` or `inactive`), with nothing posted after it;
//! - the latest merge of each environment (highest `merged_at`, not rejected) is the sha of the
//!   last run that started there: 0 regressions to older code;
//! - each merged PR has at most one deployment per environment, rejected ones none;
//! - no environment's stored state is left with a running run, a queue or owed statuses;
//! - no 2xx for a deployment GitHub does not have; forged callbacks are refused (401);
//! - every failed delivery was recovered by the sweep: each guid ends with a 2xx attempt (or a
//!   409 "in progress" for a payload another guid delivered with a 2xx), none given up.
//!
//! Short by default (part of `make test`); `make chaos` runs a longer one. `CHAOS_SEED` replays a
//! run's stream and fault decisions (thread interleavings still vary); `CHAOS_PRS` sets its size.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use deploy_webhook::deploy::hook::{DeployTargets, HookDeployer};
use deploy_webhook::domain::gates::ChecksWait;
use deploy_webhook::domain::ports::Clock;
use deploy_webhook::domain::ports::{
    Claim, CreationKey, CreationRecord, EnvKey, HookRef, Lease, Store, StoreError, Versioned,
};
use deploy_webhook::domain::redelivery::{FIRST_BACKOFF_MS, RedeliveryState};
use deploy_webhook::domain::runs::{EnvironmentState, Phase};
use deploy_webhook::domain::types::{DeliveryId, DeploymentId, Environment, RepoFullName, Sha};
use deploy_webhook::domain::{DeployRules, Service, ServiceSettings, StatusRecord};
use deploy_webhook::github::client::{GitHubClient, RetryPolicy, http_client};
use deploy_webhook::http::WebhookHandler;
use deploy_webhook::http::signature::{HookSecrets, WebhookSecrets};
use deploy_webhook::store::dynamo::DynamoStore;
use serde_json::{Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers::any};

const REPOS: [&str; 2] = ["octo-org/api", "octo-org/web"];
const RULES: &str = "main=production,release/*=staging";
/// A delivery's (and a sweep's) time budget.
const BUDGET: Duration = Duration::from_millis(2500);
/// How long the driver waits for an answer before it counts the instance as dead (Lambda's
/// function timeout).
const INVOCATION_TIMEOUT: Duration = Duration::from_millis(3000);
/// Leases outlast the function timeout, as the settings require.
const LEASE: Duration = Duration::from_millis(3200);
/// How far the test clock moves between rounds: past the sweep's first redelivery backoff (and
/// every lease), so a delivery that failed in a round is redelivered in the next one.
const ROUND_TIME: Duration = Duration::from_millis(FIRST_BACKOFF_MS + 1000);
/// A run with no result by then ends in `error` (on the test clock): about 7 rounds.
const RUN_TIMEOUT: Duration = Duration::from_secs(7 * (FIRST_BACKOFF_MS / 1000 + 1));
/// Each repository's two webhooks (the second one gets the copies "sent by a second hook"), all
/// swept for failed deliveries.
const HOOKS: [(&str, u64); 4] =
    [("octo-org/api", 11), ("octo-org/api", 12), ("octo-org/web", 21), ("octo-org/web", 22)];
/// Enough redeliveries per guid for the run to converge.
const MAX_REDELIVERIES: u32 = 20;
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(400);
/// Concurrent "Lambda instances": deliveries beyond this wait for a free one.
const INSTANCES: usize = 12;
/// GitHub and DynamoDB fail during the first rounds, instances die a little longer.
const FAULT_ROUNDS: usize = 6;
const DEATH_ROUNDS: usize = 9;
const MAX_ROUNDS: usize = 45;

type Shared<T> = Arc<Mutex<T>>;
/// A run on GitHub's timeline: (first `in_progress` status id, terminal status id, deployment).
type RunSpan = (u64, u64, u64);

// ------------------------------------------------------------------ a stateful, faulty GitHub

#[derive(Default)]
struct GitHubState {
    deployments: BTreeMap<u64, FakeDeployment>,
    next_id: u64,
    /// Webhook deliveries GitHub would send because of what happened (deployment, statuses).
    outbox: Vec<(String, Value)>,
    faults: BTreeMap<&'static str, u64>,
    /// Every delivery attempt the driver made, as the hook deliveries endpoints list them.
    attempts: Vec<HookAttempt>,
    next_attempt: u64,
    /// Redeliveries asked on the attempts endpoint, for the driver to send.
    redeliver: Vec<Delivery>,
    redeliveries_asked: u64,
    /// The guids they were for.
    redelivered_guids: std::collections::BTreeSet<String>,
    listings: u64,
    /// Deployments someone else ended with a terminal status of theirs (not the bot's).
    ended_by_people: std::collections::BTreeSet<u64>,
    /// When each listing (its first page) was served: (hook, test clock ms).
    listed: Vec<(u64, u64)>,
}

/// One attempt of a delivery, on the webhook it went through.
struct HookAttempt {
    id: u64,
    hook: u64,
    guid: String,
    event: String,
    /// RFC 3339 on the test clock, when it was sent.
    delivered_at: String,
    /// The handler's answer; 0 when the instance died or timed out.
    status: u16,
    /// When the answer came (or the driver gave up): from then on it is listed.
    answered_ms: u64,
    payload: Value,
    redelivery: bool,
}

fn is_2xx(status: u16) -> bool {
    (200..300).contains(&status)
}

/// The webhook of `repo` a delivery goes through (the second one for copies by a second hook).
fn hook_of(repo: &str, second: bool) -> u64 {
    HOOKS.iter().filter(|(r, _)| *r == repo).nth(usize::from(second)).map_or(HOOKS[0].1, |(_, id)| *id)
}

fn hook_repo(hook: u64) -> &'static str {
    HOOKS.iter().find(|(_, id)| *id == hook).map_or(HOOKS[0].0, |(r, _)| r)
}

fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

impl GitHubState {
    /// Each guid's attempts, in the order GitHub lists them oldest first: (delivered_at, id).
    fn by_guid(&self) -> BTreeMap<&str, Vec<&HookAttempt>> {
        let mut by: BTreeMap<&str, Vec<&HookAttempt>> = BTreeMap::new();
        for a in &self.attempts {
            by.entry(a.guid.as_str()).or_default().push(a);
        }
        for list in by.values_mut() {
            list.sort_by(|a, b| (&a.delivered_at, a.id).cmp(&(&b.delivered_at, b.id)));
        }
        by
    }

    /// The guids the sweep still has to recover: no 2xx, the latest attempt a 5xx or no answer.
    fn failing(&self) -> Vec<String> {
        self.by_guid()
            .into_iter()
            .filter(|(_, list)| {
                let latest = list[list.len() - 1].status;
                !list.iter().any(|a| is_2xx(a.status)) && !(400..500).contains(&latest)
            })
            .map(|(guid, _)| guid.to_owned())
            .collect()
    }
}

struct FakeDeployment {
    repo: String,
    sha: String,
    environment: String,
    marker: Option<String>,
    /// (status id, state); status ids grow with every status GitHub accepts: the global order.
    statuses: Vec<(u64, String)>,
    log: Vec<String>,
}

fn is_terminal(state: &str) -> bool {
    matches!(state, "success" | "failure" | "error" | "inactive")
}

impl FakeDeployment {
    /// Started (an `in_progress` was posted) and not yet ended.
    fn live(&self) -> bool {
        self.statuses.iter().any(|(_, s)| s == "in_progress") && !self.statuses.iter().any(|(_, s)| is_terminal(s))
    }
}

struct FaultyGitHub {
    state: Shared<GitHubState>,
    rng: Shared<fastrand::Rng>,
    faults_on: Arc<AtomicBool>,
    /// Faults for the next requests, in order, before the random ones (for scripted scenarios).
    script: Shared<std::collections::VecDeque<Fault>>,
    /// The test clock, to book when each webhook's deliveries were listed.
    clock: TestClock,
}

enum Fault {
    None,
    BadGateway,
    AppliedThen500,
    AppliedThenTimeout,
    RateLimited,
}

impl FaultyGitHub {
    fn pick_fault(&self) -> Fault {
        if let Some(fault) = self.script.lock().unwrap().pop_front() {
            return fault;
        }
        if !self.faults_on.load(Ordering::Relaxed) {
            return Fault::None;
        }
        match self.rng.lock().unwrap().u32(0..100) {
            0..=6 => Fault::BadGateway,
            7..=12 => Fault::AppliedThen500,
            13..=16 => Fault::AppliedThenTimeout,
            17..=21 => Fault::RateLimited,
            _ => Fault::None,
        }
    }
}

fn count_fault(state: &mut GitHubState, name: &'static str) {
    *state.faults.entry(name).or_default() += 1;
}

/// The faults that answer without applying anything: a 502, or a secondary rate limit.
fn refuse_before_applying(state: &mut GitHubState, fault: &Fault) -> Option<ResponseTemplate> {
    match fault {
        Fault::BadGateway => {
            count_fault(state, "502");
            Some(ResponseTemplate::new(502))
        }
        Fault::RateLimited => {
            count_fault(state, "rate_limited");
            Some(
                ResponseTemplate::new(403)
                    .insert_header("retry-after", "1")
                    .set_body_json(json!({"message": "You have exceeded a secondary rate limit."})),
            )
        }
        _ => None,
    }
}

impl FaultyGitHub {
    /// The repository webhook deliveries endpoints, with the same faults as the rest: the list
    /// (newest first, paged by cursor) and the attempts endpoint, which queues a redelivery.
    fn hook_deliveries(&self, request: &Request, parts: &[&str]) -> ResponseTemplate {
        let repo = format!("{}/{}", parts[1], parts[2]);
        let hook: u64 = parts[4].parse().unwrap_or(0);
        if !HOOKS.contains(&(repo.as_str(), hook)) {
            return ResponseTemplate::new(404).set_body_json(json!({"message": "Not Found"}));
        }
        let fault = self.pick_fault();
        let mut state = self.state.lock().unwrap();
        if let Some(refused) = refuse_before_applying(&mut state, &fault) {
            return refused;
        }
        let method = request.method.as_str();
        let response = match (method, parts.len()) {
            ("GET", 6) => {
                state.listings += 1;
                let query: HashMap<String, String> = request.url.query_pairs().into_owned().collect();
                let per_page = query.get("per_page").and_then(|p| p.parse().ok()).unwrap_or(30usize).clamp(1, 100);
                let start: usize = query.get("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
                if start == 0 {
                    state.listed.push((hook, self.clock.now_ms()));
                }
                let mut list: Vec<&HookAttempt> = state.attempts.iter().filter(|a| a.hook == hook).collect();
                list.sort_by(|a, b| (&b.delivered_at, b.id).cmp(&(&a.delivered_at, a.id)));
                let page: Vec<Value> = list
                    .iter()
                    .skip(start)
                    .take(per_page)
                    .map(|a| {
                        json!({
                            "id": a.id,
                            "guid": a.guid,
                            "delivered_at": a.delivered_at,
                            "redelivery": a.redelivery,
                            "status": if a.status == 0 { "timed out".to_owned() } else { a.status.to_string() },
                            "status_code": a.status,
                            "event": a.event,
                        })
                    })
                    .collect();
                let mut response = ResponseTemplate::new(200).set_body_json(page);
                if start + per_page < list.len() {
                    let next = format!(
                        "<https://api.github.com/repos/{repo}/hooks/{hook}/deliveries?per_page={per_page}&cursor={}>; rel=\"next\"",
                        start + per_page
                    );
                    response = response.insert_header("link", next.as_str());
                }
                response
            }
            ("POST", 8) if parts[7] == "attempts" => {
                let id: u64 = parts[6].parse().unwrap_or(0);
                let Some(a) = state.attempts.iter().find(|a| a.id == id && a.hook == hook) else {
                    return ResponseTemplate::new(404).set_body_json(json!({"message": "Not Found"}));
                };
                let again = Delivery { id: a.guid.clone(), event: a.event.clone(), payload: a.payload.clone(), hook };
                state.redelivered_guids.insert(again.id.clone());
                state.redeliver.push(again);
                state.redeliveries_asked += 1;
                ResponseTemplate::new(202).set_body_json(json!({}))
            }
            _ => ResponseTemplate::new(404),
        };
        match fault {
            Fault::AppliedThen500 if method == "POST" => {
                count_fault(&mut state, "500_after_applying");
                ResponseTemplate::new(500)
            }
            Fault::AppliedThenTimeout if method == "POST" => {
                count_fault(&mut state, "timeout_after_applying");
                response.set_delay(ATTEMPT_TIMEOUT * 3)
            }
            _ => response,
        }
    }
}

fn rejected_pr(n: u64) -> bool {
    n.is_multiple_of(11) || n.is_multiple_of(13)
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl Respond for FaultyGitHub {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let path = request.url.path().to_owned();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        // repos/{owner}/{repo}/hooks/{hook_id}/deliveries[/{id}/attempts]
        if parts.len() >= 6 && parts[0] == "repos" && parts[3] == "hooks" && parts[5] == "deliveries" {
            return self.hook_deliveries(request, &parts);
        }
        // Who the token belongs to: the creator of every status we post.
        if path == "/user" {
            return ResponseTemplate::new(200).set_body_json(json!({"login": "deploy-bot"}));
        }
        // repos/{owner}/{repo}/deployments[/{id}/statuses]
        if parts.len() < 4 || parts[0] != "repos" || parts[3] != "deployments" {
            return ResponseTemplate::new(404);
        }
        let repo = format!("{}/{}", parts[1], parts[2]);
        let fault = self.pick_fault();
        let mut state = self.state.lock().unwrap();
        // Each deployment's requests, with the fault each met, to explain a violation.
        if parts.len() == 6 {
            let id: u64 = parts[4].parse().unwrap_or(0);
            let posted = serde_json::from_slice::<Value>(&request.body).ok().map(|b| b["state"].clone());
            let what = match fault {
                Fault::None => "ok",
                Fault::BadGateway => "502, not applied",
                Fault::RateLimited => "403 rate limited, not applied",
                Fault::AppliedThen500 => "applied, then 500",
                Fault::AppliedThenTimeout => "applied, then no answer in time",
            };
            let seq = state.next_id;
            if let Some(d) = state.deployments.get_mut(&id) {
                let posted = posted.map(|p| format!(" {p}")).unwrap_or_default();
                d.log.push(format!("@{seq} {}{posted} → {what}", request.method));
            }
        }
        let count = count_fault;
        if let Some(refused) = refuse_before_applying(&mut state, &fault) {
            return refused;
        }
        let method = request.method.as_str();
        let response = match (method, parts.len()) {
            ("GET", 4) => {
                let query: HashMap<String, String> = request.url.query_pairs().into_owned().collect();
                let list: Vec<Value> = state
                    .deployments
                    .iter()
                    .rev()
                    .filter(|(_, d)| {
                        d.repo == repo
                            && query.get("sha").is_none_or(|s| *s == d.sha)
                            && query.get("environment").is_none_or(|e| *e == d.environment)
                    })
                    .map(|(id, d)| json!({"id": id, "payload": {"deploy_webhook": {"marker": d.marker}}}))
                    .collect();
                ResponseTemplate::new(200).set_body_json(list)
            }
            ("POST", 4) => {
                let body: Value = serde_json::from_slice(&request.body).unwrap();
                let pr = body.pointer("/payload/pull_request/number").and_then(Value::as_u64).unwrap_or(0);
                // Some PRs are refused for good: failed status checks (409), validation (422).
                if pr.is_multiple_of(11) {
                    return ResponseTemplate::new(409)
                        .set_body_json(json!({"message": "Conflict: Commit status checks failed for main."}));
                }
                if pr.is_multiple_of(13) {
                    return ResponseTemplate::new(422).set_body_json(json!({"message": "Validation Failed"}));
                }
                state.next_id += 1;
                let id = 10_000 + state.next_id;
                let environment = body["environment"].as_str().unwrap().to_owned();
                let sha = body["ref"].as_str().unwrap().to_owned();
                state.deployments.insert(
                    id,
                    FakeDeployment {
                        repo: repo.clone(),
                        sha: sha.clone(),
                        environment: environment.clone(),
                        marker: body
                            .pointer("/payload/deploy_webhook/marker")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                        statuses: Vec::new(),
                        log: Vec::new(),
                    },
                );
                let mut event = deployment_created(id, &environment);
                event["deployment"]["sha"] = json!(sha);
                event["deployment"]["ref"] = json!(sha);
                event["deployment"]["payload"] = body["payload"].clone();
                event["deployment"]["created_at"] = json!(now_rfc3339());
                event["repository"]["full_name"] = json!(repo);
                state.outbox.push(("deployment".into(), event));
                ResponseTemplate::new(201).set_body_json(json!({"id": id}))
            }
            ("GET", 6) => {
                let id: u64 = parts[4].parse().unwrap_or(0);
                let list: Vec<Value> = state
                    .deployments
                    .get(&id)
                    .map(|d| {
                        d.statuses
                            .iter()
                            .rev()
                            .map(|(sid, s)| json!({"id": sid, "state": s, "creator": {"login": "deploy-bot"}}))
                            .collect()
                    })
                    .unwrap_or_default();
                ResponseTemplate::new(200).set_body_json(list)
            }
            ("POST", 6) => {
                let id: u64 = parts[4].parse().unwrap_or(0);
                let body: Value = serde_json::from_slice(&request.body).unwrap();
                let status_state = body["state"].as_str().unwrap().to_owned();
                if !state.deployments.contains_key(&id) {
                    return ResponseTemplate::new(404);
                }
                state.next_id += 1;
                let sid = 50_000 + state.next_id;
                let d = state.deployments.get_mut(&id).unwrap();
                d.statuses.push((sid, status_state.clone()));
                let env = d.environment.clone();
                let mut event = deployment_status(id, sid, &status_state);
                event["repository"]["full_name"] = json!(repo);
                event["deployment"]["environment"] = json!(env);
                event["deployment_status"]["environment"] = json!(env);
                event["deployment_status"]["creator"]["login"] = json!("deploy-bot");
                state.outbox.push(("deployment_status".into(), event));
                ResponseTemplate::new(201)
                    .set_body_json(json!({"id": sid, "state": status_state, "creator": {"login": "deploy-bot"}}))
            }
            _ => ResponseTemplate::new(404),
        };
        match fault {
            Fault::AppliedThen500 if method == "POST" => {
                count(&mut state, "500_after_applying");
                ResponseTemplate::new(500)
            }
            Fault::AppliedThenTimeout if method == "POST" => {
                count(&mut state, "timeout_after_applying");
                response.set_delay(ATTEMPT_TIMEOUT * 3)
            }
            _ => response,
        }
    }
}

// ------------------------------------------------------------------ a deploy system stand-in

#[derive(Clone, Copy, Debug, PartialEq)]
enum HookMode {
    Success,
    Fails,
    Async,
}

struct HookRecord {
    mode: HookMode,
    /// Every callback URL it was given, oldest first (a run taken over gets a new secret).
    urls: Vec<String>,
    calls: u32,
}

#[derive(Default)]
struct HookState {
    deployments: BTreeMap<u64, HookRecord>,
    violations: Vec<String>,
    calls: u64,
}

/// Answers 202 for most deployments and calls back later (the driver sends the callbacks), a
/// synchronous 200 or 500 for the others. It dedupes on `deployment_id`: a repeated call (after a
/// crash) gets the same kind of answer.
struct HookStandIn {
    state: Shared<HookState>,
    github: Shared<GitHubState>,
    rng: Shared<fastrand::Rng>,
    accepted: tokio::sync::mpsc::UnboundedSender<u64>,
}

impl Respond for HookStandIn {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let id = body["deployment_id"].as_u64().unwrap();
        let (repo, env) = (body["repository"].as_str().unwrap(), body["environment"].as_str().unwrap());
        let url = body["callback_url"].as_str().map(str::to_owned);
        // One deploy at a time per environment: no other run of it may be live on GitHub.
        let others: Vec<u64> = {
            let gh = self.github.lock().unwrap();
            gh.deployments
                .iter()
                .filter(|(other, d)| **other != id && d.repo == repo && d.environment == env && d.live())
                .map(|(other, _)| *other)
                .collect()
        };
        let (roll, delay) = {
            let mut r = self.rng.lock().unwrap();
            (r.u32(0..100), r.u64(0..250))
        };
        let mut state = self.state.lock().unwrap();
        state.calls += 1;
        if !others.is_empty() {
            state.violations.push(format!("hook called for {id} in {repo}/{env} while {others:?} ran there"));
        }
        let first = !state.deployments.contains_key(&id);
        let record = state.deployments.entry(id).or_insert_with(|| HookRecord {
            mode: match roll {
                0..=14 => HookMode::Success,
                15..=24 => HookMode::Fails,
                _ => HookMode::Async,
            },
            urls: Vec::new(),
            calls: 0,
        });
        record.calls += 1;
        if let Some(url) = url {
            record.urls.push(url);
        }
        match record.mode {
            HookMode::Success => ResponseTemplate::new(200)
                .set_body_json(json!({"description": "deployed by the stand-in", "log_url": "https://ci.example/1"})),
            HookMode::Fails => ResponseTemplate::new(500).set_body_json(json!({"description": "the deploy broke"})),
            HookMode::Async => {
                if first {
                    self.accepted.send(id).ok();
                }
                ResponseTemplate::new(202).set_delay(Duration::from_millis(delay))
            }
        }
    }
}

// ------------------------------------------------------------------ a store whose instance can die

/// Wraps the real store. When a death is drawn, the write after an effect never happens and the
/// "instance" hangs until the driver gives up on it, as when Lambda kills a timed-out or crashed
/// instance: no cleanup code runs.
struct CrashingStore {
    inner: DynamoStore,
    rng: Shared<fastrand::Rng>,
    deaths_on: Arc<AtomicBool>,
    creation_deaths: Arc<AtomicU64>,
    save_deaths: Arc<AtomicU64>,
    /// State writes DynamoDB applied whose answer was lost: answered as an error, or (as the
    /// SDK's retry sees it) as a failed condition returning our own item.
    ambiguous_writes: Arc<AtomicU64>,
    /// When the last instance died holding a creation claim (its lease runs on the real clock).
    last_creation_death: Shared<Option<Instant>>,
}

impl CrashingStore {
    fn draw(&self, percent: u32) -> bool {
        self.deaths_on.load(Ordering::Relaxed) && self.rng.lock().unwrap().u32(0..100) < percent
    }
}

impl Store for CrashingStore {
    async fn claim_deployment_creation(
        &self,
        key: &CreationKey,
        sha: &Sha,
        delivery: &DeliveryId,
        after_wait: bool,
        lease_for: Duration,
    ) -> Result<Claim<CreationRecord>, StoreError> {
        self.inner.claim_deployment_creation(key, sha, delivery, after_wait, lease_for).await
    }

    async fn read_deployment_creation(&self, key: &CreationKey) -> Result<Option<CreationRecord>, StoreError> {
        self.inner.read_deployment_creation(key).await
    }

    async fn finish_deployment_creation(
        &self,
        key: &CreationKey,
        lease: &Lease,
        record: &CreationRecord,
    ) -> Result<(), StoreError> {
        // Between GitHub's "created" and our record of it.
        if self.draw(12) {
            self.creation_deaths.fetch_add(1, Ordering::Relaxed);
            *self.last_creation_death.lock().unwrap() = Some(Instant::now());
            std::future::pending::<()>().await;
        }
        self.inner.finish_deployment_creation(key, lease, record).await
    }

    async fn release_deployment_creation(&self, key: &CreationKey, lease: &Lease) -> Result<(), StoreError> {
        self.inner.release_deployment_creation(key, lease).await
    }

    async fn record_deployment_status(
        &self,
        repo: &RepoFullName,
        id: DeploymentId,
        environment: Option<&Environment>,
        status: &StatusRecord,
    ) -> Result<bool, StoreError> {
        self.inner.record_deployment_status(repo, id, environment, status).await
    }

    async fn load_environment(&self, key: &EnvKey) -> Result<Versioned, StoreError> {
        self.inner.load_environment(key).await
    }

    async fn save_environment(
        &self,
        key: &EnvKey,
        state: &EnvironmentState,
        expected: u64,
    ) -> Result<Result<u64, Versioned>, StoreError> {
        // Between a status post or a hook call and the state write that records it; more often
        // right after the hook answered 202 or the result was posted, the costliest moments.
        let after_effect = state
            .running
            .as_ref()
            .is_some_and(|r| matches!(r.phase, Phase::Awaiting | Phase::Finishing { external: true, .. }));
        if self.draw(if after_effect { 25 } else { 8 }) {
            self.save_deaths.fetch_add(1, Ordering::Relaxed);
            std::future::pending::<()>().await;
        }
        let saved = self.inner.save_environment(key, state, expected).await?;
        if saved.is_ok() && self.draw(6) {
            self.ambiguous_writes.fetch_add(1, Ordering::Relaxed);
            if self.rng.lock().unwrap().bool() {
                return Ok(Err(self.inner.load_environment(key).await?));
            }
            return Err(StoreError::Unavailable("applied, but the answer was lost".into()));
        }
        Ok(saved)
    }

    async fn due_environments(&self, now_ms: u64, limit: usize) -> Result<Vec<(EnvKey, Versioned)>, StoreError> {
        self.inner.due_environments(now_ms, limit).await
    }

    async fn claim_comment(
        &self,
        repo: &RepoFullName,
        comment_id: u64,
        delivery: &DeliveryId,
        lease_for: Duration,
    ) -> Result<Claim<String>, StoreError> {
        self.inner.claim_comment(repo, comment_id, delivery, lease_for).await
    }

    async fn finish_comment(
        &self,
        repo: &RepoFullName,
        id: u64,
        lease: &Lease,
        outcome: &str,
    ) -> Result<(), StoreError> {
        self.inner.finish_comment(repo, id, lease, outcome).await
    }

    async fn release_comment(&self, repo: &RepoFullName, id: u64, lease: &Lease) -> Result<(), StoreError> {
        self.inner.release_comment(repo, id, lease).await
    }

    async fn load_checks_wait(&self, repo: &RepoFullName, sha: &Sha) -> Result<Versioned<ChecksWait>, StoreError> {
        self.inner.load_checks_wait(repo, sha).await
    }

    async fn save_checks_wait(
        &self,
        repo: &RepoFullName,
        sha: &Sha,
        state: &ChecksWait,
        expected: u64,
    ) -> Result<Result<u64, Versioned<ChecksWait>>, StoreError> {
        self.inner.save_checks_wait(repo, sha, state, expected).await
    }

    async fn due_checks_waits(&self, now_ms: u64, limit: usize) -> Result<Vec<(RepoFullName, Sha)>, StoreError> {
        self.inner.due_checks_waits(now_ms, limit).await
    }

    async fn load_redelivery(&self, hook: &HookRef) -> Result<Versioned<RedeliveryState>, StoreError> {
        self.inner.load_redelivery(hook).await
    }

    async fn save_redelivery(
        &self,
        hook: &HookRef,
        state: &RedeliveryState,
        expected: u64,
    ) -> Result<Result<u64, Versioned<RedeliveryState>>, StoreError> {
        self.inner.save_redelivery(hook, state, expected).await
    }
}

type ChaosHandler = WebhookHandler<CrashingStore, GitHubClient, HookDeployer, TestClock>;

// ------------------------------------------------------------------ what the driver sends

#[derive(Clone)]
struct Delivery {
    id: String,
    event: String,
    payload: Value,
    /// The webhook it goes through.
    hook: u64,
}

/// A callback the deploy system owes: sent to the newest callback URL it was given.
#[derive(Clone)]
struct Callback {
    deployment: u64,
    body: Value,
    forged: bool,
    attempts: u32,
}

enum Work {
    Delivery(Delivery),
    Callback(Callback),
}

#[derive(Default)]
struct CallbackStats {
    sent: u64,
    accepted: u64,
    already_final: u64,
    unknown: u64,
    retried: u64,
    forged_refused: u64,
    violations: Vec<String>,
}

/// Sends `cb` through the handler as an instance would receive it: (status, body, URL used).
async fn send_callback(handler: &ChaosHandler, hooks: &Shared<HookState>, cb: &Callback) -> (u16, Value, String) {
    let url = hooks.lock().unwrap().deployments[&cb.deployment].urls.last().cloned().unwrap();
    let secret = if cb.forged { SECRET } else { HOOK_SECRET };
    let event = Event::callback(&url, &cb.body, secret);
    match tokio::time::timeout(INVOCATION_TIMEOUT, handler.handle(event.request())).await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, serde_json::from_slice(response.body().as_ref()).unwrap_or(Value::Null), url)
        }
        Err(_) => (504, json!({"status": "instance died"}), url),
    }
}

/// Books a callback's answer; returns it if the deploy system should send it again.
fn after_callback(
    stats: &Shared<CallbackStats>,
    hooks: &Shared<HookState>,
    mut cb: Callback,
    status: u16,
    body: &Value,
    url: &str,
) -> Option<Callback> {
    let mut stats = stats.lock().unwrap();
    stats.sent += 1;
    if cb.forged {
        if status == 401 {
            stats.forged_refused += 1;
        } else {
            stats.violations.push(format!("forged callback for {} answered {status} {body}", cb.deployment));
        }
        return None;
    }
    match status {
        200 if body["status"] == "already_final" => stats.already_final += 1,
        200 => stats.accepted += 1,
        404 => {
            // The run was taken over and its secret replaced: send it to the newest URL.
            let newest = hooks.lock().unwrap().deployments[&cb.deployment].urls.last().cloned();
            if newest.as_deref() != Some(url) {
                stats.retried += 1;
                return Some(cb);
            }
            stats.unknown += 1;
        }
        400 | 401 => stats.violations.push(format!("callback for {} answered {status} {body}", cb.deployment)),
        _ if cb.attempts < 30 => {
            stats.retried += 1;
            cb.attempts += 1;
            return Some(cb);
        }
        _ => stats.violations.push(format!("callback for {} still {status} after 30 attempts", cb.deployment)),
    }
    None
}

/// What the deploy system will call back for an accepted deployment: (rounds from now, callback);
/// 0 = at once, while the hook call may still be in flight.
fn plan_callbacks(r: &mut fastrand::Rng, deployment: u64) -> (Vec<(usize, Callback)>, &'static str) {
    let cb = |body: Value| Callback { deployment, body, forged: false, attempts: 0 };
    let roll = r.u32(0..100);
    if roll < 15 {
        return (Vec::new(), "never");
    }
    let terminal = match r.u32(0..10) {
        0..=6 => "success",
        7..=8 => "failure",
        _ => "error",
    };
    let delay = |r: &mut fastrand::Rng| match r.u32(0..100) {
        0..=24 => 0,
        25..=84 => r.usize(1..=3),
        _ => r.usize(6..=10), // late: past the run's timeout, mostly
    };
    let mut plan = Vec::new();
    let mut kind = "in order";
    let first = delay(r);
    if r.u32(0..100) < 60 {
        let progress = cb(
            json!({"state": "in_progress", "description": "rolling out", "log_url": format!("https://ci.example/{deployment}")}),
        );
        if r.u32(0..100) < 15 {
            // Out of order: the result overtakes the progress report.
            plan.push((first + 1, progress));
            kind = "out of order";
        } else {
            plan.push((first, progress));
        }
    }
    let result = cb(
        json!({"state": terminal, "description": format!("{terminal} from the stand-in"), "environment_url": "https://app.example"}),
    );
    let at = if kind == "out of order" { first } else { first + r.usize(0..=1) };
    plan.push((at, result.clone()));
    if r.u32(0..100) < 20 {
        plan.push((at + r.usize(0..=3), result));
        kind = if kind == "out of order" { "out of order, twice" } else { "twice" };
    }
    if r.u32(0..100) < 5 {
        let mut forged = cb(json!({"state": "success"}));
        forged.forged = true;
        plan.push((r.usize(0..=2), forged));
    }
    if plan.iter().any(|(d, _)| *d >= 6) {
        kind = "late";
    }
    (plan, kind)
}

// ------------------------------------------------------------------ the stream

fn merged_into(repo: &str, number: u64, base: &str, sha: &str) -> Value {
    let mut p = merged_pr(number, base);
    p["repository"]["full_name"] = json!(repo);
    p["repository"]["default_branch"] = json!("main");
    p["pull_request"]["merge_commit_sha"] = json!(sha);
    p["pull_request"]["title"] = json!(format!("Change #{number}: ünïcode ✓"));
    // Strictly increasing with the PR number.
    let at = humantime::parse_rfc3339("2026-11-22T00:00:00Z").unwrap() + Duration::from_secs(7 * number);
    p["pull_request"]["merged_at"] = json!(humantime::format_rfc3339_seconds(at).to_string());
    p
}

fn environment_for(base: &str) -> Option<&'static str> {
    match base {
        "main" => Some("production"),
        b if b.starts_with("release/") => Some("staging"),
        _ => None,
    }
}

fn schedule(scheduled: &mut Vec<(usize, Work)>, round: usize, work: Work) {
    scheduled.push((round, work));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_one_run_at_a_time_newest_wins_nothing_lost() {
    let seed: u64 = std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    let prs: u64 = std::env::var("CHAOS_PRS").ok().and_then(|s| s.parse().ok()).unwrap_or(24);
    println!("chaos: seed {seed} (replay with CHAOS_SEED={seed}), {prs} merged PRs");
    let rng: Shared<fastrand::Rng> = Arc::new(Mutex::new(fastrand::Rng::with_seed(seed)));
    let faults_on = Arc::new(AtomicBool::new(true));
    let deaths_on = Arc::new(AtomicBool::new(true));
    let (creation_deaths, save_deaths) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let ambiguous_writes = Arc::new(AtomicU64::new(0));
    let last_creation_death: Shared<Option<Instant>> = Arc::new(Mutex::new(None));

    // GitHub, the deploy system, DynamoDB and the function.
    let clock = TestClock::default();
    let github_state: Shared<GitHubState> = Arc::default();
    let github = MockServer::start().await;
    Mock::given(any())
        .respond_with(FaultyGitHub {
            state: github_state.clone(),
            rng: rng.clone(),
            faults_on: faults_on.clone(),
            script: Arc::default(),
            clock: clock.clone(),
        })
        .mount(&github)
        .await;
    let hook_state: Shared<HookState> = Arc::default();
    let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let hook = MockServer::start().await;
    Mock::given(any())
        .respond_with(HookStandIn {
            state: hook_state.clone(),
            github: github_state.clone(),
            rng: rng.clone(),
            accepted: accepted_tx,
        })
        .mount(&hook)
        .await;
    let dynamo = dynamo_client().await;
    let table = create_table(&dynamo).await;
    let store = CrashingStore {
        inner: DynamoStore::new(dynamo.clone(), &table),
        rng: rng.clone(),
        deaths_on: deaths_on.clone(),
        creation_deaths: creation_deaths.clone(),
        save_deaths: save_deaths.clone(),
        ambiguous_writes: ambiguous_writes.clone(),
        last_creation_death: last_creation_death.clone(),
    };
    let retry = RetryPolicy {
        max_attempts: 4,
        base_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        attempt_timeout: ATTEMPT_TIMEOUT,
    };
    // One HTTP client for GitHub and the hook, wired as src/app.rs wires them.
    let http = http_client().unwrap();
    let client = GitHubClient::new(http.clone(), &github.uri(), &TOKEN.to_owned().into(), retry).unwrap();
    let secrets = WebhookSecrets::from_list(SECRET).unwrap();
    let targets = DeployTargets { default_hook: Some(format!("{}/deploy", hook.uri())), ..Default::default() };
    let hook_secrets = HookSecrets::for_all(WebhookSecrets::from_list(HOOK_SECRET).unwrap());
    let deployer = HookDeployer::new(http, targets, hook_secrets.clone(), Duration::from_secs(1));
    let mut settings = ServiceSettings::new(DeployRules::parse(RULES).unwrap());
    settings.lease = LEASE;
    settings.busy_wait = Duration::from_millis(1000);
    settings.run_timeout = RUN_TIMEOUT;
    settings.retry_after = Duration::from_millis(500);
    settings.redelivery_hooks = HOOKS
        .iter()
        .map(|(repo, hook_id)| HookRef::Repo { repo: RepoFullName::parse(repo).unwrap(), hook_id: *hook_id })
        .collect();
    settings.redelivery_max_attempts = MAX_REDELIVERIES;
    let service = Service::with_clock(store, client, deployer, clock.clone(), settings);
    let handler: Arc<ChaosHandler> =
        Arc::new(WebhookHandler::new(service, secrets, BUDGET).with_hook_secrets(hook_secrets));

    // The stream: merged PRs into two repositories (main → production, release/* → staging),
    // shuffled, some redelivered with the same GUID, some by a second hook, some only late; plus
    // unmerged closes and pings.
    let mut scheduled: Vec<(usize, Work)> = Vec::new();
    let mut expected: HashMap<(String, u64, String), (bool, String)> = HashMap::new(); // -> (rejected, sha)
    let mut late_prs = 0;
    // Merges happen over the first rounds (a few per round, delivered a round early or late).
    let per_round = (prs / 8).max(3);
    {
        let mut r = rng.lock().unwrap();
        for n in 1..=prs {
            let repo = REPOS[r.usize(0..REPOS.len())];
            let base = ["main", "main", "release/1.4", "feature/x"][r.usize(0..4)];
            let sha: String = (0..40).map(|_| char::from_digit(r.u32(0..16), 16).unwrap()).collect();
            if let Some(env) = environment_for(base) {
                expected.insert((repo.to_owned(), n, env.to_owned()), (rejected_pr(n), sha.clone()));
            }
            let payload = merged_into(repo, n, base, &sha);
            let (primary, second) = (hook_of(repo, false), hook_of(repo, true));
            let first = Delivery {
                id: new_delivery_id(),
                event: "pull_request".into(),
                payload: payload.clone(),
                hook: primary,
            };
            let merged_round = 1 + ((n - 1) / per_round) as usize;
            let first_round = if r.u32(0..100) < 15 {
                late_prs += 1;
                merged_round + r.usize(3..=6)
            } else {
                (merged_round + r.usize(0..=2)).saturating_sub(1).max(1)
            };
            if r.u32(0..100) < 25 {
                let round = r.usize(first_round..=first_round + 5);
                schedule(&mut scheduled, round, Work::Delivery(first.clone())); // same GUID again
            }
            if r.u32(0..100) < 20 {
                let again = Delivery {
                    id: new_delivery_id(),
                    event: "pull_request".into(),
                    payload: payload.clone(),
                    hook: second,
                };
                schedule(&mut scheduled, r.usize(first_round..=first_round + 3), Work::Delivery(again));
            }
            schedule(&mut scheduled, first_round, Work::Delivery(first));
            if r.u32(0..100) < 15 {
                let mut closed = payload;
                closed["pull_request"]["merged"] = json!(false);
                let closed =
                    Delivery { id: new_delivery_id(), event: "pull_request".into(), payload: closed, hook: primary };
                schedule(&mut scheduled, 1, Work::Delivery(closed));
            }
            if n % 8 == 0 {
                let hook = hook_of(REPOS[(n / 8) as usize % REPOS.len()], false);
                let ping = Delivery { id: new_delivery_id(), event: "ping".into(), payload: fixture("ping"), hook };
                schedule(&mut scheduled, 1, Work::Delivery(ping));
            }
        }
    }

    // DynamoDB outages and throttling in short windows while faults are on.
    let fault_task = {
        let (faults_on, table, rng) = (faults_on.clone(), table.clone(), rng.clone());
        tokio::spawn(async move {
            let mut injected = 0u64;
            while faults_on.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let (roll, count) = {
                    let mut r = rng.lock().unwrap();
                    (r.u32(0..100), r.u32(1..5))
                };
                if roll < 20 && faults_on.load(Ordering::Relaxed) {
                    inject_dynamo_faults(&table, count, if roll < 10 { "throttle" } else { "unavailable" }).await;
                    injected += u64::from(count);
                }
            }
            inject_dynamo_faults(&table, 0, "unavailable").await;
            injected
        })
    };

    let cb_stats: Shared<CallbackStats> = Arc::default();
    let mut plans: BTreeMap<&'static str, u64> = BTreeMap::new();
    let started = Instant::now();
    let mut violations: Vec<String> = Vec::new();
    let (mut deliveries_answered, mut non_2xx, mut redelivered_events) = (0u64, 0u64, 0u64);
    let (mut sweeps, mut sweeps_died, mut sweeps_healed) = (0u64, 0u64, 0usize);
    // What the sweeps' redelivery part reported: redelivered, gave up, hooks it could not sweep.
    let (mut swept_redelivered, mut swept_gave_up, mut swept_hooks_failed) = (0usize, 0usize, 0usize);
    let mut redeliveries_sent = 0u64;
    // Idle rounds in a row with failed deliveries still waiting for their backoff.
    let mut idle_failing = 0u32;
    let mut waited_for_leases = Duration::ZERO;
    let mut timeouts_forced = 0;
    let mut round = 0usize;
    let mut last_wait_for: Option<Instant> = None;
    let mut stuck: Vec<String> = Vec::new();
    loop {
        round += 1;
        faults_on.store(round <= FAULT_ROUNDS, Ordering::Relaxed);
        deaths_on.store(round <= DEATH_ROUNDS, Ordering::Relaxed);
        let (mut batch, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut scheduled).into_iter().partition(|(at, _)| *at <= round);
        scheduled = later;
        let idle = batch.is_empty() && scheduled.is_empty();
        if idle {
            // Nothing left to deliver: let time pass beyond every run's deadline, so that runs
            // whose callback never came time out through the sweep, until nothing is owed.
            // Failed deliveries still waiting for a redelivery: time passes beyond their backoff.
            let left = environments_with_work(&dynamo, &table).await;
            let failing = github_state.lock().unwrap().failing();
            if left.is_empty() && failing.is_empty() {
                break;
            }
            // Past the longest backoff with nothing redelivered: the sweep will not recover them.
            if round > MAX_ROUNDS || idle_failing > 11 {
                stuck = left;
                stuck.extend(failing.iter().map(|g| format!("delivery {g} still failing, not redelivered")));
                break;
            }
            clock.advance(RUN_TIMEOUT + LEASE);
            timeouts_forced += 1;
            if !failing.is_empty() {
                clock.advance(Duration::from_millis(FIRST_BACKOFF_MS << idle_failing.min(10)));
                idle_failing += 1;
            }
        }
        if round > MAX_ROUNDS {
            let left: Vec<String> = batch
                .iter()
                .map(|(_, w)| match w {
                    Work::Delivery(d) => format!("{} {}", d.event, d.id),
                    Work::Callback(c) => format!("callback for {}", c.deployment),
                })
                .collect();
            violations.push(format!("did not converge in {MAX_ROUNDS} rounds: still owed {left:?}"));
            break;
        }
        rng.lock().unwrap().shuffle(&mut batch);

        // The deploy system calls back at once for some accepted deployments, while the round runs.
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let pump = {
            let (handler, hooks, stats, rng) = (handler.clone(), hook_state.clone(), cb_stats.clone(), rng.clone());
            let mut rx = std::mem::replace(&mut accepted_rx, tokio::sync::mpsc::unbounded_channel().1);
            tokio::spawn(async move {
                let mut later: Vec<(usize, Callback)> = Vec::new();
                let mut kinds: Vec<&'static str> = Vec::new();
                let mut now_tasks = Vec::new();
                let mut plan_for = |id: u64, later: &mut Vec<(usize, Callback)>, now_tasks: &mut Vec<_>| {
                    let (plan, kind) = plan_callbacks(&mut rng.lock().unwrap(), id);
                    kinds.push(kind);
                    for (delay, cb) in plan {
                        if delay > 0 {
                            later.push((delay, cb));
                            continue;
                        }
                        let (handler, hooks, stats) = (handler.clone(), hooks.clone(), stats.clone());
                        let wait = Duration::from_millis(fastrand::u64(0..400));
                        now_tasks.push(tokio::spawn(async move {
                            tokio::time::sleep(wait).await;
                            let (status, body, url) = send_callback(&handler, &hooks, &cb).await;
                            after_callback(&stats, &hooks, cb, status, &body, &url)
                        }));
                    }
                };
                loop {
                    tokio::select! {
                        Some(id) = rx.recv() => plan_for(id, &mut later, &mut now_tasks),
                        _ = &mut stop_rx => break,
                    }
                }
                while let Ok(id) = rx.try_recv() {
                    plan_for(id, &mut later, &mut now_tasks);
                }
                for task in now_tasks {
                    if let Some(retry) = task.await.unwrap() {
                        later.push((1, retry));
                    }
                }
                (rx, later, kinds)
            })
        };

        // The round: every delivery and callback due, at once, on at most INSTANCES instances,
        // and one sweep at a random moment among them.
        let instances = Arc::new(tokio::sync::Semaphore::new(INSTANCES));
        let mut tasks = Vec::new();
        for (_, work) in batch {
            let (handler, github_state, hooks, instances, clock) =
                (handler.clone(), github_state.clone(), hook_state.clone(), instances.clone(), clock.clone());
            tasks.push(tokio::spawn(async move {
                let _instance = instances.acquire().await.unwrap();
                match work {
                    Work::Callback(cb) => {
                        let (status, body, url) = send_callback(&handler, &hooks, &cb).await;
                        (Work::Callback(cb), status, body, Some(url), None)
                    }
                    Work::Delivery(delivery) => {
                        // GitHub books the attempt when it sends it, and lists it once answered.
                        let (attempt, sent_at) = {
                            let mut gh = github_state.lock().unwrap();
                            gh.next_attempt += 1;
                            (900_000 + gh.next_attempt, clock.now_ms())
                        };
                        let event = Event::github(&delivery.event, &delivery.id, &delivery.payload);
                        let answer = tokio::time::timeout(INVOCATION_TIMEOUT, handler.handle(event.request())).await;
                        let (status, body) = match answer {
                            Ok(response) => (
                                response.status().as_u16(),
                                serde_json::from_slice(response.body().as_ref()).unwrap_or(Value::Null),
                            ),
                            Err(_) => (0, json!({"status": "instance died"})),
                        };
                        {
                            let mut gh = github_state.lock().unwrap();
                            let redelivery = gh.attempts.iter().any(|a| a.guid == delivery.id);
                            gh.attempts.push(HookAttempt {
                                id: attempt,
                                hook: delivery.hook,
                                guid: delivery.id.clone(),
                                event: delivery.event.clone(),
                                delivered_at: rfc3339_ms(sent_at),
                                status,
                                answered_ms: clock.now_ms(),
                                payload: delivery.payload.clone(),
                                redelivery,
                            });
                        }
                        // No 2xx for a deployment GitHub does not have, at the moment of the answer.
                        let mut violation = None;
                        if status == 200 && delivery.event == "pull_request" {
                            let gh = github_state.lock().unwrap();
                            for d in body["detail"]["deployments"].as_array().cloned().unwrap_or_default() {
                                if let Some(id) = d["deployment_id"].as_u64()
                                    && !gh.deployments.contains_key(&id)
                                {
                                    violation = Some(format!("2xx for deployment {id} GitHub does not have"));
                                }
                            }
                        }
                        (Work::Delivery(delivery), status, body, None, violation)
                    }
                }
            }));
        }
        let mid_sweep = {
            let handler = handler.clone();
            let wait = Duration::from_millis(rng.lock().unwrap().u64(0..1500));
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                tokio::time::timeout(INVOCATION_TIMEOUT, handler.sweep(BUDGET)).await
            })
        };
        for task in tasks {
            let (work, status, body, url, violation) = task.await.unwrap();
            violations.extend(violation);
            match work {
                Work::Callback(cb) => {
                    if let Some(retry) = after_callback(&cb_stats, &hook_state, cb, status, &body, &url.unwrap()) {
                        schedule(&mut scheduled, round + 1, Work::Callback(retry));
                    }
                }
                Work::Delivery(delivery) => {
                    deliveries_answered += 1;
                    if !is_2xx(status) {
                        // Left to the sweep: GitHub lists it, the sweep asks for its redelivery.
                        non_2xx += 1;
                        if matches!(status, 400 | 401 | 404) {
                            violations.push(format!("{} {} answered {status} {body}", delivery.event, delivery.id));
                        }
                    }
                }
            }
        }
        sweeps += 1;
        match mid_sweep.await.unwrap() {
            Ok(Ok(report)) => {
                sweeps_healed += report.healed;
                swept_redelivered += report.redelivery.redelivered;
                swept_gave_up += report.redelivery.gave_up;
                swept_hooks_failed += report.redelivery.failed_hooks;
            }
            Ok(Err(_)) => {}
            Err(_) => sweeps_died += 1,
        }
        stop_tx.send(()).ok();
        let (rx, later, kinds) = pump.await.unwrap();
        accepted_rx = rx;
        for kind in kinds {
            *plans.entry(kind).or_default() += 1;
        }
        for (delay, cb) in later {
            schedule(&mut scheduled, round + delay, Work::Callback(cb));
        }

        // Between rounds no instance is alive. Let the dead ones' leases run out: creation claims
        // on the real clock, environment leases on the test clock; then the sweep, as the
        // schedule would run it, takes over what they held.
        let death = *last_creation_death.lock().unwrap();
        if let Some(death) = death.filter(|d| last_wait_for != Some(*d)) {
            let until = death + LEASE + Duration::from_millis(50);
            let now = Instant::now();
            if until > now {
                tokio::time::sleep(until - now).await;
                waited_for_leases += until - now;
            }
            last_wait_for = Some(death);
        }
        // The clock also moves past the sweep's backoff for what failed this round.
        clock.advance(ROUND_TIME);
        for _ in 0..8 {
            sweeps += 1;
            match tokio::time::timeout(INVOCATION_TIMEOUT, handler.sweep(BUDGET)).await {
                Ok(Ok(report)) => {
                    sweeps_healed += report.healed;
                    swept_redelivered += report.redelivery.redelivered;
                    swept_gave_up += report.redelivery.gave_up;
                    swept_hooks_failed += report.redelivery.failed_hooks;
                    if report.due == 0 {
                        break;
                    }
                }
                Ok(Err(_)) => {}
                Err(_) => {
                    // Its lease runs out by the next gap, whose sweeps take over.
                    sweeps_died += 1;
                    break;
                }
            }
        }

        // The redeliveries the sweeps asked for (this round's and the gap's): GitHub sends them
        // at once, i.e. in the next round.
        let asked = std::mem::take(&mut github_state.lock().unwrap().redeliver);
        if !asked.is_empty() {
            idle_failing = 0;
        }
        for again in asked {
            redeliveries_sent += 1;
            schedule(&mut scheduled, round + 1, Work::Delivery(again));
        }

        // What GitHub sent meanwhile: deployment and deployment_status events, shuffled, some
        // twice (same GUID or a second hook), some late.
        {
            let outbox = std::mem::take(&mut github_state.lock().unwrap().outbox);
            let mut r = rng.lock().unwrap();
            for (event, payload) in outbox {
                let repo = payload["repository"]["full_name"].as_str().unwrap_or(REPOS[0]).to_owned();
                let delivery = Delivery { id: new_delivery_id(), event, payload, hook: hook_of(&repo, false) };
                let at = if r.u32(0..100) < 15 { round + r.usize(2..=6) } else { round + 1 };
                if r.u32(0..100) < 20 {
                    redelivered_events += 1;
                    let again = if r.bool() {
                        delivery.clone()
                    } else {
                        Delivery { id: new_delivery_id(), hook: hook_of(&repo, true), ..delivery.clone() }
                    };
                    schedule(&mut scheduled, round + r.usize(1..=4), Work::Delivery(again));
                }
                schedule(&mut scheduled, at, Work::Delivery(delivery));
            }
        }

        // Between rounds, with no instance at work, someone ends a deployment by hand (running,
        // queued, or not delivered yet): an `error` of theirs, whose webhook is answered before
        // the next round starts. Nothing may be posted for it after that.
        let person_ends = round <= DEATH_ROUNDS && rng.lock().unwrap().u32(0..100) < 35;
        if person_ends {
            let chosen = {
                let mut gh = github_state.lock().unwrap();
                let open: Vec<u64> = gh
                    .deployments
                    .iter()
                    .filter(|(_, d)| !d.statuses.iter().any(|(_, s)| is_terminal(s)))
                    .map(|(id, _)| *id)
                    .collect();
                let pick = (!open.is_empty()).then(|| open[rng.lock().unwrap().usize(..open.len())]);
                pick.map(|id| {
                    gh.next_id += 1;
                    let sid = 50_000 + gh.next_id;
                    let d = gh.deployments.get_mut(&id).unwrap();
                    d.statuses.push((sid, "error".to_owned()));
                    let (repo, env) = (d.repo.clone(), d.environment.clone());
                    gh.ended_by_people.insert(id);
                    let mut event = deployment_status(id, sid, "error");
                    event["repository"]["full_name"] = json!(repo);
                    event["deployment"]["environment"] = json!(env);
                    event["deployment_status"]["environment"] = json!(env);
                    event["deployment_status"]["creator"]["login"] = json!("alice");
                    (repo, event)
                })
            };
            if let Some((repo, event)) = chosen {
                let mut answered = false;
                for _ in 0..10 {
                    let request = Event::github("deployment_status", &new_delivery_id(), &event).request();
                    if let Ok(response) = tokio::time::timeout(INVOCATION_TIMEOUT, handler.handle(request)).await
                        && response.status().is_success()
                    {
                        answered = true;
                        break;
                    }
                }
                assert!(answered, "someone else's terminal status was never accepted");
                // GitHub may deliver it again later.
                let again = Delivery {
                    id: new_delivery_id(),
                    event: "deployment_status".into(),
                    payload: event,
                    hook: hook_of(&repo, false),
                };
                schedule(&mut scheduled, round + 2, Work::Delivery(again));
            }
        }
    }
    faults_on.store(false, Ordering::Relaxed);
    deaths_on.store(false, Ordering::Relaxed);
    let dynamo_faults = fault_task.await.unwrap();
    let elapsed = started.elapsed();

    // ---------------------------------------------------------------- invariants
    let left = environments_with_work(&dynamo, &table).await;
    // Where each webhook's sweep left its watermark (to explain a delivery it never saw again).
    let mut watermarks: HashMap<u64, String> = HashMap::new();
    let swept = DynamoStore::new(dynamo.clone(), &table);
    for (repo, hook_id) in HOOKS {
        let hook = HookRef::Repo { repo: RepoFullName::parse(repo).unwrap(), hook_id };
        if let Ok(v) = swept.load_redelivery(&hook).await {
            watermarks.insert(hook_id, v.state.watermark.unwrap_or_default());
        }
    }
    let gh = github_state.lock().unwrap();
    let hooks = hook_state.lock().unwrap();
    let stats = cb_stats.lock().unwrap();
    violations.extend(hooks.violations.iter().cloned());
    violations.extend(stats.violations.iter().cloned());

    // Every failed delivery recovered by the sweep: each guid has a 2xx attempt, or its latest
    // is a 4xx, which the sweep leaves (as specified). The only 4xx the handler gives here is
    // 409, "another attempt is processing this work": the work invariants above must then hold.
    let payload_key = |a: &HookAttempt| format!("{} {}", a.event, a.payload);
    let done: std::collections::HashSet<String> =
        gh.attempts.iter().filter(|a| is_2xx(a.status)).map(payload_key).collect();
    let (mut failed_5xx, mut failed_409, mut failed_no_answer) = (0u64, 0u64, 0u64);
    for a in &gh.attempts {
        match a.status {
            0 => failed_no_answer += 1,
            409 => failed_409 += 1,
            s if s >= 500 => failed_5xx += 1,
            _ => {}
        }
    }
    let by_guid = gh.by_guid();
    let redelivered_guids = gh.redelivered_guids.len();
    let (mut unrecovered, mut ended_409, mut ended_409_done_elsewhere) = (0, 0, 0);
    for (guid, list) in &by_guid {
        let latest = list[list.len() - 1];
        if list.iter().any(|a| is_2xx(a.status)) {
            continue;
        }
        if (400..500).contains(&latest.status) {
            ended_409 += 1;
            ended_409_done_elsewhere += usize::from(done.contains(&payload_key(latest)));
            continue;
        }
        unrecovered += 1;
        // (sent, listed from, status) on the test clock.
        let tries: Vec<(String, String, u16)> = list
            .iter()
            .map(|a| (a.delivered_at[11..19].to_owned(), rfc3339_ms(a.answered_ms)[11..19].to_owned(), a.status))
            .collect();
        let watermark = watermarks.get(&latest.hook).cloned().unwrap_or_default();
        // Listings of its webhook while it was in flight (sent, not yet answered).
        let in_flight: Vec<String> = gh
            .listed
            .iter()
            .filter(|(h, at)| {
                *h == latest.hook && list.iter().any(|a| rfc3339_ms(*at) >= a.delivered_at && *at < a.answered_ms)
            })
            .map(|(_, at)| rfc3339_ms(*at)[11..19].to_owned())
            .collect();
        violations.push(format!(
            "delivery {guid} ({} on {}#{}) never recovered: attempts (sent, listed from, status) {tries:?}; its webhook was listed while it was in flight at {in_flight:?}; the watermark is now {watermark}",
            latest.event,
            hook_repo(latest.hook),
            latest.hook
        ));
    }
    if swept_gave_up > 0 {
        violations.push(format!("the sweep gave up on {swept_gave_up} deliveries"));
    }

    // At most one deployment per merged PR and environment; none for rejected ones.
    let mut per_key: HashMap<(String, u64, String), Vec<u64>> = HashMap::new();
    for (id, d) in &gh.deployments {
        let marker = d.marker.clone().unwrap();
        let mut parts = marker.split('#');
        let (_repo, pr, env) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        per_key.entry((d.repo.clone(), pr.parse().unwrap(), env.to_owned())).or_default().push(*id);
    }
    let (mut duplicates, mut unexpected) = (0, 0);
    for (key, ids) in &per_key {
        match expected.get(key) {
            Some((false, _)) if ids.len() > 1 => {
                duplicates += ids.len() - 1;
                violations.push(format!("{key:?} has deployments {ids:?}"));
            }
            Some((false, _)) => {}
            _ => {
                unexpected += ids.len();
                violations.push(format!("{key:?} should have no deployment, has {ids:?}"));
            }
        }
    }
    let not_created = expected.iter().filter(|(k, (rejected, _))| !rejected && !per_key.contains_key(*k)).count();

    // Exactly one terminal state per deployment, nothing after it; the runs it makes.
    let (mut not_one_terminal, mut after_terminal) = (0, 0);
    let mut suspects: Vec<u64> = Vec::new();
    let mut terminal_counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut runs: HashMap<(String, String), Vec<RunSpan>> = HashMap::new();
    for (id, d) in &gh.deployments {
        let states: Vec<&str> = d.statuses.iter().map(|(_, s)| s.as_str()).collect();
        let terminals: Vec<&(u64, String)> = d.statuses.iter().filter(|(_, s)| is_terminal(s)).collect();
        if terminals.len() != 1 {
            not_one_terminal += 1;
            suspects.push(*id);
            violations.push(format!(
                "deployment {id} ({}/{}) has {} terminal statuses: {states:?}",
                d.repo,
                d.environment,
                terminals.len()
            ));
        }
        if let Some(first_terminal) = d.statuses.iter().position(|(_, s)| is_terminal(s)) {
            terminal_counts.entry(d.statuses[first_terminal].1.clone()).and_modify(|c| *c += 1).or_insert(1);
            if first_terminal + 1 < d.statuses.len() {
                after_terminal += 1;
                suspects.push(*id);
                violations.push(format!("deployment {id}: statuses after the terminal one: {states:?}"));
            }
        }
        if let Some((start, _)) = d.statuses.iter().find(|(_, s)| s == "in_progress") {
            let end = terminals.first().map_or(u64::MAX, |(sid, _)| *sid);
            runs.entry((d.repo.clone(), d.environment.clone())).or_default().push((*start, end, *id));
        }
    }
    let mut overlaps = 0;
    for ((repo, env), list) in &mut runs {
        list.sort();
        let mut latest_end: Option<(u64, u64)> = None; // (end, id)
        for (start, end, id) in list.iter() {
            if let Some((prev_end, prev)) = latest_end
                && *start < prev_end
            {
                overlaps += 1;
                violations.push(format!("{repo}/{env}: run of {id} started while {prev}'s was live"));
            }
            if latest_end.is_none_or(|(e, _)| *end > e) {
                latest_end = Some((*end, *id));
            }
        }
    }

    // The latest merge of each environment is what ran last.
    let mut regressions = 0;
    let mut latest_merges: BTreeMap<(String, String), (u64, String)> = BTreeMap::new();
    let ended_by_people: Vec<(&str, &str, &str)> = gh
        .ended_by_people
        .iter()
        .map(|id| &gh.deployments[id])
        // One that had started is still what ran last (everything older was superseded then).
        .filter(|d| !d.statuses.iter().any(|(_, s)| s == "in_progress"))
        .map(|d| (d.repo.as_str(), d.environment.as_str(), d.sha.as_str()))
        .collect();
    for ((repo, n, env), (rejected, sha)) in &expected {
        // A merge whose deployment someone ended by hand before it started never runs.
        let ended = ended_by_people.contains(&(repo.as_str(), env.as_str(), sha.as_str()));
        if !rejected && !ended {
            let entry = latest_merges.entry((repo.clone(), env.clone())).or_insert((*n, sha.clone()));
            if *n > entry.0 {
                *entry = (*n, sha.clone());
            }
        }
    }
    for ((repo, env), (n, sha)) in &latest_merges {
        let last = runs.get(&(repo.clone(), env.clone())).and_then(|l| l.iter().max_by_key(|(start, _, _)| *start));
        let last_sha = last.map(|(_, _, id)| gh.deployments[id].sha.as_str());
        if last_sha != Some(sha.as_str()) {
            regressions += 1;
            violations.push(format!(
                "{repo}/{env}: the latest merge is #{n} ({}), the last run started was {:?} ({:?})",
                &sha[..7],
                last.map(|l| l.2),
                last_sha.map(|s| &s[..7])
            ));
        }
    }

    // Nothing left running, queued or owed in any environment.
    violations.extend(left.iter().map(|l| format!("left with work: {l}")));
    violations.extend(stuck.iter().map(|l| format!("stuck after {round} rounds: {l}")));

    let run_count: usize = runs.values().map(Vec::len).sum();
    let hook_modes = |m: HookMode| hooks.deployments.values().filter(|h| h.mode == m).count();
    let hook_recalls: u32 = hooks.deployments.values().map(|h| h.calls.saturating_sub(1)).sum();
    println!("chaos figures (seed {seed}, {prs} PRs, {late_prs} delivered only late):");
    println!(
        "  rounds                        {round} in {:.1}s ({:.1}s waiting for dead leases), {timeouts_forced} forced timeouts",
        elapsed.as_secs_f64(),
        waited_for_leases.as_secs_f64()
    );
    println!(
        "  deliveries answered           {deliveries_answered} ({redeliveries_sent} redeliveries), {redelivered_events} GitHub events sent twice"
    );
    println!(
        "  deliveries that failed        {non_2xx}: 5xx {failed_5xx}, no answer {failed_no_answer}, 409 in progress {failed_409}"
    );
    println!(
        "  redeliveries asked by sweep   {} ({swept_redelivered} by the sweeps' count) for {redelivered_guids} guids; {} listings, {swept_hooks_failed} hook sweeps failed, {swept_gave_up} given up",
        gh.redeliveries_asked, gh.listings
    );
    println!(
        "  ended in 409, not redelivered {ended_409} guids ({ended_409_done_elsewhere} delivered with a 2xx by another guid)"
    );
    println!("  left unrecovered              {unrecovered}");
    println!("  sweeps                        {sweeps} ({sweeps_healed} environments healed, {sweeps_died} died)");
    println!("  faults injected               GitHub {:?}; DynamoDB {dynamo_faults} failed requests", gh.faults);
    println!(
        "  instances killed              {} before recording a creation, {} before a state write",
        creation_deaths.load(Ordering::Relaxed),
        save_deaths.load(Ordering::Relaxed)
    );
    println!(
        "  ambiguous state writes        {} (applied, answer lost); {} deployments ended by someone else",
        ambiguous_writes.load(Ordering::Relaxed),
        gh.ended_by_people.len()
    );
    println!(
        "  hook                          {} calls ({hook_recalls} repeated), sync success {}, sync 500 {}, async {}",
        hooks.calls,
        hook_modes(HookMode::Success),
        hook_modes(HookMode::Fails),
        hook_modes(HookMode::Async)
    );
    println!("  callback plans                {plans:?}");
    println!(
        "  callbacks                     {} sent: {} accepted, {} already_final, {} unknown token, {} retried, {} forged refused",
        stats.sent, stats.accepted, stats.already_final, stats.unknown, stats.retried, stats.forged_refused
    );
    println!(
        "  deployments on GitHub         {} for {} (PR, environment) pairs not rejected ({not_created} not created: a later merge was there)",
        gh.deployments.len(),
        expected.values().filter(|(r, _)| !r).count()
    );
    println!("  terminal states               {terminal_counts:?}");
    println!("  runs                          {run_count} in {} environments", runs.len());
    println!("  overlapping runs              {overlaps}");
    println!("  not exactly one terminal      {not_one_terminal}");
    println!("  statuses after a terminal     {after_terminal}");
    println!("  regressions to older code     {regressions} of {} environments", latest_merges.len());
    println!("  duplicates {duplicates}, unexpected {unexpected}");
    println!("  environments left with work   {}", left.len());
    println!("  violations                    {}", violations.len());

    suspects.dedup();
    for id in suspects {
        let d = &gh.deployments[&id];
        println!("deployment {id} ({}/{} {}): statuses {:?}", d.repo, d.environment, &d.sha[..7], d.statuses);
        for line in &d.log {
            println!("    {line}");
        }
    }
    assert!(violations.is_empty(), "violations (replay with CHAOS_SEED={seed}): {violations:#?}");
    assert!(non_2xx > 0, "the faults never bit: this run proved nothing");
    assert!(gh.redeliveries_asked > 0, "the sweep never redelivered: this run proved nothing");
    assert!(run_count > 0);
}

/// The environments whose stored state still has a run, a queue or owed statuses.
async fn environments_with_work(dynamo: &aws_sdk_dynamodb::Client, table: &str) -> Vec<String> {
    let mut left = Vec::new();
    for item in scan(dynamo, table).await {
        if attr_s(&item, "kind") != Some("environment") {
            continue;
        }
        let doc: Value = serde_json::from_str(attr_s(&item, "doc").unwrap()).unwrap();
        let owes = ["running", "queue", "notices"].iter().any(|k| doc.get(*k).is_some_and(|v| !v.is_null()));
        if owes {
            let name = format!("{}/{}", attr_s(&item, "repository").unwrap(), attr_s(&item, "environment").unwrap());
            let summary = json!({
                "running": doc.pointer("/running/deployment/id"),
                "phase": doc.pointer("/running/phase"),
                "queue": doc["queue"].as_array().map(|q| q.iter().map(|d| d["id"].clone()).collect::<Vec<_>>()),
                "notices": doc["notices"],
                "lease": doc["lease"],
            });
            left.push(format!("{name}: {summary}"));
        }
    }
    left
}

/// A scripted replay of what a chaos run found: a status post that GitHub applied but answered
/// 500, whose check ("was it applied?") is then rate-limited until the step gives up. The step's
/// failure used to release the lease without marking it for reconciliation, so the sweep posted
/// the same status again. Now the lease runs out instead, and the next holder asks GitHub first.
#[tokio::test]
async fn an_applied_status_whose_answer_was_lost_is_not_posted_again() {
    let app = TestApp::builder().settings(|s| s.retry_after = Duration::from_secs(1)).start().await;
    let state: Shared<GitHubState> = Arc::default();
    let id = 145988746;
    state.lock().unwrap().deployments.insert(
        id,
        FakeDeployment {
            repo: REPO.to_owned(),
            sha: "f95f852bd8fca8fcc58a9a2d6c842781e32a215e".to_owned(),
            environment: "production".to_owned(),
            marker: None,
            statuses: Vec::new(),
            log: Vec::new(),
        },
    );
    // in_progress: fine; success: applied, then 500; every check after it: rate limited.
    let script = std::collections::VecDeque::from([
        Fault::None,
        Fault::AppliedThen500,
        Fault::RateLimited,
        Fault::RateLimited,
        Fault::RateLimited,
        Fault::RateLimited,
    ]);
    Mock::given(any())
        .respond_with(FaultyGitHub {
            state: state.clone(),
            rng: Arc::new(Mutex::new(fastrand::Rng::with_seed(1))),
            faults_on: Arc::new(AtomicBool::new(false)),
            script: Arc::new(Mutex::new(script)),
            clock: app.clock.clone(),
        })
        .mount(&app.github)
        .await;

    let (status, body) =
        app.send(&Event::github("deployment", &new_delivery_id(), &deployment_created(id, "production"))).await;
    println!("deployment event: {status} {body}");
    app.clock.advance(Duration::from_secs(5));
    let report = app.sweep().await;
    println!("sweep: {report:?}");
    let d = &state.lock().unwrap().deployments[&id];
    println!("statuses {:?}", d.statuses);
    for line in &d.log {
        println!("    {line}");
    }
    let states: Vec<&str> = d.statuses.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(states, ["in_progress", "success"], "one terminal status, nothing after it");
}
