//! The core pipeline against a real Kafka wire protocol (librdkafka's mock cluster) and the in-test
//! insertAll fake: exactly-once rows, counted duplicates, commits that reach the end offsets and
//! never pass an unhandled record, restarts.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bqsink_actors::config::Tolerance;
use bqsink_devtools::generator::{Counts, Generator, Mix};
use bqsink_devtools::sink::{Reply, Sink, SinkOptions};
use common::*;

const TOPIC: &str = "member-events";
const TABLE: &str = "ds.member_events";

fn sink() -> Sink {
    Sink::start(SinkOptions {
        keep_rows: true,
        id_pointer: Some("/event_id".into()),
        ..Default::default()
    })
    .unwrap()
}

/// Every (partition, offset) stored more than once.
fn rewritten_positions(sink: &Sink) -> Vec<(i64, i64)> {
    let mut seen: HashMap<(i64, i64), usize> = HashMap::new();
    for r in sink.rows(TABLE) {
        let key = (
            r["_kafka_partition"].as_i64().unwrap(),
            r["_kafka_offset"].as_i64().unwrap(),
        );
        *seen.entry(key).or_default() += 1;
    }
    seen.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(k, _)| k)
        .collect()
}

#[test]
fn ten_thousand_events_with_duplicates_arrive_exactly_once_and_offsets_reach_the_end() {
    let (_cluster, bootstrap) = cluster(TOPIC, 4);
    let (events, counts) = events(
        10_000,
        Mix {
            duplicates: 0.05,
            malformed: 0.0,
            seed: 11,
        },
    );
    assert!(counts.duplicates > 400, "{counts:?}");
    produce(&bootstrap, TOPIC, &events);
    let sink = sink();
    let config = config(&bootstrap, "g-exact", TOPIC, sink.url());
    let pipeline = start(&config);

    wait_fully_committed(&bootstrap, "g-exact", TOPIC, 4, Duration::from_secs(60));
    let stats = pipeline.stats.snapshot();
    assert_eq!(pipeline.shutdown().unwrap(), 0);

    let rows = sink.rows(TABLE);
    let by_id = count_by(&rows, "event_id");
    assert_eq!(
        by_id.len() as u64,
        counts.unique,
        "every unique event is present"
    );
    assert!(by_id.values().all(|&n| n == 1), "no event is present twice");
    assert_eq!(rows.len() as u64, counts.unique);
    assert_eq!(
        stats.deduplicated, counts.duplicates,
        "duplicates are counted"
    );
    assert_eq!(stats.consumed, 10_000);
    assert_eq!(stats.failed, 0);
    // Rows carry their Kafka metadata.
    let r = &rows[0];
    assert_eq!(r["_kafka_topic"], TOPIC);
    assert!(r["_kafka_offset"].is_i64() && r["_kafka_partition"].is_i64());
    assert!(r["_kafka_timestamp"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn a_graceful_restart_writes_nothing_twice() {
    let (_cluster, bootstrap) = cluster(TOPIC, 4);
    let mut gen = Generator::new(Mix {
        duplicates: 0.05,
        malformed: 0.0,
        seed: 12,
    });
    let mut counts = Counts::default();
    let first: Vec<_> = gen
        .by_ref()
        .take(3_000)
        .inspect(|e| counts.add(e.kind))
        .collect();
    produce(&bootstrap, TOPIC, &first);
    let sink = sink();
    let config = config(&bootstrap, "g-restart", TOPIC, sink.url());

    let p1 = start(&config);
    wait_fully_committed(&bootstrap, "g-restart", TOPIC, 4, Duration::from_secs(60));
    assert_eq!(p1.shutdown().unwrap(), 0);
    let after_first = sink.total_rows();
    assert_eq!(after_first, counts.unique);

    // New events only (a duplicate of an event from before the restart is outside this test: the
    // dedup cache lives in memory).
    let second: Vec<_> = Generator::new(Mix {
        duplicates: 0.0,
        malformed: 0.0,
        seed: 99,
    })
    .take(2_000)
    .map(|mut e| {
        e.payload = String::from_utf8(e.payload)
            .unwrap()
            .replace("evt-", "evt2-")
            .into_bytes();
        e
    })
    .collect();
    produce(&bootstrap, TOPIC, &second);
    let p2 = start(&config);
    wait_fully_committed(&bootstrap, "g-restart", TOPIC, 4, Duration::from_secs(60));
    let s2 = p2.stats.snapshot();
    assert_eq!(p2.shutdown().unwrap(), 0);

    assert_eq!(
        s2.consumed, 2_000,
        "the restarted pipeline reads only what was not committed"
    );
    assert_eq!(sink.total_rows(), after_first + 2_000);
    let (distinct, repeats) = sink.id_stats();
    assert_eq!((distinct, repeats), (counts.unique + 2_000, 0));
}

#[test]
fn a_crash_repeats_only_uncommitted_records() {
    let (_cluster, bootstrap) = cluster(TOPIC, 4);
    let (events, counts) = events(
        10_000,
        Mix {
            duplicates: 0.0,
            malformed: 0.0,
            seed: 13,
        },
    );
    produce(&bootstrap, TOPIC, &events);
    let sink = sink();
    // Slow BigQuery so the crash lands mid-stream, with batches in flight.
    sink.set_hook(|_| Reply::Delay(Duration::from_millis(30), Box::new(Reply::Accept)));
    let mut config = config(&bootstrap, "g-crash", TOPIC, sink.url());
    config.batch.max_rows = 200;

    let p1 = start(&config);
    wait_until(Duration::from_secs(60), "some rows written", || {
        sink.total_rows() >= 3_000
    });
    assert_eq!(p1.abort().unwrap(), 137);
    let committed_at_crash = committed(&bootstrap, "g-crash", TOPIC, 4);
    let written_before = sink.total_rows();
    assert!(written_before < 10_000, "the crash happened mid-stream");

    sink.clear_hook();
    let p2 = start(&config);
    wait_fully_committed(&bootstrap, "g-crash", TOPIC, 4, Duration::from_secs(60));
    assert_eq!(p2.shutdown().unwrap(), 0);

    let by_id = count_by(&sink.rows(TABLE), "event_id");
    assert_eq!(
        by_id.len() as u64,
        counts.unique,
        "nothing lost across the crash"
    );
    for (partition, offset) in rewritten_positions(&sink) {
        let committed = committed_at_crash[partition as usize].unwrap_or(0);
        assert!(
            offset >= committed,
            "partition {partition} offset {offset} written twice although committed up to {committed}"
        );
    }
}

#[test]
fn bigquery_failures_are_retried_and_rejected_rows_reported() {
    let (_cluster, bootstrap) = cluster(TOPIC, 2);
    let (events, counts) = events(
        2_000,
        Mix {
            duplicates: 0.0,
            malformed: 0.0,
            seed: 14,
        },
    );
    produce(&bootstrap, TOPIC, &events);
    let sink = sink();
    // The first request rejects 3 rows as invalid; the re-sends of the other rows then fail in
    // every retryable way (one hangs past the 2 s request timeout) before BigQuery recovers.
    let phase = std::sync::atomic::AtomicUsize::new(0);
    sink.set_hook(move |req| {
        use std::sync::atomic::Ordering::SeqCst;
        let p = phase.load(SeqCst);
        if p == 0 && req.rows.len() < 8 {
            return Reply::Accept;
        }
        phase.store(p + 1, SeqCst);
        match p {
            0 => Reply::RejectRows(vec![0, 5, 7]),
            1 => Reply::Fail {
                status: 500,
                reason: "backendError".into(),
            },
            2 => Reply::Fail {
                status: 429,
                reason: "rateLimitExceeded".into(),
            },
            3 => Reply::Fail {
                status: 403,
                reason: "quotaExceeded".into(),
            },
            4 => Reply::Delay(Duration::from_secs(3), Box::new(Reply::Accept)),
            5 => Reply::Fail {
                status: 503,
                reason: "".into(),
            },
            _ => Reply::Accept,
        }
    });
    let mut config = config(&bootstrap, "g-bqfail", TOPIC, sink.url());
    config.errors.tolerance = Tolerance::All;
    config.bigquery.max_concurrent_requests = 1;
    let pipeline = start(&config);
    wait_fully_committed(&bootstrap, "g-bqfail", TOPIC, 2, Duration::from_secs(90));
    let stats = pipeline.stats.snapshot();
    assert_eq!(pipeline.shutdown().unwrap(), 0);

    let by_id = count_by(&sink.rows(TABLE), "event_id");
    // The hung request may have been stored by the fake after the client gave up: that is the
    // at-least-once window BigQuery closes with insertId. Everything else is exactly once.
    let repeated: Vec<_> = by_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.len() <= 500, "{} repeated", repeated.len());
    assert_eq!(
        by_id.len() as u64,
        counts.unique - 3,
        "all but the 3 rejected rows are written"
    );
    assert_eq!(stats.failed, 3, "the rejected rows are reported");
    assert!(stats.retries >= 5, "retried {} times", stats.retries);
    assert!(
        stats.pauses >= 1 && stats.resumes >= 1,
        "partitions paused while retrying and resumed: {stats:?}"
    );
}

/// Topics whose producers compress with each codec Kafka has are read end to end (librdkafka is
/// built with zlib, snappy, lz4 and zstd).
#[test]
fn topics_compressed_with_gzip_snappy_lz4_and_zstd_are_all_read() {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use rdkafka::ClientConfig;

    const CODECS: [&str; 4] = ["gzip", "snappy", "lz4", "zstd"];
    let (cluster, bootstrap) = cluster("codec-gzip", 2);
    for codec in &CODECS[1..] {
        cluster
            .create_topic(&format!("codec-{codec}"), 2, 1)
            .unwrap();
    }
    for codec in CODECS {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("compression.type", codec)
            .set("linger.ms", "20")
            .create()
            .unwrap();
        let topic = format!("codec-{codec}");
        for i in 0..300 {
            let payload = format!(r#"{{"event_id":"{codec}-{i}","n":{i}}}"#);
            let record = BaseRecord::<(), [u8]>::to(&topic)
                .partition(i % 2)
                .payload(payload.as_bytes());
            producer.send(record).map_err(|(e, _)| e).unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    }
    let sink = sink();
    let mut config = config(&bootstrap, "g-codecs", "codec-gzip", sink.url());
    config.kafka.topics = CODECS.iter().map(|c| format!("codec-{c}")).collect();
    let pipeline = start(&config);
    for codec in CODECS {
        let topic = format!("codec-{codec}");
        wait_fully_committed(&bootstrap, "g-codecs", &topic, 2, Duration::from_secs(60));
    }
    assert_eq!(pipeline.shutdown().unwrap(), 0);
    for codec in CODECS {
        let rows = sink.rows(&format!("ds.codec_{codec}"));
        let ids = count_by(&rows, "event_id");
        assert_eq!(ids.len(), 300, "{codec}: every record, once");
        assert!(ids.values().all(|&n| n == 1), "{codec}: no repeats");
    }
}
