//! `bqsink bench`: the end-to-end benchmark. It starts librdkafka's mock cluster and the local
//! insertAll sink in this process, produces member events (1 % duplicates, 0.1 % malformed), and
//! runs the pipeline in a child process, `bqsink bench-worker`: the full actor pipeline with the
//! default configuration (plus the cluster's and the sink's addresses, and `errors.tolerance =
//! "all"` so malformed records are reported without stopping it). The child measures its own peak
//! RSS (`VmHWM`) and CPU time, so neither includes the mock cluster, the producer or the sink.
//!
//! Throughput mode (the default) consumes a backlog at full speed. The mock cluster keeps only the
//! newest 5 MiB per partition (about 60,000 of these events with lz4), so larger runs go in rounds:
//! the worker pauses its partitions, a round of at most 42,000 records per partition is produced (the
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
//!
//! The worker process is `bqsink bench-worker` (see [`worker`] for the protocol); everything else —
//! the mock cluster, producing, the sink, the raw consumer, the checks — runs here.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};

use crate::generator::{Counts, Generator, Mix};
use crate::kafka::{mock_cluster, produce, producer, TOPIC};
use crate::measure::{fmt_n, own_cpu, Rate};
use crate::registered::Encoder;
use crate::registry::Registry;
use crate::sink::{Sink, SinkOptions};
use bqsink_actors::config::ValueFormat;

mod kafka;
pub mod worker;

use kafka::{committed, raw_consume, watermarks};
use worker::Worker;
pub use worker::WorkerReport;

pub(crate) const TABLE: &str = "member_events";
pub(crate) const GROUP: &str = "bqsink-bench";
/// Records per partition in one round, at most: about 3.5 MB of lz4 batches, well under the mock's
/// 5 MiB. A run is split into rounds of equal size (2,000,000 records on 16 partitions: three of
/// 666,667), because each round pays the pipeline's start and end once: a small last round
/// measured those more than the rate.
const ROUND_PER_PARTITION: u64 = 42_000;

/// The records of each round: as few rounds as [`ROUND_PER_PARTITION`] allows, of equal size.
fn round_size(records: u64, partitions: u64) -> u64 {
    let most = ROUND_PER_PARTITION * partitions.max(1);
    let rounds = records.div_ceil(most).max(1);
    records.div_ceil(rounds)
}
/// Records produced before latencies are counted (they wait for the consumer group to form).
const WARMUP: u64 = 1_000;
/// `fetch.wait.max.ms` of the worker and the raw consumer (librdkafka: 500).
pub(crate) const FETCH_WAIT_MS: &str = "100";

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
    /// The librdkafka fetch settings the pipeline's consumer uses (`bqsink::kafka::FETCH_DEFAULTS`),
    /// so that the raw consumer reads the same way.
    pub fetch_defaults: Vec<(String, String)>,
    /// The write paths to measure, one after the other, each on a fresh cluster and sink.
    pub paths: Vec<WritePath>,
    /// The records' format: JSON, or Avro, Protobuf or JSON Schema through a local Schema
    /// Registry.
    pub format: ValueFormat,
}

/// How the bench's pipeline writes to the local sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePath {
    /// The Storage Write API, exactly once (the default configuration).
    Storage,
    /// `tabledata.insertAll`, at least once.
    InsertAll,
}

impl WritePath {
    fn label(self) -> &'static str {
        match self {
            WritePath::Storage => "storage write API, exactly once",
            WritePath::InsertAll => "insertAll, at least once",
        }
    }
}

/// One path's figures, for the side-by-side summary.
struct Summary {
    path: WritePath,
    rate: f64,
    /// The latency (fixed rate) or the rate to the last row handled (throughput), side by side.
    detail: Option<String>,
    rss_mib: f64,
    cpu_per_million: f64,
    ok: bool,
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
    events: &mut Events,
    n: u64,
    mut pace: impl FnMut(u64),
) -> anyhow::Result<Produced> {
    let mut out = Produced::default();
    for (i, event) in events.generator.by_ref().take(n as usize).enumerate() {
        pace(i as u64);
        // In the registry format when asked (a malformed event stays JSON bytes: not framed).
        let framed = events
            .registered
            .as_ref()
            .and_then(|r| r.encoder.encode(&event.payload));
        let payload = framed.as_deref().unwrap_or(&event.payload);
        produce(p, TOPIC, &event.key, payload)?;
        out.counts.add(event.kind);
        out.payload_bytes += payload.len() as u64;
    }
    p.flush(Duration::from_secs(60))
        .context("flushing the producer")?;
    Ok(out)
}

/// The generated events, and how they are produced: as JSON, or in a registry format (Avro,
/// Protobuf, JSON Schema) through a local registry.
struct Events {
    generator: Generator,
    registered: Option<RegisteredEvents>,
}

struct RegisteredEvents {
    format: ValueFormat,
    encoder: Encoder,
    registry: Registry,
}

