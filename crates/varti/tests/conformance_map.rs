//! Keeps `conformance/` true: every conformance assertion (`../shared/specs/conformance.md`)
//! and every OOTS test event (`../shared/specs/oots.md`) has an entry; every test an entry
//! names exists; every entry names a test and states no gap. Prints the coverage table.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    tests: Vec<String>,
    /// How the tests cover it: for the reader of the map only.
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<String>,
    #[serde(default)]
    gap: Option<String>,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn load(file: &str) -> BTreeMap<String, Entry> {
    let path = repo().join("conformance").join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The ids a spec lists: every `prefix…` token at the start of a table row (`| ID |`) or,
/// for the test events, every `TCnn` in the text.
fn ids_in(text: &str, wanted: impl Fn(&str) -> bool) -> Vec<String> {
    let mut ids: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| wanted(w))
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Whether `file` (under the repository) defines `fn name(`.
fn defines(file: &Path, name: &str) -> bool {
    std::fs::read_to_string(repo().join(file))
        .map(|src| src.contains(&format!("fn {name}(")))
        .unwrap_or(false)
}

/// Checks one map against the ids its spec lists (`None`: the map's ids are its own);
/// returns the problems and prints the table.
fn check(map_file: &str, spec_ids: Option<&[String]>) -> Vec<String> {
    let map = load(map_file);
    let mut problems = Vec::new();
    for id in spec_ids.unwrap_or_default() {
        if !map.contains_key(id) {
            problems.push(format!(
                "{map_file}: `{id}` is in the spec but has no entry"
            ));
        }
    }
    println!("\n`{map_file}`\n\n| id | tests | covered by |\n|---|---|---|");
    for (id, entry) in &map {
        if spec_ids.is_some_and(|ids| !ids.contains(id)) {
            problems.push(format!("{map_file}: `{id}` is not an id the spec lists"));
        }
        // Every gap is closed (issue 20): a new one fails here until a test covers it.
        if let Some(gap) = &entry.gap {
            problems.push(format!(
                "{map_file}: `{id}` states a gap ({gap}); cover it with a test and name the test"
            ));
        }
        if entry.tests.is_empty() && entry.gap.is_none() {
            problems.push(format!(
                "{map_file}: `{id}` names no test and states no gap"
            ));
        }
        for t in &entry.tests {
            match t.split_once("::") {
                Some((file, name)) if defines(Path::new(file), name) => {}
                _ => problems.push(format!(
                    "{map_file}: `{id}` names `{t}`, which does not exist (path::function)"
                )),
            }
        }
        // The tests as `file.rs::function` (the directory is in the map file).
        let names: Vec<String> = entry
            .tests
            .iter()
            .map(|t| t.rsplit('/').next().unwrap_or(t).to_owned())
            .collect();
        println!("| {id} | {} | {} |", entry.tests.len(), names.join("<br>"));
    }
    problems
}

#[test]
fn every_conformance_assertion_and_test_event_is_mapped_to_existing_tests() {
    let Some(specs) = common::specs() else {
        return;
    };
    let conformance = std::fs::read_to_string(specs.join("conformance.md")).unwrap();
    let tas = ids_in(&conformance, |w| {
        (w.starts_with("CP_TA") || w.starts_with("4CT_TA"))
            && w.ends_with(|c: char| c.is_ascii_digit())
    });
    assert!(
        tas.len() >= 30,
        "too few assertions read from conformance.md: {tas:?}"
    );
    let oots = std::fs::read_to_string(specs.join("oots.md")).unwrap();
    let events = ids_in(&oots, |w| {
        w.len() == 4 && w.starts_with("TC") && w[2..].bytes().all(|b| b.is_ascii_digit())
    });
    assert_eq!(events.len(), 10, "{events:?}");

    let mut problems = check("as4-assertions.toml", Some(&tas));
    problems.extend(check("oots-test-events.toml", Some(&events)));
    problems.extend(check("java-peers.toml", None));
    assert!(
        problems.is_empty(),
        "conformance/ is out of date:\n{}",
        problems.join("\n")
    );
}

/// The checker itself: a made-up test name and an unknown id are caught.
#[test]
fn the_checker_catches_missing_tests_and_unknown_ids() {
    assert!(defines(
        Path::new("crates/varti/tests/conformance_map.rs"),
        "defines"
    ));
    assert!(!defines(
        Path::new("crates/varti/tests/conformance_map.rs"),
        "no_such_function"
    ));
    assert!(!defines(Path::new("crates/no/such/file.rs"), "defines"));
    let ids = ids_in("| CP_TA01 | x |\n| 4CT_TA03 | y | CP_TA", |w| {
        w.starts_with("CP_TA") && w.ends_with(|c: char| c.is_ascii_digit())
    });
    assert_eq!(ids, ["CP_TA01"]);
}
