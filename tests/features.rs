#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking
//! The one list of what each feature needs from GitHub (`src/domain/features.rs`) against what a
//! user follows: the README's table and the places that point at it, and the App manifest.

use std::collections::BTreeMap;

use deploy_webhook::domain::features::{self, FEATURES};
use serde_json::Value;

// A new feature: a row in FEATURES, then `UPDATE_README=1 cargo test --test features` writes the
// README's table, and the manifest is changed by hand (the test names what differs).
const BEGIN: &str = "<!-- features: generated from src/domain/features.rs; `cargo test --test features` prints it when it differs -->\n";
const END: &str = "<!-- /features -->";

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

#[test]
fn the_readme_table_is_the_one_in_the_source() {
    let readme = readme();
    let start = readme.find(BEGIN).expect("the README's features markers") + BEGIN.len();
    let end = start + readme[start..].find(END).expect("the closing marker");
    let expected = features::readme_table();
    if std::env::var_os("UPDATE_README").is_some() && readme[start..end] != expected {
        let updated = format!("{}{expected}{}", &readme[..start], &readme[end..]);
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"), updated).unwrap();
        return;
    }
    assert!(
        readme[start..end] == expected,
        "README.md's table \"What each feature needs\" differs from src/domain/features.rs; between the \
         markers it should read (UPDATE_README=1 cargo test --test features writes it):\n\n{expected}"
    );
}

#[test]
fn every_place_that_lists_permissions_or_events_points_at_the_table() {
    let readme = readme();
    let link = "(#what-each-feature-needs)";
    let places = [
        ("the GITHUB_TOKEN configuration row", "| `GITHUB_TOKEN` |"),
        ("the GitHubToken parameter row", "| `GitHubWebhookSecret`, `GitHubToken` |"),
        ("the webhook's events step", "- **Which events**"),
        ("the App section", "[`github-app-manifest.json`](github-app-manifest.json) is the App's definition"),
    ];
    for (what, start) in places {
        let at = readme.find(start).unwrap_or_else(|| panic!("{what} is gone from the README"));
        let text = &readme[at..];
        let paragraph = &text[..text.find("\n\n").unwrap_or(text.len()).min(text.find("\n|").unwrap_or(usize::MAX))];
        assert!(paragraph.contains(link), "{what} does not point at the table: {paragraph}");
    }
    // No second, hand-kept list of the webhook's events.
    assert!(!readme.contains("→ **Pull requests**, **Deployments**"), "a hand-kept list of events");
}

#[test]
fn the_app_manifest_asks_for_exactly_what_the_features_need() {
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/github-app-manifest.json")).unwrap(),
    )
    .unwrap();
    let mut events: Vec<&str> =
        manifest["default_events"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    events.sort();
    let mut expected: Vec<&str> = features::events().iter().map(|e| e.name).collect();
    expected.sort();
    assert_eq!(events, expected, "github-app-manifest.json's default_events");

    let permissions: BTreeMap<&str, &str> = manifest["default_permissions"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
        .collect();
    let expected: BTreeMap<&str, &str> = features::permissions(true).iter().map(|(p, a)| (p.key, a.as_str())).collect();
    assert_eq!(permissions, expected, "github-app-manifest.json's default_permissions");
}

#[test]
fn every_feature_that_needs_events_says_what_goes_wrong_without_them() {
    for f in FEATURES {
        assert_eq!(f.events.is_empty(), f.without_events.is_empty(), "{}", f.name);
        assert!(!f.name.contains('|') && !f.without_events.contains('|'), "{} would break the table", f.name);
    }
}
