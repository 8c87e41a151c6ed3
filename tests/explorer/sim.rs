//! The simulated world: in-memory ports whose every engine call (store reads and writes, GitHub
//! status posts and lists, the deploy hook) is a scheduling point, a single-threaded executor
//! that polls the real `Service`'s futures by hand, and the invariants, checked as the world
//! changes. Nothing here runs in parallel or reads the wall clock: a run is a function of its
//! scenario and its choices.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use deploy_webhook::domain::event::CommentCommand;
use deploy_webhook::domain::gates::ChecksWait;
use deploy_webhook::domain::ports::{
    Claim, Clock, CreationKey, CreationRecord, DeployAction, EnvKey, GitHub, GitHubError, HookAnswer, HookCall,
    HookDelivery, HookRef, Lease, NewDeployment, NewStatus, Permission, PullRequestHead, Store, StoreError, Versioned,
};
use deploy_webhook::domain::redelivery::RedeliveryState;
use deploy_webhook::domain::runs::{CallbackReport, EnvironmentState, Phase, RunResult};
use deploy_webhook::domain::types::{
    DeliveryId, DeploymentId, DeploymentState, Environment, RepoFullName, Sha, StatusId,
};
use deploy_webhook::domain::{
    CallbackToken, Deadline, Delivery, DeployRules, DeploymentCreated, DeploymentStatusEvent, Outcome, Service,
    ServiceError, ServiceSettings, StatusRecord, WebhookEvent,
};
use serde_json::json;

pub const REPO: &str = "octo-org/api";
pub const ENV: &str = "production";
/// The login our statuses are posted as.
pub const US: &str = "deploy-bot";
/// Someone else: the operator who ends a run by hand.
pub const PERSON: &str = "alice";
/// Who locks and unlocks the environment (`.lock` / `.unlock` comments).
pub const LOCKER: &str = "carol";
pub const LEASE_MS: u64 = 60_000;
/// Lambda's function timeout: an instance still working this long after it started is ended.
pub const FUNCTION_TIMEOUT_MS: u64 = 10_000;
pub const RUN_TIMEOUT_MS: u64 = 600_000;
pub const RETRY_MS: u64 = 30_000;
const T0: u64 = 1_800_000_000_000;

// ------------------------------------------------------------------ scenarios and choices

/// What the hook does when it is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookMode {
    Success,
    Failure,
    /// 202: the result comes later by callback.
    Accepted,
}

/// The size of one exploration: what exists and how much may go wrong.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    /// Deployments of the one environment, in merge order (the first is the oldest).
    pub deployments: Vec<u64>,
    /// What the hook may answer (each a choice when it is called).
    pub hook_modes: Vec<HookMode>,
    /// Store and GitHub faults (unavailable, ambiguous writes, 502 before and after applying).
    pub faults: u32,
    /// Instance deaths at a chosen step.
    pub kills: u32,
    /// Extra deliveries of a `deployment` event or a callback already answered.
    pub redeliveries: u32,
    /// Someone else posts this terminal status on this deployment, at a chosen moment.
    pub person: Option<(u64, DeploymentState)>,
    /// Sweeps the explorer may choose (the settling phase after them sweeps as needed).
    pub sweeps: u32,
    /// `.lock` and `.unlock` comments the explorer may choose (the settling phase unlocks).
    pub locks: u32,
    /// Whether the webhooks of our own statuses are delivered as moves too.
    pub own_status_hooks: bool,
    /// Steps chosen freely before the world is left to settle with no more faults.
    pub max_steps: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// The call fails and changes nothing.
    Unavailable,
    /// DynamoDB applied the write, the answer was lost, the SDK's retry found the condition
    /// failed and answered with the item: our own write, as a conflict.
    AmbiguousRetried,
    /// DynamoDB applied the write and the answer was lost: an error.
    AmbiguousLost,
    /// GitHub answered 502 after creating the status.
    FailAfter,
    /// The hook's answer.
    Answer(HookMode),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Load,
    Save,
    Due,
    RecordStatus,
    PostStatus(u64, DeploymentState),
    ListStatuses(u64),
    OwnLogin,
    /// The deploy system receives the hook call (an async one may call back from now on).
    HookSend(u64),
    /// The hook's answer comes back to the caller.
    HookAnswer(u64),
}

impl Op {
    fn faults(&self, scenario: &Scenario) -> Vec<Fault> {
        match self {
            Op::Save => vec![Fault::Unavailable, Fault::AmbiguousRetried, Fault::AmbiguousLost],
            Op::PostStatus(..) => vec![Fault::Unavailable, Fault::FailAfter],
            Op::Load | Op::Due | Op::RecordStatus | Op::ListStatuses(_) | Op::OwnLogin => vec![Fault::Unavailable],
            Op::HookSend(_) => scenario.hook_modes.iter().map(|m| Fault::Answer(*m)).collect(),
            Op::HookAnswer(_) => vec![],
        }
    }

    fn name(&self) -> String {
        match self {
            Op::Load => "load".into(),
            Op::Save => "save".into(),
            Op::Due => "due".into(),
            Op::RecordStatus => "record-status".into(),
            Op::PostStatus(d, s) => format!("post d{d} {s}"),
            Op::ListStatuses(d) => format!("list d{d}"),
            Op::OwnLogin => "own-login".into(),
            Op::HookSend(d) => format!("hook-send d{d}"),
            Op::HookAnswer(d) => format!("hook-answer d{d}"),
        }
    }
}

