//! `bqsink replay`: sends failed records back, from the dead-letter topic or from error files, either
//! to the topic they came from (`--to-source`, which the running pipeline then reads again) or
//! straight through convert, transform, dedup and insertAll to BigQuery (`--to-bigquery`).
//!
//! Replay commits its own progress after every batch it has sent: for the dead-letter topic in a
//! consumer group of its own (`<kafka.group_id>.replay.<stage filter or "all">` unless `--group`),
//! for error files in one progress file `<path>.replay-progress` beside the base path, per file
//! identity (its first line), so that progress follows a file when rotation renames it to
//! `<path>.N` (see `files`). A second run therefore repeats nothing. Records
//! that fail again are reported (one ERROR line each, a summary, optionally an NDJSON file in the
//! error-file format to replay later) and passed over, so they do not block the rest.
//!
//! Holds: this file (options, the run over either source, the report) and `files` (reading error
//! files through rotation, the progress file). Depends on: `bqsink_actors` (the stages it reuses),
//! [`crate::destinations`] (the dead-letter headers and error-file format it reads back) and
//! [`crate::kafka`] (the consumer settings); not on [`crate::service`] or [`crate::cli`].

use std::collections::HashMap;
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bqsink_actors::bigquery::{send_with_retry, BigQuery, RetryPolicy};
use bqsink_actors::config::Config;
use bqsink_actors::destinations::parse_stage;
use bqsink_actors::messages::{RawRecord, Stage, Tp};
use bqsink_actors::stage::batch::{BatchItem, Batcher};
use bqsink_actors::stage::convert::convert;
use bqsink_actors::stage::dedup::{Deduplicator, Position, Verdict};
use bqsink_actors::stage::transform::{TableRef, Transformer};
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::{Offset, TopicPartitionList};

use crate::destinations::dlq::{self, headers};
use crate::destinations::error_file::{FileHeader, FileRecord};

mod files;

/// What one `send` did: rows written, duplicates dropped, and the failures by item index.
type Sent = (u64, u64, Vec<(usize, String)>);

pub use files::progress_path;
use files::FileReader;

/// Where failed records are read from.
#[derive(Debug, Clone)]
pub enum ReplayFrom {
    /// A dead-letter topic.
    Dlq(String),
    /// Error files (`errors.file.path` and its rotated `.N` files), in the order given.
    Files(Vec<PathBuf>),
}

/// Where they are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayTo {
    /// The topic and partition they were read from (`__connect.errors.topic`/`.partition`).
    Source,
    /// BigQuery, through convert, transform, dedup and insertAll.
    BigQuery,
}

/// `bqsink replay` options.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub from: ReplayFrom,
    pub to: ReplayTo,
    /// Only records that failed at this stage.
    pub filter_stage: Option<Stage>,
    /// Only records whose timestamp (the original record's) is at or after this, ms since the epoch.
    pub since_ms: Option<i64>,
    /// Consumer group that keeps the progress through a dead-letter topic.
    pub group: Option<String>,
    /// Append records that fail again to this NDJSON file (error-file format).
    pub still_failing_file: Option<PathBuf>,
    /// Show a progress bar (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Records per batch (progress is committed after each).
    pub batch: usize,
}

impl ReplayOptions {
    pub fn new(from: ReplayFrom, to: ReplayTo) -> Self {
        Self {
            from,
            to,
            filter_stage: None,
            since_ms: None,
            group: None,
            still_failing_file: None,
            progress: false,
            batch: 500,
        }
    }
}

