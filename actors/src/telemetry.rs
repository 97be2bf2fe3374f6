//! Instrumentation used by the actors: the pipeline's spans and its Prometheus metrics.
//!
//! **Spans.** Every chunk read from a partition gets a `poll` span (topic, partition, offset range,
//! record count); the `convert`, `transform` and `dedup` spans of that chunk are its children. A
//! record that carries a W3C `traceparent` header gets a `record` span, a child of the producer's
//! span, that lives until the record is written or failed. Each insertAll batch gets a `batch` span
//! (table, rows, bytes) linked to the `record` spans of its rows, with one `bigquery.request` child
//! per HTTP request. All are `DEBUG` spans: unless the binary installs the OpenTelemetry layer
//! (`telemetry.otlp_endpoint`) they are disabled at their call sites and cost nothing, and the
//! per-record work (reading headers, record spans, links) is skipped unless [`exporting`] is on.
//!
//! **Metrics.** Recorded through the `metrics` facade: without an installed recorder (the binary
//! installs the Prometheus one) every call is a no-op. Names are the constants in [`names`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TraceId};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::bigquery::client::{BigQuery, BqError, InsertAllResponse};
use crate::messages::{Failure, Origin, RawRecord, Row, Tp};
use crate::model::TableRef;
use crate::stage::batch::InsertOptions;
use crate::stage::proto::RowData;

mod labels;
pub use labels::{BoundedLabels, OTHER};

/// The `table` label's values (see [`labels`]); the binary sets the limit from
/// `metrics.max_table_labels`.
pub static TABLE_LABELS: BoundedLabels = BoundedLabels::new(100);

/// `table` as a metric label, bounded by [`TABLE_LABELS`].
pub fn table_label(table: &TableRef) -> metrics::SharedString {
    TABLE_LABELS.label(&table.to_string())
}

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Turns the per-record tracing work on; the binary calls it once it installed an exporting layer.
pub fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

/// Whether spans are exported (per-record work is skipped otherwise).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Reads trace context headers from a record's Kafka headers.
struct HeaderExtractor<'a>(&'a [(String, Option<Vec<u8>>)]);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// The producer's span context from the record's `traceparent` header, if valid.
pub fn producer_context(record: &RawRecord) -> Option<opentelemetry::Context> {
    if !record
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case(TRACEPARENT))
    {
        return None;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(&record.headers));
    cx.span().span_context().is_valid().then_some(cx)
}

/// The trace id (32 hex digits) of the record's `traceparent` header, if it has a valid one. Used
/// in the ERROR line of a failed record (and available for dead-letter headers).
pub fn trace_id_of(record: &RawRecord) -> Option<String> {
    producer_context(record).map(|cx| cx.span().span_context().trace_id().to_string())
}

/// The trace id of a span, if it is exported.
pub fn trace_id(span: &Span) -> Option<String> {
    if span.is_disabled() || !exporting() {
        return None;
    }
    let id = span.context().span().span_context().trace_id();
    (id != TraceId::INVALID).then(|| id.to_string())
}

/// The trace id of the current span, if it is exported (for WARN/ERROR lines inside spans).
pub fn current_trace_id() -> Option<String> {
    trace_id(&Span::current())
}

/// The current span's trace id, span id (16 hex digits) and whether it is sampled, if spans are
/// exported and a span is current: what a log line links to (`logging.format = "json"`).
pub fn current_span_context() -> Option<(TraceId, opentelemetry::trace::SpanId, bool)> {
    let span = Span::current();
    if span.is_none() || !exporting() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid()
        .then(|| (sc.trace_id(), sc.span_id(), sc.is_sampled()))
}

/// The `poll` span of a chunk read from one partition: the parent of its stage spans.
pub fn poll_span(tp: &Tp, records: &[RawRecord]) -> Span {
    let first = records.first().map_or(-1, |r| r.offset);
    let last = records.last().map_or(-1, |r| r.offset);
    tracing::debug_span!(
        parent: None,
        "poll",
        topic = %tp.topic,
        partition = tp.partition,
        first_offset = first,
        last_offset = last,
        records = records.len() as i64,
    )
}