/// One move of the world.
#[derive(Clone, Debug, PartialEq)]
pub enum Choice {
    /// Task `task` goes on past the port call it waits at, with `fault`.
    Grant { task: usize, fault: Fault },
    /// The instance running `task` dies where it waits.
    Kill { task: usize },
    /// GitHub delivers the `deployment` event of deployment `d`.
    Deliver { d: u64 },
    /// GitHub delivers the `deployment_status` event of status `status`.
    StatusHook { status: u64 },
    /// The deploy system calls back with the result of deployment `d`.
    Callback { d: u64 },
    /// Someone else posts a terminal status on a deployment.
    Person { d: u64, state: DeploymentState },
    /// The scheduled sweep, with the clock moved to the next time something is due.
    Sweep,
    /// Time passes to the next time something is due, with no sweep yet.
    Wait,
    /// `.lock production` (true) or `.unlock production` (false), commented by [`LOCKER`].
    Command { lock: bool },
}

// ------------------------------------------------------------------ the world's state

#[derive(Clone, Debug)]
pub struct GhStatus {
    pub id: u64,
    pub state: DeploymentState,
    pub creator: &'static str,
    /// Ours, posted after someone else's terminal status that the posting instance had not
    /// read yet (the race no protocol closes).
    pub crossed: bool,
}

#[derive(Debug, Default)]
pub struct World {
    pub now: u64,
    pub step: u64,
    current: usize,
    pending: BTreeMap<usize, Op>,
    granted: BTreeMap<usize, Fault>,
    /// The environment's item: (version, state).
    pub env: (u64, EnvironmentState),
    /// GitHub: each deployment's statuses in creation order.
    pub statuses: BTreeMap<u64, Vec<GhStatus>>,
    next_status: u64,
    /// Statuses whose webhook GitHub still owes (not answered 2xx yet): status id → deployment.
    pub status_outbox: BTreeMap<u64, u64>,
    /// Hook calls: (deployment, task, step).
    pub hook_calls: Vec<(u64, usize, u64)>,
    /// Callbacks the deploy system owes: deployment → token.
    pub callbacks: BTreeMap<u64, String>,
    pub callbacks_answered: BTreeSet<u64>,
    /// What each task last saw of the store: the step of its last read or write.
    sync: BTreeMap<usize, u64>,
    /// Step at which each deployment was first written as the running one.
    running_since: BTreeMap<u64, u64>,
    /// Deployments whose hook answer (or end) reached the store.
    answer_stored: BTreeSet<u64>,
    /// Step at which someone else's terminal status for a deployment was answered 2xx.
    external_acked: BTreeMap<u64, u64>,
    /// Step at which a deployment's `deployment` event was first answered 2xx.
    pub delivered: BTreeMap<u64, u64>,
    /// Step at which a callback for a deployment was accepted.
    callback_accepted: BTreeMap<u64, u64>,
    /// Tasks that died or failed: whatever they had not written is lost.
    lost: BTreeSet<usize>,
    pub violations: Vec<String>,
    pub trace: Vec<String>,
    /// Merge order of each deployment (its rank).
    order: BTreeMap<u64, usize>,
    /// Since which step the stored state holds a lock.
    lock_since: Option<u64>,
}

type Shared = Arc<Mutex<World>>;

fn lock(w: &Shared) -> MutexGuard<'_, World> {
    w.lock().unwrap_or_else(|e| e.into_inner())
}

impl World {
    fn violation(&mut self, what: String) {
        let line = format!("step {}: {what}", self.step);
        self.trace.push(format!("!! {line}"));
        self.violations.push(line);
    }

    fn knows_external_end(&self, task: usize, d: u64) -> bool {
        match (self.external_acked.get(&d), self.sync.get(&task)) {
            (Some(acked), Some(seen)) => acked < seen,
            _ => false,
        }
    }

    fn has_terminal(&self, d: u64) -> bool {
        self.statuses.get(&d).is_some_and(|s| s.iter().any(|s| s.state.is_terminal()))
    }

    fn post(&mut self, d: u64, state: DeploymentState, creator: &'static str) -> u64 {
        self.next_status += 1;
        let id = self.next_status;
        let crossed = creator == US
            && self.statuses.get(&d).is_some_and(|s| s.iter().any(|s| s.creator != US && s.state.is_terminal()));
        self.statuses.entry(d).or_default().push(GhStatus { id, state, creator, crossed });
        self.status_outbox.insert(id, d);
        id
    }

    /// A status we post: nothing after our own terminal one, nor after someone else's that we
    /// had been told of.
    fn check_post(&mut self, task: usize, d: u64, state: DeploymentState) {
        let ours_ended =
            self.statuses.get(&d).is_some_and(|s| s.iter().any(|s| s.creator == US && s.state.is_terminal()));
        if ours_ended {
            self.violation(format!("t{task} posted {state} on d{d} after our own terminal status"));
        }
        if self.knows_external_end(task, d) {
            self.violation(format!("t{task} posted {state} on d{d} after someone else's terminal status it had seen"));
        }
    }

