//! Exactly-once delivery (`bigquery.delivery = "exactly_once"`) end to end: the mock cluster, the
//! local sink's BUFFERED streams (rows visible only once flushed, duplicates kept and counted), and
//! the real `bqsink` binary killed with SIGKILL at each point of the protocol.
//!
//! The invariant under test: whatever happens to the instances — killed mid-append, after an append
//! before the Kafka commit, after the Kafka commit before the flush, stopped, joined by others —
//! every event is in the table exactly once: `rows = distinct event ids = events produced`. The
//! pipeline's own dedup is off (`dedup.key = "none"`) so that it hides nothing.

mod common;
#[path = "support/admin.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bqsink_actors::config::{Config, Delivery, WriteApi};
use bqsink_devtools::sink::{Reply, Sink, SinkOptions};
use common::*;
use support::unique_events;

const WAIT: Duration = Duration::from_secs(90);

static SERIAL: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    // The pipeline's log on stderr with RUST_LOG (e.g. `RUST_LOG=bqsink=debug`), for failures.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A sink with `ds.<topic>` (member events), counting rows by event id.
fn sink(topic: &str) -> Sink {
    let sink = Sink::start(SinkOptions {
        keep_rows: false,
        id_pointer: Some("/event_id".into()),
        ..SinkOptions::default()
    })
    .unwrap();
    sink.manage_tables();
    sink.create_table(&format!("ds.{topic}"), member_events_fields());
    sink
}

/// The in-process pipeline's config: exactly once, no dedup.
fn eo_config(bootstrap: &str, group: &str, topic: &str, sink: &Sink) -> Config {
    let mut c = config(bootstrap, group, topic, sink.url());
    use_storage_write(&mut c, sink);
    c.bigquery.delivery = Delivery::ExactlyOnce;
    c.dedup.key = bqsink_actors::config::DedupKey::None;
    c
}

/// The binary's config file: exactly once, no dedup, commits every `commit_ms`.
fn eo_toml(bootstrap: &str, group: &str, topic: &str, sink: &Sink, commit_ms: u64) -> String {
    base_toml(bootstrap, group, topic, sink.url())
        .replace(
            "write_api = \"insert_all\"\ndelivery = \"at_least_once\"\n",
            &format!(
                "write_api = \"storage\"\ndelivery = \"exactly_once\"\nstorage_endpoint = \"{}\"\n",
                sink.grpc_url()
            ),
        )
        .replace(
            "commit_interval_ms = 200",
            &format!("commit_interval_ms = {commit_ms}"),
        )
        + r#"
[dedup]
key = "none"
[errors]
retry_delay_max_ms = 200
[logging]
format = "json"
level = "info"
[admin]
listen = "127.0.0.1:0"
"#
}

/// Rows in the sink, distinct ids and repeated rows; panics unless every one of `n` events is there
/// exactly once.
/// Makes every FlushRows of `sink` answer 503 until the returned switch is set to false.
fn failing_flushes(sink: &Sink) -> Arc<AtomicBool> {
    let down = Arc::new(AtomicBool::new(true));
    let d = Arc::clone(&down);
    sink.set_flush_hook(move |_, _| {
        if d.load(Ordering::SeqCst) {
            Reply::Fail {
                status: 503,
                reason: "backendError".into(),
            }
        } else {
            Reply::Accept
        }
    });
    down
}

fn assert_exactly_once(sink: &Sink, n: usize, when: &str) {
    assert_eq!(
        sink.id_stats(),
        (n as u64, 0),
        "{when}: (distinct events, repeated rows) in the table; streams: {:?}",
        sink.write_streams()
    );
    assert_eq!(sink.total_rows(), n as u64, "{when}: rows in the table");
}

