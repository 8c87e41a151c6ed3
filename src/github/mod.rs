//! GitHub on both sides: the webhook payloads we receive ([`events`]) and the REST API we call
//! ([`client`]).

pub mod client;
pub mod events;
