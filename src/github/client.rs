//! A small typed client for GitHub's Deployments REST API (octocrab has no deployments
//! endpoints). Built once per cold start; every call is bounded by the delivery's [`Deadline`].
//!
//! Retries: 5xx, timeouts and connection failures are retried with exponential backoff and full
//! jitter; rate limits (403/429 with `Retry-After` or `x-ratelimit-reset`) wait when the wait
//! fits the remaining budget. A POST whose fate is unknown (timeout or 5xx after it was sent) is
//! never blindly repeated: before the next try we look for what it may have created.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue};
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, TrustAnchor};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{debug, warn};

use crate::domain::ports::{
    CreationRecord, GitHub, GitHubError, HookDelivery, HookRef, NewCheckRun, NewDeployment, NewStatus, Permission,
    PullRequestHead, RepoBlob, SystemClock,
};
use crate::domain::types::{DeploymentId, Environment, RepoFullName, Sha};
use crate::domain::{Deadline, StatusRecord};
use crate::github::WireStatus;
use crate::github::auth::{AuthConfig, GitHubAuth};

pub const API_VERSION: &str = "2022-11-28";

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// The longest a single request may take.
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(4),
        }
    }
}

#[derive(Clone)]
pub struct GitHubClient {
    http: Client,
    headers: HeaderMap,
    base_url: String,
    retry: RetryPolicy,
    auth: Arc<GitHubAuth>,
    /// The login our statuses are posted as, once known (see [`GitHub::own_login`]).
    own_login: Arc<OnceLock<String>>,
}

impl std::fmt::Debug for GitHubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubClient").field("base_url", &self.base_url).finish_non_exhaustive()
    }
}

/// CA certificates trusted in addition to the compiled-in web PKI roots (`EXTRA_CA_CERTS_FILE`):
/// for a GitHub Enterprise Server or a deploy hook behind a private CA. Parsed and checked once,
/// at init; empty by default.
#[derive(Clone, Default)]
pub struct ExtraCaCerts {
    pem: Vec<u8>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl std::fmt::Debug for ExtraCaCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ExtraCaCerts({} certificates)", self.anchors.len())
    }
}

impl ExtraCaCerts {
    /// A PEM bundle of one or more CA certificates; an error says what is wrong with it.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("not a PEM certificate bundle ({e})"))?;
        if certs.is_empty() {
            return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
        }
        let mut store = RootCertStore::empty();
        for (n, cert) in certs.into_iter().enumerate() {
            store.add(cert).map_err(|e| format!("certificate {} is not a usable CA certificate ({e})", n + 1))?;
        }
        Ok(Self { pem: pem.to_vec(), anchors: store.roots })
    }

    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    /// The bundle as given (for the AWS SDK's client, which takes PEM).
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }
}

/// The one HTTP client of the process, shared by the GitHub client and the deploy hook, trusting
/// the compiled-in web PKI roots only.
pub fn http_client() -> Result<Client, ClientBuildError> {
    http_client_trusting(&ExtraCaCerts::default())
}

