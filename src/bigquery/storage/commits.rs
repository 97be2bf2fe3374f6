//! The storage client's part in each Kafka offset commit under exactly-once delivery
//! ([`CommitHook`], called by the Kafka poller): the offset and metadata to commit for a partition
//! ([`PartitionBook::prepare`]), then — only once the commit succeeded — `FlushRows` to what it
//! names, and `FinalizeWriteStream` of streams no commit names any more. The appends are in
//! [`super::exactly_once`]; the protocol and its proof in `bqsink_actors::stage::exactly_once`.

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use bqsink_actors::bigquery::{BqError, CommitHook, FlushFailure, GrpcCode};
use bqsink_actors::messages::Tp;
use bqsink_actors::stage::exactly_once::{decode_metadata, encode_metadata};
use bqsink_actors::stage::transform::TableRef;

use super::exactly_once::{lock, report_lost, Entry};
use super::{status, Inner};

/// Flushes what a commit named (the commit succeeded before this runs), records the outcomes, then
/// finalizes the streams no commit names any more.
async fn flush_and_finalize(
    inner: Arc<Inner>,
    flushes: Vec<(Tp, TableRef, String, i64)>,
    tps: Vec<Tp>,
) {
    let results = futures::future::join_all(
        flushes
            .iter()
            .map(|(_, table, id, f)| inner.flush(table, id, *f)),
    )
    .await;
    let mut finished = Vec::new();
    note_flush_outcomes(&inner, &flushes, &results);
    {
        let mut parts = lock(&inner.exactly_once.partitions);
        for ((tp, table, id, f), result) in flushes.iter().zip(results) {
            match result {
                Ok(()) => {
                    if let Some(e) = parts.get_mut(tp) {
                        e.book.flushed(table, id, *f);
                    }
                }
                Err(e) if status::is_stream_gone(&e) => {
                    let lost = parts.get_mut(tp).and_then(|p| p.book.lose(table, id));
                    report_lost(table, tp, id, lost, &e);
                }
                Err(
                    e @ BqError::Grpc {
                        code: GrpcCode::OutOfRange,
                        ..
                    },
                ) => {
                    tracing::error!(%tp, table = %table, stream = %id, flush_to = f, error = %e,
                        "FlushRows beyond the stream's end: exactly-once bookkeeping disagrees with BigQuery (see README, Exactly once)");
                }
                Err(e) => {
                    tracing::warn!(%tp, table = %table, stream = %id, flush_to = f, error = %e, kind = "sink_failure",
                        "FlushRows failed; it is tried again with the next commit");
                }
            }
        }
        for tp in &tps {
            if let Some(e) = parts.get_mut(tp) {
                finished.extend(e.book.take_finished());
                if e.released && e.book.is_empty() {
                    parts.remove(tp);
                }
            }
        }
    }
    for (table, id) in finished {
        inner.finalize(&table, &id).await;
    }
}

/// Keeps the tables whose flushes fail, for [`CommitHook::flush_failures`]: a failed flush adds
/// its partition (the first failure sets `since`), a successful one removes it.
fn note_flush_outcomes(
    inner: &Inner,
    flushes: &[(Tp, TableRef, String, i64)],
    results: &[Result<(), BqError>],
) {
    let mut failures = lock(&inner.exactly_once.flush_failures);
    for ((tp, table, _, _), result) in flushes.iter().zip(results) {
        match result {
            Ok(()) => {
                if let Some(f) = failures.get_mut(table) {
                    f.partitions.retain(|p| p != tp);
                    if f.partitions.is_empty() {
                        failures.remove(table);
                    }
                }
            }
            Err(e) => {
                let f = failures
                    .entry(table.clone())
                    .or_insert_with(|| FlushFailure {
                        table: table.to_string(),
                        partitions: Vec::new(),
                        error: String::new(),
                        since: Instant::now(),
                    });
                f.error = format!("FlushRows: {e}");
                if !f.partitions.contains(tp) {
                    f.partitions.push(tp.clone());
                }
            }
        }
    }
}

/// The client's part in the offset commit (see the module docs).
pub struct Commits {
    pub(super) inner: Arc<Inner>,
}

impl Commits {
    fn parts(&self) -> MutexGuard<'_, HashMap<Tp, Entry>> {
        lock(&self.inner.exactly_once.partitions)
    }
}

impl CommitHook for Commits {
    fn assigned(&self, tp: &Tp, metadata: Option<&str>) {
        let named = match metadata.map(decode_metadata).transpose() {
            Ok(named) => named.unwrap_or_default(),
            Err(e) => {
                tracing::error!(%tp, error = %e, "cannot read the committed offset's metadata; the streams it names are not flushed");
                Vec::new()
            }
        };
        if !named.is_empty() {
            tracing::info!(%tp, streams = named.len(), "taking over the streams the last commit names: flushing them, then finalizing");
        }
        let mut parts = self.parts();
        let entry = parts.entry(tp.clone()).or_default();
        entry.released = false;
        entry.book.inherit(named);
    }

    fn prepare(&self, tp: &Tp, offset: i64) -> Result<(i64, String), String> {
        let mut parts = self.parts();
        let entry = parts.entry(tp.clone()).or_default();
        let plan = entry.book.prepare(offset);
        let metadata = encode_metadata(&plan.streams).map_err(|e| e.to_string())?;
        let offset = plan.offset;
        entry.plan = Some(plan);
        Ok((offset, metadata))
    }

    fn committed(&self, tps: &[Tp], wait: bool) {
        let mut flushes: Vec<(Tp, TableRef, String, i64)> = Vec::new();
        {
            let mut parts = self.parts();
            for tp in tps {
                let Some(entry) = parts.get_mut(tp) else {
                    continue;
                };
                let Some(plan) = entry.plan.take() else {
                    continue;
                };
                entry.book.committed(&plan);
                for (table, id, f) in plan.streams {
                    flushes.push((tp.clone(), table, id, f));
                }
            }
        }
        let inner = Arc::clone(&self.inner);
        let tps = tps.to_vec();
        let task = async move { flush_and_finalize(inner, flushes, tps).await };
        if wait {
            // The Kafka poller's thread: block on the client's runtime (token fetches need one).
            self.inner.handle().block_on(task);
        } else {
            self.inner.handle().spawn(task);
        }
    }

    fn pending(&self) -> Vec<Tp> {
        self.parts()
            .iter()
            .filter(|(_, e)| e.book.needs_commit())
            .map(|(tp, _)| tp.clone())
            .collect()
    }

    fn released(&self, tps: &[Tp]) {
        let mut parts = self.parts();
        let mut streams = Vec::new();
        for tp in tps {
            if let Some(e) = parts.get_mut(tp) {
                e.released = true;
                e.book.retire_all();
                streams.extend(e.book.stream_ids());
            }
        }
        drop(parts);
        self.inner.close_streams(&streams);
        // The next owner flushes what the last commit names.
        let mut failures = lock(&self.inner.exactly_once.flush_failures);
        failures.retain(|_, f| {
            f.partitions.retain(|p| !tps.contains(p));
            !f.partitions.is_empty()
        });
    }

    fn flush_failures(&self) -> Vec<FlushFailure> {
        lock(&self.inner.exactly_once.flush_failures)
            .values()
            .cloned()
            .collect()
    }
}
