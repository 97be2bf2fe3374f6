//! The BigQuery port: one `tabledata.insertAll` call, its response, which failures are worth a
//! retry, and the retry loop that turns a batch into an outcome per row.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::future::BoxFuture;
use serde::Deserialize;

use crate::stage::batch::InsertOptions;
use crate::stage::schema::FieldSchema;
use crate::stage::transform::TableRef;
use crate::tables::{TableDefinition, TableManager};

/// Sends insertAll requests and manages tables. Implemented over reqwest in the `bqsink` crate.
/// Only `insert_all` is required; the table calls default to [`BqError::Unsupported`].
pub trait BigQuery: Send + Sync + 'static {
    /// POSTs an encoded insertAll body for `table`.
    fn insert_all(
        &self,
        table: &TableRef,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<InsertAllResponse, BqError>>;

    /// `tables.get`: the table's schema, or `None` when the table does not exist.
    fn get_table(
        &self,
        _table: &TableRef,
    ) -> BoxFuture<'static, Result<Option<Vec<FieldSchema>>, BqError>> {
        Box::pin(async { Err(BqError::Unsupported("tables.get")) })
    }

    /// `tables.insert`: `Ok(false)` when the table exists already; a 404 when its dataset does not.
    fn create_table(&self, _def: &TableDefinition) -> BoxFuture<'static, Result<bool, BqError>> {
        Box::pin(async { Err(BqError::Unsupported("tables.insert")) })
    }

    /// `datasets.insert`: `Ok(false)` when the dataset exists already.
    fn create_dataset(&self, _dataset: &str) -> BoxFuture<'static, Result<bool, BqError>> {
        Box::pin(async { Err(BqError::Unsupported("datasets.insert")) })
    }

    /// `tables.patch` with a table's complete new schema.
    fn patch_schema(
        &self,
        _table: &TableRef,
        _schema: Vec<FieldSchema>,
    ) -> BoxFuture<'static, Result<(), BqError>> {
        Box::pin(async { Err(BqError::Unsupported("tables.patch")) })
    }

    /// The table management [`send_with_retry`] applies (auto-creation, new fields, insert
    /// options); see [`crate::tables::Managed`]. Default none.
    fn tables(&self) -> Option<&TableManager> {
        None
    }
}

/// The 200 response of insertAll: rows not listed were inserted.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InsertAllResponse {
    #[serde(default)]
    pub insert_errors: Vec<RowErrors>,
}

/// The errors of one row, by its index in the request.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RowErrors {
    pub index: usize,
    #[serde(default)]
    pub errors: Vec<ErrorProto>,
}

/// BigQuery's ErrorProto.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ErrorProto {
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub message: String,
}

