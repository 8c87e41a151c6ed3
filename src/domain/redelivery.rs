//! Failed deliveries, redelivered: GitHub never retries a delivery that got a 5xx or no answer,
//! so each sweep lists the webhook's recent deliveries and asks GitHub to redeliver, once per
//! sweep and at most `REDELIVERY_MAX_ATTEMPTS` times, spaced out, every delivery (by `guid`) whose
//! attempts all failed that way. A 4xx is never redelivered: it would fail the same way.
//!
//! The state kept per webhook is a watermark (nothing older needs looking at again) and the
//! guids still being retried. The watermark only moves past what is settled, and is written
//! after the redeliveries: a sweep that stops midway (GitHub or DynamoDB down) is caught up by
//! the next one, at the cost of at most one early repeat.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::deadline::Deadline;
use super::ports::{Clock, DeployAction, GitHub, HookDelivery, HookRef, Store};
use super::service::{Service, ServiceError};

/// GitHub keeps deliveries for 3 days.
pub const LOOKBACK_MS: u64 = 3 * 24 * 3600 * 1000;
/// The first redelivery waits this long after the failed attempt; each next one twice as long.
pub const FIRST_BACKOFF_MS: u64 = 60_000;
/// The watermark stays this far behind the sweep's clock: a delivery still in flight while the
/// list is read (GitHub waits 10 s for an answer) shows up later with an earlier `delivered_at`.
pub const SETTLE_MS: u64 = 60_000;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedeliveryState {
    /// RFC 3339: deliveries before this are settled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<String>,
    /// Guids being retried: how often we redelivered, and when last.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retrying: BTreeMap<String, Retrying>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retrying {
    pub redeliveries: u32,
    pub last_ms: u64,
    #[serde(default)]
    pub gave_up: bool,
}

/// What one sweep of one webhook saw and decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedeliveryPlan {
    /// (guid, attempt id to redeliver).
    pub redeliver: Vec<(String, u64)>,
    /// (guid, event) that ran out of redeliveries in this sweep.
    pub give_up: Vec<(String, String)>,
    pub seen: usize,
    pub settled: usize,
    pub waiting: usize,
    /// The state once every redelivery of the plan is done.
    pub next: RedeliveryState,
}

