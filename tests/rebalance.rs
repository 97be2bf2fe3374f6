//! Several instances in one consumer group, rebalances (eager and cooperative-sticky), crashes,
//! backpressure under a slow BigQuery, and the dedup warm-up after a restart.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bqsink_actors::config::{InsertIdMode, Tolerance};
use bqsink_devtools::generator::{Counts, Event, Generator, Kind, Mix};
use bqsink_devtools::sink::{Reply, Sink, SinkOptions};
use common::*;

const TOPIC: &str = "member-events";
const TABLE: &str = "ds.member_events";

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[test]
fn instances_joining_leaving_and_crashing_lose_nothing_and_duplicate_nothing() {
    let (_cluster, bootstrap) = cluster(TOPIC, 12);
    let (events, counts) = events(
        50_000,
        Mix {
            duplicates: 0.02,
            malformed: 0.0,
            seed: 31,
        },
    );
    produce(&bootstrap, TOPIC, &events);
    let marks = watermarks(&bootstrap, TOPIC, 12);
    assert_eq!(
        marks.iter().map(|(l, h)| h - l).sum::<i64>(),
        50_000,
        "the mock cluster kept the whole backlog"
    );

    // BigQuery as it is: it drops a row whose insertId it stored moments ago (best effort), which is
    // what covers rows written by a crashed instance but not yet committed.
    let sink = Sink::start(SinkOptions {
        keep_rows: true,
        id_pointer: Some("/event_id".into()),
        honor_insert_id: true,
    })
    .unwrap();
    // Slow enough that a backlog is left when c joins 10 s in (at 40 ms a fast run had written
    // everything by then, and "c took part" failed in a CI dry run).
    sink.set_hook(|_| Reply::Delay(Duration::from_millis(80), Box::new(Reply::Accept)));
    let mut config = config(&bootstrap, "g-scale", TOPIC, sink.url());
    config.batch.max_rows = 100;
    config.bigquery.max_concurrent_requests = 2;
    config.kafka.revoke_timeout_ms = 3_000;
    config.dedup.warmup_records = 5_000;
    // Small in-flight bounds keep revokes short (they wait for in-flight rows).
    config.pipeline.max_inflight_records = 1_000;
    config.pipeline.chunk_records = 250;
    config.kafka.properties.insert(
        "partition.assignment.strategy".into(),
        "cooperative-sticky".into(),
    );

    // Membership changes with stable stretches between them (the mock coordinator takes seconds
    // per rebalance and rejects commits while one is in progress).
    let wait = || std::thread::sleep(Duration::from_secs(5));
    let a = start(&config);
    wait();
    let b = start(&config);
    wait();
    let c = start(&config);
    wait();
    assert_eq!(b.shutdown().unwrap(), 0, "b leaves cleanly");
    wait();
    let d = start(&config);
    wait();
    let (stats_c, code) = (Arc::clone(&c.stats), c.abort().unwrap());
    assert_eq!(code, 137, "c is dropped without a clean shutdown");
    assert!(
        stats_c.snapshot().written > 0,
        "c took part before it crashed"
    );

    wait_fully_committed(&bootstrap, "g-scale", TOPIC, 12, Duration::from_secs(120));
    let (sa, sd) = (a.stats.snapshot(), d.stats.snapshot());
    assert_eq!(a.shutdown().unwrap(), 0);
    assert_eq!(d.shutdown().unwrap(), 0);
    assert!(
        sa.revoked > 0 && sd.assigned > 0,
        "partitions moved: {sa:?} {sd:?}"
    );

    let by_id = count_by(&sink.rows(TABLE), "event_id");
    let twice: Vec<_> = by_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} events present more than once, e.g. {:?}",
        twice.len(),
        twice.first()
    );
    assert_eq!(
        by_id.len() as u64,
        counts.unique,
        "every unique event is present"
    );
    println!(
        "rows dropped by insertId (re-sent after the crash): {}; abandoned at revoke: a {} d {}",
        sink.insert_id_dropped(),
        sa.abandoned,
        sd.abandoned
    );
}

