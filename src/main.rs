#![recursion_limit = "256"]
//! The Lambda entrypoint: logging, configuration, clients, once per cold start; then serve both
//! kinds of invocation: API Gateway requests (webhooks and callbacks) and the scheduled sweep.

use std::process::ExitCode;

use deploy_webhook::{app, config::Config, logging, schedule};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // `deploy-webhook check-config <file>`: validate a repository's file offline, then exit.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(report) = deploy_webhook::check_config::from_args(&args, std::env::vars()) {
        println!("{}", report.output);
        return if report.valid { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    // JSON logs when AWS_LAMBDA_LOG_FORMAT=JSON; level from AWS_LAMBDA_LOG_LEVEL or RUST_LOG.
    if let Err(err) = logging::init_from_env() {
        // No log subscriber without a valid level: the message goes to stderr as it is.
        eprintln!("configuration: {err}");
        return ExitCode::FAILURE;
    }
    // Each failure is logged once with its clear message (never returned from main, which would
    // print it again as a Rust Debug line), and the process exits non-zero as Lambda expects.
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            tracing::error!("configuration: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = async {
        let sdk = app::aws_config().await?;
        let handler = app::build_handler(&config, &sdk)?;
        schedule::serve(handler, config.delivery_budget).await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("the function stopped: {err}");
            ExitCode::FAILURE
        }
    }
}