fn ms(rfc3339: &str) -> u64 {
    humantime::parse_rfc3339_weak(rfc3339.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(rfc3339))
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

fn iso(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

/// Where the listing starts: the watermark, but never more than GitHub keeps.
pub fn since(state: &RedeliveryState, now_ms: u64) -> String {
    let floor = now_ms.saturating_sub(LOOKBACK_MS);
    iso(state.watermark.as_deref().map_or(floor, ms).max(floor))
}

/// Decides, from the attempts GitHub lists, which guids to redeliver now.
pub fn plan(
    state: &RedeliveryState,
    deliveries: &[HookDelivery],
    now_ms: u64,
    max_redeliveries: u32,
) -> RedeliveryPlan {
    let mut by_guid: HashMap<&str, Vec<&HookDelivery>> = HashMap::new();
    for d in deliveries {
        by_guid.entry(d.guid.as_str()).or_default().push(d);
    }
    let mut out = RedeliveryPlan { seen: by_guid.len(), ..Default::default() };
    let mut next = RedeliveryState::default();
    // The oldest first attempt of a guid still unsettled: the watermark cannot pass it.
    let mut oldest_open: Option<u64> = None;
    let mut newest_seen: Option<u64> = None;
    for (guid, mut attempts) in by_guid {
        attempts.sort_by_key(|a| (ms(&a.delivered_at), a.id));
        let (first, latest) = (attempts[0], attempts[attempts.len() - 1]);
        newest_seen = newest_seen.max(Some(ms(&latest.delivered_at)));
        let succeeded = attempts.iter().any(|a| (200..300).contains(&a.status_code));
        // 409 is our "another attempt is working on this right now": a later try can succeed.
        let refused = (400..500).contains(&latest.status_code) && latest.status_code != 409;
        if succeeded || refused {
            out.settled += 1;
            continue;
        }
        let tracked = state.retrying.get(guid).cloned().unwrap_or_default();
        if tracked.gave_up {
            out.settled += 1;
            next.retrying.insert(guid.to_owned(), tracked);
            continue;
        }
        if tracked.redeliveries >= max_redeliveries {
            out.give_up.push((guid.to_owned(), latest.event.clone()));
            out.settled += 1;
            next.retrying.insert(guid.to_owned(), Retrying { gave_up: true, ..tracked });
            continue;
        }
        oldest_open = oldest_open.min(Some(ms(&first.delivered_at))).or(Some(ms(&first.delivered_at)));
        let last_try = tracked.last_ms.max(ms(&latest.delivered_at));
        let backoff = FIRST_BACKOFF_MS << tracked.redeliveries.min(10);
        if now_ms >= last_try + backoff {
            out.redeliver.push((guid.to_owned(), latest.id));
            next.retrying.insert(
                guid.to_owned(),
                Retrying { redeliveries: tracked.redeliveries + 1, last_ms: now_ms, gave_up: false },
            );
        } else {
            out.waiting += 1;
            next.retrying.insert(guid.to_owned(), tracked);
        }
    }
    // Guids that left the listing's window are forgotten with it.
    let floor = now_ms.saturating_sub(LOOKBACK_MS);
    next.retrying.retain(|_, r| r.last_ms >= floor || r.last_ms == 0);
    let watermark = match (oldest_open, newest_seen) {
        (Some(open), _) => Some(open),
        (None, Some(newest)) => Some(newest),
        (None, None) => state.watermark.as_deref().map(ms),
    };
    next.watermark = watermark.map(|w| iso(w.min(now_ms.saturating_sub(SETTLE_MS)).max(floor)));
    out.next = next;
    out
}

/// What the redelivery part of one sweep did, over every webhook.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedeliveryReport {
    pub seen: usize,
    pub redelivered: usize,
    pub settled: usize,
    pub gave_up: usize,
    pub failed_hooks: usize,
}

impl<S: Store, G: GitHub, D: DeployAction, C: Clock> Service<S, G, D, C> {
    /// Redelivers what failed on each webhook this deployer watches.
    pub async fn redeliver_failed(&self, deadline: Deadline) -> RedeliveryReport {
        let mut report = RedeliveryReport::default();
        for hook in &self.settings.redelivery_hooks {
            match self.redeliver_hook(hook, deadline).await {
                Ok(plan) => {
                    report.seen += plan.seen;
                    report.redelivered += plan.redeliver.len();
                    report.settled += plan.settled;
                    report.gave_up += plan.give_up.len();
                }
                Err(err) => {
                    report.failed_hooks += 1;
                    warn!(hook = %hook, error = %err, "could not sweep the webhook's deliveries; the next sweep catches up");
                }
            }
        }
        report
    }

    async fn redeliver_hook(&self, hook: &HookRef, deadline: Deadline) -> Result<RedeliveryPlan, ServiceError> {
        let current = self.store.load_redelivery(hook).await?;
        let now = self.clock.now_ms();
        let deliveries = self.github.list_hook_deliveries(hook, &since(&current.state, now), deadline).await?;
        let mut plan = plan(&current.state, &deliveries, now, self.settings.redelivery_max_attempts);
        for (guid, event) in &plan.give_up {
            warn!(hook = %hook, guid = %guid, event = %event, "a delivery failed every redelivery; giving up on it");
        }
        let mut done = 0;
        let mut failure = None;
        for (guid, id) in &plan.redeliver {
            match self.github.redeliver(hook, *id, deadline).await {
                Ok(()) => done += 1,
                Err(err) => {
                    warn!(hook = %hook, guid = %guid, error = %err, "a redelivery failed; the next sweep tries again");
                    failure = Some(err);
                    break;
                }
            }
        }
        if failure.is_some() {
            // Keep what was done; the rest (and the watermark) stays as it was.
            let undone: Vec<String> = plan.redeliver[done..].iter().map(|(g, _)| g.clone()).collect();
            for guid in &undone {
                match current.state.retrying.get(guid) {
                    Some(before) => plan.next.retrying.insert(guid.clone(), before.clone()),
                    None => plan.next.retrying.remove(guid),
                };
            }
            plan.next.watermark = current.state.watermark.clone();
            plan.redeliver.truncate(done);
        }
        if plan.next != current.state {
            // Another sweep may have written meanwhile: then its view wins this round.
            let _ = self.store.save_redelivery(hook, &plan.next, current.version).await?;
        }
        debug!(
            hook = %hook,
            seen = plan.seen,
            redelivered = plan.redeliver.len(),
            settled = plan.settled,
            waiting = plan.waiting,
            gave_up = plan.give_up.len(),
            "redelivery sweep"
        );
        match failure {
            Some(err) => Err(err.into()),
            None => Ok(plan),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(id: u64, guid: &str, at: &str, status: u16) -> HookDelivery {
        HookDelivery {
            id,
            guid: guid.into(),
            delivered_at: at.into(),
            status_code: status,
            event: "pull_request".into(),
        }
    }

    const NOW: &str = "2026-11-22T20:00:00Z";

    #[test]
    fn only_guids_whose_attempts_all_failed_with_5xx_or_no_answer_are_redelivered() {
        let list = [
            attempt(1, "a", "2026-11-22T19:00:00Z", 502),
            attempt(2, "b", "2026-11-22T19:00:00Z", 500),
            attempt(3, "b", "2026-11-22T19:10:00Z", 200),
            attempt(4, "c", "2026-11-22T19:00:00Z", 401),
            attempt(9, "f", "2026-11-22T19:00:00Z", 409),
            attempt(5, "d", "2026-11-22T19:00:00Z", 0),
            attempt(6, "e", "2026-11-22T19:59:30Z", 503),
        ];
        let p = plan(&RedeliveryState::default(), &list, ms(NOW), 5);
        let mut guids: Vec<&str> = p.redeliver.iter().map(|(g, _)| g.as_str()).collect();
        guids.sort();
        assert_eq!(guids, ["a", "d", "f"], "e failed 30 s ago: it waits for its backoff; 409 is 'busy', not refused");
        assert_eq!((p.seen, p.settled, p.waiting), (6, 2, 1));
        // The watermark stays at the oldest open guid.
        assert_eq!(p.next.watermark.as_deref(), Some("2026-11-22T19:00:00Z"));
    }

    #[test]
    fn redeliveries_are_spaced_out_and_capped() {
        let list = [attempt(1, "a", "2026-11-22T19:00:00Z", 502)];
        let mut state = RedeliveryState::default();
        let mut now = ms(NOW);
        let mut redelivered = 0;
        for _ in 0..200 {
            let p = plan(&state, &list, now, 3);
            redelivered += p.redeliver.len();
            if !p.give_up.is_empty() {
                break;
            }
            state = p.next;
            now += 60_000;
        }
        assert_eq!(redelivered, 3);
        assert!(state.retrying["a"].redeliveries == 3);
        let p = plan(&state, &list, now + 3_600_000, 3);
        assert!(p.redeliver.is_empty());
        assert!(p.next.retrying["a"].gave_up);
        // Given up: settled, and the watermark moves on.
        assert_eq!(p.next.watermark.as_deref(), Some("2026-11-22T19:00:00Z"));
        let again = plan(&p.next, &list, now + 7_200_000, 3);
        assert!(again.give_up.is_empty(), "the WARN is logged once");
    }

    #[test]
    fn the_watermark_moves_to_the_newest_when_all_is_settled_and_never_before_the_lookback() {
        let list = [attempt(1, "a", "2026-11-22T19:00:00Z", 200), attempt(2, "b", "2026-11-22T19:30:00Z", 422)];
        let p = plan(&RedeliveryState::default(), &list, ms(NOW), 5);
        assert_eq!(p.next.watermark.as_deref(), Some("2026-11-22T19:30:00Z"));
        // Never closer than a minute to now: a delivery in flight may still be listed late.
        let recent = [attempt(3, "c", "2026-11-22T19:59:50Z", 200)];
        let p = plan(&RedeliveryState::default(), &recent, ms(NOW), 5);
        assert_eq!(p.next.watermark.as_deref(), Some("2026-11-22T19:59:00Z"));
        let old = RedeliveryState { watermark: Some("2026-01-01T00:00:00Z".into()), ..Default::default() };
        assert_eq!(since(&old, ms(NOW)), "2026-11-19T20:00:00Z");
    }
}
