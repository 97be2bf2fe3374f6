//! `bqsink bench`: the end-to-end benchmark. It starts librdkafka's mock cluster and the local
//! insertAll sink in this process, produces member events (1 % duplicates, 0.1 % malformed), and
//! runs the pipeline in a child process, `bqsink bench-worker`: the full actor pipeline with the
//! default configuration (plus the cluster's and the sink's addresses, and `errors.tolerance =
//! "all"` so malformed records are reported without stopping it). The child measures its own peak
//! RSS (`VmHWM`) and CPU time, so neither includes the mock cluster, the producer or the sink.
//!
//! Throughput mode (the default) consumes a backlog at full speed. The mock cluster keeps only the
//! newest 5 MiB per partition (about 60,000 of these events with lz4), so larger runs go in rounds:
//! the worker pauses its partitions, a round of at most 40,000 records per partition is produced (the
//! watermarks prove the cluster kept all of it), a bare `BaseConsumer` reads the round and drops it
//! (librdkafka's own rate on the same data), then the worker resumes and consumes the round. Rates
//! are records over the summed time from the first record read to the last row written.
//!
//! Latency mode (`--rate R`) produces at R records/s while the pipeline consumes, and reports the
//! record latency: the time the sink received a row minus the record's produce timestamp.
//!
//! At the end it checks that the sink received exactly the unique good events, once each, that the
//! duplicates were dropped and the malformed records reported, and that the offsets were committed
//! to the end.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bqsink_actors::config::Config;
use bqsink_actors::kafka::KafkaControl;
use bqsink_actors::messages::{Shutdown, Tp};
use bqsink_actors::pipeline;
use bqsink_actors::stats::Stats;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::demo::{produce, producer};
use crate::generator::{Counts, Generator, Mix};
use crate::sink::{Sink, SinkOptions};
use crate::{bigquery, destinations, kafka};

const TOPIC: &str = "member-events";
const TABLE: &str = "member_events";
const GROUP: &str = "bqsink-bench";
/// Records per partition in one round: about 3.3 MB of lz4 batches, well under the mock's 5 MiB.
const ROUND_PER_PARTITION: u64 = 40_000;
/// Records produced before latencies are counted (they wait for the consumer group to form).
const WARMUP: u64 = 1_000;
/// `fetch.wait.max.ms` of the worker and the raw consumer (librdkafka: 500).
const FETCH_WAIT_MS: &str = "100";

/// `bqsink bench` options.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub records: u64,
    pub partitions: i32,
    /// Produce at this many records/s while the pipeline consumes (latency mode).
    pub rate: Option<u64>,
    pub duplicates: f64,
    pub malformed: f64,
    pub seed: u64,
    /// More configuration for the pipeline (layered under the bench's own settings).
    pub worker_config: Option<PathBuf>,
}

/// What the worker prints on its last line.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    pub consumed: u64,
    pub written: u64,
    pub deduplicated: u64,
    pub failed: u64,
    /// insertAll requests sent, and partitions paused at the in-flight limits.
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub pauses: u64,
    pub exit_code: i32,
    /// `VmHWM` of the worker process, in KiB.
    pub peak_rss_kib: u64,
    pub user_secs: f64,
    pub sys_secs: f64,
}

/// Peak resident set size of this process in KiB (`VmHWM` from `/proc/self/status`).
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User and system CPU seconds of this process, all threads (`getrusage`).
pub fn cpu_secs() -> (f64, f64) {
    // SAFETY: getrusage only writes into the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return (0.0, 0.0);
        }
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime), secs(usage.ru_stime))
}

// ---------------------------------------------------------------------------------------------
// The worker: `bqsink bench-worker`, started by the benchmark.

