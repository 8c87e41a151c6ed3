//! Storage adapters.

pub mod dynamo;
