//! The repository's configuration file, `.github/deploy-webhook.yml`: its schema (the serde
//! types the JSON Schema is generated from), parsing with limits and located errors, the layers
//! (stack < organisation < `_extends` < repository) with the operator's pins, and the dry run's
//! table. Pure: reading files from GitHub and caching them is the domain's
//! [`crate::domain::configuration`].

pub mod dry_run;
pub mod ordered;
pub mod parse;
pub mod resolve;
pub mod schema;
pub mod settings;

pub use parse::{CONFIG_PATH, ConfigIssue, MAX_FILE_BYTES, parse};
pub use resolve::{Layer, OperatorLimits, StackDefaults, resolve};
pub use schema::RepoFile;
pub use settings::{
    ActionSettings, BrokenConfig, CommandSettings, EnvironmentSettings, RepoSettings, SecretName, SourceFile,
};

#[cfg(test)]
mod tests;
