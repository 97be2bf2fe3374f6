//! Trace export: spans of a real pipeline run (mock Kafka cluster, BigQuery fake) arrive at an OTLP
//! receiver running inside the test, with the expected names, attributes, parents and links; a
//! record's W3C `traceparent` header continues the producer's trace.

mod common;
#[path = "support/otlp.rs"]
mod otlp;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bqsink::bigquery::RestClient;
use bqsink::service::PipelineHandle;
use bqsink_actors::config::{LoggingConfig, TelemetryConfig};
use bqsink_devtools::sink::{Sink, SinkOptions};
use common::*;
use otlp::{send_traced, traceparent, Receiver, RecvSpan};
use rdkafka::producer::{BaseRecord, Producer};

const TOPIC: &str = "traced-events";
const TRACED: u64 = 30;
const PLAIN: u64 = 20;

/// Partition 0: `TRACED` records, record `i` with the traceparent of trace `i`, at offset `i`.
/// Partition 1: `PLAIN` records without headers.
fn produce(bootstrap: &str) {
    let p = bqsink_devtools::kafka::producer(bootstrap).unwrap();
    for i in 0..TRACED {
        let payload = format!(r#"{{"event_id":"t-{i}","n":{i}}}"#);
        send_traced(&p, TOPIC, &payload, i);
    }
    for i in 0..PLAIN {
        let payload = format!(r#"{{"event_id":"p-{i}","n":{i}}}"#);
        p.send(
            BaseRecord::<(), str>::to(TOPIC)
                .partition(1)
                .payload(&payload),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

fn ids(spans: &[RecvSpan]) -> HashSet<String> {
    spans.iter().map(|s| s.span_id.clone()).collect()
}

#[test]
fn spans_reach_the_otlp_receiver_with_attributes_parents_and_links() {
    let receiver = Receiver::start();
    let tracing = bqsink::service::logging::init_with_traces(
        &LoggingConfig {
            level: "warn".into(),
            ..LoggingConfig::default()
        },
        &TelemetryConfig {
            otlp_endpoint: receiver.url.clone(),
            service_name: "bqsink-test".into(),
            ..TelemetryConfig::default()
        },
    )
    .unwrap()
    .expect("an endpoint is set");

    let (_cluster, bootstrap) = cluster(TOPIC, 2);
    produce(&bootstrap);
    let sink = Sink::start(SinkOptions {
        keep_rows: false,
        id_pointer: Some("/event_id".into()),
        ..SinkOptions::default()
    })
    .unwrap();
    let config = config(&bootstrap, "g-traces", TOPIC, sink.url());
    let pipeline = PipelineHandle::spawn(
        config.clone(),
        Arc::new(RestClient::new(&config.bigquery).unwrap()),
    )
    .unwrap();
    wait_fully_committed(&bootstrap, "g-traces", TOPIC, 2, Duration::from_secs(60));
    assert_eq!(pipeline.shutdown().unwrap(), 0);
    assert_eq!(sink.total_rows(), TRACED + PLAIN);
    tracing.flush();

    let spans = receiver.spans();
    assert!(
        spans.iter().all(|s| s.service == "bqsink-test"),
        "service.name is set"
    );

    // A record span per traced record: a child of the producer's span, in the producer's trace.
    let records = receiver.named("record");
    assert_eq!(records.len() as u64, TRACED, "{records:#?}");
    let by_trace: HashMap<&str, &RecvSpan> =
        records.iter().map(|s| (s.trace_id.as_str(), s)).collect();
    for i in 0..TRACED {
        let (_, trace_id, parent_id) = traceparent(i);
        let s = by_trace
            .get(trace_id.as_str())
            .unwrap_or_else(|| panic!("no record span in trace {trace_id}"));
        assert_eq!(s.parent_span_id, parent_id, "parent is the producer's span");
        assert_eq!(s.str("topic"), TOPIC);
        assert_eq!(s.int("partition"), 0);
        assert_eq!(s.int("offset"), i as i64);
    }

    // Batch spans: table and rows; together they link every record span exactly once.
    let batches = receiver.named("batch");
    assert!(!batches.is_empty());
    let mut linked: Vec<(String, String)> = Vec::new();
    let mut rows = 0;
    for b in &batches {
        assert_eq!(b.str("table"), "ds.traced_events");
        rows += b.int("rows");
        assert!(b.int("bytes") > 0);
        linked.extend(b.links.iter().cloned());
    }
    assert_eq!(rows as u64, TRACED + PLAIN, "every row is in one batch");
    linked.sort();
    let mut expected: Vec<(String, String)> = records
        .iter()
        .map(|s| (s.trace_id.clone(), s.span_id.clone()))
        .collect();
    expected.sort();
    assert_eq!(
        linked, expected,
        "batch spans link the record spans of their rows"
    );

    // One request span per insertAll request, a child of its batch span.
    let requests = receiver.named("bigquery.request");
    let batch_of: HashMap<&str, &RecvSpan> =
        batches.iter().map(|b| (b.span_id.as_str(), b)).collect();
    assert!(requests.len() >= batches.len());
    for r in &requests {
        let b = batch_of
            .get(r.parent_span_id.as_str())
            .unwrap_or_else(|| panic!("request span without a batch parent: {r:?}"));
        assert_eq!(r.trace_id, b.trace_id);
        assert_eq!(r.str("table"), "ds.traced_events");
        assert_eq!(r.int("rows"), b.int("rows"));
    }

    // Poll spans cover each partition's offsets without gaps; convert, transform and dedup spans
    // are their children.
    let polls = receiver.named("poll");
    let mut covered: HashMap<i64, Vec<i64>> = HashMap::new();
    for p in &polls {
        assert_eq!(p.str("topic"), TOPIC);
        let (first, last) = (p.int("first_offset"), p.int("last_offset"));
        assert_eq!(p.int("records"), last - first + 1);
        covered
            .entry(p.int("partition"))
            .or_default()
            .extend(first..=last);
    }
    for v in covered.values_mut() {
        v.sort();
    }
    assert_eq!(covered[&0], (0..TRACED as i64).collect::<Vec<_>>());
    assert_eq!(covered[&1], (0..PLAIN as i64).collect::<Vec<_>>());
    let poll_ids = ids(&polls);
    for stage in ["convert", "transform", "dedup"] {
        let stage_spans = receiver.named(stage);
        assert_eq!(stage_spans.len(), polls.len(), "one {stage} span per chunk");
        for s in stage_spans {
            assert!(
                poll_ids.contains(&s.parent_span_id),
                "{stage} span is a child of a poll span: {s:?}"
            );
        }
    }
}
