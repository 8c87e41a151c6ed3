//! `POST /callbacks/<token>`: the deploy system reports an asynchronous deploy's progress and
//! result. Checked in this order, and nothing is stored or posted for a refused callback:
//! a malformed token → 404; a wrong `X-Hub-Signature-256` (HMAC-SHA256 of the raw body with the
//! hook secret of the environment the token names, never the webhook secret) → 401; bad JSON or state → 400; a token that matches no run → 404.

use lambda_http::http::{Method, StatusCode};
use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::json;
use tracing::{Instrument, info, info_span, warn};

use super::signature::{HookSecrets, SignatureError};
use super::{SIGNATURE_HEADER, respond};
use crate::domain::ports::{Clock, DeployAction, GitHub, Store, SystemClock};
use crate::domain::runs::{CallbackReport, RunResult};
use crate::domain::types::DeploymentState;
use crate::domain::{CallbackToken, Deadline, Service, ServiceError};
use crate::error::AppError;
use crate::metrics::{self, Unit};

/// The largest callback body read: a report (state, description, two URLs) fits many times over;
/// a flood of large unsigned bodies costs no HMAC.
pub const MAX_CALLBACK_BYTES: usize = 4 * 1024;

/// The token of a callback path: `…/callbacks/<token>` (with or without a stage before it).
pub fn token_in_path(path: &str) -> Option<&str> {
    let (_, rest) = path.rsplit_once("/callbacks/")?;
    Some(rest.trim_end_matches('/'))
}

#[derive(Deserialize)]
struct CallbackBody {
    state: String,
    description: Option<String>,
    log_url: Option<String>,
    environment_url: Option<String>,
}

fn report_of(raw: &[u8]) -> Result<CallbackReport, AppError> {
    let body: CallbackBody =
        serde_json::from_slice(raw).map_err(|e| AppError::BadCallback(format!("the body is not valid JSON: {e}")))?;
    let url = |u: Option<String>| u.filter(|u| !u.trim().is_empty());
    let description = body.description.filter(|d| !d.trim().is_empty());
    let terminal = |state, default: &str| {
        CallbackReport::Finished(RunResult {
            state,
            description: description.clone().unwrap_or_else(|| default.to_owned()),
            log_url: url(body.log_url.clone()),
            environment_url: url(body.environment_url.clone()),
        })
    };
    Ok(match body.state.as_str() {
        "in_progress" => CallbackReport::InProgress { description: description.clone(), log_url: url(body.log_url) },
        "success" => terminal(DeploymentState::Success, "Deployed"),
        "failure" => terminal(DeploymentState::Failure, "Deploy failed"),
        "error" => terminal(DeploymentState::Error, "Deploy errored"),
        _ => {
            return Err(AppError::BadCallback("state must be one of in_progress, success, failure, error".to_owned()));
        }
    })
}

pub async fn handle<S: Store, G: GitHub, D: DeployAction, C: Clock>(
    service: &Service<S, G, D, C>,
    secrets: &HookSecrets,
    request: &Request,
    raw_token: &str,
    deadline: Deadline,
) -> Response<Body> {
    let token = CallbackToken::parse(raw_token);
    let span = info_span!("callback", deployment_id = token.as_ref().map(|t| t.deployment.0));
    async move {
        let result = async {
            if request.method() != Method::POST {
                return Err(AppError::MethodNotAllowed);
            }
            let token = token.ok_or(AppError::UnknownCallback)?;
            let raw: &[u8] = request.body().as_ref();
            // A report is a few hundred bytes: anything much larger is refused before the HMAC.
            if raw.len() > MAX_CALLBACK_BYTES {
                return Err(AppError::CallbackTooLarge);
            }
            // Signed by a secret the stack holds before anything is read for it; then the run's
            // environment (from the token) must name that secret in the repository's settings:
            // staging's hook cannot sign for a production run. No hook there: no callback.
            let signature = request.headers().get(SIGNATURE_HEADER).map(|v| v.as_bytes());
            let signed_by = secrets.names_verifying(signature, raw)?;
            if signed_by.is_empty() {
                return Err(SignatureError::Mismatch.into());
            }
            let expected = service.hook_secret_of(&token.repo, &token.environment, deadline).await?;
            if !expected.is_some_and(|name| signed_by.contains(&name)) {
                return Err(SignatureError::Mismatch.into());
            }
            let report = report_of(raw)?;
            Ok(service.handle_callback(&token, report, deadline).await?)
        }
        .await;
        match result {
            Ok(outcome) => {
                info!(status = outcome.status(), "callback handled");
                metrics::emit(SystemClock.now_ms(), Some(("Outcome", outcome.status())), &[("Callbacks", 1.0, Unit::Count)]);
                respond(StatusCode::OK, json!({ "status": outcome.status(), "detail": outcome.detail() }))
            }
            Err(err) => {
                let status = err.status();
                let now = SystemClock.now_ms();
                // Refusals count too (a flood of unauthorized callbacks shows on the dashboard).
                metrics::emit(now, Some(("Outcome", err.kind())), &[("Callbacks", 1.0, Unit::Count)]);
                match &err {
                    AppError::Service(ServiceError::GitHub(_)) => metrics::count(now, None, "GitHubErrors"),
                    AppError::Service(ServiceError::Store(_)) => metrics::count(now, None, "DynamoErrors"),
                    _ => {}
                }
                if status.is_server_error() {
                    warn!(error = %err, http_status = status.as_u16(), "callback failed; the deploy system may retry it");
                } else {
                    info!(error = %err, http_status = status.as_u16(), "callback refused");
                }
                respond(status, json!({ "status": err.kind(), "message": err.public_message() }))
            }
        }
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_token_with_or_without_a_stage() {
        assert_eq!(token_in_path("/callbacks/abc.def"), Some("abc.def"));
        assert_eq!(token_in_path("/prod/callbacks/abc.def/"), Some("abc.def"));
        assert_eq!(token_in_path("/webhook"), None);
    }

    #[test]
    fn reads_states_and_refuses_others() {
        assert!(matches!(
            report_of(br#"{"state":"in_progress","log_url":"https://l"}"#),
            Ok(CallbackReport::InProgress { .. })
        ));
        match report_of(br#"{"state":"success","environment_url":""}"#).unwrap() {
            CallbackReport::Finished(r) => {
                assert_eq!(r.state, DeploymentState::Success);
                assert_eq!(r.environment_url, None);
            }
            other => panic!("{other:?}"),
        }
        for bad in [&br#"{"state":"queued"}"#[..], br#"{"state":"inactive"}"#, b"{", br#"{"description":"x"}"#] {
            assert!(matches!(report_of(bad), Err(AppError::BadCallback(_))), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
