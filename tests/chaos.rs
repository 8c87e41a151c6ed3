#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking
//! Chaos: many deliveries at once through the real handler while GitHub fails, times out and
//! rate-limits, DynamoDB throttles and goes away, and "instances" die between a GitHub call and
//! the state write. Then every delivery that did not get a 2xx is redelivered, as an operator
//! would, until all are 2xx, and the invariants are checked:
//!
//! - each merged PR matching a rule has exactly one GitHub deployment per environment;
//! - each deployment got exactly one `in_progress` and then exactly one terminal status;
//! - no 2xx was answered for work that was not done (checked at the moment of the answer);
//! - every delivery with effects ends recorded as done in the ledger;
//! - the stored state of each deployment is the newest status GitHub has.
//!
//! Short by default (part of `make test`); `make chaos` runs a longer one. `CHAOS_SEED` replays a
//! run's stream and fault decisions (thread interleavings still vary); `CHAOS_PRS` sets its size.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use deploy_webhook::deploy::hook::{DeployTargets, HookDeployer};
use deploy_webhook::domain::ports::{Claim, CreationKey, CreationRecord, DeployReport, Lease, Store, StoreError};
use deploy_webhook::domain::types::{DeliveryId, DeploymentId, DeploymentState, Environment, RepoFullName, Sha};
use deploy_webhook::domain::{DeployRules, DeploymentCreated, Service, ServiceSettings, StatusRecord};
use deploy_webhook::github::client::{GitHubClient, RetryPolicy, http_client};
use deploy_webhook::http::WebhookHandler;
use deploy_webhook::http::signature::WebhookSecrets;
use deploy_webhook::store::dynamo::DynamoStore;
use serde_json::{Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers::any};

const REPOS: [&str; 3] = ["octo-org/api", "octo-org/web", "octo-org/worker"];
const RULES: &str = "main=production,main=audit,release/*=staging";
const LEASE: Duration = Duration::from_millis(1500);
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(400);
/// Concurrent "Lambda instances": deliveries beyond this wait for a free one, as Lambda's
/// concurrency limit (or a reserved concurrency) would make them.
const INSTANCES: usize = 16;
/// How long the driver waits for an answer before it counts the instance as dead.
const INVOCATION_TIMEOUT: Duration = Duration::from_secs(4);

// ------------------------------------------------------------------ a stateful, faulty GitHub

#[derive(Default)]
struct GitHubState {
    deployments: BTreeMap<u64, FakeDeployment>,
    next_id: u64,
    /// Webhook deliveries GitHub would send because of what happened (deployment, statuses).
    outbox: Vec<(String, Value)>,
    faults: HashMap<&'static str, u64>,
}

struct FakeDeployment {
    repo: String,
    sha: String,
    environment: String,
    marker: Option<String>,
    statuses: Vec<(u64, String)>,
}

struct FaultyGitHub {
    state: Arc<Mutex<GitHubState>>,
    rng: Arc<Mutex<fastrand::Rng>>,
    faults_on: Arc<std::sync::atomic::AtomicBool>,
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
        if !self.faults_on.load(std::sync::atomic::Ordering::Relaxed) {
            return Fault::None;
        }
        let roll = self.rng.lock().unwrap().u32(0..100);
        match roll {
            0..=7 => Fault::BadGateway,
            8..=11 => Fault::AppliedThen500,
            12..=15 => Fault::AppliedThenTimeout,
            16..=18 => Fault::RateLimited,
            _ => Fault::None,
        }
    }
}

fn pr_number_of(payload: &Value) -> u64 {
    payload.pointer("/pull_request/number").and_then(Value::as_u64).unwrap_or(0)
}