/// [`http_client`], also trusting `extra`. The roots are compiled in (`webpki-roots`, Mozilla's
/// list, as trust anchors that need no parsing): reqwest's default, the platform verifier, reads
/// and parses the whole system trust store at every cold start, which was most of our init.
pub fn http_client_trusting(extra: &ExtraCaCerts) -> Result<Client, ClientBuildError> {
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    roots.roots.extend(extra.anchors.iter().cloned());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientBuildError(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // reqwest is built without HTTP/2: offer what it speaks.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Client::builder()
        .tls_backend_preconfigured(tls)
        .user_agent(concat!("deploy-webhook/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(2))
        .pool_idle_timeout(Duration::from_secs(50))
        .build()
        .map_err(|e| ClientBuildError(e.to_string()))
}

#[derive(Debug, thiserror::Error)]
#[error("could not build the GitHub client: {0}")]
pub struct ClientBuildError(String);

impl GitHubClient {
    /// A client authenticating with one token (`GITHUB_TOKEN`).
    pub fn new(
        http: Client,
        base_url: &str,
        token: &SecretString,
        retry: RetryPolicy,
    ) -> Result<Self, ClientBuildError> {
        HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
            .map_err(|_| ClientBuildError("GITHUB_TOKEN holds characters not allowed in a header".into()))?;
        let auth = GitHubAuth::new(AuthConfig::Token(token.clone()), Arc::new(SystemClock));
        Ok(Self::with_auth(http, base_url, Arc::new(auth), retry))
    }

    /// A client authenticating as configured (a token, or a GitHub App).
    pub fn with_auth(http: Client, base_url: &str, auth: Arc<GitHubAuth>, retry: RetryPolicy) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/vnd.github+json"));
        headers.insert("X-GitHub-Api-Version", HeaderValue::from_static(API_VERSION));
        Self {
            http,
            headers,
            base_url: base_url.trim_end_matches('/').to_owned(),
            retry,
            auth,
            own_login: Arc::default(),
        }
    }

    pub fn auth(&self) -> &GitHubAuth {
        &self.auth
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// A request on `repo`, with the token for it (an App's installation token is bought or
    /// taken from the cache here). Authorization headers are marked sensitive, so no Debug
    /// output of a request shows them.
    async fn request(
        &self,
        method: Method,
        path: &str,
        repo: &RepoFullName,
        deadline: &Deadline,
    ) -> Result<RequestBuilder, GitHubError> {
        let auth = self.auth.header_for(&self.http, &self.base_url, repo, deadline).await?;
        Ok(self.unauthenticated(method, path, deadline).header(AUTHORIZATION, auth))
    }

    /// A request on the App's own endpoints, with the App's JWT (or the token in token mode).
    pub(crate) fn app_request(
        &self,
        method: Method,
        path: &str,
        deadline: &Deadline,
    ) -> Result<RequestBuilder, GitHubError> {
        Ok(self.unauthenticated(method, path, deadline).header(AUTHORIZATION, self.auth.app_header()?))
    }

    fn unauthenticated(&self, method: Method, path: &str, deadline: &Deadline) -> RequestBuilder {
        self.http
            .request(method, self.url(path))
            .headers(self.headers.clone())
            .timeout(deadline.cap(self.retry.attempt_timeout))
    }

    /// Like [`failure`], but a 401 in App mode drops the cached installation token and retries
    /// once with a fresh one (a token revoked or expired early).
    async fn failure_on<T>(
        &self,
        resp: Response,
        repo: &RepoFullName,
        refreshed: &AtomicBool,
    ) -> Result<Step<T>, GitHubError> {
        if resp.status() == StatusCode::UNAUTHORIZED && self.auth.is_app() && !refreshed.swap(true, Ordering::SeqCst) {
            self.auth.forget_token(repo);
            return Ok(Step::Retry {
                reason: "the installation token was refused".to_owned(),
                after: Some(Duration::ZERO),
                ambiguous: false,
            });
        }
        failure(resp).await
    }

    /// Runs `attempt` until it is done, fails for good, or the attempts or budget run out.
    /// `attempt` is told whether an earlier try may have had an effect.
    async fn with_retries<T, F, Fut>(&self, what: &str, deadline: Deadline, mut attempt: F) -> Result<T, GitHubError>
    where
        F: FnMut(bool) -> Fut,
        Fut: Future<Output = Result<Step<T>, GitHubError>>,
    {
        let mut maybe_applied = false;
        let mut last = String::from("no attempt made");
        for n in 0..self.retry.max_attempts {
            if deadline.is_past() {
                break;
            }
            match attempt(maybe_applied).await? {
                Step::Done(value) => return Ok(value),
                Step::Retry { reason, after, ambiguous } => {
                    maybe_applied |= ambiguous;
                    let delay = after.unwrap_or_else(|| self.backoff(n));
                    // Only wait if a useful attempt still fits in the budget afterwards.
                    if delay + Duration::from_millis(300) >= deadline.remaining() {
                        warn!(%reason, wait_ms = delay.as_millis() as u64, "GitHub {what}: no time left to retry");
                        return Err(GitHubError::Unavailable(format!("{what}: {reason}")));
                    }
                    debug!(%reason, attempt = n + 1, wait_ms = delay.as_millis() as u64, "GitHub {what}: retrying");
                    last = reason;
                    tokio::time::sleep(delay).await;
                }
            }
        }
        Err(GitHubError::Unavailable(format!("{what}: {last}")))
    }

    /// Full jitter: a random wait up to the exponential cap.
    fn backoff(&self, attempt: u32) -> Duration {
        let cap = self.retry.base_backoff.saturating_mul(1 << attempt.min(10)).min(self.retry.max_backoff);
        Duration::from_millis(fastrand::u64(cap.as_millis() as u64 / 2..=cap.as_millis() as u64))
    }
}

/// The result of one attempt.
enum Step<T> {
    Done(T),
    Retry {
        reason: String,
        /// A wait GitHub asked for (rate limits).
        after: Option<Duration>,
        /// The request may have been applied (sent, then timed out or 5xx).
        ambiguous: bool,
    },
}

/// Classifies a transport error: a failed connect never reached GitHub; anything else might have.
fn transport_failure<T>(err: reqwest::Error) -> Step<T> {
    let ambiguous = !err.is_connect();
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "connection failed"
    };
    Step::Retry { reason: kind.to_owned(), after: None, ambiguous }
}

/// Classifies a non-success answer. `Ok(Step::Retry)` for the retryable ones.
async fn failure<T>(resp: Response) -> Result<Step<T>, GitHubError> {
    let status = resp.status();
    if status.is_server_error() {
        return Ok(Step::Retry { reason: format!("GitHub answered {status}"), after: None, ambiguous: true });
    }
    if let Some(after) = rate_limit_wait(status, resp.headers()) {
        return Ok(Step::Retry { reason: format!("rate limited ({status})"), after: Some(after), ambiguous: false });
    }
    let message = github_message(resp).await;
    Err(GitHubError::Api { status: status.as_u16(), message })
}

/// The wait a rate-limit answer asks for, if this is one.
fn rate_limit_wait(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::FORBIDDEN {
        return None;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(after) = header("retry-after") {
        if let Ok(secs) = after.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(at) = httpdate::parse_http_date(after) {
            return Some(at.duration_since(SystemTime::now()).unwrap_or_default());
        }
    }
    if header("x-ratelimit-remaining") == Some("0") {
        let reset = header("x-ratelimit-reset").and_then(|r| r.parse::<u64>().ok())?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        return Some(Duration::from_secs(reset.saturating_sub(now)));
    }
    // A secondary rate limit without a hint: GitHub says to wait at least a minute.
    (status == StatusCode::TOO_MANY_REQUESTS).then_some(Duration::from_secs(60))
}

/// GitHub's `message` (and first validation error), cut short; never the whole body.
async fn github_message(resp: Response) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        message: Option<String>,
        #[serde(default)]
        errors: Vec<Value>,
    }
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let message = match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => {
            let mut m = body.message.unwrap_or_else(|| status.to_string());
            if let Some(first) = body.errors.first() {
                let detail = first
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| first.to_string());
                m.push_str(": ");
                m.push_str(&detail);
            }
            m
        }
        Err(_) => status.to_string(),
    };
    crate::domain::types::truncate_chars(&message, 300)
}

