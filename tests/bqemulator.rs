//! End to end against the third-party BigQuery emulator (bqemulator, started by
//! `tools/bqemulator.sh`, or reused from `BQSINK_BQEMULATOR_URL`): create the dataset and table, run
//! bqsink on a mock Kafka cluster, then query the table through the emulator's REST API.

mod common;
#[path = "support/admin.rs"]
mod support;

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bqsink_actors::config::{ValueFormat, WriteApi};
use bqsink_devtools::generator::{Counts, Generator, Mix};
use common::*;
use serde_json::{json, Value};

const TOPIC: &str = "member-events";

/// The emulator: reused when `BQSINK_BQEMULATOR_URL` is set, else started here and stopped on drop.
struct Emulator {
    url: String,
    pidfile: Option<tempfile::TempDir>,
}

impl Emulator {
    fn start() -> Emulator {
        if let Ok(url) = std::env::var("BQSINK_BQEMULATOR_URL") {
            return Emulator { url, pidfile: None };
        }
        // It binds two ports, REST and gRPC 10 above: both are checked free, and a start that lost
        // one to another process in between (tests start emulators side by side) is tried again.
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/bqemulator.sh");
        let mut failures = Vec::new();
        for _ in 0..3 {
            let port = free_port_pair();
            let dir = tempfile::tempdir().unwrap();
            let out = Command::new("bash")
                .arg(&script)
                .args(["start", &port.to_string()])
                .env("BQEMU_PIDFILE", dir.path().join("pid"))
                .output()
                .expect("running tools/bqemulator.sh");
            if out.status.success() {
                let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
                return Emulator {
                    url,
                    pidfile: Some(dir),
                };
            }
            failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
            // One that started but never answered is not left running.
            let _ = Command::new("bash")
                .arg(&script)
                .arg("stop")
                .env("BQEMU_PIDFILE", dir.path().join("pid"))
                .status();
        }
        panic!("bqemulator did not start: {failures:?}");
    }
}

/// A port that is free, with the port 10 above it free too.
fn free_port_pair() -> u16 {
    loop {
        let rest = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = rest.local_addr().unwrap().port();
        if port < u16::MAX - 10 && TcpListener::bind(("127.0.0.1", port + 10)).is_ok() {
            return port;
        }
    }
}

impl Emulator {
    /// Its Storage Write API: gRPC on the REST port + 10.
    fn grpc_url(&self) -> String {
        let (host, port) = self.url.rsplit_once(':').expect("host:port");
        format!("{host}:{}", port.parse::<u16>().expect("port") + 10)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(dir) = &self.pidfile {
            if let Ok(pid) = std::fs::read_to_string(dir.path().join("pid")) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
        }
    }
}

