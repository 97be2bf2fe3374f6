//! Avro topics through a Schema Registry (issue 18, first part): records in the registry's wire
//! format are decoded with their registered schema (two versions of it), written with every field
//! mapped as kafka-connect-bigquery maps it, checked by content on the BigQuery fake; bad input is
//! a record failure with its original bytes in the dead-letter topic; a registry outage is a sink
//! failure — nothing is written, dead-lettered or committed until it answers again, then every row
//! arrives. Keys in Avro (`kafka.key_formats`) are decoded into `_kafka_key` and the `kafka_key`
//! dedup.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use apache_avro::types::Value as Avro;
use apache_avro::{Decimal, Schema};
use bqsink_actors::config::{Tolerance, ValueFormat};
use bqsink_devtools::registry::Registry;
use bqsink_devtools::sink::{Sink, SinkOptions};
use common::*;
use serde_json::{json, Value};

const TOPIC: &str = "members-avro";
const DLQ: &str = "members-avro-dlq";

const V1: &str = r#"{"type": "record", "name": "Member", "namespace": "example", "fields": [
  {"name": "event_id", "type": "string"},
  {"name": "member_id", "type": "long"},
  {"name": "name", "type": "string"},
  {"name": "nickname", "type": ["null", "string"], "default": null},
  {"name": "tags", "type": {"type": "array", "items": "string"}},
  {"name": "address", "type": {"type": "record", "name": "Address", "fields": [
    {"name": "city", "type": "string"}, {"name": "zip", "type": ["null", "int"]}]}},
  {"name": "joined", "type": {"type": "long", "logicalType": "timestamp-micros"}},
  {"name": "balance", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}},
  {"name": "tier", "type": {"type": "enum", "name": "Tier", "symbols": ["FREE", "GOLD"]}}
]}"#;

/// V1 with an optional field added (a compatible evolution).
fn v2() -> String {
    V1.replacen(
        r#"{"name": "tier","#,
        r#"{"name": "note", "type": ["null", "string"], "default": null}, {"name": "tier","#,
        1,
    )
}

fn member(i: i64, version: u32) -> Avro {
    let mut fields = vec![
        ("event_id".into(), Avro::String(format!("m-{i}"))),
        ("member_id".into(), Avro::Long(1000 + i)),
        ("name".into(), Avro::String(format!("member {i}"))),
        (
            "nickname".into(),
            if i % 2 == 0 {
                Avro::Union(1, Box::new(Avro::String(format!("nick{i}"))))
            } else {
                Avro::Union(0, Box::new(Avro::Null))
            },
        ),
        (
            "tags".into(),
            Avro::Array((0..i % 3).map(|t| Avro::String(format!("t{t}"))).collect()),
        ),
        (
            "address".into(),
            Avro::Record(vec![
                ("city".into(), Avro::String("Seoul".into())),
                (
                    "zip".into(),
                    Avro::Union(1, Box::new(Avro::Int(4500 + i as i32))),
                ),
            ]),
        ),
        (
            "joined".into(),
            Avro::TimestampMicros(1_700_000_000_000_000 + i),
        ),
        (
            "balance".into(),
            Avro::Decimal(Decimal::from((12_345 * i - 50).to_be_bytes().to_vec())),
        ),
        (
            "tier".into(),
            Avro::Enum(
                (i % 2) as u32,
                if i % 2 == 0 { "FREE" } else { "GOLD" }.into(),
            ),
        ),
    ];
    if version == 2 {
        fields.insert(
            8,
            (
                "note".into(),
                Avro::Union(1, Box::new(Avro::String(format!("v2 #{i}")))),
            ),
        );
    }
    Avro::Record(fields)
}

