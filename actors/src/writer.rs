//! The writer: batches rows per table and sends them with `tabledata.insertAll`, at most
//! `bigquery.max_concurrent_requests` at a time. Batches may complete in any order; each row's offset
//! is acknowledged only once BigQuery accepted it, and rows that fail go to the error report.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::bigquery::{send_with_retry, BigQuery, Outcome, RetryHooks, RetryPolicy};
use crate::error_report::ErrorReportActor;
use crate::messages::{
    acknowledge, Failed, Failure, Flush, HandledKind, Row, Settled, SettledAs, SettledVia, Stage,
    Write,
};
use crate::stage::batch::{Batch, Batcher};
use crate::stage::dedup::Position;
use crate::stats::Stats;
use crate::telemetry;

pub struct WriterActor {
    bq: Arc<dyn BigQuery>,
    batcher: Batcher<Row>,
    linger: Duration,
    policy: RetryPolicy,
    max_concurrent: usize,
    inflight: usize,
    ready: VecDeque<Batch<Row>>,
    errors: Addr<ErrorReportActor>,
    stats: Arc<Stats>,
    /// The deduplicator, told the keys of rows that failed.
    forget: Option<Recipient<Settled>>,
}

/// Writer settings, from `[batch]`, `[bigquery]` and `[errors]`.
#[derive(Debug, Clone, Copy)]
pub struct WriterSettings {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub linger: Duration,
    pub max_concurrent: usize,
    pub policy: RetryPolicy,
}

impl WriterActor {
    pub fn new(
        bq: Arc<dyn BigQuery>,
        settings: WriterSettings,
        errors: Addr<ErrorReportActor>,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            bq,
            batcher: Batcher::new(settings.max_rows, settings.max_bytes),
            linger: settings.linger,
            policy: settings.policy,
            max_concurrent: settings.max_concurrent,
            inflight: 0,
            ready: VecDeque::new(),
            errors,
            stats,
            forget: None,
        }
    }

    /// Starts requests for ready batches while there is room.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        while self.inflight < self.max_concurrent {
            let Some(batch) = self.ready.pop_front() else {
                break;
            };
            self.inflight += 1;
            let bq = Arc::clone(&self.bq);
            let policy = self.policy;
            let send = async move {
                let span = telemetry::batch_span(&batch.table, &batch.rows, batch.bytes);
                let entries: Vec<&[u8]> = batch.rows.iter().map(|r| r.entry.as_slice()).collect();
                let hooks = BatchHooks(&batch.rows);
                let outcome = tracing::Instrument::instrument(
                    send_with_retry(&*bq, &batch.table, &entries, policy, &hooks),
                    span,
                )
                .await;
                (batch, outcome)
            };
            ctx.spawn(send.into_actor(self).map(|(batch, outcome), act, ctx| {
                act.inflight -= 1;
                act.finish(batch, outcome);
                act.pump(ctx);
            }));
        }
    }

    /// Acknowledges written rows and reports failed ones.
    fn finish(&mut self, batch: Batch<Row>, outcome: Outcome) {
        Stats::add(&self.stats.batches, 1);
        Stats::add(&self.stats.retries, outcome.retries as usize);
        Stats::add(&self.stats.written, outcome.written.len());
        Stats::add(&self.stats.abandoned, outcome.abandoned.len());
        Stats::add(&self.stats.abandoned, outcome.abandoned.len());
        let rows = &batch.rows;
        telemetry::batch_done(
            &batch.table,
            rows.len(),
            batch.bytes,
            outcome.retries,
            outcome.written.iter().filter_map(|&i| rows.get(i)),
        );
        acknowledge(
            outcome
                .written
                .iter()
                .map(|&i| (&rows[i].origin, rows[i].source.offset)),
            HandledKind::Done,
        );
        if outcome.failed.is_empty() {
            return;
        }
        if let Some(forget) = &self.forget {
            let keys: Vec<_> = outcome
                .failed
                .iter()
                .filter_map(|&(i, _, _)| {
                    let row = rows.get(i)?;
                    Some((
                        row.dedup_hash?,
                        Position::new(&row.origin.tp, row.source.offset),
                    ))
                })
                .collect();
            if !keys.is_empty() {
                forget.do_send(Settled {
                    keys,
                    how: SettledAs::Reported,
                });
            }
        }
        let mut rows: Vec<Option<Row>> = batch.rows.into_iter().map(Some).collect();
        let failures = outcome
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
}

impl Actor for WriterActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let tick = (self.linger / 4).clamp(Duration::from_millis(5), Duration::from_millis(100));
        ctx.run_interval(tick, |act, ctx| {
            let due = act.batcher.due(Instant::now(), act.linger);
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
        self.forget = Some(msg.0);
    }
}

/// Ties a batch's retries to its rows' partitions: revoked partitions' rows are abandoned, and the
/// partitions pause while the batch waits to be retried.
struct BatchHooks<'a>(&'a [Row]);

impl RetryHooks for BatchHooks<'_> {
    fn keep(&self, i: usize) -> bool {
        !self.0[i].origin.is_revoked()
    }

    fn retrying(&self, on: bool) {
        let mut seen: Vec<&Arc<crate::messages::Origin>> = Vec::new();
        for row in self.0 {
            if !seen.iter().any(|o| Arc::ptr_eq(o, &row.origin)) {
                seen.push(&row.origin);
                row.origin.inflight.set_retrying(on);
            }
        }
    }
}
