//! The dead-letter topic as a *sink*: when it cannot take records, that is a sink failure, never a
//! silent freeze. Against the mock cluster and the insertAll fake:
//! - a dead-letter topic that does not exist (or may not be described) stops the start with an
//!   error naming `errors.deadletterqueue.topic_name`; nothing is consumed;
//! - a produce error that can never succeed by retrying (here: topic authorization failed, injected
//!   into the broker's Produce responses) marks the sink FAILING at once; under
//!   `errors.sink_failure = "retry"` the record waits (the commit never passes it) and is
//!   dead-lettered exactly once when the error clears; under `"stop"` the pipeline stops non-zero.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bqsink::bigquery::RestClient;
use bqsink::service::PipelineHandle;
use bqsink_actors::config::{Config, SinkFailure, Tolerance};
use bqsink_actors::messages::Tp;
use bqsink_devtools::sink::{Sink, SinkOptions};
use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};

const TOPIC: &str = "events";
const TABLE: &str = "ds.events";
const DLQ: &str = "events-dlq";
/// The sink name the pipeline reports for the dead-letter topic.
const DLQ_SINK: &str = "dead-letter topic events-dlq";

/// 100 records on partition 0: JSON, except offset 50, which is not.
fn produce_with_bad_at_50(bootstrap: &str) {
    let payloads: Vec<Vec<u8>> = (0..100)
        .map(|i| {
            if i == 50 {
                b"{not json".to_vec()
            } else {
                format!(r#"{{"event_id":"e-{i}","n":{i}}}"#).into_bytes()
            }
        })
        .collect();
    produce_to_partition(bootstrap, TOPIC, 0, &payloads);
}

fn sink() -> Sink {
    Sink::start(SinkOptions {
        keep_rows: true,
        id_pointer: Some("/event_id".into()),
        ..Default::default()
    })
    .unwrap()
}

/// Tolerance "all", the dead-letter topic `dlq`.
fn dlq_config(bootstrap: &str, group: &str, endpoint: &str, dlq: &str) -> Config {
    let mut c = config(bootstrap, group, TOPIC, endpoint);
    c.errors.tolerance = Tolerance::All;
    c.errors.deadletterqueue.topic_name = dlq.into();
    c
}

fn spawn(config: &Config) -> anyhow::Result<PipelineHandle> {
    let client = RestClient::new(&config.bigquery).unwrap();
    PipelineHandle::spawn(config.clone(), Arc::new(client))
}

fn dlq_count(bootstrap: &str) -> i64 {
    watermarks(bootstrap, DLQ, 1)[0].1
}

/// The `__connect.errors.offset` header of every record of the dead-letter topic.
fn dead_lettered_offsets(bootstrap: &str) -> Vec<String> {
    let high = dlq_count(bootstrap);
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "dlq-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(DLQ, 0, Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut next = 0;
    let start = Instant::now();
    while next < high {
        assert!(start.elapsed() < Duration::from_secs(30), "reading {DLQ}");
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            next = m.offset() + 1;
            let offset = m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == "__connect.errors.offset")
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            });
            out.push(offset.unwrap_or_default());
        }
    }
    out
}

/// Whether the cluster knows `topic` (asking does not create it).
fn topic_exists(bootstrap: &str, topic: &str) -> bool {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("allow.auto.create.topics", "false")
        .create()
        .unwrap();
    let m = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    m.topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
}

/// The failing sinks' names.
fn failing(pipeline: &PipelineHandle) -> Vec<String> {
    pipeline
        .stats
        .health
        .failing_now()
        .into_iter()
        .map(|s| s.sink)
        .collect()
}

#[test]
fn a_dead_letter_topic_that_does_not_exist_or_may_not_be_described_stops_the_start() {
    let (cluster, bootstrap) = cluster(TOPIC, 1);
    produce_with_bad_at_50(&bootstrap);
    let sink = sink();

    // Missing: the producer must not create it by asking for it.
    let config = dlq_config(&bootstrap, "g-missing", sink.url(), "missing-dlq");
    let err = match spawn(&config) {
        Ok(p) => {
            let _ = p.abort();
            panic!("the pipeline started although the dead-letter topic does not exist");
        }
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("errors.deadletterqueue.topic_name") && err.contains("\"missing-dlq\""),
        "{err}"
    );
    assert!(err.contains("does not exist"), "{err}");
    assert!(!topic_exists(&bootstrap, "missing-dlq"), "it was created");

    // Exists, but describing it is not authorized.
    cluster.create_topic("denied-dlq", 1, 1).unwrap();
    cluster
        .topic_error(
            "denied-dlq",
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .unwrap();
    let config = dlq_config(&bootstrap, "g-denied", sink.url(), "denied-dlq");
    let err = match spawn(&config) {
        Ok(p) => {
            let _ = p.abort();
            panic!("the pipeline started although the dead-letter topic is not authorized");
        }
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("errors.deadletterqueue.topic_name") && err.contains("\"denied-dlq\""),
        "{err}"
    );
    assert!(err.contains("not authorized"), "{err}");

    // Nothing was consumed: no row written, no offset committed.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(sink.rows(TABLE).len(), 0, "records were consumed");
    assert_eq!(committed(&bootstrap, "g-missing", TOPIC, 1), vec![None]);
    assert_eq!(committed(&bootstrap, "g-denied", TOPIC, 1), vec![None]);
}

/// Every Produce request fails with TOPIC_AUTHORIZATION_FAILED until cleared.
fn deny_produce(cluster: &Cluster) {
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 10_000],
    );
}