/// A record that failed again.
#[derive(Debug, Clone, PartialEq)]
pub struct StillFailing {
    /// Where it originally came from (as far as known).
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReplayReport {
    /// Failed records read.
    pub read: u64,
    /// Sent and accepted (produced, or written to BigQuery).
    pub replayed: u64,
    /// Passed over by `--filter-stage` / `--since`.
    pub skipped: u64,
    /// Dropped as duplicates of a record replayed before (`--to-bigquery`).
    pub duplicates: u64,
    /// Failed again.
    pub still_failing: u64,
    /// The first [`MAX_LISTED`] of those.
    pub failures: Vec<StillFailing>,
}

/// Still-failing records kept in the report.
pub const MAX_LISTED: usize = 100;

/// Parses `--since`: an RFC 3339 time (`2024-05-01T12:00:00Z`, or without zone as UTC) or a
/// duration back from now (`90m`, `2h`, `3days`). Returns ms since the epoch.
pub fn parse_since(text: &str) -> anyhow::Result<i64> {
    let t = match humantime::parse_rfc3339_weak(text) {
        Ok(t) => t,
        Err(_) => {
            let ago = humantime::parse_duration(text).with_context(|| {
                format!("--since {text:?} is neither an RFC 3339 time nor a duration such as 2h")
            })?;
            SystemTime::now()
                .checked_sub(ago)
                .context("--since reaches before the epoch")?
        }
    };
    Ok(t.duration_since(UNIX_EPOCH)
        .context("--since is before the epoch")?
        .as_millis() as i64)
}

/// One failed record read back.
struct Item {
    /// Where it originally came from; `None` when the dead-letter record has no context headers.
    origin: Option<Tp>,
    /// The original record (original offset, key, value, timestamp, headers).
    raw: RawRecord,
    stage: Option<Stage>,
}

impl Item {
    fn describe(&self, reason: String) -> StillFailing {
        StillFailing {
            topic: self
                .origin
                .as_ref()
                .map_or_else(|| "?".into(), |tp| tp.topic.to_string()),
            partition: self.origin.as_ref().map_or(-1, |tp| tp.partition),
            offset: self.raw.offset,
            reason,
        }
    }
}

/// Runs a replay to the end of what was there when it started.
pub fn run(
    config: &Config,
    bq: Option<Arc<dyn BigQuery>>,
    opts: &ReplayOptions,
) -> anyhow::Result<ReplayReport> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the replay runtime")?;
    let mut target = match opts.to {
        ReplayTo::Source => Target::Source(
            dlq::producer_config(config, &config.errors.deadletterqueue.properties)
                .create()
                .context("creating the replay producer (check kafka.brokers)")?,
        ),
        ReplayTo::BigQuery => Target::BigQuery(Box::new(BqTarget::new(
            config,
            bq.context("--to-bigquery needs a BigQuery client")?,
        ))),
    };
    let mut still_file = match &opts.still_failing_file {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening {}", p.display()))?,
        ),
        None => None,
    };
    let mut report = ReplayReport::default();
    let mut ctx = RunCtx {
        runtime: &runtime,
        target: &mut target,
        opts,
        report: &mut report,
        still_file: still_file.as_mut(),
        connector: &config.kafka.group_id,
    };
    match &opts.from {
        ReplayFrom::Dlq(topic) => {
            let group = opts.group.clone().unwrap_or_else(|| {
                format!(
                    "{}.replay.{}",
                    config.kafka.group_id,
                    opts.filter_stage.map_or("all", Stage::as_str)
                )
            });
            let mut reader = DlqReader::open(config, topic, &group)?;
            let bar = progress_bar(opts.progress, reader.remaining());
            loop {
                let batch = reader.next_batch(opts.batch)?;
                if batch.is_empty() {
                    break;
                }
                let n = batch.len() as u64;
                ctx.process(batch)?;
                reader.commit()?;
                bar.inc(n);
                bar.set_message(ctx.summary());
            }
            bar.finish_and_clear();
        }
        ReplayFrom::Files(paths) => {
            for path in paths {
                let mut reader = FileReader::open(path)?;
                let bar = progress_bar(opts.progress, reader.remaining_lines()?);
                loop {
                    let batch = reader.next_batch(opts.batch, ctx.report)?;
                    if batch.is_empty() {
                        break;
                    }
                    let n = batch.len() as u64;
                    ctx.process(batch)?;
                    reader.commit()?;
                    bar.inc(n);
                    bar.set_message(ctx.summary());
                }
                bar.finish_and_clear();
            }
        }
    }
    Ok(report)
}

