//! The Lambda edge: verify → decode → parse → service → response.

pub mod body;
pub mod callback;
pub mod signature;

use std::time::Duration;

use lambda_http::http::{HeaderMap, Method, StatusCode, header};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use serde_json::{Value, json};
use tracing::{Instrument, info, info_span, warn};

use crate::domain::ServiceError;
use crate::domain::ports::{Clock, DeployAction, GitHub, Store, SystemClock};
use crate::domain::types::DeliveryId;
use crate::domain::{Deadline, Delivery, Outcome, Service, SweepReport};
use crate::error::AppError;
use crate::github::events::parse_event;
use crate::metrics::{self, Unit};
use signature::{HookSecrets, WebhookSecrets};

pub const EVENT_HEADER: &str = "x-github-event";
pub const DELIVERY_HEADER: &str = "x-github-delivery";
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";
/// Lambda's limit for a synchronous invocation's payload; GitHub caps deliveries at 25 MB but
/// API Gateway and Lambda refuse more than this before we run. Checked anyway, before the HMAC,
/// so that an oversized body costs nothing.
pub const MAX_BODY_BYTES: usize = 6 * 1024 * 1024;

/// Everything a request needs, built once per cold start.
pub struct WebhookHandler<S, G, D, C = SystemClock> {
    service: Service<S, G, D, C>,
    /// `GITHUB_WEBHOOK_SECRET`: deliveries to `/webhook`, and nothing else.
    secrets: WebhookSecrets,
    /// `HOOK_SIGNING_SECRET[_<ENV>]`: callbacks, and nothing else.
    hook_secrets: HookSecrets,
    budget: Duration,
}

impl<S: Store, G: GitHub, D: DeployAction, C: Clock> WebhookHandler<S, G, D, C> {
    pub fn new(service: Service<S, G, D, C>, secrets: WebhookSecrets, budget: Duration) -> Self {
        Self { service, secrets, hook_secrets: HookSecrets::default(), budget }
    }

    /// The secrets that verify callbacks (without them every callback is refused).
    pub fn with_hook_secrets(mut self, hook_secrets: HookSecrets) -> Self {
        self.hook_secrets = hook_secrets;
        self
    }

    pub fn service(&self) -> &Service<S, G, D, C> {
        &self.service
    }

    /// The scheduled sweep, within the same budget as a delivery.
    pub async fn sweep(&self, budget: Duration) -> Result<SweepReport, crate::domain::ServiceError> {
        self.service.sweep(Deadline::after(budget)).await
    }

    /// Handles one request (`POST /webhook`, or `POST /callbacks/<token>`); never fails: every
    /// error becomes a response here.
    pub async fn handle(&self, request: Request) -> Response<Body> {
        let deadline = Deadline::after(self.budget);
        if let Some(token) = callback::token_in_path(request.uri().path()) {
            let token = token.to_owned();
            return callback::handle(&self.service, &self.hook_secrets, &request, &token, deadline).await;
        }
        let delivery_header = header_str(request.headers(), DELIVERY_HEADER).unwrap_or_default().to_owned();
        // The span's delivery id and event are recorded once the signature is verified: before
        // that, header values are anyone's and never reach the log.
        let span = info_span!("delivery", delivery_id = tracing::field::Empty, event = tracing::field::Empty);
        async move {
            match self.process(&request, deadline).await {
                Ok((delivery, event, outcome)) => {
                    info!(status = outcome.status(), detail = %outcome.detail(), "delivery handled");
                    metrics::emit(
                        SystemClock.now_ms(),
                        Some(("Outcome", outcome.status())),
                        &[("Deliveries", 1.0, Unit::Count)],
                    );
                    let mut body =
                        json!({ "status": outcome.status(), "delivery": delivery.as_str(), "detail": outcome.detail() });
                    // After the work (a failed delivery is not counted as received), so that its
                    // own reads and writes come first.
                    self.service.note_event(&event).await;
                    if let Some(note) = self.service.missing_events_note(&outcome).await {
                        body["note"] = Value::String(note);
                    }
                    respond(StatusCode::OK, body)
                }
                Err(err) => {
                    let status = err.status();
                    let now = SystemClock.now_ms();
                    metrics::emit(now, Some(("Outcome", err.kind())), &[("Deliveries", 1.0, Unit::Count)]);
                    match &err {
                        AppError::Service(ServiceError::GitHub(_)) => metrics::count(now, None, "GitHubErrors"),
                        AppError::Service(ServiceError::Store(_)) => metrics::count(now, None, "DynamoErrors"),
                        _ => {}
                    }
                    if status.is_server_error() {
                        warn!(error = %err, http_status = status.as_u16(), "delivery failed; it can be redelivered");
                    } else {
                        info!(error = %err, http_status = status.as_u16(), "delivery refused");
                    }
                    let mut body = json!({ "status": err.kind(), "message": err.public_message() });
                    if let Ok(id) = DeliveryId::parse(&delivery_header) {
                        body["delivery"] = Value::String(id.as_str().to_owned());
                    }
                    respond(status, body)
                }
            }
        }
        .instrument(span)
        .await
    }

