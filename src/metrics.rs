//! Metrics as CloudWatch Embedded Metric Format: one JSON line on stdout per event, which
//! CloudWatch Logs turns into metrics. No API call and no latency; nothing but names, counts,
//! durations and the environment's name goes into them.
//!
//! Namespace `DeployWebhook`: `Deliveries` and `Callbacks` (by `Outcome`), `DeploymentsStarted`,
//! `DeploymentsSucceeded`, `DeploymentsFailed` (failure or error), `DeploymentsTimedOut`,
//! `DeployDurationMs` and `QueueWaitMs` (by `Environment`, and with no dimension for alarms),
//! `GitHubErrors`, `DynamoErrors`, `SweepRuns`.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value, json};

pub const NAMESPACE: &str = "DeployWebhook";

/// Off until the Lambda entrypoint turns it on: tests and tools that embed the handler print
/// nothing.
static ENABLED: AtomicBool = AtomicBool::new(false);

pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Self::Count => "Count",
            Self::Milliseconds => "Milliseconds",
        }
    }
}

/// The EMF document for `values` with one dimension (also emitted with none), at `now_ms`.
pub fn document(now_ms: u64, dimension: Option<(&str, &str)>, values: &[(&str, f64, Unit)]) -> Value {
    let dimensions = match dimension {
        Some((name, _)) => json!([[name], []]),
        None => json!([[]]),
    };
    let metrics: Vec<Value> =
        values.iter().map(|(name, _, unit)| json!({"Name": name, "Unit": unit.as_str()})).collect();
    let mut doc = Map::new();
    doc.insert(
        "_aws".into(),
        json!({"Timestamp": now_ms, "CloudWatchMetrics": [{"Namespace": NAMESPACE, "Dimensions": dimensions, "Metrics": metrics}]}),
    );
    if let Some((name, value)) = dimension {
        doc.insert(name.into(), Value::String(value.into()));
    }
    for (name, value, _) in values {
        doc.insert((*name).into(), json!(value));
    }
    Value::Object(doc)
}

/// Writes one EMF line. A failed write to stdout is ignored: metrics never fail a delivery.
pub fn emit(now_ms: u64, dimension: Option<(&str, &str)>, values: &[(&str, f64, Unit)]) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let line = document(now_ms, dimension, values).to_string();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}

pub fn count(now_ms: u64, dimension: Option<(&str, &str)>, name: &str) {
    emit(now_ms, dimension, &[(name, 1.0, Unit::Count)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_follow_the_embedded_metric_format() {
        let doc = document(
            1_795_460_400_000,
            Some(("Environment", "production")),
            &[("DeploymentsSucceeded", 1.0, Unit::Count), ("DeployDurationMs", 1234.0, Unit::Milliseconds)],
        );
        assert_eq!(doc["_aws"]["CloudWatchMetrics"][0]["Namespace"], "DeployWebhook");
        assert_eq!(doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([["Environment"], []]));
        assert_eq!(
            doc["_aws"]["CloudWatchMetrics"][0]["Metrics"][1],
            json!({"Name": "DeployDurationMs", "Unit": "Milliseconds"})
        );
        assert_eq!(doc["Environment"], "production");
        assert_eq!(doc["DeployDurationMs"], 1234.0);
        assert_eq!(
            document(1, None, &[("SweepRuns", 1.0, Unit::Count)])["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([[]])
        );
    }
}
