//! The five sequences that broke the run engine's promises (issue #17), each played move by
//! move through the simulated world, then left to settle; every invariant is checked, and each
//! test asserts what the sequence broke. A move is the label the explorer prints in a trace.

use deploy_webhook::domain::types::DeploymentState;

use super::sim::{HookMode, PERSON, RunReport, Scenario, Sim, US};
use super::{Replay, base};

fn play(scenario: Scenario, script: &[&str]) -> RunReport {
    let report = Sim::new(&scenario).run(script, &mut Replay::new(&[]));
    assert!(report.violations.is_empty(), "{}\n\n{}", report.violations.join("\n"), report.trace.join("\n"));
    report
}

fn states(report: &RunReport, d: u64) -> Vec<(DeploymentState, &'static str)> {
    report.statuses.get(&d).map(|s| s.iter().map(|s| (s.state, s.creator)).collect()).unwrap_or_default()
}

fn hook_calls(report: &RunReport, d: u64) -> usize {
    report.hook_calls.iter().filter(|(id, _, _)| *id == d).count()
}

/// Room for the moves a script makes: one fault, one death, someone else's `error` on `person`.
fn scope(hook: HookMode, person: u64) -> Scenario {
    Scenario {
        hook_modes: vec![hook],
        faults: 1,
        kills: 1,
        person: Some((person, DeploymentState::Error)),
        ..base("a named sequence")
    }
}

fn async_hooks() -> Scenario {
    scope(HookMode::Accepted, 2)
}

fn sync_hooks() -> Scenario {
    scope(HookMode::Success, 1)
}

const D1_AWAITS_ITS_CALLBACK: [&str; 7] = [
    "deliver d1",
    "t1 load",
    "t1 save",
    "t1 post d1 in_progress",
    "t1 hook-send d1 accepted",
    "t1 hook-answer d1",
    "t1 save",
];

const D2_QUEUED: [&str; 5] = ["deliver d2", "t2 load", "t2 save", "t2 post d2 queued", "t2 save"];

#[test]
fn sequence_1_an_ambiguous_write_is_our_own_and_the_next_deployment_runs() {
    let mut script = D1_AWAITS_ITS_CALLBACK.to_vec();
    script.extend(D2_QUEUED);
    // The callback ends d1 and starts d2; the write "d2 runs" is applied, its answer lost, and
    // the SDK's retry answers our own item as a conflict.
    script.extend(["callback d1", "t3 load", "t3 save", "t3 post d1 success", "t3 save ambiguous-retried"]);
    let report = play(async_hooks(), &script);
    assert_eq!(hook_calls(&report, 2), 1, "d2 is deployed once");
    assert_eq!(
        states(&report, 2).iter().map(|s| s.0).collect::<Vec<_>>(),
        [DeploymentState::Queued, DeploymentState::InProgress, DeploymentState::Success],
        "d2 runs, and its callback ends it"
    );
}

#[test]
fn sequence_1_variant_a_write_applied_and_answered_with_an_error_loses_nothing() {
    let mut script = D1_AWAITS_ITS_CALLBACK.to_vec();
    script.extend(D2_QUEUED);
    script.extend(["callback d1", "t3 load", "t3 save", "t3 post d1 success", "t3 save ambiguous-lost"]);
    let report = play(async_hooks(), &script);
    assert_eq!(hook_calls(&report, 2), 1);
    assert_eq!(states(&report, 1).iter().filter(|s| s.0.is_terminal()).count(), 1, "{:?}", states(&report, 1));
}

#[test]
fn sequence_2_a_hook_answer_is_kept_through_a_failed_post_and_a_conflict() {
    let script = [
        "deliver d1",
        "t1 load",
        "t1 save",
        "t1 post d1 in_progress",
        "t1 hook-send d1 success",
        "t1 hook-answer d1",
        "t1 load",
        // d2 is queued meanwhile: the holder's next write conflicts.
        "deliver d2",
        "t2 load",
        "t2 save",
        "t1 post d1 success unavailable",
        "t1 save",
    ];
    let report = play(sync_hooks(), &script);
    assert_eq!(hook_calls(&report, 1), 1, "the hook is not called again: its answer was recorded");
    assert_eq!(states(&report, 1).last().map(|s| s.0), Some(DeploymentState::Success));
    assert_eq!(hook_calls(&report, 2), 1);
}