fn progress_bar(wanted: bool, len: u64) -> ProgressBar {
    if !wanted || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} {bar:30} {pos}/{len} read, {per_sec} {msg}")
    {
        bar.set_style(style);
    }
    bar
}

struct RunCtx<'a> {
    runtime: &'a tokio::runtime::Runtime,
    target: &'a mut Target,
    opts: &'a ReplayOptions,
    report: &'a mut ReplayReport,
    still_file: Option<&'a mut File>,
    connector: &'a str,
}

impl RunCtx<'_> {
    fn summary(&self) -> String {
        format!(
            "| replayed {} skipped {} failing {}",
            self.report.replayed, self.report.skipped, self.report.still_failing
        )
    }

    /// Filters, sends, and reports one batch. Errors here are the replay's own (cannot write the
    /// still-failing file); record failures are reported, not returned.
    fn process(&mut self, batch: Vec<Item>) -> anyhow::Result<()> {
        self.report.read += batch.len() as u64;
        let mut todo = Vec::with_capacity(batch.len());
        let mut failed: Vec<(Item, String)> = Vec::new();
        for item in batch {
            let stage_ok = self.opts.filter_stage.is_none_or(|s| item.stage == Some(s));
            let time_ok = self
                .opts
                .since_ms
                .is_none_or(|since| item.raw.timestamp_ms.is_some_and(|t| t >= since));
            if !(stage_ok && time_ok) {
                self.report.skipped += 1;
            } else if item.origin.is_none() {
                failed.push((
                    item,
                    format!(
                        "no {} header: the original topic is unknown (errors.deadletterqueue.context_headers_enable was off)",
                        headers::TOPIC
                    ),
                ));
            } else {
                todo.push(item);
            }
        }
        let (replayed, duplicates, again) = match self.target {
            Target::Source(producer) => send_to_source(self.runtime, producer, &todo),
            Target::BigQuery(bq) => bq.send(self.runtime, &todo)?,
        };
        self.report.replayed += replayed;
        self.report.duplicates += duplicates;
        let mut todo: Vec<Option<Item>> = todo.into_iter().map(Some).collect();
        for (i, reason) in again {
            if let Some(item) = todo.get_mut(i).and_then(Option::take) {
                failed.push((item, reason));
            }
        }
        for (item, reason) in failed {
            self.still_failing(item, reason)?;
        }
        Ok(())
    }

    fn still_failing(&mut self, item: Item, reason: String) -> anyhow::Result<()> {
        let f = item.describe(reason);
        tracing::error!(topic = %f.topic, partition = f.partition, offset = f.offset, error = %f.reason, "replayed record failed again");
        self.report.still_failing += 1;
        if let Some(file) = self.still_file.as_deref_mut() {
            let record = still_failing_record(&item, &f, self.connector);
            let mut line =
                serde_json::to_vec(&record).context("encoding a still-failing record")?;
            line.push(b'\n');
            file.write_all(&line)
                .and_then(|()| file.sync_data())
                .context("writing the still-failing file")?;
        }
        if self.report.failures.len() < MAX_LISTED {
            self.report.failures.push(f);
        }
        Ok(())
    }
}

fn still_failing_record(item: &Item, f: &StillFailing, connector: &str) -> FileRecord {
    use base64::Engine;
    let b64 = |v: &Vec<u8>| base64::engine::general_purpose::STANDARD.encode(v);
    FileRecord {
        topic: f.topic.clone(),
        partition: f.partition,
        offset: f.offset,
        timestamp_ms: item.raw.timestamp_ms,
        key_base64: item.raw.key.as_ref().map(b64),
        value_base64: item.raw.payload.as_ref().map(b64),
        headers: item
            .raw
            .headers
            .iter()
            .map(|(k, v)| FileHeader {
                key: k.clone(),
                value_base64: v.as_ref().map(b64),
            })
            .collect(),
        stage: item.stage.map_or("replay", Stage::as_str).into(),
        class: "replay_failed".into(),
        error: f.reason.clone(),
        connector: connector.into(),
        failed_at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    }
}

