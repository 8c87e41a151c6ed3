//! Runs, as effects: the entrypoints (a `deployment` event, a callback, a terminal status, the
//! sweep) each apply a [`Trigger`] to their environment's state with one conditional write, and
//! whoever then holds the environment's lease does the work that state owes (post statuses,
//! call the hook), writing again only when the work must be durable: at the end, and between
//! one run's end and the next one's start.
//!
//! DynamoDB writes per delivery (the minimum each needs, and what this code does):
//! - `deployment`, synchronous hook or none: 2 (claim the run; record its end).
//! - `deployment`, asynchronous hook: 2 (claim; record "waiting for the callback").
//! - `deployment` for a busy environment: 2 (enqueue with the lease; release it once `queued` is
//!   posted), or 1 when another instance holds the lease (it posts the `queued`).
//! - callback: 2 (record the result with the lease; record the end), +1 per next run it starts
//!   (its end is made durable before the next one starts), or 1 when another instance holds the
//!   lease.
//! - sweep: 0 when nothing is due; 2 per environment it heals.

use std::time::Duration;

use base64::Engine;
use tracing::{debug, warn};

use super::deadline::Deadline;
use super::event::DeploymentCreated;
use super::ports::{
    Clock, DeployAction, EnvKey, GitHub, GitHubError, HookAnswer, HookCall, NewStatus, Store, StoreError, Versioned,
};
use super::runs::{
    self, CallbackReport, Ctx, DESCRIPTION_LIMIT, DeploymentToRun, Done, EnvironmentState, Phase, Rank, Trigger,
    Verdict, Work,
};
use super::service::{Outcome, Service, ServiceError};
use super::types::{DeliveryId, DeploymentId, DeploymentState, Environment, RepoFullName, truncate_chars};
use crate::metrics::{self, Unit};

/// How often a transition is retried when other writers keep changing the environment.
const MAX_CONFLICTS: usize = 25;
/// Time a hook call needs at least (the rest of the budget is for the status posts after it).
const HOOK_RESERVE: Duration = Duration::from_millis(1500);
/// Time any other step needs at least.
const STEP_RESERVE: Duration = Duration::from_millis(700);

/// What one sweep saw and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Environments with something due.
    pub due: usize,
    pub healed: usize,
    pub failed: usize,
    /// Failed webhook deliveries asked again of GitHub.
    pub redelivery: super::redelivery::RedeliveryReport,
    /// Commits whose merges wait for checks, looked at again.
    pub checks_waits: usize,
}

impl<S: Store, G: GitHub, D: DeployAction, C: Clock> Service<S, G, D, C> {
    // ------------------------------------------------------------ entrypoints

    pub(crate) async fn run_deployment(
        &self,
        delivery: &DeliveryId,
        d: &DeploymentCreated,
        callback_base: Option<&str>,
        deadline: Deadline,
    ) -> Result<Outcome, ServiceError> {
        let key = EnvKey { repo: d.repo.clone(), environment: d.environment.clone() };
        let trusted = self.requester_trusted(d, deadline).await;
        let to_run = self.to_run(delivery, d, callback_base, trusted);
        let trigger = Trigger::Arrived(to_run);
        let wait_until = Deadline::after(deadline.cap(self.settings.busy_wait));
        let (verdict, current) = loop {
            let (verdict, current) = self.act(&key, None, &trigger, deadline).await?;
            if verdict != Verdict::Busy {
                break (verdict, current);
            }
            // Another instance runs this very deployment now: wait a little for its result.
            if wait_until.remaining() < self.settings.busy_poll {
                return Err(ServiceError::InProgress);
            }
            tokio::time::sleep(self.settings.busy_poll).await;
        };
        if verdict == Verdict::Stale {
            self.settle_forgotten(d, &current.state, deadline).await?;
        }
        let state = state_of(&current.state, d.id);
        debug!(deployment_id = %d.id, environment = %d.environment, verdict = ?verdict, state = %state, "deployment handled");
        Ok(Outcome::Deployment { id: d.id, verdict, state })
    }