impl Respond for FaultyGitHub {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let path = request.url.path().to_owned();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        // repos/{owner}/{repo}/deployments[/{id}/statuses]
        if parts.len() < 4 || parts[0] != "repos" || parts[3] != "deployments" {
            return ResponseTemplate::new(404);
        }
        let repo = format!("{}/{}", parts[1], parts[2]);
        let fault = self.pick_fault();
        let mut state = self.state.lock().unwrap();
        let count = |state: &mut GitHubState, name: &'static str| *state.faults.entry(name).or_default() += 1;
        match fault {
            Fault::BadGateway => {
                count(&mut state, "github_502");
                return ResponseTemplate::new(502);
            }
            Fault::RateLimited => {
                count(&mut state, "github_rate_limited");
                return ResponseTemplate::new(403)
                    .insert_header("retry-after", "1")
                    .set_body_json(json!({"message": "You have exceeded a secondary rate limit."}));
            }
            _ => {}
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
                let pr = pr_number_of(&body["payload"]);
                // Some PRs are refused for good: failed status checks (409), validation (422).
                if pr % 11 == 0 {
                    return ResponseTemplate::new(409)
                        .set_body_json(json!({"message": "Conflict: Commit status checks failed for main."}));
                }
                if pr % 13 == 0 {
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
                    },
                );
                let mut event = deployment_created(id, &environment);
                event["deployment"]["sha"] = json!(sha);
                event["repository"]["full_name"] = json!(repo);
                state.outbox.push(("deployment".into(), event));
                ResponseTemplate::new(201).set_body_json(json!({"id": id}))
            }
            ("GET", 6) => {
                let id: u64 = parts[4].parse().unwrap_or(0);
                let list: Vec<Value> = state
                    .deployments
                    .get(&id)
                    .map(|d| d.statuses.iter().rev().map(|(sid, s)| json!({"id": sid, "state": s})).collect())
                    .unwrap_or_default();
                ResponseTemplate::new(200).set_body_json(list)
            }
            ("POST", 6) => {
                let id: u64 = parts[4].parse().unwrap_or(0);
                let body: Value = serde_json::from_slice(&request.body).unwrap();
                let status_state = body["state"].as_str().unwrap().to_owned();
                state.next_id += 1;
                let sid = 50_000 + state.next_id;
                let Some(d) = state.deployments.get_mut(&id) else { return ResponseTemplate::new(404) };
                d.statuses.push((sid, status_state.clone()));
                let env = d.environment.clone();
                let mut event = deployment_status(id, sid, &status_state);
                event["repository"]["full_name"] = json!(repo);
                event["deployment_status"]["environment"] = json!(env);
                state.outbox.push(("deployment_status".into(), event));
                ResponseTemplate::new(201).set_body_json(json!({"id": sid, "state": status_state}))
            }
            _ => ResponseTemplate::new(404),
        };
        match fault {
            Fault::AppliedThen500 if method == "POST" => {
                count(&mut state, "github_500_after_applying");
                ResponseTemplate::new(500)
            }
            Fault::AppliedThenTimeout if method == "POST" => {
                count(&mut state, "github_timeout_after_applying");
                response.set_delay(ATTEMPT_TIMEOUT * 3)
            }
            _ => response,
        }
    }
}

// ------------------------------------------------------------------ a store whose instance can die

/// Wraps the real store. When a crash is drawn, the write after a GitHub effect never happens and
/// the "instance" hangs until the driver gives up on it, as when Lambda kills a timed-out or
/// crashed instance: no cleanup code runs.
struct CrashingStore {
    inner: DynamoStore,
    rng: Arc<Mutex<fastrand::Rng>>,
    crashes: Arc<std::sync::atomic::AtomicU64>,
    faults_on: Arc<std::sync::atomic::AtomicBool>,
}

impl CrashingStore {
    async fn maybe_die(&self) {
        if self.faults_on.load(std::sync::atomic::Ordering::Relaxed) && self.rng.lock().unwrap().u32(0..100) < 6 {
            self.crashes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::future::pending::<()>().await;
        }
    }
}

