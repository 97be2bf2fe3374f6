//! The writer: batches rows per table and sends them with `tabledata.insertAll`, at most
//! `bigquery.max_concurrent_requests` at a time.
//!
//! The invariant: a row's offset is acknowledged as handled only once BigQuery accepted the row, or
//! the row was bad and went to the error report (which acknowledges it once the error destinations
//! have it). Batches may complete in any order; the partition consumers' offset trackers keep the
//! commit below every row still in flight.
//!
//! When BigQuery itself cannot take rows (a *sink failure*; see [`crate::health`]), the batch is
//! retried while its partitions are paused, for as long as it takes (`errors.sink_failure =
//! "retry"`), and the failure shows in `/status`, `/readyz`, the metrics and an alert once it has
//! lasted `errors.retry_timeout_ms`. With `"stop"` the writer stops then: the batch's rows, and
//! every row it receives afterwards, are marked *stuck* (never committed past) and the supervisor
//! is told to stop the pipeline.
//!
//! Under `errors.tolerance = "none"` rows after a partition's failed record are not written (they
//! would be written again after every restart, since the commit stays at the failed record).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::bigquery::{send_with_retry, BigQuery, BqError, Outcome, RetryHooks, RetryPolicy};
use crate::error_report::ErrorReportActor;
use crate::messages::{
    acknowledge, Failed, Failure, Fatal, Flush, HandledKind, Origin, Row, Settled, SettledAs,
    SettledVia, Stage, Tp, Write,
};
use crate::stage::batch::{Batch, Batcher};
use crate::stage::dedup::Position;
use crate::stage::transform::TableRef;
use crate::stats::Stats;
use crate::telemetry;

pub struct WriterActor {
    bq: Arc<dyn BigQuery>,
    batcher: Batcher<Row>,
    settings: WriterSettings,
    inflight: usize,
    ready: VecDeque<Batch<Row>>,
    /// Per-lane batches: the (table, lane) of each batch in flight. A lane's batches go one at a
    /// time, in order; the slots go to the other lanes meanwhile (the ready queue holds runs of one
    /// partition's batches, which would otherwise fill every slot and wait on each other).
    busy_lanes: HashSet<(Arc<TableRef>, usize)>,
    errors: Addr<ErrorReportActor>,
    stats: Arc<Stats>,
    /// The supervisor, told to stop after a sink failure under `errors.sink_failure = "stop"`.
    fatal: Recipient<Fatal>,
    /// Stopped by a sink failure: nothing more is sent, every row is stuck.
    stopped: bool,
    /// The deduplicator, told how the rows it passed on ended.
    settled: Option<Recipient<Settled>>,
}

/// Writer settings, from `[batch]`, `[bigquery]` and `[errors]`.
#[derive(Debug, Clone, Copy)]
pub struct WriterSettings {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub linger: Duration,
    pub max_concurrent: usize,
    /// `give_up` is `errors.sink_failure = "stop"`.
    pub policy: RetryPolicy,
    /// `errors.tolerance = "none"`: rows after a partition's failed record are not written.
    pub halt_after_failure: bool,
    /// One batch per table and partition (exactly-once delivery: a stream per partition).
    pub per_partition: bool,
}