    /// A hook call: one run at a time, merge order, newest wins, and no second call while the
    /// first one's answer is known.
    fn check_hook_call(&mut self, task: usize, d: u64) {
        let rank = self.order[&d];
        let calls = self.hook_calls.clone();
        for &(other, _, _) in calls.iter().filter(|(o, _, _)| *o != d) {
            if !self.has_terminal(other) {
                self.violation(format!("t{task} called the hook for d{d} while d{other}'s run was live"));
            }
            if self.order[&other] > rank {
                self.violation(format!("t{task} called the hook for d{d} after the newer d{other}: older code"));
            }
        }
        let started = self.running_since.get(&d).copied().unwrap_or(u64::MAX);
        let newer_known: Vec<u64> = self
            .delivered
            .iter()
            .filter(|(o, at)| self.order[o] > rank && **at < started && !self.has_terminal(**o))
            .map(|(o, _)| *o)
            .collect();
        for o in newer_known {
            self.violation(format!("d{d} started although the newer d{o} was delivered before: newest must win"));
        }
        let earlier: Vec<usize> = calls.iter().filter(|(o, _, _)| *o == d).map(|(_, t, _)| *t).collect();
        if !earlier.is_empty() {
            if let Some(t) = earlier.iter().find(|t| !self.lost.contains(t)) {
                self.violation(format!(
                    "t{task} called the hook for d{d} again though t{t}, which called it, was not lost"
                ));
            }
            if self.answer_stored.contains(&d) {
                self.violation(format!("t{task} called the hook for d{d} again though its answer was recorded"));
            }
            if self.callback_accepted.contains_key(&d) {
                self.violation(format!("t{task} called the hook for d{d} again though its callback was accepted"));
            }
        }
        if self.knows_external_end(task, d) {
            self.violation(format!("t{task} called the hook for d{d} after someone else ended it"));
        }
        // A lock holds back whatever had not started when it was taken (none of these
        // deployments is the locker's).
        if self.lock_since.is_some_and(|since| since < started) {
            self.violation(format!("d{d} started while {LOCKER}'s lock was held"));
        }
        self.hook_calls.push((d, task, self.step));
    }

    fn stored(&mut self, state: EnvironmentState) {
        self.env = (self.env.0 + 1, state);
        let step = self.step;
        self.lock_since = match (&self.env.1.lock, self.lock_since) {
            (Some(_), None) => Some(step),
            (Some(_), since) => since,
            (None, _) => None,
        };
        let s = &self.env.1;
        if let Some(run) = &s.running {
            let d = run.deployment.id.0;
            self.running_since.entry(d).or_insert(step);
            if !matches!(run.phase, Phase::Starting) {
                self.answer_stored.insert(d);
            }
        }
        let ended: Vec<u64> = s.recent.iter().map(|r| r.id.0).collect();
        self.answer_stored.extend(ended);
    }

    fn crossed_an_external_end(&self, statuses: &[GhStatus]) -> bool {
        let Some(end) = statuses.iter().position(|s| s.creator != US && s.state.is_terminal()) else { return false };
        statuses[end + 1..].iter().all(|s| s.crossed)
    }

    /// At quiescence: every deployment ended once, the environment owes nothing.
    pub fn check_settled(&mut self, deployments: &[u64]) {
        let s = self.env.1.clone();
        if s.running.is_some() || !s.queue.is_empty() || !s.notices.is_empty() || s.due_at().is_some() {
            self.violation(format!(
                "not settled: running {:?}, queue {:?}, notices {}, due {:?}",
                s.running.as_ref().map(|r| r.deployment.id.0),
                s.queue.iter().map(|q| q.id.0).collect::<Vec<_>>(),
                s.notices.len(),
                s.due_at()
            ));
        }
        for &d in deployments {
            let statuses = self.statuses.get(&d).cloned().unwrap_or_default();
            let ours = statuses.iter().filter(|s| s.creator == US && s.state.is_terminal()).count();
            if ours > 1 {
                self.violation(format!("d{d} got {ours} terminal statuses from us: {statuses:?}"));
            }
            match statuses.last() {
                Some(last) if last.state.is_terminal() => {}
                // The one race no protocol closes (GitHub has no conditional status post): a
                // status of ours decided before we had read someone else's terminal one, and
                // posted after it (the check at the post saw that it was not known). Recorded
                // in docs/RELIABILITY.md.
                _ if self.crossed_an_external_end(&statuses) => {}
                _ => self.violation(format!("d{d} does not end in a terminal status: {statuses:?}")),
            }
        }
    }
}

// ------------------------------------------------------------------ scheduling points

/// Waits until the scheduler lets the current task past `op`, and says with which fault.
struct Gate {
    world: Shared,
    op: Option<Op>,
}

impl Future for Gate {
    type Output = Fault;

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Fault> {
        let op = self.op.take();
        let mut w = lock(&self.world);
        let task = w.current;
        if let Some(fault) = w.granted.remove(&task) {
            return Poll::Ready(fault);
        }
        if let Some(op) = op {
            w.pending.insert(task, op);
        }
        Poll::Pending
    }
}

fn gate(world: &Shared, op: Op) -> Gate {
    Gate { world: world.clone(), op: Some(op) }
}

fn unavailable() -> StoreError {
    StoreError::Unavailable("simulated".into())
}

fn github_down() -> GitHubError {
    GitHubError::Unavailable("simulated 502".into())
}

// ------------------------------------------------------------------ the ports

#[derive(Clone)]
pub struct SimStore(Shared);

impl Store for SimStore {
    async fn claim_deployment_creation(
        &self,
        _: &CreationKey,
        _: &Sha,
        _: &DeliveryId,
        _: bool,
        _: Duration,
    ) -> Result<Claim<CreationRecord>, StoreError> {
        Err(StoreError::Unavailable("creations are not simulated".into()))
    }

    async fn read_deployment_creation(&self, _: &CreationKey) -> Result<Option<CreationRecord>, StoreError> {
        Ok(None)
    }

