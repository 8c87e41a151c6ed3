//! One environment's runs, as a pure state machine: at most one run at a time, the newest queued
//! deployment wins, timeouts, and the statuses each step owes GitHub.
//!
//! The whole state of one (repository, environment) is one [`EnvironmentState`], stored as one
//! versioned item. Every change is `apply(state, trigger) → state'`, written with a condition on
//! the version, so two Lambda instances can never both change it; a conflict re-applies the
//! trigger to the fresh state. Effects on GitHub and the deploy hook are run by whoever holds the
//! state's [`EnvLease`]: [`next_work`] says what is owed, [`after_work`] records what was done.
//! A holder that dies leaves an expired lease, which the next trigger (or the sweep) takes over
//! in "reconcile" mode: it asks GitHub what was already posted before posting anything again.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::types::{DeploymentId, DeploymentState, Sha, truncate_chars};

/// How many finished runs an environment remembers (for duplicate and late-callback answers).
pub const RECENT_RUNS: usize = 20;
/// GitHub rejects deployment status descriptions longer than this.
pub const DESCRIPTION_LIMIT: usize = 140;

/// How new a deployment is, within its environment: the time its intent arose (a merge's
/// `merged_at`, else the deployment's `created_at`, both RFC 3339 UTC, which sort as text), then
/// its id. A deployment that GitHub created late for an old merge (a redelivery hours later)
/// therefore never outranks a later merge, although its id is higher.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Rank(pub String, pub u64);

/// What a run needs to start, taken from the `deployment` event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeploymentToRun {
    pub id: DeploymentId,
    pub sha: Sha,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub task: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator: Option<String>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub payload: Value,
    pub rank: Rank,
    /// Where the deploy system calls back (`…/callbacks/`), from the request that brought it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_base: Option<String>,
    pub delivery: String,
    pub arrived_ms: u64,
    /// Who asked for it (a merge's author, a command's commenter): a lock holder's own
    /// deployments are not held by the lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<String>,
    /// The pull request it deploys, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pr: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunResult {
    pub state: DeploymentState,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_url: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Post `in_progress`, then call the hook.
    Starting,
    /// The hook answered 202: waiting for its callback until the deadline.
    Awaiting,
    /// The result is known; post it (unless someone else already did: `external`), then end.
    Finishing { result: RunResult, external: bool },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub deployment: DeploymentToRun,
    #[serde(flatten)]
    pub phase: Phase,
    /// SHA-256 (hex, first 32 digits) of the callback token; the token itself is never stored.
    pub token_hash: String,
    pub started_ms: u64,
    pub deadline_ms: u64,
    #[serde(default)]
    pub in_progress_posted: bool,
    /// A terminal callback that arrived while the hook call was still in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_result: Option<RunResult>,
}

/// A status decided but not yet posted: `queued`, `inactive` or an `in_progress` from a callback.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub deployment: DeploymentId,
    pub state: DeploymentState,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_url: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishedRun {
    pub id: DeploymentId,
    pub state: DeploymentState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha: Option<Sha>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pr: Option<u64>,
    pub rank: Rank,
    pub at_ms: u64,
}

/// A sticky lock (`.lock <env> [reason]`): only the holder's deployments run until `.unlock`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvLock {
    pub holder: String,
    pub reason: String,
    pub at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvLease {
    pub token: String,
    pub until_ms: u64,
    /// Taken over from a holder whose lease expired: check GitHub before posting again.
    #[serde(default)]
    pub reconcile: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<Run>,
    /// Waiting deployments, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queue: Vec<DeploymentToRun>,
    /// The rank of the newest deployment that ever started here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Rank>,
    /// Statuses owed to GitHub, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<Notice>,
    /// The last finished (or superseded) deployments, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<FinishedRun>,
    /// Deployments at or below this rank fell out of `recent`: a late delivery for one of them
    /// is answered `stale` and changes nothing here (the runner asks GitHub whether it still
    /// needs its final status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forgotten_up_to: Option<Rank>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<EnvLease>,
    /// Work is owed but its last attempt failed (GitHub down): the sweep retries from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at_ms: Option<u64>,
    /// The last successful deployment here (for status and rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<FinishedRun>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<EnvLock>,
    /// Deployments someone else ended (a terminal status not posted by us) before their
    /// `deployment` event arrived here: when it comes, they never run. The newest
    /// [`RECENT_RUNS`], oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ended_elsewhere: Vec<EndedElsewhere>,
}

