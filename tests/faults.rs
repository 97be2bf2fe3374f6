//! Broker faults injected with the mock cluster: Fetch and OffsetCommit request errors, the broker
//! down and back. Nothing may be lost, and no committed offset may ever pass a record that is not
//! in BigQuery.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bqsink::bigquery::RestClient;
use bqsink::service::PipelineHandle;
use bqsink_devtools::generator::{Counts, Generator, Mix};
use bqsink_devtools::sink::{Reply, Sink, SinkOptions};
use common::*;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

const TOPIC: &str = "member-events";
const TABLE: &str = "ds.member_events";
const PARTITIONS: i32 = 4;

/// For each partition, how many offsets from 0 on are contiguously present in the sink.
fn contiguous_written(sink: &Sink) -> HashMap<i64, i64> {
    let mut offsets: HashMap<i64, BTreeSet<i64>> = HashMap::new();
    for r in sink.rows(TABLE) {
        let p = r["_kafka_partition"].as_i64().unwrap();
        offsets
            .entry(p)
            .or_default()
            .insert(r["_kafka_offset"].as_i64().unwrap());
    }
    offsets
        .into_iter()
        .map(|(p, set)| {
            let mut n = 0;
            while set.contains(&n) {
                n += 1;
            }
            (p, n)
        })
        .collect()
}

#[test]
fn fetch_and_commit_errors_and_a_broker_outage_lose_nothing_and_never_commit_ahead() {
    let (cluster, bootstrap) = cluster(TOPIC, PARTITIONS);
    let mut counts = Counts::default();
    let events: Vec<_> = Generator::new(Mix {
        duplicates: 0.0,
        malformed: 0.0,
        seed: 41,
    })
    .take(20_000)
    .inspect(|e| counts.add(e.kind))
    .collect();
    produce(&bootstrap, TOPIC, &events[..10_000]);
    let sink = Sink::start(SinkOptions {
        keep_rows: true,
        id_pointer: Some("/event_id".into()),
        ..Default::default()
    })
    .unwrap();
    // A slightly slow BigQuery keeps rows in flight while the faults hit.
    sink.set_hook(|_| Reply::Delay(Duration::from_millis(20), Box::new(Reply::Accept)));
    let mut config = config(&bootstrap, "g-faults", TOPIC, sink.url());
    config.batch.max_rows = 200;
    let pipeline = PipelineHandle::spawn(
        config.clone(),
        Arc::new(RestClient::new(&config.bigquery).unwrap()),
    )
    .unwrap();

    // Watch every committed offset against what the sink holds at that moment.
    let check = |label: &str| {
        let committed = committed(&bootstrap, "g-faults", TOPIC, PARTITIONS);
        let written = contiguous_written(&sink);
        for (p, c) in committed.iter().enumerate() {
            let w = written.get(&(p as i64)).copied().unwrap_or(0);
            assert!(
                c.unwrap_or(0) <= w,
                "{label}: partition {p} committed {c:?} but only {w} offsets written"
            );
        }
    };
    wait_until(Duration::from_secs(60), "rows flowing", || {
        sink.total_rows() > 1_000
    });

    let errors = |e: RDKafkaRespErr, n: usize| vec![e; n];
    cluster.request_errors(
        RDKafkaApiKey::Fetch,
        &errors(
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            10,
        ),
    );
    cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &errors(RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT, 10),
    );
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        check("request errors");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The broker goes down (shorter than the session timeout) and comes back; meanwhile BigQuery
    // keeps accepting what is in flight.
    cluster.broker_down(1).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    cluster.broker_up(1).unwrap();
    produce(&bootstrap, TOPIC, &events[10_000..]);
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        check("after the outage");
        std::thread::sleep(Duration::from_millis(100));
    }

    sink.clear_hook();
    wait_fully_committed(
        &bootstrap,
        "g-faults",
        TOPIC,
        PARTITIONS,
        Duration::from_secs(90),
    );
    check("at the end");
    assert_eq!(pipeline.shutdown().unwrap(), 0);
    let by_id = count_by(&sink.rows(TABLE), "event_id");
    assert_eq!(by_id.len() as u64, counts.unique, "nothing lost");
    let repeated = by_id.values().filter(|&&n| n > 1).count();
    assert_eq!(
        repeated, 0,
        "no row written twice (the outage is shorter than the session timeout)"
    );
}
