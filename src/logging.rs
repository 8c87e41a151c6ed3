//! The log subscriber, set up first at cold start, with the settings of Lambda's advanced logging
//! controls: `AWS_LAMBDA_LOG_FORMAT` (`JSON` or text) and `AWS_LAMBDA_LOG_LEVEL`, plus `RUST_LOG`
//! for per-crate levels.
//!
//! Why not `lambda_http::tracing::init_default_subscriber`: it filters through `EnvFilter`, which
//! brings the whole `regex-automata` crate into the binary (0.45 MB of 10.2) for span and field
//! filters our logs do not use; it also reads FATAL, a level Lambda offers, as INFO. [`Targets`]
//! reads the `target=level` lists `RUST_LOG` is used for here, with no regex. The lines look the
//! same as theirs: no timestamp (CloudWatch adds one), no target.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LogSettingError {
    #[error("AWS_LAMBDA_LOG_LEVEL must be one of TRACE, DEBUG, INFO, WARN, ERROR, FATAL, got {0:?}")]
    BadLevel(String),
    #[error("RUST_LOG must be a comma-separated list of levels and target=level pairs, got {value:?}: {reason}")]
    BadDirectives { value: String, reason: String },
}

/// What to log and how, from the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct LogSettings {
    pub json: bool,
    pub filter: Targets,
}

impl LogSettings {
    /// The settings in `var` (the process environment in production). `AWS_LAMBDA_LOG_LEVEL` is
    /// the level of every target that `RUST_LOG` does not name; without it, a bare level in
    /// `RUST_LOG`, or INFO.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, LogSettingError> {
        let json = json_format(&var);
        let mut filter = match var("RUST_LOG") {
            Some(value) => directives(&value)?,
            None => Targets::new(),
        };
        match var("AWS_LAMBDA_LOG_LEVEL").filter(|value| !value.trim().is_empty()) {
            Some(level) => filter = filter.with_default(lambda_level(&level)?),
            None if filter.default_level().is_none() => filter = filter.with_default(LevelFilter::INFO),
            None => {}
        }
        Ok(Self { json, filter })
    }

    /// Sets the process's subscriber: lines to stdout, which Lambda sends to CloudWatch.
    pub fn install(self) {
        // `log_internal_errors`: a line that cannot be written says so on stderr (as `fmt()` does).
        let lines = tracing_subscriber::fmt::layer().with_target(false).without_time().log_internal_errors(true);
        let registry = tracing_subscriber::registry().with(self.filter);
        // `try_init`: a second subscriber (a test that installed its own) is not an error.
        let _ = if self.json { registry.with(lines.json()).try_init() } else { registry.with(lines).try_init() };
    }
}

fn json_format(var: &impl Fn(&str) -> Option<String>) -> bool {
    var("AWS_LAMBDA_LOG_FORMAT").is_some_and(|format| format.trim().eq_ignore_ascii_case("json"))
}

/// `RUST_LOG` as [`Targets`]. Its parser takes every comma-separated part as it is, and reads an
/// empty level as ERROR: a trailing comma or `crate=` would quietly silence everything else. Here
/// parts are trimmed, empty parts skipped, and an empty level is an error.
fn directives(value: &str) -> Result<Targets, LogSettingError> {
    let bad = |reason: String| LogSettingError::BadDirectives { value: value.to_string(), reason };
    let parts: Vec<&str> = value.split(',').map(str::trim).filter(|part| !part.is_empty()).collect();
    if let Some(part) = parts.iter().find(|part| part.split_once('=').is_some_and(|(_, level)| level.trim().is_empty()))
    {
        return Err(bad(format!("{part:?} has no level")));
    }
    let normalized = parts.iter().map(|part| part.replace(' ', "")).collect::<Vec<_>>().join(",");
    if normalized.is_empty() {
        return Ok(Targets::new());
    }
    normalized.parse().map_err(|err: tracing_subscriber::filter::ParseError| bad(err.to_string()))
}

/// Lambda's application log levels, which include FATAL (tracing's most severe level is ERROR).
fn lambda_level(value: &str) -> Result<LevelFilter, LogSettingError> {
    match value.trim().to_ascii_uppercase().as_str() {
        "TRACE" => Ok(LevelFilter::TRACE),
        "DEBUG" => Ok(LevelFilter::DEBUG),
        "INFO" => Ok(LevelFilter::INFO),
        "WARN" => Ok(LevelFilter::WARN),
        "ERROR" | "FATAL" => Ok(LevelFilter::ERROR),
        _ => Err(LogSettingError::BadLevel(value.to_string())),
    }
}

