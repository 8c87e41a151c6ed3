#![recursion_limit = "256"]
//! The Lambda entrypoint: logging, configuration, clients, once per cold start; then serve both
//! kinds of invocation: API Gateway requests (webhooks and callbacks) and the scheduled sweep.

use deploy_webhook::{app, config::Config, logging, schedule};
use lambda_http::Error;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    // `deploy-webhook check-config <file>`: validate a repository's file offline, then exit.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(report) = deploy_webhook::check_config::from_args(&args, std::env::vars()) {
        println!("{}", report.output);
        std::process::exit(if report.valid { 0 } else { 1 });
    }
    // JSON logs when AWS_LAMBDA_LOG_FORMAT=JSON; level from AWS_LAMBDA_LOG_LEVEL or RUST_LOG.
    logging::init_from_env()?;

    let config = Config::from_env().inspect_err(|err| tracing::error!("configuration: {err}"))?;
    let sdk = app::aws_config().await?;
    let handler = app::build_handler(&config, &sdk)?;
    schedule::serve(handler, config.delivery_budget).await
}
