//! The Kafka port: what the actors ask of the consumer. The `bqsink` crate implements it over
//! rdkafka (a poller thread owns the consumer); tests implement it with a recorder.

use std::sync::Arc;

use actix::Recipient;
use futures::future::BoxFuture;

use crate::messages::{RawChunk, Tp};
use crate::stage::flow::Inflight;

/// A commit that did not succeed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("offset commit failed: {0}")]
pub struct CommitError(pub String);

/// Control of the group consumer. Every call returns at once; work happens on the consumer's thread.
pub trait KafkaControl: Send + Sync + 'static {
    /// Commits `offset` (the next offset to read) for each partition. The future resolves when the
    /// broker has answered.
    fn commit(&self, offsets: Vec<(Tp, i64)>) -> BoxFuture<'static, Result<(), CommitError>>;
    /// Stops fetching a partition (backpressure); records already fetched still arrive.
    fn pause(&self, tp: &Tp);
    /// Fetches a paused partition again.
    fn resume(&self, tp: &Tp);
    /// Delivers a partition's chunks to a new consumer from now on, reading again from `from` (the
    /// first unhandled offset; `None`: the committed offset). Used when a partition consumer died.
    fn restart_partition(
        &self,
        tp: &Tp,
        from: Option<i64>,
        to: Recipient<RawChunk>,
        inflight: Arc<Inflight>,
    );
    /// Like [`KafkaControl::restart_partition`] from `from`, for a partition whose offsets went
    /// backwards (log truncated, fetch position reset): the records now at `from` and after are
    /// new, so the partition's committed offset may move back to `from` (commits are otherwise
    /// never allowed to move back).
    fn rewind_partition(
        &self,
        tp: &Tp,
        from: i64,
        to: Recipient<RawChunk>,
        inflight: Arc<Inflight>,
    ) {
        self.restart_partition(tp, Some(from), to, inflight);
    }
    /// Stops reading: no more chunks are delivered. Called when the pipeline drains for shutdown.
    fn stop_reading(&self);
    /// Leaves the group and closes the consumer; called last, after the final commit.
    fn close(&self);
}
