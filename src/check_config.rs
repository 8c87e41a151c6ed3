//! `deploy-webhook check-config <file>`: validates a `.github/deploy-webhook.yml` offline (in an
//! editor, or the repository's own CI) and prints every problem, or the effective configuration.
//! With the stack's settings in the environment (as the function has them), the file is checked
//! against them, pins and allowed hosts included; without, against the built-in defaults, with
//! any `https://` hook host allowed. `_extends` and the organisation's file are not fetched.

use std::collections::HashMap;

use crate::config::Config;
use crate::domain::ports::StackTargets;
use crate::domain::{DeployRules, ServiceSettings};
use crate::repo_config::{Layer, parse, resolve};

/// What the command prints, and whether the file is valid.
pub struct CheckReport {
    pub valid: bool,
    pub output: String,
}

/// `args`: the command line after the binary's name. `None` when it is not `check-config`.
pub fn from_args(args: &[String], vars: impl IntoIterator<Item = (String, String)>) -> Option<CheckReport> {
    if args.first().map(String::as_str) != Some("check-config") {
        return None;
    }
    let Some(path) = args.get(1) else {
        return Some(CheckReport { valid: false, output: "usage: deploy-webhook check-config <file>".to_owned() });
    };
    let text = match read_capped(path) {
        Ok(text) => text,
        Err(message) => return Some(CheckReport { valid: false, output: format!("{path}: {message}") }),
    };
    Some(check(path, &text, vars))
}

fn read_capped(path: &str) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot be read: {e}"))?;
    if meta.len() > crate::repo_config::MAX_FILE_BYTES as u64 {
        return Err(crate::repo_config::parse::too_large(path, meta.len()).message);
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot be read: {e}"))?;
    String::from_utf8(bytes).map_err(|_| "is not UTF-8 text".to_owned())
}

/// Checks `text` (named `label` in messages) over the stack's settings found in `vars`.
pub fn check(label: &str, text: &str, vars: impl IntoIterator<Item = (String, String)>) -> CheckReport {
    let vars: HashMap<String, String> = vars.into_iter().collect();
    let (stack, over) = match Config::from_vars(vars.clone()) {
        Ok(config) => {
            let settings = crate::app::service_settings(&config);
            let targets =
                crate::deploy::hook::stack_targets_of(&config.deploy_targets, &config.hook_secrets, &config.slack);
            (
                crate::domain::configuration::stack_defaults(&settings, targets),
                "the stack's settings in this environment".to_owned(),
            )
        }
        Err(why) => {
            let mut settings = ServiceSettings::new(DeployRules::default());
            settings.limits.allowed_hook_hosts = vec!["*".to_owned()];
            let targets = StackTargets { default_hook_secret: true, ..Default::default() };
            let mut stack = crate::domain::configuration::stack_defaults(&settings, targets);
            stack.unchecked_secret_names = true;
            let over = format!(
                "the built-in defaults (the stack's settings are not in this environment: {why}; so hook hosts and secret names are not checked)"
            );
            (stack, over)
        }
    };
    let file = match parse(label, text) {
        Ok(file) => file,
        Err(issues) => return invalid(&issues),
    };
    let note = match &file.extends {
        Some(other) => format!("\n(`_extends: {other}` is not fetched offline: only this file is checked)"),
        None => String::new(),
    };
    let layer =
        Layer { repo: label.to_owned(), blob: String::new(), label: label.to_owned(), source: text.to_owned(), file };
    match resolve(&stack, &[layer]) {
        Ok(settings) => {
            let pretty = serde_json::to_string_pretty(&settings.describe()).unwrap_or_default();
            CheckReport {
                valid: true,
                output: format!("{label}: valid. The effective configuration over {over}:\n{pretty}{note}"),
            }
        }
        Err(issues) => invalid(&issues),
    }
}

fn invalid(issues: &[crate::repo_config::ConfigIssue]) -> CheckReport {
    let lines: Vec<String> = issues.iter().map(ToString::to_string).collect();
    CheckReport { valid: false, output: lines.join("\n") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_file_prints_the_effective_configuration_and_an_invalid_one_every_error() {
        let ok = check(
            "x.yml",
            "environments:\n  docs:\n    branches: [main]\n    action:\n      hook:\n        url: https://d.example.com/x\n        secret: docs-hook\n",
            Vec::new(),
        );
        assert!(ok.valid, "{}", ok.output);
        assert!(ok.output.contains("\"docs\"") && ok.output.contains("built-in defaults"), "{}", ok.output);
        let bad =
            check("x.yml", "environments:\n  docs:\n    timeout_minutes: 0\n    environment_url: nope\n", Vec::new());
        assert!(!bad.valid);
        assert_eq!(bad.output.lines().count(), 2, "{}", bad.output);
        assert!(bad.output.starts_with("x.yml:3:5: environments.docs.timeout_minutes:"), "{}", bad.output);
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(from_args(&args(&["serve"]), Vec::new()).is_none());
        assert!(!from_args(&args(&["check-config", "/nonexistent.yml"]), Vec::new()).unwrap().valid);
    }

    #[test]
    fn the_stacks_settings_apply_when_they_are_there() {
        let vars: Vec<(String, String)> = [
            ("GITHUB_WEBHOOK_SECRET", "w"),
            ("GITHUB_TOKEN", "t"),
            ("DEPLOYMENTS_TABLE", "d"),
            ("PINNED_SETTINGS", "commands"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let report = check("x.yml", "commands:\n  sha_deploys: true\n", vars);
        assert!(!report.valid && report.output.contains("PINNED_SETTINGS"), "{}", report.output);
    }
}