impl WriterActor {
    pub fn new(
        bq: Arc<dyn BigQuery>,
        settings: WriterSettings,
        errors: Addr<ErrorReportActor>,
        fatal: Recipient<Fatal>,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            bq,
            batcher: Batcher::new(settings.max_rows, settings.max_bytes)
                .per_lane(settings.per_partition),
            settings,
            inflight: 0,
            ready: VecDeque::new(),
            busy_lanes: HashSet::new(),
            errors,
            stats,
            fatal,
            stopped: false,
            settled: None,
        }
    }

    /// Starts requests for ready batches while there is room.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.stopped {
            while let Some(batch) = self.ready.pop_front() {
                self.hold(batch.rows);
            }
            return;
        }
        while self.inflight < self.settings.max_concurrent {
            let Some(batch) = self.next_ready() else {
                break;
            };
            self.inflight += 1;
            let lane = self
                .settings
                .per_partition
                .then(|| (Arc::clone(&batch.table), batch.lane()));
            if let Some(lane) = &lane {
                self.busy_lanes.insert(lane.clone());
            }
            let bq = Arc::clone(&self.bq);
            let policy = self.settings.policy;
            let halt = self.settings.halt_after_failure;
            let stats = Arc::clone(&self.stats);
            let send = async move {
                let span = telemetry::batch_span(&batch.table, &batch.rows, batch.bytes);
                let entries: Vec<_> = batch.rows.iter().map(|r| r.body.data()).collect();
                let hooks = BatchHooks::new(&batch, halt, &stats);
                let outcome = tracing::Instrument::instrument(
                    send_with_retry(&*bq, &batch.table, &entries, policy, &hooks),
                    span,
                )
                .await;
                (batch, outcome)
            };
            ctx.spawn(
                send.into_actor(self)
                    .map(move |(batch, outcome), act, ctx| {
                        act.inflight -= 1;
                        if let Some(lane) = &lane {
                            act.busy_lanes.remove(lane);
                        }
                        act.finish(batch, outcome);
                        act.pump(ctx);
                    }),
            );
        }
    }

    /// The oldest ready batch whose lane has no batch in flight (with per-lane batches), else the
    /// oldest ready batch.
    fn next_ready(&mut self) -> Option<Batch<Row>> {
        if !self.settings.per_partition {
            return self.ready.pop_front();
        }
        let i = self
            .ready
            .iter()
            .position(|b| !self.busy_lanes.contains(&(Arc::clone(&b.table), b.lane())))?;
        self.ready.remove(i)
    }

    /// Rows that will not be written by this pipeline (stopped after a sink failure): stuck, so
    /// the commit never passes them; the pipeline's restart reads them again.
    fn hold(&self, rows: Vec<Row>) {
        acknowledge(
            rows.iter().map(|r| (&r.origin, r.source.offset)),
            HandledKind::Stuck,
        );
        self.settle(rows.iter(), SettledAs::Abandoned);
    }

    /// Tells the deduplicator how rows it passed on ended.
    fn settle<'a>(&self, rows: impl Iterator<Item = &'a Row>, how: SettledAs) {
        let Some(settled) = &self.settled else {
            return;
        };
        let keys: Vec<_> = rows
            .filter_map(|row| {
                Some((
                    row.dedup_hash?,
                    Position::new(&row.origin.tp, row.source.offset),
                ))
            })
            .collect();
        if !keys.is_empty() {
            settled.do_send(Settled { keys, how });
        }
    }

    /// Acknowledges written rows, reports bad ones, holds the rest.
    fn finish(&mut self, batch: Batch<Row>, outcome: Outcome) {
        Stats::add(&self.stats.batches, 1);
        Stats::add(&self.stats.retries, outcome.retries as usize);
        Stats::add(&self.stats.written, outcome.written.len());
        Stats::add(&self.stats.abandoned, outcome.abandoned.len());
        let rows = &batch.rows;
        telemetry::batch_done(
            &batch.table,
            rows.len(),
            batch.bytes,
            outcome.retries,
            outcome.written.iter().filter_map(|&i| rows.get(i)),
        );
        let pick =
            |idx: &[usize]| -> Vec<&Row> { idx.iter().filter_map(|&i| rows.get(i)).collect() };
        let written = pick(&outcome.written);
        acknowledge(
            written.iter().map(|r| (&r.origin, r.source.offset)),
            HandledKind::Done,
        );
        self.settle(written.into_iter(), SettledAs::Written);
        // Not sent because their partition was revoked or stopped at a failed record: they stay
        // below the commit (the next owner, or the next run, reads them again).
        let abandoned = pick(&outcome.abandoned);
        acknowledge(
            abandoned.iter().map(|r| (&r.origin, r.source.offset)),
            HandledKind::Stuck,
        );
        self.settle(abandoned.into_iter(), SettledAs::Abandoned);
        let failed: Vec<usize> = outcome.failed.iter().map(|f| f.0).collect();
        self.settle(pick(&failed).into_iter(), SettledAs::Reported);
        let sink_failure = outcome.sink_failure;
        let mut rows: Vec<Option<Row>> = batch.rows.into_iter().map(Some).collect();
        if !outcome.failed.is_empty() {
            let failures: Vec<Failure> = outcome
                .failed
                .into_iter()
                .filter_map(|(i, class, error)| {
                    let row = rows.get_mut(i)?.take()?;
                    Some(Failure::new(
                        row.origin,
                        row.source,
                        Stage::BigQuery,
                        class,
                        format!("table {}: {error}", batch.table),
                    ))
                })
                .collect();
            self.errors.do_send(Failed { failures });
        }
        if let Some(sf) = sink_failure {
            let left: Vec<Row> = sf
                .rows
                .iter()
                .filter_map(|&i| rows.get_mut(i)?.take())
                .collect();
            self.stop(&batch.table.to_string(), &sf.error, sf.after, left);
        }
    }

    /// A sink failure outlasted `errors.retry_timeout_ms` under `errors.sink_failure = "stop"`.
    fn stop(&mut self, table: &str, error: &BqError, after: Duration, rows: Vec<Row>) {
        let mut tps: Vec<(Tp, i64)> = Vec::new();
        for r in &rows {
            match tps.iter_mut().find(|(tp, _)| *tp == r.origin.tp) {
                Some((_, first)) => *first = (*first).min(r.source.offset),
                None => tps.push((r.origin.tp.clone(), r.source.offset)),
            }
        }
        for (tp, offset) in &tps {
            self.stats.note_error(
                tp,
                crate::stats::PartitionError {
                    offset: *offset,
                    error: format!("sink failure: bigquery {table}: {error}"),
                    at: std::time::SystemTime::now(),
                    fatal: true,
                },
            );
        }
        self.hold(rows);
        if !self.stopped {
            self.stopped = true;
            let open = self.batcher.drain();
            self.ready.extend(open);
            self.fatal.do_send(Fatal {
                reason: format!(
                    "sink failure: bigquery {table} failed for {after:.1?}: {error}; \
                     errors.sink_failure = \"stop\": stopping without committing past the \
                     unwritten records"
                ),
            });
        }
    }
}