    /// A deployment older than every run its environment remembers (its delivery came more than
    /// [`runs::RECENT_RUNS`] deployments late): it either ran long ago or was never seen here.
    /// GitHub tells which. One without a final status gets `inactive`, as any deployment
    /// superseded by a newer one does, instead of staying pending for good; one that has its
    /// final status is left alone. Nothing is stored: a repeat asks GitHub again (and, in a race
    /// with itself, could post `inactive` twice, which changes nothing on GitHub).
    async fn settle_forgotten(
        &self,
        d: &DeploymentCreated,
        state: &EnvironmentState,
        deadline: Deadline,
    ) -> Result<(), ServiceError> {
        let statuses = self.github.list_deployment_statuses(&d.repo, d.id, deadline).await?;
        if statuses.iter().any(|status| status.state.is_terminal()) {
            return Ok(());
        }
        let by =
            state.started.as_ref().map_or_else(|| "a newer deployment".to_owned(), |r| format!("deployment #{}", r.1));
        let status = NewStatus {
            state: DeploymentState::Inactive,
            description: truncate_chars(&format!("superseded by {by}"), DESCRIPTION_LIMIT),
            log_url: None,
            environment_url: None,
        };
        self.github.create_deployment_status(&d.repo, d.id, &status, deadline).await?;
        debug!(deployment_id = %d.id, environment = %d.environment, "a forgotten deployment without a final status was made inactive");
        Ok(())
    }

    /// A callback from the deploy system, its signature already verified.
    pub async fn handle_callback(
        &self,
        token: &CallbackToken,
        report: CallbackReport,
        deadline: Deadline,
    ) -> Result<Outcome, ServiceError> {
        let key = EnvKey { repo: token.repo.clone(), environment: token.environment.clone() };
        let trigger = Trigger::Callback { id: token.deployment, token_hash: token.hash(), report };
        // An unknown token changes nothing, so nothing was driven either.
        let (verdict, _) = self.act(&key, None, &trigger, deadline).await?;
        if verdict == Verdict::UnknownToken {
            return Err(ServiceError::UnknownRun);
        }
        debug!(deployment_id = %token.deployment, environment = %token.environment, verdict = ?verdict, "callback handled");
        Ok(Outcome::Callback { id: token.deployment, verdict })
    }

    /// A terminal status for `id` was recorded: if it is the running deployment and nobody of
    /// ours is posting its result, it ends the run and the next one starts.
    pub(crate) async fn end_run_from_status(
        &self,
        key: &EnvKey,
        id: DeploymentId,
        state: DeploymentState,
        deadline: Deadline,
    ) -> Result<(), ServiceError> {
        let (verdict, _) = self.act(key, None, &Trigger::TerminalStatus { id, state }, deadline).await?;
        if verdict == Verdict::Accepted {
            debug!(deployment_id = %id, %state, "the running deployment was ended by a status posted outside deploy-webhook");
        }
        Ok(())
    }

    /// The scheduled sweep: times out overdue runs, restarts work whose start failed, and
    /// takes over work whose holder died. Reads only the environments that are due.
    pub async fn sweep(&self, deadline: Deadline) -> Result<SweepReport, ServiceError> {
        // Deliveries first: a recovered merge or deployment may start a run this same sweep.
        let redelivery = self.redeliver_failed(deadline).await;
        let now = self.clock.now_ms();
        let due = self.store.due_environments(now, 50).await?;
        let mut report = SweepReport { due: due.len(), redelivery, ..Default::default() };
        match self.sweep_checks_waits(deadline).await {
            Ok(n) => report.checks_waits = n,
            Err(err) => warn!(error = %err, "could not look at merges waiting for checks; the next sweep does"),
        }
        for (key, current) in due {
            if deadline.remaining() < HOOK_RESERVE + STEP_RESERVE {
                warn!("the sweep ran out of time; the next one goes on");
                break;
            }
            // The repository's settings (its timeouts, its hook) before its runs are driven.
            match self.repo_config(&key.repo, deadline).await {
                Ok(super::configuration::RepoConfig::Settings(_)) => {}
                Ok(super::configuration::RepoConfig::Refused(reason)) => {
                    warn!(repository = %key.repo, %reason, "the repository has no valid configuration; its runs wait");
                    continue;
                }
                Err(err) => {
                    report.failed += 1;
                    warn!(repository = %key.repo, error = %err, "the sweep could not read the repository's configuration; the next sweep tries again");
                    continue;
                }
            }
            match self.act(&key, Some(current), &Trigger::Sweep, deadline).await.map(|(verdict, _)| verdict) {
                Ok(Verdict::Accepted) => report.healed += 1,
                Ok(_) => {}
                Err(err) => {
                    report.failed += 1;
                    warn!(repository = %key.repo, environment = %key.environment, error = %err, "the sweep could not heal an environment; the next sweep tries again");
                }
            }
        }
        Ok(report)
    }

