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
//! Holds: this file (options, the run over either source, the report), the sources `dlq_source`
//! (a dead-letter topic) and `files` (error files through rotation, the progress file), and
//! `targets` (the source topic or BigQuery). Depends on: `bqsink_actors` (the stages it reuses),
//! [`crate::destinations`] (the dead-letter headers and error-file format it reads back) and
//! [`crate::kafka`] (the consumer settings); not on [`crate::service`] or [`crate::cli`].

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bqsink_actors::bigquery::BigQuery;
use bqsink_actors::config::Config;
use bqsink_actors::messages::{RawRecord, Stage, Tp};
use indicatif::{ProgressBar, ProgressStyle};

use crate::destinations::dlq::{self, headers};
use crate::destinations::error_file::{FileHeader, FileRecord};

mod dlq_source;
mod files;
mod targets;

/// What one `send` did: rows written, duplicates dropped, and the failures by item index.
type Sent = (u64, u64, Vec<(usize, String)>);

use dlq_source::DlqReader;
pub use files::progress_path;
use files::FileReader;
use targets::{send_to_source, BqTarget, Target};

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
            ctx.drain(&mut reader, &bar)?;
        }
        ReplayFrom::Files(paths) => {
            for path in paths {
                let mut reader = FileReader::open(path)?;
                let bar = progress_bar(opts.progress, reader.remaining_lines()?);
                ctx.drain(&mut reader, &bar)?;
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

/// Where replayed records are read from, a batch at a time, with progress committed after each.
trait Source {
    fn next_batch(&mut self, max: usize, report: &mut ReplayReport) -> anyhow::Result<Vec<Item>>;
    fn commit(&self) -> anyhow::Result<()>;
}

impl Source for DlqReader {
    fn next_batch(&mut self, max: usize, _: &mut ReplayReport) -> anyhow::Result<Vec<Item>> {
        DlqReader::next_batch(self, max)
    }
    fn commit(&self) -> anyhow::Result<()> {
        DlqReader::commit(self)
    }
}

impl Source for FileReader {
    fn next_batch(&mut self, max: usize, report: &mut ReplayReport) -> anyhow::Result<Vec<Item>> {
        FileReader::next_batch(self, max, report)
    }
    fn commit(&self) -> anyhow::Result<()> {
        FileReader::commit(self)
    }
}

impl RunCtx<'_> {
    /// Replays `source` to its end: each batch is processed, then its progress committed.
    fn drain(&mut self, source: &mut impl Source, bar: &ProgressBar) -> anyhow::Result<()> {
        loop {
            let batch = source.next_batch(self.opts.batch, self.report)?;
            if batch.is_empty() {
                break;
            }
            let n = batch.len() as u64;
            self.process(batch)?;
            source.commit()?;
            bar.inc(n);
            bar.set_message(self.summary());
        }
        bar.finish_and_clear();
        Ok(())
    }

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
