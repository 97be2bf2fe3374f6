//! The retry loop: [`send_with_retry`] turns one batch into an outcome per row (written, failed as
//! a bad row, or given up as a sink failure), and [`retry_delay`] says how long to wait in between.
//!
//! Invariant: a row leaves as *failed* only when BigQuery said the row itself is wrong; anything
//! that fails the whole request is retried with the same insertIds (see [`send_with_retry`]).

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};

use super::client::{
    BigQuery, BqError, ErrorProto, InsertAllResponse, RowErrors, RETRYABLE_REASONS,
};
use crate::model::{TableRef, Tp};
use crate::stage::batch::InsertOptions;
use crate::stage::proto::RowData;

/// How failing requests are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// How long a sink failure lasts before it is reported (`RetryHooks::sink_error` with
    /// `failing`), and, with `give_up`, before the batch stops being retried
    /// (`errors.retry_timeout_ms`).
    pub timeout: Duration,
    pub max_delay: Duration,
    pub min_delay: Duration,
    /// Stop retrying at `timeout` and hand the rows back unwritten ([`Outcome::sink_failure`]):
    /// `errors.sink_failure = "stop"`, and `bqsink replay`. Otherwise retry for as long as it takes.
    pub give_up: bool,
}

/// A row that will not be written because it is bad (a record failure): its index, class and text.
pub type RowFailure = (usize, &'static str, String);

/// Rows a batch gave up on because BigQuery could not take them (a sink failure, `give_up` only).
/// They are neither written nor failed: their offsets must not be committed.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkFailed {
    pub rows: Vec<usize>,
    pub error: BqError,
    /// How long the failure had lasted.
    pub after: Duration,
}

/// What became of each row of a batch, by index.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub written: Vec<usize>,
    /// Bad rows (record failures), with the reason (class, text).
    pub failed: Vec<RowFailure>,
    /// Rows dropped unsent because the hooks no longer `keep` them (not written, not failed).
    pub abandoned: Vec<usize>,
    /// With [`RetryPolicy::give_up`]: the rows left when the retry budget ran out.
    pub sink_failure: Option<SinkFailed>,
    /// Requests that were retried.
    pub retries: u32,
}

/// What the caller of [`send_with_retry`] is told and asked while a batch is sent.
pub trait RetryHooks: Sync {
    /// Whether row `i` is still to be sent; false abandons it (its partition was revoked).
    fn keep(&self, _i: usize) -> bool {
        true
    }
    /// The batch starts (`true`) or ends (`false`) waiting between retries: its partitions pause
    /// meanwhile, so reading does not run ahead of a failing BigQuery.
    fn retrying(&self, _on: bool) {}
    /// A request failed as a whole (a sink failure) and is retried; `failing` once the failure has
    /// lasted `RetryPolicy::timeout`.
    fn sink_error(&self, _error: &BqError, _failing: bool) {}
    /// A request went through: BigQuery takes writes.
    fn sink_ok(&self) {}
    /// Row `i`'s partition and offset, when known (exactly-once delivery needs them).
    fn source(&self, _i: usize) -> Option<(Tp, i64)> {
        None
    }
}

/// A plain `keep` predicate is hooks that do nothing else.
impl<F: Fn(usize) -> bool + Sync> RetryHooks for F {
    fn keep(&self, i: usize) -> bool {
        self(i)
    }
}

/// Calls `retrying(false)` when the batch leaves the retry loop, however it leaves.
struct RetryingGuard<'a> {
    hooks: &'a dyn RetryHooks,
    on: bool,
}

impl RetryingGuard<'_> {
    fn start(&mut self) {
        if !self.on {
            self.on = true;
            self.hooks.retrying(true);
        }
    }
}

impl Drop for RetryingGuard<'_> {
    fn drop(&mut self) {
        if self.on {
            self.hooks.retrying(false);
        }
    }
}