/// The row bqsink must write for `member(i, version)`.
fn expected(i: i64, version: u32) -> Value {
    let cents = 12_345 * i - 50;
    let mut row = json!({
        "event_id": format!("m-{i}"),
        "member_id": 1000 + i,
        "name": format!("member {i}"),
        "nickname": if i % 2 == 0 { json!(format!("nick{i}")) } else { Value::Null },
        "tags": (0..i % 3).map(|t| format!("t{t}")).collect::<Vec<_>>(),
        "address": {"city": "Seoul", "zip": 4500 + i},
        "joined": format!("2023-11-14T22:13:20.{:06}Z", i),
        "balance": format!("{}{}.{:02}", if cents < 0 { "-" } else { "" }, cents.abs() / 100, cents.abs() % 100),
        "tier": if i % 2 == 0 { "FREE" } else { "GOLD" },
    });
    if version == 2 {
        row["note"] = json!(format!("v2 #{i}"));
    }
    row
}

/// The BigQuery columns of V2 (kafka-connect-bigquery's mapping).
fn table_fields() -> Value {
    json!([
        {"name": "event_id", "type": "STRING", "mode": "REQUIRED"},
        {"name": "member_id", "type": "INTEGER", "mode": "REQUIRED"},
        {"name": "name", "type": "STRING", "mode": "REQUIRED"},
        {"name": "nickname", "type": "STRING", "mode": "NULLABLE"},
        {"name": "tags", "type": "STRING", "mode": "REPEATED"},
        {"name": "address", "type": "RECORD", "mode": "REQUIRED", "fields": [
            {"name": "city", "type": "STRING", "mode": "REQUIRED"},
            {"name": "zip", "type": "INTEGER", "mode": "NULLABLE"}]},
        {"name": "joined", "type": "TIMESTAMP", "mode": "REQUIRED"},
        {"name": "balance", "type": "NUMERIC", "mode": "REQUIRED"},
        {"name": "note", "type": "STRING", "mode": "NULLABLE"},
        {"name": "tier", "type": "STRING", "mode": "REQUIRED"},
        {"name": "_kafka_topic", "type": "STRING"},
        {"name": "_kafka_partition", "type": "INTEGER"},
        {"name": "_kafka_offset", "type": "INTEGER"},
        {"name": "_kafka_timestamp", "type": "TIMESTAMP"}
    ])
}

fn wire(id: u32, schema: &Schema, value: Avro) -> Vec<u8> {
    let body = apache_avro::to_avro_datum(schema, value).unwrap();
    let mut v = vec![0];
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&body);
    v
}

#[test]
fn avro_records_are_written_by_content_bad_ones_dead_lettered_and_an_outage_waits() {
    run(false);
}

/// The same through the Storage Write API (exactly once, the default): the decoded rows are
/// encoded as protobuf like JSON records' rows.
#[test]
fn avro_records_reach_the_storage_write_api_by_content() {
    run(true);
}

