//! Reading one file: untrusted input from anyone with write access. Limits come before meaning:
//! a size cap, a depth cap, a node and alias budget (no alias bomb), unknown keys refused with the
//! nearest valid key suggested, and never a panic.

use serde::Serialize;

use super::schema::RepoFile;

/// Where the file lives in a repository.
pub const CONFIG_PATH: &str = ".github/deploy-webhook.yml";
/// Larger files are refused unread: a configuration is a few hundred bytes.
pub const MAX_FILE_BYTES: usize = 64 * 1024;
const MAX_DEPTH: usize = 16;
const MAX_NODES: usize = 10_000;
const MAX_ALIASES: usize = 100;

/// One problem in a file: where, which key, what was expected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ConfigIssue {
    /// `owner/repo:.github/deploy-webhook.yml`, or the path given to `check-config`.
    pub file: String,
    pub line: Option<u64>,
    pub column: Option<u64>,
    /// The key's path (`environments.staging.timeout_minutes`), when known.
    pub key: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        match &self.key {
            Some(key) => write!(f, ": {key}: {}", self.message),
            None => write!(f, ": {}", self.message),
        }
    }
}

/// A file over [`MAX_FILE_BYTES`], refused unread.
pub fn too_large(file: &str, size: u64) -> ConfigIssue {
    ConfigIssue {
        file: file.to_owned(),
        line: None,
        column: None,
        key: None,
        message: format!("the file is {size} bytes; at most {} KB is read", MAX_FILE_BYTES / 1024),
    }
}

/// Parses one file. An empty file (or only comments) is an empty configuration.
pub fn parse(file: &str, source: &str) -> Result<RepoFile, Vec<ConfigIssue>> {
    if source.len() > MAX_FILE_BYTES {
        return Err(vec![too_large(file, source.len() as u64)]);
    }
    if source.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
        return Ok(RepoFile::default());
    }
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            max_nodes: MAX_NODES,
            max_aliases: MAX_ALIASES,
            max_documents: 1,
        },
        with_snippet: false,
    };
    serde_saphyr::from_str_with_options::<RepoFile>(source, options).map_err(|err| {
        let location = err.location();
        let message = plain_message(&err.without_snippet().to_string());
        let key = location.and_then(|l| key_at_line(source, l.line()));
        vec![ConfigIssue {
            file: file.to_owned(),
            line: location.map(|l| l.line()),
            column: location.map(|l| l.column()),
            key,
            message: suggest_nearest(&message),
        }]
    })
}

/// The parser's message without the location it appends (shown in fields of its own).
fn plain_message(message: &str) -> String {
    let message = message.trim();
    match message.rfind(" at line ") {
        Some(at) => message[..at].trim_end_matches(',').to_owned(),
        None => message.to_owned(),
    }
}

/// `unknown field `brnches`, expected one of …`: adds "did you mean `branches`?".
fn suggest_nearest(message: &str) -> String {
    let Some(rest) = message.split("unknown field `").nth(1) else {
        return message.to_owned();
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return message.to_owned();
    };
    let Some(list) = expected.split("expected one of").nth(1) else {
        return message.to_owned();
    };
    let candidates: Vec<&str> = list.split(',').map(|c| c.trim().trim_matches('`')).collect();
    match nearest(unknown, &candidates) {
        Some(best) => format!("{message}; did you mean `{best}`?"),
        None => message.to_owned(),
    }
}

/// The candidate closest to `word`, if it is close enough to be a typo (edit distance at most a
/// third of the word, at least 2: a swap of two letters).
pub fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The dotted path of the block-style key on `line` (1-based), found by indentation: good
/// enough to name the key of a parse error; `None` in flow style or on a blank line.
fn key_at_line(source: &str, line: u64) -> Option<String> {
    let lines: Vec<&str> = source.lines().collect();
    let index = usize::try_from(line).ok()?.checked_sub(1)?;
    let key_of = |text: &str| {
        let trimmed = text.trim_start().trim_start_matches("- ");
        let (key, _) = trimmed.split_once(':')?;
        let key = key.trim().trim_matches(['"', '\'']);
        (!key.is_empty() && !key.contains([' ', '{', '[', '#'])).then(|| key.to_owned())
    };
    let indent = |text: &str| text.len() - text.trim_start().len();
    let mut path = vec![key_of(lines.get(index)?)?];
    let mut level = indent(lines[index]);
    for text in lines[..index].iter().rev() {
        if text.trim().is_empty() || text.trim_start().starts_with('#') {
            continue;
        }
        if indent(text) < level {
            if let Some(key) = key_of(text) {
                path.push(key);
            }
            level = indent(text);
            if level == 0 {
                break;
            }
        }
    }
    path.reverse();
    Some(path.join("."))
}