#[test]
fn sequence_3_a_callback_after_its_caller_died_is_the_result_and_the_hook_is_not_called_again() {
    let script = [
        "deliver d1",
        "t1 load",
        "t1 save",
        "t1 post d1 in_progress",
        "t1 hook-send d1 accepted",
        "kill t1",
        // The lease runs out; the callback comes before any sweep.
        "wait",
        "callback d1",
        "t2 load",
        "t2 save",
    ];
    let scenario =
        Scenario { deployments: vec![1], hook_modes: vec![HookMode::Accepted, HookMode::Failure], ..async_hooks() };
    let report = play(scenario, &script);
    assert_eq!(hook_calls(&report, 1), 1, "the accepted callback is the result");
    assert_eq!(states(&report, 1).last().map(|s| s.0), Some(DeploymentState::Success));
}

#[test]
fn sequence_4_someone_elses_error_while_a_run_starts_ends_it_and_nothing_is_posted_after() {
    let script = [
        "deliver d1",
        "t1 load",
        "t1 save",
        "t1 post d1 in_progress",
        // An operator ends it by hand while the hook is about to be called.
        "person error d1",
        "status-hook d1 error by alice",
        "t2 record-status",
        "t2 own-login",
        "t2 load",
        "t2 save",
        "t1 hook-send d1 success",
        "t1 hook-answer d1",
    ];
    let report = play(sync_hooks(), &script);
    assert_eq!(
        states(&report, 1),
        [(DeploymentState::InProgress, US), (DeploymentState::Error, PERSON)],
        "the hook's success is not posted after the operator's error"
    );
}

#[test]
fn sequence_4_variant_our_own_terminal_status_coming_back_is_not_taken_for_someone_elses() {
    let scenario = Scenario { deployments: vec![1], own_status_hooks: true, ..sync_hooks() };
    let script =
        ["deliver d1", "t1 load", "t1 save", "t1 post d1 in_progress", "t1 hook-send d1 success", "t1 hook-answer d1"];
    let report = play(scenario, &script);
    assert_eq!(states(&report, 1), [(DeploymentState::InProgress, US), (DeploymentState::Success, US)]);
}

#[test]
fn sequence_5_a_queued_deployment_ended_by_someone_else_never_runs() {
    let mut script = D1_AWAITS_ITS_CALLBACK.to_vec();
    script.extend(D2_QUEUED);
    script.extend([
        "person error d2",
        "status-hook d2 error by alice",
        "t3 record-status",
        "t3 own-login",
        "t3 load",
        "t3 save",
        "callback d1",
    ]);
    let report = play(async_hooks(), &script);
    assert_eq!(hook_calls(&report, 2), 0, "d2 never runs");
    assert_eq!(states(&report, 2), [(DeploymentState::Queued, US), (DeploymentState::Error, PERSON)]);
    assert_eq!(states(&report, 1).last().map(|s| s.0), Some(DeploymentState::Success));
}

#[test]
fn sequence_5_variant_a_deployment_ended_before_its_event_arrives_never_runs() {
    let script = [
        "person error d1",
        "status-hook d1 error by alice",
        "t1 record-status",
        "t1 own-login",
        "t1 load",
        "t1 save",
        "deliver d1",
        "t2 load",
        "t2 save",
    ];
    let report = play(Scenario { deployments: vec![1], ..sync_hooks() }, &script);
    assert_eq!(hook_calls(&report, 1), 0);
    assert_eq!(states(&report, 1), [(DeploymentState::Error, PERSON)]);
}
