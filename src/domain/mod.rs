//! The domain: what a delivery means and which effects it calls for. No HTTP, DynamoDB or GitHub
//! wire types live here; adapters implement the [`ports`].

pub mod commands;
pub mod configuration;
pub mod creation;
pub mod deadline;
pub mod event;
pub mod features;
pub mod gates;
pub mod ports;
pub mod redelivery;
pub mod requester;
pub mod rules;
pub mod runner;
pub mod runs;
pub mod service;
pub mod types;

pub use deadline::Deadline;
pub use event::{Delivery, DeploymentCreated, DeploymentStatusEvent, MergedPullRequest, StatusRecord, WebhookEvent};
pub use rules::{BranchPattern, DeployRule, DeployRules};
pub use runner::{CallbackToken, SweepReport};
pub use service::{EnvironmentResult, Outcome, Service, ServiceError, ServiceSettings};
pub use types::*;