/// A terminal status that someone else posted for a deployment this environment has not seen yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedElsewhere {
    pub id: DeploymentId,
    pub state: DeploymentState,
}

/// The settings a transition needs.
#[derive(Clone, Debug)]
pub struct RunSettings {
    pub lease_ms: u64,
    pub run_timeout_ms: u64,
}

/// Who applies a change, and when.
#[derive(Clone, Copy, Debug)]
pub struct Ctx<'a> {
    pub now: u64,
    /// The caller's lease token.
    pub token: &'a str,
    /// The callback secret for a run this caller starts (random, from the caller; only its hash
    /// is kept in the state).
    pub secret: &'a str,
}

/// What the state keeps of a callback secret: the first 128 bits of its SHA-256, in hex.
pub fn secret_hash(secret: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(secret.as_bytes())[..16])
}

/// What changes an environment's state.
#[derive(Clone, Debug, PartialEq)]
pub enum Trigger {
    /// A `deployment` event for this environment.
    Arrived(DeploymentToRun),
    /// A verified callback (its token hash matched) for a deployment.
    Callback { id: DeploymentId, token_hash: String, report: CallbackReport },
    /// A terminal `deployment_status` that someone else posted (its creator is not us) for a
    /// deployment here: the deployment ends in that state, whatever it was doing, and nothing
    /// more is posted for it. Our own terminal statuses come back as webhooks too, but they
    /// never become this trigger: the holder that posted one ends the run itself.
    TerminalStatus { id: DeploymentId, state: DeploymentState },
    /// The sweep: heal whatever is due.
    Sweep,
    /// `.lock`: `holder` holds the environment (a lock held by someone else stays theirs).
    Lock { holder: String, reason: String },
    /// `.unlock`: the lock goes, and the newest waiting deployment starts.
    Unlock,
}

#[derive(Clone, Debug, PartialEq)]
pub enum CallbackReport {
    InProgress { description: Option<String>, log_url: Option<String> },
    Finished(RunResult),
}

/// What the trigger meant, for the caller's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The deployment starts now (this caller holds the lease).
    Started,
    /// Queued behind the running deployment.
    Queued { behind: DeploymentId },
    /// Older than a deployment that already started: it gets `inactive`.
    Superseded { by: DeploymentId },
    /// Known already: its state as far as this environment knows.
    Duplicate { state: DeploymentState },
    /// Running, and another instance is working on it right now.
    Busy,
    /// Older than anything this environment still remembers: nothing is stored (the runner
    /// gives it `inactive` if GitHub shows it never got a final status).
    Stale,
    /// A callback or status accepted.
    Accepted,
    /// A callback for a run that has its result already.
    AlreadyFinal { state: DeploymentState },
    /// A callback whose token matches no run here.
    UnknownToken,
    /// A status for a deployment this environment is not running: only recorded.
    NotRunning,
    /// The sweep found nothing to do.
    Idle,
    /// Held by a lock: it waits in the queue.
    Locked { holder: String },
    /// `.lock` when someone else holds it already.
    LockedBy { holder: String, reason: String },
}

/// The result of one transition.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    pub state: EnvironmentState,
    pub verdict: Verdict,
}

impl EnvironmentState {
    pub fn holds_lease(&self, token: &str) -> bool {
        self.lease.as_ref().is_some_and(|l| l.token == token)
    }

    fn lease_live(&self, now: u64) -> bool {
        self.lease.as_ref().is_some_and(|l| l.until_ms > now)
    }

    /// Takes the lease for `token` if it is free or expired. Returns whether we hold it.
    fn take_lease(&mut self, token: &str, now: u64, settings: &RunSettings) -> bool {
        match &self.lease {
            Some(l) if l.token == token => true,
            Some(l) if l.until_ms > now => false,
            expired => {
                let reconcile = expired.is_some();
                self.lease = Some(EnvLease { token: token.to_owned(), until_ms: now + settings.lease_ms, reconcile });
                self.retry_at_ms = None;
                true
            }
        }
    }