fn run(storage: bool) {
    let registry = Registry::start().unwrap();
    registry.register(1, V1);
    registry.register(2, &v2());
    registry.register_typed(
        3,
        "PROTOBUF",
        "syntax = \"proto3\"; message M { string a = 1; }",
    );
    let (s1, s2) = (
        Schema::parse_str(V1).unwrap(),
        Schema::parse_str(&v2()).unwrap(),
    );

    let (cluster, bootstrap) = cluster(TOPIC, 2);
    cluster.create_topic(DLQ, 1, 1).unwrap();
    let p = bqsink_devtools::kafka::producer(&bootstrap).unwrap();
    for i in 0..100 {
        let (id, schema, version) = if i < 60 { (1, &s1, 1) } else { (2, &s2, 2) };
        let key = format!("k{i}");
        bqsink_devtools::kafka::produce(&p, TOPIC, &key, &wire(id, schema, member(i, version)))
            .unwrap();
    }
    rdkafka::producer::Producer::flush(&p, Duration::from_secs(30)).unwrap();
    // Bad input, each a record failure: JSON (no magic byte), an id the registry does not know, a
    // Protobuf schema id, bytes cut short.
    let truncated = {
        let mut w = wire(1, &s1, member(7, 1));
        w.truncate(12);
        w
    };
    let bad: Vec<Vec<u8>> = vec![
        br#"{"event_id":"json"}"#.to_vec(),
        wire(99, &s1, member(1, 1)),
        wire(3, &s1, member(2, 1)),
        truncated,
    ];
    produce_to_partition(&bootstrap, TOPIC, 0, &bad);

    let sink = Sink::start(SinkOptions {
        keep_rows: true,
        id_pointer: Some("/event_id".into()),
        ..SinkOptions::default()
    })
    .unwrap();
    let group = if storage { "g-avro-storage" } else { "g-avro" };
    let mut config = config(&bootstrap, group, TOPIC, sink.url());
    if storage {
        use_storage_write(&mut config, &sink);
        config.bigquery.delivery = bqsink_actors::config::Delivery::ExactlyOnce;
        // The table as a user creates it for these records (with auto_create_tables bqsink
        // creates it from the registry's schema: tests/registry_formats.rs).
        sink.manage_tables();
        sink.create_table("ds.members_avro", table_fields());
    }
    config.kafka.formats = HashMap::from([(TOPIC.to_owned(), ValueFormat::Avro)])
        .into_iter()
        .collect();
    config.registry.url = registry.url.clone();
    config.errors.tolerance = Tolerance::All;
    config.errors.deadletterqueue.topic_name = DLQ.into();
    config.validate().unwrap();

    // The registry is down from the start: nothing is written, dead-lettered or committed.
    registry.set_down(true);
    let pipeline = start(&config);
    wait_until(Duration::from_secs(30), "lookups retried", || {
        registry.lookups(1) + registry.lookups(2) >= 3
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.total_rows(), 0);
    assert_eq!(
        watermarks(&bootstrap, DLQ, 1)[0].1,
        0,
        "nothing dead-lettered"
    );
    let held = committed(&bootstrap, group, TOPIC, 2);
    assert!(
        held.iter().all(|c| c.unwrap_or(0) == 0),
        "nothing committed: {held:?}"
    );
    let sinks = pipeline.stats.health.snapshot();
    assert!(
        sinks.iter().any(|s| s.sink.starts_with("schema registry")),
        "the registry shows as a sink in trouble: {sinks:?}"
    );

    // Back up: every record is handled.
    registry.set_down(false);
    wait_fully_committed(&bootstrap, group, TOPIC, 2, Duration::from_secs(60));
    assert_eq!(pipeline.shutdown().unwrap(), 0);

    let rows = sink.rows("ds.members_avro");
    assert_eq!(rows.len(), 100, "{:?}", rows.first());
    let by_id: HashMap<String, &Value> = rows
        .iter()
        .map(|r| (r["event_id"].as_str().unwrap().to_owned(), r))
        .collect();
    assert_eq!(by_id.len(), 100, "no duplicate rows");
    for i in 0..100 {
        let version = if i < 60 { 1 } else { 2 };
        let row = by_id[&format!("m-{i}")];
        let mut want = expected(i, version);
        if storage {
            // The Storage Write API's TIMESTAMP is µs since the epoch (the fake gives it back so).
            want["joined"] = json!(1_700_000_000_000_000i64 + i);
        }
        for (k, v) in want.as_object().unwrap() {
            // An empty REPEATED column reads back as absent from the Storage Write API's rows.
            let got = match (&row[k], v) {
                (Value::Null, Value::Array(a)) if a.is_empty() => v,
                (got, _) => got,
            };
            assert_eq!(got, v, "m-{i}.{k} in {row}");
        }
    }

    // The dead letters: the original bytes, in order, each with its class.
    let dead = read_topic(&bootstrap, DLQ);
    let classes: Vec<String> = dead.iter().map(ReadBack::class).collect();
    assert_eq!(
        classes,
        [
            "not_wire_format",
            "unknown_schema_id",
            "wrong_schema_type",
            "avro_mismatch"
        ]
    );
    for (d, original) in dead.iter().zip(&bad) {
        assert_eq!(d.value.as_deref(), Some(original.as_slice()));
    }
    // Each schema was fetched once it answered: no lookup per record.
    for id in [1, 2, 3, 99] {
        assert!(registry.lookups(id) >= 1, "id {id}");
    }
    let after_outage = |id| registry.lookups(id);
    assert!(
        after_outage(99) == 1 && after_outage(3) == 1,
        "404 and other schema types are remembered"
    );
}

/// Under `errors.sink_failure = "stop"`, a registry that stays down stops the pipeline (exit 1)
/// once it has failed for `errors.retry_timeout_ms`: nothing dead-lettered, nothing committed.
#[test]
fn a_registry_down_past_the_retry_timeout_stops_the_pipeline_under_stop() {
    const T: &str = "members-avro-stop";
    let registry = Registry::start().unwrap();
    registry.set_down(true);
    let s1 = Schema::parse_str(V1).unwrap();
    let (cluster, bootstrap) = cluster(T, 1);
    cluster.create_topic(DLQ, 1, 1).unwrap();
    let values: Vec<Vec<u8>> = (0..5).map(|i| wire(1, &s1, member(i, 1))).collect();
    produce_to_partition(&bootstrap, T, 0, &values);
    let sink = Sink::start(SinkOptions::default()).unwrap();
    let mut config = config(&bootstrap, "g-avro-stop", T, sink.url());
    config.kafka.formats = [(T.to_owned(), ValueFormat::Avro)].into_iter().collect();
    config.registry.url = registry.url.clone();
    config.errors.tolerance = Tolerance::All;
    config.errors.deadletterqueue.topic_name = DLQ.into();
    config.errors.sink_failure = bqsink_actors::config::SinkFailure::Stop;
    config.errors.retry_timeout_ms = 500;
    // The held records never drain: the drain waits this long, then stops without them.
    config.pipeline.shutdown_timeout_ms = 2_000;
    let pipeline = start(&config);
    wait_until(Duration::from_secs(30), "the pipeline to stop", || {
        pipeline.is_finished()
    });
    assert_eq!(pipeline.wait().unwrap(), 1);
    assert!(registry.lookups(1) >= 2, "retried before stopping");
    assert_eq!(sink.total_rows(), 0);
    assert_eq!(
        watermarks(&bootstrap, DLQ, 1)[0].1,
        0,
        "nothing dead-lettered"
    );
    let held = committed(&bootstrap, "g-avro-stop", T, 1);
    assert!(
        held.iter().all(|c| c.unwrap_or(0) == 0),
        "nothing committed: {held:?}"
    );
}

const KEY: &str = r#"{"type": "record", "name": "MemberKey", "namespace": "example",
  "fields": [{"name": "member_id", "type": "long"}]}"#;

