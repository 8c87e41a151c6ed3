//! Wiring: the production adapters built from [`Config`], once per cold start.

use std::sync::Arc;
use std::time::Duration;

use aws_config::environment::EnvironmentVariableCredentialsProvider;
use aws_config::identity::IdentityCache;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::{HttpClient, RuntimeComponents, SharedCredentialsProvider, SharedHttpClient};
use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{HttpConnectorSettings, SharedHttpConnector};

use crate::config::Config;
use crate::deploy::hook::HookDeployer;
use crate::domain::ports::SystemClock;
use crate::domain::{Service, ServiceSettings};
use crate::github::auth::GitHubAuth;
use crate::github::client::{ExtraCaCerts, GitHubClient, RetryPolicy, http_client_trusting};
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

/// The AWS SDK's HTTPS client: the Amazon roots, plus `extra` (`EXTRA_CA_CERTS_FILE`, for an
/// `AWS_ENDPOINT_URL_DYNAMODB` behind a private CA).
fn aws_https_client(extra: &ExtraCaCerts) -> Result<SharedHttpClient, InitError> {
    let mut trust = TrustStore::empty().with_native_roots(false).with_pem_certificate(AMAZON_ROOTS_PEM.as_bytes());
    if !extra.is_empty() {
        trust = trust.with_pem_certificate(extra.pem());
    }
    let tls =
        TlsContext::builder().with_trust_store(trust).build().map_err(|e| InitError::AwsHttpClient(e.to_string()))?;
    let client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc))
        .tls_context(tls)
        .build_https();
    Ok(SharedHttpClient::new(ConnectorOnFirstRequest(client)))
}

/// The SDK's HTTPS client without its throwaway connector at cold start: the SDK's hyper client
/// builds a connector (the TLS configuration, parsing every root certificate) when the DynamoDB
/// client is created, only to check that it can, and drops it; the first request builds and keeps
/// its own. Here that check is skipped, so the connector is built once, by the first request.
/// Nothing is lost: the roots are compiled in (tested below) and `EXTRA_CA_CERTS_FILE` is
/// parsed and checked by [`Config`] at cold start. About 14% of init's instructions (callgrind).
#[derive(Debug)]
struct ConnectorOnFirstRequest(SharedHttpClient);

impl HttpClient for ConnectorOnFirstRequest {
    fn http_connector(&self, settings: &HttpConnectorSettings, components: &RuntimeComponents) -> SharedHttpConnector {
        self.0.http_connector(settings, components)
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        self.0.connector_metadata()
    }
}

/// The AWS SDK settings: short timeouts and few retries, because the whole delivery must answer
/// GitHub within 10 seconds.
///
/// Built from the environment Lambda gives a function, not by `aws_config::load`: its default
/// chains look for profile files, SSO, web identity, container and instance metadata credentials
/// and a dozen settings in `~/.aws/config`, none of which exists in Lambda (it is init time,
/// measured by `make bench`). What is read: `AWS_REGION` (or `AWS_DEFAULT_REGION`); the
/// credentials in `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`;
/// `AWS_ENDPOINT_URL_DYNAMODB` (or `AWS_ENDPOINT_URL`) unless
/// `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`; `AWS_USE_FIPS_ENDPOINT` and
/// `AWS_USE_DUALSTACK_ENDPOINT`.
pub async fn aws_config() -> Result<SdkConfig, InitError> {
    aws_config_from(|name| std::env::var(name).ok(), &ExtraCaCerts::default())
}

fn aws_config_from(var: impl Fn(&str) -> Option<String>, extra: &ExtraCaCerts) -> Result<SdkConfig, InitError> {
    let var = |name: &str| var(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let flag = |name: &str| var(name).map(|v| v.eq_ignore_ascii_case("true"));
    let mut sdk = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")).map(Region::new))
        .credentials_provider(SharedCredentialsProvider::new(EnvironmentVariableCredentialsProvider::new()))
        .identity_cache(IdentityCache::lazy().build())
        .http_client(aws_https_client(extra)?)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_millis(1000))
                .operation_attempt_timeout(Duration::from_millis(1500))
                .operation_timeout(Duration::from_millis(3500))
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(3));
    let endpoint = var("AWS_ENDPOINT_URL_DYNAMODB").or_else(|| var("AWS_ENDPOINT_URL"));
    if let Some(url) = endpoint.filter(|_| flag("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS") != Some(true)) {
        sdk = sdk.endpoint_url(url);
    }
    if let Some(fips) = flag("AWS_USE_FIPS_ENDPOINT") {
        sdk = sdk.use_fips(fips);
    }
    if let Some(dual_stack) = flag("AWS_USE_DUALSTACK_ENDPOINT") {
        sdk = sdk.use_dual_stack(dual_stack);
    }
    Ok(sdk.build())
}

/// The web address that goes with an API address: `https://api.github.com` → `https://github.com`;
/// GitHub Enterprise Server's `https://HOST/api/v3` → `https://HOST`.
fn html_url_of(api: &str) -> String {
    if api.trim_end_matches('/') == crate::config::DEFAULT_GITHUB_API_URL {
        return "https://github.com".to_owned();
    }
    api.trim_end_matches('/').trim_end_matches("/api/v3").to_owned()
}