enum Target {
    Source(dlq::Producer),
    BigQuery(Box<BqTarget>),
}

/// Produces each record to its original topic and partition; returns (replayed, 0, failures).
fn send_to_source(
    runtime: &tokio::runtime::Runtime,
    producer: &dlq::Producer,
    items: &[Item],
) -> (u64, u64, Vec<(usize, String)>) {
    let mut failures = Vec::new();
    let mut pending = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Some(tp) = &item.origin else { continue };
        let mut hdrs = OwnedHeaders::new_with_capacity(item.raw.headers.len());
        for (key, value) in &item.raw.headers {
            hdrs = hdrs.insert(Header {
                key,
                value: value.as_deref(),
            });
        }
        let mut record = dlq::original_record(&tp.topic, &item.raw, hdrs).partition(tp.partition);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push((i, delivery));
                    break;
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((e, _)) => {
                    failures.push((i, format!("producing to {tp}: {e}")));
                    break;
                }
            }
        }
    }
    let mut replayed = 0;
    runtime.block_on(async {
        for (i, delivery) in pending {
            match delivery.await {
                Ok(Ok(_)) => replayed += 1,
                Ok(Err((e, _))) => {
                    failures.push((i, format!("producing to the source topic: {e}")))
                }
                Err(_) => failures.push((i, "the producer was closed".into())),
            }
        }
    });
    (replayed, 0, failures)
}

/// The BigQuery path: the pipeline's own convert, transform and dedup, then insertAll with retries.
struct BqTarget {
    bq: Arc<dyn BigQuery>,
    transformer: Transformer,
    dedup: Deduplicator,
    policy: RetryPolicy,
    max_rows: usize,
    max_bytes: usize,
}

struct ReplayRow {
    item: usize,
    table: Arc<TableRef>,
    entry: Vec<u8>,
}

impl BatchItem for ReplayRow {
    fn table(&self) -> &Arc<TableRef> {
        &self.table
    }
    fn entry(&self) -> &[u8] {
        &self.entry
    }
}

impl BqTarget {
    fn new(config: &Config, bq: Arc<dyn BigQuery>) -> Self {
        Self {
            bq,
            transformer: Transformer::new(config),
            dedup: Deduplicator::new(
                config.dedup.max_keys,
                Duration::from_secs(config.dedup.ttl_secs),
            ),
            policy: RetryPolicy {
                timeout: Duration::from_millis(config.errors.retry_timeout_ms),
                max_delay: Duration::from_millis(config.errors.retry_delay_max_ms),
                min_delay: Duration::from_millis(100)
                    .min(Duration::from_millis(config.errors.retry_delay_max_ms)),
                // A replay is a command that ends: when BigQuery cannot take rows for
                // errors.retry_timeout_ms it stops (without committing its progress past them).
                give_up: true,
            },
            max_rows: config.batch.max_rows,
            max_bytes: config.batch.max_bytes,
        }
    }