    async fn finish_deployment_creation(
        &self,
        _: &CreationKey,
        _: &Lease,
        _: &CreationRecord,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    async fn release_deployment_creation(&self, _: &CreationKey, _: &Lease) -> Result<(), StoreError> {
        Ok(())
    }

    async fn record_deployment_status(
        &self,
        _: &RepoFullName,
        _: DeploymentId,
        _: Option<&Environment>,
        _: &StatusRecord,
    ) -> Result<bool, StoreError> {
        match gate(&self.0, Op::RecordStatus).await {
            Fault::Unavailable => Err(unavailable()),
            _ => Ok(true),
        }
    }

    async fn load_environment(&self, _: &EnvKey) -> Result<Versioned, StoreError> {
        let fault = gate(&self.0, Op::Load).await;
        let mut w = lock(&self.0);
        if fault == Fault::Unavailable {
            return Err(unavailable());
        }
        let (task, step) = (w.current, w.step);
        w.sync.insert(task, step);
        Ok(Versioned { state: w.env.1.clone(), version: w.env.0 })
    }

    async fn save_environment(
        &self,
        _: &EnvKey,
        state: &EnvironmentState,
        expected: u64,
    ) -> Result<Result<u64, Versioned>, StoreError> {
        let fault = gate(&self.0, Op::Save).await;
        let mut w = lock(&self.0);
        if fault == Fault::Unavailable {
            return Err(unavailable());
        }
        let applied = w.env.0 == expected;
        if applied {
            w.stored(state.clone());
        }
        if fault == Fault::AmbiguousLost {
            return Err(unavailable());
        }
        let (task, step) = (w.current, w.step);
        w.sync.insert(task, step);
        if applied && fault == Fault::None {
            Ok(Ok(w.env.0))
        } else {
            Ok(Err(Versioned { state: w.env.1.clone(), version: w.env.0 }))
        }
    }

    async fn due_environments(&self, now_ms: u64, _: usize) -> Result<Vec<(EnvKey, Versioned)>, StoreError> {
        let fault = gate(&self.0, Op::Due).await;
        let mut w = lock(&self.0);
        if fault == Fault::Unavailable {
            return Err(unavailable());
        }
        let (task, step) = (w.current, w.step);
        w.sync.insert(task, step);
        if w.env.1.due_at().is_some_and(|due| due <= now_ms) {
            Ok(vec![(env_key(), Versioned { state: w.env.1.clone(), version: w.env.0 })])
        } else {
            Ok(vec![])
        }
    }

    async fn claim_comment(
        &self,
        _: &RepoFullName,
        _: u64,
        _: &DeliveryId,
        _: Duration,
    ) -> Result<Claim<String>, StoreError> {
        Ok(Claim::Acquired(Lease { token: "comment".into(), attempt: 1 }, ()))
    }

    async fn finish_comment(&self, _: &RepoFullName, _: u64, _: &Lease, _: &str) -> Result<(), StoreError> {
        Ok(())
    }

    async fn release_comment(&self, _: &RepoFullName, _: u64, _: &Lease) -> Result<(), StoreError> {
        Ok(())
    }

    async fn load_checks_wait(&self, _: &RepoFullName, _: &Sha) -> Result<Versioned<ChecksWait>, StoreError> {
        Ok(Versioned { state: ChecksWait::default(), version: 0 })
    }

    async fn save_checks_wait(
        &self,
        _: &RepoFullName,
        _: &Sha,
        _: &ChecksWait,
        expected: u64,
    ) -> Result<Result<u64, Versioned<ChecksWait>>, StoreError> {
        Ok(Ok(expected + 1))
    }

    async fn due_checks_waits(&self, _: u64, _: usize) -> Result<Vec<(RepoFullName, Sha)>, StoreError> {
        Ok(vec![])
    }

    async fn load_redelivery(&self, _: &HookRef) -> Result<Versioned<RedeliveryState>, StoreError> {
        Ok(Versioned { state: RedeliveryState::default(), version: 0 })
    }

    async fn save_redelivery(
        &self,
        _: &HookRef,
        _: &RedeliveryState,
        expected: u64,
    ) -> Result<Result<u64, Versioned<RedeliveryState>>, StoreError> {
        Ok(Ok(expected + 1))
    }
}

#[derive(Clone)]
pub struct SimGitHub(Shared);

impl GitHub for SimGitHub {
    async fn create_deployment(
        &self,
        _: &RepoFullName,
        _: &NewDeployment,
        _: Deadline,
    ) -> Result<CreationRecord, GitHubError> {
        Err(github_down())
    }

    async fn find_deployment(
        &self,
        _: &RepoFullName,
        _: &Sha,
        _: &Environment,
        _: &str,
        _: Deadline,
    ) -> Result<Option<DeploymentId>, GitHubError> {
        Ok(None)
    }

    async fn create_deployment_status(
        &self,
        _: &RepoFullName,
        id: DeploymentId,
        status: &NewStatus,
        _: Deadline,
    ) -> Result<StatusRecord, GitHubError> {
        let fault = gate(&self.0, Op::PostStatus(id.0, status.state)).await;
        let mut w = lock(&self.0);
        if fault == Fault::Unavailable {
            return Err(github_down());
        }
        let task = w.current;
        w.check_post(task, id.0, status.state);
        let sid = w.post(id.0, status.state, US);
        if fault == Fault::FailAfter {
            return Err(github_down());
        }
        Ok(record(sid, status.state, US))
    }