    /// Nothing runs, and a queued deployment may start (the lock does not hold all of them).
    pub fn can_start_next(&self) -> bool {
        self.running.is_none()
            && self.queue.iter().any(|d| match &self.lock {
                Some(lock) => d.requester.as_deref() == Some(lock.holder.as_str()),
                None => true,
            })
    }

    /// The commit to roll back to: the last success before the one deployed now.
    pub fn rollback_target(&self) -> Option<&FinishedRun> {
        let mut successes = self.recent.iter().rev().filter(|r| r.state == DeploymentState::Success && r.sha.is_some());
        let current = successes.next()?;
        successes.find(|r| r.sha != current.sha)
    }

    /// What this environment knows of a deployment that is not the running one.
    fn knows(&self, id: DeploymentId) -> Option<DeploymentState> {
        if self.queue.iter().any(|d| d.id == id) {
            return Some(DeploymentState::Queued);
        }
        self.recent.iter().rev().find(|r| r.id == id).map(|r| r.state)
    }

    /// Whether the environment owes work that no live holder is doing, and from when: the sweep
    /// looks at an environment once this time has passed. `None`: nothing is due, ever, until a
    /// new trigger arrives.
    pub fn due_at(&self) -> Option<u64> {
        if let Some(lease) = &self.lease {
            return Some(lease.until_ms.max(self.retry_at_ms.unwrap_or(0)));
        }
        let owes_work = !self.notices.is_empty()
            || self.can_start_next()
            || self.running.as_ref().is_some_and(|r| !matches!(r.phase, Phase::Awaiting));
        if owes_work {
            return Some(self.retry_at_ms.unwrap_or(0));
        }
        self.running.as_ref().map(|r| r.deadline_ms)
    }

    /// Remembers a deployment that ended in `state` without ever running here (superseded, or
    /// ended by someone else while it waited or before it arrived).
    fn remember_unrun(&mut self, d: &DeploymentToRun, state: DeploymentState, now: u64) {
        self.remember(FinishedRun {
            id: d.id,
            state,
            token_hash: None,
            sha: None,
            pr: d.pr,
            rank: d.rank.clone(),
            at_ms: now,
        });
    }

    fn remember(&mut self, finished: FinishedRun) {
        self.recent.retain(|r| r.id != finished.id);
        self.recent.push(finished);
        if self.recent.len() > RECENT_RUNS {
            let dropped = self.recent.remove(0);
            if self.forgotten_up_to.as_ref().is_none_or(|f| *f < dropped.rank) {
                self.forgotten_up_to = Some(dropped.rank);
            }
        }
    }

    /// Applies what time alone changes: a run past its deadline times out.
    fn expire(&mut self, now: u64, settings: &RunSettings) {
        let lease_live = self.lease_live(now);
        if let Some(run) = &mut self.running {
            // The hook was called (its callback came back) but its caller stopped before the
            // 202 was recorded: the result is known, the hook must not be called again.
            if matches!(run.phase, Phase::Starting)
                && !lease_live
                && let Some(early) = run.early_result.take()
            {
                run.phase = Phase::Finishing { result: early, external: false };
            }
            let overdue = now >= run.deadline_ms;
            match &run.phase {
                Phase::Awaiting if overdue => {
                    run.phase = Phase::Finishing {
                        result: RunResult {
                            state: DeploymentState::Error,
                            description: format!(
                                "no result from the deploy hook within {}",
                                minutes(settings.run_timeout_ms)
                            ),
                            log_url: None,
                            environment_url: None,
                        },
                        external: false,
                    };
                }
                Phase::Starting if overdue && self.lease.as_ref().is_none_or(|l| l.until_ms <= now) => {
                    run.phase = Phase::Finishing {
                        result: RunResult {
                            state: DeploymentState::Error,
                            description: format!("could not start within {}", minutes(settings.run_timeout_ms)),
                            log_url: None,
                            environment_url: None,
                        },
                        external: false,
                    };
                }
                _ => {}
            }
        }
    }
}

