//! `bqsink run` as operators run it, with trace export and the admin API on: the ERROR line of a
//! failed record carries the trace id of its `traceparent` header, the admin API and `/metrics`
//! answer from the real binary, and the spans still queued at SIGTERM reach the OTLP receiver.

mod common;
#[path = "support/otlp.rs"]
mod otlp;

use std::process::Command;
use std::time::Duration;

use bqsink_devtools::sink::{Reply, Sink, SinkOptions};
use common::*;
use otlp::{send_traced, traceparent, Receiver};
use rdkafka::producer::Producer;

const TOPIC: &str = "observed";
const BAD: &str = r#"{"event_id":"bad","amount": 12,,}"#;

/// Offsets 0..10 good, 10 malformed, 11..20 good; each with the traceparent of trace `offset`.
fn produce(bootstrap: &str) {
    let p = bqsink_devtools::kafka::producer(bootstrap).unwrap();
    for i in 0..20u64 {
        let payload = if i == 10 {
            BAD.to_owned()
        } else {
            format!(r#"{{"event_id":"o-{i}"}}"#)
        };
        send_traced(&p, TOPIC, &payload, i);
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn run_with_traces_and_admin_api_logs_trace_ids_serves_metrics_and_flushes_spans_at_exit() {
    let receiver = Receiver::start();
    let (_cluster, bootstrap) = cluster(TOPIC, 1);
    produce(&bootstrap);
    let sink = Sink::start(SinkOptions::default()).unwrap();
    // The first insertAll fails: its WARN line is written inside the batch's span.
    let calls = std::sync::atomic::AtomicUsize::new(0);
    sink.set_hook(
        move |_| match calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0 => Reply::Fail {
                status: 503,
                reason: "backendError".into(),
            },
            _ => Reply::Accept,
        },
    );
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("test.toml");
    std::fs::write(
        &config,
        base_toml(&bootstrap, "g-observed", TOPIC, sink.url())
            + &format!(
                r#"
[errors]
tolerance = "all"
[logging]
format = "json"
level = "info"
[telemetry]
otlp_endpoint = "{otlp}"
service_name = "bqsink-cli"
[admin]
listen = "127.0.0.1:{port}"
[metrics]
refresh_interval_ms = 200
"#,
                otlp = receiver.url,
            ),
    )
    .unwrap();

    let (mut child, log) = spawn_run(&config);

    wait_fully_committed(&bootstrap, "g-observed", TOPIC, 1, Duration::from_secs(60));
    let admin = format!("http://127.0.0.1:{port}");
    let http = reqwest::blocking::Client::new();
    let get = |path: &str| {
        let r = http.get(format!("{admin}{path}")).send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    assert_eq!(get("/healthz").0, 200);
    let (code, status) = get("/status");
    assert_eq!(code, 200, "{status}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["state"], "RUNNING");
    assert_eq!(status["partitions"][0]["last_error"]["offset"], 10);
    let (_, metrics) = get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("bqsink_records_failed_total{")
                && l.contains(r#"stage="convert""#)
                && l.contains(r#"class="invalid_json""#)
                && l.ends_with(" 1")),
        "{metrics}"
    );

    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let code = wait_exit(&mut child, Duration::from_secs(30));
    let log = log.lock().unwrap().clone();
    assert_eq!(code, 0, "{log}");

    // The ERROR line names the producer's trace.
    let (_, bad_trace, _) = traceparent(10);
    let errors = error_lines(&log);
    assert_eq!(errors.len(), 1, "{log}");
    assert_eq!(errors[0]["offset"], 10);
    assert_eq!(errors[0]["trace_id"], bad_trace.as_str(), "{log}");
    // In Cloud Logging's fields too (project: bigquery.project).
    assert_eq!(errors[0]["severity"], "ERROR");
    assert_eq!(
        errors[0]["logging.googleapis.com/trace"],
        format!("projects/test/traces/{bad_trace}"),
        "{log}"
    );

    // Spans were exported before exit: one record span per good record, in its producer's trace.
    let records = receiver.named("record");
    let mut traces: Vec<String> = records.iter().map(|s| s.trace_id.clone()).collect();
    traces.sort();
    let mut expected: Vec<String> = (0..20u64)
        .filter(|&i| i != 10)
        .map(|i| traceparent(i).1)
        .collect();
    expected.sort();
    assert_eq!(traces, expected);
    assert!(records.iter().all(|s| s.service == "bqsink-cli"));
    let batches = receiver.named("batch");
    assert!(!batches.is_empty());
    assert_eq!(sink.total_rows(), 19);

    // The retry's WARN line, written inside a batch span, links to that span for Cloud Logging.
    let retry: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "insertAll failed, retrying")
        .unwrap_or_else(|| panic!("no retry line\n{log}"));
    assert_eq!(retry["severity"], "WARNING", "{retry}");
    let span_id = retry["logging.googleapis.com/spanId"]
        .as_str()
        .unwrap_or_default();
    let batch = batches
        .iter()
        .find(|b| b.span_id == span_id)
        .unwrap_or_else(|| panic!("the retry line names no exported batch span: {retry}"));
    assert_eq!(
        retry["logging.googleapis.com/trace"],
        format!("projects/test/traces/{}", batch.trace_id)
    );
    assert_eq!(retry["logging.googleapis.com/trace_sampled"], true);
}