    /// Returns (written, duplicates, failures by item index); an error when BigQuery could not
    /// take rows for `errors.retry_timeout_ms` (a sink failure: nothing of this batch counts as
    /// replayed or still failing, and the progress is not committed past it).
    fn send(&mut self, runtime: &tokio::runtime::Runtime, items: &[Item]) -> anyhow::Result<Sent> {
        let mut failures = Vec::new();
        let mut duplicates = 0;
        let mut batcher = Batcher::new(self.max_rows, self.max_bytes);
        let mut batches = Vec::new();
        let now = Instant::now();
        for (i, item) in items.iter().enumerate() {
            let Some(tp) = &item.origin else { continue };
            let value = match convert(item.raw.payload.as_deref()) {
                Ok(v) => v,
                Err(e) => {
                    failures.push((i, format!("convert ({}): {e}", e.class())));
                    continue;
                }
            };
            let row = match self.transformer.apply(tp, &item.raw, value) {
                Ok(r) => r,
                Err(e) => {
                    failures.push((i, format!("transform ({}): {e}", e.class())));
                    continue;
                }
            };
            if let Some(hash) = row.dedup_hash {
                if self.dedup.check(hash, Position::new(tp, item.raw.offset)) == Verdict::Duplicate
                {
                    duplicates += 1;
                    continue;
                }
            }
            batches.extend(batcher.push(
                ReplayRow {
                    item: i,
                    table: row.table,
                    entry: row.entry,
                },
                now,
            ));
        }
        batches.extend(batcher.drain());
        let mut written = 0;
        for batch in batches {
            let entries: Vec<&[u8]> = batch.rows.iter().map(|r| r.entry.as_slice()).collect();
            let outcome = runtime.block_on(send_with_retry(
                &*self.bq,
                &batch.table,
                &entries,
                self.policy,
                &|_| true,
            ));
            if let Some(sf) = outcome.sink_failure {
                anyhow::bail!(
                    "BigQuery table {} could not take rows for {:.1?} ({}); the replay stops here \
                     and its progress is not committed past them: run it again later",
                    batch.table,
                    sf.after,
                    sf.error
                );
            }
            written += outcome.written.len() as u64;
            for (row, class, error) in outcome.failed {
                if let Some(r) = batch.rows.get(row) {
                    failures.push((
                        r.item,
                        format!("bigquery ({class}): table {}: {error}", batch.table),
                    ));
                }
            }
        }
        Ok((written, duplicates, failures))
    }
}

/// Reads a dead-letter topic from the replay group's committed offsets to the end offsets it had
/// when the replay started.
struct DlqReader {
    consumer: BaseConsumer,
    topic: String,
    /// Partition → (next offset to read, end offset).
    partitions: HashMap<i32, (i64, i64)>,
}

impl DlqReader {
    fn open(config: &Config, topic: &str, group: &str) -> anyhow::Result<Self> {
        let mut cc = crate::kafka::consumer_config(config);
        cc.set("group.id", group)
            .set("auto.offset.reset", "earliest");
        let consumer: BaseConsumer = cc
            .create()
            .context("creating the replay consumer (check kafka.brokers)")?;
        let timeout = Duration::from_secs(30);
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .with_context(|| format!("reading the metadata of {topic}"))?;
        let parts: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        anyhow::ensure!(!parts.is_empty(), "topic {topic:?} does not exist");
        let mut tpl = TopicPartitionList::new();
        for &p in &parts {
            tpl.add_partition(topic, p);
        }
        let committed = consumer
            .committed_offsets(tpl, timeout)
            .with_context(|| format!("reading the committed offsets of group {group:?}"))?;
        let mut partitions = HashMap::new();
        let mut assign = TopicPartitionList::new();
        for &p in &parts {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, timeout)
                .with_context(|| format!("reading the end offsets of {topic}[{p}]"))?;
            let start = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o.max(low),
                _ => low,
            };
            if start < high {
                assign.add_partition_offset(topic, p, Offset::Offset(start))?;
                partitions.insert(p, (start, high));
            }
        }
        consumer
            .assign(&assign)
            .with_context(|| format!("assigning {topic}"))?;
        tracing::info!(
            topic,
            group,
            to_read = partitions.values().map(|(s, e)| e - s).sum::<i64>(),
            "replaying from the dead-letter topic"
        );
        Ok(Self {
            consumer,
            topic: topic.into(),
            partitions,
        })
    }

    fn remaining(&self) -> u64 {
        self.partitions.values().map(|(s, e)| (e - s) as u64).sum()
    }

    fn done(&self) -> bool {
        self.partitions.values().all(|(next, end)| next >= end)
    }

    fn next_batch(&mut self, max: usize) -> anyhow::Result<Vec<Item>> {
        let mut items = Vec::new();
        let mut idle = Instant::now();
        while items.len() < max && !self.done() {
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(msg)) => {
                    idle = Instant::now();
                    let Some((next, end)) = self.partitions.get_mut(&msg.partition()) else {
                        continue;
                    };
                    if msg.offset() >= *end {
                        *next = (*next).max(*end);
                        continue;
                    }
                    *next = msg.offset() + 1;
                    items.push(item_from_dlq(&msg));
                }
                Some(Err(e)) => tracing::warn!(error = %e, "reading the dead-letter topic"),
                None => {
                    // Offsets that hold no record (transaction markers, compaction) are never
                    // delivered: take the consumer's position for them.
                    if let Ok(pos) = self.consumer.position() {
                        for e in pos.elements_for_topic(&self.topic) {
                            if let (Offset::Offset(o), Some((next, _))) =
                                (e.offset(), self.partitions.get_mut(&e.partition()))
                            {
                                *next = (*next).max(o);
                            }
                        }
                    }
                    anyhow::ensure!(
                        idle.elapsed() < Duration::from_secs(60),
                        "no record from {} for 60 s before its end offsets",
                        self.topic
                    );
                }
            }
        }
        Ok(items)
    }

    /// Commits what was read (and sent) so far.
    fn commit(&self) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (&p, &(next, _)) in &self.partitions {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(next))?;
        }
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .context("committing the replay progress")
    }
}

