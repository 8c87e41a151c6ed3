//! Test harness: a real local DynamoDB-API server (moto, started once per test binary), a
//! GitHub stand-in (wiremock) per test, realistic signed API Gateway events, and a `TestApp`
//! that drives the real handler.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType,
};
use base64::Engine;
use deploy_webhook::deploy::hook::{DeployTargets, HookDeployer};
use deploy_webhook::domain::ports::Clock;
use deploy_webhook::domain::{DeployRules, Service, ServiceSettings};
use deploy_webhook::github::auth::{AppCredentials, AuthConfig, GitHubAuth};
use deploy_webhook::github::client::{GitHubClient, RetryPolicy, http_client};
use deploy_webhook::http::WebhookHandler;
use deploy_webhook::http::signature::{HookSecrets, WebhookSecrets};
use deploy_webhook::store::dynamo::DynamoStore;
use lambda_http::Request;
use serde_json::{Value, json};
use wiremock::MockServer;

pub const SECRET: &str = "test-webhook-secret";
/// The deploy hooks' secret (`HOOK_SIGNING_SECRET`): signs hook calls and callbacks.
pub const HOOK_SECRET: &str = "test-hook-secret";
pub const TOKEN: &str = "ghp_test_token_never_logged";
pub const SHA: &str = "c4295bd74fb0f4fda03689c3df3f2803b658fd85";
pub const REPO: &str = "Codertocat/Hello-World";

pub type Handler = WebhookHandler<DynamoStore, GitHubClient, HookDeployer, TestClock>;

/// The wall clock plus an offset the test moves forward, so that timeouts and leases run out
/// without waiting.
#[derive(Clone, Default)]
pub struct TestClock(Arc<std::sync::atomic::AtomicU64>);

impl TestClock {
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        deploy_webhook::domain::ports::SystemClock.now_ms() + self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

// ------------------------------------------------------------------ local DynamoDB

struct LocalDynamo {
    endpoint: String,
    // Held so that the server's stdin stays open; it exits when this process does.
    _child: Option<Mutex<Child>>,
}

/// The endpoint of the local DynamoDB-API server: `DDB_ENDPOINT` if set, else one started from
/// the project's `.venv` (made by `make test`) for this test binary.
pub fn dynamo_endpoint() -> &'static str {
    static LOCAL: OnceLock<LocalDynamo> = OnceLock::new();
    &LOCAL
        .get_or_init(|| {
            if let Ok(endpoint) = std::env::var("DDB_ENDPOINT") {
                return LocalDynamo { endpoint, _child: None };
            }
            let root = env!("CARGO_MANIFEST_DIR");
            let python = std::env::var("DEPLOY_WEBHOOK_PYTHON").unwrap_or_else(|_| format!("{root}/.venv/bin/python"));
            let mut child = Command::new(&python)
                .arg(format!("{root}/tools/local_dynamodb.py"))
                .arg("--exit-with-parent")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start {python} tools/local_dynamodb.py ({e}); run `make test`, which installs .venv")
                });
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
            let port =
                line.trim().strip_prefix("PORT ").unwrap_or_else(|| panic!("local DynamoDB did not start: {line:?}"));
            LocalDynamo { endpoint: format!("http://127.0.0.1:{port}"), _child: Some(Mutex::new(child)) }
        })
        .endpoint
}

pub async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    // SAFETY of the env: only dummy credentials, for the local server.
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("local", "local", None, None, "tests"))
        .endpoint_url(endpoint)
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_millis(500))
                .operation_timeout(Duration::from_secs(5))
                .build(),
        )
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(2))
        .load()
        .await
}

pub async fn dynamo_client() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sdk_config(dynamo_endpoint()).await)
}

pub async fn create_table(client: &aws_sdk_dynamodb::Client) -> String {
    let name = format!("deployments-{:016x}", fastrand::u64(..));
    client
        .create_table()
        .table_name(&name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder().attribute_name("pk").attribute_type(ScalarAttributeType::S).build().unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder().attribute_name("sk").attribute_type(ScalarAttributeType::S).build().unwrap(),
        )
        .key_schema(KeySchemaElement::builder().attribute_name("pk").key_type(KeyType::Hash).build().unwrap())
        .key_schema(KeySchemaElement::builder().attribute_name("sk").key_type(KeyType::Range).build().unwrap())
        // The sweep's sparse index, as in template.yaml.
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("due_pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("due_at")
                .attribute_type(ScalarAttributeType::N)
                .build()
                .unwrap(),
        )
        .global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name("due")
                .key_schema(
                    KeySchemaElement::builder().attribute_name("due_pk").key_type(KeyType::Hash).build().unwrap(),
                )
                .key_schema(
                    KeySchemaElement::builder().attribute_name("due_at").key_type(KeyType::Range).build().unwrap(),
                )
                .projection(Projection::builder().projection_type(ProjectionType::All).build())
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("create table");
    name
}