    // ------------------------------------------------------------ the state, written once per change

    /// The one way to take work on an environment: apply `trigger`, and if that made this
    /// caller the lease holder, do what the environment owes and release it.
    pub(crate) async fn act(
        &self,
        key: &EnvKey,
        known: Option<Versioned>,
        trigger: &Trigger,
        deadline: Deadline,
    ) -> Result<(Verdict, Versioned), ServiceError> {
        let me = Holder::new()?;
        let (verdict, mut current) = self.transition(key, known, trigger, &me).await?;
        if current.state.holds_lease(me.token()) {
            current = self.drive(key, current, &me, deadline).await?;
        }
        Ok((verdict, current))
    }

    /// Applies `trigger` and writes the result if it changed anything, re-applying it to the
    /// fresh state when another writer came first.
    async fn transition(
        &self,
        key: &EnvKey,
        known: Option<Versioned>,
        trigger: &Trigger,
        me: &Holder,
    ) -> Result<(Verdict, Versioned), ServiceError> {
        let settings = self.run_settings(key);
        let mut current = match known {
            Some(v) => v,
            None => self.store.load_environment(key).await?,
        };
        for _ in 0..MAX_CONFLICTS {
            let applied = runs::apply(&current.state, trigger, &me.ctx(self.clock.now_ms()), &settings);
            if applied.state == current.state {
                return Ok((applied.verdict, current));
            }
            match self.write(key, &current, applied.state).await? {
                Ok(saved) => return Ok((applied.verdict, saved)),
                Err(fresh) => current = fresh,
            }
        }
        Err(ServiceError::InProgress)
    }

    /// Does the work the environment owes while we hold its lease, then releases it.
    async fn drive(
        &self,
        key: &EnvKey,
        mut current: Versioned,
        me: &Holder,
        deadline: Deadline,
    ) -> Result<Versioned, ServiceError> {
        let settings = self.run_settings(key);
        // Work done since the last write, re-applied onto a fresher state after a conflict.
        let mut unsaved: Vec<Done> = Vec::new();
        let mut must_persist = false;
        for _ in 0..500 {
            let ctx = me.ctx(self.clock.now_ms());
            let working = with_work(&current.state, &unsaved, &ctx, &settings);
            // A run started in memory (the next one after an end, or after an unlock) is written
            // before any work on it: re-applied onto a fresher state it could otherwise become
            // another deployment.
            let run_id = |s: &EnvironmentState| s.running.as_ref().map(|r| r.deployment.id);
            must_persist |= run_id(&working).is_some() && run_id(&working) != run_id(&current.state);
            if must_persist {
                // The lease is renewed in the same write, to outlast the next step.
                match self.save_held(key, &current, runs::renew(&working, me.token(), ctx.now, &settings), me).await? {
                    Ok(saved) => {
                        current = saved;
                        unsaved.clear();
                        must_persist = false;
                    }
                    Err(fresh) => current = fresh,
                }
                continue;
            }
            let Some(work) = runs::next_work(&working) else {
                match self.save_held(key, &current, runs::release(&working, me.token(), None), me).await? {
                    Ok(saved) => return Ok(saved),
                    // Someone added work meanwhile: go on with the fresh state.
                    Err(fresh) => {
                        current = fresh;
                        continue;
                    }
                }
            };
            let reserve = if work == Work::CallHook { HOOK_RESERVE } else { STEP_RESERVE };
            if deadline.remaining() < reserve {
                debug!(environment = %key.environment, "out of time for this delivery; the sweep takes over");
                let release = |s: &EnvironmentState| runs::release(s, me.token(), Some(ctx.now));
                return self.save_unsaved(key, current, &unsaved, me, release).await;
            }
            let lease_left = working.lease.as_ref().map_or(0, |l| l.until_ms.saturating_sub(ctx.now));
            if work == Work::CallHook && lease_left < settings.lease_ms / 2 {
                // The hook may take its whole timeout: make the lease outlast it first.
                must_persist = true;
                continue;
            }
            let step = match self.execute(key, &working, &work, me, deadline).await {
                Ok(done) => {
                    // …and a new callback secret before the hook hears of it.
                    must_persist = matches!(done, Done::SecretReplaced(_));
                    let answered = matches!(done, Done::HookAnswered { result: Some(_), .. });
                    unsaved.push(done);
                    if answered {
                        // A hook call takes long; someone may have ended the run meanwhile (a
                        // terminal status of theirs) or a callback may have come: read the state
                        // again before posting the answer, so that it is not posted after theirs.
                        self.store.load_environment(key).await.map(Some).map_err(ServiceError::from)
                    } else {
                        Ok(None)
                    }
                }
                Err(err) => Err(err),
            };
            match step {
                Ok(None) => {}
                Ok(Some(fresh)) if fresh.state.holds_lease(me.token()) => current = fresh,
                Ok(Some(_)) => {
                    warn!(environment = %key.environment, "lost the environment's lease to another instance");
                    return Err(ServiceError::InProgress);
                }
                Err(err) => {
                    warn!(environment = %key.environment, error = %err, "a step failed; the sweep retries it");
                    let retry_at = ctx.now + self.settings.retry_after.as_millis() as u64;
                    let release = |s: &EnvironmentState| runs::release(s, me.token(), Some(retry_at));
                    // What was done before the failure (a hook's answer above all) is kept.
                    if let Err(store_err) = self.save_unsaved(key, current, &unsaved, me, release).await {
                        warn!(error = %store_err, "could not record the failed step; the lease will expire");
                    }
                    return Err(err);
                }
            }
        }
        Err(ServiceError::InProgress)
    }

