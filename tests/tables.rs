//! Table management through the whole pipeline (mock Kafka cluster + the insertAll fake keeping
//! tables like BigQuery): a missing dataset and tables created, with a configured schema and with
//! one inferred from the first batch, partitioned and clustered as configured; rows routed by a
//! record field with a fallback table; a field BigQuery rejected rows for added to the table and the
//! rows written; without `allow_new_fields` such rows are failures.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bqsink::bigquery::RestClient;
use bqsink::service::PipelineHandle;
use bqsink_actors::config::{Config, Tolerance};
use bqsink_devtools::generator::{Generator, Mix};
use bqsink_devtools::sink::{Sink, SinkOptions};
use common::*;
use serde_json::{json, Value};

const TOPIC: &str = "member-events";

fn sink() -> Sink {
    let sink = Sink::start(SinkOptions {
        keep_rows: true,
        id_pointer: None,
        ..Default::default()
    })
    .unwrap();
    sink.manage_tables();
    sink
}

fn start(config: &Config) -> PipelineHandle {
    PipelineHandle::spawn(
        config.clone(),
        Arc::new(RestClient::new(&config.bigquery).unwrap()),
    )
    .unwrap()
}

/// Generated member events, changed by `edit` (index, event object).
fn events(
    n: usize,
    seed: u64,
    mut edit: impl FnMut(usize, &mut serde_json::Map<String, Value>),
) -> Vec<bqsink_devtools::generator::Event> {
    Generator::new(Mix {
        duplicates: 0.0,
        malformed: 0.0,
        seed,
    })
    .take(n)
    .enumerate()
    .map(|(i, mut e)| {
        let mut v: Value = serde_json::from_slice(&e.payload).unwrap();
        edit(i, v.as_object_mut().unwrap());
        e.payload = serde_json::to_vec(&v).unwrap();
        e
    })
    .collect()
}

/// The (name, type, mode) of each field of a table definition's schema.
fn fields(def: &Value) -> Vec<(String, String, String)> {
    fields_of(&def["schema"]["fields"])
}

fn fields_of(fields: &Value) -> Vec<(String, String, String)> {
    fields
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_owned(),
                f["type"].as_str().unwrap().to_owned(),
                f["mode"].as_str().unwrap_or("NULLABLE").to_owned(),
            )
        })
        .collect()
}

fn field<'a>(def: &'a Value, name: &str) -> &'a Value {
    def["schema"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no field {name} in {def}"))
}

const SIGNUP_SCHEMA: &str = r#"[
  { name = "event_id", type = "STRING", mode = "REQUIRED" },
  { name = "member_id", type = "STRING", mode = "REQUIRED" },
  { name = "event_type", type = "STRING" },
  { name = "occurred_at", type = "TIMESTAMP" },
  { name = "channel", type = "STRING" },
  { name = "seq", type = "INTEGER" },
  { name = "attributes", type = "RECORD", fields = [
    { name = "ip", type = "STRING" }, { name = "plan", type = "STRING" },
    { name = "locale", type = "STRING" }, { name = "session", type = "STRING" },
  ] },
  { name = "_kafka_topic", type = "STRING" }, { name = "_kafka_partition", type = "INTEGER" },
  { name = "_kafka_offset", type = "INTEGER" }, { name = "_kafka_timestamp", type = "TIMESTAMP" },
]"#;

/// The routing entry: records go to the table their `event_type` names, else to `unrouted`;
/// routed tables without an entry of their own are partitioned by `occurred_at` and clustered by
/// `member_id`, with an inferred schema. `signup` has a configured schema and partitioning.
fn tables_toml() -> String {
    format!(
        r#"
[kafka]
topics = ["{TOPIC}"]
[bigquery]
write_api = "insert_all"
delivery = "at_least_once"
project = "test"
dataset = "members"
auto_create_tables = true
auto_create_dataset = true
allow_new_fields = true
[[bigquery.tables]]
topics = ["{TOPIC}"]
table = "unrouted"
table_from = "/event_type"
partition_field = "occurred_at"
clustering = ["member_id"]
[[bigquery.tables]]
table = "signup"
partition_field = "occurred_at"
partition_type = "HOUR"
clustering = ["member_id", "channel"]
schema = {SIGNUP_SCHEMA}
"#
    )
}