/// Runs the pipeline (as `bqsink run` does) until standard input closes. Reads `pause N` and
/// `resume N` lines (partitions 0..N of the first topic) and answers `paused` / `resumed`; prints
/// `progress <consumed> <handled>` whenever the counters move (checked every 10 ms) and a final
/// `report <json>` line.
pub fn worker(config: Config) -> anyhow::Result<i32> {
    let topic = config
        .kafka
        .topics
        .first()
        .cloned()
        .context("no topic configured")?;
    let client = Arc::new(bigquery::RestClient::new(&config.bigquery)?);
    let stats = Arc::new(Stats::default());
    // As `run::run` starts it, keeping a handle on the consumer's controls for pause and resume.
    let destinations = destinations::from_config(&config, &stats)?;
    let system = actix::System::new();
    let (control, commands) = kafka::control();
    let supervisor = system.block_on(async {
        pipeline::start_with_destinations(
            &config,
            control.clone(),
            client,
            Arc::clone(&stats),
            destinations.clone(),
        )
    });
    let poller = kafka::spawn_consumer(&config, supervisor.clone(), commands, Arc::clone(&stats))?;

    std::thread::spawn(move || {
        let tps = |n: &str| -> Vec<Tp> {
            (0..n.parse().unwrap_or(0))
                .map(|p| Tp::new(topic.as_str(), p))
                .collect()
        };
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("pause ") {
                tps(n).iter().for_each(|tp| control.pause(tp));
                // The poller runs commands between polls (at most 50 ms apart).
                std::thread::sleep(Duration::from_millis(200));
                println!("paused");
            } else if let Some(n) = line.strip_prefix("resume ") {
                tps(n).iter().for_each(|tp| control.resume(tp));
                println!("resumed");
            }
        }
        supervisor.do_send(Shutdown);
    });
    let stopped = Arc::new(AtomicBool::new(false));
    let progress = {
        let (stats, stopped) = (Arc::clone(&stats), Arc::clone(&stopped));
        std::thread::spawn(move || {
            let mut last = (u64::MAX, u64::MAX);
            while !stopped.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
                let s = stats.snapshot();
                let now = (s.consumed, s.written + s.deduplicated + s.failed);
                if now != last {
                    println!("progress {} {}", now.0, now.1);
                    last = now;
                }
            }
        })
    };

    let exit_code = system.run_with_code().context("running the actor system")?;
    drop(destinations);
    stopped.store(true, Relaxed);
    let _ = progress.join();
    if poller.join().is_err() {
        bail!("the Kafka poller thread panicked");
    }
    let (user_secs, sys_secs) = cpu_secs();
    let s = stats.snapshot();
    let report = WorkerReport {
        consumed: s.consumed,
        written: s.written,
        deduplicated: s.deduplicated,
        failed: s.failed,
        requests: s.batches,
        pauses: s.pauses,
        exit_code,
        peak_rss_kib: peak_rss_kib().unwrap_or(0),
        user_secs,
        sys_secs,
    };
    println!("report {}", serde_json::to_string(&report)?);
    Ok(exit_code)
}

/// The worker's configuration: the defaults, plus where Kafka and the sink are, tolerance `all` so
/// the malformed records are reported without stopping the pipeline, and a shorter fetch wait for
/// the mock broker.
fn worker_config(bootstrap: &str, endpoint: &str) -> String {
    format!(
        r#"
[kafka]
brokers = "{bootstrap}"
group_id = "{GROUP}"
topics = ["{TOPIC}"]
[bigquery]
endpoint = "{endpoint}"
project = "bench"
dataset = "bench"
[bigquery.tables]
"{TOPIC}" = "{TABLE}"
[errors]
tolerance = "all"
# The mock broker holds a fetch that finds no data for the whole fetch.wait.max.ms (500 ms) instead
# of answering when data arrives, and at the end of each round some partitions have none left: the
# partitions resumed meanwhile would wait for it. A real broker answers when data arrives.
[kafka.properties]
"fetch.wait.max.ms" = "{FETCH_WAIT_MS}"
"#
    )
}

/// What the benchmark hears from the worker.
#[derive(Default)]
struct Heard {
    consumed: u64,
    handled: u64,
    /// When `consumed` first passed `watch_from`.
    first_read: Option<Instant>,
    watch_from: u64,
    acks: u64,
    report: Option<WorkerReport>,
}

/// The worker process, seen from the benchmark.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    heard: Arc<Mutex<Heard>>,
    reader: Option<std::thread::JoinHandle<()>>,
    log: PathBuf,
}

