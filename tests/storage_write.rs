//! The Storage Write API path (`bigquery.write_api = "storage"`, the table's `_default` stream)
//! end to end against the mock cluster and the local sink's gRPC side, which decodes every
//! protobuf row with the writer schema it was sent and keeps duplicates (no insertId dedup here).
//!
//! The invariants: every event is in the table exactly once, with its values typed by the table's
//! columns; a row that does not fit its column, or that BigQuery rejects, is a record failure of
//! that row alone (in the dead-letter topic with its original bytes and the field named), never a
//! failed batch; a table that gains columns (`allow_new_fields`) or does not exist yet
//! (`auto_create_tables`) is handled as on the insertAll path. Sink failures of this path are in
//! `tests/sink_failures.rs`, the emulator runs in `tests/bqemulator.rs`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bqsink_actors::config::{Config, Tolerance};
use bqsink_devtools::generator::{Generator, Mix};
use bqsink_devtools::sink::{Reply, Sink, SinkOptions};
use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

/// A sink that keeps rows and manages tables like BigQuery, with `ds.<table>` created (unless
/// `fields` is `None`).
fn sink(table: &str, fields: Option<Value>) -> Sink {
    let sink = Sink::start(SinkOptions {
        keep_rows: true,
        id_pointer: Some("/event_id".into()),
        ..SinkOptions::default()
    })
    .unwrap();
    sink.manage_tables();
    sink.create_dataset("ds");
    if let Some(f) = fields {
        sink.create_table(&format!("ds.{table}"), f);
    }
    sink
}

fn storage_config(bootstrap: &str, group: &str, topic: &str, sink: &Sink) -> Config {
    let mut c = config(bootstrap, group, topic, sink.url());
    use_storage_write(&mut c, sink);
    c.errors.tolerance = Tolerance::All;
    c
}

/// A member event payload with `seq` and `attributes` as given (JSON text).
fn payload(id: &str, seq: &str, attributes: &str) -> Vec<u8> {
    format!(
        r#"{{"event_id":"{id}","member_id":"m-1","event_type":"login","occurred_at":"2026-11-27T10:11:12.345Z","channel":"web","seq":{seq},"attributes":{attributes}}}"#
    )
    .into_bytes()
}

