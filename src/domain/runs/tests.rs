#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The state machine as a pure function: no I/O, no clock but the one passed in.

use super::*;

const SETTINGS: RunSettings = RunSettings { lease_ms: 60_000, run_timeout_ms: 1_800_000 };

fn ctx(now: u64, token: &'static str) -> Ctx<'static> {
    Ctx { now, token, secret: "s3cret" }
}

fn dep(id: u64, time: &str) -> DeploymentToRun {
    DeploymentToRun {
        id: DeploymentId(id),
        sha: Sha::parse(&format!("{:040x}", id)).unwrap(),
        git_ref: "main".into(),
        task: "deploy".into(),
        creator: None,
        payload: Value::Null,
        rank: Rank(time.into(), id),
        callback_base: None,
        delivery: format!("d{id}"),
        arrived_ms: 0,
        requester: None,
        pr: None,
    }
}

fn arrive_at(state: &EnvironmentState, d: DeploymentToRun, now: u64, token: &'static str) -> Applied {
    apply(state, &Trigger::Arrived(d), &ctx(now, token), &SETTINGS)
}

/// Does all the work a holder owes, as if every GitHub call and the hook succeeded with `hook`.
fn drive(
    mut s: EnvironmentState,
    now: u64,
    token: &'static str,
    hook: Option<RunResult>,
) -> (EnvironmentState, Vec<Work>) {
    let mut done = Vec::new();
    while let Some(work) = next_work(&s) {
        let id = s.running.as_ref().map(|r| r.deployment.id).unwrap_or(DeploymentId(0));
        let result = match &work {
            Work::Reconcile => Done::Reconciled { posted: vec![] },
            Work::PostNotice(n) => Done::NoticePosted(n.clone()),
            Work::StartNext => Done::StartedNext,
            Work::PostInProgress => Done::InProgressPosted(id),
            Work::CallHook if s.running.as_ref().unwrap().token_hash != secret_hash("s3cret") => {
                Done::SecretReplaced(id)
            }
            Work::CallHook => Done::HookAnswered { deployment: id, result: hook.clone() },
            Work::TakeEarlyResult => Done::HookAnswered { deployment: id, result: None },
            Work::PostResult(_) => Done::ResultPosted(id),
            Work::EndRun => Done::RunEnded(id),
        };
        done.push(work);
        s = after_work(&s, &result, &ctx(now, token), &SETTINGS);
    }
    (release(&s, token, None), done)
}

fn success() -> RunResult {
    RunResult { state: DeploymentState::Success, description: "ok".into(), log_url: None, environment_url: None }
}

#[test]
fn a_free_environment_starts_the_deployment_and_a_busy_one_queues_it() {
    let a = arrive_at(&EnvironmentState::default(), dep(1, "t1"), 0, "A");
    assert_eq!(a.verdict, Verdict::Started);
    assert!(a.state.holds_lease("A"));
    let (s, works) = drive(a.state, 1, "A", None);
    assert_eq!(works, [Work::PostInProgress, Work::CallHook]);
    assert!(matches!(s.running.as_ref().unwrap().phase, Phase::Awaiting));
    assert_eq!(s.due_at(), Some(SETTINGS.run_timeout_ms));

    let b = arrive_at(&s, dep(2, "t2"), 2, "B");
    assert_eq!(b.verdict, Verdict::Queued { behind: DeploymentId(1) });
    assert_eq!(b.state.notices[0].description, "waiting for deployment #1");
    // A redelivery of either changes nothing.
    let again = arrive_at(&b.state, dep(2, "t2"), 3, "C");
    assert_eq!(again.verdict, Verdict::Duplicate { state: DeploymentState::Queued });
    let (s, _) = drive(b.state, 3, "B", None);
    assert_eq!(arrive_at(&s, dep(1, "t1"), 4, "D").verdict, Verdict::Duplicate { state: DeploymentState::InProgress });
}

#[test]
fn when_a_run_ends_the_newest_queued_starts_and_the_older_ones_are_superseded() {
    let s = drive(arrive_at(&Default::default(), dep(1, "t1"), 0, "A").state, 0, "A", None).0;
    let s = drive(arrive_at(&s, dep(2, "t2"), 0, "B").state, 0, "B", None).0;
    let s = drive(arrive_at(&s, dep(3, "t3"), 0, "C").state, 0, "C", None).0;
    let hash = s.running.as_ref().unwrap().token_hash.clone();
    let cb = Trigger::Callback {
        id: DeploymentId(1),
        token_hash: hash.clone(),
        report: CallbackReport::Finished(success()),
    };
    let ended = apply(&s, &cb, &ctx(10, "D"), &SETTINGS);
    assert_eq!(ended.verdict, Verdict::Accepted);
    let (s, works) = drive(ended.state, 10, "D", None);
    assert_eq!(
        works,
        [
            Work::PostResult(success()),
            Work::EndRun,
            Work::PostNotice(Notice {
                deployment: DeploymentId(2),
                state: DeploymentState::Inactive,
                description: "superseded by deployment #3".into(),
                log_url: None
            }),
            Work::PostInProgress,
            Work::CallHook
        ]
    );
    assert_eq!(s.running.as_ref().unwrap().deployment.id, DeploymentId(3));
    assert!(s.queue.is_empty());
    assert_eq!(s.last_success.as_ref().unwrap().id, DeploymentId(1));
    // The same callback again, or another state for it, is already final and changes nothing.
    let late = apply(&s, &cb, &ctx(11, "E"), &SETTINGS);
    assert_eq!(late.verdict, Verdict::AlreadyFinal { state: DeploymentState::Success });
    assert_eq!(late.state, s);
    let forged = Trigger::Callback {
        id: DeploymentId(3),
        token_hash: "00".repeat(16),
        report: CallbackReport::Finished(success()),
    };
    assert_eq!(apply(&s, &forged, &ctx(11, "E"), &SETTINGS).verdict, Verdict::UnknownToken);
}

#[test]
fn an_older_merge_is_superseded_even_with_a_higher_id() {
    let s = drive(arrive_at(&Default::default(), dep(10, "2026-11-22T19:05:00Z"), 0, "A").state, 0, "A", None).0;
    let late = arrive_at(&s, dep(11, "2026-11-22T19:04:00Z"), 1, "B");
    assert_eq!(late.verdict, Verdict::Superseded { by: DeploymentId(10) });
    assert_eq!(late.state.notices[0].state, DeploymentState::Inactive);
    assert!(late.state.queue.is_empty());
}

#[test]
fn an_overdue_run_times_out_with_error_and_a_live_lease_is_respected() {
    let s = drive(arrive_at(&Default::default(), dep(1, "t1"), 0, "A").state, 0, "A", None).0;
    assert_eq!(apply(&s, &Trigger::Sweep, &ctx(1000, "S"), &SETTINGS).verdict, Verdict::Idle);
    let swept = apply(&s, &Trigger::Sweep, &ctx(SETTINGS.run_timeout_ms, "S"), &SETTINGS);
    assert_eq!(swept.verdict, Verdict::Accepted);
    match next_work(&swept.state) {
        Some(Work::PostResult(r)) => {
            assert_eq!(r.state, DeploymentState::Error);
            assert_eq!(r.description, "no result from the deploy hook within 30 min");
        }
        other => panic!("{other:?}"),
    }
    // While S holds the lease, a second sweep does not take it.
    assert_eq!(
        apply(&swept.state, &Trigger::Sweep, &ctx(SETTINGS.run_timeout_ms + 1, "T"), &SETTINGS).verdict,
        Verdict::Idle
    );
    // Once it has expired, the next one does, and reconciles with GitHub first.
    let later = SETTINGS.run_timeout_ms + SETTINGS.lease_ms + 1;
    let taken = apply(&swept.state, &Trigger::Sweep, &ctx(later, "T"), &SETTINGS);
    assert_eq!(taken.verdict, Verdict::Accepted);
    assert_eq!(next_work(&taken.state), Some(Work::Reconcile));
}

#[test]
fn work_done_applies_to_a_fresher_state_without_losing_what_others_added() {
    let s = drive(arrive_at(&Default::default(), dep(1, "t1"), 0, "A").state, 0, "A", None).0;
    // A queues #2 holding the lease; meanwhile B queues #3 without it.
    let with_a = arrive_at(&s, dep(2, "t2"), 1, "A").state;
    let fresher = arrive_at(&with_a, dep(3, "t3"), 2, "B").state;
    assert!(fresher.holds_lease("A"));
    let Some(Work::PostNotice(first)) = next_work(&with_a) else { panic!() };
    let rebased = after_work(&fresher, &Done::NoticePosted(first), &ctx(3, "A"), &SETTINGS);
    assert_eq!(rebased.notices.len(), 1, "B's notice is still owed");
    assert_eq!(rebased.notices[0].deployment, DeploymentId(3));
}

#[test]
fn random_histories_keep_one_run_at_a_time_and_every_deployment_in_one_place() {
    for seed in 0..300 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut s = EnvironmentState::default();
        let mut now = 0;
        for step in 0..40 {
            now += rng.u64(0..120_000);
            let id = rng.u64(1..12);
            let trigger = match rng.u8(0..4) {
                0 | 1 => Trigger::Arrived(dep(id, &format!("t{:03}", id * 10 + rng.u64(0..3)))),
                2 => {
                    let hash = s.running.as_ref().map(|r| r.token_hash.clone()).unwrap_or_default();
                    let report = if rng.bool() {
                        CallbackReport::Finished(success())
                    } else {
                        CallbackReport::InProgress { description: None, log_url: None }
                    };
                    Trigger::Callback {
                        id: s.running.as_ref().map_or(DeploymentId(id), |r| r.deployment.id),
                        token_hash: hash,
                        report,
                    }
                }
                _ => Trigger::Sweep,
            };
            let token: &'static str = ["A", "B", "C"][step % 3];
            let applied = apply(&s, &trigger, &ctx(now, token), &SETTINGS);
            s = applied.state;
            if s.holds_lease(token) && rng.u8(0..10) > 0 {
                s = drive(s, now, token, if rng.bool() { Some(success()) } else { None }).0;
            }
            let running: Vec<u64> = s.running.iter().map(|r| r.deployment.id.0).collect();
            let queued: Vec<u64> = s.queue.iter().map(|q| q.id.0).collect();
            let finished: Vec<u64> = s.recent.iter().map(|r| r.id.0).collect();
            for id in running.iter().chain(&queued) {
                assert!(!finished.contains(id), "seed {seed}: {id} both finished and active: {s:?}");
            }
            assert!(!queued.iter().any(|q| running.contains(q)), "seed {seed}: {s:?}");
            let mut unique = finished.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), finished.len(), "seed {seed}: a deployment finished twice: {s:?}");
            // Nothing older than what started ever waits to run.
            if let Some(started) = &s.started {
                assert!(s.queue.iter().all(|q| q.rank > *started || s.running.is_none()), "seed {seed}: {s:?}");
            }
        }
    }
}