#[test]
fn cooperative_sticky_moves_only_the_partitions_that_change_owner() {
    let (_cluster, bootstrap) = cluster(TOPIC, 4);
    let sink = Sink::start(SinkOptions {
        keep_rows: true,
        id_pointer: Some("/event_id".into()),
        ..Default::default()
    })
    .unwrap();
    let mut config = config(&bootstrap, "g-coop", TOPIC, sink.url());
    config.kafka.properties.insert(
        "partition.assignment.strategy".into(),
        "cooperative-sticky".into(),
    );
    let mut gen = Generator::new(Mix {
        duplicates: 0.0,
        malformed: 0.0,
        seed: 32,
    });
    let first: Vec<_> = gen.by_ref().take(2_000).collect();
    produce(&bootstrap, TOPIC, &first);

    let a = start(&config);
    wait_until(Duration::from_secs(30), "a consumes", || {
        a.stats.snapshot().written >= 2_000
    });
    let b = start(&config);
    wait_until(Duration::from_secs(30), "b gets partitions", || {
        b.stats.snapshot().assigned > 0
    });
    // Keep producing while both run.
    let second: Vec<_> = gen.by_ref().take(2_000).collect();
    produce(&bootstrap, TOPIC, &second);
    wait_fully_committed(&bootstrap, "g-coop", TOPIC, 4, Duration::from_secs(60));
    let (sa, sb) = (a.stats.snapshot(), b.stats.snapshot());
    assert_eq!(a.shutdown().unwrap(), 0);
    assert_eq!(b.shutdown().unwrap(), 0);

    // Eager assignors revoke all 4 partitions from `a` and give some back; cooperative-sticky
    // revokes only those that move, so the others keep flowing without a pause.
    assert_eq!(sa.assigned, 4, "a was assigned its partitions once: {sa:?}");
    assert!(
        sa.revoked >= 1 && sa.revoked < 4,
        "a gave up only the moved partitions: {sa:?}"
    );
    assert_eq!(
        sb.assigned, sa.revoked,
        "b got exactly what a gave up: {sb:?}"
    );
    let by_id = count_by(&sink.rows(TABLE), "event_id");
    assert_eq!(by_id.len(), 4_000);
    assert!(by_id.values().all(|&n| n == 1));
}

/// A backlog of `n` unique events, and a BigQuery fake that takes 2 s per request.
fn backlog_and_slow_sink(bootstrap: &str, n: usize, seed: u64) -> (Sink, Counts) {
    let mix = Mix {
        duplicates: 0.0,
        malformed: 0.0,
        seed,
    };
    let (events, counts) = events(n, mix);
    produce(bootstrap, TOPIC, &events);
    let sink = Sink::start(SinkOptions {
        keep_rows: false,
        id_pointer: Some("/event_id".into()),
        ..Default::default()
    })
    .unwrap();
    sink.set_hook(|_| Reply::Delay(Duration::from_secs(2), Box::new(Reply::Accept)));
    (sink, counts)
}

#[test]
fn a_slow_bigquery_pauses_partitions_keeps_memory_bounded_and_keeps_the_group() {
    let (_cluster, bootstrap) = cluster(TOPIC, 8);
    let (sink, counts) = backlog_and_slow_sink(&bootstrap, 100_000, 33);
    let mut config = config(&bootstrap, "g-slow", TOPIC, sink.url());
    config.pipeline.max_inflight_records = 2_000;
    config.pipeline.chunk_records = 500;
    config.bigquery.request_timeout_ms = 10_000;

    let rss_before = rss_bytes();
    let p = start(&config);
    // Longer than max.poll.interval.ms (10 s): the group must not evict the instance.
    let mut peak_rss = 0;
    for _ in 0..60 {
        std::thread::sleep(Duration::from_millis(250));
        peak_rss = peak_rss.max(rss_bytes());
    }
    let slow = p.stats.snapshot();
    sink.clear_hook();
    wait_fully_committed(&bootstrap, "g-slow", TOPIC, 8, Duration::from_secs(120));
    let done = p.stats.snapshot();
    assert_eq!(p.shutdown().unwrap(), 0);

    assert!(
        slow.written > 0 && slow.consumed < 100_000,
        "the backlog was held back: {slow:?}"
    );
    assert!(
        slow.peak_inflight_records >= 2_000,
        "the bound was reached: {}",
        slow.peak_inflight_records
    );
    assert!(
        slow.peak_inflight_records <= 2_000 + 500,
        "in flight per partition stayed within the bound plus one chunk: {}",
        slow.peak_inflight_records
    );
    let growth = peak_rss.saturating_sub(rss_before);
    assert!(
        growth < 150 << 20,
        "resident memory grew {} MiB while BigQuery was slow",
        growth >> 20
    );
    assert_eq!(
        (done.assigned, done.revoked),
        (8, 0),
        "never kicked out of the group: {done:?}"
    );
    assert_eq!(sink.id_stats(), (counts.unique, 0));
}