    /// Writes the work done so far, and `finish` over it, however often other writers come
    /// first (the work is re-applied to each fresh state): a holder that stops early keeps
    /// what it learnt, so that nobody does it again.
    async fn save_unsaved(
        &self,
        key: &EnvKey,
        mut current: Versioned,
        unsaved: &[Done],
        me: &Holder,
        finish: impl Fn(&EnvironmentState) -> EnvironmentState,
    ) -> Result<Versioned, ServiceError> {
        let settings = self.run_settings(key);
        for _ in 0..MAX_CONFLICTS {
            let ctx = me.ctx(self.clock.now_ms());
            let state = finish(&with_work(&current.state, unsaved, &ctx, &settings));
            match self.save_held(key, &current, state, me).await? {
                Ok(saved) => return Ok(saved),
                Err(fresh) => current = fresh,
            }
        }
        Err(ServiceError::InProgress)
    }

    /// Writes `state` over `current`: `Ok(Err(fresh))` when another writer came first. A
    /// conflict that answers exactly what we wrote, one version on, is our own write: DynamoDB
    /// applied it, its answer was lost and the retry's condition failed on it.
    async fn write(
        &self,
        key: &EnvKey,
        current: &Versioned,
        state: EnvironmentState,
    ) -> Result<Result<Versioned, Versioned>, StoreError> {
        Ok(match self.store.save_environment(key, &state, current.version).await? {
            Ok(version) => Ok(Versioned { state, version }),
            Err(fresh) if fresh.version == current.version + 1 && fresh.state == state => Ok(fresh),
            Err(fresh) => Err(fresh),
        })
    }

    /// Writes a state the lease holder computed. `Ok(Err(fresh))`: another writer came first and
    /// we still hold the lease (go on from `fresh`); an error if the lease was lost.
    async fn save_held(
        &self,
        key: &EnvKey,
        current: &Versioned,
        state: EnvironmentState,
        me: &Holder,
    ) -> Result<Result<Versioned, Versioned>, ServiceError> {
        match self.write(key, current, state).await? {
            Ok(saved) => Ok(Ok(saved)),
            Err(fresh) if fresh.state.holds_lease(me.token()) => Ok(Err(fresh)),
            Err(_) => {
                warn!(environment = %key.environment, "lost the environment's lease to another instance");
                Err(ServiceError::InProgress)
            }
        }
    }

