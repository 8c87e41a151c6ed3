//! The environment's deploy action.

pub mod hook;
pub mod slack;