fn minutes(ms: u64) -> String {
    let m = ms / 60_000;
    if m >= 1 && ms.is_multiple_of(60_000) { format!("{m} min") } else { format!("{} s", ms / 1000) }
}

/// Applies `trigger` at time `now` for a caller whose lease token is `token`.
pub fn apply(state: &EnvironmentState, trigger: &Trigger, ctx: &Ctx<'_>, settings: &RunSettings) -> Applied {
    let mut s = state.clone();
    let (token, now) = (ctx.token, ctx.now);
    s.expire(now, settings);
    let verdict = match trigger {
        Trigger::Arrived(d) => arrive(&mut s, d, ctx, settings),
        Trigger::Callback { id, token_hash, report } => callback(&mut s, *id, token_hash, report, token, now, settings),
        Trigger::TerminalStatus { id, state } => terminal_status(&mut s, *id, *state, token, now, settings),
        Trigger::Lock { holder, reason } => match &s.lock {
            Some(lock) if lock.holder != *holder => {
                Verdict::LockedBy { holder: lock.holder.clone(), reason: lock.reason.clone() }
            }
            _ => {
                s.lock = Some(EnvLock { holder: holder.clone(), reason: reason.clone(), at_ms: now });
                Verdict::Accepted
            }
        },
        Trigger::Unlock => {
            if s.lock.take().is_some() && s.running.is_none() && !s.queue.is_empty() {
                s.take_lease(token, now, settings);
            }
            Verdict::Accepted
        }
        Trigger::Sweep => {
            if s.due_at().is_some_and(|due| due <= now) && s.take_lease(token, now, settings) {
                Verdict::Accepted
            } else {
                Verdict::Idle
            }
        }
    };
    Applied { state: s, verdict }
}

fn arrive(s: &mut EnvironmentState, d: &DeploymentToRun, ctx: &Ctx<'_>, settings: &RunSettings) -> Verdict {
    let (token, now) = (ctx.token, ctx.now);
    if let Some(run) = &s.running
        && run.deployment.id == d.id
    {
        if matches!(run.phase, Phase::Awaiting) {
            return Verdict::Duplicate { state: DeploymentState::InProgress };
        }
        // A redelivery of the running deployment: resume it if its holder is gone.
        return if s.take_lease(token, now, settings) { Verdict::Started } else { Verdict::Busy };
    }
    if let Some(state) = s.knows(d.id) {
        if state == DeploymentState::Queued {
            s.take_lease(token, now, settings);
        }
        return Verdict::Duplicate { state };
    }
    // Someone else ended it before it got here: it never runs.
    if let Some(pos) = s.ended_elsewhere.iter().position(|e| e.id == d.id) {
        let ended = s.ended_elsewhere.remove(pos);
        s.remember_unrun(d, ended.state, now);
        return Verdict::Duplicate { state: ended.state };
    }
    if s.forgotten_up_to.as_ref().is_some_and(|f| d.rank <= *f) {
        return Verdict::Stale;
    }
    if let Some(started) = &s.started
        && d.rank < *started
    {
        let by = s
            .running
            .as_ref()
            .map(|r| r.deployment.id)
            .or_else(|| s.recent.iter().rev().find(|r| r.state != DeploymentState::Inactive).map(|r| r.id))
            .unwrap_or(DeploymentId(started.1));
        supersede(s, d, by, now);
        s.take_lease(token, now, settings);
        return Verdict::Superseded { by };
    }
    if let Some(lock) = s.lock.clone().filter(|l| d.requester.as_deref() != Some(l.holder.as_str())) {
        let pos = s.queue.partition_point(|q| q.rank < d.rank);
        s.queue.insert(pos, d.clone());
        let reason = if lock.reason.is_empty() { String::new() } else { format!(": {}", lock.reason) };
        s.notices.push(Notice {
            deployment: d.id,
            state: DeploymentState::Queued,
            description: truncate_chars(&format!("locked by @{}{reason}", lock.holder), DESCRIPTION_LIMIT),
            log_url: None,
        });
        s.take_lease(token, now, settings);
        return Verdict::Locked { holder: lock.holder };
    }
    match s.running.as_ref().map(|r| r.deployment.id) {
        Some(behind) => {
            let pos = s.queue.partition_point(|q| q.rank < d.rank);
            s.queue.insert(pos, d.clone());
            s.notices.push(Notice {
                deployment: d.id,
                state: DeploymentState::Queued,
                description: truncate_chars(&format!("waiting for deployment #{behind}"), DESCRIPTION_LIMIT),
                log_url: None,
            });
            s.take_lease(token, now, settings);
            Verdict::Queued { behind }
        }
        None => {
            if s.take_lease(token, now, settings) {
                // Anything queued while nobody ran (a start that failed) competes with it.
                let pos = s.queue.partition_point(|q| q.rank < d.rank);
                s.queue.insert(pos, d.clone());
                // `d` is startable (a lock that holds it returned above), so something starts.
                match start_newest(s, ctx, settings) {
                    Some(started) if started != d.id => Verdict::Superseded { by: started },
                    _ => Verdict::Started,
                }
            } else {
                // Someone holds the lease with nothing running (posting notices): it starts this.
                let pos = s.queue.partition_point(|q| q.rank < d.rank);
                s.queue.insert(pos, d.clone());
                Verdict::Queued { behind: DeploymentId(0) }
            }
        }
    }
}