/// A 409 on a deployment: when every check that has not passed is still pending, the deployment
/// can wait for them; otherwise it is refused, naming the checks that failed.
fn conflict_record(text: &str) -> CreationRecord {
    #[derive(Deserialize)]
    struct Body {
        message: Option<String>,
        #[serde(default)]
        errors: Vec<ErrorItem>,
    }
    #[derive(Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        contexts: Vec<Context>,
    }
    #[derive(Deserialize)]
    struct Context {
        context: String,
        state: String,
    }
    let body: Option<Body> = serde_json::from_str(text).ok();
    let message = body.as_ref().and_then(|b| b.message.clone()).unwrap_or_else(|| "Conflict".to_owned());
    let contexts: Vec<&Context> = body.iter().flat_map(|b| &b.errors).flat_map(|e| &e.contexts).collect();
    let not_passed: Vec<&&Context> = contexts.iter().filter(|c| c.state != "success").collect();
    if !not_passed.is_empty() && not_passed.iter().all(|c| c.state == "pending") {
        return CreationRecord::ChecksPending { contexts: not_passed.iter().map(|c| c.context.clone()).collect() };
    }
    let failed: Vec<&str> = not_passed.iter().map(|c| c.context.as_str()).collect();
    let message = if failed.is_empty() { message } else { format!("{message} Failed checks: {}", failed.join(", ")) };
    CreationRecord::Rejected { status: 409, message: crate::domain::types::truncate_chars(&message, 300) }
}

#[derive(Deserialize)]
struct DeploymentBody {
    id: u64,
    #[serde(default)]
    payload: Value,
}

fn into_record(status: WireStatus) -> Result<StatusRecord, GitHubError> {
    status.into_record().map_err(|e| GitHubError::BadResponse(e.to_string()))
}

async fn read_json<T: for<'de> Deserialize<'de>>(resp: Response) -> Result<T, GitHubError> {
    resp.json::<T>().await.map_err(|e| GitHubError::BadResponse(e.to_string()))
}

