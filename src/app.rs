//! Wiring: the production adapters built from [`Config`], once per cold start.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_dynamodb::config::SharedHttpClient;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};

use crate::config::Config;
use crate::deploy::hook::HookDeployer;
use crate::domain::{Service, ServiceSettings};
use crate::github::client::{GitHubClient, RetryPolicy, http_client};
use crate::http::WebhookHandler;
use crate::store::dynamo::DynamoStore;

pub type Handler = WebhookHandler<DynamoStore, GitHubClient, HookDeployer>;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    GitHubClient(#[from] crate::github::client::ClientBuildError),
    #[error("could not build the AWS SDK's HTTPS client: {0}")]
    AwsHttpClient(String),
}

/// The roots of Amazon Trust Services, which every DynamoDB endpoint's certificate chains to.
/// Trusting these five, embedded, spares each cold start from reading and parsing the system's
/// whole trust store (a few milliseconds of init, measured by `make bench`).
const AMAZON_ROOTS_PEM: &str = include_str!("store/amazon-roots.pem");

fn aws_https_client() -> Result<SharedHttpClient, InitError> {
    let trust = TrustStore::empty().with_native_roots(false).with_pem_certificate(AMAZON_ROOTS_PEM.as_bytes());
    let tls =
        TlsContext::builder().with_trust_store(trust).build().map_err(|e| InitError::AwsHttpClient(e.to_string()))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc))
        .tls_context(tls)
        .build_https())
}

/// The AWS SDK settings: short timeouts and few retries, because the whole delivery must answer
/// GitHub within 10 seconds. Region, credentials and `AWS_ENDPOINT_URL_DYNAMODB` come from the
/// usual AWS environment.
pub async fn aws_config() -> Result<SdkConfig, InitError> {
    Ok(aws_config::defaults(BehaviorVersion::latest())
        .http_client(aws_https_client()?)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_millis(1000))
                .operation_attempt_timeout(Duration::from_millis(1500))
                .operation_timeout(Duration::from_millis(3500))
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .load()
        .await)
}

pub fn build_handler(config: &Config, sdk: &SdkConfig) -> Result<Handler, InitError> {
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(sdk), &config.table);
    let http = http_client()?;
    let github = GitHubClient::new(http.clone(), &config.github_api_url, &config.github_token, RetryPolicy::default())?;
    let deployer = HookDeployer::new(
        http,
        config.deploy_targets.clone(),
        config.webhook_secrets.clone(),
        config.deploy_hook_timeout,
    );
    let mut settings = ServiceSettings::new(config.rules.clone());
    settings.run_timeout = config.deploy_timeout;
    settings.run_timeouts = config.deploy_timeouts.clone();
    settings.public_url = config.public_url.clone();
    let service = Service::new(store, github, deployer, settings);
    Ok(WebhookHandler::new(service, config.webhook_secrets.clone(), config.delivery_budget))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_embedded_amazon_roots_make_a_working_https_client() {
        assert_eq!(AMAZON_ROOTS_PEM.matches("BEGIN CERTIFICATE").count(), 5);
        // A request builds the connector (and parses the roots); a closed port answers an error,
        // never a panic.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("https://{}", closed.local_addr().unwrap());
        drop(closed);
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("a", "b", None, None, "test"))
            .endpoint_url(endpoint)
            .http_client(aws_https_client().unwrap())
            .build();
        let result = aws_sdk_dynamodb::Client::from_conf(config).list_tables().send().await;
        assert!(result.is_err());
    }
}