fn supersede(s: &mut EnvironmentState, d: &DeploymentToRun, by: DeploymentId, now: u64) {
    s.notices.push(Notice {
        deployment: d.id,
        state: DeploymentState::Inactive,
        description: truncate_chars(&format!("superseded by deployment #{by}"), DESCRIPTION_LIMIT),
        log_url: None,
    });
    s.remember_unrun(d, DeploymentState::Inactive, now);
}

/// Starts the newest queued deployment if nothing runs; every older queued one is superseded.
/// Returns the deployment it started.
fn start_newest(s: &mut EnvironmentState, ctx: &Ctx<'_>, settings: &RunSettings) -> Option<DeploymentId> {
    let now = ctx.now;
    if s.running.is_some() {
        return None;
    }
    // While locked, only the holder's deployments may start; the others keep waiting.
    let startable = |d: &DeploymentToRun| match &s.lock {
        Some(lock) => d.requester.as_deref() == Some(lock.holder.as_str()),
        None => true,
    };
    let pos = s.queue.iter().rposition(startable)?;
    let newest = s.queue.remove(pos);
    let id = newest.id;
    // Everything older than what starts is superseded, held by the lock or not: it must never
    // run after it (that would be older code).
    let (older, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut s.queue).into_iter().partition(|q| q.rank < newest.rank);
    s.queue = kept;
    for older in older {
        supersede(s, &older, newest.id, now);
    }
    s.started = Some(s.started.clone().map_or(newest.rank.clone(), |r| r.max(newest.rank.clone())));
    s.running = Some(Run {
        token_hash: secret_hash(ctx.secret),
        started_ms: now,
        deadline_ms: now + settings.run_timeout_ms,
        in_progress_posted: false,
        early_result: None,
        phase: Phase::Starting,
        deployment: newest,
    });
    Some(id)
}

