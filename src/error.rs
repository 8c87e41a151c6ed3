//! The edge's error type, and the one place where errors become HTTP statuses and bodies.
//!
//! 4xx bodies say what is wrong with the request (the caller sent it, so nothing leaks); 5xx
//! bodies are fixed texts, so internal error details never reach the caller. Details go to logs.

use lambda_http::http::StatusCode;

use crate::domain::ServiceError;
use crate::domain::ports::GitHubError;
use crate::domain::types::InvalidValue;
use crate::github::events::EventError;
use crate::http::body::BodyError;
use crate::http::signature::SignatureError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("only POST is accepted")]
    MethodNotAllowed,
    #[error("the body is larger than 6 MB")]
    TooLarge,
    #[error("a callback body is at most 4 KB")]
    CallbackTooLarge,
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("the {0} header is missing")]
    MissingHeader(&'static str),
    #[error(transparent)]
    BadHeader(#[from] InvalidValue),
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error(transparent)]
    Event(#[from] EventError),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("no run has this callback URL")]
    UnknownCallback,
    #[error("the callback is not valid: {0}")]
    BadCallback(String),
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooLarge | Self::CallbackTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Signature(_) => StatusCode::UNAUTHORIZED,
            Self::Body(BodyError::UnsupportedContentType(_)) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::MissingHeader(_) | Self::BadHeader(_) | Self::Body(_) | Self::Event(_) | Self::BadCallback(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::UnknownCallback | Self::Service(ServiceError::UnknownRun) => StatusCode::NOT_FOUND,
            Self::Service(ServiceError::InProgress) => StatusCode::CONFLICT,
            Self::Service(ServiceError::Store(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Service(ServiceError::GitHub(_)) => StatusCode::BAD_GATEWAY,
            Self::Service(ServiceError::NoRandomness) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The one-word status of the response body.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::MethodNotAllowed => "method_not_allowed",
            Self::TooLarge | Self::CallbackTooLarge => "too_large",
            Self::Signature(_) => "unauthorized",
            Self::MissingHeader(_) | Self::BadHeader(_) | Self::Body(_) | Self::Event(_) | Self::BadCallback(_) => {
                "bad_request"
            }
            Self::UnknownCallback | Self::Service(ServiceError::UnknownRun) => "not_found",
            Self::Service(ServiceError::InProgress) => "in_progress",
            Self::Service(_) => "error",
        }
    }

    /// The message the caller sees.
    pub fn public_message(&self) -> String {
        match self {
            // The same words for every signature failure: no hint which part was wrong.
            Self::Signature(SignatureError::Missing) => "the X-Hub-Signature-256 header is missing".to_owned(),
            Self::Signature(_) => "the signature does not match (check the webhook secret)".to_owned(),
            Self::Service(ServiceError::InProgress) => {
                "another attempt is processing this work; redeliver later to see its result".to_owned()
            }
            Self::Service(ServiceError::Store(_)) => {
                "the state store is unavailable; nothing was done, redeliver later".to_owned()
            }
            Self::UnknownCallback | Self::Service(ServiceError::UnknownRun) => {
                "no run has this callback URL (it may be mistyped)".to_owned()
            }
            Self::Service(ServiceError::GitHub(GitHubError::Api { status: 404, .. })) => {
                "GitHub answered 404: the repository or deployment is not there, or the token cannot see it; \
                 redeliver once that is fixed"
                    .to_owned()
            }
            Self::Service(ServiceError::GitHub(GitHubError::Api { status, .. })) => {
                format!("GitHub refused the request ({status}); check the token's access, then redeliver")
            }
            Self::Service(ServiceError::GitHub(_)) => {
                "GitHub is unavailable; the work is not done, redeliver later".to_owned()
            }
            other => other.to_string(),
        }
    }
}
