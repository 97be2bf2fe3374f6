//! Protobuf and JSON Schema topics through a Schema Registry (issue 18): records in the registry's
//! wire format, with schemas that reference other registered schemas, decoded and written by
//! content (on insertAll and on the Storage Write API); bad input is a record failure with its
//! original bytes dead-lettered under a clear class; the registry going down mid-run while a new
//! schema version arrives holds those records back — nothing written, dead-lettered or committed
//! past them — and every row arrives once it answers again.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bqsink_actors::config::{Tolerance, ValueFormat};
use bqsink_actors::stage::registered::protobuf::ProtoSchema;
use bqsink_actors::stage::registered::wire;
use bqsink_devtools::registry::Registry;
use bqsink_devtools::sink::{Sink, SinkOptions};
use common::*;
use prost::Message as _;
use prost_reflect::{DynamicMessage, Kind, MapKey, MessageDescriptor, Value as Proto};
use serde_json::{json, Value};

const PROTO_TOPIC: &str = "members-proto";
const JSON_TOPIC: &str = "members-jsonschema";
const DLQ: &str = "members-registry-dlq";

const ADDRESS_PROTO: &str = r#"syntax = "proto3";
package common;
message Address {
  string city = 1;
  optional int32 zip = 2;
}
"#;

const MEMBER_PROTO: &str = r#"syntax = "proto3";
package shop;
import "google/protobuf/timestamp.proto";
import "common/address.proto";

message Member {
  string event_id = 1;
  int64 member_id = 2;
  optional string nickname = 3;
  repeated string tags = 4;
  common.Address address = 5;
  google.protobuf.Timestamp joined = 6;
  Tier tier = 7;
  map<string, int32> scores = 8;
  oneof contact {
    string email = 9;
    string phone = 10;
  }
  enum Tier { FREE = 0; GOLD = 1; }
}
"#;

/// MEMBER_PROTO with a field added (a compatible evolution).
fn member_proto_v2() -> String {
    MEMBER_PROTO.replace("  enum Tier", "  string note = 11;\n  enum Tier")
}

const ADDRESS_JSON: &str = r#"{"type": "object", "properties": {"city": {"type": "string"},
  "zip": {"type": ["integer", "null"]}}, "required": ["city"]}"#;

const MEMBER_JSON: &str = r#"{
  "$schema": "http://json-schema.org/draft-07/schema#",
  "type": "object",
  "properties": {
    "event_id": {"type": "string"},
    "member_id": {"type": "integer"},
    "name": {"type": "string", "maxLength": 40},
    "address": {"$ref": "address.json"}
  },
  "required": ["event_id", "member_id", "name"]
}"#;

fn descriptor(text: &str) -> MessageDescriptor {
    let refs = [("common/address.proto".to_owned(), ADDRESS_PROTO.to_owned())];
    ProtoSchema::parse(0, text, &refs)
        .unwrap()
        .message(&[0])
        .unwrap()
}

fn message_field(d: &MessageDescriptor, name: &str) -> DynamicMessage {
    match d.get_field_by_name(name).unwrap().kind() {
        Kind::Message(m) => DynamicMessage::new(m),
        _ => panic!("{name}"),
    }
}

/// Member `i` as a Protobuf message of `d` (version 2 sets `note`), in the wire format.
fn proto_member(d: &MessageDescriptor, id: u32, i: i64, version: u32) -> Vec<u8> {
    let mut m = DynamicMessage::new(d.clone());
    let set = |m: &mut DynamicMessage, k: &str, v: Proto| m.set_field_by_name(k, v);
    set(&mut m, "event_id", Proto::String(format!("p-{i}")));
    set(&mut m, "member_id", Proto::I64(1000 + i));
    if i % 2 == 0 {
        set(&mut m, "nickname", Proto::String(format!("nick{i}")));
    }
    let tags = (0..i % 3).map(|t| Proto::String(format!("t{t}"))).collect();
    set(&mut m, "tags", Proto::List(tags));
    let mut address = message_field(d, "address");
    set(&mut address, "city", Proto::String("Seoul".into()));
    set(&mut address, "zip", Proto::I32(4500 + i as i32));
    set(&mut m, "address", Proto::Message(address));
    let mut joined = message_field(d, "joined");
    set(&mut joined, "seconds", Proto::I64(1_700_000_000 + i));
    set(&mut joined, "nanos", Proto::I32(250_000_000));
    set(&mut m, "joined", Proto::Message(joined));
    set(&mut m, "tier", Proto::EnumNumber((i % 2) as i32));
    let scores = HashMap::from([
        (MapKey::String("math".into()), Proto::I32(i as i32)),
        (MapKey::String("art".into()), Proto::I32(2 * i as i32)),
    ]);
    set(&mut m, "scores", Proto::Map(scores));
    if i % 3 == 0 {
        set(&mut m, "email", Proto::String(format!("m{i}@example.com")));
    }
    if version == 2 {
        set(&mut m, "note", Proto::String(format!("v2 #{i}")));
    }
    let mut body = wire::encode_indexes(&[0]);
    m.encode(&mut body).unwrap();
    wire::encode(id, &body)
}