#[test]
fn every_event_lands_once_through_buffered_streams_named_in_the_commit_metadata() {
    let _serial = one_at_a_time();
    let topic = "eo_basic";
    let (_cluster, bootstrap) = cluster(topic, 4);
    let sink = sink(topic);
    produce(&bootstrap, topic, &unique_events(4_000, "a", 1));
    let pipeline = start(&eo_config(&bootstrap, "g-eo", topic, &sink));
    wait_fully_committed(&bootstrap, "g-eo", topic, 4, WAIT);
    wait_until(WAIT, "every row flushed", || sink.total_rows() == 4_000);
    let metadata = committed_metadata(&bootstrap, "g-eo", topic, 4);
    assert!(
        metadata.iter().all(|m| m.starts_with("bqsink1")),
        "the commits carry the protocol's metadata: {metadata:?}"
    );
    assert_eq!(pipeline.shutdown().unwrap(), 0);
    assert_exactly_once(&sink, 4_000, "after a clean run");
    let streams = sink.write_streams();
    assert!(streams.len() >= 4, "a stream per partition: {streams:?}");
    for (name, appended, flushed, _) in &streams {
        assert_eq!(appended, flushed, "{name}: every appended row was flushed");
    }
    assert!(
        streams.iter().all(|s| s.3),
        "a clean shutdown finalizes the streams once no commit names them: {streams:?}"
    );
}

/// Injected faults of the Storage Write API: every event still once, without a restart.
#[test]
fn unavailable_bursts_offset_errors_and_failing_flushes_lose_and_duplicate_nothing() {
    let _serial = one_at_a_time();
    let topic = "eo_faults";
    let (_cluster, bootstrap) = cluster(topic, 4);
    let sink = sink(topic);
    // Appends: every 7th is refused UNAVAILABLE (the writer cannot know whether the rows went in);
    // every 11th answers ALREADY_EXISTS, every 13th OUT_OF_RANGE (the stream is not where the
    // writer believes).
    let appends = Arc::new(AtomicU64::new(0));
    let a = Arc::clone(&appends);
    sink.set_hook(move |_| match a.fetch_add(1, Ordering::SeqCst) + 1 {
        n if n % 7 == 0 => Reply::Fail {
            status: 503,
            reason: "backendError".into(),
        },
        n if n % 11 == 0 => Reply::InBand {
            code: 6,
            message: "injected ALREADY_EXISTS".into(),
        },
        n if n % 13 == 0 => Reply::InBand {
            code: 11,
            message: "injected OUT_OF_RANGE".into(),
        },
        _ => Reply::Accept,
    });
    // Flushes: the first three fail (the next commit flushes again).
    let flushes = Arc::new(AtomicU64::new(0));
    let f = Arc::clone(&flushes);
    sink.set_flush_hook(move |_, _| {
        if f.fetch_add(1, Ordering::SeqCst) < 3 {
            Reply::Fail {
                status: 503,
                reason: "backendError".into(),
            }
        } else {
            Reply::Accept
        }
    });
    let mut config = eo_config(&bootstrap, "g-eo-faults", topic, &sink);
    config.batch.max_rows = 100;
    let pipeline = start(&config);
    produce(&bootstrap, topic, &unique_events(6_000, "a", 2));
    wait_fully_committed(&bootstrap, "g-eo-faults", topic, 4, WAIT);
    wait_until(WAIT, "every row flushed", || sink.total_rows() >= 6_000);
    assert_eq!(pipeline.shutdown().unwrap(), 0);
    assert!(appends.load(Ordering::SeqCst) >= 13, "the faults were hit");
    assert!(
        flushes.load(Ordering::SeqCst) > 3,
        "flushes failed, then went through"
    );
    let retired = sink.write_streams().len();
    assert!(retired > 4, "streams were retired and replaced: {retired}");
    assert_exactly_once(&sink, 6_000, "after the faults");
}