    /// The delivery's id, its event name, and what the service made of it.
    async fn process(&self, request: &Request, deadline: Deadline) -> Result<(DeliveryId, String, Outcome), AppError> {
        if request.method() != Method::POST {
            return Err(AppError::MethodNotAllowed);
        }
        let headers = request.headers();
        let raw_body: &[u8] = request.body().as_ref();
        if raw_body.len() > MAX_BODY_BYTES {
            return Err(AppError::TooLarge);
        }
        // The signature is checked over the raw bytes before anything reads them.
        self.secrets.verify(headers.get(SIGNATURE_HEADER).map(|v| v.as_bytes()), raw_body)?;
        // Signed by GitHub: its headers may label the log lines (short and printable).
        let span = tracing::Span::current();
        span.record("delivery_id", printable(header_str(headers, DELIVERY_HEADER).unwrap_or_default()));
        span.record("event", printable(header_str(headers, EVENT_HEADER).unwrap_or_default()));

        let event_name = header_str(headers, EVENT_HEADER).ok_or(AppError::MissingHeader("X-GitHub-Event"))?;
        let delivery_id = DeliveryId::parse(
            header_str(headers, DELIVERY_HEADER).ok_or(AppError::MissingHeader("X-GitHub-Delivery"))?,
        )?;
        let json = body::event_json(header_str(headers, header::CONTENT_TYPE.as_str()), raw_body)?;
        let event = parse_event(event_name.trim(), &json)?;

        let delivery = Delivery { id: delivery_id.clone(), event, callback_base: callback_base(request) };
        let outcome = self.service.handle(delivery, deadline).await?;
        Ok((delivery_id, event_name.trim().to_owned(), outcome))
    }
}

/// `https://<domain>[/<stage>]` of the API that received `request`, for callback URLs on the
/// same API (a `$default` stage has no path segment).
fn callback_base(request: &Request) -> Option<String> {
    let (domain, stage) = match request.request_context_ref()? {
        RequestContext::ApiGatewayV2(ctx) => (ctx.domain_name.clone()?, ctx.stage.clone()),
        RequestContext::ApiGatewayV1(ctx) => (ctx.domain_name.clone()?, ctx.stage.clone()),
        #[allow(unreachable_patterns)]
        _ => return None,
    };
    let domain: String = domain.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':')).collect();
    match stage.as_deref() {
        None | Some("$default") | Some("") => Some(format!("https://{domain}")),
        Some(stage) => Some(format!("https://{domain}/{}", stage.trim_matches('/'))),
    }
}

pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).filter(|v| !v.trim().is_empty())
}

pub(crate) fn printable(value: &str) -> String {
    value.chars().filter(|c| !c.is_control()).take(64).collect()
}

pub(crate) fn respond(status: StatusCode, body: Value) -> Response<Body> {
    let mut response = Response::new(Body::Text(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    response
}