impl Store for CrashingStore {
    async fn claim_delivery(
        &self,
        id: &DeliveryId,
        event: &str,
        lease_for: Duration,
    ) -> Result<Claim<String>, StoreError> {
        self.inner.claim_delivery(id, event, lease_for).await
    }
    async fn complete_delivery(&self, id: &DeliveryId, lease: &Lease, outcome: &str) -> Result<(), StoreError> {
        self.maybe_die().await;
        self.inner.complete_delivery(id, lease, outcome).await
    }
    async fn abandon_delivery(&self, id: &DeliveryId, lease: &Lease, reason: &str) -> Result<(), StoreError> {
        self.inner.abandon_delivery(id, lease, reason).await
    }
    async fn claim_deployment_creation(
        &self,
        key: &CreationKey,
        sha: &Sha,
        lease_for: Duration,
    ) -> Result<Claim<CreationRecord>, StoreError> {
        self.inner.claim_deployment_creation(key, sha, lease_for).await
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
        self.maybe_die().await;
        self.inner.finish_deployment_creation(key, lease, record).await
    }
    async fn release_deployment_creation(&self, key: &CreationKey, lease: &Lease) -> Result<(), StoreError> {
        self.inner.release_deployment_creation(key, lease).await
    }
    async fn claim_deployment_run(
        &self,
        d: &DeploymentCreated,
        lease_for: Duration,
    ) -> Result<Claim<DeploymentState, Option<DeployReport>>, StoreError> {
        self.inner.claim_deployment_run(d, lease_for).await
    }
    async fn read_deployment_run(
        &self,
        repo: &RepoFullName,
        id: DeploymentId,
    ) -> Result<Option<DeploymentState>, StoreError> {
        self.inner.read_deployment_run(repo, id).await
    }
    async fn finish_deployment_run(
        &self,
        repo: &RepoFullName,
        id: DeploymentId,
        lease: &Lease,
        final_status: &StatusRecord,
    ) -> Result<(), StoreError> {
        // Between GitHub's final status and our record of it.
        self.maybe_die().await;
        self.inner.finish_deployment_run(repo, id, lease, final_status).await
    }
    async fn release_deployment_run(
        &self,
        repo: &RepoFullName,
        id: DeploymentId,
        lease: &Lease,
        report: Option<&DeployReport>,
    ) -> Result<(), StoreError> {
        self.inner.release_deployment_run(repo, id, lease, report).await
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
}

// ------------------------------------------------------------------ the run

#[derive(Clone)]
struct Delivery {
    id: String,
    event: String,
    payload: Value,
}

fn merged_into(repo: &str, number: u64, base: &str, sha: &str) -> Value {
    let mut p = merged_pr(number, base);
    p["repository"]["full_name"] = json!(repo);
    p["repository"]["default_branch"] = json!("main");
    p["pull_request"]["merge_commit_sha"] = json!(sha);
    p["pull_request"]["title"] = json!(format!("Change #{number}: ünïcode ✓"));
    p
}

fn environments_for(base: &str) -> Vec<&'static str> {
    match base {
        "main" => vec!["production", "audit"],
        b if b.starts_with("release/") => vec!["staging"],
        _ => vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_nothing_duplicated_nothing_lost() {
    let seed: u64 = std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    let prs: u64 = std::env::var("CHAOS_PRS").ok().and_then(|s| s.parse().ok()).unwrap_or(24);
    println!("chaos: seed {seed} (replay with CHAOS_SEED={seed}), {prs} merged PRs");
    let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(seed)));
    let faults_on = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let crashes = Arc::new(std::sync::atomic::AtomicU64::new(0));

    // GitHub, DynamoDB and the function.
    let github_state = Arc::new(Mutex::new(GitHubState::default()));
    let github = MockServer::start().await;
    Mock::given(any())
        .respond_with(FaultyGitHub { state: github_state.clone(), rng: rng.clone(), faults_on: faults_on.clone() })
        .mount(&github)
        .await;
    let dynamo = dynamo_client().await;
    let table = create_table(&dynamo).await;
    let store = CrashingStore {
        inner: DynamoStore::new(dynamo.clone(), &table),
        rng: rng.clone(),
        crashes: crashes.clone(),
        faults_on: faults_on.clone(),
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
    let deployer = HookDeployer::new(http, DeployTargets::default(), secrets.clone(), Duration::from_secs(1));
    let mut settings = ServiceSettings::new(DeployRules::parse(RULES).unwrap());
    settings.lease = LEASE;
    settings.busy_wait = Duration::from_millis(1200);
    let handler =
        Arc::new(WebhookHandler::new(Service::new(store, client, deployer, settings), secrets, Duration::from_secs(3)));

    // The stream: merged PRs into several repositories and branches, some delivered by two hooks,
    // some redelivered with the same GUID, plus pings and unmerged closes.
    let mut queue: Vec<Delivery> = Vec::new();
    let mut expected_deployments: HashMap<(String, u64, String), bool> = HashMap::new(); // -> rejected?
    {
        let mut r = rng.lock().unwrap();
        for n in 1..=prs {
            let repo = REPOS[r.usize(0..REPOS.len())];
            let base = ["main", "main", "release/1.4", "feature/x"][r.usize(0..4)];
            let sha: String = (0..40).map(|_| char::from_digit(r.u32(0..16), 16).unwrap()).collect();
            for env in environments_for(base) {
                expected_deployments.insert((repo.to_owned(), n, env.to_owned()), n % 11 == 0 || n % 13 == 0);
            }
            let payload = merged_into(repo, n, base, &sha);
            let first = Delivery { id: new_delivery_id(), event: "pull_request".into(), payload: payload.clone() };
            if r.u32(0..100) < 30 {
                queue.push(first.clone()); // redelivery of the same GUID
            }
            if r.u32(0..100) < 30 {
                queue.push(Delivery { id: new_delivery_id(), event: "pull_request".into(), payload: payload.clone() });
            }
            queue.push(first);
            if r.u32(0..100) < 20 {
                let mut closed = payload;
                closed["pull_request"]["merged"] = json!(false);
                queue.push(Delivery { id: new_delivery_id(), event: "pull_request".into(), payload: closed });
            }
            if n % 8 == 0 {
                queue.push(Delivery { id: new_delivery_id(), event: "ping".into(), payload: fixture("ping") });
            }
        }
        r.shuffle(&mut queue);
    }

    // DynamoDB outages and throttling in short windows while faults are on.
    let fault_task = {
        let (faults_on, table, rng) = (faults_on.clone(), table.clone(), rng.clone());
        tokio::spawn(async move {
            let mut injected = 0u64;
            while faults_on.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let (roll, count) = {
                    let mut r = rng.lock().unwrap();
                    (r.u32(0..100), r.u32(1..6))
                };
                if roll < 25 {
                    inject_dynamo_faults(&table, count, if roll < 12 { "throttle" } else { "unavailable" }).await;
                    injected += u64::from(count);
                }
            }
            inject_dynamo_faults(&table, 0, "unavailable").await;
            injected
        })
    };

