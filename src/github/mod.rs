//! GitHub on both sides: the webhook payloads we receive ([`events`]) and the REST API we call
//! ([`client`]).

pub mod auth;
pub mod client;
pub mod events;

use serde::Deserialize;

use crate::domain::StatusRecord;
use crate::domain::types::{DeploymentState, InvalidValue, StatusId};

/// A deployment status as GitHub sends it, in `deployment_status` webhooks and in REST answers.
#[derive(Deserialize)]
pub(crate) struct WireStatus {
    id: u64,
    state: String,
    description: Option<String>,
    log_url: Option<String>,
    target_url: Option<String>,
    environment_url: Option<String>,
    pub(crate) environment: Option<String>,
    creator: Option<WireUser>,
    created_at: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct WireUser {
    pub(crate) login: String,
}

impl WireStatus {
    pub(crate) fn into_record(self) -> Result<StatusRecord, InvalidValue> {
        Ok(StatusRecord {
            id: StatusId(self.id),
            state: DeploymentState::parse(&self.state)?,
            description: self.description,
            // `target_url` is the older name of `log_url`; GitHub sends "" for "none".
            log_url: self.log_url.or(self.target_url).filter(|u| !u.is_empty()),
            environment_url: self.environment_url.filter(|u| !u.is_empty()),
            creator: self.creator.map(|u| u.login),
            created_at: self.created_at,
        })
    }
}