#[test]
fn tables_are_created_routed_by_field_and_gain_new_fields() {
    let (_cluster, bootstrap) = cluster(TOPIC, 3);
    // 1 in 10 events has no event_type (fallback table); from event 600 on, logins carry a new
    // field `referrer`, and some signups a new nested field `attributes.campaign`.
    let events = events(1_500, 31, |i, e| {
        if i % 10 == 3 {
            e.remove("event_type");
        } else if i >= 600 && e["event_type"] == "login" {
            e.insert("referrer".into(), json!(format!("r-{}", i % 7)));
        } else if i >= 600 && i % 5 == 0 && e["event_type"] == "signup" {
            e["attributes"]["campaign"] = json!("spring");
        }
    });
    let mut expected: HashMap<String, usize> = HashMap::new();
    for e in &events {
        let v: Value = serde_json::from_slice(&e.payload).unwrap();
        let table = v["event_type"].as_str().unwrap_or("unrouted").to_owned();
        *expected.entry(format!("members.{table}")).or_default() += 1;
    }
    // Events before 600 first, so that every table exists before the new fields arrive.
    produce(&bootstrap, TOPIC, &events[..600]);
    let sink = sink();

    let mut config = config(&bootstrap, "g-tables", TOPIC, sink.url());
    let tables = bqsink::settings::from_toml(&tables_toml())
        .unwrap()
        .bigquery;
    config.bigquery = bqsink_actors::config::BigQueryConfig {
        endpoint: config.bigquery.endpoint.clone(),
        request_timeout_ms: config.bigquery.request_timeout_ms,
        ..tables
    };
    config.batch.max_rows = 100;
    let pipeline = start(&config);
    wait_fully_committed(&bootstrap, "g-tables", TOPIC, 3, Duration::from_secs(90));
    assert!(sink.table("members.login").is_some() && sink.table("members.signup").is_some());
    produce(&bootstrap, TOPIC, &events[600..]);
    wait_fully_committed(&bootstrap, "g-tables", TOPIC, 3, Duration::from_secs(90));
    let stats = pipeline.stats.snapshot();
    assert_eq!(pipeline.shutdown().unwrap(), 0);
    assert_eq!(stats.failed, 0);

    // Routing by field, with the fallback: every event in its table, once.
    assert_eq!(
        expected.len(),
        7,
        "6 event types and the fallback: {expected:?}"
    );
    for (table, n) in &expected {
        let rows = sink.rows(table);
        assert_eq!(rows.len(), *n, "{table}");
        let by_id = count_by(&rows, "event_id");
        assert_eq!(by_id.len(), *n, "{table}: each event once");
    }
    assert!(sink
        .rows("members.unrouted")
        .iter()
        .all(|r| r.get("event_type").is_none()));
    assert_eq!(sink.datasets(), ["members"], "the dataset was created");

    // The configured table: its schema, partitioning and clustering as configured.
    let signup = sink.table("members.signup").unwrap();
    assert_eq!(
        signup["timePartitioning"],
        json!({"type": "HOUR", "field": "occurred_at"})
    );
    assert_eq!(
        signup["clustering"],
        json!({"fields": ["member_id", "channel"]})
    );
    assert_eq!(
        &fields(&signup)[..4],
        &[
            ("event_id".into(), "STRING".into(), "REQUIRED".into()),
            ("member_id".into(), "STRING".into(), "REQUIRED".into()),
            ("event_type".into(), "STRING".into(), "NULLABLE".into()),
            ("occurred_at".into(), "TIMESTAMP".into(), "NULLABLE".into()),
        ]
    );
    // … which gained the nested field some signups brought, and kept their rows whole.
    assert_eq!(
        fields_of(&field(&signup, "attributes")["fields"])
            .last()
            .unwrap(),
        &(
            "campaign".to_string(),
            "STRING".to_string(),
            "NULLABLE".to_string()
        )
    );
    let campaigns = sink
        .rows("members.signup")
        .iter()
        .filter(|r| r["attributes"]["campaign"] == "spring")
        .count();
    assert!(campaigns > 0);

    // Routed tables: an inferred schema, partitioned and clustered like their routing entry.
    let logout = sink.table("members.logout").unwrap();
    assert_eq!(
        logout["timePartitioning"],
        json!({"type": "DAY", "field": "occurred_at"})
    );
    assert_eq!(logout["clustering"], json!({"fields": ["member_id"]}));
    let inferred: HashMap<String, (String, String)> = fields(&logout)
        .into_iter()
        .map(|(n, t, m)| (n, (t, m)))
        .collect();
    for (name, ty) in [
        ("event_id", "STRING"),
        ("occurred_at", "TIMESTAMP"),
        ("seq", "INTEGER"),
        ("attributes", "RECORD"),
        ("_kafka_offset", "INTEGER"),
        ("_kafka_timestamp", "TIMESTAMP"),
    ] {
        assert_eq!(
            inferred[name],
            (ty.to_string(), "NULLABLE".to_string()),
            "{name}"
        );
    }
    assert_eq!(fields_of(&field(&logout, "attributes")["fields"]).len(), 4);

    // Schema evolution: `referrer` was added to login once, and the rows that brought it written.
    let login = sink.table("members.login").unwrap();
    assert_eq!(
        field(&login, "referrer"),
        &json!({"name": "referrer", "type": "STRING", "mode": "NULLABLE"})
    );
    let with_referrer = events
        .iter()
        .filter(|e| String::from_utf8_lossy(&e.payload).contains("\"referrer\""))
        .count();
    let rows = sink.rows("members.login");
    assert_eq!(
        rows.iter().filter(|r| r["referrer"].is_string()).count(),
        with_referrer
    );
    let calls = sink.calls();
    assert_eq!(
        calls
            .iter()
            .filter(|c| *c == "tables.patch members.login")
            .count(),
        1,
        "{calls:?}"
    );
    // Batches for several new tables may each try to create the dataset: one succeeds, the others
    // find it there (409).
    assert!(
        calls.iter().any(|c| c.starts_with("datasets.insert")),
        "{calls:?}"
    );
}

