//! The dry run of a pull request that changes the file: what would change once it is merged, as
//! rows of a table (environment, setting, now, after merge).

use serde_json::Value;

use super::settings::RepoSettings;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// `None` for repository-wide settings (`commands`).
    pub environment: Option<String>,
    pub setting: String,
    /// `None`: not there now (an added environment) / not there after (a removed one).
    pub before: Option<String>,
    pub after: Option<String>,
}

/// Every setting that differs between `now` and `after`, environments in `after`'s order, then
/// removed ones, then repository-wide settings.
pub fn changes(now: &RepoSettings, after: &RepoSettings) -> Vec<Change> {
    let (old, new) = (now.describe(), after.describe());
    let mut out = Vec::new();
    let envs = |v: &Value| v["environments"].as_object().cloned().unwrap_or_default();
    let (old_envs, new_envs) = (envs(&old), envs(&new));
    let mut names: Vec<&String> = after
        .environments
        .iter()
        .map(|e| e.name.as_str())
        .filter_map(|n| new_envs.get_key_value(n).map(|(k, _)| k))
        .collect();
    names.extend(
        now.environments
            .iter()
            .filter_map(|e| old_envs.get_key_value(e.name.as_str()).map(|(k, _)| k))
            .filter(|k| !new_envs.contains_key(*k)),
    );
    for name in names {
        // An environment added or removed is one row, its settings in one cell.
        match (old_envs.get(name), new_envs.get(name)) {
            (None, Some(settings)) => {
                out.push(Change {
                    environment: Some(name.clone()),
                    setting: "(environment)".to_owned(),
                    before: None,
                    after: Some(format!("added: {}", summary(settings))),
                });
                continue;
            }
            (Some(settings), None) => {
                out.push(Change {
                    environment: Some(name.clone()),
                    setting: "(environment)".to_owned(),
                    before: Some(summary(settings)),
                    after: None,
                });
                continue;
            }
            _ => {}
        }
        let empty = serde_json::Map::new();
        let before = old_envs.get(name).and_then(Value::as_object).unwrap_or(&empty);
        let later = new_envs.get(name).and_then(Value::as_object).unwrap_or(&empty);
        let mut keys: Vec<&String> = later.keys().collect();
        keys.extend(before.keys().filter(|k| !later.contains_key(*k)));
        for key in keys {
            let (b, a) = (before.get(key), later.get(key));
            if b != a {
                out.push(Change {
                    environment: Some(name.clone()),
                    setting: key.clone(),
                    before: b.map(show),
                    after: a.map(show),
                });
            }
        }
    }
    if let (Some(b), Some(a)) = (old["commands"].as_object(), new["commands"].as_object()) {
        for (key, value) in a {
            if b.get(key) != Some(value) {
                out.push(Change {
                    environment: None,
                    setting: format!("commands.{key}"),
                    before: b.get(key).map(show),
                    after: Some(show(value)),
                });
            }
        }
    }
    out
}

/// An environment's settings in one cell: `branches main; action none; …` (unset ones left out).
fn summary(settings: &Value) -> String {
    let Some(fields) = settings.as_object() else { return show(settings) };
    fields.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| format!("{k} {}", show(v))).collect::<Vec<_>>().join("; ")
}

/// A value as one table cell.
fn show(value: &Value) -> String {
    match value {
        Value::Null => "—".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "(none)".to_owned(),
        Value::Array(items) => items.iter().map(show).collect::<Vec<_>>().join(", "),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| match v {
                Value::Object(_) => format!("{k}: {}", show(v)),
                _ => format!("{k} {}", show(v)),
            })
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// The changes as a Markdown table (a check run's summary).
pub fn table(changes: &[Change]) -> String {
    if changes.is_empty() {
        return "Merging this changes nothing deploy-webhook does.".to_owned();
    }
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let mut out = String::from("| Environment | Setting | Now | After merge |\n|---|---|---|---|\n");
    for c in changes {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            cell(c.environment.as_deref().unwrap_or("(repository)")),
            cell(&c.setting),
            cell(c.before.as_deref().unwrap_or("—")),
            cell(c.after.as_deref().unwrap_or("removed")),
        ));
    }
    out
}
