//! The Lambda entrypoint: logging, configuration, clients, once per cold start; then serve.

use std::sync::Arc;

use deploy_webhook::{app, config::Config};
use lambda_http::{Error, Request, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    // JSON logs when AWS_LAMBDA_LOG_FORMAT=JSON; level from AWS_LAMBDA_LOG_LEVEL or RUST_LOG.
    lambda_http::tracing::init_default_subscriber();

    let config = Config::from_env().inspect_err(|err| tracing::error!("configuration: {err}"))?;
    let sdk = app::aws_config().await?;
    let handler = Arc::new(app::build_handler(&config, &sdk)?);

    lambda_http::run(service_fn(move |request: Request| {
        let handler = Arc::clone(&handler);
        async move { Ok::<_, std::convert::Infallible>(handler.handle(request).await) }
    }))
    .await
}