    let started = Instant::now();
    let mut answers: Vec<(String, u16)> = Vec::new();
    let mut effect_deliveries: HashSet<String> = HashSet::new();
    let mut violations: Vec<String> = Vec::new();
    let mut rounds = 0;
    let mut non_2xx = 0usize;
    let mut pending = queue;
    while !pending.is_empty() {
        rounds += 1;
        if rounds > 30 {
            violations.push(format!("did not converge in 30 rounds: {} deliveries still failing", pending.len()));
            break;
        }
        // Faults for the first rounds only: an outage ends, the operator redelivers.
        if rounds > 3 {
            faults_on.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        let mut tasks = Vec::new();
        let instances = Arc::new(tokio::sync::Semaphore::new(INSTANCES));
        for delivery in pending.drain(..) {
            let handler = Arc::clone(&handler);
            let github_state = github_state.clone();
            let instances = Arc::clone(&instances);
            tasks.push(tokio::spawn(async move {
                let _instance = instances.acquire().await.unwrap();
                let event = Event::github(&delivery.event, &delivery.id, &delivery.payload);
                let answer = tokio::time::timeout(INVOCATION_TIMEOUT, handler.handle(event.request())).await;
                let (status, body) = match answer {
                    Ok(response) => {
                        let body: Value = serde_json::from_slice(response.body().as_ref()).unwrap();
                        (response.status().as_u16(), body)
                    }
                    Err(_) => (504, json!({"status": "instance died"})),
                };
                // No 2xx for work not done: look at GitHub at the moment of the answer.
                let mut violation = None;
                if status == 200 {
                    let gh = github_state.lock().unwrap();
                    if delivery.event == "pull_request" && body["status"] != "ignored" {
                        for d in body["detail"]["deployments"].as_array().cloned().unwrap_or_default() {
                            if let Some(id) = d["deployment_id"].as_u64() {
                                if !gh.deployments.contains_key(&id) {
                                    violation = Some(format!("2xx for deployment {id} GitHub does not have"));
                                }
                            }
                        }
                    }
                    if delivery.event == "deployment" {
                        let id = delivery.payload["deployment"]["id"].as_u64().unwrap();
                        let terminal = gh.deployments[&id]
                            .statuses
                            .iter()
                            .any(|(_, s)| s == "success" || s == "failure" || s == "error");
                        if !terminal {
                            violation = Some(format!("2xx for deployment {id} with no final status"));
                        }
                    }
                }
                (delivery, status, body, violation)
            }));
        }
        for task in tasks {
            let (delivery, status, body, violation) = task.await.unwrap();
            violations.extend(violation);
            if (delivery.event == "pull_request"
                && body["status"] != "ignored"
                && delivery.payload["pull_request"]["merged"] == true
                && !environments_for(delivery.payload["pull_request"]["base"]["ref"].as_str().unwrap()).is_empty())
                || delivery.event == "deployment"
            {
                effect_deliveries.insert(delivery.id.clone());
            }
            answers.push((delivery.id.clone(), status));
            if status != 200 {
                non_2xx += 1;
                pending.push(delivery);
            }
        }
        // What GitHub sent meanwhile: deployment and deployment_status events.
        let outbox = std::mem::take(&mut github_state.lock().unwrap().outbox);
        pending.extend(outbox.into_iter().map(|(event, payload)| Delivery { id: new_delivery_id(), event, payload }));
        if pending.iter().any(|d| answers.iter().any(|(id, s)| *id == d.id && matches!(*s, 409 | 504))) {
            // Dead or busy instances hold leases: redeliver after they run out, as an operator
            // redelivering a failed delivery later would.
            tokio::time::sleep(LEASE).await;
        }
    }
    faults_on.store(false, std::sync::atomic::Ordering::Relaxed);
    let dynamo_faults = fault_task.await.unwrap();
    let elapsed = started.elapsed();

    // ---------------------------------------------------------------- invariants
    let items = scan(&dynamo, &table).await;
    let gh = github_state.lock().unwrap();
    let mut per_key: HashMap<(String, u64, String), Vec<u64>> = HashMap::new();
    for (id, d) in &gh.deployments {
        let marker = d.marker.clone().unwrap();
        let mut parts = marker.split('#');
        let (repo, pr, env) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        per_key.entry((repo.to_owned(), pr.parse().unwrap(), env.to_owned())).or_default().push(*id);
    }
    let (mut duplicates, mut missing, mut unexpected) = (0, 0, 0);
    for (key, rejected) in &expected_deployments {
        let n = per_key.get(key).map_or(0, Vec::len);
        match (rejected, n) {
            (false, 1) | (true, 0) => {}
            (false, 0) => missing += 1,
            (false, _) => duplicates += n - 1,
            (true, _) => unexpected += n,
        }
    }
    unexpected += per_key.keys().filter(|k| !expected_deployments.contains_key(*k)).count();

    let mut bad_status_sequences = 0;
    for (id, d) in &gh.deployments {
        let states: Vec<&str> = d.statuses.iter().map(|(_, s)| s.as_str()).collect();
        if states != ["in_progress", "success"] {
            bad_status_sequences += 1;
            violations.push(format!("deployment {id} statuses {states:?}"));
        }
    }

    let ledger: HashMap<String, String> = items
        .iter()
        .filter(|i| attr_s(i, "sk") == Some("DELIVERY"))
        .map(|i| {
            (
                attr_s(i, "pk").unwrap().trim_start_matches("DELIVERY#").to_owned(),
                attr_s(i, "state").unwrap_or("").to_owned(),
            )
        })
        .collect();
    let not_done_ids: Vec<&String> =
        effect_deliveries.iter().filter(|id| ledger.get(*id).map(String::as_str) != Some("done")).collect();
    for id in &not_done_ids {
        let history: Vec<u16> = answers.iter().filter(|(a, _)| a == *id).map(|(_, s)| *s).collect();
        violations.push(format!("delivery {id} ended {:?} in the ledger; answers {history:?}", ledger.get(*id)));
    }
    let not_done = not_done_ids.len();

    let mut state_mismatches = 0;
    for (id, d) in &gh.deployments {
        let newest = d.statuses.iter().max_by_key(|(sid, _)| *sid);
        let stored = items.iter().find(|i| attr_s(i, "sk") == Some(&format!("DEPLOYMENT#{id}")));
        let stored = stored.map(|i| (attr_n(i, "status_id"), attr_s(i, "status_state").map(str::to_owned)));
        if newest.map(|(sid, s)| (Some(*sid), Some(s.clone()))) != stored {
            state_mismatches += 1;
            violations.push(format!("deployment {id}: GitHub newest {newest:?}, stored {stored:?}"));
        }
    }
    let last_non_2xx = answers.iter().rev().filter(|(_, s)| *s != 200).count();

    println!("chaos figures (seed {seed}):");
    println!("  deliveries answered        {} in {rounds} rounds, {:.1}s", answers.len(), elapsed.as_secs_f64());
    println!("  non-2xx answers redelivered {non_2xx}");
    println!(
        "  faults injected            GitHub {:?}; DynamoDB {dynamo_faults} failed requests; instances killed {}",
        gh.faults,
        crashes.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!(
        "  deployments on GitHub      {} for {} (PR, environment) pairs expected",
        gh.deployments.len(),
        expected_deployments.values().filter(|r| !**r).count()
    );
    println!("  duplicates {duplicates}, missing {missing}, unexpected {unexpected}");
    println!("  status sequences not [in_progress, success]: {bad_status_sequences}");
    println!("  deliveries with effects not recorded done: {not_done} of {}", effect_deliveries.len());
    println!("  stored states differing from GitHub's newest: {state_mismatches}");
    println!("  2xx for work not done: {}", violations.iter().filter(|v| v.starts_with("2xx")).count());

    assert!(violations.is_empty(), "violations: {violations:#?}");
    assert_eq!((duplicates, missing, unexpected), (0, 0, 0));
    assert_eq!(not_done, 0);
    assert!(last_non_2xx <= non_2xx);
    assert!(non_2xx > 0, "the faults never bit: this run proved nothing");
}