#[test]
fn a_slow_bigquery_holds_the_total_in_flight_bound_then_pauses_everything() {
    let (_cluster, bootstrap) = cluster(TOPIC, 8);
    let (sink, counts) = backlog_and_slow_sink(&bootstrap, 60_000, 34);
    let mut config = config(&bootstrap, "g-total", TOPIC, sink.url());
    // Per partition out of reach: only the total bound holds the backlog back.
    config.pipeline.max_inflight_records = 100_000;
    config.pipeline.max_inflight_bytes = 1 << 30;
    config.pipeline.max_total_inflight_records = 3_000;
    config.pipeline.chunk_records = 500;
    config.bigquery.request_timeout_ms = 10_000;

    let p = start(&config);
    // Longer than max.poll.interval.ms (10 s), and much longer than the 1 s the poller takes no
    // records before it pauses every partition and polls on.
    std::thread::sleep(Duration::from_secs(12));
    let slow = p.stats.snapshot();
    sink.clear_hook();
    wait_fully_committed(&bootstrap, "g-total", TOPIC, 8, Duration::from_secs(120));
    let done = p.stats.snapshot();
    assert_eq!(p.shutdown().unwrap(), 0);

    assert!(
        slow.written > 0 && slow.consumed < 60_000,
        "the backlog was held back: {slow:?}"
    );
    assert!(
        (3_000..3_000 + 500).contains(&slow.peak_total_inflight_records),
        "in flight over all partitions reached the bound and passed it by less than a chunk: {}",
        slow.peak_total_inflight_records
    );
    assert!(
        slow.pauses >= 8,
        "the bound held for over a second: every partition was paused: {slow:?}"
    );
    assert_eq!(
        (done.assigned, done.revoked),
        (8, 0),
        "never kicked out of the group: {done:?}"
    );
    assert_eq!(sink.id_stats(), (counts.unique, 0));
}

/// Part one is written and committed; part two repeats some of its events; the instance crashes
/// while part two's first batches are in flight; a new instance finishes. Returns the rows stored
/// more than once.
fn crash_with_straddling_duplicates(warmup_records: u64, group: &str) -> u64 {
    let (_cluster, bootstrap) = cluster(TOPIC, 2);
    let (part_one, _) = events(
        3_000,
        Mix {
            duplicates: 0.0,
            malformed: 0.0,
            seed: 34,
        },
    );
    produce(&bootstrap, TOPIC, &part_one);
    let sink = Sink::start(SinkOptions {
        keep_rows: false,
        id_pointer: Some("/event_id".into()),
        ..Default::default()
    })
    .unwrap();
    let mut config = config(&bootstrap, group, TOPIC, sink.url());
    // Only bqsink's own dedup counts here: no insertIds, and the fake keeps every row.
    config.bigquery.insert_id = InsertIdMode::None;
    config.errors.tolerance = Tolerance::All;
    config.dedup.warmup_records = warmup_records;

    let p1 = start(&config);
    wait_fully_committed(&bootstrap, group, TOPIC, 2, Duration::from_secs(60));
    // BigQuery stalls; part two arrives (new events and 300 repeats of part one); crash mid-batch.
    sink.set_hook(|_| {
        Reply::Delay(
            Duration::from_secs(30),
            Box::new(Reply::Fail {
                status: 503,
                reason: String::new(),
            }),
        )
    });
    let mut part_two: Vec<Event> = events(
        1_000,
        Mix {
            duplicates: 0.0,
            malformed: 0.0,
            seed: 35,
        },
    )
    .0;
    for e in &mut part_two {
        e.payload = String::from_utf8(e.payload.clone())
            .unwrap()
            .replace("evt-", "evt2-")
            .into_bytes();
    }
    part_two.extend(part_one.iter().step_by(10).cloned().map(|mut e| {
        e.kind = Kind::Duplicate;
        e
    }));
    produce(&bootstrap, TOPIC, &part_two);
    wait_until(Duration::from_secs(30), "part two in flight", || {
        p1.stats.snapshot().consumed >= 4_300
    });
    assert_eq!(p1.abort().unwrap(), 137);

    sink.clear_hook();
    let p2 = start(&config);
    wait_fully_committed(&bootstrap, group, TOPIC, 2, Duration::from_secs(60));
    assert_eq!(p2.shutdown().unwrap(), 0);
    let (distinct, repeats) = sink.id_stats();
    assert_eq!(distinct, 4_000, "nothing lost");
    repeats
}

#[test]
fn dedup_warmup_drops_duplicates_that_straddle_a_crash() {
    let without = crash_with_straddling_duplicates(0, "g-nowarm");
    assert!(
        without > 0,
        "without warm-up the repeats of committed events are written again"
    );
    let with = crash_with_straddling_duplicates(10_000, "g-warm");
    assert_eq!(with, 0, "with warm-up no duplicate row is written");
}
