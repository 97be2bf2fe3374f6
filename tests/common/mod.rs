//! Shared test helpers: the mock Kafka cluster, producing, offsets, pipeline configs, waiting.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Read;
use std::time::{Duration, Instant};

use bqsink::service::PipelineHandle;
use bqsink_actors::config::Config;
use bqsink_devtools::generator::{Counts, Event, Generator, Mix};
use bqsink_devtools::kafka;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

pub type Cluster = MockCluster<'static, DefaultProducerContext>;

/// A one-broker mock cluster with `topic` of `partitions` partitions.
pub fn cluster(topic: &str, partitions: i32) -> (Cluster, String) {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster
        .create_topic(topic, partitions, 1)
        .expect("create topic");
    let bootstrap = cluster.bootstrap_servers();
    (cluster, bootstrap)
}

/// Produces events (keyed) and waits until all are acknowledged.
pub fn produce(bootstrap: &str, topic: &str, events: &[Event]) {
    let p = kafka::producer(bootstrap).unwrap();
    for e in events {
        kafka::produce(&p, topic, &e.key, &e.payload).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// Produces raw payloads to one partition, in order.
pub fn produce_to_partition(bootstrap: &str, topic: &str, partition: i32, payloads: &[Vec<u8>]) {
    let p = kafka::producer(bootstrap).unwrap();
    for payload in payloads {
        let r = rdkafka::producer::BaseRecord::<(), [u8]>::to(topic)
            .partition(partition)
            .payload(payload.as_slice());
        p.send(r).map_err(|(e, _)| e).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

fn admin_consumer(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

/// The group's committed offset and its metadata, per partition.
fn committed_with_metadata(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Vec<(Option<i64>, String)> {
    let c = admin_consumer(bootstrap, group);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..partitions)
        .map(|p| match got.find_partition(topic, p) {
            Some(e) => match e.offset() {
                Offset::Offset(o) => (Some(o), e.metadata().to_owned()),
                _ => (None, e.metadata().to_owned()),
            },
            None => (None, String::new()),
        })
        .collect()
}

/// Committed offset per partition (None when nothing is committed).
pub fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
    committed_with_metadata(bootstrap, group, topic, partitions)
        .into_iter()
        .map(|(o, _)| o)
        .collect()
}

/// The metadata of the group's committed offsets, per partition.
pub fn committed_metadata(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Vec<String> {
    committed_with_metadata(bootstrap, group, topic, partitions)
        .into_iter()
        .map(|(_, m)| m)
        .collect()
}

/// (low, high) watermarks per partition.
pub fn watermarks(bootstrap: &str, topic: &str, partitions: i32) -> Vec<(i64, i64)> {
    let c = admin_consumer(bootstrap, "watermarks");
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
        })
        .collect()
}

/// Waits until the group's committed offsets equal the partitions' end offsets.
pub fn wait_fully_committed(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) {
    let ends: Vec<Option<i64>> = watermarks(bootstrap, topic, partitions)
        .into_iter()
        .map(|(_, h)| Some(h))
        .collect();
    let start = Instant::now();
    loop {
        let c = committed(bootstrap, group, topic, partitions);
        if c == ends {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "committed {c:?} never reached end offsets {ends:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits for a condition.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The TOML every test pipeline starts from: the cluster and the BigQuery fake, short group
/// timeouts (the mock coordinator waits for the rebalance timeout), fast commits and linger. Tests
/// append the sections they need (`[errors]`, `[logging]`, …), not these.
pub fn base_toml(bootstrap: &str, group: &str, topic: &str, endpoint: &str) -> String {
    format!(
        r#"
[kafka]
brokers = "{bootstrap}"
group_id = "{group}"
topics = ["{topic}"]
commit_interval_ms = 200
[kafka.properties]
"session.timeout.ms" = "6000"
"max.poll.interval.ms" = "10000"
[bigquery]
endpoint = "{endpoint}"
write_api = "insert_all"
delivery = "at_least_once"
project = "test"
dataset = "ds"
[batch]
linger_ms = 20
"#
    )
}

/// A pipeline config for tests ([`base_toml`], quick BigQuery timeouts and retries). Tests change
/// fields of the result as they need.
pub fn config(bootstrap: &str, group: &str, topic: &str, endpoint: &str) -> Config {
    let text =
        base_toml(bootstrap, group, topic, endpoint) + "[errors]\nretry_delay_max_ms = 200\n";
    let mut config = bqsink::settings::from_toml(&text).unwrap();
    config.bigquery.request_timeout_ms = 2000;
    config
}

/// Rows grouped by a field's value.
pub fn count_by(rows: &[Value], field: &str) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in rows {
        *m.entry(r[field].to_string()).or_default() += 1;
    }
    m
}

/// Starts a pipeline with the BigQuery client `bigquery.write_api` names (as `bqsink run` does).
pub fn start(config: &Config) -> PipelineHandle {
    let (client, _) = bqsink::bigquery::from_config(&config.bigquery).unwrap();
    PipelineHandle::spawn(config.clone(), client).unwrap()
}

#[allow(unused_imports)]
pub use bqsink_devtools::generator::member_events_fields;

/// Points `config` at `sink`'s Storage Write API (`bigquery.write_api = "storage"`).
pub fn use_storage_write(config: &mut Config, sink: &bqsink_devtools::sink::Sink) {
    config.bigquery.write_api = bqsink_actors::config::WriteApi::Storage;
    config.bigquery.storage_endpoint = sink.grpc_url().to_owned();
}

/// `n` generated events and what they are.
pub fn events(n: usize, mix: Mix) -> (Vec<Event>, Counts) {
    let mut counts = Counts::default();
    let events: Vec<_> = Generator::new(mix)
        .take(n)
        .inspect(|e| counts.add(e.kind))
        .collect();
    (events, counts)
}

/// Starts `bqsink run`, collecting its stderr.
pub fn spawn_run(
    config: &std::path::Path,
) -> (
    std::process::Child,
    std::sync::Arc<std::sync::Mutex<String>>,
) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bqsink"))
        .args(["run", "--config-dir"])
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config"))
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut stderr = child.stderr.take().unwrap();
    let sink = std::sync::Arc::clone(&log);
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (child, log)
}

pub fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> i32 {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            panic!("bqsink did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn error_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == "ERROR" && v["message"] == "record failed")
        .collect()
}

/// The ERROR lines of a JSON log that report a sink failure: message starting "sink failing",
/// field `kind = "sink_failure"`.
pub fn sink_failure_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["level"] == "ERROR"
                && v["kind"] == "sink_failure"
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("sink failing"))
        })
        .collect()
}

/// Per partition, the first offset whose row is not in `table` of the fake (which must keep rows;
/// rows carry `_kafka_partition` and `_kafka_offset`). No offset may be committed past it.
pub fn first_unwritten(
    sink: &bqsink_devtools::sink::Sink,
    table: &str,
    partitions: i32,
) -> Vec<i64> {
    let mut written = vec![std::collections::HashSet::new(); partitions as usize];
    for row in sink.rows(table) {
        let (Some(p), Some(o)) = (
            row["_kafka_partition"].as_i64(),
            row["_kafka_offset"].as_i64(),
        ) else {
            panic!("a row without its Kafka position: {row}");
        };
        written[p as usize].insert(o);
    }
    written
        .iter()
        .map(|offsets| (0..).find(|o| !offsets.contains(o)).unwrap_or(0))
        .collect()
}

/// Polls `probe` until it gives a value; after `timeout`, panics with its last complaint.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) => assert!(
                start.elapsed() < timeout,
                "timed out waiting for {what}; last seen: {last}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Slack incoming-webhook stand-in that accepts every post and records its text.
pub struct SlackRecorder {
    pub url: String,
    posts: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _runtime: tokio::runtime::Runtime,
}

impl SlackRecorder {
    pub fn start() -> Self {
        use axum::extract::State;
        use std::sync::{Arc, Mutex};

        async fn hook(State(posts): State<Arc<Mutex<Vec<String>>>>, body: axum::body::Bytes) {
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            let text = v["text"].as_str().unwrap_or_default().to_owned();
            posts.lock().unwrap().push(text);
        }
        let posts = Arc::new(Mutex::new(Vec::new()));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(Arc::clone(&posts));
        runtime.spawn(async move { axum::serve(listener, app).await });
        SlackRecorder {
            url,
            posts,
            _runtime: runtime,
        }
    }

    /// The texts posted so far, in order.
    pub fn posts(&self) -> Vec<String> {
        self.posts.lock().unwrap().clone()
    }
}

/// `bqsink run` as a child process ([`spawn_run`]), killed if the test ends while it runs.
pub struct BqsinkRun {
    child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl BqsinkRun {
    pub fn spawn(config: &std::path::Path) -> Self {
        let (child, log) = spawn_run(config);
        BqsinkRun { child, log }
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The last 40 lines of its stderr, for failure messages.
    pub fn tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits for the process to exit, calling `check` every 200 ms meanwhile; the exit code.
    pub fn wait_checking(&mut self, timeout: Duration, what: &str, mut check: impl FnMut()) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            check();
            assert!(
                start.elapsed() < timeout,
                "bqsink did not exit within {timeout:?} ({what}); log ends:\n{}",
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILL: the process dies at once, mid-whatever.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM (drain, commit, exit); the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> i32 {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        self.wait_checking(timeout, "after SIGTERM", || {})
    }
}

impl Drop for BqsinkRun {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct ReadBack {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl ReadBack {
    pub fn header(&self, key: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_ref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
    /// The failure class a dead letter carries (empty when it has none).
    pub fn class(&self) -> String {
        self.header("__connect.errors.exception.class.name")
            .unwrap_or_default()
    }
    pub fn own_headers(&self) -> Vec<(String, Option<Vec<u8>>)> {
        self.headers
            .iter()
            .filter(|(k, _)| !k.starts_with("__connect.errors."))
            .cloned()
            .collect()
    }
}

/// Every record of partition 0 of `topic`, from the beginning to its current end.
pub fn read_topic(bootstrap: &str, topic: &str) -> Vec<ReadBack> {
    let (_, high) = watermarks(bootstrap, topic, 1)[0];
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let start = Instant::now();
    while out
        .last()
        .map_or(high > 0, |r: &ReadBack| r.offset + 1 < high)
    {
        assert!(start.elapsed() < Duration::from_secs(30), "reading {topic}");
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            out.push(ReadBack {
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
    }
    out
}
