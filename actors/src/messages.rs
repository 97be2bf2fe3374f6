//! Every message passed between actors, and the record types they carry.
//!
//! Records always travel in chunks (`Vec`s), never one message per record: a chunk read from one
//! partition is converted, transformed and deduplicated as a unit, and the writer acknowledges whole
//! batches. Each record carries an [`Origin`] so that whoever finishes with it (writer, dedup, error
//! report) can tell its partition consumer that the offset is handled.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use actix::prelude::*;

use crate::model::TableRef;
pub use crate::model::Tp;

/// One Kafka record, copied out of librdkafka's buffers. The original bytes stay with the record until
/// it is handled, so a failure at any stage can report them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawRecord {
    pub offset: i64,
    /// Record timestamp in ms since the epoch (create or log-append time), if any.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl RawRecord {
    /// Bytes this record holds, for in-flight accounting.
    pub fn size(&self) -> usize {
        self.payload.as_ref().map_or(0, Vec::len) + self.key.as_ref().map_or(0, Vec::len)
    }
}

/// Where a record came from, and where to report it handled.
#[derive(Debug)]
pub struct Origin {
    pub tp: Tp,
    /// The partition consumer that owns the record's offset.
    pub ack: Recipient<Handled>,
    /// Set when the partition was taken away before its records were written: rows not yet sent
    /// are then abandoned (the new owner reads them again), never written late.
    pub revoked: Arc<AtomicBool>,
    /// The partition's in-flight counters (shared with the Kafka poller's flow control).
    pub inflight: Arc<crate::stage::flow::Inflight>,
    /// The lowest offset of this partition whose record failed (`i64::MAX` while none has).
    /// Under `errors.tolerance = "none"` rows after it are not written (see [`Origin::is_after_failure`]).
    pub first_failure: AtomicI64,
}

impl Origin {
    pub fn new(
        tp: Tp,
        ack: Recipient<Handled>,
        revoked: Arc<AtomicBool>,
        inflight: Arc<crate::stage::flow::Inflight>,
    ) -> Self {
        Self {
            tp,
            ack,
            revoked,
            inflight,
            first_failure: AtomicI64::new(i64::MAX),
        }
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Relaxed)
    }

    /// The record at `offset` failed. Noted where the failure is found ([`Failure::new`]), before
    /// later records of the partition move on, so that under `errors.tolerance = "none"` (the
    /// pipeline stops, the commit stays at the failed record) the writer does not write rows after
    /// it: they would be written again after every restart.
    pub fn note_failure(&self, offset: i64) {
        self.first_failure.fetch_min(offset, Ordering::Relaxed);
    }

    /// Whether the row at `offset` comes after a record of its partition that failed.
    pub fn is_after_failure(&self, offset: i64) -> bool {
        offset > self.first_failure.load(Ordering::Relaxed)
    }
}

/// A chunk of records read from one partition, in offset order (poller → partition consumer).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RawChunk {
    pub records: Vec<RawRecord>,
}

/// A chunk on its way to the converter (partition consumer → converter).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Convert {
    pub origin: Arc<Origin>,
    pub records: Vec<RawRecord>,
    /// The chunk's `poll` span, parent of the stage spans (disabled unless spans are exported).
    pub span: tracing::Span,
}

/// A record parsed into a JSON object: its members, as spans of `source.payload`.
#[derive(Debug)]
pub struct ConvertedRecord {
    pub source: RawRecord,
    pub value: crate::stage::convert::JsonObject,
    /// The record's own span when it carries a `traceparent` header and spans are exported
    /// (see [`crate::telemetry::record_span`]); `Span::none()` otherwise.
    pub trace: tracing::Span,
}

/// Converted records on their way to the transformer (converter → transformer).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Transform {
    pub origin: Arc<Origin>,
    pub records: Vec<ConvertedRecord>,
    /// The chunk's `poll` span.
    pub span: tracing::Span,
}

/// A row ready for BigQuery: its table, dedup key and encoded insertAll entry.
#[derive(Debug)]
pub struct Row {
    pub origin: Arc<Origin>,
    pub source: RawRecord,
    pub table: Arc<TableRef>,
    /// Dedup identity (hash of the dedup key), if dedup is on.
    pub dedup_hash: Option<u64>,
    /// The insertAll entry `{"insertId":…,"json":{…}}`, or the Storage Write API's protobuf row.
    pub body: crate::stage::proto::RowBody,
    /// The record's own span (see [`ConvertedRecord::trace`]); it ends when the row is dropped.
    pub trace: tracing::Span,
}

/// Rows on their way to dedup (transformer → deduplicator).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Dedup {
    pub rows: Vec<Row>,
    /// The chunk's `poll` span.
    pub span: tracing::Span,
}

/// Unique rows on their way to BigQuery (deduplicator → writer).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Write {
    pub rows: Vec<Row>,
}

/// Send every partial batch now (supervisor → writer, on shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

/// Offsets of one partition that are settled (anyone → partition consumer).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Handled {
    pub offsets: Vec<i64>,
    pub kind: HandledKind,
}

/// How records were settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandledKind {
    /// Written, deduplicated away, or reported under `errors.tolerance = "all"`: committable.
    Done,
    /// Failed under `errors.tolerance = "none"`: no longer in flight, but the commit offset must
    /// never pass it.
    Stuck,
}