/// The marker in a deployment's payload; the payload may be an object or a JSON string.
fn payload_marker(payload: &Value) -> Option<String> {
    let parsed;
    let object = match payload {
        Value::String(s) => {
            parsed = serde_json::from_str::<Value>(s).ok()?;
            &parsed
        }
        other => other,
    };
    object.pointer("/deploy_webhook/marker").and_then(Value::as_str).map(str::to_owned)
}

#[derive(Deserialize)]
struct WireHookDelivery {
    id: u64,
    guid: String,
    delivered_at: String,
    #[serde(default)]
    status_code: u16,
    #[serde(default)]
    event: String,
}

/// The `cursor` of the `rel="next"` page in a `Link` header.
fn next_cursor(headers: &HeaderMap) -> Option<String> {
    let link = headers.get("link")?.to_str().ok()?;
    let next = link.split(',').find(|part| part.contains("rel=\"next\""))?;
    let url = next.split(';').next()?.trim().trim_start_matches('<').trim_end_matches('>');
    let query = url.split_once('?')?.1;
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "cursor").map(|(_, v)| v.into_owned())
}

/// At most this many pages (of 100) per listing and sweep; the watermark makes the next go on.
const MAX_DELIVERY_PAGES: usize = 10;

impl GitHubClient {
    fn hook_path(hook: &HookRef) -> String {
        match hook {
            HookRef::App => "/app/hook/deliveries".to_owned(),
            HookRef::Repo { repo, hook_id } => format!("/repos/{repo}/hooks/{hook_id}/deliveries"),
        }
    }

    async fn hook_request(
        &self,
        method: Method,
        hook: &HookRef,
        path: &str,
        deadline: &Deadline,
    ) -> Result<RequestBuilder, GitHubError> {
        match hook {
            HookRef::App => self.app_request(method, path, deadline),
            HookRef::Repo { repo, .. } => self.request(method, path, repo, deadline).await,
        }
    }
}

impl GitHubClient {
    /// One GET or POST with the usual retries, its 2xx answer read as `T` (`()` ignores it).
    async fn call<T: for<'de> Deserialize<'de> + Default>(
        &self,
        what: &str,
        method: Method,
        path: &str,
        repo: &RepoFullName,
        body: Option<&Value>,
        deadline: Deadline,
    ) -> Result<T, GitHubError> {
        let refreshed = AtomicBool::new(false);
        self.with_retries(what, deadline, |_| {
            let (method, refreshed) = (method.clone(), &refreshed);
            async move {
                let mut request = self.request(method, path, repo, &deadline).await?;
                if let Some(body) = body {
                    request = request.json(body);
                }
                let resp = match request.send().await {
                    Ok(resp) => resp,
                    Err(err) => return Ok(transport_failure(err)),
                };
                if !resp.status().is_success() {
                    return self.failure_on(resp, repo, refreshed).await;
                }
                let text = resp.text().await.unwrap_or_default();
                if text.trim().is_empty() {
                    return Ok(Step::Done(T::default()));
                }
                serde_json::from_str(&text).map(Step::Done).map_err(|e| GitHubError::BadResponse(e.to_string()))
            }
        })
        .await
    }
}

#[derive(Deserialize, Default)]
struct WirePermission {
    #[serde(default)]
    permission: String,
    role_name: Option<String>,
}

#[derive(Deserialize, Default)]
struct WireContent {
    #[serde(default)]
    sha: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    content: String,
    #[serde(default, rename = "type")]
    kind: String,
}

/// GitHub limits a check run to 50 annotations per request, and its summary to 65,535 characters.
const MAX_ANNOTATIONS: usize = 50;
const MAX_SUMMARY_CHARS: usize = 60_000;

#[derive(Deserialize, Default)]
struct WirePull {
    #[serde(default)]
    state: String,
    head: Option<WireHead>,
}

#[derive(Deserialize)]
struct WireHead {
    sha: String,
    #[serde(rename = "ref", default)]
    git_ref: String,
    repo: Option<WireRepo>,
}

#[derive(Deserialize)]
struct WireRepo {
    full_name: String,
}

#[derive(Deserialize, Default)]
struct Ignored {}

