//! Failure handling against the mock cluster and the insertAll fake: the dead-letter topic and its
//! context headers, commits that wait for dead-letter delivery (also through injected Produce
//! errors), aggregated Slack alerts through a webhook outage, the NDJSON error file, and replay from
//! the dead-letter topic and from files.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bqsink::bigquery::RestClient;
use bqsink::destinations::error_file::{rotated_files, FileRecord};
use bqsink::replay::{self, ReplayFrom, ReplayOptions, ReplayTo};
use bqsink::service::PipelineHandle;
use bqsink_actors::config::{Config, Tolerance};
use bqsink_actors::messages::Stage;
use bqsink_devtools::sink::{Reply, Sink, SinkOptions};
use common::*;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde_json::Value;

const TOPIC: &str = "events";
const TABLE: &str = "ds.events";
const DLQ: &str = "events-dlq";

/// One record to produce (all to partition 0, so its offset is its index).
#[derive(Clone, Debug)]
struct Rec {
    key: Vec<u8>,
    value: Vec<u8>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

fn good(i: usize) -> Rec {
    Rec {
        key: format!("k-{i}").into_bytes(),
        value: format!(r#"{{"event_id":"e-{i}","n":{i}}}"#).into_bytes(),
        headers: vec![("trace".into(), Some(format!("t-{i}").into_bytes()))],
    }
}

/// Not JSON, not UTF-8, with a header without value.
fn malformed(i: usize) -> Rec {
    let mut value = format!(r#"{{"event_id":"bad-{i}","n":"#).into_bytes();
    value.extend_from_slice(&[0xff, 0xfe, b',', b'}']);
    Rec {
        key: vec![0, 1, 2, i as u8],
        value,
        headers: vec![
            ("trace".into(), Some(vec![0xff, i as u8])),
            ("empty".into(), None),
        ],
    }
}

fn produce_recs(bootstrap: &str, topic: &str, recs: &[Rec]) {
    let p = bqsink_devtools::kafka::producer(bootstrap).unwrap();
    for r in recs {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let record = BaseRecord::<[u8], [u8]>::to(topic)
            .partition(0)
            .key(&r.key)
            .payload(&r.value)
            .headers(headers);
        p.send(record).map_err(|(e, _)| e).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

fn dlq_count(bootstrap: &str) -> i64 {
    watermarks(bootstrap, DLQ, 1)[0].1
}

fn sink() -> Sink {
    Sink::start(SinkOptions {
        keep_rows: true,
        id_pointer: Some("/event_id".into()),
        ..Default::default()
    })
    .unwrap()
}

fn client(config: &Config) -> Arc<RestClient> {
    Arc::new(RestClient::new(&config.bigquery).unwrap())
}

fn start(config: &Config) -> PipelineHandle {
    PipelineHandle::spawn(config.clone(), client(config)).unwrap()
}

/// A test config with tolerance "all" and the dead-letter topic.
fn dlq_config(bootstrap: &str, group: &str, endpoint: &str) -> Config {
    let mut c = config(bootstrap, group, TOPIC, endpoint);
    c.errors.tolerance = Tolerance::All;
    c.errors.deadletterqueue.topic_name = DLQ.into();
    c
}

/// Rejects (as `invalid`) the rows whose event_id is in `bad`, like BigQuery for a bad field.
fn reject_ids(sink: &Sink, bad: &'static [&'static str]) {
    sink.set_hook(move |req| {
        let idx: Vec<usize> = req
            .rows
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r["json"]["event_id"]
                    .as_str()
                    .is_some_and(|id| bad.contains(&id))
            })
            .map(|(i, _)| i)
            .collect();
        if idx.is_empty() {
            Reply::Accept
        } else {
            Reply::RejectRows(idx)
        }
    });
}

fn ids(sink: &Sink) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in sink.rows(TABLE) {
        *m.entry(r["event_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    m
}

const CONTEXT_HEADERS: [&str; 10] = [
    "__connect.errors.topic",
    "__connect.errors.partition",
    "__connect.errors.offset",
    "__connect.errors.connector.name",
    "__connect.errors.task.id",
    "__connect.errors.stage",
    "__connect.errors.class.name",
    "__connect.errors.exception.class.name",
    "__connect.errors.exception.message",
    "__connect.errors.exception.stacktrace",
];

#[test]
fn three_invalid_rows_among_500_go_to_the_dead_letter_topic_with_the_bigquery_reason() {
    let (cluster, bootstrap) = cluster(TOPIC, 1);
    cluster.create_topic(DLQ, 1, 1).unwrap();
    let recs: Vec<Rec> = (0..500).map(good).collect();
    produce_recs(&bootstrap, TOPIC, &recs);
    let sink = sink();
    static BAD: &[&str] = &["e-7", "e-250", "e-499"];
    reject_ids(&sink, BAD);
    let mut config = dlq_config(&bootstrap, "g-invalid", sink.url());
    config.batch.linger_ms = 500;
    let pipeline = start(&config);
    wait_fully_committed(&bootstrap, "g-invalid", TOPIC, 1, Duration::from_secs(60));
    let stats = pipeline.stats.snapshot();
    assert_eq!(pipeline.shutdown().unwrap(), 0);

    let ids = ids(&sink);
    assert_eq!(ids.len(), 497, "every valid row is written");
    assert!(ids.values().all(|&n| n == 1), "no row is written twice");
    assert!(BAD.iter().all(|b| !ids.contains_key(*b)));
    assert_eq!(stats.failed, 3);

    let dead = read_topic(&bootstrap, DLQ);
    assert_eq!(
        dead.len(),
        3,
        "exactly the 3 rejected rows are dead-lettered"
    );
    for d in &dead {
        let offset: usize = d
            .header("__connect.errors.offset")
            .unwrap()
            .parse()
            .unwrap();
        let original = &recs[offset];
        assert!(BAD.contains(&format!("e-{offset}").as_str()), "{offset}");
        assert_eq!(
            d.value.as_deref(),
            Some(original.value.as_slice()),
            "original value"
        );
        assert_eq!(
            d.key.as_deref(),
            Some(original.key.as_slice()),
            "original key"
        );
        assert_eq!(d.own_headers(), original.headers, "original headers");
        assert_eq!(d.header("__connect.errors.topic").unwrap(), TOPIC);
        assert_eq!(d.header("__connect.errors.partition").unwrap(), "0");
        assert_eq!(d.header("__connect.errors.stage").unwrap(), "TASK_PUT");
        assert_eq!(
            d.header("__connect.errors.exception.class.name").unwrap(),
            "insert_error"
        );
        let message = d.header("__connect.errors.exception.message").unwrap();
        assert!(
            message.contains("invalid") && message.contains("no such field: bogus"),
            "the BigQuery reason is in the headers: {message}"
        );
        assert_eq!(
            d.header("__connect.errors.connector.name").unwrap(),
            "g-invalid"
        );
    }
}

/// 50 good records, a malformed one at offset 50, 49 more good ones.
fn with_malformed_at_50() -> Vec<Rec> {
    (0..100)
        .map(|i| if i == 50 { malformed(i) } else { good(i) })
        .collect()
}

#[test]
fn malformed_json_is_dead_lettered_with_all_context_headers_before_its_offset_is_committed() {
    let (cluster, bootstrap) = cluster(TOPIC, 1);
    cluster.create_topic(DLQ, 1, 1).unwrap();
    let recs = with_malformed_at_50();
    produce_recs(&bootstrap, TOPIC, &recs);
    let sink = sink();
    let config = dlq_config(&bootstrap, "g-malformed", sink.url());
    let pipeline = start(&config);
    wait_fully_committed(&bootstrap, "g-malformed", TOPIC, 1, Duration::from_secs(60));
    // The commit passed offset 50, so the dead-letter record is there already.
    assert_eq!(dlq_count(&bootstrap), 1);
    assert_eq!(pipeline.shutdown().unwrap(), 0);

    assert_eq!(ids(&sink).len(), 99);
    let dead = read_topic(&bootstrap, DLQ);
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    for h in CONTEXT_HEADERS {
        assert!(d.header(h).is_some_and(|v| !v.is_empty()), "header {h}");
    }
    assert_eq!(d.header("__connect.errors.offset").unwrap(), "50");
    assert_eq!(
        d.header("__connect.errors.stage").unwrap(),
        "VALUE_CONVERTER"
    );
    assert_eq!(
        d.header("__connect.errors.exception.class.name").unwrap(),
        "invalid_json"
    );
    assert_eq!(d.value.as_deref(), Some(recs[50].value.as_slice()));
    assert_eq!(d.key.as_deref(), Some(recs[50].key.as_slice()));
    assert_eq!(
        d.own_headers(),
        recs[50].headers,
        "original headers kept, a null value included"
    );
}

#[test]
fn produce_errors_on_the_dead_letter_topic_lose_nothing_and_never_let_the_commit_pass() {
    let (cluster, bootstrap) = cluster(TOPIC, 1);
    cluster.create_topic(DLQ, 1, 1).unwrap();
    let recs = with_malformed_at_50();
    produce_recs(&bootstrap, TOPIC, &recs);
    // From now on the broker refuses Produce requests for a while: the dead-letter producer retries
    // inside librdkafka until the message times out, then bqsink produces it again. 100 refusals
    // at 20 ms of backoff at least outlast the 1 s message timeout however fast the retries come
    // (20 did not always, on a loaded machine).
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 100],
    );
    let sink = sink();
    let mut config = dlq_config(&bootstrap, "g-dlqfault", sink.url());
    for (k, v) in [
        ("message.timeout.ms", "1000"),
        ("retry.backoff.ms", "20"),
        ("retry.backoff.max.ms", "100"),
    ] {
        config
            .errors
            .deadletterqueue
            .properties
            .insert(k.into(), v.into());
    }
    let pipeline = start(&config);

    // Until the dead-letter record exists, the commit stays at or below the failed record.
    let start = Instant::now();
    let mut held_at_50 = false;
    loop {
        let committed = committed(&bootstrap, "g-dlqfault", TOPIC, 1)[0];
        let delivered = dlq_count(&bootstrap) > 0;
        if !delivered {
            assert!(
                committed.unwrap_or(0) <= 50,
                "committed {committed:?} past the record whose dead-letter delivery is pending"
            );
            held_at_50 |= committed == Some(50);
        }
        if committed == Some(100) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "commit never reached the end"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = pipeline.stats.snapshot();
    assert_eq!(pipeline.shutdown().unwrap(), 0);

    assert!(
        stats.report_retries >= 1,
        "the dead-letter delivery failed and was retried"
    );
    assert!(
        held_at_50,
        "the records before the failed one were committed meanwhile"
    );
    let dead = read_topic(&bootstrap, DLQ);
    // Refused requests store nothing, so the retries leave exactly one copy.
    assert_eq!(dead.len(), 1, "the failed record is not lost, nor doubled");
    assert!(
        dead.iter()
            .all(|d| d.value.as_deref() == Some(recs[50].value.as_slice())
                && d.header("__connect.errors.offset").as_deref() == Some("50")),
        "only the failed record is dead-lettered"
    );
    assert_eq!(ids(&sink).len(), 99, "the good records are all written");
}

/// A Slack incoming-webhook stand-in: answers 503 while down, records accepted posts.
struct Webhook {
    url: String,
    up: Arc<AtomicBool>,
    attempts: Arc<AtomicU64>,
    posts: Arc<Mutex<Vec<(Instant, String)>>>,
    _runtime: tokio::runtime::Runtime,
}

fn webhook() -> Webhook {
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::post;

    #[derive(Clone)]
    struct S {
        up: Arc<AtomicBool>,
        attempts: Arc<AtomicU64>,
        posts: Arc<Mutex<Vec<(Instant, String)>>>,
    }
    async fn hook(State(s): State<S>, body: axum::body::Bytes) -> StatusCode {
        s.attempts.fetch_add(1, Ordering::SeqCst);
        if !s.up.load(Ordering::SeqCst) {
            return StatusCode::SERVICE_UNAVAILABLE;
        }
        let v: Value = serde_json::from_slice(&body).unwrap();
        s.posts
            .lock()
            .unwrap()
            .push((Instant::now(), v["text"].as_str().unwrap().to_owned()));
        StatusCode::OK
    }
    let s = S {
        up: Arc::new(AtomicBool::new(false)),
        attempts: Arc::default(),
        posts: Arc::default(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(
            "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
        ))
        .unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/hook", post(hook))
        .with_state(s.clone());
    runtime.spawn(async move { axum::serve(listener, app).await });
    Webhook {
        url,
        up: s.up,
        attempts: s.attempts,
        posts: s.posts,
        _runtime: runtime,
    }
}

/// N in "... N records failed since ...".
fn failed_count(text: &str) -> u64 {
    let head = text.lines().next().unwrap();
    let before = head.split(" records failed").next().unwrap();
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn a_slack_outage_never_blocks_the_pipeline_and_alerts_are_one_aggregated_post_per_window() {
    let (_cluster, bootstrap) = cluster(TOPIC, 1);
    let mut recs: Vec<Rec> = Vec::new();
    for i in 0..120 {
        recs.push(if i % 6 == 5 { malformed(i) } else { good(i) });
    }
    produce_recs(&bootstrap, TOPIC, &recs); // 20 malformed
    let hook = webhook();
    let sink = sink();
    let mut config = config(&bootstrap, "g-slack", TOPIC, sink.url());
    config.errors.tolerance = Tolerance::All;
    config.errors.slack.webhook_url = Some(hook.url.clone().into());
    config.errors.slack.window_secs = 1;
    let pipeline = start(&config);

    // Slack is down: the pipeline still writes and commits everything.
    wait_fully_committed(&bootstrap, "g-slack", TOPIC, 1, Duration::from_secs(60));
    assert_eq!(ids(&sink).len(), 100);
    wait_until(Duration::from_secs(30), "retried posts", || {
        hook.attempts.load(Ordering::SeqCst) >= 2
    });
    assert!(hook.posts.lock().unwrap().is_empty());

    // Slack is back: the 20 failures arrive as one message.
    hook.up.store(true, Ordering::SeqCst);
    wait_until(Duration::from_secs(30), "the first alert", || {
        !hook.posts.lock().unwrap().is_empty()
    });
    {
        let posts = hook.posts.lock().unwrap();
        assert_eq!(posts.len(), 1);
        let text = &posts[0].1;
        assert_eq!(failed_count(text), 20, "{text}");
        assert!(
            text.contains("`events` convert invalid_json: 20 (partition@offset 0@5, 0@11, 0@17, 0@23, 0@29, …)"),
            "{text}"
        );
    }

    // Five more failures: a second message, a window after the first.
    let more: Vec<Rec> = (200..205).map(malformed).collect();
    produce_recs(&bootstrap, TOPIC, &more);
    wait_fully_committed(&bootstrap, "g-slack", TOPIC, 1, Duration::from_secs(60));
    wait_until(Duration::from_secs(30), "the second alert", || {
        hook.posts.lock().unwrap().len() >= 2
    });
    assert_eq!(pipeline.shutdown().unwrap(), 0);
    let posts = hook.posts.lock().unwrap().clone();
    assert_eq!(posts.len(), 2, "{posts:?}");
    assert_eq!(failed_count(&posts[1].1), 5, "{}", posts[1].1);
    assert!(
        posts[1].0 - posts[0].0 >= Duration::from_millis(990),
        "two posts within one window: {:?}",
        posts[1].0 - posts[0].0
    );
}

#[test]
fn replay_from_the_dead_letter_topic_to_bigquery_and_to_the_source_repeats_nothing() {
    let (cluster, bootstrap) = cluster(TOPIC, 1);
    cluster.create_topic(DLQ, 1, 1).unwrap();
    let mut recs: Vec<Rec> = (0..100).map(good).collect();
    recs[40] = malformed(40);
    produce_recs(&bootstrap, TOPIC, &recs);
    let sink = sink();
    static BAD: &[&str] = &["e-3", "e-60", "e-61"];
    reject_ids(&sink, BAD);
    let config = dlq_config(&bootstrap, "g-replay", sink.url());
    let pipeline = start(&config);
    wait_fully_committed(&bootstrap, "g-replay", TOPIC, 1, Duration::from_secs(60));
    assert_eq!(pipeline.shutdown().unwrap(), 0);
    assert_eq!(dlq_count(&bootstrap), 4);
    assert_eq!(ids(&sink).len(), 96);

    // The table is fixed; replay the BigQuery failures to BigQuery.
    sink.clear_hook();
    let bq = || -> Option<Arc<dyn bqsink_actors::bigquery::BigQuery>> { Some(client(&config)) };
    let mut to_bq = ReplayOptions::new(ReplayFrom::Dlq(DLQ.into()), ReplayTo::BigQuery);
    to_bq.filter_stage = Some(Stage::BigQuery);
    let r = replay::run(&config, bq(), &to_bq).unwrap();
    assert_eq!(
        (r.read, r.replayed, r.skipped, r.still_failing),
        (4, 3, 1, 0),
        "{r:?}"
    );
    let after = ids(&sink);
    assert_eq!(after.len(), 99);
    assert!(after.values().all(|&n| n == 1), "every row exactly once");
    let rows = sink.rows(TABLE);
    let replayed = rows.iter().find(|r| r["event_id"] == "e-60").unwrap();
    assert_eq!(
        replayed["_kafka_offset"], 60,
        "replayed rows keep their original Kafka position"
    );
    let again = replay::run(&config, bq(), &to_bq).unwrap();
    assert_eq!(again.read, 0, "a second replay repeats nothing: {again:?}");
    assert_eq!(sink.total_rows(), 99);

    // The malformed record fails again, and is reported.
    let dir = tempfile::tempdir().unwrap();
    let mut convert_only = to_bq.clone();
    convert_only.filter_stage = Some(Stage::Convert);
    convert_only.still_failing_file = Some(dir.path().join("still.ndjson"));
    let r = replay::run(&config, bq(), &convert_only).unwrap();
    assert_eq!((r.read, r.replayed, r.still_failing), (4, 0, 1), "{r:?}");
    assert_eq!(r.failures[0].offset, 40);
    assert!(
        r.failures[0].reason.contains("invalid_json"),
        "{:?}",
        r.failures
    );
    let text = std::fs::read_to_string(dir.path().join("still.ndjson")).unwrap();
    let (_, raw) = FileRecord::parse(text.trim_end())
        .unwrap()
        .to_raw()
        .unwrap();
    assert_eq!(raw.payload.as_deref(), Some(recs[40].value.as_slice()));

    // Everything back to the source topic, original bytes and headers, once.
    let to_source = ReplayOptions::new(ReplayFrom::Dlq(DLQ.into()), ReplayTo::Source);
    let r = replay::run(&config, None, &to_source).unwrap();
    assert_eq!((r.read, r.replayed, r.still_failing), (4, 4, 0), "{r:?}");
    let again = replay::run(&config, None, &to_source).unwrap();
    assert_eq!(again.read, 0, "{again:?}");
    let source = read_topic(&bootstrap, TOPIC);
    assert_eq!(source.len(), 104);
    let mut back: Vec<usize> = Vec::new();
    for r in &source[100..] {
        let i = recs
            .iter()
            .position(|o| Some(o.value.as_slice()) == r.value.as_deref())
            .unwrap();
        assert_eq!(r.key.as_deref(), Some(recs[i].key.as_slice()));
        assert_eq!(
            r.headers, recs[i].headers,
            "no context headers in the source topic"
        );
        back.push(i);
    }
    back.sort();
    assert_eq!(back, vec![3, 40, 60, 61]);
}

fn file_lines(path: &Path) -> Vec<(PathBuf, FileRecord)> {
    let mut out = Vec::new();
    let files = rotated_files(path)
        .into_iter()
        .map(|(_, p)| p)
        .chain([path.to_path_buf()]);
    for p in files {
        let text = std::fs::read_to_string(&p).unwrap();
        for line in text.lines() {
            out.push((p.clone(), FileRecord::parse(line).unwrap()));
        }
    }
    out
}

#[test]
fn the_error_file_holds_the_original_bytes_rotates_by_size_and_replays_once() {
    let (_cluster, bootstrap) = cluster(TOPIC, 1);
    let recs: Vec<Rec> = (0..60)
        .map(|i| if i % 2 == 0 { malformed(i) } else { good(i) })
        .collect();
    produce_recs(&bootstrap, TOPIC, &recs); // 30 malformed
    let sink = sink();
    static BAD: &[&str] = &["e-1", "e-33"];
    reject_ids(&sink, BAD);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("failed.ndjson");
    let mut config = config(&bootstrap, "g-file", TOPIC, sink.url());
    config.errors.tolerance = Tolerance::All;
    config.errors.file.path = Some(path.clone());
    config.errors.file.max_bytes = 4096;
    let pipeline = start(&config);
    wait_fully_committed(&bootstrap, "g-file", TOPIC, 1, Duration::from_secs(60));
    assert_eq!(pipeline.shutdown().unwrap(), 0);

    let lines = file_lines(&path);
    assert!(
        rotated_files(&path).len() >= 2,
        "rotated: {:?}",
        rotated_files(&path)
    );
    for (_, p) in rotated_files(&path) {
        assert!(std::fs::metadata(&p).unwrap().len() <= 4096);
    }
    let mut offsets: Vec<i64> = lines.iter().map(|(_, r)| r.offset).collect();
    offsets.sort();
    let mut expected: Vec<i64> = (0..60).step_by(2).chain([1, 33]).collect();
    expected.sort();
    assert_eq!(offsets, expected, "each failed record once");
    for (_, line) in &lines {
        let (tp, raw) = line.to_raw().unwrap();
        let original = &recs[line.offset as usize];
        assert_eq!((tp.topic.as_ref(), tp.partition), (TOPIC, 0));
        assert_eq!(raw.payload.as_deref(), Some(original.value.as_slice()));
        assert_eq!(raw.key.as_deref(), Some(original.key.as_slice()));
        assert_eq!(raw.headers, original.headers);
        assert_eq!(line.connector, "g-file");
        let want = if line.offset % 2 == 0 {
            "convert"
        } else {
            "bigquery"
        };
        assert_eq!(line.stage, want);
    }

    // Replay every file to BigQuery: the 2 rejected rows go in, the malformed ones fail again.
    sink.clear_hook();
    let mut files: Vec<PathBuf> = rotated_files(&path).into_iter().map(|(_, p)| p).collect();
    files.push(path.clone());
    let opts = ReplayOptions::new(ReplayFrom::Files(files), ReplayTo::BigQuery);
    let bq: Arc<dyn bqsink_actors::bigquery::BigQuery> = client(&config);
    let r = replay::run(&config, Some(Arc::clone(&bq)), &opts).unwrap();
    assert_eq!((r.read, r.replayed, r.still_failing), (32, 2, 30), "{r:?}");
    let after = ids(&sink);
    assert_eq!(after.len(), 30);
    assert!(after.values().all(|&n| n == 1));
    let again = replay::run(&config, Some(bq), &opts).unwrap();
    assert_eq!(again.read, 0, "{again:?}");
    assert_eq!(sink.total_rows(), 30);
}

#[test]
fn the_replay_command_reports_what_still_fails_and_commits_its_progress() {
    use bqsink_actors::destinations::FailureRecord;
    use bqsink_actors::messages::{RawRecord, Tp};

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("failed.ndjson");
    let failure = |offset: i64, value: &[u8], stage| FailureRecord {
        tp: Tp::new(TOPIC, 2),
        source: RawRecord {
            offset,
            timestamp_ms: Some(1_700_000_000_000),
            key: Some(b"k".to_vec()),
            payload: Some(value.to_vec()),
            headers: Vec::new(),
        },
        stage,
        class: "x",
        error: "x".into(),
    };
    let lines = bqsink::destinations::error_file::encode_lines(
        &[
            failure(7, br#"{"event_id":"r-7"}"#, Stage::BigQuery),
            failure(8, b"{oops", Stage::Convert),
        ],
        "g",
    );
    std::fs::write(&file, lines.concat()).unwrap();
    let sink = sink();
    let config_file = dir.path().join("replay.toml");
    std::fs::write(
        &config_file,
        format!(
            "[kafka]\ntopics = [\"{TOPIC}\"]\n[bigquery]\nendpoint = \"{}\"\nwrite_api = \"insert_all\"\ndelivery = \"at_least_once\"\nproject = \"p\"\ndataset = \"ds\"\n[logging]\nformat = \"json\"\n",
            sink.url()
        ),
    )
    .unwrap();
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_bqsink"))
            .args(["replay", "--to-bigquery", "--from-file"])
            .arg(&file)
            .arg("--config-dir")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("config"))
            .arg("--config")
            .arg(&config_file)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let first = run();
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert_eq!(first.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("read 2 failed records: 1 replayed to BigQuery")
            && stdout.contains("1 still failing")
            && stdout.contains("events[2] offset 8: convert (invalid_json)"),
        "{stdout}"
    );
    let rows = sink.rows(TABLE);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["event_id"], "r-7");
    assert_eq!(rows[0]["_kafka_partition"], 2);

    let second = run();
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert_eq!(second.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("read 0 failed records"), "{stdout}");
    assert_eq!(sink.total_rows(), 1, "nothing replayed twice");

    // Exactly one source and one target.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_bqsink"))
        .args(["replay", "--from-dlq", "t", "--to-source", "--to-bigquery"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn rows_replayed_to_the_source_while_the_pipeline_runs_are_written_once() {
    let (cluster, bootstrap) = cluster(TOPIC, 1);
    cluster.create_topic(DLQ, 1, 1).unwrap();
    produce_recs(&bootstrap, TOPIC, &(0..100).map(good).collect::<Vec<_>>());
    let sink = sink();
    static BAD: &[&str] = &["e-10", "e-20"];
    reject_ids(&sink, BAD);
    let config = dlq_config(&bootstrap, "g-republish", sink.url());
    let pipeline = start(&config);
    wait_fully_committed(&bootstrap, "g-republish", TOPIC, 1, Duration::from_secs(60));
    assert_eq!(dlq_count(&bootstrap), 2);
    assert_eq!(ids(&sink).len(), 98);

    // Fixed; re-publish the dead letters to the source topic, which the same pipeline still reads.
    // Their dedup keys were seen before: the rows that failed must not count as written.
    sink.clear_hook();
    let opts = ReplayOptions::new(ReplayFrom::Dlq(DLQ.into()), ReplayTo::Source);
    let r = replay::run(&config, None, &opts).unwrap();
    assert_eq!((r.replayed, r.still_failing), (2, 0), "{r:?}");
    wait_fully_committed(&bootstrap, "g-republish", TOPIC, 1, Duration::from_secs(60));
    let stats = pipeline.stats.snapshot();
    assert_eq!(pipeline.shutdown().unwrap(), 0);
    let ids = ids(&sink);
    assert_eq!(ids.len(), 100, "the replayed rows are written");
    assert!(ids.values().all(|&n| n == 1));
    assert_eq!(stats.deduplicated, 0);
    assert_eq!(dlq_count(&bootstrap), 2, "nothing failed again");
}

#[test]
fn slack_alerts_pending_at_shutdown_get_one_last_post() {
    use bqsink::destinations::slack::SlackAlerts;
    use bqsink_actors::destinations::{ErrorDestination, FailureRecord};
    use bqsink_actors::messages::{RawRecord, Tp};

    let records: Arc<[FailureRecord]> = (0..3)
        .map(|offset| FailureRecord {
            tp: Tp::new(TOPIC, 0),
            source: RawRecord {
                offset,
                ..Default::default()
            },
            stage: Stage::Transform,
            class: "rename_collision",
            error: "x".into(),
        })
        .collect();
    let mut config = Config::default();
    config.kafka.group_id = "g-last".into();
    config.errors.slack.window_secs = 3600;

    // Up: the pending failures are posted when the alerts stop, not a window later.
    let hook = webhook();
    hook.up.store(true, Ordering::SeqCst);
    let alerts = SlackAlerts::start(hook.url.clone().into(), &config).unwrap();
    drop(futures::executor::block_on(
        alerts.deliver(Arc::clone(&records)),
    ));
    drop(alerts);
    let posts = hook.posts.lock().unwrap().clone();
    assert_eq!(posts.len(), 1);
    assert_eq!(failed_count(&posts[0].1), 3);
    assert!(posts[0].1.contains("(group `g-last`)"));

    // Down: stopping still returns, and the alert is counted as dropped.
    let down = webhook();
    let alerts = SlackAlerts::start(down.url.clone().into(), &config).unwrap();
    drop(futures::executor::block_on(alerts.deliver(records)));
    drop(alerts);
    assert!(down.attempts.load(Ordering::SeqCst) >= 1);
    assert!(down.posts.lock().unwrap().is_empty());
}