#[test]
fn a_lock_holds_everyone_but_its_holder_and_unlock_starts_the_newest() {
    let lock = Trigger::Lock { holder: "alice".into(), reason: "incident 42".into() };
    let s = apply(&EnvironmentState::default(), &lock, &ctx(0, "A"), &SETTINGS).state;
    let mut bob = dep(1, "t1");
    bob.requester = Some("bob".into());
    let held = arrive_at(&s, bob, 1, "B");
    assert_eq!(held.verdict, Verdict::Locked { holder: "alice".into() });
    assert_eq!(held.state.notices[0].description, "locked by @alice: incident 42");
    let (s, works) = drive(held.state, 1, "B", None);
    assert!(!works.contains(&Work::PostInProgress), "{works:?}");
    // Someone else cannot take the lock; the holder's own deployment runs.
    let other = Trigger::Lock { holder: "carol".into(), reason: String::new() };
    assert!(matches!(apply(&s, &other, &ctx(2, "C"), &SETTINGS).verdict, Verdict::LockedBy { .. }));
    let mut alice = dep(2, "t2");
    alice.requester = Some("alice".into());
    let own = arrive_at(&s, alice, 3, "D");
    assert_eq!(own.verdict, Verdict::Started);
    let (s, _) = drive(own.state, 3, "D", Some(success()));
    // Bob's older deployment never runs after alice's newer one: it is superseded.
    assert!(s.queue.is_empty(), "{s:?}");
    assert_eq!(s.recent.iter().find(|r| r.id == DeploymentId(1)).unwrap().state, DeploymentState::Inactive);
    let mut bob2 = dep(3, "t3");
    bob2.requester = Some("bob".into());
    let s = drive(arrive_at(&s, bob2, 4, "E").state, 4, "E", None).0;
    let unlocked = apply(&s, &Trigger::Unlock, &ctx(5, "F"), &SETTINGS);
    let (s, works) = drive(unlocked.state, 5, "F", None);
    assert!(works.contains(&Work::StartNext));
    assert_eq!(s.running.as_ref().unwrap().deployment.id, DeploymentId(3), "the newest starts");
    assert_eq!(s.recent.iter().find(|r| r.id == DeploymentId(1)).unwrap().state, DeploymentState::Inactive);
    assert_eq!(s.rollback_target(), None, "only one success so far");
}

