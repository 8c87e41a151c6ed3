//! For `make bench` only (not a benchmark of its own): deploy-webhook's entrypoint, as
//! src/main.rs, except that init also opens the connections to DynamoDB and GitHub
//! ([`app::Clients::open_connections`]). tools/bench.py starts it like the real binary to
//! measure the first delivery after a cold start both ways, over TLS stand-ins.

use deploy_webhook::{app, config::Config, logging, schedule};
use lambda_http::Error;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    // `cargo test --all-targets` runs bench targets too: outside a Lambda runtime there is
    // nothing to measure.
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_none() {
        println!("preconnect: started by tools/bench.py under a Lambda Runtime API; nothing to do here");
        return Ok(());
    }
    logging::init_from_env()?;
    let config = Config::from_env().inspect_err(|err| tracing::error!("configuration: {err}"))?;
    let sdk = app::aws_config().await?;
    let clients = app::Clients::new(&config, &sdk)?;
    clients.open_connections(&config).await;
    let handler = app::handler_from(&config, &clients)?;
    schedule::serve(handler, config.delivery_budget).await
}