/// The row bqsink must write for `proto_member(i, version)` (storage: the Storage Write API's
/// TIMESTAMP, µs since the epoch, as the fake reads it back).
fn proto_row(i: i64, version: u32, storage: bool) -> Value {
    let joined = if storage {
        json!((1_700_000_000 + i) * 1_000_000 + 250_000)
    } else {
        json!(format!(
            "2023-11-14T22:{:02}:{:02}.250000Z",
            13 + (20 + i) / 60,
            (20 + i) % 60
        ))
    };
    let mut row = json!({
        "contact_0": if i % 3 == 0 { json!({"email": format!("m{i}@example.com")}) } else { Value::Null },
        "event_id": format!("p-{i}"),
        "member_id": 1000 + i,
        "nickname": if i % 2 == 0 { json!(format!("nick{i}")) } else { Value::Null },
        "tags": (0..i % 3).map(|t| format!("t{t}")).collect::<Vec<_>>(),
        "address": {"city": "Seoul", "zip": 4500 + i},
        "joined": joined,
        "tier": if i % 2 == 0 { "FREE" } else { "GOLD" },
        "scores": [{"key": "art", "value": 2 * i}, {"key": "math", "value": i}],
    });
    if version == 2 {
        row["note"] = json!(format!("v2 #{i}"));
    }
    row
}

fn json_member(id: u32, i: i64) -> Vec<u8> {
    let value = json!({
        "event_id": format!("j-{i}"),
        "member_id": 2000 + i,
        "name": format!("member {i}"),
        "address": {"city": "Busan", "zip": if i % 2 == 0 { json!(i) } else { Value::Null }},
    });
    wire::encode(id, &serde_json::to_vec(&value).unwrap())
}

/// The BigQuery columns of the Protobuf members (kafka-connect-bigquery's mapping), for the
/// Storage Write API's run.
fn proto_fields() -> Value {
    json!([
        {"name": "contact_0", "type": "RECORD", "fields": [
            {"name": "email", "type": "STRING"}, {"name": "phone", "type": "STRING"}]},
        {"name": "event_id", "type": "STRING"},
        {"name": "member_id", "type": "INTEGER"},
        {"name": "nickname", "type": "STRING"},
        {"name": "tags", "type": "STRING", "mode": "REPEATED"},
        {"name": "address", "type": "RECORD", "fields": [
            {"name": "city", "type": "STRING"}, {"name": "zip", "type": "INTEGER"}]},
        {"name": "joined", "type": "TIMESTAMP"},
        {"name": "tier", "type": "STRING"},
        {"name": "scores", "type": "RECORD", "mode": "REPEATED", "fields": [
            {"name": "key", "type": "STRING"}, {"name": "value", "type": "INTEGER"}]},
        {"name": "note", "type": "STRING"},
        {"name": "_kafka_topic", "type": "STRING"},
        {"name": "_kafka_partition", "type": "INTEGER"},
        {"name": "_kafka_offset", "type": "INTEGER"},
        {"name": "_kafka_timestamp", "type": "TIMESTAMP"}
    ])
}

fn json_fields() -> Value {
    json!([
        {"name": "event_id", "type": "STRING"},
        {"name": "member_id", "type": "INTEGER"},
        {"name": "name", "type": "STRING"},
        {"name": "address", "type": "RECORD", "fields": [
            {"name": "city", "type": "STRING"}, {"name": "zip", "type": "INTEGER"}]},
        {"name": "_kafka_topic", "type": "STRING"},
        {"name": "_kafka_partition", "type": "INTEGER"},
        {"name": "_kafka_offset", "type": "INTEGER"},
        {"name": "_kafka_timestamp", "type": "TIMESTAMP"}
    ])
}