fn keyed(
    p: &rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    key: Option<&[u8]>,
    value: &[u8],
) {
    let mut record = rdkafka::producer::BaseRecord::<[u8], [u8]>::to(KEYED).payload(value);
    if let Some(key) = key {
        record = record.key(key);
    }
    p.send(record).map_err(|(e, _)| e).unwrap();
}

const KEYED: &str = "members-avro-keys";

/// Avro keys (`kafka.key_formats`): `_kafka_key` holds the decoded key (a record key's JSON, a
/// string key's characters) and `dedup.key = "kafka_key"` compares decoded keys, so the same key
/// under another schema id (the key schema registered again) is a duplicate although its bytes
/// differ. A key that does not decode is a record failure with the original key bytes in the
/// dead-letter topic.
#[test]
fn avro_keys_are_decoded_into_the_kafka_key_column_and_dedup() {
    let registry = Registry::start().unwrap();
    registry.register(1, V1);
    // The same key schema under two ids (as after it is registered under a second subject).
    registry.register(11, KEY);
    registry.register(12, KEY);
    registry.register(13, r#""string""#);
    let (value_schema, key_schema) = (
        Schema::parse_str(V1).unwrap(),
        Schema::parse_str(KEY).unwrap(),
    );
    let string_schema = Schema::parse_str(r#""string""#).unwrap();
    let member_key = |id: u32, member: i64| {
        wire(
            id,
            &key_schema,
            Avro::Record(vec![("member_id".into(), Avro::Long(member))]),
        )
    };

    let (cluster, bootstrap) = cluster(KEYED, 1);
    cluster.create_topic(DLQ, 1, 1).unwrap();
    let p = bqsink_devtools::kafka::producer(&bootstrap).unwrap();
    let value = |i: i64| wire(1, &value_schema, member(i, 1));
    for i in 0..30 {
        keyed(&p, Some(&member_key(11, i)), &value(i));
    }
    // The same members' keys again under id 12: duplicates by key, whatever their values.
    for i in 0..10 {
        keyed(&p, Some(&member_key(12, i)), &value(100 + i));
    }
    for i in 0..5 {
        let key = wire(13, &string_schema, Avro::String(format!("s-{i}")));
        keyed(&p, Some(&key), &value(200 + i));
    }
    keyed(&p, None, &value(300));
    // Keys that do not decode: not in the wire format, an unknown id.
    let bad_keys = [b"member-1".to_vec(), member_key(98, 1)];
    for (n, key) in bad_keys.iter().enumerate() {
        keyed(&p, Some(key), &value(400 + n as i64));
    }
    rdkafka::producer::Producer::flush(&p, Duration::from_secs(30)).unwrap();

    let sink = Sink::start(SinkOptions {
        keep_rows: true,
        ..SinkOptions::default()
    })
    .unwrap();
    let group = "g-avro-keys";
    let mut config = config(&bootstrap, group, KEYED, sink.url());
    config.kafka.formats = [(KEYED.to_owned(), ValueFormat::Avro)]
        .into_iter()
        .collect();
    config.kafka.key_formats = [(KEYED.to_owned(), ValueFormat::Avro)]
        .into_iter()
        .collect();
    config.registry.url = registry.url.clone();
    config.transform.metadata.key = true;
    config.dedup.key = bqsink_actors::config::DedupKey::KafkaKey;
    config.errors.tolerance = Tolerance::All;
    config.errors.deadletterqueue.topic_name = DLQ.into();
    config.validate().unwrap();
    let pipeline = start(&config);
    wait_fully_committed(&bootstrap, group, KEYED, 1, Duration::from_secs(60));
    assert_eq!(pipeline.shutdown().unwrap(), 0);

    let rows = sink.rows("ds.members_avro_keys");
    let keys: HashMap<String, Value> = rows
        .iter()
        .map(|r| {
            (
                r["event_id"].as_str().unwrap().to_owned(),
                r["_kafka_key"].clone(),
            )
        })
        .collect();
    assert_eq!(
        rows.len(),
        36,
        "30 member keys, 5 string keys, 1 without a key: {keys:?}"
    );
    assert_eq!(keys.len(), 36, "no duplicate rows");
    for i in 0..30 {
        assert_eq!(
            keys[&format!("m-{i}")],
            json!(format!("{{\"member_id\":{i}}}"))
        );
    }
    for i in 0..5 {
        assert_eq!(keys[&format!("m-{}", 200 + i)], json!(format!("s-{i}")));
    }
    assert_eq!(keys["m-300"], Value::Null);
    assert!(
        (100..110).all(|i| !keys.contains_key(&format!("m-{i}"))),
        "the same keys under id 12 are duplicates"
    );

    let dead = read_topic(&bootstrap, DLQ);
    let classes: Vec<String> = dead.iter().map(ReadBack::class).collect();
    assert_eq!(classes, ["not_wire_format", "unknown_schema_id"]);
    for (d, key) in dead.iter().zip(&bad_keys) {
        assert_eq!(d.key.as_deref(), Some(key.as_slice()), "the original key");
        let message = d
            .header("__connect.errors.exception.message")
            .unwrap_or_default();
        assert!(message.starts_with("record key: "), "{message}");
    }
    assert_eq!(registry.lookups(12), 1, "each key schema fetched once");
}
