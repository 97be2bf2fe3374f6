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