/// Sets up logging from the process environment. A bad setting still leaves logs at INFO, in the
/// format asked for, so that the error that fails init is itself logged.
pub fn init_from_env() -> Result<(), LogSettingError> {
    let var = |name: &str| std::env::var(name).ok();
    match LogSettings::from_vars(var) {
        Ok(settings) => {
            settings.install();
            Ok(())
        }
        Err(err) => {
            LogSettings { json: json_format(&var), filter: Targets::new().with_default(LevelFilter::INFO) }.install();
            tracing::error!("logging: {err}");
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tracing::Level;

    fn settings(pairs: &[(&str, &str)]) -> Result<LogSettings, LogSettingError> {
        LogSettings::from_vars(|name| pairs.iter().find(|(key, _)| *key == name).map(|(_, value)| value.to_string()))
    }

    fn enables(filter: &Targets, target: &str, level: Level) -> bool {
        filter.would_enable(target, &level)
    }

    #[test]
    fn without_settings_logs_are_text_at_info() {
        let s = settings(&[]).unwrap();
        assert!(!s.json);
        assert!(enables(&s.filter, "deploy_webhook", Level::INFO));
        assert!(enables(&s.filter, "aws_smithy_runtime", Level::INFO));
        assert!(!enables(&s.filter, "deploy_webhook", Level::DEBUG));
    }

    #[test]
    fn lambdas_log_level_applies_to_every_target_and_fatal_means_error() {
        let s = settings(&[("AWS_LAMBDA_LOG_LEVEL", "WARN"), ("AWS_LAMBDA_LOG_FORMAT", "JSON")]).unwrap();
        assert!(s.json);
        assert!(enables(&s.filter, "deploy_webhook", Level::WARN));
        assert!(!enables(&s.filter, "deploy_webhook", Level::INFO));

        let fatal = settings(&[("AWS_LAMBDA_LOG_LEVEL", "FATAL")]).unwrap();
        assert!(enables(&fatal.filter, "lambda_runtime", Level::ERROR));
        assert!(!enables(&fatal.filter, "lambda_runtime", Level::WARN));
    }

    #[test]
    fn rust_log_raises_one_crate_above_lambdas_level() {
        let s = settings(&[("AWS_LAMBDA_LOG_LEVEL", "INFO"), ("RUST_LOG", "deploy_webhook=debug")]).unwrap();
        assert!(enables(&s.filter, "deploy_webhook::domain::runner", Level::DEBUG));
        assert!(enables(&s.filter, "aws_smithy_runtime", Level::INFO));
        assert!(!enables(&s.filter, "aws_smithy_runtime", Level::DEBUG));
    }

    #[test]
    fn a_bare_level_in_rust_log_is_the_default_only_without_lambdas_level() {
        let alone = settings(&[("RUST_LOG", "debug")]).unwrap();
        assert!(enables(&alone.filter, "hyper", Level::DEBUG));

        let overridden = settings(&[("RUST_LOG", "debug"), ("AWS_LAMBDA_LOG_LEVEL", "ERROR")]).unwrap();
        assert!(!enables(&overridden.filter, "hyper", Level::WARN));
    }

    #[test]
    fn rust_log_parts_are_trimmed_and_empty_parts_skipped() {
        let s = settings(&[("RUST_LOG", " deploy_webhook = debug , hyper=warn, ,")]).unwrap();
        assert!(enables(&s.filter, "deploy_webhook", Level::DEBUG));
        assert!(enables(&s.filter, "hyper", Level::WARN));
        assert!(!enables(&s.filter, "hyper", Level::INFO));
        // No bare level in RUST_LOG and no Lambda level: the rest stays at INFO (an empty part
        // parsed as it is would have set it to ERROR).
        assert!(enables(&s.filter, "aws_smithy_runtime", Level::INFO));
        assert!(!enables(&s.filter, "aws_smithy_runtime", Level::DEBUG));
    }

    #[test]
    fn bad_settings_name_their_variable() {
        let level = settings(&[("AWS_LAMBDA_LOG_LEVEL", "LOUD")]).unwrap_err();
        assert_eq!(level, LogSettingError::BadLevel("LOUD".into()));
        assert!(level.to_string().starts_with("AWS_LAMBDA_LOG_LEVEL "));

        let directives = settings(&[("RUST_LOG", "deploy_webhook=verbose")]).unwrap_err();
        assert!(
            matches!(&directives, LogSettingError::BadDirectives { value, .. } if value == "deploy_webhook=verbose")
        );
        assert!(directives.to_string().starts_with("RUST_LOG "));

        let no_level = settings(&[("RUST_LOG", "deploy_webhook=")]).unwrap_err();
        assert!(no_level.to_string().contains("\"deploy_webhook=\" has no level"), "{no_level}");
    }
}
