//! End to end against the third-party BigQuery emulator (bqemulator, started by
//! `tools/bqemulator.sh`, or reused from `BQSINK_BQEMULATOR_URL`): create the dataset and table, run
//! bqsink on a mock Kafka cluster, then query the table through the emulator's REST API.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bqsink::bigquery::RestClient;
use bqsink::generator::{Counts, Generator, Mix};
use bqsink::run::PipelineHandle;
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
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/bqemulator.sh");
        let out = Command::new("bash")
            .arg(script)
            .args(["start", &port.to_string()])
            .env("BQEMU_PIDFILE", dir.path().join("pid"))
            .output()
            .expect("running tools/bqemulator.sh");
        assert!(
            out.status.success(),
            "bqemulator did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        Emulator {
            url,
            pidfile: Some(dir),
        }
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

fn schema() -> Value {
    let s = |name: &str, ty: &str| json!({"name": name, "type": ty});
    json!({"fields": [
        s("event_id", "STRING"), s("member_id", "STRING"), s("event_type", "STRING"),
        s("occurred_at", "TIMESTAMP"), s("channel", "STRING"), s("seq", "INTEGER"),
        {"name": "attributes", "type": "RECORD", "fields": [s("ip", "STRING"), s("plan", "STRING"), s("locale", "STRING"), s("session", "STRING")]},
        s("_kafka_topic", "STRING"), s("_kafka_partition", "INTEGER"), s("_kafka_offset", "INTEGER"), s("_kafka_timestamp", "TIMESTAMP"),
    ]})
}

#[test]
fn rows_land_in_the_emulator_exactly_once() {
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
    let api = format!("{}/bigquery/v2/projects/local", emulator.url);
    rt.block_on(async {
        post(&http, format!("{api}/datasets"), json!({"datasetReference": {"projectId": "local", "datasetId": "members"}})).await;
        post(
            &http,
            format!("{api}/datasets/members/tables"),
            json!({"tableReference": {"projectId": "local", "datasetId": "members", "tableId": "member_events"}, "schema": schema()}),
        )
        .await;
    });

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
    produce(&bootstrap, TOPIC, &events);

    let mut config = config(&bootstrap, "g-emu", TOPIC, &emulator.url);
    config.bigquery.project = "local".into();
    config.bigquery.dataset = "members".into();
    config
        .bigquery
        .tables
        .insert(TOPIC.into(), "member_events".into());
    config.bigquery.request_timeout_ms = 30_000;
    let pipeline = PipelineHandle::spawn(
        config.clone(),
        Arc::new(RestClient::new(&config.bigquery).unwrap()),
    )
    .unwrap();
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
}