    // ------------------------------------------------------------ the work itself

    async fn execute(
        &self,
        key: &EnvKey,
        state: &EnvironmentState,
        work: &Work,
        me: &Holder,
        deadline: Deadline,
    ) -> Result<Done, ServiceError> {
        let (repo, environment) = (&key.repo, &key.environment);
        match work {
            Work::Reconcile => {
                let mut ids: Vec<DeploymentId> = state.notices.iter().map(|n| n.deployment).collect();
                ids.extend(state.running.as_ref().map(|r| r.deployment.id));
                ids.dedup();
                let mut posted = Vec::with_capacity(ids.len());
                for id in ids {
                    let mut statuses = self.github.list_deployment_statuses(repo, id, deadline).await?;
                    statuses.sort_by_key(|s| s.id);
                    posted.push((id, statuses.into_iter().map(|s| s.state).collect()));
                }
                debug!(%environment, "took over an environment whose holder stopped; reconciled with GitHub");
                Ok(Done::Reconciled { posted })
            }
            Work::PostNotice(notice) => {
                let status = NewStatus {
                    state: notice.state,
                    description: notice.description.clone(),
                    log_url: notice.log_url.clone(),
                    environment_url: None,
                };
                self.github.create_deployment_status(repo, notice.deployment, &status, deadline).await?;
                Ok(Done::NoticePosted(notice.clone()))
            }
            Work::PostInProgress => {
                let run = running(state)?;
                let status = NewStatus {
                    state: DeploymentState::InProgress,
                    description: truncate_chars(
                        &format!("Deploying {} to {}", run.deployment.sha.short(), environment),
                        DESCRIPTION_LIMIT,
                    ),
                    log_url: None,
                    environment_url: None,
                };
                self.github.create_deployment_status(repo, run.deployment.id, &status, deadline).await?;
                let now = self.clock.now_ms();
                let slack = self.environment_settings(key).slack;
                let notice = announcement(key, run, DeploymentState::InProgress, None, (None, None), slack.as_ref());
                self.deployer.announce(&notice).await;
                metrics::emit(
                    now,
                    Some(("Environment", environment.as_str())),
                    &[
                        ("DeploymentsStarted", 1.0, Unit::Count),
                        (
                            "QueueWaitMs",
                            run.started_ms.saturating_sub(run.deployment.arrived_ms) as f64,
                            Unit::Milliseconds,
                        ),
                    ],
                );
                Ok(Done::InProgressPosted(run.deployment.id))
            }
            Work::StartNext => Ok(Done::StartedNext),
            Work::CallHook => {
                let run = running(state)?;
                if run.token_hash != runs::secret_hash(&me.secret) {
                    return Ok(Done::SecretReplaced(run.deployment.id));
                }
                let token = CallbackToken::new(repo, environment, run.deployment.id, &me.secret);
                let base = self.settings.public_url.as_deref().or(run.deployment.callback_base.as_deref());
                let settings = self.environment_settings(key);
                let call = HookCall {
                    repo,
                    environment,
                    deployment: &run.deployment,
                    callback_url: base.map(|b| format!("{}/callbacks/{}", b.trim_end_matches('/'), token.as_str())),
                    deadline_ms: run.deadline_ms,
                    action: &settings.action,
                    environment_url: settings.environment_url.as_deref(),
                };
                let result = match self.deployer.deploy(&call, deadline).await {
                    HookAnswer::Finished(result) => Some(result),
                    HookAnswer::Accepted => None,
                };
                Ok(Done::HookAnswered { deployment: run.deployment.id, result })
            }
            Work::PostResult(result) => {
                let run = running(state)?;
                let settings = self.environment_settings(key);
                let status = NewStatus {
                    state: result.state,
                    description: truncate_chars(&result.description, DESCRIPTION_LIMIT),
                    log_url: result.log_url.clone(),
                    environment_url: result.environment_url.clone().or_else(|| {
                        (result.state == DeploymentState::Success).then(|| settings.environment_url.clone()).flatten()
                    }),
                };
                self.github.create_deployment_status(repo, run.deployment.id, &status, deadline).await?;
                debug!(deployment_id = %run.deployment.id, %environment, state = %result.state, "deployment finished");
                let now = self.clock.now_ms();
                let took = Some(now.saturating_sub(run.started_ms));
                let links = (status.log_url.as_deref(), status.environment_url.as_deref());
                self.deployer
                    .announce(&announcement(key, run, result.state, took, links, settings.slack.as_ref()))
                    .await;
                let outcome = match result.state {
                    DeploymentState::Success => "DeploymentsSucceeded",
                    DeploymentState::Error if now >= run.deadline_ms => "DeploymentsTimedOut",
                    _ => "DeploymentsFailed",
                };
                metrics::emit(
                    now,
                    Some(("Environment", environment.as_str())),
                    &[
                        (outcome, 1.0, Unit::Count),
                        ("DeployDurationMs", now.saturating_sub(run.started_ms) as f64, Unit::Milliseconds),
                    ],
                );
                Ok(Done::ResultPosted(run.deployment.id))
            }
            Work::TakeEarlyResult => Ok(Done::HookAnswered { deployment: running(state)?.deployment.id, result: None }),
            Work::EndRun => Ok(Done::RunEnded(running(state)?.deployment.id)),
        }
    }

