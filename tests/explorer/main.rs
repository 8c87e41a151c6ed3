#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking
//! A deterministic explorer of the run protocol, in the spirit of FoundationDB's and
//! TigerBeetle's simulation testing: the real `Service` (runs, runner, service) over in-memory
//! ports, where every store, GitHub and hook call is a scheduling point. At each point the
//! explorer chooses what happens next: which waiting instance goes on, whether its call fails
//! (DynamoDB unavailable, a write applied but answered with an error or with our own item as a
//! conflict, GitHub 502 before or after creating a status), whether the instance dies there, and
//! which outside event comes (a `deployment` event in any merge order or again, the webhook of
//! any status, a callback early, late, twice or never, someone else's terminal status on a
//! running, queued or not yet delivered deployment, a sweep with the clock moved to the next
//! lease, retry or deadline: instances older than the function timeout die then).
//!
//! Invariants, checked as the world changes and when it has settled (sim.rs says exactly how):
//! one run per environment; merge order (never older code after newer); newest delivered wins;
//! nothing we post after a terminal status of ours, or of someone else's that we had read; the
//! hook called again only after its caller was lost and with no answer or accepted callback
//! recorded; every deployment ends in a terminal status, at most one of them ours; nothing owed
//! once everything is delivered and swept.
//!
//! Two modes. Exhaustive: every sequence of choices of a small scenario, depth first. Random:
//! seeded runs of larger ones. A failure prints the run shrunk to its shortest form and a
//! replay line. `make test` runs a bounded amount; `make explore` runs at length
//! (`EXPLORE_SEEDS`, `EXPLORE_RUNS`). Not simulated: creations from merges, comment commands,
//! checks and the redelivery of failed deliveries (their paths write nothing to an
//! environment's run state).

mod sequences;
mod sim;

use std::time::Instant;

use deploy_webhook::domain::types::DeploymentState;
use sim::{Chooser, HookMode, RunReport, Scenario, Sim};

// ------------------------------------------------------------------ choosers

/// Depth first over every sequence of choices.
#[derive(Default)]
struct DepthFirst {
    /// (picked, of how many) at each free choice of the current run.
    path: Vec<(usize, usize)>,
    pos: usize,
}

impl Chooser for DepthFirst {
    fn pick(&mut self, n: usize) -> usize {
        let pos = self.pos;
        self.pos += 1;
        match self.path.get_mut(pos) {
            Some(entry) => {
                entry.1 = n;
                entry.0.min(n - 1)
            }
            None => {
                self.path.push((0, n));
                0
            }
        }
    }
}

impl DepthFirst {
    /// Moves to the next sequence; false when every one was played.
    fn advance(&mut self) -> bool {
        self.path.truncate(self.pos);
        self.pos = 0;
        while let Some(last) = self.path.last_mut() {
            if last.0 + 1 < last.1 {
                last.0 += 1;
                return true;
            }
            self.path.pop();
        }
        false
    }
}

/// Plays recorded picks, then the first open move.
pub(crate) struct Replay {
    picks: Vec<usize>,
    next: usize,
}

impl Replay {
    pub(crate) fn new(picks: &[usize]) -> Self {
        Self { picks: picks.to_vec(), next: 0 }
    }
}

impl Chooser for Replay {
    fn pick(&mut self, n: usize) -> usize {
        let pick = self.picks.get(self.next).copied().unwrap_or(0);
        self.next += 1;
        pick.min(n - 1)
    }
}

struct Random(fastrand::Rng);

impl Chooser for Random {
    fn pick(&mut self, n: usize) -> usize {
        self.0.usize(..n)
    }
}

// ------------------------------------------------------------------ scenarios

pub(crate) fn base(name: &'static str) -> Scenario {
    Scenario {
        name,
        deployments: vec![1, 2],
        hook_modes: vec![HookMode::Success],
        faults: 0,
        kills: 0,
        redeliveries: 0,
        person: None,
        sweeps: 2,
        locks: 0,
        own_status_hooks: false,
        max_steps: 60,
    }
}

/// The small scopes explored exhaustively in `make test`: the first ones small enough to be
/// exhausted, the others cut at `EXPLORE_RUNS`.
fn small_scenarios() -> Vec<Scenario> {
    vec![
        Scenario { deployments: vec![1], faults: 1, sweeps: 0, ..base("one sync deployment, one fault") },
        Scenario { sweeps: 0, ..base("two sync deployments in any order") },
        Scenario {
            deployments: vec![1],
            hook_modes: vec![HookMode::Accepted],
            kills: 1,
            sweeps: 0,
            ..base("one async deployment, one death")
        },
        Scenario { faults: 1, ..base("two sync deployments, one store or GitHub fault") },
        Scenario {
            hook_modes: vec![HookMode::Accepted],
            kills: 1,
            ..base("two async deployments, one instance death")
        },
        Scenario {
            hook_modes: vec![HookMode::Accepted],
            person: Some((1, DeploymentState::Error)),
            ..base("async, someone else ends the first deployment")
        },
        Scenario {
            hook_modes: vec![HookMode::Success],
            person: Some((2, DeploymentState::Error)),
            ..base("sync, someone else ends the second deployment")
        },
        Scenario {
            deployments: vec![1],
            hook_modes: vec![HookMode::Accepted],
            faults: 1,
            redeliveries: 1,
            ..base("one async deployment, one fault, a callback or delivery twice")
        },
        Scenario { locks: 2, ..base("two sync deployments, a lock and an unlock") },
    ]
}

