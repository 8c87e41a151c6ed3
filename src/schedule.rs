//! The second entrypoint: the same function runs on an EventBridge schedule (every minute) to
//! sweep: time out overdue runs, start what failed to start, take over work whose holder died.
//! An invocation is told apart by its shape: a scheduled event has `"detail-type": "Scheduled
//! Event"`; everything else is an API Gateway (or function URL) request.

use std::convert::Infallible;
use std::time::Duration;

use lambda_http::lambda_runtime::{Diagnostic, LambdaEvent};
use lambda_http::request::LambdaRequest;
use lambda_http::{Adapter, Request, Service, service_fn};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tracing::{error, info, warn};

use crate::domain::ports::{Clock, DeployAction, GitHub, Store};
use crate::domain::{ServiceError, SweepReport};
use crate::http::WebhookHandler;

/// A sweep that could not run. The invocation fails with it, so that Lambda counts an error (the
/// `function-errors` alarm sees it) instead of a normal answer no alarm looks at.
#[derive(Debug, thiserror::Error)]
#[error("the sweep could not run; the next one tries again (the log has the cause)")]
pub struct SweepFailed;

impl From<SweepFailed> for Diagnostic {
    fn from(err: SweepFailed) -> Self {
        Diagnostic { error_type: "SweepFailed".to_owned(), error_message: err.to_string() }
    }
}

/// One invocation's payload, kept raw until its shape is known (a webhook event is parsed once).
#[derive(Deserialize)]
#[serde(transparent)]
pub struct Invocation(Box<RawValue>);

impl Invocation {
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    fn is_scheduled(&self) -> bool {
        #[derive(Deserialize)]
        struct Probe<'a> {
            #[serde(rename = "detail-type", borrow, default)]
            detail_type: Option<std::borrow::Cow<'a, str>>,
        }
        serde_json::from_str::<Probe<'_>>(self.0.get())
            .is_ok_and(|p| p.detail_type.as_deref() == Some("Scheduled Event"))
    }
}

/// Serves invocations until the runtime stops: the loop both entrypoints (`src/main.rs` and the
/// bench's `preconnect`) run once their handler is built. Metrics go to the log from here on.
pub async fn serve<S, G, D, C>(handler: WebhookHandler<S, G, D, C>, budget: Duration) -> Result<(), lambda_http::Error>
where
    S: Store + 'static,
    G: GitHub + 'static,
    D: DeployAction + 'static,
    C: Clock + 'static,
{
    crate::metrics::enable();
    let handler = std::sync::Arc::new(handler);
    lambda_http::lambda_runtime::run(service_fn(move |event: LambdaEvent<Invocation>| {
        let handler = std::sync::Arc::clone(&handler);
        async move { dispatch(&handler, event, budget).await }
    }))
    .await
}

/// Runs one invocation and returns what Lambda should answer: an API request always has an
/// answer; a sweep that could not run is an invocation error.
pub async fn dispatch<S: Store, G: GitHub, D: DeployAction, C: Clock>(
    handler: &WebhookHandler<S, G, D, C>,
    event: LambdaEvent<Invocation>,
    budget: Duration,
) -> Result<Value, SweepFailed> {
    let LambdaEvent { payload, context } = event;
    if payload.is_scheduled() {
        return sweep(handler, budget).await;
    }
    let request = match serde_json::from_str::<LambdaRequest>(payload.0.get()) {
        Ok(request) => request,
        Err(err) => {
            warn!(error = %err, "an invocation that is neither an API Gateway request nor a scheduled event");
            return Ok(json!({ "status": "bad_request", "message": "unrecognised invocation" }));
        }
    };
    // lambda_http's own adapter turns the request into an `http::Request` and the response back
    // into the answer its origin (HTTP API, REST API, function URL) expects.
    let mut adapter =
        Adapter::from(service_fn(|request: Request| async { Ok::<_, Infallible>(handler.handle(request).await) }));
    match adapter.call(LambdaEvent::new(request, context)).await {
        Ok(response) => Ok(serde_json::to_value(response).unwrap_or(Value::Null)),
        Err(never) => match never {},
    }
}

/// The metric a sweep's result counts: `SweepRuns` only for a sweep that completed (the
/// `sweep-not-running` alarm watches it); a failed one counts as the error it met.
pub fn sweep_metric(result: &Result<SweepReport, ServiceError>) -> &'static str {
    match result {
        Ok(_) => "SweepRuns",
        Err(ServiceError::Store(_)) => "DynamoErrors",
        Err(ServiceError::GitHub(_)) => "GitHubErrors",
        Err(_) => "SweepErrors",
    }
}

/// The sweep, logged as one line with what it saw and did.
pub async fn sweep<S: Store, G: GitHub, D: DeployAction, C: Clock>(
    handler: &WebhookHandler<S, G, D, C>,
    budget: Duration,
) -> Result<Value, SweepFailed> {
    let result = handler.sweep(budget).await;
    crate::metrics::count(crate::domain::ports::SystemClock.now_ms(), None, sweep_metric(&result));
    match result {
        Ok(report) => {
            let r = &report.redelivery;
            info!(
                due = report.due,
                healed = report.healed,
                failed = report.failed,
                deliveries_seen = r.seen,
                redelivered = r.redelivered,
                settled = r.settled,
                gave_up = r.gave_up,
                "sweep done"
            );
            Ok(json!({
                "status": "swept", "due": report.due, "healed": report.healed, "failed": report.failed,
                "redelivery": { "seen": r.seen, "redelivered": r.redelivered, "settled": r.settled, "gave_up": r.gave_up },
            }))
        }
        Err(err) => {
            error!(error = %err, "the sweep could not run; the next one tries again");
            Err(SweepFailed)
        }
    }
}