impl Worker {
    fn start(
        dir: &Path,
        bootstrap: &str,
        endpoint: &str,
        extra: Option<&Path>,
    ) -> anyhow::Result<Worker> {
        let config = dir.join("bench.toml");
        std::fs::write(&config, worker_config(bootstrap, endpoint))
            .with_context(|| format!("writing {}", config.display()))?;
        // `--worker-config` becomes the environment layer, under the bench's own file.
        let extra_layer = dir.join("extra.toml");
        match extra {
            Some(file) => std::fs::copy(file, &extra_layer)
                .map(drop)
                .with_context(|| format!("reading {}", file.display()))?,
            None => std::fs::write(&extra_layer, "")?,
        }
        let log = dir.join("worker.log");
        let stderr =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let exe = std::env::current_exe().context("finding the bqsink executable")?;
        // `--config-dir` has no default.toml: the built-in defaults (which it mirrors) apply.
        let mut child = Command::new(exe)
            .arg("--config-dir")
            .arg(dir)
            .arg("--env")
            .arg("extra")
            .arg("--config")
            .arg(&config)
            .arg("bench-worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("starting the bench worker")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("worker stdout")?;
        let heard = Arc::new(Mutex::new(Heard::default()));
        let reader = {
            let heard = Arc::clone(&heard);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let mut h = heard.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(rest) = line.strip_prefix("progress ") {
                        let mut n = rest.split(' ').map(|v| v.parse().unwrap_or(0));
                        (h.consumed, h.handled) = (n.next().unwrap_or(0), n.next().unwrap_or(0));
                        if h.first_read.is_none() && h.consumed > h.watch_from {
                            h.first_read = Some(Instant::now());
                        }
                    } else if line == "paused" || line == "resumed" {
                        h.acks += 1;
                    } else if let Some(json) = line.strip_prefix("report ") {
                        h.report = serde_json::from_str(json).ok();
                    }
                }
            })
        };
        Ok(Worker {
            child,
            stdin,
            heard,
            reader: Some(reader),
            log,
        })
    }

    fn heard(&self) -> MutexGuard<'_, Heard> {
        self.heard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a command and waits for its acknowledgement.
    fn command(&mut self, line: &str) -> anyhow::Result<()> {
        let acks = self.heard().acks;
        let stdin = self.stdin.as_mut().context("worker stdin closed")?;
        writeln!(stdin, "{line}").context("writing to the bench worker")?;
        stdin.flush()?;
        while self.heard().acks == acks {
            self.check_alive()?;
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Notes the time of the next record read.
    fn watch_reads(&self) {
        let mut h = self.heard();
        (h.watch_from, h.first_read) = (h.consumed, None);
    }

    /// Waits until the worker has handled `n` records in all.
    fn wait_handled(&mut self, n: u64) -> anyhow::Result<()> {
        let (mut last, mut since, mut printed) = (0, Instant::now(), Instant::now());
        loop {
            let handled = self.heard().handled;
            if handled >= n {
                return Ok(());
            }
            self.check_alive()?;
            if handled != last {
                (last, since) = (handled, Instant::now());
            } else if since.elapsed() > Duration::from_secs(60) {
                bail!(
                    "no progress for 60 s at {handled} of {n} records; see {}",
                    self.log.display()
                );
            }
            if printed.elapsed() >= Duration::from_secs(10) {
                eprintln!("  … {} of {} records handled", fmt_n(handled), fmt_n(n));
                printed = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the bench worker exited early ({status}); see {}",
                self.log.display()
            );
        }
        Ok(())
    }

    /// Closes its standard input (the worker drains, commits and exits) and collects its report.
    fn finish(mut self) -> anyhow::Result<WorkerReport> {
        drop(self.stdin.take());
        let status = self.child.wait().context("waiting for the bench worker")?;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        match self.heard().report.clone() {
            Some(r) if status.success() => Ok(r),
            _ => bail!(
                "the bench worker failed ({status}); see {}",
                self.log.display()
            ),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.reader.is_some() {
            // Not finished normally: stop it.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The benchmark.

/// What was produced.
#[derive(Debug, Default, Clone, Copy)]
struct Produced {
    counts: Counts,
    payload_bytes: u64,
}

impl Produced {
    fn add(&mut self, other: Produced) {
        self.counts.unique += other.counts.unique;
        self.counts.duplicates += other.counts.duplicates;
        self.counts.malformed += other.counts.malformed;
        self.payload_bytes += other.payload_bytes;
    }
}

/// Produces `n` events of `generator` through `p`; `pace(i)` runs before the i-th record.
///
/// One producer serves the whole run: a new idempotent producer first fetches metadata and a
/// producer id, and the records it is given meanwhile would be charged that start-up as latency.
fn produce_events(
    p: &ThreadedProducer<DefaultProducerContext>,
    generator: &mut Generator,
    n: u64,
    mut pace: impl FnMut(u64),
) -> anyhow::Result<Produced> {
    let mut out = Produced::default();
    for (i, event) in generator.by_ref().take(n as usize).enumerate() {
        pace(i as u64);
        produce(p, TOPIC, &event.key, &event.payload)?;
        out.counts.add(event.kind);
        out.payload_bytes += event.payload.len() as u64;
    }
    p.flush(Duration::from_secs(60))
        .context("flushing the producer")?;
    Ok(out)
}

fn client(bootstrap: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("creating a Kafka client")
}

/// (low, high) watermark of each partition.
fn watermarks(bootstrap: &str, partitions: i32) -> anyhow::Result<Vec<(i64, i64)>> {
    let c = client(bootstrap, "bench-admin")?;
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(TOPIC, p, Duration::from_secs(10))
                .with_context(|| format!("watermarks of partition {p}"))
        })
        .collect()
}

/// Committed offset of each partition for the pipeline's group.
fn committed(bootstrap: &str, partitions: i32) -> anyhow::Result<Vec<Option<i64>>> {
    let c = client(bootstrap, GROUP)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(TOPIC, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok((0..partitions)
        .map(|p| match got.find_partition(TOPIC, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        })
        .collect())
}

/// Records (and payload bytes) over a time, and the CPU time this process spent meanwhile.
#[derive(Debug, Clone, Copy, Default)]
struct Rate {
    records: u64,
    bytes: u64,
    secs: f64,
    cpu_secs: f64,
}

/// This process's CPU seconds so far (user + system).
fn own_cpu() -> f64 {
    let (user, sys) = cpu_secs();
    user + sys
}

impl Rate {
    fn add(&mut self, other: Rate) {
        self.records += other.records;
        self.bytes += other.bytes;
        self.secs += other.secs;
        self.cpu_secs += other.cpu_secs;
    }
    fn cpu_per_million(&self) -> f64 {
        self.cpu_secs * 1e6 / self.records.max(1) as f64
    }
    fn per_sec(&self) -> f64 {
        self.records as f64 / self.secs.max(1e-9)
    }
    fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.secs.max(1e-9)
    }
}

/// Reads `n` records from offsets `from` on with a bare consumer that drops them: librdkafka's own
/// rate on this data, from the first record to the last.
///
/// It fetches with the worker's librdkafka settings (bqsink's fetch defaults and the bench's
/// `fetch.wait.max.ms`), so the ratio is the pipeline's cost over the same client.
fn raw_consume(bootstrap: &str, from: &[i64], n: u64) -> anyhow::Result<Rate> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench-raw")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", FETCH_WAIT_MS);
    for (key, value) in kafka::FETCH_DEFAULTS {
        config.set(key, value);
    }
    let c: BaseConsumer = config.create().context("creating the raw consumer")?;
    let mut tpl = TopicPartitionList::new();
    for (p, offset) in from.iter().enumerate() {
        tpl.add_partition_offset(TOPIC, p as i32, Offset::Offset(*offset))?;
    }
    c.assign(&tpl)?;
    let cpu = own_cpu();
    let (mut records, mut bytes, mut first, mut last) = (0u64, 0u64, None, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(600);
    while records < n {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                bytes += m.payload_len() as u64;
                records += 1;
                last = Instant::now();
            }
            Some(Err(e)) => bail!("raw consumer: {e}"),
            None if Instant::now() > deadline => bail!("raw consumer read {records} of {n}"),
            None => {}
        }
    }
    let secs = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    Ok(Rate {
        records,
        bytes,
        secs,
        cpu_secs: own_cpu() - cpu,
    })
}

