//! A small typed client for GitHub's Deployments REST API (octocrab has no deployments
//! endpoints). Built once per cold start; every call is bounded by the delivery's [`Deadline`].
//!
//! Retries: 5xx, timeouts and connection failures are retried with exponential backoff and full
//! jitter; rate limits (403/429 with `Retry-After` or `x-ratelimit-reset`) wait when the wait
//! fits the remaining budget. A POST whose fate is unknown (timeout or 5xx after it was sent) is
//! never blindly repeated: before the next try we look for what it may have created.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue};
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{debug, warn};

use crate::domain::ports::{CreationRecord, GitHub, GitHubError, NewDeployment, NewStatus};
use crate::domain::types::{DeploymentId, Environment, RepoFullName, Sha};
use crate::domain::{Deadline, StatusRecord};
use crate::github::WireStatus;

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

#[derive(Clone, Debug)]
pub struct GitHubClient {
    http: Client,
    headers: HeaderMap,
    base_url: String,
    retry: RetryPolicy,
}

/// The one HTTP client of the process, shared by the GitHub client and the deploy hook: loading
/// the TLS trust store is the costliest part of a cold start, so it is done once.
pub fn http_client() -> Result<Client, ClientBuildError> {
    Client::builder()
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
    pub fn new(
        http: Client,
        base_url: &str,
        token: &SecretString,
        retry: RetryPolicy,
    ) -> Result<Self, ClientBuildError> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/vnd.github+json"));
        headers.insert("X-GitHub-Api-Version", HeaderValue::from_static(API_VERSION));
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
            .map_err(|_| ClientBuildError("GITHUB_TOKEN holds characters not allowed in a header".into()))?;
        // Keeps the token out of any Debug output of requests or headers.
        auth.set_sensitive(true);
        headers.insert(AUTHORIZATION, auth);
        Ok(Self { http, headers, base_url: base_url.trim_end_matches('/').to_owned(), retry })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    fn request(&self, method: Method, path: &str, deadline: &Deadline) -> RequestBuilder {
        self.http
            .request(method, self.url(path))
            .headers(self.headers.clone())
            .timeout(deadline.cap(self.retry.attempt_timeout))
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

impl GitHub for GitHubClient {
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
        let marker = payload_marker(&request.payload);
        self.with_retries("create deployment", deadline, |maybe_applied| {
            let (path, body, marker) = (&path, &body, &marker);
            async move {
                if maybe_applied {
                    if let Some(marker) = marker {
                        if let Some(id) =
                            self.find_deployment(repo, &request.sha, &request.environment, marker, deadline).await?
                        {
                            return Ok(Step::Done(CreationRecord::Created(id)));
                        }
                    }
                }
                let resp = match self.request(Method::POST, path, &deadline).json(body).send().await {
                    Ok(resp) => resp,
                    Err(err) => return Ok(transport_failure(err)),
                };
                match resp.status() {
                    StatusCode::CREATED => {
                        let created: DeploymentBody = read_json(resp).await?;
                        Ok(Step::Done(CreationRecord::Created(DeploymentId(created.id))))
                    }
                    // 409: required status checks failed or a merge conflict; 422: validation.
                    status @ (StatusCode::CONFLICT | StatusCode::UNPROCESSABLE_ENTITY) => {
                        let message = github_message(resp).await;
                        Ok(Step::Done(CreationRecord::Rejected { status: status.as_u16(), message }))
                    }
                    _ => failure(resp).await,
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
        self.with_retries("list deployments", deadline, |_| {
            let (path, query) = (&path, &query);
            async move {
                let resp = match self.request(Method::GET, path, &deadline).query(query).send().await {
                    Ok(resp) => resp,
                    Err(err) => return Ok(transport_failure(err)),
                };
                if resp.status() != StatusCode::OK {
                    return failure(resp).await;
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
        self.with_retries("create deployment status", deadline, |maybe_applied| {
            let (path, body) = (&path, &body);
            async move {
                if maybe_applied {
                    // A status of this state may have been created by the try whose answer we lost.
                    let existing = self.list_deployment_statuses(repo, id, deadline).await?;
                    if let Some(found) = existing.into_iter().filter(|s| s.state == status.state).max_by_key(|s| s.id) {
                        return Ok(Step::Done(found));
                    }
                }
                let resp = match self.request(Method::POST, path, &deadline).json(body).send().await {
                    Ok(resp) => resp,
                    Err(err) => return Ok(transport_failure(err)),
                };
                if resp.status() != StatusCode::CREATED {
                    return failure(resp).await;
                }
                let created: WireStatus = read_json(resp).await?;
                Ok(Step::Done(into_record(created)?))
            }
        })
        .await
    }

    async fn list_deployment_statuses(
        &self,
        repo: &RepoFullName,
        id: DeploymentId,
        deadline: Deadline,
    ) -> Result<Vec<StatusRecord>, GitHubError> {
        let path = format!("/repos/{repo}/deployments/{id}/statuses");
        self.with_retries("list deployment statuses", deadline, |_| {
            let path = &path;
            async move {
                let resp = match self.request(Method::GET, path, &deadline).query(&[("per_page", "100")]).send().await {
                    Ok(resp) => resp,
                    Err(err) => return Ok(transport_failure(err)),
                };
                if resp.status() != StatusCode::OK {
                    return failure(resp).await;
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
    fn finds_the_marker_in_object_and_string_payloads() {
        let object = json!({"deploy_webhook": {"marker": "o/r#1#production"}});
        assert_eq!(payload_marker(&object).as_deref(), Some("o/r#1#production"));
        let string = Value::String(object.to_string());
        assert_eq!(payload_marker(&string).as_deref(), Some("o/r#1#production"));
        assert_eq!(payload_marker(&json!({})), None);
        assert_eq!(payload_marker(&json!("not json")), None);
    }
}
