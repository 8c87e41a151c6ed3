//! Newtypes for the identifiers the domain passes around, so that a repository name cannot be
//! confused with an environment or a SHA.

use std::fmt;

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// Why a wire value was refused as one of the newtypes below.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {reason}")]
pub struct InvalidValue {
    pub what: &'static str,
    pub reason: &'static str,
}

fn invalid(what: &'static str, reason: &'static str) -> InvalidValue {
    InvalidValue { what, reason }
}

string_newtype!(
    /// The `X-GitHub-Delivery` GUID of one delivery (a redelivery keeps it).
    DeliveryId
);
impl DeliveryId {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let raw = raw.trim();
        if raw.is_empty() || raw.len() > 100 {
            return Err(invalid("X-GitHub-Delivery", "must be 1 to 100 characters"));
        }
        if !raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(invalid("X-GitHub-Delivery", "must hold only letters, digits, '-' and '_'"));
        }
        Ok(Self(raw.to_owned()))
    }
}

string_newtype!(
    /// `owner/name` of a repository, as GitHub spells it in `repository.full_name`.
    RepoFullName
);
impl RepoFullName {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        // `.` and `..` would be path segments, not names, in an API URL: never for owner or name.
        let ok_part = |p: &str| {
            !p.is_empty()
                && p.len() <= 100
                && p != "."
                && p != ".."
                && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        match raw.split_once('/') {
            Some((owner, name)) if ok_part(owner) && ok_part(name) => Ok(Self(raw.to_owned())),
            _ => Err(invalid("repository.full_name", "must be owner/name")),
        }
    }

    /// The account it belongs to (the part before the `/`).
    pub fn owner(&self) -> &str {
        self.0.split_once('/').map_or(self.0.as_str(), |(owner, _)| owner)
    }

    /// GitHub treats names case-insensitively; keys in the store use this form so that one
    /// repository never gets two keys.
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

string_newtype!(
    /// A full 40-hex-digit commit SHA (SHA-1) or 64 (SHA-256 repositories).
    Sha
);
impl Sha {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if (raw.len() == 40 || raw.len() == 64) && raw.chars().all(|c| c.is_ascii_hexdigit()) {
            Ok(Self(raw.to_ascii_lowercase()))
        } else {
            Err(invalid("commit sha", "must be 40 or 64 hex digits"))
        }
    }

    pub fn short(&self) -> &str {
        &self.0[..7]
    }
}

string_newtype!(
    /// A deployment environment name such as `production`.
    Environment
);
impl Environment {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let raw = raw.trim();
        if raw.is_empty() || raw.len() > 255 {
            return Err(invalid("environment", "must be 1 to 255 characters"));
        }
        if raw.chars().any(|c| c.is_control() || c == ',' || c == '=') {
            return Err(invalid("environment", "must not hold control characters, ',' or '='"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The suffix of per-environment settings: `staging-eu` → `STAGING_EU`.
    pub fn env_var_suffix(&self) -> String {
        setting_suffix(&self.0)
    }

    pub fn production() -> Self {
        Self("production".to_owned())
    }

    pub fn is_production(&self) -> bool {
        self.0.eq_ignore_ascii_case("production")
    }
}

string_newtype!(
    /// A branch name (no `refs/heads/` prefix).
    BranchName
);
impl BranchName {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let raw = raw.strip_prefix("refs/heads/").unwrap_or(raw);
        if raw.is_empty() || raw.len() > 255 || raw.chars().any(char::is_control) {
            return Err(invalid("branch", "must be 1 to 255 printable characters"));
        }
        Ok(Self(raw.to_owned()))
    }
}

/// GitHub's numeric id of a deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct DeploymentId(pub u64);

impl fmt::Display for DeploymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// GitHub's numeric id of a deployment status; ids grow with time, so a larger id is newer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatusId(pub u64);

/// The states GitHub accepts for a deployment status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    Error,
    Failure,
    Inactive,
    InProgress,
    Queued,
    Pending,
    Success,
}

impl DeploymentState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Failure => "failure",
            Self::Inactive => "inactive",
            Self::InProgress => "in_progress",
            Self::Queued => "queued",
            Self::Pending => "pending",
            Self::Success => "success",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        Ok(match raw {
            "error" => Self::Error,
            "failure" => Self::Failure,
            "inactive" => Self::Inactive,
            "in_progress" => Self::InProgress,
            "queued" => Self::Queued,
            "pending" => Self::Pending,
            "success" => Self::Success,
            _ => return Err(invalid("deployment status state", "unknown state")),
        })
    }

    /// A state after which this deployer posts nothing more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Success | Self::Failure | Self::Error | Self::Inactive)
    }
}

impl fmt::Display for DeploymentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Cuts `text` to at most `max` characters (not bytes), ending with `…` when cut, so that
/// GitHub's 140-character description limit is never exceeded by a long PR title.
/// A name as the suffix of a setting's variable: upper-cased, every other character than a
/// letter or digit as `_` (`staging-eu` → `STAGING_EU`).
pub fn setting_suffix(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect()
}

pub fn truncate_chars(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_names_are_checked_and_keyed_case_insensitively() {
        let repo = RepoFullName::parse("Octo-Org/Hello.World").unwrap();
        assert_eq!(repo.key(), "octo-org/hello.world");
        for bad in ["", "nobody", "a/b/c", "/x", "x/", "a/..", "a/.", "../b", "./b", "a b/c"] {
            assert!(RepoFullName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn shas_must_be_full_hex() {
        assert!(Sha::parse(&"a".repeat(40)).is_ok());
        assert!(Sha::parse("abc123").is_err());
        assert!(Sha::parse(&"g".repeat(40)).is_err());
        assert_eq!(Sha::parse(&"AB".repeat(20)).unwrap().short(), "abababa");
    }

    #[test]
    fn truncation_counts_characters_not_bytes() {
        let title = "é".repeat(200);
        let cut = truncate_chars(&title, 140);
        assert_eq!(cut.chars().count(), 140);
        assert!(cut.ends_with('…'));
        assert_eq!(truncate_chars("short", 140), "short");
    }

    #[test]
    fn environment_suffix_for_settings() {
        let env = Environment::parse("staging-eu.1").unwrap();
        assert_eq!(env.env_var_suffix(), "STAGING_EU_1");
        assert!(Environment::parse("a,b").is_err());
        assert!(Environment::parse("  ").is_err());
    }

    #[test]
    fn delivery_ids_are_guid_like() {
        assert!(DeliveryId::parse("72d3162e-cc78-11e3-81ab-4c9367dc0958").is_ok());
        assert!(DeliveryId::parse("").is_err());
        assert!(DeliveryId::parse("a#b").is_err());
    }
}