/// The `record` span of a record with a `traceparent` header: continues the producer's trace and
/// lives as long as the record is in the pipeline. `Span::none()` for other records and when spans
/// are not exported.
pub fn record_span(tp: &Tp, record: &RawRecord) -> Span {
    if !exporting() {
        return Span::none();
    }
    let Some(parent) = producer_context(record) else {
        return Span::none();
    };
    let span = tracing::debug_span!(
        parent: None,
        "record",
        otel.kind = "consumer",
        topic = %tp.topic,
        partition = tp.partition,
        offset = record.offset,
    );
    // Fails only when the span is disabled, which leaves nothing to parent.
    let _ = span.set_parent(parent);
    span
}

/// The `batch` span of one insertAll batch, linked to the `record` spans of its rows.
pub fn batch_span(table: &TableRef, rows: &[Row], bytes: usize) -> Span {
    let span = tracing::debug_span!(
        parent: None,
        "batch",
        table = %table,
        rows = rows.len() as i64,
        bytes = bytes as i64,
        trace_id = tracing::field::Empty,
    );
    if exporting() && !span.is_disabled() {
        for row in rows.iter().filter(|r| !r.trace.is_disabled()) {
            let link = row.trace.context().span().span_context().clone();
            span.add_link(link);
        }
        if let Some(id) = trace_id(&span) {
            span.record("trace_id", id);
        }
    }
    span
}