    async fn list_deployment_statuses(
        &self,
        _: &RepoFullName,
        id: DeploymentId,
        _: Deadline,
    ) -> Result<Vec<StatusRecord>, GitHubError> {
        let fault = gate(&self.0, Op::ListStatuses(id.0)).await;
        let w = lock(&self.0);
        if fault == Fault::Unavailable {
            return Err(github_down());
        }
        // GitHub lists the newest first.
        let list = w.statuses.get(&id.0).cloned().unwrap_or_default();
        Ok(list.iter().rev().map(|s| record(s.id, s.state, s.creator)).collect())
    }

    async fn own_login(&self, _: Deadline) -> Result<String, GitHubError> {
        match gate(&self.0, Op::OwnLogin).await {
            Fault::Unavailable => Err(github_down()),
            _ => Ok(US.to_owned()),
        }
    }

    async fn permission(&self, _: &RepoFullName, _: &str, _: Deadline) -> Result<Permission, GitHubError> {
        Ok(Permission { permission: "write".into(), role: Some("write".into()) })
    }

    async fn pull_request(&self, _: &RepoFullName, _: u64, _: Deadline) -> Result<PullRequestHead, GitHubError> {
        Err(github_down())
    }

    async fn react(&self, _: &RepoFullName, _: u64, _: &str, _: Deadline) -> Result<(), GitHubError> {
        Ok(())
    }

    async fn comment(&self, _: &RepoFullName, _: u64, _: &str, _: Deadline) -> Result<(), GitHubError> {
        Ok(())
    }

    async fn list_hook_deliveries(&self, _: &HookRef, _: &str, _: Deadline) -> Result<Vec<HookDelivery>, GitHubError> {
        Ok(vec![])
    }

    async fn redeliver(&self, _: &HookRef, _: u64, _: Deadline) -> Result<(), GitHubError> {
        Ok(())
    }
}

fn record(id: u64, state: DeploymentState, creator: &str) -> StatusRecord {
    StatusRecord {
        id: StatusId(id),
        state,
        description: None,
        log_url: None,
        environment_url: None,
        creator: Some(creator.to_owned()),
        created_at: None,
    }
}

#[derive(Clone)]
pub struct SimHook(Shared);

impl DeployAction for SimHook {
    async fn deploy(&self, call: &HookCall<'_>, _: Deadline) -> HookAnswer {
        let d = call.deployment.id.0;
        let mode = match gate(&self.0, Op::HookSend(d)).await {
            Fault::Answer(mode) => mode,
            _ => HookMode::Success,
        };
        {
            let mut w = lock(&self.0);
            let task = w.current;
            w.check_hook_call(task, d);
            if mode == HookMode::Accepted {
                let token = call.callback_url.as_deref().and_then(|u| u.rsplit('/').next()).unwrap_or_default();
                w.callbacks.insert(d, token.to_owned());
                w.callbacks_answered.remove(&d);
            }
        }
        gate(&self.0, Op::HookAnswer(d)).await;
        match mode {
            HookMode::Accepted => HookAnswer::Accepted,
            HookMode::Success => HookAnswer::Finished(result(DeploymentState::Success)),
            HookMode::Failure => HookAnswer::Finished(result(DeploymentState::Failure)),
        }
    }
}

fn result(state: DeploymentState) -> RunResult {
    RunResult { state, description: format!("the hook said {state}"), log_url: None, environment_url: None }
}

#[derive(Clone)]
pub struct SimClock(Shared);

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        lock(&self.0).now
    }
}

fn env_key() -> EnvKey {
    EnvKey { repo: RepoFullName::parse(REPO).unwrap(), environment: Environment::parse(ENV).unwrap() }
}

// ------------------------------------------------------------------ the executor

type Svc = Service<SimStore, SimGitHub, SimHook, SimClock>;
type TaskFuture = Pin<Box<dyn Future<Output = Result<Outcome, ServiceError>>>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TaskKind {
    Deliver(u64),
    StatusHook(u64),
    Callback(u64),
    Sweep,
    Command,
}

struct Task {
    id: usize,
    kind: TaskKind,
    started_ms: u64,
    future: TaskFuture,
}

/// Picks one of `n` enabled choices.
pub trait Chooser {
    fn pick(&mut self, n: usize) -> usize;
}

/// The end of one run: what broke, and how to see it again.
pub struct RunReport {
    pub violations: Vec<String>,
    pub trace: Vec<String>,
    /// The index picked at each free choice.
    pub picks: Vec<usize>,
    pub steps: u64,
    /// GitHub's statuses at the end, per deployment.
    pub statuses: BTreeMap<u64, Vec<GhStatus>>,
    /// Every hook call: (deployment, task, step).
    pub hook_calls: Vec<(u64, usize, u64)>,
}

pub struct Sim {
    world: Shared,
    svc: Arc<Svc>,
    scenario: Scenario,
    tasks: Vec<Task>,
    next_task: usize,
    budget: Budget,
    picks: Vec<usize>,
    deliveries: u64,
    /// Outside events whose last delivery failed: GitHub or the deploy system tries again
    /// later, so in the settling phase only after time has passed (a sweep).
    failed: BTreeSet<TaskKind>,
    comments: u64,
}

#[derive(Clone, Copy)]
struct Budget {
    faults: u32,
    kills: u32,
    redeliveries: u32,
    sweeps: u32,
    person: bool,
    locks: u32,
}

/// Steps the settling phase may take before the world counts as unable to settle.
const SETTLE_STEPS: u64 = 2_000;