    /// `trusted`: see [`Self::requester_trusted`]; otherwise the requester is the creator.
    fn to_run(
        &self,
        delivery: &DeliveryId,
        d: &DeploymentCreated,
        callback_base: Option<&str>,
        trusted: bool,
    ) -> DeploymentToRun {
        let merged_at = d
            .payload
            .pointer("/deploy_webhook/merged_at")
            .and_then(|v| v.as_str())
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        let time = merged_at.or_else(|| d.created_at.clone()).unwrap_or_default();
        DeploymentToRun {
            id: d.id,
            sha: d.sha.clone(),
            git_ref: d.git_ref.clone(),
            task: d.task.clone(),
            creator: d.creator.clone(),
            payload: d.payload.clone(),
            rank: Rank(time, d.id.0),
            callback_base: callback_base.map(str::to_owned),
            delivery: delivery.as_str().to_owned(),
            arrived_ms: self.clock.now_ms(),
            requester: trusted
                .then(|| {
                    text_at(&d.payload, "/deploy_webhook/requested_by").or_else(|| text_at(&d.payload, "/deploy_user"))
                })
                .flatten()
                .or_else(|| d.creator.clone()),
            pr: d.payload.pointer("/pull_request/number").and_then(|v| v.as_u64()),
        }
    }
}

/// `state` with the work done since it was read.
fn with_work(state: &EnvironmentState, done: &[Done], ctx: &Ctx<'_>, settings: &runs::RunSettings) -> EnvironmentState {
    done.iter().fold(state.clone(), |s, d| runs::after_work(&s, d, ctx, settings))
}

fn announcement<'a>(
    key: &'a EnvKey,
    run: &'a runs::Run,
    state: DeploymentState,
    duration_ms: Option<u64>,
    (log_url, environment_url): (Option<&'a str>, Option<&'a str>),
    slack: Option<&'a crate::repo_config::SecretName>,
) -> super::ports::Announcement<'a> {
    super::ports::Announcement {
        repo: &key.repo,
        environment: &key.environment,
        deployment: run.deployment.id,
        sha: &run.deployment.sha,
        pr: run.deployment.pr,
        requester: run.deployment.requester.as_deref(),
        state,
        duration_ms,
        log_url,
        environment_url,
        slack,
    }
}

fn text_at(payload: &serde_json::Value, pointer: &str) -> Option<String> {
    payload.pointer(pointer).and_then(|v| v.as_str()).filter(|t| !t.is_empty()).map(str::to_owned)
}

fn running(state: &EnvironmentState) -> Result<&runs::Run, ServiceError> {
    state.running.as_ref().ok_or_else(|| ServiceError::GitHub(GitHubError::BadResponse("no run to work on".into())))
}