impl Actor for WriterActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let linger = self.settings.linger;
        let tick = (linger / 4).clamp(Duration::from_millis(5), Duration::from_millis(100));
        ctx.run_interval(tick, move |act, ctx| {
            let due = act.batcher.due(Instant::now(), linger);
            if !due.is_empty() {
                act.ready.extend(due);
                act.pump(ctx);
            }
        });
    }
}

impl Handler<Write> for WriterActor {
    type Result = ();

    fn handle(&mut self, msg: Write, ctx: &mut Self::Context) {
        if self.stopped {
            self.hold(msg.rows);
            return;
        }
        let now = Instant::now();
        for row in msg.rows {
            let full = self.batcher.push(row, now);
            self.ready.extend(full);
        }
        self.pump(ctx);
    }
}

impl Handler<Flush> for WriterActor {
    type Result = ();

    fn handle(&mut self, _: Flush, ctx: &mut Self::Context) {
        let open = self.batcher.drain();
        self.ready.extend(open);
        self.pump(ctx);
    }
}

impl Handler<SettledVia> for WriterActor {
    type Result = ();

    fn handle(&mut self, msg: SettledVia, _: &mut Self::Context) {
        self.settled = Some(msg.0);
    }
}

/// Ties a batch's retries to its rows' partitions: rows of revoked partitions (and, under
/// `errors.tolerance = "none"`, rows after a failed record) are abandoned, the partitions pause
/// while the batch waits to be retried, and BigQuery's health is reported as `bigquery <table>`.
struct BatchHooks<'a> {
    rows: &'a [Row],
    halt_after_failure: bool,
    stats: &'a Stats,
    sink: String,
    /// The batch's partitions, each once.
    origins: Vec<&'a Arc<Origin>>,
}

impl<'a> BatchHooks<'a> {
    fn new(batch: &'a Batch<Row>, halt_after_failure: bool, stats: &'a Stats) -> Self {
        let mut origins: Vec<&Arc<Origin>> = Vec::new();
        for row in &batch.rows {
            if !origins.iter().any(|o| Arc::ptr_eq(o, &row.origin)) {
                origins.push(&row.origin);
            }
        }
        Self {
            rows: &batch.rows,
            halt_after_failure,
            stats,
            sink: format!("bigquery {}", batch.table),
            origins,
        }
    }

    fn partitions(&self) -> Vec<Tp> {
        self.origins.iter().map(|o| o.tp.clone()).collect()
    }
}

impl RetryHooks for BatchHooks<'_> {
    fn keep(&self, i: usize) -> bool {
        let row = &self.rows[i];
        let after_failure =
            self.halt_after_failure && row.origin.is_after_failure(row.source.offset);
        !(row.origin.is_revoked() || after_failure)
    }

    fn retrying(&self, on: bool) {
        for origin in &self.origins {
            origin.inflight.set_retrying(on);
        }
    }

    fn sink_error(&self, error: &BqError, failing: bool) {
        let text = error.to_string();
        if failing {
            self.stats
                .health
                .failing(&self.sink, &self.partitions(), &text);
        } else {
            self.stats
                .health
                .retrying(&self.sink, &self.partitions(), &text);
        }
    }

    fn sink_ok(&self) {
        self.stats.health.succeeded(&self.sink);
    }

    fn source(&self, i: usize) -> Option<(Tp, i64)> {
        let row = self.rows.get(i)?;
        Some((row.origin.tp.clone(), row.source.offset))
    }
}