pub type Item = std::collections::HashMap<String, AttributeValue>;

pub async fn scan(client: &aws_sdk_dynamodb::Client, table: &str) -> Vec<Item> {
    let out = client.scan().table_name(table).consistent_read(true).send().await.expect("scan");
    out.items.unwrap_or_default()
}

pub fn attr_s<'a>(item: &'a Item, key: &str) -> Option<&'a str> {
    item.get(key).and_then(|v| v.as_s().ok()).map(String::as_str)
}

pub fn attr_n(item: &Item, key: &str) -> Option<u64> {
    item.get(key).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok())
}

pub fn items_with_sk_prefix<'a>(items: &'a [Item], prefix: &str) -> Vec<&'a Item> {
    items.iter().filter(|i| attr_s(i, "sk").is_some_and(|sk| sk.starts_with(prefix))).collect()
}

/// Makes the local server fail the next `count` requests on `table` (`throttle` or `unavailable`).
pub async fn inject_dynamo_faults(table: &str, count: u32, kind: &str) {
    reqwest::Client::new()
        .post(format!("{}/_local/faults", dynamo_endpoint()))
        .json(&json!({"count": count, "kind": kind, "table": table}))
        .send()
        .await
        .expect("inject faults");
}

// ------------------------------------------------------------------ payloads and events

pub fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/data/webhooks/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// GitHub's example `pull_request` closed payload, merged into `base` with merge commit `SHA`.
pub fn merged_pr(number: u64, base: &str) -> Value {
    let mut p = fixture("pull_request.closed");
    p["number"] = json!(number);
    p["pull_request"]["number"] = json!(number);
    p["pull_request"]["merged"] = json!(true);
    p["pull_request"]["merge_commit_sha"] = json!(SHA);
    p["pull_request"]["merged_at"] = json!(format!("2026-11-22T19:{:02}:00Z", number % 60));
    p["pull_request"]["base"]["ref"] = json!(base);
    p["pull_request"]["html_url"] = json!(format!("https://github.com/{REPO}/pull/{number}"));
    p
}

pub fn deployment_created(id: u64, environment: &str) -> Value {
    let mut p = fixture("deployment.created");
    p["deployment"]["id"] = json!(id);
    p["deployment"]["environment"] = json!(environment);
    p
}

pub fn deployment_status(deployment_id: u64, status_id: u64, state: &str) -> Value {
    let mut p = fixture("deployment_status.created");
    p["deployment"]["id"] = json!(deployment_id);
    p["deployment_status"]["id"] = json!(status_id);
    p["deployment_status"]["state"] = json!(state);
    p
}

/// A fresh RSA key pair for a test GitHub App: the private key as PKCS#8 PEM (what GitHub hands
/// out) and the public key's DER. Made by the test, never committed.
pub fn app_key_pair() -> (secrecy::SecretString, Vec<u8>) {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::{KeyPair, KeySize};
    use aws_lc_rs::signature::KeyPair as _;
    let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
    let der = pair.as_der().unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"));
    (secrecy::SecretString::from(pem), pair.public_key().as_ref().to_vec())
}

pub fn sign(secret: &str, body: &[u8]) -> String {
    WebhookSecrets::from_list(secret).unwrap().sign(body)
}

pub fn new_delivery_id() -> String {
    format!("{:08x}-{:04x}-11e3-81ab-4c9367dc0958", fastrand::u32(..), fastrand::u16(..))
}

/// An API Gateway HTTP API (v2) event as Lambda receives it.
pub struct Event {
    pub method: String,
    pub headers: serde_json::Map<String, Value>,
    pub body: Vec<u8>,
    pub base64: bool,
    pub path: String,
}