/// An original record rebuilt from a dead-letter record: context headers give its origin, the
/// other headers are its own.
fn item_from_dlq(msg: &rdkafka::message::BorrowedMessage<'_>) -> Item {
    let mut own = Vec::new();
    let mut context: HashMap<&str, String> = HashMap::new();
    if let Some(hs) = msg.headers() {
        for h in hs.iter() {
            if h.key.starts_with(headers::PREFIX) {
                if let Some(v) = h.value {
                    context.insert(h.key, String::from_utf8_lossy(v).into_owned());
                }
            } else {
                own.push((h.key.to_owned(), h.value.map(<[u8]>::to_vec)));
            }
        }
    }
    let origin = match (
        context.get(headers::TOPIC),
        context
            .get(headers::PARTITION)
            .and_then(|p| p.parse::<i32>().ok()),
    ) {
        (Some(t), Some(p)) => Some(Tp::new(t.as_str(), p)),
        _ => None,
    };
    Item {
        origin,
        raw: RawRecord {
            offset: context
                .get(headers::OFFSET)
                .and_then(|o| o.parse().ok())
                .unwrap_or(msg.offset()),
            timestamp_ms: msg.timestamp().to_millis(),
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().map(<[u8]>::to_vec),
            headers: own,
        },
        stage: context.get(headers::STAGE).and_then(|s| parse_stage(s)),
    }
}

/// The report as text for the terminal.
pub fn render_report(r: &ReplayReport, to: ReplayTo) -> String {
    let target = match to {
        ReplayTo::Source => "their source topics",
        ReplayTo::BigQuery => "BigQuery",
    };
    let mut s = format!(
        "read {} failed records: {} replayed to {target}, {} skipped by filters, {} duplicates dropped, {} still failing",
        r.read, r.replayed, r.skipped, r.duplicates, r.still_failing
    );
    for f in r.failures.iter().take(20) {
        s.push_str(&format!(
            "\n  {}[{}] offset {}: {}",
            f.topic, f.partition, f.offset, f.reason
        ));
    }
    if r.still_failing > 20 {
        s.push_str(&format!("\n  … and {} more", r.still_failing - 20));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_times_and_durations() {
        assert_eq!(
            parse_since("2024-05-01T12:00:00Z").unwrap(),
            1_714_564_800_000
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let two_hours_ago = parse_since("2h").unwrap();
        assert!((now - 7_200_000 - two_hours_ago).abs() < 60_000);
        assert!(parse_since("yesterday-ish").is_err());
    }
}