/// Sends `entries` (encoded rows) to `table` until each row is written, failed as a bad row, or
/// abandoned.
///
/// The invariant: a row leaves this function as *failed* only when BigQuery said the row itself is
/// wrong (`insertErrors` with `invalid`, or a new field the table cannot take). Anything that
/// fails the whole request (network, timeout, 5xx, 429, 401/403, a missing table, an unreadable
/// answer, a retry budget that runs out) is a sink failure: the rows are sent again, with the
/// same insertIds, after a capped exponential backoff with jitter (or the answer's `Retry-After`),
/// for as long as it takes, while the hooks pause the batch's partitions; after
/// `policy.timeout` of failing the hooks hear `failing` (status, alerts). Only with
/// `policy.give_up` does it stop then, and the rows come back in [`Outcome::sink_failure`]:
/// unwritten, not failed, never to be committed past.
///
/// Rows BigQuery stopped because of another row are sent again at once. Before every attempt, rows
/// the hooks no longer `keep` are abandoned. With table management ([`BigQuery::tables`]): a
/// missing table is created (then 404s are retried, since a new table takes a moment to accept
/// rows), and rows rejected only for fields the table lacks get those fields added, then are sent
/// again.
pub async fn send_with_retry<'a, R: Copy + Into<RowData<'a>>>(
    bq: &dyn BigQuery,
    table: &TableRef,
    entries: &[R],
    policy: RetryPolicy,
    hooks: &dyn RetryHooks,
) -> Outcome {
    let entries: Vec<RowData<'a>> = entries.iter().map(|&e| e.into()).collect();
    let mut retrying = RetryingGuard { hooks, on: false };
    let tables = bq.tables();
    let options = tables.map_or(InsertOptions::default(), |t| t.options);
    let add_fields = tables.filter(|t| t.allow_new_fields);
    let create = tables.filter(|t| t.auto_create_tables);
    let mut tried_create = false;
    let new_backoff = || {
        ExponentialBuilder::default()
            .with_min_delay(policy.min_delay)
            .with_max_delay(policy.max_delay)
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut backoff = new_backoff();
    // When the current run of failed attempts began (reset by any answer that made progress).
    let mut failing_since: Option<Instant> = None;
    let mut outcome = Outcome::default();
    // Indices (into `entries`) still to send.
    let mut todo: Vec<usize> = (0..entries.len()).collect();
    loop {
        todo.retain(|&i| {
            hooks.keep(i) || {
                outcome.abandoned.push(i);
                false
            }
        });
        if todo.is_empty() {
            return outcome;
        }
        let rows: Vec<RowData<'_>> = todo.iter().map(|&i| entries[i]).collect();
        let sources: Vec<(Tp, i64)> = todo.iter().filter_map(|&i| hooks.source(i)).collect();
        let sources = if sources.len() == rows.len() {
            sources
        } else {
            Vec::new()
        };
        let retry_reason = match crate::telemetry::write_rows(bq, table, &rows, &sources, options)
            .await
        {
            Ok(resp) => {
                hooks.sink_ok();
                let rows = classify(&todo, &resp, add_fields.is_some());
                outcome.written.extend(rows.written);
                outcome.failed.extend(rows.failed);
                let mut again = rows.stopped;
                let mut patched = false;
                let mut reason = BqError::http(
                    200,
                    "stopped",
                    "every row was stopped without an invalid row",
                );
                if let (Some(t), false) = (add_fields, rows.unknown_field.is_empty()) {
                    let sample: Vec<_> = rows
                        .unknown_field
                        .iter()
                        .map(|&i| entries[i].json())
                        .collect();
                    let sample: Vec<&[u8]> = sample.iter().map(|e| &**e).collect();
                    match t.add_fields(bq, table, &sample).await {
                        Ok(added) => {
                            patched = !added.is_empty();
                            if !patched {
                                reason = BqError::http(
                                    200,
                                    "invalid",
                                    "rows rejected for fields the table has (a schema update \
                                     takes a moment to apply)",
                                );
                            }
                            again.extend(rows.unknown_field);
                        }
                        // BigQuery refused the new fields themselves (an incompatible type, too
                        // many columns): the rows carry a field the table cannot take.
                        Err(e @ BqError::Http { status: 400, .. }) => {
                            let text = format!("adding the rows' new fields to {table}: {e}");
                            outcome.failed.extend(
                                rows.unknown_field
                                    .iter()
                                    .map(|&i| (i, "schema_update", text.clone())),
                            );
                        }
                        Err(e) => {
                            again.extend(rows.unknown_field);
                            reason = e;
                        }
                    }
                    again.sort_unstable();
                }
                if again.is_empty() {
                    return outcome;
                }
                // Rows stopped only because another row was invalid, or rejected for fields that
                // now exist: send again at once, no backoff.
                let progressed = again.len() < todo.len() || patched;
                todo = again;
                if progressed {
                    failing_since = None;
                    backoff = new_backoff();
                    continue;
                }
                reason
            }
            Err(e) if e.is_not_found() && create.is_some() && !tried_create => {
                tried_create = true;
                let sample: Vec<_> = todo.iter().map(|&i| entries[i].json()).collect();
                let sample: Vec<&[u8]> = sample.iter().map(|e| &**e).collect();
                let t = create.expect("checked in the guard");
                match t.ensure_table(bq, table, &sample).await {
                    Ok(()) => continue,
                    Err(ce) => {
                        // Tried again at the next 404, after the backoff.
                        tracing::warn!(table = %table, error = %ce, "creating the missing table failed");
                        tried_create = false;
                        ce
                    }
                }
            }
            // Created (or found created) in this call: BigQuery may need a moment; or any other
            // failure of the whole request.
            Err(e) => e,
        };
        let since = *failing_since.get_or_insert_with(Instant::now);
        let delay = retry_delay(
            backoff.next().unwrap_or(policy.max_delay),
            &retry_reason,
            &policy,
        );
        let failing = since.elapsed() >= policy.timeout;
        if policy.give_up && since.elapsed() + delay > policy.timeout {
            hooks.sink_error(&retry_reason, true);
            outcome.sink_failure = Some(SinkFailed {
                rows: todo,
                error: retry_reason,
                after: since.elapsed(),
            });
            return outcome;
        }
        hooks.sink_error(&retry_reason, failing);
        tracing::warn!(table = %table, rows = todo.len(), kind = "sink_failure", error = %retry_reason, failing_ms = since.elapsed().as_millis() as u64, delay_ms = delay.as_millis() as u64, trace_id = crate::telemetry::current_trace_id(), "insertAll failed, retrying");
        outcome.retries += 1;
        retrying.start();
        tokio::time::sleep(delay).await;
    }
}

/// How much longer than the exponential backoff a `quotaExceeded` answer waits.
const QUOTA_BACKOFF_FACTOR: u32 = 4;
/// The least wait after a `quotaExceeded` answer (capped by the policy's `max_delay`).
const QUOTA_MIN_DELAY: Duration = Duration::from_secs(1);
/// The longest `Retry-After` honoured as given.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(15 * 60);

/// The wait before the next attempt: the backoff's `next`; for `quotaExceeded` (a quota that
/// refills over seconds, not a momentary overload) four times that and at least 1 s, capped by
/// `policy.max_delay`; at least the answer's `Retry-After` (up to 15 minutes) when it has one.
pub fn retry_delay(next: Duration, reason: &BqError, policy: &RetryPolicy) -> Duration {
    match reason {
        BqError::Http {
            retry_after: Some(after),
            ..
        } => next.max(*after).min(MAX_RETRY_AFTER),
        BqError::Http { reason, .. } if reason == "quotaExceeded" => (next * QUOTA_BACKOFF_FACTOR)
            .max(QUOTA_MIN_DELAY)
            .min(policy.max_delay),
        _ => next,
    }
}

/// The rows of one insertAll request by what became of them (entry indices).
#[derive(Debug, Default)]
struct Classified {
    written: Vec<usize>,
    failed: Vec<RowFailure>,
    /// Stopped because of another row, or a retryable error: send again.
    stopped: Vec<usize>,
    /// Rejected only for fields the table lacks (when new fields are allowed).
    unknown_field: Vec<usize>,
}

/// Whether BigQuery rejected a row for a field the table lacks (`invalid`: "no such field: x.").
pub fn is_unknown_field(e: &ErrorProto) -> bool {
    e.reason == "invalid" && e.message.to_ascii_lowercase().contains("no such field")
}

/// Splits the rows of one request (`sent[i]` is the entry index of request row `i`) by the response:
/// written, failed for good, stopped (to send again), or rejected for unknown fields.
fn classify(sent: &[usize], resp: &InsertAllResponse, unknown_fields_allowed: bool) -> Classified {
    let mut state = vec![None::<&RowErrors>; sent.len()];
    for row in &resp.insert_errors {
        if let Some(s) = state.get_mut(row.index) {
            *s = Some(row);
        }
    }
    let mut out = Classified::default();
    for (req_idx, errs) in state.into_iter().enumerate() {
        let entry = sent[req_idx];
        match errs {
            None => out.written.push(entry),
            Some(r)
                if r.errors.iter().all(|e| {
                    e.reason == "stopped" || RETRYABLE_REASONS.contains(&e.reason.as_str())
                }) =>
            {
                out.stopped.push(entry)
            }
            Some(r)
                if unknown_fields_allowed
                    && r.errors
                        .iter()
                        .all(|e| e.reason == "stopped" || is_unknown_field(e)) =>
            {
                out.unknown_field.push(entry)
            }
            Some(r) => {
                let text = r
                    .errors
                    .iter()
                    .filter(|e| e.reason != "stopped")
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                out.failed.push((
                    entry,
                    "insert_error",
                    format!("BigQuery rejected the row: {text}"),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