#[test]
fn without_allow_new_fields_rows_with_unknown_fields_are_failures() {
    let (_cluster, bootstrap) = cluster(TOPIC, 2);
    let events = events(400, 32, |i, e| {
        if i % 4 == 0 {
            e.insert("referrer".into(), json!("x"));
        }
    });
    produce(&bootstrap, TOPIC, &events);
    let sink = sink();
    // The table exists with every column but `referrer`.
    let s = |name: &str, ty: &str| json!({"name": name, "type": ty});
    sink.create_table(
        "ds.member_events",
        json!([
            s("event_id", "STRING"), s("member_id", "STRING"), s("event_type", "STRING"),
            s("occurred_at", "TIMESTAMP"), s("channel", "STRING"), s("seq", "INTEGER"),
            {"name": "attributes", "type": "RECORD", "fields": [s("ip", "STRING"), s("plan", "STRING"), s("locale", "STRING"), s("session", "STRING")]},
            s("_kafka_topic", "STRING"), s("_kafka_partition", "INTEGER"), s("_kafka_offset", "INTEGER"), s("_kafka_timestamp", "TIMESTAMP"),
        ]),
    );
    let mut config = config(&bootstrap, "g-nofields", TOPIC, sink.url());
    config.errors.tolerance = Tolerance::All;
    config.bigquery.auto_create_tables = true;
    let pipeline = start(&config);
    wait_fully_committed(&bootstrap, "g-nofields", TOPIC, 2, Duration::from_secs(60));
    let stats = pipeline.stats.snapshot();
    assert_eq!(pipeline.shutdown().unwrap(), 0);

    assert_eq!(stats.failed, 100, "the rows with `referrer` are reported");
    let rows = sink.rows("ds.member_events");
    assert_eq!(rows.len(), 300);
    assert!(rows.iter().all(|r| r.get("referrer").is_none()));
    assert!(
        !sink
            .calls()
            .iter()
            .any(|c| c.starts_with("tables.patch") || c.starts_with("tables.insert")),
        "{:?}",
        sink.calls()
    );
}