/// Larger scopes for seeded random runs.
fn large_scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            deployments: vec![1, 2, 3],
            hook_modes: vec![HookMode::Success, HookMode::Failure, HookMode::Accepted],
            faults: 3,
            kills: 2,
            redeliveries: 2,
            person: Some((2, DeploymentState::Error)),
            sweeps: 6,
            locks: 2,
            own_status_hooks: true,
            max_steps: 120,
            ..base("three deployments, every kind of fault")
        },
        Scenario {
            deployments: vec![1, 2, 3, 4],
            hook_modes: vec![HookMode::Accepted, HookMode::Success],
            faults: 4,
            kills: 2,
            redeliveries: 3,
            person: Some((3, DeploymentState::Failure)),
            sweeps: 8,
            locks: 3,
            own_status_hooks: true,
            max_steps: 160,
            ..base("four deployments, many faults")
        },
    ]
}

/// `EXPLORE_SCOPE=<words>`: only the scopes whose name contains them.
fn chosen(scenario: &Scenario) -> bool {
    std::env::var("EXPLORE_SCOPE").map_or(true, |words| scenario.name.contains(words.trim()))
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

// ------------------------------------------------------------------ failures: shrink and replay

fn play_back(scenario: &Scenario, picks: &[usize]) -> RunReport {
    Sim::new(scenario).run(&[], &mut Replay::new(picks))
}

/// The shortest picks that still break an invariant: a shorter prefix first, then each pick
/// turned to the first open move.
fn shrink(scenario: &Scenario, mut picks: Vec<usize>) -> Vec<usize> {
    for len in 0..picks.len() {
        if !play_back(scenario, &picks[..len]).violations.is_empty() {
            picks.truncate(len);
            break;
        }
    }
    for i in 0..picks.len() {
        if picks[i] != 0 {
            let mut simpler = picks.clone();
            simpler[i] = 0;
            if !play_back(scenario, &simpler).violations.is_empty() {
                picks = simpler;
            }
        }
    }
    picks
}

fn fail(scenario: &Scenario, picks: Vec<usize>) -> ! {
    let picks = shrink(scenario, picks);
    let report = play_back(scenario, &picks);
    let replay_line = picks.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    panic!(
        "an invariant broke in \"{}\":\n{}\n\nthe run:\n{}\n\nreplay: EXPLORE_SCENARIO=\"{}\" EXPLORE_REPLAY={replay_line} cargo test --test explorer replay -- --nocapture",
        scenario.name,
        report.violations.join("\n"),
        report.trace.join("\n"),
        scenario.name,
    );
}

// ------------------------------------------------------------------ the modes

struct Figures {
    runs: u64,
    steps: u64,
    complete: bool,
}

fn exhaustive(scenario: &Scenario, max_runs: u64) -> Figures {
    let mut chooser = DepthFirst::default();
    let mut figures = Figures { runs: 0, steps: 0, complete: false };
    loop {
        let report = Sim::new(scenario).run(&[], &mut chooser);
        figures.runs += 1;
        figures.steps += report.steps;
        if !report.violations.is_empty() {
            eprintln!("run {} broke an invariant: {}; shrinking", figures.runs, report.violations.join("; "));
            fail(scenario, report.picks);
        }
        if !chooser.advance() {
            figures.complete = true;
            return figures;
        }
        if figures.runs >= max_runs {
            return figures;
        }
    }
}

fn random(scenario: &Scenario, seeds: std::ops::Range<u64>) -> Figures {
    let mut figures = Figures { runs: 0, steps: 0, complete: true };
    for seed in seeds {
        let report = Sim::new(scenario).run(&[], &mut Random(fastrand::Rng::with_seed(seed)));
        figures.runs += 1;
        figures.steps += report.steps;
        if !report.violations.is_empty() {
            eprintln!("seed {seed} broke an invariant; shrinking");
            fail(scenario, report.picks);
        }
    }
    figures
}

#[test]
fn every_interleaving_of_the_small_scopes_keeps_the_invariants() {
    let max_runs = env_number("EXPLORE_RUNS", 10_000);
    for scenario in small_scenarios().into_iter().filter(chosen) {
        let started = Instant::now();
        let f = exhaustive(&scenario, max_runs);
        println!(
            "exhaustive  {:<64} {:>8} runs {:>10} steps  {}  {:.1} s",
            scenario.name,
            f.runs,
            f.steps,
            if f.complete { "complete" } else { "cut at EXPLORE_RUNS" },
            started.elapsed().as_secs_f64()
        );
    }
}

#[test]
fn seeded_random_runs_of_larger_scopes_keep_the_invariants() {
    let seeds = env_number("EXPLORE_SEEDS", 300);
    for scenario in large_scenarios().into_iter().filter(chosen) {
        let started = Instant::now();
        let f = random(&scenario, 0..seeds);
        println!(
            "random      {:<64} {:>8} runs {:>10} steps  {:.1} s",
            scenario.name,
            f.runs,
            f.steps,
            started.elapsed().as_secs_f64()
        );
    }
}

/// `EXPLORE_SCENARIO="<name>" EXPLORE_REPLAY=<picks> cargo test --test explorer replay`.
#[test]
fn replay() {
    let (Ok(name), Ok(picks)) = (std::env::var("EXPLORE_SCENARIO"), std::env::var("EXPLORE_REPLAY")) else {
        return;
    };
    let scenario =
        small_scenarios().into_iter().chain(large_scenarios()).find(|s| s.name == name).expect("no such scenario");
    let picks: Vec<usize> = picks.split(',').filter(|p| !p.is_empty()).map(|p| p.trim().parse().unwrap()).collect();
    let report = play_back(&scenario, &picks);
    println!("{}", report.trace.join("\n"));
    assert!(report.violations.is_empty(), "{}", report.violations.join("\n"));
}