/// Flushes that keep failing leave committed rows invisible: not lost (every commit flushes again),
/// but never silent — past `errors.retry_timeout_ms` the table's FlushRows shows as a failing sink
/// (`/status`, `/readyz`, metrics, Slack) and recovers once a flush goes through.
#[test]
fn flushes_failing_past_the_retry_timeout_show_as_a_sink_failure_and_recover() {
    let _serial = one_at_a_time();
    let topic = "eo_flush_down";
    let (_cluster, bootstrap) = cluster(topic, 4);
    let sink = sink(topic);
    let down = failing_flushes(&sink);
    let group = "g-eo-flush-down";
    let mut config = eo_config(&bootstrap, group, topic, &sink);
    config.errors.retry_timeout_ms = 1_000;
    let pipeline = start(&config);
    let health = &pipeline.stats.health;
    produce(&bootstrap, topic, &unique_events(2_000, "a", 5));
    wait_fully_committed(&bootstrap, group, topic, 4, WAIT);
    let name = format!("bigquery ds.{topic} (FlushRows)");
    wait_until(WAIT, "the failing flushes reported", || {
        health.failing_now().iter().any(|s| s.sink == name)
    });
    assert_eq!(sink.total_rows(), 0, "nothing visible while flushes fail");
    down.store(false, Ordering::SeqCst);
    wait_until(WAIT, "every row flushed", || sink.total_rows() >= 2_000);
    wait_until(WAIT, "the flushes recovered", || {
        health.snapshot().is_empty()
    });
    assert_eq!(health.incidents(), 1, "one incident");
    assert_eq!(pipeline.shutdown().unwrap(), 0);
    assert_exactly_once(&sink, 2_000, "after the flushes recovered");
}

/// Under `errors.sink_failure = "stop"` flushes failing past the retry timeout stop the pipeline
/// (non-zero); a restart flushes the committed streams first, and every row shows once.
#[test]
fn under_sink_failure_stop_failing_flushes_stop_the_pipeline_and_a_restart_flushes_them() {
    let _serial = one_at_a_time();
    let topic = "eo_flush_stop";
    let (_cluster, bootstrap) = cluster(topic, 4);
    let sink = sink(topic);
    let down = failing_flushes(&sink);
    let group = "g-eo-flush-stop";
    let mut config = eo_config(&bootstrap, group, topic, &sink);
    config.errors.retry_timeout_ms = 1_000;
    config.errors.sink_failure = bqsink_actors::config::SinkFailure::Stop;
    config.pipeline.shutdown_timeout_ms = 5_000;
    let pipeline = start(&config);
    produce(&bootstrap, topic, &unique_events(2_000, "a", 5));
    wait_fully_committed(&bootstrap, group, topic, 4, WAIT);
    wait_until(WAIT, "the pipeline stopped", || pipeline.is_finished());
    assert_ne!(
        pipeline.wait().unwrap(),
        0,
        "a sink failure under \"stop\" exits non-zero"
    );
    assert_eq!(sink.total_rows(), 0, "nothing visible while flushes fail");

    down.store(false, Ordering::SeqCst);
    let again = start(&config);
    wait_until(WAIT, "every row flushed by the restart", || {
        sink.total_rows() >= 2_000
    });
    assert_eq!(again.shutdown().unwrap(), 0);
    assert_exactly_once(&sink, 2_000, "after the restart");
}

/// A stream finalized by someone else while it holds acknowledged rows that no commit covers yet:
/// they can never be flushed, so the partition's commit stays below them; a restart writes them
/// again to a new stream.
#[test]
fn a_stream_finalized_under_the_writer_holds_the_commit_and_a_restart_writes_its_rows_once() {
    let _serial = one_at_a_time();
    let topic = "eo_finalized";
    let (_cluster, bootstrap) = cluster(topic, 4);
    let sink = sink(topic);
    let group = "g-eo-finalized";
    let mut config = eo_config(&bootstrap, group, topic, &sink);
    // No periodic commit before the fault: only the shutdown's.
    config.kafka.commit_interval_ms = 600_000;
    let pipeline = start(&config);
    produce(&bootstrap, topic, &unique_events(3_000, "a", 3));
    wait_until(WAIT, "a stream with rows", || {
        sink.write_streams().iter().any(|s| s.1 > 0)
    });
    let victim = sink.write_streams().into_iter().find(|s| s.1 > 0).unwrap();
    sink.finalize_stream(&victim.0);
    produce(&bootstrap, topic, &unique_events(3_000, "b", 4));
    wait_until(WAIT, "every record written somewhere", || {
        pipeline.stats.snapshot().written >= 6_000
    });
    assert_eq!(pipeline.shutdown().unwrap(), 0);
    let ends: Vec<i64> = watermarks(&bootstrap, topic, 4)
        .iter()
        .map(|w| w.1)
        .collect();
    let held = committed(&bootstrap, group, topic, 4);
    assert!(
        held.iter().zip(&ends).any(|(c, e)| c.unwrap_or(0) < *e),
        "a commit is held below the finalized stream's rows: committed {held:?}, ends {ends:?}"
    );
    assert!(
        sink.total_rows() < 6_000,
        "its rows were never made visible"
    );
    assert_eq!(sink.id_stats().1, 0, "and nothing twice");
    config.kafka.commit_interval_ms = 200;
    let pipeline = start(&config);
    wait_fully_committed(&bootstrap, group, topic, 4, WAIT);
    wait_until(WAIT, "every row flushed", || sink.total_rows() >= 6_000);
    assert_eq!(pipeline.shutdown().unwrap(), 0);
    assert_exactly_once(
        &sink,
        6_000,
        "after a stream was finalized under the writer",
    );
}