impl Sim {
    pub fn new(scenario: &Scenario) -> Self {
        let world: Shared = Arc::default();
        {
            let mut w = lock(&world);
            w.now = T0;
            w.order = scenario.deployments.iter().enumerate().map(|(i, d)| (*d, i)).collect();
        }
        let mut settings = ServiceSettings::new(DeployRules::parse(&format!("main={ENV}")).unwrap());
        settings.lease = Duration::from_millis(LEASE_MS);
        settings.busy_wait = Duration::ZERO;
        settings.run_timeout = Duration::from_millis(RUN_TIMEOUT_MS);
        settings.retry_after = Duration::from_millis(RETRY_MS);
        settings.public_url = Some("https://hooks.example".into());
        let svc = Service::with_clock(
            SimStore(world.clone()),
            SimGitHub(world.clone()),
            SimHook(world.clone()),
            SimClock(world.clone()),
            settings,
        );
        Self {
            world,
            svc: Arc::new(svc),
            tasks: Vec::new(),
            next_task: 1,
            budget: Budget {
                faults: scenario.faults,
                kills: scenario.kills,
                redeliveries: scenario.redeliveries,
                sweeps: scenario.sweeps,
                person: scenario.person.is_some(),
                locks: scenario.locks,
            },
            scenario: scenario.clone(),
            picks: Vec::new(),
            deliveries: 0,
            failed: BTreeSet::new(),
            comments: 0,
        }
    }

    /// The moves open now. `calm`: the settling phase, with no faults and no optional moves.
    fn choices(&self, calm: bool) -> Vec<Choice> {
        let w = lock(&self.world);
        let mut out = Vec::new();
        let busy = |kind: TaskKind| self.tasks.iter().any(|t| t.kind == kind) || (calm && self.failed.contains(&kind));
        for task in &self.tasks {
            let Some(op) = w.pending.get(&task.id) else { continue };
            let faults = op.faults(&self.scenario);
            let answers: Vec<Fault> = faults.iter().copied().filter(|f| matches!(f, Fault::Answer(_))).collect();
            if answers.is_empty() {
                out.push(Choice::Grant { task: task.id, fault: Fault::None });
            } else {
                out.extend(answers.iter().map(|f| Choice::Grant { task: task.id, fault: *f }));
            }
            if !calm && self.budget.faults > 0 {
                out.extend(
                    faults
                        .iter()
                        .filter(|f| !matches!(f, Fault::Answer(_)))
                        .map(|f| Choice::Grant { task: task.id, fault: *f }),
                );
            }
            if !calm && self.budget.kills > 0 {
                out.push(Choice::Kill { task: task.id });
            }
        }
        for &d in &self.scenario.deployments {
            let acked = w.delivered.contains_key(&d);
            if !busy(TaskKind::Deliver(d)) && (!acked || (!calm && self.budget.redeliveries > 0)) {
                out.push(Choice::Deliver { d });
            }
        }
        for (&status, &d) in &w.status_outbox {
            let ours = w.statuses[&d].iter().any(|s| s.id == status && s.creator == US);
            if (!ours || self.scenario.own_status_hooks) && !busy(TaskKind::StatusHook(status)) {
                out.push(Choice::StatusHook { status });
            }
        }
        for &d in w.callbacks.keys() {
            let answered = w.callbacks_answered.contains(&d);
            if !busy(TaskKind::Callback(d)) && (!answered || (!calm && self.budget.redeliveries > 0)) {
                out.push(Choice::Callback { d });
            }
        }
        if let Some((d, state)) = self.scenario.person.filter(|_| self.budget.person && !calm) {
            out.push(Choice::Person { d, state });
        }
        let due = w.env.1.due_at();
        let sweeping = self.tasks.iter().any(|t| t.kind == TaskKind::Sweep);
        if due.is_some() && !sweeping && (calm || self.budget.sweeps > 0) {
            out.push(Choice::Sweep);
        }
        if due.is_some_and(|due| due > w.now) && !calm && self.budget.sweeps > 0 {
            out.push(Choice::Wait);
        }
        let commenting = self.tasks.iter().any(|t| t.kind == TaskKind::Command);
        if !commenting && !calm && self.budget.locks > 0 {
            out.push(Choice::Command { lock: true });
            out.push(Choice::Command { lock: false });
        }
        // Someone unlocks in the end, or the queue would wait for good.
        if !commenting && calm && w.env.1.lock.is_some() {
            out.push(Choice::Command { lock: false });
        }
        out
    }

    fn label(&self, choice: &Choice) -> String {
        let w = lock(&self.world);
        match choice {
            Choice::Grant { task, fault } => {
                let op = w.pending.get(task).map(Op::name).unwrap_or_default();
                match fault {
                    Fault::None => format!("t{task} {op}"),
                    Fault::Answer(mode) => format!("t{task} {op} {}", format!("{mode:?}").to_lowercase()),
                    other => format!("t{task} {op} {}", fault_name(*other)),
                }
            }
            Choice::Kill { task } => format!("kill t{task}"),
            Choice::Deliver { d } => format!("deliver d{d}"),
            Choice::StatusHook { status } => {
                let d = w.status_outbox[status];
                let s = w.statuses[&d].iter().find(|s| s.id == *status).unwrap();
                format!("status-hook d{d} {} by {}", s.state, s.creator)
            }
            Choice::Callback { d } => format!("callback d{d}"),
            Choice::Person { d, state } => format!("person {state} d{d}"),
            Choice::Sweep => "sweep".into(),
            Choice::Wait => "wait".into(),
            Choice::Command { lock: true } => "lock".into(),
            Choice::Command { lock: false } => "unlock".into(),
        }
    }