#[test]
fn a_permanent_dead_letter_error_is_failing_at_once_holds_the_commit_and_delivers_once_cleared() {
    let (cluster, bootstrap) = cluster(TOPIC, 1);
    cluster.create_topic(DLQ, 1, 1).unwrap();
    produce_with_bad_at_50(&bootstrap);
    deny_produce(&cluster);
    let sink = sink();
    // errors.retry_timeout_ms stays at its default (5 minutes): FAILING can only come from the
    // error being recognised as permanent.
    let config = dlq_config(&bootstrap, "g-denied-produce", sink.url(), DLQ);
    assert_eq!(config.errors.sink_failure, SinkFailure::Retry);
    let pipeline = spawn(&config).unwrap();

    wait_until(
        Duration::from_secs(30),
        "the dead-letter sink to be FAILING",
        || failing(&pipeline).contains(&DLQ_SINK.to_owned()),
    );
    let state = pipeline.stats.health.failing_now().remove(0);
    assert!(state.partitions.contains(&Tp::new(TOPIC, 0)), "{state:?}");
    assert!(
        state.last_error.to_lowercase().contains("authoriz"),
        "{state:?}"
    );
    // While it lasts: the records before the failed one are committed, the commit never passes it,
    // nothing reaches the dead-letter topic, the sink stays FAILING.
    let start = Instant::now();
    let mut held_at_50 = false;
    while start.elapsed() < Duration::from_secs(3) || !held_at_50 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never committed up to 50"
        );
        let c = committed(&bootstrap, "g-denied-produce", TOPIC, 1)[0];
        assert!(
            c.unwrap_or(0) <= 50,
            "committed {c:?} past the failed record"
        );
        held_at_50 |= c == Some(50);
        assert_eq!(dlq_count(&bootstrap), 0);
        assert_eq!(failing(&pipeline), vec![DLQ_SINK.to_owned()]);
        std::thread::sleep(Duration::from_millis(100));
    }

    // The error clears: the record is dead-lettered once, the commit reaches the end, the sink
    // is healthy again.
    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    wait_fully_committed(
        &bootstrap,
        "g-denied-produce",
        TOPIC,
        1,
        Duration::from_secs(60),
    );
    assert_eq!(dead_lettered_offsets(&bootstrap), vec!["50".to_owned()]);
    assert!(pipeline.stats.health.snapshot().is_empty());
    assert_eq!(pipeline.stats.health.incidents(), 1);
    assert_eq!(pipeline.shutdown().unwrap(), 0);
    let rows = sink.rows(TABLE);
    assert_eq!(rows.len(), 99, "every good record written once");
    assert_eq!(count_by(&rows, "event_id").len(), 99);
}

#[test]
fn under_sink_failure_stop_a_permanent_dead_letter_error_stops_the_pipeline_non_zero() {
    let (cluster, bootstrap) = cluster(TOPIC, 1);
    cluster.create_topic(DLQ, 1, 1).unwrap();
    produce_with_bad_at_50(&bootstrap);
    deny_produce(&cluster);
    let sink = sink();
    let mut config = dlq_config(&bootstrap, "g-stop", sink.url(), DLQ);
    config.errors.sink_failure = SinkFailure::Stop;
    // The record waiting for the dead-letter topic never drains: do not wait long for it.
    config.pipeline.shutdown_timeout_ms = 2_000;
    let pipeline = spawn(&config).unwrap();
    let stats = Arc::clone(&pipeline.stats);

    let start = Instant::now();
    while !pipeline.is_finished() {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "the pipeline did not stop on a permanent dead-letter error"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let code = pipeline.wait().unwrap();
    assert_ne!(code, 0, "a sink failure under \"stop\" exits non-zero");
    assert!(stats.health.incidents() >= 1, "reported as FAILING first");
    let c = committed(&bootstrap, "g-stop", TOPIC, 1)[0];
    assert!(
        c.unwrap_or(0) <= 50,
        "committed {c:?} past the failed record"
    );
    assert_eq!(dlq_count(&bootstrap), 0);
}
