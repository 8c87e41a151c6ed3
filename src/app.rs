//! Wiring: the production adapters built from [`Config`], once per cold start.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

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
}

/// The AWS SDK settings: short timeouts and few retries, because the whole delivery must answer
/// GitHub within 10 seconds. Region, credentials and `AWS_ENDPOINT_URL_DYNAMODB` come from the
/// usual AWS environment.
pub async fn aws_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_millis(1000))
                .operation_attempt_timeout(Duration::from_millis(1500))
                .operation_timeout(Duration::from_millis(3500))
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .load()
        .await
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
    let service = Service::new(store, github, deployer, ServiceSettings::new(config.rules.clone()));
    Ok(WebhookHandler::new(service, config.webhook_secrets.clone(), config.delivery_budget))
}