pub fn build_handler(config: &Config, sdk: &SdkConfig) -> Result<Handler, InitError> {
    handler_from(config, &Clients::new(config, sdk)?)
}

/// The process's two network clients (each keeps its own connection pool; clones share it).
#[derive(Clone, Debug)]
pub struct Clients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    /// GitHub and the deploy hooks.
    pub http: reqwest::Client,
}

impl Clients {
    pub fn new(config: &Config, sdk: &SdkConfig) -> Result<Self, InitError> {
        let mut dynamodb = aws_sdk_dynamodb::config::Builder::from(sdk);
        if !config.extra_ca_certs.is_empty() {
            dynamodb = dynamodb.http_client(aws_https_client(&config.extra_ca_certs)?);
        }
        let dynamodb = aws_sdk_dynamodb::Client::from_conf(dynamodb.build());
        Ok(Self { dynamodb, http: http_client_trusting(&config.extra_ca_certs)? })
    }

    /// Opens the connections a first delivery needs (DynamoDB, GitHub), both at the same time,
    /// with one cheap request each: what a cold start would do to take the TCP and TLS
    /// handshakes off the first delivery. Failures are ignored (the delivery connects again).
    /// Not used by the function: `make bench` measures a cold start with it
    /// (benches/preconnect.rs) and without it, and docs/BENCHMARKS.md says why it is not used.
    pub async fn open_connections(&self, config: &Config) {
        let dynamodb = self
            .dynamodb
            .get_item()
            .table_name(&config.table)
            .key("pk", AttributeValue::S("CONNECT".into()))
            .key("sk", AttributeValue::S("CONNECT".into()))
            .send();
        let github = self.http.get(&config.github_api_url).timeout(Duration::from_secs(2)).send();
        let _ = tokio::join!(dynamodb, github);
    }
}

/// The service's settings, from the stack's (also what `check-config` checks a file over).
pub fn service_settings(config: &Config) -> ServiceSettings {
    let mut settings = ServiceSettings::new(config.rules.clone());
    settings.run_timeout = config.deploy_timeout;
    settings.run_timeouts = config.deploy_timeouts.clone();
    settings.public_url = config.public_url.clone();
    settings.redelivery_max_attempts = config.redelivery_max_attempts;
    settings.branch_deploy_environments = config.branch_deploy_environments.iter().cloned().collect();
    settings.allow_sha_deployments = config.allow_sha_deployments;
    settings.chatops_permissions = config.chatops_permissions.clone();
    settings.required_contexts = config.required_contexts.clone();
    settings.checks_wait = config.checks_wait;
    settings.limits = config.repo_limits.clone();
    settings.config_recheck = config.config_recheck;
    settings.github_html_url = html_url_of(&config.github_api_url);
    settings.redelivery_hooks = config.redeliver_hooks.clone();
    if matches!(config.github_auth, crate::github::auth::AuthConfig::App(_)) {
        settings.redelivery_hooks.insert(0, crate::domain::ports::HookRef::App);
    }
    settings
}

/// The handler, on `clients`.
pub fn handler_from(config: &Config, clients: &Clients) -> Result<Handler, InitError> {
    let store = DynamoStore::new(clients.dynamodb.clone(), &config.table);
    let http = clients.http.clone();
    let auth = Arc::new(GitHubAuth::new(config.github_auth.clone(), Arc::new(SystemClock)));
    let github = GitHubClient::with_auth(http.clone(), &config.github_api_url, auth, RetryPolicy::default());
    let html_url = html_url_of(&config.github_api_url);
    let deployer =
        HookDeployer::new(http, config.deploy_targets.clone(), config.hook_secrets.clone(), config.deploy_hook_timeout)
            .with_slack(config.slack.clone(), &html_url);
    let service = Service::new(store, github, deployer, service_settings(config));
    Ok(WebhookHandler::new(service, config.webhook_secrets.clone(), config.delivery_budget)
        .with_hook_secrets(config.hook_secrets.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdk_from(vars: &[(&str, &str)]) -> SdkConfig {
        let vars: std::collections::HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        aws_config_from(|name| vars.get(name).cloned(), &ExtraCaCerts::default()).unwrap()
    }

    #[test]
    fn the_sdk_settings_a_lambda_uses_come_from_the_environment() {
        let sdk = sdk_from(&[("AWS_REGION", "eu-west-1"), ("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:8000")]);
        assert_eq!(sdk.region().map(|r| r.as_ref()), Some("eu-west-1"));
        assert_eq!(sdk.endpoint_url(), Some("http://127.0.0.1:8000"));
        assert!(sdk.credentials_provider().is_some());
        let sdk = sdk_from(&[("AWS_DEFAULT_REGION", "us-east-2"), ("AWS_ENDPOINT_URL", "http://localhost:4566")]);
        assert_eq!(sdk.region().map(|r| r.as_ref()), Some("us-east-2"));
        assert_eq!(sdk.endpoint_url(), Some("http://localhost:4566"));
        let sdk = sdk_from(&[
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:8000"),
            ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true"),
        ]);
        assert_eq!(sdk.endpoint_url(), None);
        assert_eq!(sdk_from(&[]).region(), None);
    }

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
            .http_client(aws_https_client(&ExtraCaCerts::default()).unwrap())
            .build();
        let result = aws_sdk_dynamodb::Client::from_conf(config).list_tables().send().await;
        assert!(result.is_err());
    }
}