impl GitHub for GitHubClient {
    async fn permission(&self, repo: &RepoFullName, user: &str, deadline: Deadline) -> Result<Permission, GitHubError> {
        if user.is_empty() || !user.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Ok(Permission { permission: "none".into(), role: None });
        }
        let path = format!("/repos/{repo}/collaborators/{user}/permission");
        match self.call::<WirePermission>("read permission", Method::GET, &path, repo, None, deadline).await {
            Ok(p) => Ok(Permission { permission: p.permission, role: p.role_name }),
            // Not a collaborator at all.
            Err(GitHubError::Api { status: 404, .. }) => Ok(Permission { permission: "none".into(), role: None }),
            Err(err) => Err(err),
        }
    }

    async fn created_by_us(
        &self,
        _repo: &RepoFullName,
        creator: Option<&str>,
        via_app: Option<u64>,
        deadline: Deadline,
    ) -> Result<bool, GitHubError> {
        if let Some(app_id) = self.auth.app_id() {
            return Ok(via_app == Some(app_id));
        }
        let Some(creator) = creator else { return Ok(false) };
        let login = self.own_login(deadline).await?;
        Ok(!login.is_empty() && login.eq_ignore_ascii_case(creator) && via_app.is_none())
    }

    async fn pull_request(
        &self,
        repo: &RepoFullName,
        number: u64,
        deadline: Deadline,
    ) -> Result<PullRequestHead, GitHubError> {
        let path = format!("/repos/{repo}/pulls/{number}");
        let pull: WirePull = self.call("read pull request", Method::GET, &path, repo, None, deadline).await?;
        let head = pull.head.ok_or_else(|| GitHubError::BadResponse("pull request without head".into()))?;
        Ok(PullRequestHead {
            open: pull.state == "open",
            head_sha: Sha::parse(&head.sha).map_err(|e| GitHubError::BadResponse(e.to_string()))?,
            head_repo: head.repo.map(|r| r.full_name),
            head_ref: head.git_ref,
        })
    }

    async fn react(
        &self,
        repo: &RepoFullName,
        comment_id: u64,
        content: &str,
        deadline: Deadline,
    ) -> Result<(), GitHubError> {
        let path = format!("/repos/{repo}/issues/comments/{comment_id}/reactions");
        let body = json!({ "content": content });
        self.call::<Ignored>("react", Method::POST, &path, repo, Some(&body), deadline).await.map(drop)
    }

    async fn comment(
        &self,
        repo: &RepoFullName,
        issue: u64,
        text: &str,
        deadline: Deadline,
    ) -> Result<(), GitHubError> {
        let path = format!("/repos/{repo}/issues/{issue}/comments");
        let body = json!({ "body": text });
        self.call::<Ignored>("comment", Method::POST, &path, repo, Some(&body), deadline).await.map(drop)
    }

    fn remember_installation(&self, repo: &RepoFullName, installation: u64) {
        self.auth.remember_installation(repo, installation);
    }

    /// `GET /repos/{repo}/contents/{path}`: 404 (no file, or no repository) and 403 (the
    /// installation does not cover that repository, or has not granted Contents: read) are
    /// `None`, so a repository outside the installation is one without a file.
    async fn get_file(
        &self,
        repo: &RepoFullName,
        path: &str,
        git_ref: Option<&str>,
        deadline: Deadline,
    ) -> Result<Option<RepoBlob>, GitHubError> {
        let mut url = format!("/repos/{repo}/contents/{path}");
        if let Some(git_ref) = git_ref {
            url.push_str(&format!("?ref={}", form_urlencoded::byte_serialize(git_ref.as_bytes()).collect::<String>()));
        }
        let content: Value = match self.call("read file", Method::GET, &url, repo, None, deadline).await {
            Ok(content) => content,
            Err(GitHubError::Api { status: 404, .. }) => return Ok(None),
            // Not installed there, or Contents: read not granted (yet): a repository whose files
            // this deployer cannot read has none for it. Any other 403 (a secondary rate limit)
            // is GitHub unavailable: never read as "no file".
            Err(GitHubError::Api { status: 403, message }) if message.contains("not accessible") => {
                warn!(%repo, %message, "no access to the repository's files (Contents: read); read as no file");
                return Ok(None);
            }
            Err(GitHubError::Api { status: 403, message }) => return Err(GitHubError::Unavailable(message)),
            Err(other) => return Err(other),
        };
        // A folder at the path answers a list: not a file.
        let content: WireContent = serde_json::from_value(content).unwrap_or_default();
        if content.kind != "file" {
            return Ok(None);
        }
        let size = content.size;
        if size > crate::repo_config::MAX_FILE_BYTES as u64 {
            return Ok(Some(RepoBlob { sha: content.sha, size, text: String::new() }));
        }
        use base64::Engine as _;
        let raw: String = content.content.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(raw)
            .map_err(|e| GitHubError::BadResponse(format!("file content is not base64: {e}")))?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(Some(RepoBlob { sha: content.sha, size, text }))
    }

    async fn create_check_run(
        &self,
        repo: &RepoFullName,
        run: &NewCheckRun,
        deadline: Deadline,
    ) -> Result<(), GitHubError> {
        let annotations: Vec<Value> = run
            .annotations
            .iter()
            .take(MAX_ANNOTATIONS)
            .map(|(path, line, message)| {
                json!({ "path": path, "start_line": line, "end_line": line, "annotation_level": "failure", "message": message })
            })
            .collect();
        let body = json!({
            "name": run.name,
            "head_sha": run.head_sha,
            "status": "completed",
            "conclusion": if run.success { "success" } else { "failure" },
            "output": {
                "title": run.title,
                "summary": crate::domain::types::truncate_chars(&run.summary, MAX_SUMMARY_CHARS),
                "annotations": annotations,
            },
        });
        let path = format!("/repos/{repo}/check-runs");
        self.call::<Ignored>("create check run", Method::POST, &path, repo, Some(&body), deadline).await.map(drop)
    }

    async fn list_hook_deliveries(
        &self,
        hook: &HookRef,
        since: &str,
        deadline: Deadline,
    ) -> Result<Vec<HookDelivery>, GitHubError> {
        let path = Self::hook_path(hook);
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_DELIVERY_PAGES {
            let page = self
                .with_retries("list webhook deliveries", deadline, |_| {
                    let (path, cursor) = (&path, &cursor);
                    async move {
                        let mut query = vec![("per_page", "100".to_owned())];
                        if let Some(c) = cursor {
                            query.push(("cursor", c.clone()));
                        }
                        let request = self.hook_request(Method::GET, hook, path, &deadline).await?;
                        let resp = match request.query(&query).send().await {
                            Ok(resp) => resp,
                            Err(err) => return Ok(transport_failure(err)),
                        };
                        if resp.status() != StatusCode::OK {
                            return failure(resp).await;
                        }
                        let next = next_cursor(resp.headers());
                        let list: Vec<WireHookDelivery> = read_json(resp).await?;
                        Ok(Step::Done((list, next)))
                    }
                })
                .await?;
            let (list, next) = page;
            let reached_since = list.iter().any(|d| d.delivered_at.as_str() < since);
            all.extend(list.into_iter().filter(|d| d.delivered_at.as_str() >= since).map(|d| HookDelivery {
                id: d.id,
                guid: d.guid,
                delivered_at: d.delivered_at,
                status_code: d.status_code,
                event: d.event,
            }));
            match next {
                Some(next) if !reached_since => cursor = Some(next),
                _ => break,
            }
        }
        Ok(all)
    }

    async fn redeliver(&self, hook: &HookRef, id: u64, deadline: Deadline) -> Result<(), GitHubError> {
        let path = format!("{}/{id}/attempts", Self::hook_path(hook));
        self.with_retries("redeliver", deadline, |_| {
            let path = &path;
            async move {
                let resp = match self.hook_request(Method::POST, hook, path, &deadline).await?.send().await {
                    Ok(resp) => resp,
                    Err(err) => return Ok(transport_failure(err)),
                };
                if resp.status().is_success() {
                    return Ok(Step::Done(()));
                }
                failure(resp).await
            }
        })
        .await
    }

    async fn create_deployment(
        &self,
        repo: &RepoFullName,
        request: &NewDeployment,
        deadline: Deadline,
    ) -> Result<CreationRecord, GitHubError> {
        let path = format!("/repos/{repo}/deployments");
        let body = json!({
            "ref": request.sha.as_str(),
            "task": "deploy",
            "auto_merge": false,
            "environment": request.environment.as_str(),
            "description": request.description,
            "production_environment": request.production_environment,
            "payload": request.payload,
        });
        let mut body = body;
        if let Some(contexts) = &request.required_contexts {
            body["required_contexts"] = json!(contexts);
        }
        let marker = payload_marker(&request.payload);
        let refreshed = AtomicBool::new(false);
        self.with_retries("create deployment", deadline, |maybe_applied| {
            let (path, body, marker, refreshed) = (&path, &body, &marker, &refreshed);
            async move {
                if maybe_applied
                    && let Some(marker) = marker
                    && let Some(id) =
                        self.find_deployment(repo, &request.sha, &request.environment, marker, deadline).await?
                {
                    return Ok(Step::Done(CreationRecord::Created(id)));
                }
                let resp = match self.request(Method::POST, path, repo, &deadline).await?.json(body).send().await {
                    Ok(resp) => resp,
                    Err(err) => return Ok(transport_failure(err)),
                };
                match resp.status() {
                    StatusCode::CREATED => {
                        let created: DeploymentBody = read_json(resp).await?;
                        Ok(Step::Done(CreationRecord::Created(DeploymentId(created.id))))
                    }
                    // 409: required status checks not passed (yet), or a merge conflict.
                    StatusCode::CONFLICT => {
                        let text = resp.text().await.unwrap_or_default();
                        Ok(Step::Done(conflict_record(&text)))
                    }
                    // 422: validation.
                    status @ StatusCode::UNPROCESSABLE_ENTITY => {
                        let message = github_message(resp).await;
                        Ok(Step::Done(CreationRecord::Rejected { status: status.as_u16(), message }))
                    }
                    _ => self.failure_on(resp, repo, refreshed).await,
                }
            }
        })
        .await
    }

    async fn find_deployment(
        &self,
        repo: &RepoFullName,
        sha: &Sha,
        environment: &Environment,
        marker: &str,
        deadline: Deadline,
    ) -> Result<Option<DeploymentId>, GitHubError> {
        let path = format!("/repos/{repo}/deployments");
        let query = [("sha", sha.as_str()), ("environment", environment.as_str()), ("per_page", "100")];
        let refreshed = AtomicBool::new(false);
        self.with_retries("list deployments", deadline, |_| {
            let (path, query, refreshed) = (&path, &query, &refreshed);
            async move {
                let resp = match self.request(Method::GET, path, repo, &deadline).await?.query(query).send().await {
                    Ok(resp) => resp,
                    Err(err) => return Ok(transport_failure(err)),
                };
                if resp.status() != StatusCode::OK {
                    return self.failure_on(resp, repo, refreshed).await;
                }
                let list: Vec<DeploymentBody> = read_json(resp).await?;
                let found = list.into_iter().find(|d| payload_marker(&d.payload).as_deref() == Some(marker));
                Ok(Step::Done(found.map(|d| DeploymentId(d.id))))
            }
        })
        .await
    }

    async fn create_deployment_status(
        &self,
        repo: &RepoFullName,
        id: DeploymentId,
        status: &NewStatus,
        deadline: Deadline,
    ) -> Result<StatusRecord, GitHubError> {
        let path = format!("/repos/{repo}/deployments/{id}/statuses");
        let mut body = json!({ "state": status.state.as_str(), "description": status.description });
        if let Some(url) = &status.log_url {
            body["log_url"] = json!(url);
        }
        if let Some(url) = &status.environment_url {
            body["environment_url"] = json!(url);
        }
        let refreshed = AtomicBool::new(false);
        self.with_retries("create deployment status", deadline, |maybe_applied| {
            let (path, body, refreshed) = (&path, &body, &refreshed);
            async move {
                if maybe_applied {
                    // A status of this state may have been created by the try whose answer we lost.
                    let existing = self.list_deployment_statuses(repo, id, deadline).await?;
                    if let Some(found) = existing.into_iter().filter(|s| s.state == status.state).max_by_key(|s| s.id) {
                        return Ok(Step::Done(found));
                    }
                }
                let resp = match self.request(Method::POST, path, repo, &deadline).await?.json(body).send().await {
                    Ok(resp) => resp,
                    Err(err) => return Ok(transport_failure(err)),
                };
                if resp.status() != StatusCode::CREATED {
                    return self.failure_on(resp, repo, refreshed).await;
                }
                let created = into_record(read_json::<WireStatus>(resp).await?)?;
                // Who GitHub says created it is who we are: no call needed to learn it.
                if let Some(creator) = &created.creator {
                    let _ = self.own_login.set(creator.clone());
                }
                Ok(Step::Done(created))
            }
        })
        .await
    }

    async fn own_login(&self, deadline: Deadline) -> Result<String, GitHubError> {
        if let Some(login) = self.own_login.get() {
            return Ok(login.clone());
        }
        #[derive(Deserialize)]
        struct Identity {
            login: Option<String>,
            slug: Option<String>,
        }
        // An App posts as its bot user, `<slug>[bot]`; a token as its user.
        let path = if self.auth.is_app() { "/app" } else { "/user" };
        let identity: Identity = self
            .with_retries("read who we are", deadline, |_| async move {
                let resp = match self.app_request(Method::GET, path, &deadline)?.send().await {
                    Ok(resp) => resp,
                    Err(err) => return Ok(transport_failure(err)),
                };
                if !resp.status().is_success() {
                    return failure(resp).await;
                }
                Ok(Step::Done(read_json(resp).await?))
            })
            .await?;
        let login = match (self.auth.is_app(), identity.slug, identity.login) {
            (true, Some(slug), _) => format!("{slug}[bot]"),
            (false, _, Some(login)) => login,
            _ => return Err(GitHubError::BadResponse(format!("GET {path} named nobody"))),
        };
        Ok(self.own_login.get_or_init(|| login).clone())
    }

    async fn list_deployment_statuses(
        &self,
        repo: &RepoFullName,
        id: DeploymentId,
        deadline: Deadline,
    ) -> Result<Vec<StatusRecord>, GitHubError> {
        let path = format!("/repos/{repo}/deployments/{id}/statuses");
        let refreshed = AtomicBool::new(false);
        self.with_retries("list deployment statuses", deadline, |_| {
            let (path, refreshed) = (&path, &refreshed);
            async move {
                let request = self.request(Method::GET, path, repo, &deadline).await?;
                let resp = match request.query(&[("per_page", "100")]).send().await {
                    Ok(resp) => resp,
                    Err(err) => return Ok(transport_failure(err)),
                };
                if resp.status() != StatusCode::OK {
                    return self.failure_on(resp, repo, refreshed).await;
                }
                let list: Vec<WireStatus> = read_json(resp).await?;
                Ok(Step::Done(list.into_iter().map(into_record).collect::<Result<_, _>>()?))
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_waits_follow_githubs_headers() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(rate_limit_wait(StatusCode::FORBIDDEN, &h), Some(Duration::from_secs(2)));
        assert_eq!(rate_limit_wait(StatusCode::INTERNAL_SERVER_ERROR, &h), None);

        let mut h = HeaderMap::new();
        let reset = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 30;
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        h.insert("x-ratelimit-reset", HeaderValue::from_str(&reset.to_string()).unwrap());
        let wait = rate_limit_wait(StatusCode::FORBIDDEN, &h).unwrap();
        assert!(wait <= Duration::from_secs(30) && wait >= Duration::from_secs(28));

        // A plain 403 (no permission) is not a rate limit.
        assert_eq!(rate_limit_wait(StatusCode::FORBIDDEN, &HeaderMap::new()), None);
    }

    #[test]
    fn a_409_waits_only_when_every_unpassed_check_is_pending() {
        let pending = r#"{"message":"Conflict: Commit status checks failed for main.","errors":[{"contexts":[{"context":"ci/build","state":"pending"},{"context":"ci/lint","state":"success"}],"resource":"Deployment","field":"required_contexts","code":"invalid"}]}"#;
        assert_eq!(conflict_record(pending), CreationRecord::ChecksPending { contexts: vec!["ci/build".into()] });
        let failed = pending.replace(r#""state":"success""#, r#""state":"failure""#);
        match conflict_record(&failed) {
            CreationRecord::Rejected { status: 409, message } => {
                assert!(message.ends_with("Failed checks: ci/build, ci/lint"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            conflict_record(r#"{"message":"Conflict: merge conflict"}"#),
            CreationRecord::Rejected { .. }
        ));
    }

    #[test]
    fn follows_the_next_cursor_of_a_link_header() {
        let mut h = HeaderMap::new();
        h.insert(
            "link",
            HeaderValue::from_static(
                "<https://api.github.com/app/hook/deliveries?per_page=100&cursor=v1_12%3D>; rel=\"next\", <https://x>; rel=\"first\"",
            ),
        );
        assert_eq!(next_cursor(&h).as_deref(), Some("v1_12="));
        assert_eq!(next_cursor(&HeaderMap::new()), None);
    }

    #[test]
    fn finds_the_marker_in_object_and_string_payloads() {
        let object = json!({"deploy_webhook": {"marker": "o/r#1#production"}});
        assert_eq!(payload_marker(&object).as_deref(), Some("o/r#1#production"));
        let string = Value::String(object.to_string());
        assert_eq!(payload_marker(&string).as_deref(), Some("o/r#1#production"));
        assert_eq!(payload_marker(&json!({})), None);
        assert_eq!(payload_marker(&json!("not json")), None);
    }
}