/// Tells each record's partition consumer that it is settled, one message per partition.
pub fn acknowledge<'a>(
    records: impl IntoIterator<Item = (&'a Arc<Origin>, i64)>,
    kind: HandledKind,
) {
    let mut by_origin: Vec<(&'a Arc<Origin>, Vec<i64>)> = Vec::new();
    for (origin, offset) in records {
        match by_origin.iter_mut().find(|(o, _)| Arc::ptr_eq(o, origin)) {
            Some((_, offsets)) => offsets.push(offset),
            None => by_origin.push((origin, vec![offset])),
        }
    }
    for (origin, offsets) in by_origin {
        origin.ack.do_send(Handled { offsets, kind });
    }
}

/// The pipeline stage where a record failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Convert,
    Transform,
    BigQuery,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Convert => "convert",
            Stage::Transform => "transform",
            Stage::BigQuery => "bigquery",
        }
    }
}

/// A record that could not be delivered, with everything needed to report and replay it.
#[derive(Debug)]
pub struct Failure {
    pub origin: Arc<Origin>,
    pub source: RawRecord,
    pub stage: Stage,
    /// Short machine-readable class, e.g. `invalid_json`, `oversize`, `invalid`.
    pub class: &'static str,
    /// The full error text, with its chain of causes.
    pub error: String,
}

impl Failure {
    /// A record failure; notes it on its partition's origin ([`Origin::note_failure`]).
    pub fn new(
        origin: Arc<Origin>,
        source: RawRecord,
        stage: Stage,
        class: &'static str,
        error: String,
    ) -> Self {
        origin.note_failure(source.offset);
        Self {
            origin,
            source,
            stage,
            class,
            error,
        }
    }
}

/// Failed records (any stage → error report).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Failed {
    pub failures: Vec<Failure>,
}

/// A partition consumer's progress (partition consumer → supervisor): the offset that may be committed
/// (all records before it are handled) and what is in flight.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct Progress {
    pub tp: Tp,
    /// Which incarnation of the partition consumer reports (a partition assigned again gets a new one).
    pub epoch: u64,
    pub commit_offset: Option<i64>,
    pub inflight_records: usize,
    pub inflight_bytes: usize,
}

/// Partitions given to this instance (Kafka poller → supervisor). The reply is, in the same order,
/// where to deliver each partition's chunks and its in-flight counters. `warmup` holds the dedup keys read back from before
/// the partitions' committed offsets (`dedup.warmup_records`); they reach the deduplicator before
/// any record of these partitions does.
#[derive(Message)]
#[rtype(result = "Vec<(Recipient<RawChunk>, Arc<crate::stage::flow::Inflight>)>")]
pub struct Assigned {
    pub tps: Vec<Tp>,
    pub warmup: Vec<(u64, crate::model::Position)>,
}

/// Partitions about to be taken from this instance (Kafka poller → supervisor, repeatedly while the
/// poller waits): flush open batches and answer how many of their records are still in flight.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Revoking {
    pub tps: Vec<Tp>,
}

/// Partitions taken from this instance (Kafka poller → supervisor, after [`Revoking`] reached zero
/// or `kafka.revoke_timeout_ms` passed). The reply is their final commit offsets, which the poller
/// commits synchronously before the partitions are given up.
#[derive(Message)]
#[rtype(result = "Vec<(Tp, i64)>")]
pub struct Revoked {
    pub tps: Vec<Tp>,
}

/// Dedup keys to remember before any record arrives (supervisor → deduplicator, on assignment).
#[derive(Message)]
#[rtype(result = "()")]
pub struct WarmupKeys {
    pub keys: Vec<(u64, crate::model::Position)>,
}

/// A record failed and `errors.tolerance = "none"` (error report → supervisor): stop.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Fatal {
    pub reason: String,
}

/// Drain, commit and stop (signal handler, demo, tests → supervisor).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Shutdown;

/// What became of rows the deduplicator passed on (writer → deduplicator). The first copy of a key
/// holds back later copies of it (another partition's, or a re-conversion's) until it is settled:
/// a duplicate is acknowledged only once its first copy is written or reported, never while the
/// first copy could still be abandoned.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Settled {
    pub keys: Vec<(u64, crate::model::Position)>,
    pub how: SettledAs,
}

/// How rows passed on by the deduplicator ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SettledAs {
    /// BigQuery has them: held duplicates are acknowledged as deduplicated.
    Written,
    /// Failed as bad records and reported: the key is forgotten (so the record replayed from the
    /// dead-letter topic is not taken for a duplicate) and held duplicates are passed on (they
    /// are written or reported on their own).
    Reported,
    /// Not written and not reported (partition revoked, halted, pipeline stopping): the key's
    /// claim is dropped and a held duplicate, if any, takes its place.
    Abandoned,
}

/// Where the writer sends [`Settled`] (pipeline → writer, once at start: dedup is created after the
/// writer, as it sends to it).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SettledVia(pub Recipient<Settled>);

/// What the supervisor knows now (admin API → supervisor).
#[derive(Message, Debug)]
#[rtype(result = "StatusReport")]
pub struct GetStatus;

/// The supervisor's view of the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    /// Shutting down (draining in-flight records).
    pub draining: bool,
    /// The consumer has received an assignment (it is a member of its group).
    pub joined: bool,
    /// Paused by the operator (`PauseAll`).
    pub paused: bool,
    /// Assigned partitions, by topic and partition.
    pub partitions: Vec<PartitionReport>,
}

/// One assigned partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionReport {
    pub tp: Tp,
    /// Every record before this offset is handled.
    pub commit_offset: Option<i64>,
    /// Offset last committed by this instance.
    pub committed: Option<i64>,
    pub inflight_records: usize,
    /// Paused by the operator.
    pub paused: bool,
}

/// Pause every assigned partition, and those assigned later, until [`ResumeAll`] (admin API →
/// supervisor). Records already fetched are still processed and committed.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct PauseAll;

/// Undo [`PauseAll`] (admin API → supervisor).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ResumeAll;