fn fmt_n(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Throughput mode: rounds of backlog, each read raw and then by the pipeline.
fn throughput(
    opts: &BenchOptions,
    bootstrap: &str,
    sink: &Sink,
    dir: &Path,
    generator: &mut Generator,
) -> anyhow::Result<(Produced, Rate, Rate, Worker)> {
    let round = ROUND_PER_PARTITION * opts.partitions as u64;
    let (mut produced, mut raw, mut piped) =
        (Produced::default(), Rate::default(), Rate::default());
    let mut worker: Option<Worker> = None;
    let p = producer(bootstrap)?;
    let mut total = 0;
    while total < opts.records {
        let n = round.min(opts.records - total);
        if let Some(w) = worker.as_mut() {
            w.command(&format!("pause {}", opts.partitions))?;
        }
        let before = watermarks(bootstrap, opts.partitions)?;
        let this = produce_events(&p, generator, n, |_| {})?;
        let after = watermarks(bootstrap, opts.partitions)?;
        let kept: i64 = before
            .iter()
            .zip(&after)
            .map(|((_, b), (_, a))| a - b)
            .sum();
        if kept as u64 != n || after.iter().zip(&before).any(|((low, _), (_, b))| low > b) {
            bail!("the mock cluster did not keep the whole round of {n} records (5 MiB per partition)");
        }
        let from: Vec<i64> = before.iter().map(|(_, h)| *h).collect();
        let r = raw_consume(bootstrap, &from, n)?;
        raw.add(r);
        produced.add(this);
        total += n;

        sink.reset_latency();
        let cpu = own_cpu();
        match worker.as_mut() {
            Some(w) => {
                w.watch_reads();
                w.command(&format!("resume {}", opts.partitions))?;
            }
            None => {
                let w = Worker::start(dir, bootstrap, sink.url(), opts.worker_config.as_deref())?;
                w.watch_reads();
                worker = Some(w);
            }
        }
        let w = worker.as_mut().context("worker")?;
        w.wait_handled(total)?;
        let first = w.heard().first_read;
        let last = sink.latency().last_row;
        let secs = match (first, last) {
            (Some(f), Some(l)) => l.saturating_duration_since(f).as_secs_f64(),
            _ => 0.0,
        };
        piped.add(Rate {
            records: n,
            bytes: this.payload_bytes,
            secs,
            cpu_secs: own_cpu() - cpu,
        });
        if opts.records > round {
            eprintln!(
                "  round of {}: raw {:.0} records/s, pipeline {:.0} records/s",
                fmt_n(n),
                r.per_sec(),
                n as f64 / secs.max(1e-9)
            );
        }
    }
    Ok((produced, raw, piped, worker.context("no records")?))
}

/// Latency mode: produce at `rate` records/s while the pipeline consumes.
fn latency(
    opts: &BenchOptions,
    rate: u64,
    bootstrap: &str,
    sink: &Sink,
    dir: &Path,
    generator: &mut Generator,
) -> anyhow::Result<(Produced, Rate, Worker)> {
    let mut worker = Worker::start(dir, bootstrap, sink.url(), opts.worker_config.as_deref())?;
    let warmup = WARMUP.min(opts.records);
    let p = producer(bootstrap)?;
    let mut produced = produce_events(&p, generator, warmup, |_| {})?;
    worker.wait_handled(warmup)?;
    sink.reset_latency();
    let started = Instant::now();
    let rest = produce_events(&p, generator, opts.records - warmup, |i| {
        if i % 100 == 0 {
            let due = Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    })?;
    produced.add(rest);
    worker.wait_handled(opts.records)?;
    let secs = sink
        .latency()
        .last_row
        .map_or(0.0, |l| l.saturating_duration_since(started).as_secs_f64());
    let achieved = Rate {
        records: opts.records - warmup,
        bytes: rest.payload_bytes,
        secs,
        cpu_secs: 0.0,
    };
    Ok((produced, achieved, worker))
}

/// Runs the benchmark; returns 0 when the sink holds exactly the unique good events.
pub fn run(opts: &BenchOptions) -> anyhow::Result<i32> {
    let cluster = MockCluster::new(1).context("starting the mock Kafka cluster")?;
    cluster
        .create_topic(TOPIC, opts.partitions, 1)
        .context("creating the bench topic")?;
    let bootstrap = cluster.bootstrap_servers();
    let sink = Sink::start(SinkOptions {
        keep_rows: false,
        id_pointer: Some("/event_id".into()),
        honor_insert_id: false,
    })
    .context("starting the local insertAll sink")?;
    let dir = std::env::temp_dir().join(format!("bqsink-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut generator = Generator::new(Mix {
        duplicates: opts.duplicates,
        malformed: opts.malformed,
        seed: opts.seed,
    });
    let n = opts.records;
    println!(
        "bqsink bench: {} member events, {} partitions, {}",
        fmt_n(n),
        opts.partitions,
        match opts.rate {
            Some(r) => format!("produced at {} records/s while consuming", fmt_n(r)),
            None => "consumed from a backlog at full speed".into(),
        }
    );

    let (produced, worker, harness) = match opts.rate {
        None => {
            let (produced, raw, piped, worker) =
                throughput(opts, &bootstrap, &sink, &dir, &mut generator)?;
            println!(
                "raw consume    {:>10.0} records/s  {:>6.1} MB/s   (bare BaseConsumer that reads and drops; \
                 {:.2} s CPU per million records with the mock broker)",
                raw.per_sec(),
                raw.mb_per_sec(),
                raw.cpu_per_million()
            );
            println!(
                "pipeline       {:>10.0} records/s  {:>6.1} MB/s   (first record read to last row written)",
                piped.per_sec(),
                piped.mb_per_sec()
            );
            println!(
                "ratio          {:>10.1} % of the raw consume rate",
                100.0 * piped.per_sec() / raw.per_sec().max(1e-9)
            );
            (produced, worker, Some(piped))
        }
        Some(rate) => {
            let (produced, achieved, worker) =
                latency(opts, rate, &bootstrap, &sink, &dir, &mut generator)?;
            println!(
                "pipeline       {:>10.0} records/s  {:>6.1} MB/s   (offered {} records/s)",
                achieved.per_sec(),
                achieved.mb_per_sec(),
                fmt_n(rate)
            );
            println!(
                "latency        {} (row written minus produce timestamp)",
                sink.latency()
            );
            (produced, worker, None)
        }
    };
    let report = worker.finish()?;
    let cpu = report.user_secs + report.sys_secs;
    println!(
        "peak RSS       {:>10.1} MiB  (VmHWM of the pipeline process)",
        report.peak_rss_kib as f64 / 1024.0
    );
    println!(
        "CPU            {:>10.2} s per million records ({:.1} s user + {:.1} s sys for {} records, \
         pipeline process)",
        cpu * 1e6 / n.max(1) as f64,
        report.user_secs,
        report.sys_secs,
        fmt_n(n)
    );
    println!(
        "flow           {:>10} insertAll requests, {} partition pauses at the in-flight limits",
        fmt_n(report.requests),
        fmt_n(report.pauses)
    );
    if let Some(h) = harness {
        println!(
            "               {:>10.2} s per million records more in the bench process meanwhile \
             (insertAll sink, mock broker)",
            h.cpu_per_million()
        );
    }

    // Checks.
    let c = produced.counts;
    let (distinct, repeats) = sink.id_stats();
    let rows = sink.total_rows();
    let ends: Vec<Option<i64>> = watermarks(&bootstrap, opts.partitions)?
        .iter()
        .map(|(_, h)| Some(*h))
        .collect();
    let commits = committed(&bootstrap, opts.partitions)?;
    let mut problems = Vec::new();
    if rows != c.unique || distinct != c.unique || repeats != 0 {
        problems.push(format!(
            "the sink holds {rows} rows with {distinct} distinct ids ({repeats} repeated), \
             expected the {} unique events",
            c.unique
        ));
    }
    if report.deduplicated != c.duplicates {
        problems.push(format!(
            "{} records deduplicated, {} duplicates produced",
            report.deduplicated, c.duplicates
        ));
    }
    if report.failed != c.malformed {
        problems.push(format!(
            "{} records failed, {} malformed produced",
            report.failed, c.malformed
        ));
    }
    if commits != ends {
        problems.push(format!(
            "committed offsets {commits:?} are not the end offsets {ends:?}"
        ));
    }
    if report.exit_code != 0 {
        problems.push(format!("the pipeline exited with {}", report.exit_code));
    }
    if problems.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
        println!(
            "check          OK: the sink received exactly the {} unique good events, once each; \
             {} duplicates dropped, {} malformed reported; offsets committed to the end",
            fmt_n(c.unique),
            fmt_n(c.duplicates),
            fmt_n(c.malformed)
        );
        Ok(0)
    } else {
        for p in &problems {
            println!("check          MISMATCH: {p}");
        }
        println!("worker log     {}", dir.join("worker.log").display());
        Ok(1)
    }
}
