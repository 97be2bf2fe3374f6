//! `bqsink replay --from-file` across rotations of the error file: progress follows each file
//! through its renames (`<path>` → `<path>.N`), so every failed record reaches BigQuery exactly once
//! however often the file rotates between replays.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bqsink::destinations::error_file::{encode_lines, rotated_files, FileRecord, RotatingFile};
use bqsink::replay::{self, ReplayFrom, ReplayOptions, ReplayReport, ReplayTo};
use bqsink_actors::bigquery::BigQuery;
use bqsink_actors::config::Config;
use bqsink_actors::destinations::FailureRecord;
use bqsink_actors::messages::{RawRecord, Stage, Tp};
use bqsink_devtools::sink::{Sink, SinkOptions};

const TOPIC: &str = "events";
const TABLE: &str = "ds.events";

/// A record that BigQuery rejected once; it goes in when replayed. Offsets 100..=999 keep every
/// line the same length.
fn failure(offset: i64) -> FailureRecord {
    FailureRecord {
        tp: Tp::new(TOPIC, 0),
        source: RawRecord {
            offset,
            timestamp_ms: Some(1_700_000_000_000),
            key: Some(format!("k-{offset}").into_bytes()),
            payload: Some(format!(r#"{{"event_id":"f-{offset}"}}"#).into_bytes()),
            headers: Vec::new(),
        },
        stage: Stage::BigQuery,
        class: "invalid",
        error: "no such field".into(),
    }
}

fn lines(offsets: std::ops::Range<i64>) -> Vec<Vec<u8>> {
    let records: Vec<_> = offsets.map(failure).collect();
    encode_lines(&records, "g")
}

/// The files a replay is given: the rotated ones, oldest first, then the active one.
fn all_files(path: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = rotated_files(path).into_iter().map(|(_, p)| p).collect();
    files.push(path.to_path_buf());
    files
}

/// Offsets per file name, to check where rotation put them.
fn layout(path: &Path) -> Vec<(String, Vec<i64>)> {
    all_files(path)
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            let offsets = text
                .lines()
                .map(|l| FileRecord::parse(l).unwrap().offset)
                .collect();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, offsets)
        })
        .collect()
}

fn ids(sink: &Sink) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in sink.rows(TABLE) {
        *m.entry(r["event_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    m
}

struct Setup {
    sink: Sink,
    config: Config,
    bq: Arc<dyn BigQuery>,
}

impl Setup {
    fn new() -> Self {
        let sink = Sink::start(SinkOptions {
            keep_rows: true,
            id_pointer: Some("/event_id".into()),
            honor_insert_id: false,
        })
        .unwrap();
        // Replay to BigQuery never talks to Kafka.
        let config = common::config("127.0.0.1:9", "g", TOPIC, sink.url());
        let bq: Arc<dyn BigQuery> =
            Arc::new(bqsink::bigquery::RestClient::new(&config.bigquery).unwrap());
        Self { sink, config, bq }
    }

    fn replay(&self, path: &Path) -> ReplayReport {
        let opts = ReplayOptions::new(ReplayFrom::Files(all_files(path)), ReplayTo::BigQuery);
        replay::run(&self.config, Some(Arc::clone(&self.bq)), &opts).unwrap()
    }

    /// Every record written so far (`written`) is in BigQuery exactly once, and nothing else is.
    fn assert_each_once(&self, written: std::ops::Range<i64>) {
        let ids = ids(&self.sink);
        let want: HashMap<String, usize> = written.map(|o| (format!("f-{o}"), 1)).collect();
        assert_eq!(ids, want, "each failed record exactly once");
        assert_eq!(self.sink.total_rows(), ids.len() as u64);
    }
}

#[test]
fn replay_progress_follows_error_files_through_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("failed.ndjson");
    let line_len = lines(100..101)[0].len() as u64;
    // Four lines fit, a fifth does not.
    let mut file = RotatingFile::new(path.clone(), 4 * line_len + line_len / 2);
    let setup = Setup::new();

    // 8 lines: `.1` and the active file full.
    file.append(&lines(100..108)).unwrap();
    assert_eq!(
        layout(&path),
        vec![
            ("failed.ndjson.1".into(), (100..104).collect::<Vec<_>>()),
            ("failed.ndjson".into(), (104..108).collect()),
        ]
    );
    let r = setup.replay(&path);
    assert_eq!((r.read, r.replayed, r.still_failing), (8, 8, 0), "{r:?}");
    setup.assert_each_once(100..108);

    // 6 more: the fully replayed active file becomes `.2`, a new one fills and becomes `.3`, and the
    // new active file holds 2.
    file.append(&lines(108..114)).unwrap();
    assert_eq!(
        layout(&path),
        vec![
            ("failed.ndjson.1".into(), (100..104).collect::<Vec<_>>()),
            ("failed.ndjson.2".into(), (104..108).collect()),
            ("failed.ndjson.3".into(), (108..112).collect()),
            ("failed.ndjson".into(), (112..114).collect()),
        ]
    );
    let r = setup.replay(&path);
    assert_eq!((r.read, r.replayed, r.still_failing), (6, 6, 0), "{r:?}");
    setup.assert_each_once(100..114);

    // 5 more: 2 join the partly replayed active file, which becomes `.4`; the new one holds 3.
    file.append(&lines(114..119)).unwrap();
    assert_eq!(
        layout(&path)[3..],
        [
            ("failed.ndjson.4".into(), (112..116).collect::<Vec<_>>()),
            ("failed.ndjson".into(), (116..119).collect()),
        ]
    );
    let r = setup.replay(&path);
    assert_eq!((r.read, r.replayed, r.still_failing), (5, 5, 0), "{r:?}");
    setup.assert_each_once(100..119);

    // Nothing new: nothing sent.
    let r = setup.replay(&path);
    assert_eq!((r.read, r.replayed), (0, 0), "{r:?}");
    setup.assert_each_once(100..119);
}