/// A client for the test's own calls, keeping no idle connections (see the first test).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> Value {
    // The emulator is a Python process that can answer slowly or with a 5xx right after it starts
    // on a loaded machine: try a few times before failing.
    let mut last = String::new();
    for _ in 0..5 {
        let resp = http.post(&url).json(&body).send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        match serde_json::from_str::<Value>(&text) {
            Ok(v) if status.is_success() || v["error"]["code"] == 409 => return v,
            _ => last = format!("{status}: {text}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("{url}: {last}");
}

/// Creates the dataset `members` and its table `member_events` (member events' schema).
async fn create_members_table(http: &reqwest::Client, api: &str) {
    post(
        http,
        format!("{api}/datasets"),
        json!({"datasetReference": {"projectId": "local", "datasetId": "members"}}),
    )
    .await;
    post(
        http,
        format!("{api}/datasets/members/tables"),
        json!({"tableReference": {"projectId": "local", "datasetId": "members", "tableId": "member_events"}, "schema": schema()}),
    )
    .await;
}

fn schema() -> Value {
    json!({"fields": member_events_fields()})
}

#[test]
fn rows_land_in_the_emulator_exactly_once() {
    rows_land_once(WriteApi::InsertAll);
}

/// The same through the Storage Write API's `_default` stream (gRPC on the emulator's port + 10),
/// RECORD column included.
#[test]
fn rows_land_in_the_emulator_exactly_once_through_the_storage_write_api() {
    rows_land_once(WriteApi::Storage);
}

/// The same events as Avro through a Schema Registry (issue 18), into the emulator through the
/// Storage Write API: decoded rows land once each, RECORD and TIMESTAMP columns included.
#[test]
fn avro_rows_land_in_the_emulator_exactly_once_through_the_storage_write_api() {
    rows_land(WriteApi::Storage, ValueFormat::Avro);
}

/// The same events as Protobuf and as JSON Schema records, checked the same way.
#[test]
fn protobuf_and_json_schema_rows_land_in_the_emulator_exactly_once() {
    rows_land(WriteApi::Storage, ValueFormat::Protobuf);
    rows_land(WriteApi::InsertAll, ValueFormat::JsonSchema);
}

fn rows_land_once(write_api: WriteApi) {
    rows_land(write_api, ValueFormat::Json);
}

fn rows_land(write_api: WriteApi, format: ValueFormat) {
    let emulator = Emulator::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // No pooled connections: the emulator (uvicorn) closes idle ones after 5 s, and a request on a
    // connection it is closing fails with IncompleteMessage.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let api_url = format!("{}/bigquery/v2/projects/local", emulator.url);
    let api = &api_url;
    rt.block_on(create_members_table(&http, api));

    let (_cluster, bootstrap) = cluster(TOPIC, 4);
    let mut counts = Counts::default();
    let events: Vec<_> = Generator::new(Mix {
        duplicates: 0.05,
        malformed: 0.0,
        seed: 21,
    })
    .take(2_000)
    .inspect(|e| counts.add(e.kind))
    .collect();
    // A registry format: the same events encoded with their registered schema.
    let encoder = bqsink_devtools::registered::Encoder::new(format, 1);
    let registry = encoder.as_ref().map(|encoder| {
        let registry = bqsink_devtools::registry::Registry::start().unwrap();
        encoder.register(&registry);
        registry
    });
    let events: Vec<_> = events
        .into_iter()
        .map(|mut e| {
            if let Some(encoder) = &encoder {
                e.payload = encoder.encode(&e.payload).unwrap();
            }
            e
        })
        .collect();
    produce(&bootstrap, TOPIC, &events);

    let mut config = config(&bootstrap, "g-emu", TOPIC, &emulator.url);
    config.bigquery.project = "local".into();
    config.bigquery.dataset = "members".into();
    config
        .bigquery
        .tables
        .insert(TOPIC.into(), "member_events".into());
    config.bigquery.request_timeout_ms = 30_000;
    config.bigquery.write_api = write_api;
    config.bigquery.storage_endpoint = emulator.grpc_url();
    if let Some(registry) = &registry {
        config.kafka.formats = [(TOPIC.to_owned(), format)].into_iter().collect();
        config.registry.url = registry.url.clone();
    }
    let pipeline = start(&config);
    wait_fully_committed(&bootstrap, "g-emu", TOPIC, 4, Duration::from_secs(120));
    let stats = pipeline.stats.snapshot();
    assert_eq!(pipeline.shutdown().unwrap(), 0);
    assert_eq!(stats.failed, 0);

    let result = rt.block_on(post(
        &http,
        format!("{api}/queries"),
        json!({"query": "SELECT COUNT(*) AS n, COUNT(DISTINCT event_id) AS d, MIN(_kafka_offset) AS lo FROM `local.members.member_events`", "useLegacySql": false}),
    ));
    let row = &result["rows"][0]["f"];
    let n: u64 = row[0]["v"].as_str().unwrap().parse().unwrap();
    let distinct: u64 = row[1]["v"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        distinct, counts.unique,
        "every unique event is in the table: {result}"
    );
    assert_eq!(n, counts.unique, "and none twice: {result}");
    assert_eq!(row[2]["v"], "0");
    // The RECORD and TIMESTAMP columns hold the events' values.
    let result = rt.block_on(post(
        &http,
        format!("{api_url}/queries"),
        json!({"query": "SELECT attributes.locale, occurred_at FROM `local.members.member_events` WHERE attributes.plan IS NOT NULL LIMIT 1", "useLegacySql": false}),
    ));
    let row = &result["rows"][0]["f"];
    assert_eq!(row[0]["v"], "ko-KR", "{result}");
    assert!(
        row[1]["v"].as_str().is_some_and(|t| !t.is_empty()),
        "{result}"
    );
}

/// `SELECT COUNT(*)` of a table in the emulator.
async fn count(http: &reqwest::Client, api: &str, table: &str) -> u64 {
    let result = post(
        http,
        format!("{api}/queries"),
        json!({"query": format!("SELECT COUNT(*) AS n FROM `local.{table}`"), "useLegacySql": false}),
    )
    .await;
    result["rows"][0]["f"][0]["v"]
        .as_str()
        .unwrap_or_else(|| panic!("{table}: {result}"))
        .parse()
        .unwrap()
}

#[test]
fn tables_are_created_partitioned_clustered_and_routed_in_the_emulator() {
    let emulator = Emulator::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = client();
    let api = format!("{}/bigquery/v2/projects/local", emulator.url);
    // Nothing exists: the dataset `routed` and its tables are bqsink's to create.
    let topic = "routed-events";
    let (_cluster, bootstrap) = cluster(topic, 2);
    let mut events: Vec<_> = Generator::new(Mix {
        duplicates: 0.0,
        malformed: 0.0,
        seed: 22,
    })
    .take(600)
    .collect();
    // Every 10th event has no event_type: it goes to the fallback table.
    let mut expected: std::collections::HashMap<String, u64> = Default::default();
    for (i, e) in events.iter_mut().enumerate() {
        let mut v: Value = serde_json::from_slice(&e.payload).unwrap();
        if i % 10 == 0 {
            v.as_object_mut().unwrap().remove("event_type");
        }
        let table = v["event_type"].as_str().unwrap_or("unrouted").to_owned();
        *expected.entry(table).or_default() += 1;
        e.payload = serde_json::to_vec(&v).unwrap();
    }
    produce(&bootstrap, topic, &events);

    let text = format!(
        r#"
[kafka]
topics = ["{topic}"]
[bigquery]
write_api = "insert_all"
delivery = "at_least_once"
project = "local"
dataset = "routed"
auto_create_tables = true
auto_create_dataset = true
[[bigquery.tables]]
topics = ["{topic}"]
table = "unrouted"
table_from = "/event_type"
partition_field = "occurred_at"
clustering = ["member_id"]
[[bigquery.tables]]
table = "signup"
partition_type = "MONTH"
clustering = ["channel", "member_id"]
schema = [
  {{ name = "event_id", type = "STRING", mode = "REQUIRED" }}, {{ name = "member_id", type = "STRING" }},
  {{ name = "event_type", type = "STRING" }}, {{ name = "occurred_at", type = "TIMESTAMP" }},
  {{ name = "channel", type = "STRING" }}, {{ name = "seq", type = "INTEGER" }},
  {{ name = "attributes", type = "RECORD", fields = [
    {{ name = "ip", type = "STRING" }}, {{ name = "plan", type = "STRING" }},
    {{ name = "locale", type = "STRING" }}, {{ name = "session", type = "STRING" }} ] }},
  {{ name = "_kafka_topic", type = "STRING" }}, {{ name = "_kafka_partition", type = "INTEGER" }},
  {{ name = "_kafka_offset", type = "INTEGER" }}, {{ name = "_kafka_timestamp", type = "TIMESTAMP" }},
]
"#
    );
    let tables = bqsink::settings::from_toml(&text).unwrap().bigquery;
    let mut config = config(&bootstrap, "g-emu-tables", topic, &emulator.url);
    config.bigquery = bqsink_actors::config::BigQueryConfig {
        endpoint: emulator.url.clone(),
        request_timeout_ms: 30_000,
        ..tables
    };
    let pipeline = start(&config);
    wait_fully_committed(
        &bootstrap,
        "g-emu-tables",
        topic,
        2,
        Duration::from_secs(120),
    );
    let stats = pipeline.stats.snapshot();
    assert_eq!(pipeline.shutdown().unwrap(), 0);
    assert_eq!(stats.failed, 0);

    rt.block_on(async {
        assert_eq!(expected.len(), 7, "{expected:?}");
        for (table, n) in &expected {
            assert_eq!(count(&http, &api, &format!("routed.{table}")).await, *n, "{table}");
        }
        let get = |t: &str| {
            let url = format!("{api}/datasets/routed/tables/{t}");
            let http = http.clone();
            async move { http.get(url).send().await.unwrap().json::<Value>().await.unwrap() }
        };
        // The configured table, as defined: ingestion-time MONTH partitions, two clustering columns.
        let signup = get("signup").await;
        assert_eq!(signup["timePartitioning"]["type"], "MONTH", "{signup}");
        assert!(signup["timePartitioning"].get("field").is_none(), "{signup}");
        assert_eq!(signup["clustering"]["fields"], json!(["channel", "member_id"]));
        assert_eq!(signup["schema"]["fields"][0]["mode"], "REQUIRED");
        // A routed table: schema inferred from its first batch, partitioned and clustered like the
        // routing entry.
        let login = get("login").await;
        assert_eq!(login["timePartitioning"], json!({"type": "DAY", "field": "occurred_at"}), "{login}");
        assert_eq!(login["clustering"]["fields"], json!(["member_id"]));
        let types: std::collections::HashMap<String, String> = login["schema"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["name"].as_str().unwrap().to_owned(), f["type"].as_str().unwrap().to_owned()))
            .collect();
        assert_eq!(types["occurred_at"], "TIMESTAMP");
        assert_eq!(types["seq"], "INTEGER");
        assert_eq!(types["attributes"], "RECORD");
        assert_eq!(types["_kafka_timestamp"], "TIMESTAMP");
        // Typed values survive: TIMESTAMP columns compare as timestamps.
        let r = post(
            &http,
            format!("{api}/queries"),
            json!({"query": "SELECT COUNT(*) FROM `local.routed.login` WHERE occurred_at >= TIMESTAMP '2026-11-27 00:00:00' AND attributes.locale = 'ko-KR'", "useLegacySql": false}),
        )
        .await;
        assert_eq!(r["rows"][0]["f"][0]["v"], expected["login"].to_string(), "{r}");
    });
}

/// `SELECT COUNT(*), COUNT(DISTINCT event_id)` of `members.member_events`.
async fn counts(http: &reqwest::Client, api: &str) -> (u64, u64) {
    let result = post(
        http,
        format!("{api}/queries"),
        json!({"query": "SELECT COUNT(*) AS n, COUNT(DISTINCT event_id) AS d FROM `local.members.member_events`", "useLegacySql": false}),
    )
    .await;
    let row = &result["rows"][0]["f"];
    let n = |i: usize| -> u64 {
        row[i]["v"]
            .as_str()
            .unwrap_or_else(|| panic!("{result}"))
            .parse()
            .unwrap()
    };
    (n(0), n(1))
}

/// Exactly once against the emulator's BUFFERED streams and FlushRows (patched to Google's
/// inclusive semantics by `tools/bqemulator.sh`): instances killed with SIGKILL while writing, one
/// stopped, others joining; then `COUNT(*) = COUNT(DISTINCT event_id)` = the events produced.
#[test]
fn exactly_once_in_the_emulator_through_kill_9_restarts_and_three_instances() {
    let emulator = Emulator::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = client();
    let api = format!("{}/bigquery/v2/projects/local", emulator.url);
    rt.block_on(create_members_table(&http, &api));
    // 4 partitions: the emulator serves at most 6 AppendRows connections at once.
    let partitions = 4;
    let (_cluster, bootstrap) = cluster(TOPIC, partitions);
    let group = "g-emu-eo";
    let toml = base_toml(&bootstrap, group, TOPIC, &emulator.url)
        .replace(
            "write_api = \"insert_all\"\ndelivery = \"at_least_once\"\n",
            &format!(
                "write_api = \"storage\"\ndelivery = \"exactly_once\"\nstorage_endpoint = \"{}\"\nrequest_timeout_ms = 30000\n",
                emulator.grpc_url()
            ),
        )
        .replace("project = \"test\"", "project = \"local\"")
        .replace("dataset = \"ds\"", "dataset = \"members\"")
        .replace("commit_interval_ms = 200", "commit_interval_ms = 500")
        + &format!(
            r#"
[bigquery.tables]
"{TOPIC}" = "member_events"
[dedup]
key = "none"
[errors]
retry_delay_max_ms = 500
[admin]
listen = "127.0.0.1:0"
[logging]
level = "info,bqsink::bigquery::storage=debug,bqsink_actors::supervisor=debug"
"#
        );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("eo.toml");
    std::fs::write(&file, toml).unwrap();
    let visible = || rt.block_on(counts(&http, &api));
    let mut produced = 0u64;
    let mut produce_unique = |n: usize, seed: u64| {
        let events = support::unique_events(n, &format!("s{seed}-"), seed);
        produce(&bootstrap, TOPIC, &events);
        produced += n as u64;
    };
    let wait = Duration::from_secs(120);

    // One instance, killed while writing, restarted.
    produce_unique(1_500, 31);
    let mut a0 = BqsinkRun::spawn(&file);
    wait_until(wait, "rows visible", || visible().0 > 0);
    produce_unique(1_500, 32);
    a0.kill9();
    let after_kill = visible();
    assert!(
        after_kill.0 == after_kill.1,
        "no duplicate after the kill: {after_kill:?}"
    );
    // Three instances: the restarted one, two joining; one stopped, one killed.
    let mut a = BqsinkRun::spawn(&file);
    produce_unique(1_000, 33);
    let mut b = BqsinkRun::spawn(&file);
    let mut c = BqsinkRun::spawn(&file);
    produce_unique(1_000, 34);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(b.terminate(wait), 0, "{}", b.tail());
    produce_unique(1_000, 35);
    std::thread::sleep(Duration::from_secs(2));
    c.kill9();
    produce_unique(1_000, 36);
    let committed = std::panic::catch_unwind(|| {
        wait_fully_committed(&bootstrap, group, TOPIC, partitions, wait)
    });
    if let Err(e) = committed {
        // What the surviving instance was doing, for the failure's message.
        eprintln!("instance a, last lines:\n{}", a.tail());
        eprintln!("instance c (killed), last lines:\n{}", c.tail());
        std::panic::resume_unwind(e);
    }
    wait_until(wait, "every event visible", || visible().0 >= produced);
    assert_eq!(a.terminate(wait), 0, "{}", a.tail());
    let (n, distinct) = visible();
    if std::env::var("BQSINK_DEBUG_LOGS").is_ok() {
        for (name, run) in [("a0", &a0), ("a", &a), ("b", &b), ("c", &c)] {
            std::fs::write(format!("/tmp/emu-run-{name}.log"), run.log()).unwrap();
        }
    }
    assert_eq!(
        (n, distinct),
        (produced, produced),
        "(rows, distinct event ids) in the emulator's table"
    );
}