/// `v` without null members and empty arrays, at any depth: the Storage Write API's rows read back
/// without the columns a row left NULL or empty.
fn without_empty(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
                .map(|(k, v)| (k.clone(), without_empty(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_empty).collect()),
        other => other.clone(),
    }
}

/// Asserts `rows` hold exactly the `want` rows, by event_id and content (`storage`: as the Storage
/// Write API's rows read back, [`without_empty`]).
fn assert_rows(rows: &[Value], want: &[Value], storage: bool) {
    let by_id: HashMap<&str, &Value> = rows
        .iter()
        .map(|r| (r["event_id"].as_str().unwrap(), r))
        .collect();
    assert_eq!(rows.len(), want.len(), "{:?}", rows.first());
    assert_eq!(by_id.len(), want.len(), "no duplicate rows");
    for w in want {
        let id = w["event_id"].as_str().unwrap();
        let row = by_id.get(id).unwrap_or_else(|| panic!("{id} missing"));
        let w = if storage { without_empty(w) } else { w.clone() };
        for (k, v) in w.as_object().unwrap() {
            let got = if storage {
                without_empty(&row[k])
            } else {
                row[k].clone()
            };
            assert_eq!(&got, v, "{id}.{k} in {row}");
        }
        if storage {
            for k in ["contact_0", "nickname", "tags", "note"] {
                assert!(w.get(k).is_some() || row[k].is_null(), "{id}.{k} in {row}");
            }
        }
    }
}

#[test]
fn protobuf_and_json_schema_records_are_written_by_content_and_an_outage_mid_run_waits() {
    run(false);
}

#[test]
fn protobuf_and_json_schema_records_reach_the_storage_write_api_by_content() {
    run(true);
}