impl Event {
    /// A JSON delivery of `event`, signed with `SECRET`.
    pub fn github(event: &str, delivery: &str, payload: &Value) -> Self {
        let body = serde_json::to_vec(payload).unwrap();
        let mut e =
            Self { method: "POST".into(), headers: Default::default(), body, base64: false, path: "/webhook".into() };
        e.set("content-type", "application/json");
        e.set("user-agent", "GitHub-Hookshot/044aadd");
        e.set("x-github-event", event);
        e.set("x-github-delivery", delivery);
        e.set("x-github-hook-id", "292430182");
        e.resign(SECRET);
        e
    }

    /// A deploy system's callback to `url` (as the hook received it), signed with `secret`.
    pub fn callback(url: &str, body: &Value, secret: &str) -> Self {
        let path = url.split_once("amazonaws.com").map_or(url, |(_, p)| p).to_owned();
        let body = serde_json::to_vec(body).unwrap();
        let mut e = Self { method: "POST".into(), headers: Default::default(), body, base64: false, path };
        e.set("content-type", "application/json");
        e.resign(secret);
        e
    }

    /// The same delivery, form-encoded (`payload=<json>`) as GitHub sends with that setting.
    pub fn form_encoded(mut self) -> Self {
        let json = String::from_utf8(self.body.clone()).unwrap();
        self.body = form_urlencoded::Serializer::new(String::new()).append_pair("payload", &json).finish().into_bytes();
        self.set("content-type", "application/x-www-form-urlencoded");
        self.resign(SECRET);
        self
    }

    pub fn set(&mut self, name: &str, value: &str) -> &mut Self {
        self.headers.insert(name.to_owned(), json!(value));
        self
    }

    pub fn remove(&mut self, name: &str) -> &mut Self {
        self.headers.remove(name);
        self
    }

    pub fn resign(&mut self, secret: &str) -> &mut Self {
        let sig = sign(secret, &self.body);
        self.set("x-hub-signature-256", &sig)
    }

    pub fn to_json(&self) -> String {
        // API Gateway base64-encodes bodies that are not UTF-8 text.
        let base64 = self.base64 || std::str::from_utf8(&self.body).is_err();
        let body = if base64 {
            base64::engine::general_purpose::STANDARD.encode(&self.body)
        } else {
            String::from_utf8(self.body.clone()).unwrap()
        };
        json!({
            "version": "2.0",
            "routeKey": "POST /webhook",
            "rawPath": self.path,
            "rawQueryString": "",
            "headers": self.headers,
            "requestContext": {
                "accountId": "123456789012",
                "apiId": "abc123",
                "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
                "domainPrefix": "abc123",
                "http": {
                    "method": self.method,
                    "path": self.path,
                    "protocol": "HTTP/1.1",
                    "sourceIp": "192.30.252.44",
                    "userAgent": "GitHub-Hookshot/044aadd"
                },
                "requestId": "req-1",
                "routeKey": "POST /webhook",
                "stage": "$default",
                "time": "22/Nov/2026:19:00:00 +0000",
                "timeEpoch": 1795460400000u64
            },
            "body": body,
            "isBase64Encoded": base64
        })
        .to_string()
    }

    pub fn request(&self) -> Request {
        lambda_http::request::from_str(&self.to_json()).expect("a valid API Gateway event")
    }
}

// ------------------------------------------------------------------ the app under test

pub struct TestApp {
    pub handler: Arc<Handler>,
    pub github: MockServer,
    pub dynamo: aws_sdk_dynamodb::Client,
    pub table: String,
    pub clock: TestClock,
}

type SettingsTweak = Box<dyn FnOnce(&mut ServiceSettings)>;

pub struct TestAppBuilder {
    app: Option<(u64, secrecy::SecretString)>,
    slack: Option<String>,
    rules: DeployRules,
    targets: DeployTargets,
    retry: RetryPolicy,
    settings_tweak: Option<SettingsTweak>,
    dynamo_endpoint: Option<String>,
    budget: Duration,
    secret: String,
    hook_secret: String,
    env_hook_secrets: std::collections::HashMap<String, WebhookSecrets>,
    hook_timeout: Duration,
}

