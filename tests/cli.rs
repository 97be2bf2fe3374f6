//! The `bqsink` binary as a user runs it: `run` under both error tolerances (exit codes, ERROR log
//! lines, committed offsets, SIGTERM), and `validate`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bqsink_devtools::sink::{Sink, SinkOptions};
use common::*;

const TOPIC: &str = "events";
const BAD: &[u8] = br#"{"event_id":"bad-1","amount": 12,,}"#;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_bqsink")
}

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// 50 good records, a malformed one at offset 50, 50 more good ones, all in partition 0.
fn produce_with_bad_record(bootstrap: &str) {
    let mut payloads: Vec<Vec<u8>> = (0..50)
        .map(|i| format!(r#"{{"event_id":"g-{i}"}}"#).into_bytes())
        .collect();
    payloads.push(BAD.to_vec());
    payloads.extend((50..100).map(|i| format!(r#"{{"event_id":"g-{i}"}}"#).into_bytes()));
    produce_to_partition(bootstrap, TOPIC, 0, &payloads);
}

fn write_config(
    dir: &Path,
    bootstrap: &str,
    endpoint: &str,
    group: &str,
    tolerance: &str,
) -> PathBuf {
    let path = dir.join("test.toml");
    std::fs::write(
        &path,
        base_toml(bootstrap, group, TOPIC, endpoint)
            + &format!(
                r#"
[errors]
tolerance = "{tolerance}"
log_include_messages = true
[logging]
format = "json"
level = "info"
[admin]
listen = "127.0.0.1:0"
"#
            ),
    )
    .unwrap();
    path
}

#[test]
fn tolerance_none_exits_non_zero_without_committing_past_the_bad_record() {
    let (_cluster, bootstrap) = cluster(TOPIC, 1);
    produce_with_bad_record(&bootstrap);
    let sink = Sink::start(SinkOptions {
        keep_rows: true,
        id_pointer: None,
        ..Default::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &bootstrap, sink.url(), "g-none", "none");

    let (mut child, log) = spawn_run(&config);
    let code = wait_exit(&mut child, Duration::from_secs(60));
    let log = log.lock().unwrap().clone();
    assert_eq!(code, 1, "exit code; log:\n{log}");
    assert_eq!(
        committed(&bootstrap, "g-none", TOPIC, 1),
        vec![Some(50)],
        "committed up to, not past, the bad record"
    );
    let errors = error_lines(&log);
    assert_eq!(errors.len(), 1, "{log}");
    assert_eq!(errors[0]["offset"], 50);
    assert_eq!(errors[0]["stage"], "convert");
    let ids = count_by(&sink.rows("ds.events"), "event_id");
    for i in 0..50 {
        assert_eq!(
            ids.get(&format!("\"g-{i}\"")),
            Some(&1),
            "g-{i} written once"
        );
    }
}

#[test]
fn tolerance_all_logs_the_payload_goes_on_and_commits() {
    let (_cluster, bootstrap) = cluster(TOPIC, 1);
    produce_with_bad_record(&bootstrap);
    let sink = Sink::start(SinkOptions {
        keep_rows: true,
        id_pointer: None,
        ..Default::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &bootstrap, sink.url(), "g-all", "all");

    let (mut child, log) = spawn_run(&config);
    wait_fully_committed(&bootstrap, "g-all", TOPIC, 1, Duration::from_secs(60));
    assert_eq!(committed(&bootstrap, "g-all", TOPIC, 1), vec![Some(101)]);
    // SIGTERM: drain, commit, exit 0.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = wait_exit(&mut child, Duration::from_secs(30));
    let log = log.lock().unwrap().clone();
    assert_eq!(code, 0, "exit code after SIGTERM; log:\n{log}");

    let errors = error_lines(&log);
    assert_eq!(errors.len(), 1, "{log}");
    let e = &errors[0];
    assert_eq!(e["topic"], TOPIC);
    assert_eq!(e["partition"], 0);
    assert_eq!(e["offset"], 50);
    assert_eq!(e["stage"], "convert");
    assert_eq!(e["class"], "invalid_json");
    assert_eq!(
        e["payload"],
        std::str::from_utf8(BAD).unwrap(),
        "the original message is in the log line"
    );
    let rows = sink.rows("ds.events");
    assert_eq!(rows.len(), 100);
    assert_eq!(count_by(&rows, "event_id").len(), 100);
}

#[test]
fn validate_prints_the_merged_config_and_names_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[kafka]\ntopics = [\"a\"]\n[bigquery]\nproject = \"p\"\ndataset = \"d\"\ntoken = \"s3cret\"\n").unwrap();
    let out = Command::new(bin())
        .args(["validate", "--env", "production", "--config-dir"])
        .arg(config_dir())
        .arg("--config")
        .arg(&good)
        .env("BQSINK__BATCH__MAX_ROWS", "321")
        // A secret that looks like a number is still a string, and never printed.
        .env("BQSINK__ADMIN__TOKEN", "918273645")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("max_rows = 321"),
        "env var applied:\n{stdout}"
    );
    assert!(
        stdout.contains("format = \"json\""),
        "production layer applied:\n{stdout}"
    );
    assert!(
        stdout.contains("topics = [\"a\"]"),
        "--config layer applied:\n{stdout}"
    );
    assert!(!stdout.contains("s3cret"), "token is redacted");
    assert!(!stdout.contains("918273645"), "admin token is redacted");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[kafka]\ntopics = [\"a\"]\ncommit_intervl_ms = 5\n").unwrap();
    let out = Command::new(bin())
        .args(["validate", "--config-dir"])
        .arg(config_dir())
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("commit_intervl_ms"), "{stderr}");
}

/// `--version` names the release and the git commit it was built from (`build.rs`), as the
/// `bqsink_build_info` metric does.
#[test]
fn version_names_the_release_and_the_commit() {
    let out = Command::new(bin()).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let expected = format!("bqsink {} (", env!("CARGO_PKG_VERSION"));
    assert!(text.starts_with(&expected), "{text}");
    let sha = text
        .trim()
        .trim_start_matches(&expected)
        .trim_end_matches(')');
    assert!(
        sha == "unknown" || (sha.len() == 12 && sha.chars().all(|c| c.is_ascii_hexdigit())),
        "{text}"
    );
}

/// `bqsink demo --format avro|protobuf|json-schema`: the events in each registry format through
/// the demo's own Schema Registry; the demo exits 0 only when the sink holds exactly the unique
/// events.
#[test]
fn the_demo_runs_with_each_registry_format() {
    for format in ["avro", "protobuf", "json-schema"] {
        let out = Command::new(bin())
            .args([
                "demo",
                "--records",
                "3000",
                "--partitions",
                "2",
                "--format",
                format,
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{format}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let named = format.replace('-', "_");
        assert!(
            stdout.contains(&format!("the events as {named}")),
            "{stdout}"
        );
    }
}
