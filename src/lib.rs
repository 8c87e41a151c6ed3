//! deploy-webhook: GitHub webhook deliveries in, GitHub deployments and statuses out, with every
//! state change kept in DynamoDB.
//!
//! Layout (ports and adapters):
//! - [`http`]: the Lambda edge. Verify the signature, decode the body, parse the event, call the
//!   service, map the outcome or error to an HTTP response.
//! - [`github::events`]: wire payloads turned into the domain's [`domain::WebhookEvent`].
//! - [`domain`]: newtypes, the ports (traits the domain owns) and the [`domain::Service`] that
//!   decides what a delivery means and which effects to run, with no I/O types.
//! - Adapters: [`store::dynamo`] (DynamoDB), [`github::client`] (GitHub REST), [`deploy::hook`]
//!   (the environment's deploy action).
//! - [`config`]: every setting, read and validated once at cold start.

pub mod app;
pub mod check_config;
pub mod config;
pub mod deploy;
pub mod domain;
pub mod error;
pub mod github;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod repo_config;
pub mod schedule;
pub mod store;