#[test]
fn events_go_through_the_storage_write_api_once_each_typed_by_their_columns() {
    let topic = "members";
    let (_cluster, bootstrap) = cluster(topic, 4);
    let sink = sink(topic, Some(member_events_fields()));
    let mut counts = bqsink_devtools::generator::Counts::default();
    let events: Vec<_> = Generator::new(Mix {
        duplicates: 0.05,
        malformed: 0.01,
        seed: 7,
    })
    .take(3_000)
    .inspect(|e| counts.add(e.kind))
    .collect();
    produce(&bootstrap, topic, &events);
    let started = SystemTime::now();
    let pipeline = start(&storage_config(&bootstrap, "g-sw", topic, &sink));
    wait_fully_committed(&bootstrap, "g-sw", topic, 4, WAIT);
    let stats = pipeline.stats.snapshot();
    assert_eq!(pipeline.shutdown().unwrap(), 0);

    assert_eq!(
        sink.id_stats(),
        (counts.unique, 0),
        "(distinct events, repeated rows) in the table"
    );
    assert_eq!(
        stats.failed, counts.malformed,
        "only the malformed records failed"
    );
    assert!(sink.insert_id_dropped() == 0);
    let rows = sink.rows(&format!("ds.{topic}"));
    assert_eq!(rows.len() as u64, counts.unique);
    let row = &rows[0];
    assert!(
        row["event_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("evt-")),
        "{row}"
    );
    assert!(row["seq"].is_u64(), "INTEGER as int64: {row}");
    assert_eq!(
        row["attributes"]["locale"], "ko-KR",
        "RECORD as a nested message: {row}"
    );
    let occurred = row["occurred_at"].as_i64().expect("TIMESTAMP as int64 µs");
    assert_eq!(
        occurred / 86_400_000_000,
        20_784,
        "2026-11-27 is day 20784: {row}"
    );
    let produced = row["_kafka_timestamp"]
        .as_i64()
        .expect("the record's timestamp, µs") as u128;
    let since = started.duration_since(UNIX_EPOCH).unwrap().as_micros();
    assert!(produced < since && since - produced < 120_000_000, "{row}");
}

#[test]
fn a_value_that_does_not_fit_its_column_is_a_record_failure_of_that_row_alone() {
    let topic = "typed";
    let dlq = "typed-dlq";
    let (cluster, bootstrap) = cluster(topic, 1);
    cluster.create_topic(dlq, 1, 1).unwrap();
    let sink = sink(topic, Some(member_events_fields()));
    let attrs = r#"{"ip":"10.0.0.1","plan":"basic","locale":"ko-KR","session":"s"}"#;
    let payloads: Vec<Vec<u8>> = (0..100)
        .map(|i| match i {
            10 => payload("e10", r#""ten""#, attrs),
            50 => payload("e50", "5", r#""flat""#),
            70 => payload("e70", "7", r#"{"ip":"x","plan":["a"]}"#),
            i => payload(&format!("e{i}"), &i.to_string(), attrs),
        })
        .collect();
    produce_to_partition(&bootstrap, topic, 0, &payloads);
    let mut config = storage_config(&bootstrap, "g-typed", topic, &sink);
    config.errors.deadletterqueue.topic_name = dlq.into();
    let pipeline = start(&config);
    wait_fully_committed(&bootstrap, "g-typed", topic, 1, WAIT);
    assert_eq!(pipeline.shutdown().unwrap(), 0);

    assert_eq!(sink.id_stats(), (97, 0), "every other row written once");
    let dead = read_topic(&bootstrap, dlq);
    let offsets: Vec<String> = dead
        .iter()
        .map(|r| r.header("__connect.errors.offset").unwrap_or_default())
        .collect();
    assert_eq!(offsets, ["10", "50", "70"]);
    assert_eq!(
        dead[0].value.as_deref(),
        Some(payloads[10].as_slice()),
        "the original bytes"
    );
    let message = |i: usize| {
        dead[i]
            .header("__connect.errors.exception.message")
            .unwrap()
    };
    let m = message(0);
    assert!(
        m.contains("field seq") && m.contains("INTEGER") && m.contains("\"ten\""),
        "{m}"
    );
    assert!(
        message(1).contains("field attributes") && message(1).contains("RECORD"),
        "{}",
        message(1)
    );
    assert!(
        message(2).contains("field attributes.plan"),
        "{}",
        message(2)
    );
}

#[test]
fn rows_bigquery_rejects_are_record_failures_and_the_rest_is_written_once() {
    let topic = "rejects";
    let (_cluster, bootstrap) = cluster(topic, 1);
    let sink = sink(topic, Some(member_events_fields()));
    // The first request has its row 1 rejected (row_errors); the others are sent again.
    let rejected = Arc::new(AtomicBool::new(false));
    let r = Arc::clone(&rejected);
    sink.set_hook(move |req| {
        if req.rows.len() > 1 && !r.swap(true, Ordering::SeqCst) {
            Reply::RejectRows(vec![1])
        } else {
            Reply::Accept
        }
    });
    let attrs = r#"{"ip":"i","plan":"p","locale":"l","session":"s"}"#;
    let payloads: Vec<Vec<u8>> = (0..200)
        .map(|i| payload(&format!("e{i}"), &i.to_string(), attrs))
        .collect();
    produce_to_partition(&bootstrap, topic, 0, &payloads);
    let config = storage_config(&bootstrap, "g-rejects", topic, &sink);
    let pipeline = start(&config);
    wait_fully_committed(&bootstrap, "g-rejects", topic, 1, WAIT);
    let stats = pipeline.stats.snapshot();
    assert_eq!(pipeline.shutdown().unwrap(), 0);
    assert!(rejected.load(Ordering::SeqCst));
    assert_eq!(stats.failed, 1, "the one rejected row");
    assert_eq!(sink.id_stats(), (199, 0), "the others once each");
}

#[test]
fn new_fields_are_added_and_the_rows_appended_on_a_new_connection() {
    let topic = "grows";
    let (_cluster, bootstrap) = cluster(topic, 2);
    // The table lacks `channel`, which every event has.
    let mut fields = member_events_fields();
    fields
        .as_array_mut()
        .unwrap()
        .retain(|f| f["name"] != "channel");
    let sink = sink(topic, Some(fields));
    let events: Vec<_> = Generator::new(Mix {
        duplicates: 0.0,
        malformed: 0.0,
        seed: 3,
    })
    .take(500)
    .collect();
    produce(&bootstrap, topic, &events);
    let mut config = storage_config(&bootstrap, "g-grows", topic, &sink);
    config.bigquery.allow_new_fields = true;
    let pipeline = start(&config);
    wait_fully_committed(&bootstrap, "g-grows", topic, 2, WAIT);
    let stats = pipeline.stats.snapshot();
    assert_eq!(pipeline.shutdown().unwrap(), 0);

    assert_eq!(stats.failed, 0);
    assert_eq!(sink.id_stats(), (500, 0));
    let rows = sink.rows(&format!("ds.{topic}"));
    assert!(
        rows.iter().all(|r| r["channel"].is_string()),
        "every row has its channel: {}",
        rows[0]
    );
    let calls = sink.calls();
    assert!(
        calls
            .iter()
            .any(|c| c == &format!("tables.patch ds.{topic}")),
        "{calls:?}"
    );
    let def = sink.table(&format!("ds.{topic}")).unwrap();
    assert!(def["schema"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == "channel" && f["type"] == "STRING"));
}

#[test]
fn a_missing_table_is_created_from_the_rows_then_written() {
    let topic = "fresh";
    let (_cluster, bootstrap) = cluster(topic, 2);
    let sink = sink(topic, None);
    let events: Vec<_> = Generator::new(Mix {
        duplicates: 0.0,
        malformed: 0.0,
        seed: 4,
    })
    .take(300)
    .collect();
    produce(&bootstrap, topic, &events);
    let mut config = storage_config(&bootstrap, "g-fresh", topic, &sink);
    config.bigquery.auto_create_tables = true;
    let pipeline = start(&config);
    wait_fully_committed(&bootstrap, "g-fresh", topic, 2, WAIT);
    assert_eq!(pipeline.shutdown().unwrap(), 0);
    assert_eq!(sink.id_stats(), (300, 0));
    assert!(sink
        .calls()
        .iter()
        .any(|c| c == &format!("tables.insert ds.{topic}")));
    let rows = sink.rows(&format!("ds.{topic}"));
    assert_eq!(
        rows[0]["attributes"]["locale"],
        json!("ko-KR"),
        "{}",
        rows[0]
    );
}