/// The line and column of the key at `path` (block style), or of its nearest written ancestor:
/// where a person should look for a value that parsed but means nothing valid.
pub fn locate(source: &str, path: &[&str]) -> (Option<u64>, Option<u64>) {
    let mut found = (None, None);
    let mut from = 0;
    let mut min_indent = 0;
    for segment in path {
        let mut hit = None;
        for (i, text) in source.lines().enumerate().skip(from) {
            let indent = text.len() - text.trim_start().len();
            if !text.trim().is_empty() && !text.trim_start().starts_with('#') && indent < min_indent {
                break;
            }
            let key = text.trim_start().split_once(':').map(|(k, _)| k.trim().trim_matches(['"', '\'']));
            if indent >= min_indent && key == Some(segment) {
                hit = Some((i, indent));
                break;
            }
        }
        let Some((i, indent)) = hit else { break };
        found = (Some(i as u64 + 1), Some(indent as u64 + 1));
        from = i + 1;
        min_indent = indent + 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "octo/api:.github/deploy-webhook.yml";

    #[test]
    fn reads_a_complete_file() {
        let source = "# yaml-language-server: $schema=x\n_extends: octo/shared\nenvironments:\n  staging:\n    branches: [main]\n    action:\n      hook:\n        url: https://deploy.example.com/staging\n        secret: staging-hook\n  production:\n    branches: ['@default']\n    action: none\ncommands:\n  permissions: [admin]\n";
        let file = parse(FILE, source).unwrap();
        assert_eq!(file.extends.as_deref(), Some("octo/shared"));
        let envs = file.environments.unwrap();
        let names: Vec<&String> = envs.iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["staging", "production"]);
        assert_eq!(envs.get("production").unwrap().action, Some(super::super::schema::ActionFile::None));
        assert!(parse(FILE, "# nothing yet\n\n").unwrap() == RepoFile::default());
    }

    #[test]
    fn an_unknown_key_is_an_error_with_its_place_and_the_nearest_key() {
        let errors = parse(FILE, "environments:\n  staging:\n    brnches: [main]\n").unwrap_err();
        assert_eq!(errors.len(), 1);
        let e = &errors[0];
        assert_eq!((e.line, e.key.as_deref()), (Some(3), Some("environments.staging.brnches")), "{e:?}");
        assert!(e.message.contains("did you mean `branches`?"), "{e}");
        assert!(e.to_string().starts_with("octo/api:.github/deploy-webhook.yml:3:"), "{e}");
        let top = parse(FILE, "enviroments: {}\n").unwrap_err();
        assert!(top[0].message.contains("`environments`"), "{top:?}");
    }

    #[test]
    fn wrong_types_say_what_was_expected() {
        let e = &parse(FILE, "environments:\n  staging:\n    timeout_minutes: soon\n").unwrap_err()[0];
        assert_eq!(e.line, Some(3), "{e:?}");
        let e = &parse(FILE, "environments: [staging]\n").unwrap_err()[0];
        assert_eq!(e.line, Some(1), "{e:?}");
        let e = &parse(FILE, "environments:\n  a: {}\n  a: {}\n").unwrap_err()[0];
        assert!(e.message.contains("twice") || e.message.contains("duplicate"), "{e:?}");
    }

    #[test]
    fn hostile_files_are_refused_without_a_panic() {
        let big = format!("# {}\n", "x".repeat(MAX_FILE_BYTES));
        assert!(parse(FILE, &big).unwrap_err()[0].message.contains("64 KB"));
        // The billion laughs: every alias doubles the document.
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
        for i in 0..20 {
            let (prev, next) = (char::from(b'a' + i), char::from(b'a' + i + 1));
            bomb.push_str(&format!("{next}: &{next} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        assert!(parse(FILE, &bomb).is_err());
        let deep = format!("environments: {}{}\n", "[".repeat(200), "]".repeat(200));
        assert!(parse(FILE, &deep).is_err());
        for junk in ["\t- :\n", ": : :", "{", "environments:\n  staging:\n    branches: [main\n", "\u{0}"] {
            assert!(parse(FILE, junk).is_err(), "{junk:?}");
        }
        assert!(parse(FILE, "---\na: 1\n---\nb: 2\n").is_err());
    }

    #[test]
    fn locates_keys_for_errors_found_after_parsing() {
        let source = "environments:\n  staging:\n    branches: [main]\n  production:\n    timeout_minutes: 2000\n";
        assert_eq!(locate(source, &["environments", "production", "timeout_minutes"]), (Some(5), Some(5)));
        assert_eq!(locate(source, &["environments", "production", "action"]), (Some(4), Some(3)));
        assert_eq!(locate(source, &["commands"]), (None, None));
        // A key missing under one environment is never found under the next one.
        let two = "environments:\n  staging:\n  production:\n    branches: [main]\n";
        assert_eq!(locate(two, &["environments", "staging", "branches"]), (Some(2), Some(3)));
    }

    #[test]
    fn nearest_only_when_close() {
        assert_eq!(nearest("brnches", &["branches", "production"]), Some("branches"));
        assert_eq!(nearest("zzz", &["branches", "production"]), None);
    }
}