    /// Plays one run: `script` moves first (each the label of an enabled move), then `chooser`
    /// picks until `max_steps`, then the world settles by itself.
    pub fn run(mut self, script: &[&str], chooser: &mut dyn Chooser) -> RunReport {
        let mut free_steps = 0usize;
        let mut settle_steps = 0u64;
        let scripted = !script.is_empty();
        let mut script = script.iter();
        loop {
            // A scripted run settles as soon as its script is played.
            let scripted_out = scripted && script.len() == 0;
            let calm = scripted_out || free_steps >= self.scenario.max_steps;
            let mut choices = self.choices(calm);
            if choices.is_empty() && !calm {
                free_steps = self.scenario.max_steps;
                continue;
            }
            if choices.is_empty() {
                break;
            }
            let choice = if let Some(want) = script.next() {
                let labels: Vec<String> = choices.iter().map(|c| self.label(c)).collect();
                match labels.iter().position(|l| l == want) {
                    Some(i) => choices.swap_remove(i),
                    None => panic!("the script's move `{want}` is not open; open: {labels:?}"),
                }
            } else if calm {
                settle_steps += 1;
                if settle_steps > SETTLE_STEPS {
                    lock(&self.world).violation("the world never settles".into());
                    break;
                }
                choices.swap_remove(0)
            } else {
                free_steps += 1;
                let i = if choices.len() == 1 {
                    0
                } else {
                    let i = chooser.pick(choices.len());
                    self.picks.push(i);
                    i
                };
                choices.swap_remove(i)
            };
            let label = self.label(&choice);
            {
                let mut w = lock(&self.world);
                w.step += 1;
                let line = format!("{:>4} {label}", w.step);
                w.trace.push(line);
            }
            self.play(choice);
            if !lock(&self.world).violations.is_empty() {
                break;
            }
        }
        let mut w = lock(&self.world);
        if w.violations.is_empty() {
            let deployments = self.scenario.deployments.clone();
            w.check_settled(&deployments);
        }
        RunReport {
            violations: std::mem::take(&mut w.violations),
            trace: std::mem::take(&mut w.trace),
            picks: std::mem::take(&mut self.picks),
            steps: w.step,
            statuses: w.statuses.clone(),
            hook_calls: w.hook_calls.clone(),
        }
    }

    fn play(&mut self, choice: Choice) {
        match choice {
            Choice::Grant { task, fault } => {
                if !matches!(fault, Fault::None | Fault::Answer(_)) {
                    self.budget.faults -= 1;
                }
                {
                    let mut w = lock(&self.world);
                    w.pending.remove(&task);
                    w.granted.insert(task, fault);
                }
                self.poll(task);
            }
            Choice::Kill { task } => {
                self.budget.kills -= 1;
                self.kill(task);
            }
            Choice::Deliver { d } => {
                if lock(&self.world).delivered.contains_key(&d) {
                    self.budget.redeliveries -= 1;
                }
                self.deliveries += 1;
                let delivery = Delivery {
                    id: DeliveryId::parse(&format!("delivery-d{d}")).unwrap(),
                    event: WebhookEvent::DeploymentCreated(deployment_event(d, lock(&self.world).order[&d])),
                    callback_base: None,
                };
                let svc = self.svc.clone();
                self.spawn(TaskKind::Deliver(d), Box::pin(async move { svc.handle(delivery, deadline()).await }));
            }
            Choice::StatusHook { status } => {
                let (d, s) = {
                    let w = lock(&self.world);
                    let d = w.status_outbox[&status];
                    (d, w.statuses[&d].iter().find(|s| s.id == status).unwrap().clone())
                };
                let delivery = Delivery {
                    id: DeliveryId::parse(&format!("status-{status}")).unwrap(),
                    event: WebhookEvent::DeploymentStatus(DeploymentStatusEvent {
                        repo: RepoFullName::parse(REPO).unwrap(),
                        deployment_id: DeploymentId(d),
                        environment: Some(Environment::parse(ENV).unwrap()),
                        status: record(s.id, s.state, s.creator),
                        installation: None,
                    }),
                    callback_base: None,
                };
                let svc = self.svc.clone();
                self.spawn(
                    TaskKind::StatusHook(status),
                    Box::pin(async move { svc.handle(delivery, deadline()).await }),
                );
            }
            Choice::Callback { d } => {
                if lock(&self.world).callbacks_answered.contains(&d) {
                    self.budget.redeliveries -= 1;
                }
                let token = lock(&self.world).callbacks[&d].clone();
                let token = CallbackToken::parse(&token).expect("the hook got a callback token");
                let svc = self.svc.clone();
                let report = CallbackReport::Finished(result(DeploymentState::Success));
                self.spawn(
                    TaskKind::Callback(d),
                    Box::pin(async move { svc.handle_callback(&token, report, deadline()).await }),
                );
            }
            Choice::Person { d, state } => {
                self.budget.person = false;
                lock(&self.world).post(d, state, PERSON);
            }
            Choice::Wait => {
                self.budget.sweeps = self.budget.sweeps.saturating_sub(1);
                self.pass_time();
            }
            Choice::Command { lock } => {
                self.budget.locks = self.budget.locks.saturating_sub(1);
                self.comments += 1;
                let delivery = Delivery {
                    id: DeliveryId::parse(&format!("comment-{}", self.comments)).unwrap(),
                    event: WebhookEvent::Command(CommentCommand {
                        repo: RepoFullName::parse(REPO).unwrap(),
                        installation: None,
                        comment_id: self.comments,
                        author: LOCKER.into(),
                        issue: 1,
                        on_pull_request: true,
                        line: format!(".{} {ENV}", if lock { "lock" } else { "unlock" }),
                    }),
                    callback_base: None,
                };
                let svc = self.svc.clone();
                self.spawn(TaskKind::Command, Box::pin(async move { svc.handle(delivery, deadline()).await }));
            }
            Choice::Sweep => {
                self.budget.sweeps = self.budget.sweeps.saturating_sub(1);
                self.pass_time();
                let svc = self.svc.clone();
                self.spawn(
                    TaskKind::Sweep,
                    Box::pin(async move {
                        svc.sweep(deadline()).await.map(|_| Outcome::Ignored { reason: "swept".into() })
                    }),
                );
            }
        }
    }