/// One write request (an insertAll, or an append to a write stream), in a `bigquery.request` span,
/// with its latency and errors as metrics.
pub async fn write_rows(
    bq: &dyn BigQuery,
    table: &TableRef,
    rows: &[RowData<'_>],
    sources: &[(Tp, i64)],
    options: InsertOptions,
) -> Result<InsertAllResponse, BqError> {
    let span = tracing::debug_span!(
        "bigquery.request",
        table = %table,
        rows = rows.len() as i64,
        bytes = rows.iter().map(|r| r.len()).sum::<usize>() as i64,
        error = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let started = Instant::now();
    let request = {
        let _entered = span.enter();
        bq.write_rows(table, rows, sources, options)
    };
    let result = tracing::Instrument::instrument(request, span.clone()).await;
    let secs = started.elapsed().as_secs_f64();
    let table_label = table_label(table);
    match &result {
        Ok(resp) => {
            let bytes: usize = rows.iter().map(|r| r.len()).sum();
            metrics::counter!(names::BQ_BYTES_WRITTEN, "table" => table_label.clone())
                .increment(bytes as u64);
            metrics::histogram!(names::BQ_REQUEST_SECONDS, "table" => table_label, "outcome" => "ok")
                .record(secs);
            for row in &resp.insert_errors {
                if let Some(e) = row.errors.first() {
                    metrics::counter!(names::BQ_ROW_ERRORS, "reason" => e.reason.clone())
                        .increment(1);
                }
            }
        }
        Err(e) => {
            metrics::histogram!(names::BQ_REQUEST_SECONDS, "table" => table_label, "outcome" => "error")
                .record(secs);
            metrics::counter!(names::BQ_ERRORS, "reason" => error_reason(e)).increment(1);
            span.record("error", tracing::field::display(e));
            span.record("otel.status_code", "ERROR");
        }
    }
    result
}

/// The `reason` label of a failed request.
pub fn error_reason(e: &BqError) -> String {
    match e {
        BqError::Http { status, reason, .. } if reason.is_empty() => format!("http_{status}"),
        BqError::Http { reason, .. } => reason.clone(),
        other => other.class().to_owned(),
    }
}

/// Metric names (Prometheus text format).
pub mod names {
    pub const CONSUMED: &str = "bqsink_records_consumed_total";
    pub const CONVERTED: &str = "bqsink_records_converted_total";
    pub const TRANSFORMED: &str = "bqsink_records_transformed_total";
    pub const DEDUPLICATED: &str = "bqsink_records_deduplicated_total";
    pub const WRITTEN: &str = "bqsink_records_written_total";
    pub const FAILED: &str = "bqsink_records_failed_total";
    pub const BATCH_ROWS: &str = "bqsink_batch_rows";
    pub const BATCH_BYTES: &str = "bqsink_batch_bytes";
    pub const BQ_REQUEST_SECONDS: &str = "bqsink_bigquery_request_duration_seconds";
    pub const BQ_ERRORS: &str = "bqsink_bigquery_request_errors_total";
    pub const BQ_ROW_ERRORS: &str = "bqsink_bigquery_row_errors_total";
    pub const BQ_RETRIES: &str = "bqsink_bigquery_retries_total";
    pub const END_TO_END_SECONDS: &str = "bqsink_end_to_end_latency_seconds";
    pub const DEDUP_CACHE_KEYS: &str = "bqsink_dedup_cache_keys";
    pub const BYTES_CONSUMED: &str = "bqsink_bytes_consumed_total";
    pub const BQ_BYTES_WRITTEN: &str = "bqsink_bigquery_bytes_written_total";
    pub const DESTINATION_RECORDS: &str = "bqsink_error_destination_records_total";
}

/// Describes every metric recorded by the actors (HELP lines).
pub fn describe() {
    crate::health::describe_metrics();
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(names::CONSUMED, "Records read from Kafka");
    describe_counter!(names::CONVERTED, "Records parsed into JSON objects");
    describe_counter!(names::TRANSFORMED, "Records turned into rows");
    describe_counter!(names::DEDUPLICATED, "Records dropped as duplicates");
    describe_counter!(names::WRITTEN, "Rows BigQuery accepted");
    describe_counter!(
        names::FAILED,
        "Records reported as failed, by stage and class"
    );
    describe_histogram!(names::BATCH_ROWS, Unit::Count, "Rows per insertAll batch");
    describe_histogram!(
        names::BATCH_BYTES,
        Unit::Bytes,
        "Encoded bytes per insertAll batch"
    );
    describe_histogram!(
        names::BQ_REQUEST_SECONDS,
        Unit::Seconds,
        "Latency of one insertAll HTTP request"
    );
    describe_counter!(
        names::BQ_ERRORS,
        "insertAll requests that failed, by reason"
    );
    describe_counter!(
        names::BQ_ROW_ERRORS,
        "Rows BigQuery reported errors for, by reason"
    );
    describe_counter!(names::BQ_RETRIES, "insertAll requests retried");
    describe_histogram!(
        names::END_TO_END_SECONDS,
        Unit::Seconds,
        "Time from the record's Kafka timestamp until BigQuery accepted its row"
    );
    describe_gauge!(names::DEDUP_CACHE_KEYS, "Keys held by the dedup cache");
    describe_counter!(
        names::BYTES_CONSUMED,
        Unit::Bytes,
        "Bytes read from Kafka (record keys and values), by topic"
    );
    describe_counter!(
        names::BQ_BYTES_WRITTEN,
        Unit::Bytes,
        "Row bytes BigQuery accepted (insertAll JSON or Storage Write API protobuf), by table"
    );
    describe_counter!(
        names::DESTINATION_RECORDS,
        "Failed records handed to an error destination (dead-letter topic, error file, Slack), by \
         destination and outcome: delivered, failed (an attempt that failed; retried), dropped \
         (an alert given up)"
    );
}

/// Counts `records` failed records whose delivery to `destination` (an [`ErrorDestination`]'s
/// name) ended with `outcome`: `delivered`, `failed` or `dropped`.
///
/// [`ErrorDestination`]: crate::destinations::ErrorDestination
pub fn destination_outcome(destination: &str, outcome: &'static str, records: u64) {
    if records > 0 {
        let label: String = destination
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        metrics::counter!(names::DESTINATION_RECORDS, "destination" => label, "outcome" => outcome)
            .increment(records);
    }
}

/// Counts `n` records of one partition on the counter `name`.
pub fn count(name: &'static str, tp: &Tp, n: usize) {
    if n > 0 {
        metrics::counter!(name, "topic" => Arc::clone(&tp.topic), "partition" => tp.partition.to_string())
            .increment(n as u64);
    }
}

/// Counts failed records by partition, stage and class.
pub fn failed(failures: &[Failure]) {
    let mut counts: HashMap<(&Tp, &'static str, &'static str), u64> = HashMap::new();
    for f in failures {
        *counts
            .entry((&f.origin.tp, f.stage.as_str(), f.class))
            .or_default() += 1;
    }
    for ((tp, stage, class), n) in counts {
        metrics::counter!(
            names::FAILED,
            "topic" => Arc::clone(&tp.topic),
            "partition" => tp.partition.to_string(),
            "stage" => stage,
            "class" => class,
        )
        .increment(n);
    }
}

/// Records a finished batch: its size, retries, the rows written per partition and their
/// end-to-end latency (write time minus the record's Kafka timestamp).
pub fn batch_done<'a>(
    table: &TableRef,
    rows: usize,
    bytes: usize,
    retries: u32,
    written: impl Iterator<Item = &'a Row>,
) {
    let table_label = table_label(table);
    metrics::histogram!(names::BATCH_ROWS, "table" => table_label.clone()).record(rows as f64);
    metrics::histogram!(names::BATCH_BYTES, "table" => table_label).record(bytes as f64);
    if retries > 0 {
        metrics::counter!(names::BQ_RETRIES).increment(u64::from(retries));
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    // One histogram handle per partition of the batch, not one lookup per row.
    let mut by_origin: Vec<(&Arc<Origin>, u64, metrics::Histogram)> = Vec::new();
    for row in written {
        let i = match by_origin
            .iter()
            .position(|(o, _, _)| Arc::ptr_eq(o, &row.origin))
        {
            Some(i) => i,
            None => {
                let h = metrics::histogram!(names::END_TO_END_SECONDS, "topic" => Arc::clone(&row.origin.tp.topic));
                by_origin.push((&row.origin, 0, h));
                by_origin.len() - 1
            }
        };
        let entry = &mut by_origin[i];
        entry.1 += 1;
        if let Some(ts) = row.source.timestamp_ms {
            entry.2.record((now_ms - ts).max(0) as f64 / 1000.0);
        }
    }
    for (origin, n, _) in by_origin {
        count(names::WRITTEN, &origin.tp, n as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(headers: Vec<(&str, &str)>) -> RawRecord {
        RawRecord {
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.to_owned(), Some(v.as_bytes().to_vec())))
                .collect(),
            ..RawRecord::default()
        }
    }

    #[test]
    fn the_trace_id_comes_from_a_valid_traceparent_header() {
        let r = record(vec![
            ("other", "x"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ]);
        assert_eq!(
            trace_id_of(&r).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id_of(&record(vec![])), None);
        assert_eq!(trace_id_of(&record(vec![("traceparent", "garbage")])), None);
        // All-zero trace ids are invalid per W3C.
        assert_eq!(
            trace_id_of(&record(vec![(
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
            )])),
            None
        );
    }

    #[test]
    fn error_reasons_name_the_cause() {
        let http = |status, reason: &str| BqError::http(status, reason, "");
        assert_eq!(error_reason(&http(500, "backendError")), "backendError");
        assert_eq!(error_reason(&http(502, "")), "http_502");
        assert_eq!(error_reason(&BqError::Timeout), "timeout");
    }

    #[test]
    fn without_an_exporting_layer_records_get_no_span() {
        let r = record(vec![(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);
        assert!(record_span(&Tp::new("t", 0), &r).is_disabled());
    }
}