/// The state of deployment `id` as its environment knows it.
fn state_of(state: &EnvironmentState, id: DeploymentId) -> DeploymentState {
    if let Some(run) = state.running.as_ref().filter(|r| r.deployment.id == id) {
        return match &run.phase {
            Phase::Finishing { result, .. } => result.state,
            _ => DeploymentState::InProgress,
        };
    }
    if state.queue.iter().any(|q| q.id == id) {
        return DeploymentState::Queued;
    }
    state.recent.iter().rev().find(|r| r.id == id).map_or(DeploymentState::Pending, |r| r.state)
}

/// One caller of the state machine: its lease token, and the callback secret of a run it starts.
struct Holder {
    token: String,
    secret: String,
}

impl Holder {
    /// Fails (the request fails, and is retried) when the OS random source fails: a callback
    /// secret is never made from a weaker one.
    fn new() -> Result<Self, ServiceError> {
        let token = random_bytes::<8>(getrandom::fill).ok_or(ServiceError::NoRandomness)?;
        let secret = random_bytes::<16>(getrandom::fill).ok_or(ServiceError::NoRandomness)?;
        Ok(Self { token: hex::encode(token), secret: hex::encode(secret) })
    }

    fn token(&self) -> &str {
        &self.token
    }

    fn ctx(&self, now: u64) -> Ctx<'_> {
        Ctx { now, token: &self.token, secret: &self.secret }
    }
}

/// `N` bytes from `fill` (the OS source); `None` if it fails: there is no weaker fallback.
fn random_bytes<const N: usize>(fill: impl FnOnce(&mut [u8]) -> Result<(), getrandom::Error>) -> Option<[u8; N]> {
    let mut bytes = [0u8; N];
    match fill(&mut bytes) {
        Ok(()) => Some(bytes),
        Err(err) => {
            warn!(error = %err, "the OS random source failed; the request fails rather than use a weaker one");
            None
        }
    }
}

/// A run's callback token: `<locator>.<secret>`. The locator (base64url of repository,
/// environment and deployment id) tells which environment to load; the secret is 128 random
/// bits. Only a hash of the secret is stored, and it is compared in constant time.
#[derive(Clone, PartialEq, Eq)]
pub struct CallbackToken {
    raw: String,
    pub repo: RepoFullName,
    pub environment: Environment,
    pub deployment: DeploymentId,
}

impl std::fmt::Debug for CallbackToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackToken").field("deployment", &self.deployment).finish_non_exhaustive()
    }
}

impl CallbackToken {
    pub fn new(repo: &RepoFullName, environment: &Environment, deployment: DeploymentId, secret: &str) -> Self {
        let locator = format!("{}\n{}\n{}", repo.as_str(), environment.as_str(), deployment.0);
        let raw = format!("{}.{secret}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(locator));
        Self { raw, repo: repo.clone(), environment: environment.clone(), deployment }
    }

    /// Reads a token from a callback URL; `None` for anything malformed.
    pub fn parse(raw: &str) -> Option<Self> {
        if raw.len() > 1024 {
            return None;
        }
        let (locator, secret) = raw.split_once('.')?;
        if secret.len() != 32 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let locator = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(locator).ok()?;
        let locator = String::from_utf8(locator).ok()?;
        let mut parts = locator.split('\n');
        let repo = RepoFullName::parse(parts.next()?).ok()?;
        let environment = Environment::parse(parts.next()?).ok()?;
        let deployment = DeploymentId(parts.next()?.parse().ok()?);
        if parts.next().is_some() {
            return None;
        }
        Some(Self { raw: raw.to_owned(), repo, environment, deployment })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// What the state keeps of it: see [`runs::secret_hash`].
    pub fn hash(&self) -> String {
        let secret = self.raw.rsplit_once('.').map_or("", |(_, s)| s);
        runs::secret_hash(secret)
    }
}

#[cfg(test)]
mod random_tests {
    use super::*;

    #[test]
    fn a_failing_os_random_source_gives_no_bytes_rather_than_weaker_ones() {
        let failing = |_: &mut [u8]| Err(getrandom::Error::UNSUPPORTED);
        assert_eq!(random_bytes::<16>(failing), None);
        let filled = random_bytes::<16>(|b: &mut [u8]| {
            b.fill(7);
            Ok(())
        });
        assert_eq!(filled, Some([7; 16]));
        assert!(Holder::new().is_ok());
    }
}