    /// Moves the clock to the next time something is due. Every instance that started a
    /// function timeout before is gone by then.
    fn pass_time(&mut self) {
        self.failed.clear();
        let due = lock(&self.world).env.1.due_at().unwrap_or(0);
        if due <= lock(&self.world).now {
            return;
        }
        lock(&self.world).now = due;
        let dead: Vec<usize> =
            self.tasks.iter().filter(|t| t.started_ms + FUNCTION_TIMEOUT_MS <= due).map(|t| t.id).collect();
        for task in dead {
            self.kill(task);
        }
    }

    fn spawn(&mut self, kind: TaskKind, future: TaskFuture) {
        let id = self.next_task;
        self.next_task += 1;
        let started_ms = lock(&self.world).now;
        self.tasks.push(Task { id, kind, started_ms, future });
        self.poll(id);
    }

    fn kill(&mut self, task: usize) {
        self.tasks.retain(|t| t.id != task);
        let mut w = lock(&self.world);
        w.pending.remove(&task);
        w.granted.remove(&task);
        w.lost.insert(task);
        w.trace.push(format!("     (t{task} is gone)"));
    }

    /// Runs `task` until it waits at its next port call or ends.
    fn poll(&mut self, task: usize) {
        let Some(pos) = self.tasks.iter().position(|t| t.id == task) else { return };
        lock(&self.world).current = task;
        let mut cx = Context::from_waker(Waker::noop());
        let Poll::Ready(outcome) = self.tasks[pos].future.as_mut().poll(&mut cx) else {
            let w = lock(&self.world);
            assert!(w.pending.contains_key(&task), "t{task} waits on something that is not a port call");
            return;
        };
        let done = self.tasks.remove(pos);
        if outcome.is_err() {
            self.failed.insert(done.kind);
        } else {
            self.failed.remove(&done.kind);
        }
        let mut w = lock(&self.world);
        let step = w.step;
        w.trace.push(format!("     (t{task} answered {})", describe(&outcome)));
        match (done.kind, &outcome) {
            (_, Err(ServiceError::UnknownRun)) => {}
            (_, Err(_)) => {
                w.lost.insert(task);
            }
            (TaskKind::Deliver(d), Ok(_)) => {
                w.delivered.entry(d).or_insert(step);
            }
            (TaskKind::StatusHook(status), Ok(_)) => {
                if let Some(d) = w.status_outbox.remove(&status) {
                    let external =
                        w.statuses[&d].iter().any(|s| s.id == status && s.creator != US && s.state.is_terminal());
                    if external {
                        w.external_acked.entry(d).or_insert(step);
                    }
                }
            }
            (TaskKind::Callback(d), Ok(Outcome::Callback { verdict, .. })) => {
                w.callbacks_answered.insert(d);
                if *verdict == deploy_webhook::domain::runs::Verdict::Accepted {
                    w.callback_accepted.entry(d).or_insert(step);
                }
            }
            _ => {}
        }
        if let (TaskKind::Callback(d), Err(ServiceError::UnknownRun)) = (done.kind, &outcome) {
            w.callbacks_answered.insert(d);
        }
    }
}

fn describe(outcome: &Result<Outcome, ServiceError>) -> String {
    match outcome {
        Ok(o) => format!("{} {}", o.status(), o.detail()),
        Err(e) => format!("error: {e}"),
    }
}

fn fault_name(fault: Fault) -> &'static str {
    match fault {
        Fault::None => "",
        Fault::Unavailable => "unavailable",
        Fault::AmbiguousRetried => "ambiguous-retried",
        Fault::AmbiguousLost => "ambiguous-lost",
        Fault::FailAfter => "fail-after",
        Fault::Answer(_) => "answer",
    }
}

fn deadline() -> Deadline {
    Deadline::after(Duration::from_secs(3600))
}

/// The `deployment` event of deployment `d`, merged `order`-th.
fn deployment_event(d: u64, order: usize) -> DeploymentCreated {
    DeploymentCreated {
        repo: RepoFullName::parse(REPO).unwrap(),
        id: DeploymentId(d),
        sha: Sha::parse(&format!("{d:040x}")).unwrap(),
        git_ref: "main".into(),
        task: "deploy".into(),
        environment: Environment::parse(ENV).unwrap(),
        creator: Some(US.into()),
        description: None,
        created_at: Some(format!("2026-12-01T10:00:{:02}Z", 30 + order)),
        payload: json!({ "deploy_webhook": { "merged_at": format!("2026-12-01T09:00:{:02}Z", order) } }),
        installation: None,
        created_via_app: None,
    }
}
