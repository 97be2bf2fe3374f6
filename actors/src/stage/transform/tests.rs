//! Transform end to end: records in, rows (table, insertId, encoded entry) out.

use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::stage::convert::convert;

fn config() -> Config {
    let mut c = Config::default();
    c.bigquery.project = "p".into();
    c.bigquery.dataset = "events".into();
    c
}

fn record(offset: i64, payload: &str) -> RawRecord {
    RawRecord {
        offset,
        timestamp_ms: Some(1_700_000_000_123),
        key: Some(b"member-7".to_vec()),
        payload: Some(payload.as_bytes().to_vec()),
        headers: vec![],
    }
}

fn run(
    t: &mut Transformer,
    topic: &str,
    rec: &RawRecord,
) -> Result<(Transformed, Value), TransformError> {
    let tp = Tp::new(topic, 2);
    let out = t.apply(&tp, rec, convert(rec.payload.as_deref()).unwrap())?;
    let entry: Value = serde_json::from_slice(&out.body.json()).unwrap();
    Ok((out, entry))
}

#[test]
fn adds_metadata_and_insert_id() {
    let mut t = Transformer::new(&config());
    let (out, entry) = run(
        &mut t,
        "member.events",
        &record(42, r#"{"event_id":"e1","v":1}"#),
    )
    .unwrap();
    assert_eq!(
        *out.table,
        TableRef {
            dataset: "events".into(),
            table: "member_events".into()
        }
    );
    assert_eq!(entry["insertId"], "e1");
    let json = &entry["json"];
    assert_eq!(json["event_id"], "e1");
    assert_eq!(json["_kafka_topic"], "member.events");
    assert_eq!(json["_kafka_partition"], 2);
    assert_eq!(json["_kafka_offset"], 42);
    assert_eq!(json["_kafka_timestamp"], "2023-11-14T22:13:20.123Z");
    assert!(
        json.get("_kafka_key").is_none(),
        "key column is off by default"
    );
}

#[test]
fn timestamps_are_rfc3339_with_milliseconds() {
    let mut second = None;
    let mut text = |ms: u64| {
        let mut out = Vec::new();
        write_timestamp(&mut out, ms, &mut second);
        String::from_utf8(out).unwrap()
    };
    for ms in [
        0,
        1_700_000_000_123,
        1_700_000_000_999,
        1_700_000_001_005,
        253_402_300_799_999,
    ] {
        let expected =
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string();
        assert_eq!(text(ms), format!("\"{expected}\""), "{ms}");
    }
    assert_eq!(text(253_402_300_800_000), "null", "after year 9999");
}

#[test]
fn drop_rename_and_switches() {
    let mut c = config();
    c.transform.drop = vec!["secret".into()];
    c.transform.rename.insert("v".into(), "value".into());
    c.transform.metadata.offset = false;
    c.transform.metadata.key = true;
    c.bigquery.insert_id = InsertIdMode::None;
    let mut t = Transformer::new(&c);
    let (_, entry) = run(
        &mut t,
        "t",
        &record(1, r#"{"event_id":"e1","v":1,"secret":"x"}"#),
    )
    .unwrap();
    assert!(entry.get("insertId").is_none());
    let json = &entry["json"];
    assert!(json.get("secret").is_none());
    assert!(json.get("v").is_none());
    assert_eq!(json["value"], 1);
    assert!(json.get("_kafka_offset").is_none());
    assert_eq!(json["_kafka_key"], "member-7");
}

#[test]
fn rename_onto_existing_field_is_an_error() {
    let mut c = config();
    c.transform.rename.insert("a".into(), "b".into());
    let mut t = Transformer::new(&c);
    let err = run(&mut t, "t", &record(1, r#"{"a":1,"b":2}"#)).unwrap_err();
    assert_eq!(err.class(), "rename_collision");
}

#[test]
fn routes_configured_topics() {
    let mut c = config();
    c.bigquery.tables.insert("a".into(), "table_a".into());
    c.bigquery.tables.insert("b".into(), "other.table_b".into());
    let mut t = Transformer::new(&c);
    assert_eq!(t.table_for(&"a".into()).to_string(), "events.table_a");
    assert_eq!(t.table_for(&"b".into()).to_string(), "other.table_b");
    assert_eq!(t.table_for(&"c-1".into()).to_string(), "events.c_1");
    assert_eq!(sanitize_table_name("über-topic.v2"), "_ber_topic_v2");
    assert!(TableRef::parse("a.b.c", "d").is_none());
    assert!(TableRef::parse("bad name", "d").is_none());
}

#[test]
fn routes_by_a_record_field_with_a_fallback() {
    let c = crate::config::Config {
        bigquery: crate::config::BigQueryConfig {
            dataset: "events".into(),
            tables: crate::config::Tables(vec![crate::config::TableConfig {
                topics: vec!["member-events".into()],
                table: "raw.unrouted".into(),
                table_from: Some("/event_type".into()),
                ..Default::default()
            }]),
            ..config().bigquery
        },
        ..config()
    };
    let mut t = Transformer::new(&c);
    let table = |t: &mut Transformer, payload: &str| {
        run(t, "member-events", &record(1, payload))
            .unwrap()
            .0
            .table
            .to_string()
    };
    assert_eq!(table(&mut t, r#"{"event_type":"sign-up"}"#), "raw.sign_up");
    assert_eq!(table(&mut t, r#"{"event_type":"login"}"#), "raw.login");
    assert_eq!(
        table(&mut t, r#"{"event_type":"sign-up","x":1}"#),
        "raw.sign_up"
    );
    assert_eq!(table(&mut t, r#"{"event_type":7}"#), "raw.7");
    for fallback in [
        r#"{}"#,
        r#"{"event_type":null}"#,
        r#"{"event_type":""}"#,
        r#"{"event_type":{"a":1}}"#,
    ] {
        assert_eq!(table(&mut t, fallback), "raw.unrouted", "{fallback}");
    }
    // Other topics are routed by topic.
    assert_eq!(
        run(&mut t, "other", &record(1, r#"{"event_type":"login"}"#))
            .unwrap()
            .0
            .table
            .to_string(),
        "events.other"
    );
    // The field is read from the record as produced, before drops and renames.
    let mut c2 = c.clone();
    c2.transform.drop = vec!["event_type".into()];
    let mut t2 = Transformer::new(&c2);
    let (out, entry) = run(
        &mut t2,
        "member-events",
        &record(1, r#"{"event_type":"login"}"#),
    )
    .unwrap();
    assert_eq!(out.table.to_string(), "raw.login");
    assert!(entry["json"].get("event_type").is_none());
}

#[test]
fn sanitizes_field_names_when_asked() {
    let mut c = config();
    let payload = r#"{"event_id":"e1","user-id":1,"1st":{"a.b":2}}"#;
    let (_, entry) = run(&mut Transformer::new(&c), "t", &record(1, payload)).unwrap();
    assert_eq!(entry["json"]["user-id"], 1, "off by default");
    c.bigquery.sanitize_field_names = true;
    let mut t = Transformer::new(&c);
    let (_, entry) = run(&mut t, "t", &record(1, payload)).unwrap();
    assert_eq!(entry["json"]["user_id"], 1);
    assert_eq!(entry["json"]["_1st"]["a_b"], 2);
    assert_eq!(entry["insertId"], "e1");
    let err = run(&mut t, "t", &record(2, r#"{"a-b":1,"a.b":2}"#)).unwrap_err();
    assert_eq!(err.class(), "field_name_collision");
}

#[test]
fn dedup_key_choices() {
    let rec = record(1, r#"{"event_id":"e1","n":{"id":7}}"#);
    let hash_of = |key: DedupKey| {
        let mut c = config();
        c.dedup.key = key;
        let mut t = Transformer::new(&c);
        run(&mut t, "t", &rec).unwrap().0.dedup_hash
    };
    let by_id = hash_of(DedupKey::Pointer("/event_id".into()));
    let by_nested = hash_of(DedupKey::Pointer("/n/id".into()));
    let by_key = hash_of(DedupKey::KafkaKey);
    let by_payload = hash_of(DedupKey::PayloadHash);
    let missing = hash_of(DedupKey::Pointer("/absent".into()));
    assert!(by_id.is_some() && by_nested.is_some() && by_key.is_some());
    assert_ne!(by_id, by_nested);
    assert_ne!(by_id, by_key);
    assert_eq!(
        missing, by_payload,
        "a missing key falls back to the payload hash"
    );
    assert_eq!(hash_of(DedupKey::None), None);

    // The same event id in another payload is the same key; in another table it is not.
    let mut t = Transformer::new(&config());
    let a = run(&mut t, "t", &record(1, r#"{"event_id":"e1","x":1}"#))
        .unwrap()
        .0
        .dedup_hash;
    let b = run(&mut t, "t", &record(2, r#"{"event_id":"e1","x":2}"#))
        .unwrap()
        .0
        .dedup_hash;
    let c = run(&mut t, "u", &record(3, r#"{"event_id":"e1","x":1}"#))
        .unwrap()
        .0
        .dedup_hash;
    assert_eq!(a, b);
    assert_ne!(a, c);
    // The key is the string's text: written with an escape, it is the same key.
    let escaped = run(&mut t, "t", &record(4, r#"{"event_id":"e\u0031","x":3}"#))
        .unwrap()
        .0
        .dedup_hash;
    assert_eq!(a, escaped);
}

#[test]
fn long_keys_become_hashed_insert_ids() {
    let long = "k".repeat(300);
    let mut t = Transformer::new(&config());
    let (_, entry) = run(
        &mut t,
        "t",
        &record(1, &format!(r#"{{"event_id":"{long}"}}"#)),
    )
    .unwrap();
    assert_eq!(entry["insertId"].as_str().unwrap().len(), 32);
}

#[test]
fn oversize_rows_are_rejected() {
    let mut c = config();
    c.batch.max_bytes = 1024;
    let mut t = Transformer::new(&c);
    let big = format!(r#"{{"event_id":"e","blob":"{}"}}"#, "x".repeat(2000));
    let err = run(&mut t, "t", &record(1, &big)).unwrap_err();
    assert_eq!(err.class(), "oversize");
    assert!(err.to_string().contains("1024"), "{err}");
}

/// With its table's format known, a row is the protobuf message the writer would have encoded from
/// its insertAll entry; a row that does not fit, or a table whose format was dropped, stays JSON.
#[test]
fn rows_of_a_table_with_a_known_format_are_protobuf_as_their_entry_would_encode() {
    use crate::stage::convert::parse_object;
    use crate::stage::proto::RowFormat;
    use crate::stage::schema::FieldSchema;

    let tp = Tp::new("member.events", 2);
    // Sanitized names make the row from another text than the record's.
    for (timestamp_type, sanitize) in [("TIMESTAMP", false), ("STRING", false), ("TIMESTAMP", true)]
    {
        let mut c = config();
        c.transform.metadata.key = true;
        c.bigquery.sanitize_field_names = sanitize;
        let mut schema = [
            ("event_id", "STRING", "REQUIRED"),
            ("v", "INTEGER", "NULLABLE"),
            ("tags", "STRING", "REPEATED"),
            ("attributes", "RECORD", "NULLABLE"),
            ("_kafka_topic", "STRING", "NULLABLE"),
            ("_kafka_partition", "INTEGER", "NULLABLE"),
            ("_kafka_offset", "INTEGER", "NULLABLE"),
            ("_kafka_timestamp", timestamp_type, "NULLABLE"),
            ("_kafka_key", "STRING", "NULLABLE"),
        ]
        .map(|(name, t, mode)| FieldSchema::new(name, t, mode));
        schema[3].fields = vec![
            FieldSchema::new("ip", "STRING", "REQUIRED"),
            FieldSchema::new("n", "INTEGER", "NULLABLE"),
        ];
        let format = Arc::new(RowFormat::new(&schema).unwrap());
        let mut plain = Transformer::new(&c);
        let table = plain.table_for(&tp.topic);
        let formats = RowFormats::default();
        formats.set(&table, Some(Arc::clone(&format)));
        let mut proto = Transformer::new(&c).with_formats(Some(formats.clone()));
        let row = |t: &mut Transformer, offset: i64, payload: &str| {
            let rec = record(offset, payload);
            let object = parse_object(rec.payload.as_deref()).unwrap();
            t.apply_object(&tp, &rec, &object).unwrap().body
        };
        for (offset, payload) in [
            (1, r#"{"event_id":"e1","v":1,"tags":["a","b"]}"#),
            (2, r#"{"v":"7","event_id":"e\u0032","tags":null}"#),
            // RECORDs from the members the converter found (no escapes), one of them empty.
            (
                5,
                r#"{"event_id":"e5","tags":["x"],"attributes":{"n":2,"ip":"10.0.0.1"}}"#,
            ),
            (
                6,
                r#"{"attributes":{},"v":3,"event_id":"e6","attributes":{"ip":"b","n":4}}"#,
            ),
            // Sanitized, its RECORD starts where it does in the record, with its members sorted.
            (7, r#"{"attributes":{"n":2,"ip":"x"},"event_id":"e7"}"#),
        ] {
            let entry = row(&mut plain, offset, payload).into_json();
            let RowBody::Proto(p) = row(&mut proto, offset, payload) else {
                panic!("{payload}: not protobuf");
            };
            assert!(Arc::ptr_eq(&p.format, &format));
            let mut expected = Vec::new();
            format.encode_entry(&entry, &mut expected).unwrap();
            assert_eq!(&p.bytes[..], &expected[..], "{payload} ({timestamp_type})");
        }
        let new_field = r#"{"event_id":"e3","new_field":1}"#;
        assert!(
            matches!(row(&mut proto, 3, new_field), RowBody::Json(_)),
            "a member the table lacks: an entry, for the writer and table management"
        );
        formats.set(&table, None);
        assert!(
            matches!(row(&mut proto, 4, r#"{"event_id":"e4"}"#), RowBody::Json(_)),
            "the format dropped (the table changed): entries again"
        );
    }
}

#[test]
fn a_decoded_key_is_the_kafka_key_column_and_the_kafka_key_dedup() {
    use crate::stage::convert::parse_object;
    use crate::stage::proto::RowFormat;
    use crate::stage::schema::FieldSchema;

    let mut c = config();
    c.transform.metadata.key = true;
    c.dedup.key = DedupKey::KafkaKey;
    let tp = Tp::new("t", 2);
    let decoded = br#"{"member_id":7}"#;
    // The record's own key is its wire format (schema id 9): bytes that differ per schema id.
    let mut rec = record(1, r#"{"event_id":"e1"}"#);
    rec.key = Some(vec![0, 0, 0, 0, 9, 14]);
    let mut object = parse_object(rec.payload.as_deref()).unwrap();
    object.key = Some(decoded.to_vec());
    let mut t = Transformer::new(&c);
    let row = t.apply_object(&tp, &rec, &object).unwrap();
    let entry: Value = serde_json::from_slice(&row.body.json()).unwrap();
    assert_eq!(entry["json"]["_kafka_key"], r#"{"member_id":7}"#);
    // The same key under another schema id (other bytes) is the same dedup key; the raw bytes
    // are not what is compared.
    let mut same = rec.clone();
    same.key = Some(vec![0, 0, 0, 0, 10, 14]);
    let again = t.apply_object(&tp, &same, &object).unwrap();
    assert_eq!(again.dedup_hash, row.dedup_hash);
    let mut plain = rec.clone();
    plain.key = Some(decoded.to_vec());
    let (by_bytes, _) = run(&mut t, "t", &plain).unwrap();
    assert_eq!(by_bytes.dedup_hash, row.dedup_hash);
    let undecoded = parse_object(rec.payload.as_deref()).unwrap();
    let raw = t.apply_object(&tp, &rec, &undecoded).unwrap();
    assert_ne!(raw.dedup_hash, row.dedup_hash);

    // On the Storage Write API path, the same column.
    let schema = [
        ("event_id", "STRING", "NULLABLE"),
        ("_kafka_topic", "STRING", "NULLABLE"),
        ("_kafka_partition", "INTEGER", "NULLABLE"),
        ("_kafka_offset", "INTEGER", "NULLABLE"),
        ("_kafka_timestamp", "TIMESTAMP", "NULLABLE"),
        ("_kafka_key", "STRING", "NULLABLE"),
    ]
    .map(|(name, t, mode)| FieldSchema::new(name, t, mode));
    let format = Arc::new(RowFormat::new(&schema).unwrap());
    let formats = RowFormats::default();
    formats.set(&t.table_for(&tp.topic), Some(Arc::clone(&format)));
    let mut proto = Transformer::new(&c).with_formats(Some(formats));
    let RowBody::Proto(p) = proto.apply_object(&tp, &rec, &object).unwrap().body else {
        panic!("not protobuf");
    };
    let mut expected = Vec::new();
    format
        .encode_entry(&row.body.into_json(), &mut expected)
        .unwrap();
    assert_eq!(&p.bytes[..], &expected[..]);
}
