//! `/metrics` during a run: the counters match what was produced and the consumer-lag gauge follows
//! the backlog down to 0. Alone in its test binary: the Prometheus recorder is process-wide, so
//! unlabelled gauges would mix with other tests' pipelines.

mod common;
#[path = "support/admin.rs"]
mod support;

use std::sync::Mutex;
use std::time::Duration;

use common::*;
use support::*;

/// The tests share the process-wide recorder: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn metrics_count_what_was_produced_and_the_lag_gauge_follows_the_backlog() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const TOPIC: &str = "metered";
    let (_cluster, bootstrap) = cluster(TOPIC, 2);
    let sink = sink();
    let svc = spawn(&service_config(&bootstrap, "g-metrics", TOPIC, &sink));
    let admin = Admin::new(&svc, None);

    // Paused before anything is produced: the backlog shows as lag and nothing is consumed.
    assert_eq!(admin.post("/pause"), 202);
    wait_until(Duration::from_secs(60), "both partitions paused", || {
        all_partitions(&admin.status(), 2, "PAUSED")
    });
    produce(&bootstrap, TOPIC, &unique_events(600, "m", 21));
    let topic = [("topic", TOPIC)];
    wait_until(Duration::from_secs(60), "lag gauges to show 600", || {
        metric(&admin.metrics(), "bqsink_consumer_lag", &topic) == Some(600.0)
    });
    let text = admin.metrics();
    assert_eq!(
        metric(&text, "bqsink_records_consumed_total", &topic).unwrap_or(0.0),
        0.0
    );
    assert_eq!(metric(&text, "bqsink_partitions_paused", &[]), Some(2.0));

    assert_eq!(admin.post("/resume"), 202);
    wait_until(Duration::from_secs(60), "lag 0 on both partitions", || {
        let text = admin.metrics();
        (0..2).all(|p| {
            let p = p.to_string();
            metric(
                &text,
                "bqsink_consumer_lag",
                &[("topic", TOPIC), ("partition", &p)],
            ) == Some(0.0)
        }) && metric(&text, "bqsink_records_written_total", &topic) == Some(600.0)
    });
    let text = admin.metrics();
    for name in [
        "bqsink_records_consumed_total",
        "bqsink_records_converted_total",
        "bqsink_records_transformed_total",
        "bqsink_records_written_total",
    ] {
        assert_eq!(metric(&text, name, &topic), Some(600.0), "{name}\n{text}");
    }
    assert_eq!(
        metric(&text, "bqsink_records_deduplicated_total", &topic).unwrap_or(0.0),
        0.0
    );
    for p in ["0", "1"] {
        let labels = [("topic", TOPIC), ("partition", p)];
        assert!(metric(&text, "bqsink_records_written_total", &labels).unwrap() > 0.0);
    }
    assert_eq!(
        metric(&text, "bqsink_end_to_end_latency_seconds_count", &topic),
        Some(600.0),
        "one latency sample per written row"
    );
    let table = [("table", "ds.metered")];
    assert_eq!(metric(&text, "bqsink_batch_rows_sum", &table), Some(600.0));
    assert!(metric(&text, "bqsink_batch_bytes_count", &table).unwrap() >= 1.0);
    assert!(
        metric(
            &text,
            "bqsink_bigquery_request_duration_seconds_count",
            &[("table", "ds.metered"), ("outcome", "ok")]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(metric(&text, "bqsink_partitions_assigned", &[]), Some(2.0));
    assert_eq!(metric(&text, "bqsink_partitions_paused", &[]), Some(0.0));
    assert!(metric(&text, "process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert!(
        text.contains("# HELP bqsink_consumer_lag"),
        "metrics are described"
    );
    assert_eq!(svc.shutdown().unwrap(), 0);
    assert_eq!(sink.total_rows(), 600);
}

/// Partitions and lag show as soon as the partitions are assigned, not a refresh interval later.
#[test]
fn partitions_and_lag_show_right_after_the_assignment() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const TOPIC: &str = "metered-early";
    let (_cluster, bootstrap) = cluster(TOPIC, 3);
    produce(&bootstrap, TOPIC, &unique_events(90, "e", 5));
    let sink = sink();
    let mut config = service_config(&bootstrap, "g-metrics-early", TOPIC, &sink);
    config.metrics.refresh_interval_ms = 600_000;
    let svc = spawn(&config);
    let admin = Admin::new(&svc, None);
    wait_until(
        Duration::from_secs(30),
        "3 partitions and their lag in /metrics",
        || {
            let text = admin.metrics();
            metric(&text, "bqsink_partitions_assigned", &[]) == Some(3.0)
                && (0..3).all(|p| {
                    let p = p.to_string();
                    metric(
                        &text,
                        "bqsink_consumer_lag",
                        &[("topic", TOPIC), ("partition", &p)],
                    )
                    .is_some()
                })
        },
    );
    assert_eq!(svc.shutdown().unwrap(), 0);
}

/// What operators alert on besides the record counts shows in `/metrics`: error destinations'
/// outcomes, offset commits the broker refused, rebalances, bytes in and out, the build, and
/// librdkafka's statistics. Every metric the Grafana dashboard under `deploy/` queries is one that
/// `/metrics` serves.
#[test]
fn operations_metrics_show_and_the_dashboard_queries_only_served_metrics() {
    use bqsink_actors::config::Tolerance;
    use bqsink_devtools::sink::Reply;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const TOPIC: &str = "metered-ops";
    const DLQ: &str = "metered-ops-dlq";
    let (cluster, bootstrap) = cluster(TOPIC, 2);
    cluster.create_topic(DLQ, 1, 1).unwrap();
    let mut good = unique_events(200, "o", 9);
    good.push(good[0].clone()); // a duplicate, dropped
    produce(&bootstrap, TOPIC, &good);
    let bad: Vec<Vec<u8>> = (0..5)
        .map(|i| format!("not json {i}").into_bytes())
        .collect();
    produce_to_partition(&bootstrap, TOPIC, 0, &bad);
    let bytes_in: usize = good
        .iter()
        .map(|e| e.key.len() + e.payload.len())
        .sum::<usize>()
        + bad.iter().map(Vec::len).sum::<usize>();
    // The broker refuses the first two offset commits.
    cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE; 2],
    );
    // BigQuery answers the first two requests with a 503 and rejects one row (not the duplicated
    // event: a rejected row's key leaves the dedup cache) as invalid.
    let rejected: serde_json::Value = serde_json::from_slice(&good[1].payload).unwrap();
    let rejected = rejected["event_id"].as_str().unwrap().to_owned();
    let sink = sink();
    let calls = Arc::new(AtomicUsize::new(0));
    sink.set_hook(move |req| {
        if calls.fetch_add(1, Ordering::SeqCst) < 2 {
            return Reply::Fail {
                status: 503,
                reason: "backendError".into(),
            };
        }
        let hit = req
            .rows
            .iter()
            .position(|r| r["json"]["event_id"].as_str() == Some(rejected.as_str()));
        match hit {
            Some(i) => Reply::RejectRows(vec![i]),
            None => Reply::Accept,
        }
    });
    let slack = SlackRecorder::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = service_config(&bootstrap, "g-metrics-ops", TOPIC, &sink);
    config.errors.tolerance = Tolerance::All;
    config.errors.deadletterqueue.topic_name = DLQ.into();
    config.errors.file.path = Some(dir.path().join("failed.ndjson"));
    config.errors.slack.webhook_url = Some(slack.url.clone().into());
    config.errors.slack.window_secs = 1;
    // The second 503 makes BigQuery a failing sink (bqsink_sink_failing 1, then 0).
    config.errors.retry_timeout_ms = 1;
    // Counters without a topic label are shared with this binary's other tests: count from here.
    let before = bqsink::service::prometheus::install(Duration::from_secs(60))
        .unwrap()
        .render();
    let since = |text: &str, name: &str, labels: &[(&str, &str)]| {
        metric(text, name, labels).map(|v| v - metric(&before, name, labels).unwrap_or(0.0))
    };
    let svc = spawn(&config);
    let admin = Admin::new(&svc, None);
    let topic = [("topic", TOPIC)];
    let dest = |d: &'static str| [("destination", d), ("outcome", "delivered")];
    wait_until(
        Duration::from_secs(60),
        "rows, failures, alerts and statistics",
        || {
            let text = admin.metrics();
            metric(&text, "bqsink_records_written_total", &topic) == Some(199.0)
                && metric(
                    &text,
                    "bqsink_error_destination_records_total",
                    &dest("slack"),
                ) == Some(6.0)
                && since(&text, "bqsink_offset_commit_failures_total", &[]) == Some(2.0)
                && metric(&text, "bqsink_kafka_broker_up", &[]).is_some()
        },
    );
    let text = admin.metrics();
    for d in ["dead_letter_topic", "error_file"] {
        assert_eq!(
            metric(&text, "bqsink_error_destination_records_total", &dest(d)),
            Some(6.0),
            "{d}\n{text}"
        );
    }
    assert_eq!(
        since(
            &text,
            "bqsink_offset_commit_failures_total",
            &[("error", "offsetmetadatatoolarge")]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "bqsink_bytes_consumed_total", &topic),
        Some(bytes_in as f64)
    );
    let written = metric(
        &text,
        "bqsink_bigquery_bytes_written_total",
        &[("table", "ds.metered_ops")],
    );
    assert!(written.unwrap_or(0.0) > 199.0 * 20.0, "{written:?}\n{text}");
    assert_eq!(
        metric(&text, "bqsink_records_deduplicated_total", &topic),
        Some(1.0)
    );
    assert_eq!(
        since(
            &text,
            "bqsink_bigquery_row_errors_total",
            &[("reason", "invalid")]
        ),
        Some(1.0)
    );
    assert_eq!(
        since(
            &text,
            "bqsink_rebalance_partitions_total",
            &[("kind", "assigned")]
        ),
        Some(2.0)
    );
    assert_eq!(
        since(&text, "bqsink_rebalances_total", &[("kind", "assigned")]),
        Some(1.0)
    );
    assert_eq!(
        since(
            &text,
            "bqsink_bigquery_request_errors_total",
            &[("reason", "backendError")]
        ),
        Some(2.0)
    );
    let build = text
        .lines()
        .find(|l| l.starts_with("bqsink_build_info{"))
        .unwrap_or_else(|| panic!("no bqsink_build_info\n{text}"));
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{build}"
    );
    assert!(!build.contains("git_sha=\"\""), "{build}");
    assert_eq!(
        metric(&text, "bqsink_kafka_broker_up", &[]),
        Some(1.0),
        "one broker, up"
    );
    assert!(metric(&text, "bqsink_kafka_fetch_queue_messages", &[]).is_some());

    // The dashboard: every metric its queries name is served.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana-dashboard.json"
        ))
        .unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("bqsink_") || word.starts_with("process_") {
                    queried.push(word.to_owned());
                }
            }
        }
    }
    assert!(queried.len() > 20, "{queried:?}");
    let served: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for name in &queried {
        assert!(
            served.contains(&name.as_str()),
            "the dashboard queries {name}, which /metrics does not serve\n{text}"
        );
    }
    assert_eq!(svc.shutdown().unwrap(), 0);
}