impl std::fmt::Display for ErrorProto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.reason)?;
        if !self.location.is_empty() {
            write!(f, " at {}", self.location)?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// A request that failed as a whole. Every one of these is a *sink failure* (BigQuery cannot take
/// anything right now), never a record failure: BigQuery reports bad rows one by one, in
/// `insertErrors` ([`RowErrors`]).
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum BqError {
    #[error("HTTP {status} from BigQuery ({reason}): {message}")]
    Http {
        status: u16,
        reason: String,
        message: String,
        /// The answer's `Retry-After`, honoured by the retry loop.
        retry_after: Option<Duration>,
    },
    #[error("request to BigQuery timed out")]
    Timeout,
    #[error("cannot reach BigQuery: {0}")]
    Transport(String),
    /// A 2xx answer whose body cannot be read: whether the rows went in is unknown, so they are
    /// sent again with the same insertIds.
    #[error("unreadable response from BigQuery: {0}")]
    Decode(String),
    #[error("cannot get an OAuth token for BigQuery: {message}")]
    Auth { message: String, retryable: bool },
    #[error("the BigQuery client does not implement {0}")]
    Unsupported(&'static str),
}

/// Error reasons BigQuery documents as transient (its error-message table).
const RETRYABLE_REASONS: &[&str] = &[
    "backendError",
    "internalError",
    "rateLimitExceeded",
    "quotaExceeded",
    "timeout",
];

impl BqError {
    /// A plain HTTP error, without `Retry-After`.
    pub fn http(status: u16, reason: impl Into<String>, message: impl Into<String>) -> Self {
        BqError::Http {
            status,
            reason: reason.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// Transient by nature: timeouts, connection failures, 5xx, 429, the transient reasons and an
    /// unreadable 2xx. The others (400, 401/403 after a token refresh, 404) need someone to act;
    /// both kinds are sink failures and are retried (`errors.sink_failure`), this only tells the
    /// operator which kind it is and lets table management decide whether to try again at once.
    pub fn is_retryable(&self) -> bool {
        match self {
            BqError::Timeout | BqError::Transport(_) | BqError::Decode(_) => true,
            BqError::Unsupported(_) => false,
            BqError::Auth { retryable, .. } => *retryable,
            BqError::Http { status, reason, .. } => {
                *status >= 500 || *status == 429 || RETRYABLE_REASONS.contains(&reason.as_str())
            }
        }
    }

    /// Short class for logs and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            BqError::Timeout => "timeout",
            BqError::Transport(_) => "transport",
            BqError::Decode(_) => "decode",
            BqError::Http { .. } => "http",
            BqError::Auth { .. } => "auth",
            BqError::Unsupported(_) => "unsupported",
        }
    }

    /// HTTP 404: the table (or its dataset) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, BqError::Http { status: 404, .. })
    }
}

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
pub async fn send_with_retry(
    bq: &dyn BigQuery,
    table: &TableRef,
    entries: &[&[u8]],
    policy: RetryPolicy,
    hooks: &dyn RetryHooks,
) -> Outcome {
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
        let size = todo.iter().map(|&i| entries[i].len() + 1).sum::<usize>() + 80;
        let body =
            crate::stage::batch::encode_body_with(options, todo.iter().map(|&i| entries[i]), size);
        let retry_reason = match crate::telemetry::insert_all(bq, table, body, todo.len()).await {
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
                    let sample: Vec<&[u8]> =
                        rows.unknown_field.iter().map(|&i| entries[i]).collect();
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
                let sample: Vec<&[u8]> = todo.iter().map(|&i| entries[i]).collect();
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
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;

    /// Answers from a script and records the rows of each request.
    struct Scripted {
        answers: Mutex<VecDeque<Result<InsertAllResponse, BqError>>>,
        requests: Mutex<Vec<Vec<serde_json::Value>>>,
    }

    impl BigQuery for Scripted {
        fn insert_all(
            &self,
            _: &TableRef,
            body: Vec<u8>,
        ) -> BoxFuture<'static, Result<InsertAllResponse, BqError>> {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            self.requests
                .lock()
                .unwrap()
                .push(v["rows"].as_array().unwrap().clone());
            let answer = self
                .answers
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Ok(InsertAllResponse::default()));
            Box::pin(async move { answer })
        }
    }

    fn scripted(answers: Vec<Result<InsertAllResponse, BqError>>) -> Scripted {
        Scripted {
            answers: Mutex::new(answers.into()),
            requests: Mutex::default(),
        }
    }

    fn policy(timeout_ms: u64) -> RetryPolicy {
        RetryPolicy {
            timeout: Duration::from_millis(timeout_ms),
            max_delay: Duration::from_millis(20),
            min_delay: Duration::from_millis(1),
            give_up: false,
        }
    }

    fn giving_up(timeout_ms: u64) -> RetryPolicy {
        RetryPolicy {
            give_up: true,
            ..policy(timeout_ms)
        }
    }

    fn http(status: u16, reason: &str) -> BqError {
        BqError::http(status, reason, "m")
    }

    /// Records what the hooks hear of sink failures: (class, failing) per failed attempt, and
    /// successful requests.
    #[derive(Default)]
    struct SinkRecorder {
        errors: Mutex<Vec<(String, bool)>>,
        ok: std::sync::atomic::AtomicUsize,
    }

    impl RetryHooks for SinkRecorder {
        fn sink_error(&self, error: &BqError, failing: bool) {
            self.errors
                .lock()
                .unwrap()
                .push((error.to_string(), failing));
        }
        fn sink_ok(&self) {
            self.ok.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn row_err(index: usize, reason: &str) -> RowErrors {
        RowErrors {
            index,
            errors: vec![ErrorProto {
                reason: reason.into(),
                location: "n".into(),
                message: "bad".into(),
            }],
        }
    }

    fn entries(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("{{\"json\":{{\"i\":{i}}}}}").into_bytes())
            .collect()
    }

    fn table() -> TableRef {
        TableRef {
            dataset: "d".into(),
            table: "t".into(),
        }
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let bq = scripted(vec![
            Err(http(500, "backendError")),
            Err(http(429, "")),
            Err(BqError::Timeout),
            Err(http(403, "quotaExceeded")),
        ]);
        let e = entries(3);
        let refs: Vec<&[u8]> = e.iter().map(Vec::as_slice).collect();
        let out = send_with_retry(&bq, &table(), &refs, policy(10_000), &|_| true).await;
        assert_eq!(out.written, vec![0, 1, 2]);
        assert!(out.failed.is_empty());
        assert_eq!(out.retries, 4);
        assert_eq!(bq.requests.lock().unwrap().len(), 5);
    }

    #[test]
    fn quota_exceeded_waits_longer_than_other_retryable_errors() {
        let policy = RetryPolicy {
            timeout: Duration::from_secs(300),
            max_delay: Duration::from_secs(60),
            min_delay: Duration::from_millis(100),
            give_up: false,
        };
        let next = Duration::from_millis(100);
        assert_eq!(retry_delay(next, &http(500, "backendError"), &policy), next);
        assert_eq!(
            retry_delay(next, &http(429, "rateLimitExceeded"), &policy),
            next
        );
        assert_eq!(
            retry_delay(next, &http(403, "quotaExceeded"), &policy),
            Duration::from_secs(1)
        );
        assert_eq!(
            retry_delay(Duration::from_secs(2), &http(403, "quotaExceeded"), &policy),
            Duration::from_secs(8)
        );
        assert_eq!(
            retry_delay(
                Duration::from_secs(30),
                &http(403, "quotaExceeded"),
                &policy
            ),
            policy.max_delay,
            "capped by errors.retry_delay_max_ms"
        );
    }

    #[tokio::test]
    async fn errors_of_the_whole_request_are_sink_failures_retried_until_they_clear() {
        // 404 (table dropped, no auto-create), 401 after the token refresh, 403, 400 and an
        // unreadable 200: none of them makes a row "failed"; the same rows are sent again.
        let bq = scripted(vec![
            Err(http(404, "notFound")),
            Err(http(401, "unauthorized")),
            Err(http(403, "accessDenied")),
            Err(http(400, "invalid")),
            Err(BqError::Decode("EOF while parsing".into())),
        ]);
        let e = entries(2);
        let refs: Vec<&[u8]> = e.iter().map(Vec::as_slice).collect();
        let hooks = SinkRecorder::default();
        let out = send_with_retry(&bq, &table(), &refs, policy(10_000), &hooks).await;
        assert_eq!(out.written, vec![0, 1]);
        assert!(out.failed.is_empty(), "{:?}", out.failed);
        assert_eq!(out.sink_failure, None);
        assert_eq!(out.retries, 5);
        let requests = bq.requests.lock().unwrap();
        assert_eq!(requests.len(), 6);
        assert!(
            requests.iter().all(|r| *r == requests[0]),
            "every attempt carries the same rows (and insertIds)"
        );
        let errors = hooks.errors.lock().unwrap();
        assert_eq!(errors.len(), 5);
        assert!(
            errors.iter().all(|(_, failing)| !failing),
            "within the timeout"
        );
        assert_eq!(hooks.ok.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_sink_failure_past_the_timeout_is_reported_failing_and_still_retried() {
        let mut answers: Vec<_> = (0..40).map(|_| Err(http(503, "backendError"))).collect();
        answers.push(Ok(InsertAllResponse::default()));
        let bq = scripted(answers);
        let e = entries(3);
        let refs: Vec<&[u8]> = e.iter().map(Vec::as_slice).collect();
        let hooks = SinkRecorder::default();
        let out = send_with_retry(&bq, &table(), &refs, policy(30), &hooks).await;
        assert_eq!(
            out.written,
            vec![0, 1, 2],
            "written once BigQuery recovered"
        );
        assert!(out.failed.is_empty());
        let errors = hooks.errors.lock().unwrap();
        assert_eq!(errors.len(), 40);
        assert!(!errors[0].1, "not failing at the first attempt");
        assert!(errors.last().unwrap().1, "failing after the timeout");
    }

    #[tokio::test]
    async fn with_give_up_the_rows_come_back_unwritten_not_failed() {
        let bq = scripted((0..1000).map(|_| Err(http(503, ""))).collect());
        let e = entries(2);
        let refs: Vec<&[u8]> = e.iter().map(Vec::as_slice).collect();
        let hooks = SinkRecorder::default();
        let out = send_with_retry(&bq, &table(), &refs, giving_up(100), &hooks).await;
        assert!(out.written.is_empty());
        assert!(
            out.failed.is_empty(),
            "a sink failure is never a failed row"
        );
        let sf = out.sink_failure.expect("gave up");
        assert_eq!(sf.rows, vec![0, 1]);
        assert!(matches!(sf.error, BqError::Http { status: 503, .. }));
        assert!(out.retries >= 2);
        assert!(hooks.errors.lock().unwrap().last().unwrap().1);
    }

    #[test]
    fn retry_after_is_honoured() {
        let policy = policy(1000);
        let throttled = BqError::Http {
            status: 429,
            reason: "rateLimitExceeded".into(),
            message: "slow down".into(),
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(
            retry_delay(Duration::from_millis(10), &throttled, &policy),
            Duration::from_secs(7),
            "longer than errors.retry_delay_max_ms: the server knows best"
        );
        let absurd = BqError::Http {
            status: 429,
            reason: "rateLimitExceeded".into(),
            message: "slow down".into(),
            retry_after: Some(Duration::from_secs(86_400)),
        };
        assert_eq!(
            retry_delay(Duration::from_millis(10), &absurd, &policy),
            Duration::from_secs(900)
        );
    }

    #[tokio::test]
    async fn invalid_rows_fail_and_stopped_rows_are_resent_alone() {
        let resp = InsertAllResponse {
            insert_errors: vec![
                row_err(1, "invalid"),
                row_err(0, "stopped"),
                row_err(2, "stopped"),
                row_err(3, "stopped"),
            ],
        };
        let bq = scripted(vec![Ok(resp)]);
        let e = entries(4);
        let refs: Vec<&[u8]> = e.iter().map(Vec::as_slice).collect();
        let out = send_with_retry(&bq, &table(), &refs, policy(10_000), &|_| true).await;
        assert_eq!(out.failed.len(), 1);
        assert_eq!(out.failed[0].0, 1);
        assert!(
            out.failed[0].2.contains("invalid at n: bad"),
            "{:?}",
            out.failed
        );
        let mut written = out.written.clone();
        written.sort();
        assert_eq!(written, vec![0, 2, 3]);
        let requests = bq.requests.lock().unwrap();
        assert_eq!(requests.len(), 2);
        let resent: Vec<i64> = requests[1]
            .iter()
            .map(|r| r["json"]["i"].as_i64().unwrap())
            .collect();
        assert_eq!(
            resent,
            vec![0, 2, 3],
            "only the stopped rows are sent again"
        );
    }

    #[tokio::test]
    async fn rows_of_revoked_partitions_are_abandoned_before_a_retry() {
        let bq = scripted(vec![Err(http(500, "backendError"))]);
        let e = entries(4);
        let refs: Vec<&[u8]> = e.iter().map(Vec::as_slice).collect();
        let calls = std::sync::atomic::AtomicUsize::new(0);
        // Rows 1 and 3 belong to a partition revoked after the first attempt.
        let keep =
            |i: usize| calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 4 || i % 2 == 0;
        let out = send_with_retry(&bq, &table(), &refs, policy(10_000), &keep).await;
        assert_eq!(out.written, vec![0, 2]);
        assert_eq!(out.abandoned, vec![1, 3]);
        let requests = bq.requests.lock().unwrap();
        assert_eq!(requests[1].len(), 2, "the retry carries only the kept rows");
    }

    #[tokio::test]
    async fn hooks_hear_when_a_batch_waits_to_retry() {
        struct Recorder(Mutex<Vec<bool>>);
        impl RetryHooks for Recorder {
            fn retrying(&self, on: bool) {
                self.0.lock().unwrap().push(on);
            }
        }
        let e = entries(2);
        let refs: Vec<&[u8]> = e.iter().map(Vec::as_slice).collect();
        let ok = Recorder(Mutex::default());
        send_with_retry(&scripted(vec![]), &table(), &refs, policy(10_000), &ok).await;
        assert!(ok.0.lock().unwrap().is_empty(), "no retry, no pause");
        let flaky = Recorder(Mutex::default());
        let bq = scripted(vec![Err(http(500, "")), Err(http(503, ""))]);
        let out = send_with_retry(&bq, &table(), &refs, policy(10_000), &flaky).await;
        assert_eq!(out.written, vec![0, 1]);
        assert_eq!(
            *flaky.0.lock().unwrap(),
            vec![true, false],
            "paused once, resumed once"
        );
    }

    #[tokio::test]
    async fn rows_of_failed_tables_are_not_created_failed_when_creation_is_refused() {
        // Not covered by auto-create (tables() is None here): a 404 stays a sink failure.
        let bq = scripted(vec![Err(http(404, "notFound")), Err(http(404, "notFound"))]);
        let e = entries(1);
        let refs: Vec<&[u8]> = e.iter().map(Vec::as_slice).collect();
        let out = send_with_retry(&bq, &table(), &refs, policy(10_000), &|_| true).await;
        assert_eq!(out.written, vec![0]);
        assert!(out.failed.is_empty());
    }
}