impl TestApp {
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            app: None,
            slack: None,
            rules: DeployRules::default(),
            targets: DeployTargets::default(),
            retry: RetryPolicy {
                max_attempts: 4,
                base_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(100),
                attempt_timeout: Duration::from_secs(2),
            },
            settings_tweak: None,
            dynamo_endpoint: None,
            budget: Duration::from_secs(8),
            secret: SECRET.to_owned(),
            hook_secret: HOOK_SECRET.to_owned(),
            env_hook_secrets: Default::default(),
            hook_timeout: Duration::from_secs(3),
        }
    }

    pub async fn start() -> Self {
        Self::builder().start().await
    }

    /// Sends one event through the real handler: (HTTP status, JSON body).
    pub async fn send(&self, event: &Event) -> (u16, Value) {
        self.send_request(event.request()).await
    }

    pub async fn send_request(&self, request: Request) -> (u16, Value) {
        let response = self.handler.handle(request).await;
        let status = response.status().as_u16();
        let body: Value = serde_json::from_slice(response.body().as_ref()).expect("a JSON response");
        (status, body)
    }

    /// Runs the scheduled sweep, as EventBridge would.
    pub async fn sweep(&self) -> deploy_webhook::domain::SweepReport {
        self.handler.sweep(Duration::from_secs(8)).await.expect("the sweep runs")
    }

    /// The environment's run state document, as stored.
    pub async fn environment(&self, environment: &str) -> Value {
        let items = self.items().await;
        let sk = format!("ENV#{environment}");
        items
            .iter()
            .find(|i| attr_s(i, "sk") == Some(sk.as_str()))
            .map(|i| serde_json::from_str(attr_s(i, "doc").unwrap()).unwrap())
            .unwrap_or(Value::Null)
    }

    /// The table's items, without the stack's record of the event kinds it received
    /// (`STACK`/`EVENTS_SEEN`, see [`TestApp::events_seen`]): what deliveries stored.
    /// The stored items, without the stack's record of events and the repositories' kept
    /// configurations (those: [`Self::config_items`]).
    pub async fn items(&self) -> Vec<Item> {
        scan(&self.dynamo, &self.table)
            .await
            .into_iter()
            .filter(|i| {
                attr_s(i, "pk") != Some("STACK") && !attr_s(i, "pk").is_some_and(|pk| pk.starts_with("CONFIG#"))
            })
            .collect()
    }

    /// Each repository's kept configuration (the last valid files, what broke it since).
    pub async fn config_items(&self) -> Vec<Item> {
        let items = scan(&self.dynamo, &self.table).await;
        items.into_iter().filter(|i| attr_s(i, "pk").is_some_and(|pk| pk.starts_with("CONFIG#"))).collect()
    }

    /// The stack's record of the event kinds it received: (event, ms) pairs, sorted.
    pub async fn events_seen(&self) -> Vec<(String, u64)> {
        let mut seen: Vec<(String, u64)> = scan(&self.dynamo, &self.table)
            .await
            .iter()
            .filter(|i| attr_s(i, "pk") == Some("STACK") && attr_s(i, "sk") == Some("EVENTS_SEEN"))
            .flat_map(|i| {
                i.keys().filter_map(|k| Some((k.strip_prefix("seen_")?.to_owned(), attr_n(i, k)?))).collect::<Vec<_>>()
            })
            .collect();
        seen.sort();
        seen
    }

    /// The requests GitHub received, as (method, path).
    /// GitHub calls other than reads of configuration files (those: [`Self::config_calls`]).
    pub async fn github_calls(&self) -> Vec<(String, String)> {
        self.all_github_calls().await.into_iter().filter(|(_, path)| !path.contains("/contents/")).collect()
    }

    /// The requests GitHub received, without reads of configuration files.
    pub async fn github_requests(&self) -> Vec<wiremock::Request> {
        let requests = self.github.received_requests().await.unwrap_or_default();
        requests.into_iter().filter(|r| !r.url.path().contains("/contents/")).collect()
    }

    /// Reads of `.github/deploy-webhook.yml` files (`GET …/contents/…`), with their query.
    pub async fn config_calls(&self) -> Vec<String> {
        let requests = self.github.received_requests().await.unwrap_or_default();
        requests
            .iter()
            .filter(|r| r.url.path().contains("/contents/"))
            .map(|r| match r.url.query() {
                Some(q) => format!("{}?{q}", r.url.path()),
                None => r.url.path().to_owned(),
            })
            .collect()
    }

    pub async fn all_github_calls(&self) -> Vec<(String, String)> {
        self.github
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .map(|r| (r.method.to_string(), r.url.path().to_owned()))
            .collect()
    }
}

impl TestAppBuilder {
    pub fn rules(mut self, rules: &str) -> Self {
        self.rules = DeployRules::parse(rules).unwrap();
        self
    }

    pub fn hook(mut self, environment_suffix: Option<&str>, url: &str) -> Self {
        match environment_suffix {
            Some(env) => {
                self.targets.hooks.insert(env.to_owned(), url.to_owned());
            }
            None => self.targets.default_hook = Some(url.to_owned()),
        }
        self
    }

