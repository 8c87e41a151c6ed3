#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking
//! The scheduled sweep as Lambda runs it: a sweep that cannot run fails the invocation (Lambda
//! counts an error, which the `function-errors` alarm sees) and is not counted in `SweepRuns`.

mod common;

use std::time::Duration;

use common::*;
use deploy_webhook::domain::ServiceError;
use deploy_webhook::domain::ports::StoreError;
use deploy_webhook::schedule::{self, sweep_metric};
use lambda_http::lambda_runtime::Diagnostic;

#[tokio::test]
async fn a_sweep_whose_query_fails_is_an_invocation_error_not_a_sweep_run() {
    let app = TestApp::start().await;
    let answer = schedule::sweep(&app.handler, Duration::from_secs(8)).await.unwrap();
    assert_eq!(answer["status"], "swept", "{answer}");

    inject_dynamo_faults(&app.table, 1000, "unavailable").await;
    let failed = schedule::sweep(&app.handler, Duration::from_secs(2)).await;
    inject_dynamo_faults(&app.table, 0, "unavailable").await;
    let diagnostic: Diagnostic = failed.expect_err("a failed sweep must fail the invocation").into();
    assert_eq!(diagnostic.error_type, "SweepFailed");
    assert!(!diagnostic.error_message.contains("dynamo"), "no internals in Lambda's answer");

    // And it counts as the error it met, never as a sweep that ran.
    let store_down: Result<deploy_webhook::domain::SweepReport, _> =
        Err(ServiceError::Store(StoreError::Unavailable("x".into())));
    assert_eq!(sweep_metric(&store_down), "DynamoErrors");
    assert_eq!(sweep_metric(&Ok(app.sweep().await)), "SweepRuns");
}