fn callback(
    s: &mut EnvironmentState,
    id: DeploymentId,
    token_hash: &str,
    report: &CallbackReport,
    token: &str,
    now: u64,
    settings: &RunSettings,
) -> Verdict {
    let matches_hash = |h: &str| !h.is_empty() && constant_time_eq(h.as_bytes(), token_hash.as_bytes());
    let holder_at_work = s.lease_live(now);
    let Some(run) = s.running.as_mut().filter(|r| r.deployment.id == id && matches_hash(&r.token_hash)) else {
        return match s.recent.iter().rev().find(|r| r.id == id) {
            Some(f) if f.token_hash.as_deref().is_some_and(matches_hash) => Verdict::AlreadyFinal { state: f.state },
            _ => Verdict::UnknownToken,
        };
    };
    match report {
        CallbackReport::InProgress { description, log_url } => {
            if let Phase::Finishing { result, .. } = &run.phase {
                return Verdict::AlreadyFinal { state: result.state };
            }
            if let Some(early) = &run.early_result {
                return Verdict::AlreadyFinal { state: early.state };
            }
            let description =
                description.clone().unwrap_or_else(|| format!("Deploying {}", run.deployment.sha.short()));
            s.notices.push(Notice {
                deployment: id,
                state: DeploymentState::InProgress,
                description: truncate_chars(&description, DESCRIPTION_LIMIT),
                log_url: log_url.clone(),
            });
        }
        CallbackReport::Finished(result) => match &run.phase {
            Phase::Finishing { result, .. } => return Verdict::AlreadyFinal { state: result.state },
            Phase::Starting => {
                if let Some(early) = &run.early_result {
                    return Verdict::AlreadyFinal { state: early.state };
                }
                if holder_at_work {
                    // The hook call is in flight: its caller takes this result when it answers.
                    run.early_result = Some(result.clone());
                } else {
                    // Whoever called the hook is gone: the result is known, and nobody may call
                    // the hook again for it.
                    run.phase = Phase::Finishing { result: result.clone(), external: false };
                }
            }
            Phase::Awaiting => run.phase = Phase::Finishing { result: result.clone(), external: false },
        },
    }
    s.take_lease(token, now, settings);
    Verdict::Accepted
}

fn terminal_status(
    s: &mut EnvironmentState,
    id: DeploymentId,
    state: DeploymentState,
    token: &str,
    now: u64,
    settings: &RunSettings,
) -> Verdict {
    // Whatever we still owe GitHub for it would come after that status: dropped.
    s.notices.retain(|n| n.deployment != id);
    if let Some(run) = s.running.as_mut().filter(|r| r.deployment.id == id) {
        // Ended already (its result posted, by us or by someone else): nothing changes.
        if matches!(run.phase, Phase::Finishing { external: true, .. }) {
            return Verdict::NotRunning;
        }
        // Ended by someone else, whatever the holder is doing: a hook answer that comes back
        // now is dropped, and the holder (or we, if nobody holds it) ends the run unposted.
        run.early_result = None;
        run.phase = Phase::Finishing {
            result: RunResult {
                state,
                description: format!("ended by a {state} status posted outside deploy-webhook"),
                log_url: None,
                environment_url: None,
            },
            external: true,
        };
        s.take_lease(token, now, settings);
        return Verdict::Accepted;
    }
    if let Some(pos) = s.queue.iter().position(|d| d.id == id) {
        // Waiting, and ended by someone else: it leaves the queue and never runs.
        let d = s.queue.remove(pos);
        s.remember_unrun(&d, state, now);
        return Verdict::Accepted;
    }
    if s.knows(id).is_none() {
        // Not here yet (its `deployment` event is late): kept, so that it never runs.
        s.ended_elsewhere.retain(|e| e.id != id);
        s.ended_elsewhere.push(EndedElsewhere { id, state });
        if s.ended_elsewhere.len() > RECENT_RUNS {
            s.ended_elsewhere.remove(0);
        }
    }
    Verdict::NotRunning
}

/// The next piece of work the lease holder owes, if any.
#[derive(Clone, Debug, PartialEq)]
pub enum Work {
    /// Ask GitHub what an expired holder already posted.
    Reconcile,
    PostNotice(Notice),
    /// Nothing runs but deployments wait (their start failed, or they came while the lease
    /// was held): start the newest.
    StartNext,
    PostInProgress,
    CallHook,
    /// The run is starting but its result came back already (a callback): take it, and never
    /// call the hook for it again.
    TakeEarlyResult,
    PostResult(RunResult),
    /// The result is posted (or was posted by someone else): end the run, start the next.
    EndRun,
}

