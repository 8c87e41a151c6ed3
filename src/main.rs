#![recursion_limit = "256"]
//! The Lambda entrypoint: logging, configuration, clients, once per cold start; then serve both
//! kinds of invocation: API Gateway requests (webhooks and callbacks) and the scheduled sweep.

use std::sync::Arc;

use deploy_webhook::{app, config::Config, schedule};
use lambda_http::lambda_runtime::{self, LambdaEvent};
use lambda_http::{Error, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    // JSON logs when AWS_LAMBDA_LOG_FORMAT=JSON; level from AWS_LAMBDA_LOG_LEVEL or RUST_LOG.
    lambda_http::tracing::init_default_subscriber();

    let config = Config::from_env().inspect_err(|err| tracing::error!("configuration: {err}"))?;
    let sdk = app::aws_config().await?;
    let handler = Arc::new(app::build_handler(&config, &sdk)?);
    let budget = config.delivery_budget;
    deploy_webhook::metrics::enable();

    lambda_runtime::run(service_fn(move |event: LambdaEvent<schedule::Invocation>| {
        let handler = Arc::clone(&handler);
        async move { Ok::<_, std::convert::Infallible>(schedule::dispatch(&handler, event, budget).await) }
    }))
    .await
}