    pub fn environment_url(mut self, url: &str) -> Self {
        self.targets.default_environment_url = Some(url.to_owned());
        self
    }

    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The webhook secret(s) the function is configured with (a comma-separated list).
    pub fn secret(mut self, secret: &str) -> Self {
        self.secret = secret.to_owned();
        self
    }

    /// `HOOK_SIGNING_SECRET_<suffix>`: the hook secret(s) of one environment.
    pub fn hook_secret(mut self, environment_suffix: &str, secret: &str) -> Self {
        self.env_hook_secrets.insert(environment_suffix.to_owned(), WebhookSecrets::from_list(secret).unwrap());
        self
    }

    /// Authenticates as GitHub App `app_id` with `pem`, and sweeps the App's webhook deliveries.
    pub fn github_app(mut self, app_id: u64, pem: secrecy::SecretString) -> Self {
        self.app = Some((app_id, pem));
        self
    }

    /// Posts Slack notices to `url`.
    pub fn slack(mut self, url: &str) -> Self {
        self.slack = Some(url.to_owned());
        self
    }

    pub fn hook_timeout(mut self, timeout: Duration) -> Self {
        self.hook_timeout = timeout;
        self
    }

    pub fn budget(mut self, budget: Duration) -> Self {
        self.budget = budget;
        self
    }

    pub fn settings(mut self, tweak: impl FnOnce(&mut ServiceSettings) + 'static) -> Self {
        self.settings_tweak = Some(Box::new(tweak));
        self
    }

    /// Points the function (not the test's own client) at another DynamoDB endpoint.
    pub fn dynamo_endpoint(mut self, endpoint: &str) -> Self {
        self.dynamo_endpoint = Some(endpoint.to_owned());
        self
    }

    pub async fn start(self) -> TestApp {
        let dynamo = dynamo_client().await;
        let table = create_table(&dynamo).await;
        let github = MockServer::start().await;
        // Who the token belongs to: how our own terminal statuses are told from other people's.
        wiremock::Mock::given(wiremock::matchers::method("GET"))
            .and(wiremock::matchers::path("/user"))
            .respond_with(
                wiremock::ResponseTemplate::new(200).set_body_json(serde_json::json!({"login": "deploy-bot"})),
            )
            .mount(&github)
            .await;

        let function_sdk = sdk_config(self.dynamo_endpoint.as_deref().unwrap_or(dynamo_endpoint())).await;
        let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&function_sdk), &table);
        // One HTTP client for GitHub and the hook, wired as src/app.rs wires them.
        let http = http_client().unwrap();
        let clock = TestClock::default();
        let auth = match &self.app {
            Some((id, pem)) => AuthConfig::App(AppCredentials::new(*id, pem).unwrap()),
            None => AuthConfig::Token(TOKEN.to_owned().into()),
        };
        let auth = Arc::new(GitHubAuth::new(auth, Arc::new(clock.clone())));
        let client = GitHubClient::with_auth(http.clone(), &github.uri(), auth, self.retry);
        let secrets = WebhookSecrets::from_list(&self.secret).unwrap();
        let slack = deploy_webhook::deploy::slack::SlackTargets { default_url: self.slack, urls: Default::default() };
        let mut settings = ServiceSettings::new(self.rules);
        if self.app.is_some() {
            settings.redelivery_hooks = vec![deploy_webhook::domain::ports::HookRef::App];
        }
        if let Some(tweak) = self.settings_tweak {
            tweak(&mut settings);
        }
        // As Config does: environments named in the rules or the branch-deploy list.
        let mut targets = self.targets;
        targets.named = settings
            .rules
            .environments()
            .chain(settings.branch_deploy_environments.iter())
            .map(|e| e.env_var_suffix())
            .collect();
        let hook_secrets =
            HookSecrets::new(Some(WebhookSecrets::from_list(&self.hook_secret).unwrap()), self.env_hook_secrets);
        let deployer = HookDeployer::new(http, targets, hook_secrets.clone(), self.hook_timeout)
            .with_slack(slack, "https://github.com");
        let service = Service::with_clock(store, client, deployer, clock.clone(), settings);
        let handler = Arc::new(WebhookHandler::new(service, secrets, self.budget).with_hook_secrets(hook_secrets));
        TestApp { handler, github, dynamo, table, clock }
    }
}