pub fn next_work(s: &EnvironmentState) -> Option<Work> {
    if s.lease.as_ref().is_some_and(|l| l.reconcile) {
        return Some(Work::Reconcile);
    }
    if let Some(notice) = s.notices.first() {
        return Some(Work::PostNotice(notice.clone()));
    }
    let Some(run) = s.running.as_ref() else {
        return s.can_start_next().then_some(Work::StartNext);
    };
    match &run.phase {
        // A callback came back for a hook call that an earlier holder made: that is the result.
        Phase::Starting if run.early_result.is_some() => Some(Work::TakeEarlyResult),
        Phase::Starting if !run.in_progress_posted => Some(Work::PostInProgress),
        Phase::Starting => Some(Work::CallHook),
        Phase::Awaiting => None,
        Phase::Finishing { external: true, .. } => Some(Work::EndRun),
        Phase::Finishing { result, .. } => Some(Work::PostResult(result.clone())),
    }
}

/// What a piece of work did. Each names the deployment whose run it was done for: after a
/// write conflict it is applied again to the fresh state, and there it changes that run only,
/// and only in the phase the work was taken in, never another run that started meanwhile.
#[derive(Clone, Debug, PartialEq)]
pub enum Done {
    /// Reconciled with GitHub: the states already posted for each deployment asked about.
    Reconciled {
        posted: Vec<(DeploymentId, Vec<DeploymentState>)>,
    },
    NoticePosted(Notice),
    StartedNext,
    InProgressPosted(DeploymentId),
    /// The run's callback secret was minted by another holder (who stopped): this holder
    /// replaces it with its own before calling the hook.
    SecretReplaced(DeploymentId),
    /// The hook answered: `None` for 202 (wait for the callback), else its result.
    HookAnswered {
        deployment: DeploymentId,
        result: Option<RunResult>,
    },
    ResultPosted(DeploymentId),
    RunEnded(DeploymentId),
}

/// Records `done` in the state. It may be applied to a fresher state than the one the work
/// was taken from (another instance queued something meanwhile, or someone ended the run), so
/// it only touches what the lease holder owns, and only the run it names.
pub fn after_work(state: &EnvironmentState, done: &Done, ctx: &Ctx<'_>, settings: &RunSettings) -> EnvironmentState {
    let mut s = state.clone();
    let now = ctx.now;
    match done {
        Done::Reconciled { posted } => {
            let has = |id: DeploymentId, st: DeploymentState| {
                posted.iter().any(|(pid, states)| *pid == id && states.contains(&st))
            };
            let ended_on_github = |id: DeploymentId| {
                posted
                    .iter()
                    .find(|(pid, _)| *pid == id)
                    .and_then(|(_, states)| states.iter().rev().find(|st| st.is_terminal()).copied())
            };
            // Nothing more is posted for a deployment that has its terminal status already (ours,
            // or someone else's whose webhook has not come yet), and one that waits leaves the queue.
            s.notices.retain(|n| !has(n.deployment, n.state) && ended_on_github(n.deployment).is_none());
            let (ended_queued, waiting): (Vec<_>, Vec<_>) =
                std::mem::take(&mut s.queue).into_iter().partition(|d| ended_on_github(d.id).is_some());
            s.queue = waiting;
            for d in ended_queued {
                let state = ended_on_github(d.id).unwrap_or(DeploymentState::Inactive);
                s.remember_unrun(&d, state, now);
            }
            let mut ended = false;
            if let Some(run) = &mut s.running {
                let id = run.deployment.id;
                if let Some((_, states)) = posted.iter().find(|(pid, _)| *pid == id) {
                    if let Some(last) = states.iter().rev().find(|st| st.is_terminal()) {
                        ended = true;
                        // It was finished and posted: end it with what GitHub has.
                        run.phase = Phase::Finishing {
                            result: RunResult {
                                state: *last,
                                description: String::new(),
                                log_url: None,
                                environment_url: None,
                            },
                            external: true,
                        };
                    } else if states.contains(&DeploymentState::InProgress) {
                        run.in_progress_posted = true;
                    }
                }
            }
            if ended {
                drop_progress_notices(&mut s);
            }
            if let Some(lease) = &mut s.lease {
                lease.reconcile = false;
            }
        }
        Done::NoticePosted(posted) => {
            if let Some(i) = s.notices.iter().position(|n| n == posted) {
                s.notices.remove(i);
            }
        }
        Done::StartedNext => {
            start_newest(&mut s, ctx, settings);
        }
        Done::SecretReplaced(id) => {
            if let Some(run) = run_of(&mut s, *id).filter(|r| matches!(r.phase, Phase::Starting)) {
                run.token_hash = secret_hash(ctx.secret);
            }
        }
        Done::InProgressPosted(id) => {
            if let Some(run) = run_of(&mut s, *id) {
                run.in_progress_posted = true;
            }
        }
        Done::HookAnswered { deployment, result } => {
            // Only a run still starting takes the answer: one that someone else ended (or
            // whose callback ended it after its caller was gone) keeps that end.
            if let Some(run) = run_of(&mut s, *deployment).filter(|r| matches!(r.phase, Phase::Starting)) {
                // A callback we accepted while the hook call was in flight is the result: the
                // deploy system was told so.
                let known = run.early_result.take().or_else(|| result.clone());
                let finished = known.is_some();
                run.phase = match known {
                    Some(result) => Phase::Finishing { result, external: false },
                    None => Phase::Awaiting,
                };
                if finished {
                    drop_progress_notices(&mut s);
                }
            }
        }
        Done::ResultPosted(id) => {
            if let Some(run) = run_of(&mut s, *id)
                && let Phase::Finishing { external, .. } = &mut run.phase
            {
                *external = true;
            }
        }
        Done::RunEnded(id) => {
            let ending = |r: &mut Run| r.deployment.id == *id && matches!(r.phase, Phase::Finishing { .. });
            if let Some(Run { phase: Phase::Finishing { result, .. }, deployment, token_hash, .. }) =
                s.running.take_if(ending)
            {
                drop_progress_notices_for(&mut s, deployment.id);
                let finished = FinishedRun {
                    id: deployment.id,
                    state: result.state,
                    token_hash: Some(token_hash).filter(|h| !h.is_empty()),
                    sha: Some(deployment.sha),
                    pr: deployment.pr,
                    rank: deployment.rank,
                    at_ms: now,
                };
                if finished.state == DeploymentState::Success {
                    s.last_success = Some(finished.clone());
                }
                s.remember(finished);
                start_newest(&mut s, ctx, settings);
            }
        }
    }
    s
}

