//! `DEPLOY_RULES`: which base branches deploy to which environments.
//!
//! Syntax: comma-separated `pattern=environment` pairs, e.g. `main=production,release/*=staging`.
//! `*` in a pattern matches any run of characters (slashes included); the pattern `@default`
//! means the repository's default branch. Every matching rule yields its environment, so one
//! branch can deploy to several environments. A hand-written matcher: it is a dozen lines, and
//! glob crates bring path semantics (`/` handling, escapes) that branch names don't want.

use super::types::{BranchName, Environment, InvalidValue};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BranchPattern {
    /// The repository's default branch, whatever it is called.
    DefaultBranch,
    Glob(String),
}

impl BranchPattern {
    pub fn matches(&self, branch: &BranchName, default_branch: Option<&str>) -> bool {
        match self {
            Self::DefaultBranch => default_branch == Some(branch.as_str()),
            Self::Glob(glob) => glob_match(glob, branch.as_str()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployRule {
    pub pattern: BranchPattern,
    pub environment: Environment,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployRules(Vec<DeployRule>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    #[error("rule {0:?} is not of the form branch=environment")]
    NotAPair(String),
    #[error("rule {rule:?}: {source}")]
    Invalid { rule: String, source: InvalidValue },
    #[error("no rules given")]
    Empty,
}

impl Default for DeployRules {
    /// The repository's default branch deploys to `production`.
    fn default() -> Self {
        Self(vec![DeployRule { pattern: BranchPattern::DefaultBranch, environment: Environment::production() }])
    }
}

impl DeployRules {
    /// Rules as a repository's settings list them (possibly none: merges deploy nowhere).
    pub fn from_rules(rules: Vec<DeployRule>) -> Self {
        Self(rules)
    }

    pub fn parse(raw: &str) -> Result<Self, RulesError> {
        let mut rules = Vec::new();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (pattern, environment) = part.split_once('=').ok_or_else(|| RulesError::NotAPair(part.to_owned()))?;
            let (pattern, environment) = (pattern.trim(), environment.trim());
            if pattern.is_empty() {
                return Err(RulesError::NotAPair(part.to_owned()));
            }
            let environment = Environment::parse(environment)
                .map_err(|source| RulesError::Invalid { rule: part.to_owned(), source })?;
            let pattern = if pattern == "@default" {
                BranchPattern::DefaultBranch
            } else {
                BranchPattern::Glob(pattern.strip_prefix("refs/heads/").unwrap_or(pattern).to_owned())
            };
            rules.push(DeployRule { pattern, environment });
        }
        if rules.is_empty() {
            return Err(RulesError::Empty);
        }
        Ok(Self(rules))
    }

    /// The environments a merge into `branch` deploys to, in rule order, without repeats.
    pub fn environments_for(&self, branch: &BranchName, default_branch: Option<&str>) -> Vec<Environment> {
        let mut envs: Vec<Environment> = Vec::new();
        for rule in &self.0 {
            if rule.pattern.matches(branch, default_branch) && !envs.contains(&rule.environment) {
                envs.push(rule.environment.clone());
            }
        }
        envs
    }

    /// Every environment named by a rule: the environments this deployer manages.
    pub fn environments(&self) -> impl Iterator<Item = &Environment> {
        self.0.iter().map(|r| &r.environment)
    }

    pub fn rules(&self) -> &[DeployRule] {
        &self.0
    }
}

/// `*` matches any (possibly empty) run of characters; everything else matches itself.
fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // Position of the last `*` seen and the text position it was tried at, for backtracking.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn branch(name: &str) -> BranchName {
        BranchName::parse(name).unwrap()
    }

    #[test]
    fn default_rules_deploy_the_default_branch_to_production() {
        let rules = DeployRules::default();
        let envs = rules.environments_for(&branch("trunk"), Some("trunk"));
        assert_eq!(envs, vec![Environment::parse("production").unwrap()]);
        assert!(rules.environments_for(&branch("main"), Some("trunk")).is_empty());
        assert!(rules.environments_for(&branch("main"), None).is_empty());
    }

    #[test]
    fn parses_patterns_and_matches_globs() {
        let rules = DeployRules::parse(" main=production, release/*=staging,@default=audit ").unwrap();
        let names = |b: &str| {
            rules.environments_for(&branch(b), Some("main")).iter().map(ToString::to_string).collect::<Vec<_>>()
        };
        assert_eq!(names("main"), ["production", "audit"]);
        assert_eq!(names("release/1.2"), ["staging"]);
        assert_eq!(names("release/eu/1.2"), ["staging"]);
        assert!(names("release").is_empty());
        assert!(names("feature/x").is_empty());
    }

    #[test]
    fn rejects_malformed_rules() {
        assert_eq!(DeployRules::parse(""), Err(RulesError::Empty));
        assert!(matches!(DeployRules::parse("main"), Err(RulesError::NotAPair(_))));
        assert!(matches!(DeployRules::parse("=prod"), Err(RulesError::NotAPair(_))));
        assert!(matches!(DeployRules::parse("main="), Err(RulesError::Invalid { .. })));
    }

    #[test]
    fn glob_edge_cases() {
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "a-x-b-y-c"));
        assert!(!glob_match("a*b*c", "a-x-c"));
        assert!(glob_match("rel*", "release"));
        assert!(glob_match("héllo/*", "héllo/wörld"));
        assert!(!glob_match("main", "main2"));
    }
}
