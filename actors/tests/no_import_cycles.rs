//! No import circles between the files of this crate.
//!
//! Invariant: the "file references file" graph of `actors/src` is acyclic, so every file can be read
//! (and changed) knowing only the files below it. A module is a file; a reference is any
//! `crate::…` / `super::…` path, followed through re-exports to the file that defines the name
//! (see [`import_cycles`] for the scan). A reference from a file to itself or to one of its own
//! child modules (`mod tests;`, `config/mod.rs` → `config/kafka.rs`) does not count: a parent
//! re-exporting its children is the normal way to keep `crate::config::X` paths stable. On failure
//! it prints each strongly connected set of files and the lines that tie them together.
//!
//! `report_root_crate` runs the same scan over the root crate's `src/` and only prints (another
//! change fixes that crate); run it with `cargo test -p bqsink-actors --test no_import_cycles --
//! --nocapture` to see the list. With `IMPORT_CYCLES_WORKSPACE=<checkout>` both run on another
//! checkout (e.g. an older revision unpacked with `git archive`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

mod import_cycles;

use import_cycles::*;

/// The workspace to check: this one, or the checkout named by `IMPORT_CYCLES_WORKSPACE` (to see
/// the circles of another revision without building it).
fn workspace() -> PathBuf {
    std::env::var_os("IMPORT_CYCLES_WORKSPACE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
}

#[test]
fn actors_crate_has_no_import_cycles() {
    let root = &workspace().join("actors");
    let g = graph(&root.join("src"), &[]);
    assert!(
        g.files.len() > 10,
        "found only {} files under actors/src",
        g.files.len()
    );
    let sets = cycles(&g);
    assert!(
        sets.is_empty(),
        "import circles in actors/src:\n{}",
        report(&g, root, &sets)
    );
}

/// The root crate (`src/`, library modules; `main.rs` is its own crate root) has none either.
#[test]
fn root_crate_has_no_import_cycles() {
    let root = workspace();
    let g = graph(&root.join("src"), &["main.rs", "bin"]);
    let sets = cycles(&g);
    assert!(
        sets.is_empty(),
        "root crate src/: {} import circle(s)\n{}",
        sets.len(),
        report(&g, &root, &sets)
    );
}

fn modules(list: &[&str]) -> BTreeSet<Vec<String>> {
    list.iter()
        .map(|m| {
            m.split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect()
}

fn targets(source: &str, me: &str, list: &[&str]) -> Vec<String> {
    let me: Vec<String> = me
        .split("::")
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    references(source, &me, &modules(list), &Reexports::new())
        .into_iter()
        .map(|r| r.target.join("::"))
        .collect()
}

#[test]
fn scanner_expands_groups_and_resolves_to_files() {
    let src = "use crate::{messages::{Tp, Row}, stage::dedup::claims::Claims, stats};\n\
               fn f() { crate::telemetry::span(); }\n";
    let got = targets(
        src,
        "writer",
        &[
            "",
            "messages",
            "stage",
            "stage::dedup",
            "stage::dedup::claims",
            "stats",
            "telemetry",
            "writer",
        ],
    );
    assert_eq!(
        got,
        [
            "messages",
            "messages",
            "stage::dedup::claims",
            "stats",
            "telemetry"
        ]
    );
}

#[test]
fn scanner_ignores_comments_strings_self_and_children() {
    let src =
        "//! see [`crate::messages`]\n/* crate::stats::X */\nconst S: &str = \"crate::stats\";\n\
               use crate::config::kafka::KafkaConfig;\nuse crate::config::Tolerance;\n";
    let got = targets(
        src,
        "config",
        &["", "config", "config::kafka", "messages", "stats"],
    );
    assert!(got.is_empty(), "{got:?}");
}

#[test]
fn scanner_resolves_super_outside_inline_modules_only() {
    let src =
        "use super::Position;\nmod tests {\n    use super::*;\n    use super::super::Tp;\n}\n";
    let got = targets(
        src,
        "stage::dedup::claims",
        &["", "stage", "stage::dedup", "stage::dedup::claims"],
    );
    assert_eq!(got, ["stage::dedup", "stage::dedup"]);
}

#[test]
fn scanner_follows_reexports_to_the_file_that_defines_the_name() {
    let list = modules(&[
        "",
        "bigquery",
        "bigquery::client",
        "bigquery::retry",
        "model",
        "messages",
    ]);
    let m = |s: &str| -> Vec<String> { s.split("::").map(str::to_string).collect() };
    let mut reexports = Reexports::new();
    let facade =
        "pub mod client;\npub use client::{BigQuery, BqError};\npub use retry::send_with_retry;\n";
    reexports.insert(m("bigquery"), reexports_of(facade, &m("bigquery"), &list));
    let messages = "pub use crate::model::Tp;\nuse crate::model::TableRef;\n";
    reexports.insert(m("messages"), reexports_of(messages, &m("messages"), &list));
    let src =
        "use crate::bigquery::{BigQuery, send_with_retry};\nuse crate::messages::{Tp, Row};\n";
    let got: Vec<String> = references(src, &m("telemetry"), &list, &reexports)
        .into_iter()
        .map(|r| r.target.join("::"))
        .collect();
    assert_eq!(
        got,
        ["bigquery::client", "bigquery::retry", "model", "messages"]
    );
}

#[test]
fn tarjan_finds_two_and_three_file_circles() {
    let mut g = Graph {
        files: BTreeMap::new(),
        edges: BTreeMap::new(),
    };
    let m = |s: &str| vec![s.to_string()];
    for s in ["a", "b", "c", "d", "e"] {
        g.files.insert(m(s), PathBuf::from(s));
    }
    for (from, to) in [
        ("a", "b"),
        ("b", "a"),
        ("c", "d"),
        ("d", "e"),
        ("e", "c"),
        ("a", "c"),
    ] {
        g.edges.entry(m(from)).or_default().insert(m(to), vec![1]);
    }
    assert_eq!(
        cycles(&g),
        vec![vec![m("a"), m("b")], vec![m("c"), m("d"), m("e")]]
    );
}