/// Where the running instance is killed.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// An append is on the wire (the sink holds it unanswered).
    MidAppend,
    /// Rows are appended and acknowledged, no commit covers them yet.
    AfterAppendBeforeCommit,
    /// The commit naming the rows went through; their flush has not (the sink holds it).
    AfterCommitBeforeFlush,
}

fn kill_and_restart(point: KillPoint, topic: &'static str) {
    let (_cluster, bootstrap) = cluster(topic, 4);
    let group = format!("g-{topic}");
    let sink = sink(topic);
    let n = 8_000;
    produce(&bootstrap, topic, &unique_events(n / 2, "a", 5));
    let hold = Arc::new(AtomicBool::new(false));
    let held = Arc::new(AtomicU64::new(0));
    let (h, c) = (Arc::clone(&hold), Arc::clone(&held));
    let delay = move || {
        if h.load(Ordering::SeqCst) {
            c.fetch_add(1, Ordering::SeqCst);
            Reply::Delay(Duration::from_secs(600), Box::new(Reply::Accept))
        } else {
            Reply::Accept
        }
    };
    match point {
        KillPoint::MidAppend => sink.set_hook(move |_| delay()),
        KillPoint::AfterCommitBeforeFlush => sink.set_flush_hook(move |_, _| delay()),
        KillPoint::AfterAppendBeforeCommit => {}
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("eo.toml");
    // Long commit intervals for the kill between append and commit.
    let commit_ms = match point {
        KillPoint::AfterAppendBeforeCommit => 60_000,
        _ => 300,
    };
    std::fs::write(&file, eo_toml(&bootstrap, &group, topic, &sink, commit_ms)).unwrap();
    let mut run = BqsinkRun::spawn(&file);
    // Some rows are visible (committed and flushed) before the fault, in the held cases.
    if !matches!(point, KillPoint::AfterAppendBeforeCommit) {
        wait_until(WAIT, "some rows flushed", || sink.total_rows() > 0);
    }
    hold.store(true, Ordering::SeqCst);
    produce(&bootstrap, topic, &unique_events(n / 2, "b", 6));
    let start = Instant::now();
    loop {
        let ready = match point {
            KillPoint::MidAppend | KillPoint::AfterCommitBeforeFlush => {
                held.load(Ordering::SeqCst) > 0
            }
            KillPoint::AfterAppendBeforeCommit => {
                let appended: usize = sink.write_streams().iter().map(|s| s.1).sum();
                appended >= n / 2
            }
        };
        if ready {
            break;
        }
        assert!(run.running(), "bqsink exited early:\n{}", run.tail());
        assert!(
            start.elapsed() < WAIT,
            "{point:?} never reached:\n{}",
            run.tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    if let KillPoint::AfterCommitBeforeFlush = point {
        // The commit that names the held flush's rows went through before the flush was sent.
        let meta = committed_metadata(&bootstrap, &group, topic, 4);
        assert!(meta.iter().any(|m| m.contains(',')), "{meta:?}");
    }
    run.kill9();
    let visible_at_kill = sink.total_rows();
    assert!(
        visible_at_kill < n as u64,
        "{point:?}: not everything was visible at the kill"
    );
    hold.store(false, Ordering::SeqCst);
    let mut again = BqsinkRun::spawn(&file);
    if let KillPoint::AfterAppendBeforeCommit = point {
        // Its commits come only every minute: a SIGTERM commits and flushes on the way out.
        wait_until(WAIT, "the restart read everything", || {
            sink.write_streams().iter().map(|s| s.1).sum::<usize>() >= n + n / 2
        });
        assert_eq!(again.terminate(WAIT), 0, "{}", again.tail());
    } else {
        wait_fully_committed(&bootstrap, &group, topic, 4, WAIT);
        wait_until(WAIT, "every row flushed", || sink.total_rows() >= n as u64);
        assert_eq!(again.terminate(WAIT), 0, "{}", again.tail());
    }
    assert_exactly_once(&sink, n, &format!("after kill -9 {point:?} and a restart"));
}

#[test]
fn kill_9_mid_append_then_restart_writes_every_event_once() {
    let _serial = one_at_a_time();
    kill_and_restart(KillPoint::MidAppend, "eo_kill_append");
}

#[test]
fn kill_9_after_the_append_before_the_kafka_commit_then_restart_writes_every_event_once() {
    let _serial = one_at_a_time();
    kill_and_restart(KillPoint::AfterAppendBeforeCommit, "eo_kill_commit");
}

#[test]
fn kill_9_after_the_kafka_commit_before_the_flush_then_restart_writes_every_event_once() {
    let _serial = one_at_a_time();
    kill_and_restart(KillPoint::AfterCommitBeforeFlush, "eo_kill_flush");
}

#[test]
fn three_instances_joining_one_stopped_one_killed_write_every_event_once() {
    let _serial = one_at_a_time();
    let topic = "eo_group";
    let partitions = 6;
    let (cluster, bootstrap) = {
        let (c, b) = cluster(topic, partitions);
        (c, b)
    };
    let _keep = &cluster;
    let group = "g-eo-group";
    let sink = sink(topic);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("eo.toml");
    std::fs::write(&file, eo_toml(&bootstrap, group, topic, &sink, 300)).unwrap();
    let batch = 5_000;
    let mut produced = 0;
    let mut produce_batch = |seed: u64| {
        produce(
            &bootstrap,
            topic,
            &unique_events(batch, &format!("s{seed}"), seed),
        );
        produced += batch;
    };
    let mut a = BqsinkRun::spawn(&file);
    produce_batch(10);
    wait_until(WAIT, "A writes", || sink.total_rows() > 0);
    let mut b = BqsinkRun::spawn(&file);
    produce_batch(11);
    let mut c = BqsinkRun::spawn(&file);
    produce_batch(12);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(a.terminate(WAIT), 0, "A stops cleanly:\n{}", a.tail());
    produce_batch(13);
    std::thread::sleep(Duration::from_secs(2));
    b.kill9();
    produce_batch(14);
    let mut b2 = BqsinkRun::spawn(&file);
    produce_batch(15);
    wait_fully_committed(&bootstrap, group, topic, partitions, WAIT);
    wait_until(WAIT, "every row flushed", || {
        sink.total_rows() >= produced as u64
    });
    assert_eq!(c.terminate(WAIT), 0, "{}", c.tail());
    assert_eq!(b2.terminate(WAIT), 0, "{}", b2.tail());
    assert_exactly_once(&sink, produced, "three instances, a SIGTERM and a kill -9");
}

#[test]
fn exactly_once_needs_the_storage_write_api() {
    let mut c = Config::default();
    c.kafka.topics = vec!["t".into()];
    c.bigquery.project = "p".into();
    c.bigquery.dataset = "d".into();
    c.bigquery.delivery = Delivery::ExactlyOnce;
    c.bigquery.write_api = WriteApi::InsertAll;
    let e = c.validate().unwrap_err();
    assert_eq!(e.key, "bigquery.delivery");
}