fn run(storage: bool) {
    let registry = Registry::start().unwrap();
    registry.register_subject("address-proto", 1, "PROTOBUF", ADDRESS_PROTO);
    let proto_refs = [("common/address.proto", "address-proto", 1)];
    registry.register_with_references(11, "PROTOBUF", MEMBER_PROTO, &proto_refs);
    registry.register_with_references(12, "PROTOBUF", &member_proto_v2(), &proto_refs);
    registry.register_subject("address-json", 3, "JSON", ADDRESS_JSON);
    registry.register_with_references(
        21,
        "JSON",
        MEMBER_JSON,
        &[("address.json", "address-json", 3)],
    );
    registry.register(31, r#"{"type": "record", "name": "A", "fields": []}"#);
    let (v1, v2) = (descriptor(MEMBER_PROTO), descriptor(&member_proto_v2()));

    let (cluster, bootstrap) = cluster(PROTO_TOPIC, 2);
    cluster.create_topic(JSON_TOPIC, 1, 1).unwrap();
    cluster.create_topic(DLQ, 1, 1).unwrap();
    let p = bqsink_devtools::kafka::producer(&bootstrap).unwrap();
    for i in 0..60 {
        let key = format!("k{i}");
        bqsink_devtools::kafka::produce(&p, PROTO_TOPIC, &key, &proto_member(&v1, 11, i, 1))
            .unwrap();
    }
    rdkafka::producer::Producer::flush(&p, Duration::from_secs(30)).unwrap();
    let good_json: Vec<Vec<u8>> = (0..50).map(|i| json_member(21, i)).collect();
    produce_to_partition(&bootstrap, JSON_TOPIC, 0, &good_json);
    // Bad input, each a record failure: bytes cut short, a message index the schema lacks, an
    // Avro schema id on a Protobuf topic, an id the registry does not know; a value that breaks
    // its JSON Schema (in the referenced schema), and JSON that is no object.
    let bad_proto: Vec<Vec<u8>> = vec![
        {
            let mut w = proto_member(&v1, 11, 7, 1);
            w.truncate(13);
            w
        },
        wire::encode(11, &wire::encode_indexes(&[4])),
        wire::encode(31, &[0]),
        proto_member(&v1, 99, 1, 1),
    ];
    produce_to_partition(&bootstrap, PROTO_TOPIC, 0, &bad_proto);
    let bad_json: Vec<Vec<u8>> = vec![
        wire::encode(
            21,
            br#"{"event_id":"j-x","member_id":1,"name":"x","address":{"zip":1}}"#,
        ),
        wire::encode(21, b"[1, 2]"),
    ];
    produce_to_partition(&bootstrap, JSON_TOPIC, 0, &bad_json);

    let sink = Sink::start(SinkOptions {
        keep_rows: true,
        id_pointer: Some("/event_id".into()),
        ..SinkOptions::default()
    })
    .unwrap();
    let group = if storage { "g-reg-storage" } else { "g-reg" };
    let mut config = config(&bootstrap, group, PROTO_TOPIC, sink.url());
    config.kafka.topics.push(JSON_TOPIC.into());
    if storage {
        use_storage_write(&mut config, &sink);
        config.bigquery.delivery = bqsink_actors::config::Delivery::ExactlyOnce;
        sink.manage_tables();
        sink.create_table("ds.members_proto", proto_fields());
        sink.create_table("ds.members_jsonschema", json_fields());
    }
    config.kafka.formats = [
        (PROTO_TOPIC.to_owned(), ValueFormat::Protobuf),
        (JSON_TOPIC.to_owned(), ValueFormat::JsonSchema),
    ]
    .into_iter()
    .collect();
    config.registry.url = registry.url.clone();
    config.errors.tolerance = Tolerance::All;
    config.errors.deadletterqueue.topic_name = DLQ.into();
    config.validate().unwrap();

    let pipeline = start(&config);
    wait_fully_committed(&bootstrap, group, PROTO_TOPIC, 2, Duration::from_secs(60));
    wait_fully_committed(&bootstrap, group, JSON_TOPIC, 1, Duration::from_secs(60));
    wait_until(Duration::from_secs(30), "the first rows", || {
        sink.rows("ds.members_proto").len() == 60 && sink.rows("ds.members_jsonschema").len() == 50
    });
    let dead_before = watermarks(&bootstrap, DLQ, 1)[0].1;
    assert_eq!(dead_before, 6, "the six bad records dead-lettered");

    // The registry goes down as records of a new schema version arrive: they wait.
    registry.set_down(true);
    let before = watermarks(&bootstrap, PROTO_TOPIC, 2);
    for i in 60..100 {
        let key = format!("k{i}");
        bqsink_devtools::kafka::produce(&p, PROTO_TOPIC, &key, &proto_member(&v2, 12, i, 2))
            .unwrap();
    }
    rdkafka::producer::Producer::flush(&p, Duration::from_secs(30)).unwrap();
    wait_until(
        Duration::from_secs(30),
        "lookups of the new version retried",
        || registry.lookups(12) >= 3,
    );
    assert_eq!(
        sink.rows("ds.members_proto").len(),
        60,
        "nothing of the new version written"
    );
    assert_eq!(
        watermarks(&bootstrap, DLQ, 1)[0].1,
        dead_before,
        "nothing dead-lettered"
    );
    let held = committed(&bootstrap, group, PROTO_TOPIC, 2);
    for (c, (_, high)) in held.iter().zip(&before) {
        assert!(
            c.unwrap_or(0) <= *high,
            "nothing committed past the waiting records: {held:?}"
        );
    }
    let sinks = pipeline.stats.health.snapshot();
    assert!(
        sinks.iter().any(|s| s.sink.starts_with("schema registry")),
        "the registry shows as a sink in trouble: {sinks:?}"
    );

    // Back up: every record is handled.
    registry.set_down(false);
    wait_fully_committed(&bootstrap, group, PROTO_TOPIC, 2, Duration::from_secs(60));
    assert_eq!(pipeline.shutdown().unwrap(), 0);

    let want: Vec<Value> = (0..100)
        .map(|i| proto_row(i, if i < 60 { 1 } else { 2 }, storage))
        .collect();
    assert_rows(&sink.rows("ds.members_proto"), &want, storage);
    let want: Vec<Value> = good_json
        .iter()
        .map(|w| serde_json::from_slice(&w[5..]).unwrap())
        .collect();
    assert_rows(&sink.rows("ds.members_jsonschema"), &want, storage);

    // The dead letters: the original bytes, each with its class.
    let dead = read_topic(&bootstrap, DLQ);
    let mut got: Vec<(String, Vec<u8>)> = dead
        .iter()
        .map(|r| (r.class(), r.value.clone().unwrap_or_default()))
        .collect();
    let mut want: Vec<(String, Vec<u8>)> = [
        "protobuf_mismatch",
        "protobuf_mismatch",
        "wrong_schema_type",
        "unknown_schema_id",
    ]
    .iter()
    .zip(&bad_proto)
    .chain(["schema_violation", "not_an_object"].iter().zip(&bad_json))
    .map(|(c, v)| (c.to_string(), v.clone()))
    .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    let violation = dead
        .iter()
        .find_map(|r| {
            r.header("__connect.errors.exception.message")
                .filter(|m| m.contains("breaks"))
        })
        .expect("the violation's message");
    assert!(
        violation.contains("/address") && violation.contains("city"),
        "{violation}"
    );
}

/// The type of column `path` (dotted) in a table definition's schema.
fn column_type(def: &Value, path: &str) -> Option<String> {
    let mut fields = def["schema"]["fields"].as_array()?.clone();
    let mut found = None;
    for part in path.split('.') {
        let f = fields.iter().find(|f| f["name"] == part)?.clone();
        fields = f["fields"].as_array().cloned().unwrap_or_default();
        found = Some(f["type"].as_str()?.to_owned());
    }
    found
}

/// `auto_create_tables` creates the table from the registry's schema (a Timestamp is a TIMESTAMP
/// column, where rows alone would make it STRING); a version that adds a field patches the table
/// (`allow_new_fields`); a version that changes a field's type stops the table: its records are
/// not written, dead-lettered or committed, and the failure names the field.
#[test]
fn tables_are_created_and_extended_from_the_registry_and_an_incompatible_change_stops_them() {
    const T: &str = "members-proto-tables";
    let registry = Registry::start().unwrap();
    registry.register_subject("address-proto", 1, "PROTOBUF", ADDRESS_PROTO);
    let refs = [("common/address.proto", "address-proto", 1)];
    registry.register_with_references(11, "PROTOBUF", MEMBER_PROTO, &refs);
    registry.register_with_references(12, "PROTOBUF", &member_proto_v2(), &refs);
    let v3 = member_proto_v2().replace("int64 member_id = 2;", "string member_id = 2;");
    registry.register_with_references(13, "PROTOBUF", &v3, &refs);
    let (v1, v2) = (descriptor(MEMBER_PROTO), descriptor(&member_proto_v2()));

    let (cluster, bootstrap) = cluster(T, 1);
    cluster.create_topic(DLQ, 1, 1).unwrap();
    let first: Vec<Vec<u8>> = (0..10).map(|i| proto_member(&v1, 11, i, 1)).collect();
    produce_to_partition(&bootstrap, T, 0, &first);
    let sink = Sink::start(SinkOptions {
        keep_rows: true,
        id_pointer: Some("/event_id".into()),
        ..SinkOptions::default()
    })
    .unwrap();
    sink.manage_tables();
    sink.create_dataset("ds");
    let mut config = config(&bootstrap, "g-reg-tables", T, sink.url());
    config.kafka.formats = [(T.to_owned(), ValueFormat::Protobuf)]
        .into_iter()
        .collect();
    config.registry.url = registry.url.clone();
    config.bigquery.auto_create_tables = true;
    config.bigquery.allow_new_fields = true;
    config.errors.tolerance = Tolerance::All;
    config.errors.deadletterqueue.topic_name = DLQ.into();
    config.validate().unwrap();
    let pipeline = start(&config);
    let table = "ds.members_proto_tables";
    wait_until(Duration::from_secs(30), "the first rows", || {
        sink.rows(table).len() == 10
    });
    let def = sink.table(table).expect("the table was created");
    for (path, t) in [
        ("joined", "TIMESTAMP"),
        ("member_id", "INTEGER"),
        ("contact_0.email", "STRING"),
        ("scores.value", "INTEGER"),
        ("address.zip", "INTEGER"),
        ("_kafka_offset", "INTEGER"),
    ] {
        assert_eq!(
            column_type(&def, path).as_deref(),
            Some(t),
            "{path} in {def}"
        );
    }
    assert_eq!(column_type(&def, "note"), None);

    // A version that adds a field: the table gets it, the rows carry it.
    let second: Vec<Vec<u8>> = (10..20).map(|i| proto_member(&v2, 12, i, 2)).collect();
    produce_to_partition(&bootstrap, T, 0, &second);
    wait_until(Duration::from_secs(30), "the second rows", || {
        sink.rows(table).len() == 20
    });
    let def = sink.table(table).unwrap();
    assert_eq!(
        column_type(&def, "note").as_deref(),
        Some("STRING"),
        "{def}"
    );
    wait_fully_committed(&bootstrap, "g-reg-tables", T, 1, Duration::from_secs(30));

    // A version that changes member_id's type: the table stops.
    let v3d = descriptor(&v3);
    let mut m = DynamicMessage::new(v3d.clone());
    m.set_field_by_name("event_id", Proto::String("p-x".into()));
    m.set_field_by_name("member_id", Proto::String("x1".into()));
    let mut body = wire::encode_indexes(&[0]);
    m.encode(&mut body).unwrap();
    produce_to_partition(&bootstrap, T, 0, &[wire::encode(13, &body)]);
    wait_until(Duration::from_secs(30), "the table to stop", || {
        pipeline
            .stats
            .health
            .snapshot()
            .iter()
            .any(|s| s.last_error.contains("member_id"))
    });
    std::thread::sleep(Duration::from_millis(500));
    let sinks = pipeline.stats.health.snapshot();
    let state = sinks
        .iter()
        .find(|s| s.last_error.contains("member_id"))
        .unwrap();
    assert!(
        state.last_error.contains("schema id 13")
            && state
                .last_error
                .contains("from NULLABLE INTEGER to NULLABLE STRING"),
        "{state:?}"
    );
    assert_eq!(
        sink.rows(table).len(),
        20,
        "nothing of the conflicting version written"
    );
    assert_eq!(
        watermarks(&bootstrap, DLQ, 1)[0].1,
        0,
        "nothing dead-lettered"
    );
    assert_eq!(
        committed(&bootstrap, "g-reg-tables", T, 1)[0],
        Some(20),
        "not committed past it"
    );
    assert_eq!(
        column_type(&sink.table(table).unwrap(), "member_id").as_deref(),
        Some("INTEGER")
    );
    drop(pipeline);
}

/// An https registry behind a private CA that asks for a client certificate: with
/// `registry.ca_file` and `registry.identity_file` the schema is read; without the CA, or without
/// the client certificate, the lookup fails as a sink failure (the records would wait, never fail);
/// a CA file that holds no certificate is a start-up error naming the key.
#[test]
fn an_https_registry_behind_a_private_ca_with_client_certificates() {
    use bqsink::registry::HttpRegistry;
    use bqsink_actors::config::RegistryConfig;
    use bqsink_actors::registry::{RegistryError, SchemaRegistry};
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let signed = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        (cert, key)
    };
    let (server_cert, server_key) = signed("localhost");
    let (client_cert, client_key) = signed("bqsink");

    // The registry: TLS that asks for a client certificate signed by the CA, one answer.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server_cert.der().clone()], key_der)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    runtime.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let body = r#"{"schema":"{\"type\":\"record\",\"name\":\"R\",\"fields\":[]}"}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let ca_file = write("ca.pem", ca.pem());
    let identity_file = write(
        "client.pem",
        client_cert.pem() + &client_key.serialize_pem(),
    );
    let fetch = |config: &RegistryConfig| {
        let registry = HttpRegistry::from_config(config).unwrap().unwrap();
        runtime.block_on(registry.fetch(1))
    };
    let mut config = RegistryConfig {
        url: format!("https://localhost:{port}"),
        timeout_ms: 5_000,
        ..RegistryConfig::default()
    };
    // The system's roots do not know the CA.
    assert!(matches!(fetch(&config), Err(RegistryError::Unavailable(_))));
    // The CA, but no client certificate: the registry refuses the handshake.
    config.ca_file = ca_file.clone();
    assert!(matches!(fetch(&config), Err(RegistryError::Unavailable(_))));
    // Both: the schema.
    config.identity_file = identity_file;
    let schema = fetch(&config).expect("the schema over mutual TLS");
    assert!(schema.text.contains("\"name\":\"R\""), "{schema:?}");
    // A CA file without a certificate is a start-up error naming the key.
    config.ca_file = write("empty.pem", "not a certificate\n".into());
    let e = HttpRegistry::from_config(&config).err().expect("refused");
    assert!(e.to_string().contains("registry.ca_file"), "{e}");
}