#[test]
fn an_in_progress_owed_from_a_callback_is_never_posted_after_the_result() {
    let started = arrive_at(&EnvironmentState::default(), dep(1, "t1"), 0, "A").state;
    let hash = started.running.as_ref().unwrap().token_hash.clone();
    // While A calls the hook (lease live), B records an in_progress callback: A will post it.
    let progress = Trigger::Callback {
        id: DeploymentId(1),
        token_hash: hash,
        report: CallbackReport::InProgress { description: None, log_url: Some("https://log".into()) },
    };
    let with_notice = apply(&started, &progress, &ctx(1, "B"), &SETTINGS).state;
    assert_eq!(with_notice.notices.len(), 1);
    // A's synchronous result, re-applied onto that fresher state: the in_progress goes.
    let answered = after_work(
        &with_notice,
        &Done::HookAnswered { deployment: DeploymentId(1), result: Some(success()) },
        &ctx(2, "A"),
        &SETTINGS,
    );
    assert!(answered.notices.is_empty(), "{answered:?}");
}

#[test]
fn a_result_that_came_back_before_its_caller_died_is_used_not_asked_again() {
    let started = arrive_at(&EnvironmentState::default(), dep(1, "t1"), 0, "A").state;
    let mut s = after_work(&started, &Done::InProgressPosted(DeploymentId(1)), &ctx(0, "A"), &SETTINGS);
    let hash = s.running.as_ref().unwrap().token_hash.clone();
    let done = Trigger::Callback { id: DeploymentId(1), token_hash: hash, report: CallbackReport::Finished(success()) };
    s = apply(&s, &done, &ctx(1, "B"), &SETTINGS).state;
    assert!(s.running.as_ref().unwrap().early_result.is_some());
    // A died before recording the 202; the sweep takes over once its lease has run out.
    let swept = apply(&s, &Trigger::Sweep, &ctx(SETTINGS.lease_ms + 1, "S"), &SETTINGS);
    assert_eq!(swept.verdict, Verdict::Accepted);
    let (_, works) = drive(swept.state, SETTINGS.lease_ms + 1, "S", None);
    assert!(!works.contains(&Work::CallHook), "the hook is not called again: {works:?}");
    assert!(works.contains(&Work::PostResult(success())), "{works:?}");
}