impl Events {
    /// The records' format and registry, for the worker's configuration.
    fn registry(&self) -> Option<(ValueFormat, &str)> {
        let r = self.registered.as_ref()?;
        Some((r.format, r.registry.url.as_str()))
    }
}

/// The pipeline's worker process for `path`, with `--worker-config` and the records' registry.
fn start_worker(
    opts: &BenchOptions,
    path: WritePath,
    bootstrap: &str,
    sink: &Sink,
    dir: &Path,
    events: &Events,
) -> anyhow::Result<Worker> {
    let extra = opts.worker_config.as_deref();
    Worker::start(dir, bootstrap, sink, path, extra, events.registry())
}

/// The member events' schema id in the local registry.
const SCHEMA_ID: u32 = 1;

/// Waits until the sink holds `unique` rows. Handled is not yet visible with exactly-once delivery:
/// rows show with the commit after their append, and the rate runs to the last row visible.
fn wait_visible(sink: &Sink, unique: u64) -> anyhow::Result<()> {
    let start = Instant::now();
    while sink.total_rows() < unique {
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "the sink holds {} of {} rows 60 s after they were handled",
                fmt_n(sink.total_rows()),
                fmt_n(unique)
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// Throughput mode: rounds of backlog, each read raw and then by the pipeline.
fn throughput(
    opts: &BenchOptions,
    path: WritePath,
    bootstrap: &str,
    sink: &Sink,
    dir: &Path,
    events: &mut Events,
) -> anyhow::Result<(Produced, Rate, Rate, Rate, Worker)> {
    let round = round_size(opts.records, opts.partitions as u64);
    let (mut produced, mut raw, mut piped, mut handled) = (
        Produced::default(),
        Rate::default(),
        Rate::default(),
        Rate::default(),
    );
    let mut worker: Option<Worker> = None;
    let p = producer(bootstrap)?;
    let mut total = 0;
    while total < opts.records {
        let n = round.min(opts.records - total);
        if let Some(w) = worker.as_mut() {
            w.command(&format!("pause {}", opts.partitions))?;
        }
        let before = watermarks(bootstrap, opts.partitions)?;
        let this = produce_events(&p, events, n, |_| {})?;
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
        let r = raw_consume(bootstrap, &opts.fetch_defaults, &from, n)?;
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
                let w = start_worker(opts, path, bootstrap, sink, dir, events)?;
                w.watch_reads();
                worker = Some(w);
            }
        }
        let w = worker.as_mut().context("worker")?;
        w.wait_handled(total)?;
        wait_visible(sink, produced.counts.unique)?;
        let (first, last_handled) = {
            let h = w.heard();
            (h.first_read, h.last_handled)
        };
        let last = sink.latency().last_row;
        let since_first = |end: Option<Instant>| match (first, end) {
            (Some(f), Some(l)) => l.saturating_duration_since(f).as_secs_f64(),
            _ => 0.0,
        };
        let secs = since_first(last);
        piped.add(Rate {
            records: n,
            bytes: this.payload_bytes,
            secs,
            cpu_secs: own_cpu() - cpu,
        });
        handled.add(Rate {
            records: n,
            bytes: this.payload_bytes,
            secs: since_first(last_handled),
            cpu_secs: 0.0,
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
    Ok((produced, raw, piped, handled, worker.context("no records")?))
}

/// Latency mode: produce at `rate` records/s while the pipeline consumes.
fn latency(
    opts: &BenchOptions,
    path: WritePath,
    rate: u64,
    bootstrap: &str,
    sink: &Sink,
    dir: &Path,
    events: &mut Events,
) -> anyhow::Result<(Produced, Rate, Worker)> {
    let mut worker = start_worker(opts, path, bootstrap, sink, dir, events)?;
    let warmup = WARMUP.min(opts.records);
    let p = producer(bootstrap)?;
    let mut produced = produce_events(&p, events, warmup, |_| {})?;
    worker.wait_handled(warmup)?;
    wait_visible(sink, produced.counts.unique)?;
    sink.reset_latency();
    let started = Instant::now();
    let rest = produce_events(&p, events, opts.records - warmup, |i| {
        if i % 100 == 0 {
            let due = Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    })?;
    produced.add(rest);
    worker.wait_handled(opts.records)?;
    wait_visible(sink, produced.counts.unique)?;
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

/// Runs the benchmark for each of `opts.paths`, then prints them side by side; returns 0 when every
/// run's sink held exactly the unique good events.
pub fn run(opts: &BenchOptions) -> anyhow::Result<i32> {
    let mut summaries = Vec::new();
    for &path in &opts.paths {
        println!("== {} ==", path.label());
        summaries.push(run_path(opts, path)?);
        println!();
    }
    if summaries.len() > 1 {
        println!("side by side (same run, same machine):");
        for s in &summaries {
            println!(
                "  {:<34} {:>10.0} records/s  {}peak RSS {:>6.1} MiB  CPU {:.2} s/M  {}",
                s.path.label(),
                s.rate,
                s.detail
                    .as_deref()
                    .map(|l| format!("{l}  "))
                    .unwrap_or_default(),
                s.rss_mib,
                s.cpu_per_million,
                if s.ok { "check OK" } else { "check MISMATCH" }
            );
        }
    }
    Ok(i32::from(summaries.iter().any(|s| !s.ok)))
}

/// One path's run.
fn run_path(opts: &BenchOptions, path: WritePath) -> anyhow::Result<Summary> {
    let cluster = mock_cluster(TOPIC, opts.partitions)?;
    let bootstrap = cluster.bootstrap_servers();
    let sink = Sink::start(SinkOptions {
        keep_rows: false,
        id_pointer: Some("/event_id".into()),
        honor_insert_id: false,
    })
    .context("starting the local BigQuery sink")?;
    // The Storage Write API encodes rows from the table's schema: the table exists, as in BigQuery.
    sink.create_table(
        &format!("bench.{TABLE}"),
        crate::generator::member_events_fields(),
    );
    let dir = std::env::temp_dir().join(format!("bqsink-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let generator = Generator::new(Mix {
        duplicates: opts.duplicates,
        malformed: opts.malformed,
        seed: opts.seed,
    });
    let registered = match Encoder::new(opts.format, SCHEMA_ID) {
        None => None,
        Some(encoder) => {
            let registry = Registry::start().context("starting the local schema registry")?;
            encoder.register(&registry);
            Some(RegisteredEvents {
                format: opts.format,
                encoder,
                registry,
            })
        }
    };
    let mut events = Events {
        generator,
        registered,
    };
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

    let (produced, worker, harness, rate, detail) = match opts.rate {
        None => {
            let (produced, raw, piped, handled, worker) =
                throughput(opts, path, &bootstrap, &sink, &dir, &mut events)?;
            println!(
                "raw consume    {:>10.0} records/s  {:>6.1} MB/s   (bare BaseConsumer that reads and drops; \
                 {:.2} s CPU per million records with the mock broker)",
                raw.per_sec(),
                raw.mb_per_sec(),
                raw.cpu_per_million()
            );
            println!(
                "pipeline       {:>10.0} records/s  {:>6.1} MB/s   (first record read to last row visible)",
                piped.per_sec(),
                piped.mb_per_sec()
            );
            println!(
                "handled        {:>10.0} records/s             (first record read to last row written \
                 and acknowledged; with exactly once it becomes visible at the next commit, every \
                 kafka.commit_interval_ms, which a backlog read in rounds pays once per round)",
                handled.per_sec()
            );
            println!(
                "ratio          {:>10.1} % of the raw consume rate",
                100.0 * piped.per_sec() / raw.per_sec().max(1e-9)
            );
            (
                produced,
                worker,
                Some(piped),
                piped.per_sec(),
                Some(format!("handled {:.0}/s", handled.per_sec())),
            )
        }
        Some(rate) => {
            let (produced, achieved, worker) =
                latency(opts, path, rate, &bootstrap, &sink, &dir, &mut events)?;
            println!(
                "pipeline       {:>10.0} records/s  {:>6.1} MB/s   (offered {} records/s)",
                achieved.per_sec(),
                achieved.mb_per_sec(),
                fmt_n(rate)
            );
            let latency = sink.latency();
            println!("latency        {latency} (row visible minus produce timestamp)");
            (
                produced,
                worker,
                None,
                achieved.per_sec(),
                Some(format!("latency {latency}")),
            )
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
        "flow           {:>10} write requests, {} partition pauses at the in-flight limits",
        fmt_n(report.requests),
        fmt_n(report.pauses)
    );
    if let Some(h) = harness {
        println!(
            "               {:>10.2} s per million records more in the bench process meanwhile \
             (local sink, mock broker)",
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
    let summary = Summary {
        path,
        rate,
        detail,
        rss_mib: report.peak_rss_kib as f64 / 1024.0,
        cpu_per_million: cpu * 1e6 / n.max(1) as f64,
        ok: problems.is_empty(),
    };
    if problems.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
        println!(
            "check          OK: the sink received exactly the {} unique good events, once each; \
             {} duplicates dropped, {} malformed reported; offsets committed to the end",
            fmt_n(c.unique),
            fmt_n(c.duplicates),
            fmt_n(c.malformed)
        );
    } else {
        for p in &problems {
            println!("check          MISMATCH: {p}");
        }
        println!("worker log     {}", dir.join("worker.log").display());
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_split_into_the_fewest_rounds_of_equal_size() {
        assert_eq!(
            round_size(2_000_000, 16),
            666_667,
            "three rounds, not 640,000 x 3 + 80,000"
        );
        assert_eq!(round_size(672_000, 16), 672_000, "exactly one full round");
        assert_eq!(round_size(672_001, 16), 336_001);
        assert_eq!(round_size(1_000, 16), 1_000);
        assert_eq!(round_size(100_000, 1), 33_334);
        for (records, partitions) in [(2_000_000, 16), (5_000_001, 4), (7, 3)] {
            let round = round_size(records, partitions);
            assert!(round <= ROUND_PER_PARTITION * partitions);
            assert!(round * records.div_ceil(round) >= records);
        }
    }
}