/// The running run, if it is deployment `id`'s.
fn run_of(s: &mut EnvironmentState, id: DeploymentId) -> Option<&mut Run> {
    s.running.as_mut().filter(|r| r.deployment.id == id)
}

/// Once a run's result is known, an `in_progress` it still owes GitHub (from a callback) would
/// come after the terminal status: it is dropped.
fn drop_progress_notices(s: &mut EnvironmentState) {
    if let Some(id) = s.running.as_ref().map(|r| r.deployment.id) {
        drop_progress_notices_for(s, id);
    }
}

fn drop_progress_notices_for(s: &mut EnvironmentState, id: DeploymentId) {
    s.notices.retain(|n| !(n.deployment == id && n.state == DeploymentState::InProgress));
}

/// Releases the lease: when the holder is done (`None`), or when it stops early
/// (`Some(retry_at)`: a step failed or time ran out; the sweep tries again from `retry_at`). A
/// step that failed may have been applied (GitHub answered 500 after doing it), so then the
/// lease is left expired rather than removed: the next holder (a redelivery at once, or the
/// sweep) takes it over and reconciles with GitHub before posting again.
pub fn release(state: &EnvironmentState, token: &str, retry_at_ms: Option<u64>) -> EnvironmentState {
    let mut s = state.clone();
    if s.holds_lease(token) {
        match retry_at_ms {
            None => s.lease = None,
            Some(_) => {
                if let Some(lease) = &mut s.lease {
                    lease.until_ms = 0;
                }
            }
        }
        s.retry_at_ms = retry_at_ms;
    }
    s
}

/// Extends the holder's lease before a long step (the hook call).
pub fn renew(state: &EnvironmentState, token: &str, now: u64, settings: &RunSettings) -> EnvironmentState {
    let mut s = state.clone();
    if let Some(lease) = &mut s.lease
        && lease.token == token
    {
        lease.until_ms = lease.until_ms.max(now + settings.lease_ms);
    }
    s
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
