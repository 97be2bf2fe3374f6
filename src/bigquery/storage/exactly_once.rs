//! Exactly-once delivery (`bigquery.delivery = "exactly_once"`): one BUFFERED write stream per
//! (table, partition), rows appended with explicit offsets, made visible by `FlushRows` only after
//! the Kafka offset commit that covers them. The protocol, its invariant and why it holds are in
//! `bqsink_actors::stage::exactly_once` (the bookkeeping, [`PartitionBook`]); this module makes the
//! calls:
//!
//! - appends ([`Inner::append_exactly_once`]): a batch's rows are split by partition; each
//!   (table, partition) lane appends one request at a time to its current stream at the stream's
//!   next offset, creating the stream when there is none (throttled: `CreateWriteStream` has a
//!   per-project hourly quota). An append whose outcome is unknown retires the stream; the rows go to
//!   a new one when the writer sends them again.
//! - around each offset commit ([`super::commits::Commits`], the pipeline's `CommitHook`, called by
//!   the Kafka poller): the offset and metadata to commit, then, once the commit succeeded,
//!   `FlushRows` to what it names and `FinalizeWriteStream` of streams no commit names any more.
//!
//! Google's documented behaviour relied on: `FlushRows(F)` is inclusive and cumulative, and a
//! repeated flush of an open stream succeeds (`ALREADY_EXISTS` counts as flushed, as in Beam);
//! an explicit stream takes appends at exactly its next offset (`ALREADY_EXISTS` below it,
//! `OUT_OF_RANGE` above); a finalized stream refuses appends *and flushes*, which is why nothing is
//! finalized while a commit may name it.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};

use bqsink_actors::bigquery::{BqError, FlushFailure, GrpcCode, InsertAllResponse};
use bqsink_actors::messages::Tp;
use bqsink_actors::stage::exactly_once::{CommitPlan, PartitionBook, Stream};
use bqsink_actors::stage::transform::TableRef;
use bytes::Bytes;
use googleapis_tonic_google_cloud_bigquery_storage_v1::google::cloud::bigquery::storage::v1::{
    append_rows_request::{ProtoData, Rows},
    append_rows_response::Response,
    write_stream, AppendRowsRequest, CreateWriteStreamRequest, FinalizeWriteStreamRequest,
    FlushRowsRequest, ProtoRows, WriteStream,
};

use super::connection::Connection;
use super::{row_error, status, Encoded, Format, Inner};

/// `CreateWriteStream` calls of this instance: a burst of this many at once (taking over its
/// partitions at start or after a rebalance), then [`CREATES_PER_SECOND`]. Google's quota is per
/// project and region: 10,000 streams an hour (2.8 a second), shown per minute as 167; see README,
/// "Quotas and cost".
const CREATE_BURST: NonZeroU32 = NonZeroU32::new(64).unwrap();
const CREATES_PER_SECOND: NonZeroU32 = NonZeroU32::new(2).unwrap();

/// The lock serialising one (table, partition)'s appends.
type Lane = Arc<tokio::sync::Mutex<()>>;

/// A row to append: its batch index, its encoded bytes and its record's Kafka offset.
type LaneRow = (usize, Bytes, i64);

/// One partition's streams, and the commit last prepared for it.
#[derive(Default)]
pub(super) struct Entry {
    pub(super) book: PartitionBook,
    /// Revoked: nothing more is appended.
    pub(super) released: bool,
    pub(super) plan: Option<CommitPlan>,
}

/// Exactly-once state of the client.
pub(super) struct ExactlyOnce {
    pub(super) partitions: Mutex<HashMap<Tp, Entry>>,
    /// Serialises the appends of each (table, partition).
    lanes: Mutex<HashMap<(TableRef, Tp), Lane>>,
    /// The `AppendRows` connection of each stream (by full name).
    connections: Mutex<HashMap<String, Arc<Connection>>>,
    creates: governor::DefaultDirectRateLimiter,
    /// Tables whose flushes fail now, by table (see `commits.rs`).
    pub(super) flush_failures: Mutex<HashMap<TableRef, FlushFailure>>,
}

impl Default for ExactlyOnce {
    fn default() -> Self {
        let quota = governor::Quota::per_second(CREATES_PER_SECOND).allow_burst(CREATE_BURST);
        Self {
            partitions: Default::default(),
            lanes: Default::default(),
            connections: Default::default(),
            creates: governor::RateLimiter::direct(quota),
            flush_failures: Default::default(),
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What became of one lane's rows.
enum LaneOutcome {
    Appended,
    /// Nothing appended; these rows (batch indices) were rejected with these messages, the others
    /// may be sent again.
    RowErrors(HashMap<usize, String>),
    Failed(BqError),
}

impl Inner {
    fn eo(&self) -> &ExactlyOnce {
        &self.exactly_once
    }

    fn stream_name(&self, table: &TableRef, id: &str) -> String {
        format!(
            "projects/{}/datasets/{}/tables/{}/streams/{id}",
            self.project, table.dataset, table.table
        )
    }

    /// Appends `encoded` (rows from `sources`) to the partitions' streams; reports per row as
    /// insertAll does.
    pub(super) async fn append_exactly_once(
        &self,
        table: &TableRef,
        format: Arc<Format>,
        encoded: Encoded,
        sources: &[(Tp, i64)],
    ) -> Result<InsertAllResponse, BqError> {
        let mut response = InsertAllResponse {
            insert_errors: encoded.failed,
        };
        // The rows per partition, in batch order: (batch index, bytes, Kafka offset).
        let mut lanes: Vec<(Tp, Vec<LaneRow>)> = Vec::new();
        for (row, index) in encoded.rows.into_iter().zip(encoded.index) {
            let (tp, offset) = &sources[index];
            match lanes.iter_mut().find(|(t, _)| t == tp) {
                Some((_, rows)) => rows.push((index, row, *offset)),
                None => lanes.push((tp.clone(), vec![(index, row, *offset)])),
            }
        }
        let outcomes = futures::future::join_all(
            lanes
                .iter()
                .map(|(tp, rows)| self.append_lane(table, tp, &format, rows)),
        )
        .await;
        let mut appended_any = false;
        let mut first_error = None;
        for ((_, rows), outcome) in lanes.iter().zip(outcomes) {
            match outcome {
                LaneOutcome::Appended => appended_any = true,
                LaneOutcome::RowErrors(bad) => {
                    appended_any = true; // the batch made progress: its good rows go again at once
                    for (index, _, _) in rows {
                        response.insert_errors.push(match bad.get(index) {
                            Some(m) => row_error(*index, "invalid", m),
                            None => row_error(*index, "stopped", ""),
                        });
                    }
                }
                LaneOutcome::Failed(e) => {
                    first_error.get_or_insert(e);
                    for (index, _, _) in rows {
                        response
                            .insert_errors
                            .push(row_error(*index, "stopped", ""));
                    }
                }
            }
        }
        match first_error {
            Some(e) if !appended_any => Err(e),
            _ => Ok(response),
        }
    }

    /// The lock serialising `table`'s appends for `tp`.
    fn lane(&self, table: &TableRef, tp: &Tp) -> Lane {
        let mut lanes = lock(&self.eo().lanes);
        Arc::clone(lanes.entry((table.clone(), tp.clone())).or_default())
    }

    /// The stream `tp`'s rows of `table` go to, and its next offset; creates one when needed.
    async fn current_stream(&self, table: &TableRef, tp: &Tp) -> Result<(String, i64), BqError> {
        loop {
            {
                let mut parts = lock(&self.eo().partitions);
                let entry = parts.entry(tp.clone()).or_default();
                if entry.released {
                    return Err(BqError::Grpc {
                        code: GrpcCode::Aborted,
                        message: format!("partition {tp} was revoked"),
                    });
                }
                if let Some(s) = entry.book.current(table) {
                    return Ok((s.id.clone(), s.next));
                }
            }
            let id = self.create_stream(table).await?;
            let mut parts = lock(&self.eo().partitions);
            let entry = parts.entry(tp.clone()).or_default();
            if entry.book.current(table).is_none() {
                entry.book.streams(table).push(Stream::new(id));
            }
        }
    }

    /// `CreateWriteStream` of a BUFFERED stream; its id within the table.
    async fn create_stream(&self, table: &TableRef) -> Result<String, BqError> {
        self.eo().creates.until_ready().await;
        let parent = format!(
            "projects/{}/datasets/{}/tables/{}",
            self.project, table.dataset, table.table
        );
        let request = CreateWriteStreamRequest {
            parent: parent.clone(),
            write_stream: Some(WriteStream {
                r#type: write_stream::Type::Buffered as i32,
                ..Default::default()
            }),
        };
        let request = self.unary(request, "parent", &parent).await?;
        let mut client = self.write.clone();
        let created = self
            .on_runtime(async move { client.create_write_stream(request).await })
            .await?
            .map_err(|s| status::from_status(&s))?
            .into_inner();
        let id = created
            .name
            .rsplit_once("/streams/")
            .map(|(_, id)| id.to_owned())
            .filter(|id| !id.is_empty())
            .ok_or_else(|| BqError::Grpc {
                code: GrpcCode::Internal,
                message: format!(
                    "CreateWriteStream answered a stream named {:?}",
                    created.name
                ),
            })?;
        tracing::debug!(table = %table, stream = %id, "created a BUFFERED write stream");
        Ok(id)
    }

    /// Appends one partition's rows to its current stream of `table`.
    async fn append_lane(
        &self,
        table: &TableRef,
        tp: &Tp,
        format: &Arc<Format>,
        rows: &[LaneRow],
    ) -> LaneOutcome {
        let lane = self.lane(table, tp);
        let _serial = lane.lock().await;
        let (id, next) = match self.current_stream(table, tp).await {
            Ok(s) => s,
            Err(e) => return LaneOutcome::Failed(e),
        };
        let name = self.stream_name(table, &id);
        let conn = match self.stream_connection(&name, format).await {
            Ok(c) => c,
            Err(e) => return LaneOutcome::Failed(e),
        };
        let request = AppendRowsRequest {
            write_stream: name.clone(),
            offset: Some(next),
            rows: Some(Rows::ProtoRows(ProtoData {
                writer_schema: None,
                rows: Some(ProtoRows {
                    serialized_rows: rows.iter().map(|(_, b, _)| b.clone()).collect(),
                }),
            })),
            ..Default::default()
        };
        let answer = conn
            .call(request, format.rows.descriptor(), self.timeout)
            .await;
        match answer {
            Ok(r) => match r.response {
                Some(Response::AppendResult(_)) => {
                    let min = rows.iter().map(|r| r.2).min().unwrap_or(0);
                    let max = rows.iter().map(|r| r.2).max().unwrap_or(0);
                    let mut parts = lock(&self.eo().partitions);
                    let entry = parts.entry(tp.clone()).or_default();
                    match entry
                        .book
                        .current(table)
                        .filter(|s| s.id == id && s.next == next)
                    {
                        Some(s) => s.acked(rows.len() as i64, min, max),
                        // Cannot happen: the lane is held. Keep the invariant anyway.
                        None => {
                            drop(parts);
                            return self.retire(
                                table,
                                tp,
                                &id,
                                BqError::Grpc {
                                    code: GrpcCode::Internal,
                                    message: format!("stream {id} changed during an append"),
                                },
                            );
                        }
                    }
                    LaneOutcome::Appended
                }
                Some(Response::Error(e)) if !r.row_errors.is_empty() => {
                    tracing::debug!(table = %table, %tp, status = %e.message, "row errors");
                    LaneOutcome::RowErrors(
                        r.row_errors
                            .iter()
                            .filter_map(|re| {
                                let (index, _, _) = rows.get(usize::try_from(re.index).ok()?)?;
                                Some((*index, re.message.clone()))
                            })
                            .collect(),
                    )
                }
                Some(Response::Error(e)) => {
                    let error = status::from_rpc(&e);
                    if status::is_stream_gone(&error) {
                        return self.lose(table, tp, &id, error);
                    }
                    match &error {
                        // The stream is not where this lane believes it is, or is gone.
                        BqError::Grpc {
                            code:
                                GrpcCode::AlreadyExists
                                | GrpcCode::OutOfRange
                                | GrpcCode::NotFound
                                | GrpcCode::FailedPrecondition,
                            ..
                        } => self.retire(table, tp, &id, error),
                        // Refused as a whole, nothing appended (a schema mismatch, …).
                        _ => {
                            if status::is_schema_mismatch(&error) {
                                self.forget(table);
                            }
                            LaneOutcome::Failed(error)
                        }
                    }
                }
                None => self.retire(
                    table,
                    tp,
                    &id,
                    BqError::Decode("an empty AppendRows answer".into()),
                ),
            },
            Err(e) if status::is_stream_gone(&e) => self.lose(table, tp, &id, e),
            // Whether the rows went in is unknown.
            Err(e) => self.retire(table, tp, &id, e),
        }
    }

    /// Retires stream `id` of (table, tp): nothing more is appended to it (its acknowledged rows are
    /// still flushed by the commits that name them).
    fn retire(&self, table: &TableRef, tp: &Tp, id: &str, error: BqError) -> LaneOutcome {
        tracing::warn!(table = %table, %tp, stream = %id, error = %error, kind = "sink_failure",
            "append to a BUFFERED stream failed or its outcome is unknown; the stream is retired and the rows go to a new one");
        if let Some(s) = lock(&self.eo().partitions)
            .get_mut(tp)
            .and_then(|e| e.book.current(table))
            .filter(|s| s.id == id)
        {
            s.retired = true;
        }
        lock(&self.eo().connections).remove(&self.stream_name(table, id));
        LaneOutcome::Failed(error)
    }

    /// Stream `id` of (table, tp) was finalized or deleted by someone else (see
    /// [`PartitionBook::lose`]): the commit is held below its unflushed rows, which a restart
    /// writes again; rows committed already cannot be recovered and are reported.
    fn lose(&self, table: &TableRef, tp: &Tp, id: &str, error: BqError) -> LaneOutcome {
        let lost = lock(&self.eo().partitions)
            .get_mut(tp)
            .and_then(|e| e.book.lose(table, id));
        lock(&self.eo().connections).remove(&self.stream_name(table, id));
        report_lost(table, tp, id, lost, &error);
        LaneOutcome::Failed(error)
    }

    /// The open connection to stream `name` for `format`, or a new one.
    async fn stream_connection(
        &self,
        name: &str,
        format: &Format,
    ) -> Result<Arc<Connection>, BqError> {
        if let Some(c) = lock(&self.eo().connections).get(name) {
            if c.is_open() && c.format_version == format.version {
                return Ok(Arc::clone(c));
            }
        }
        let metadata = self.metadata(name).await?;
        let c = Arc::new(Connection::open(
            &self.handle(),
            self.write.clone(),
            metadata,
            format.version,
        ));
        lock(&self.eo().connections).insert(name.to_owned(), Arc::clone(&c));
        Ok(c)
    }

    /// A unary request with the token and the routing header for `key=value`.
    async fn unary<T>(
        &self,
        message: T,
        key: &str,
        value: &str,
    ) -> Result<tonic::Request<T>, BqError> {
        let mut request = tonic::Request::new(message);
        *request.metadata_mut() = self.routing_metadata(key, value).await?;
        request.set_timeout(self.timeout);
        Ok(request)
    }

    /// Runs a gRPC call on the client's runtime.
    async fn on_runtime<T: Send + 'static>(
        &self,
        call: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, BqError> {
        self.handle()
            .spawn(call)
            .await
            .map_err(|e| BqError::Transport(format!("gRPC task failed: {e}")))
    }

    /// `FlushRows(stream, f)`: rows `0..=f` of the stream become visible.
    pub(super) async fn flush(&self, table: &TableRef, id: &str, f: i64) -> Result<(), BqError> {
        let name = self.stream_name(table, id);
        let request = FlushRowsRequest {
            write_stream: name.clone(),
            offset: Some(f),
        };
        let request = self.unary(request, "write_stream", &name).await?;
        let mut client = self.write.clone();
        match self
            .on_runtime(async move { client.flush_rows(request).await })
            .await?
        {
            Ok(_) => Ok(()),
            // Already flushed to there (Beam treats it the same).
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
            Err(s) => Err(status::from_status(&s)),
        }
    }

    /// Closes the `AppendRows` connections of `streams`, which take no more appends (their
    /// partition was released). A server serves few at once (bqemulator: 6), so they are not left
    /// open until a finalize, which a failed revoke-time commit postpones.
    pub(super) fn close_streams(&self, streams: &[(TableRef, String)]) {
        let mut connections = lock(&self.eo().connections);
        for (table, id) in streams {
            connections.remove(&self.stream_name(table, id));
        }
    }

    /// `FinalizeWriteStream`; a failure only leaves the stream to expire.
    pub(super) async fn finalize(&self, table: &TableRef, id: &str) {
        let name = self.stream_name(table, id);
        lock(&self.eo().connections).remove(&name);
        let request = FinalizeWriteStreamRequest { name: name.clone() };
        let Ok(request) = self.unary(request, "name", &name).await else {
            return;
        };
        let mut client = self.write.clone();
        match self
            .on_runtime(async move { client.finalize_write_stream(request).await })
            .await
        {
            Ok(Ok(_)) => tracing::debug!(stream = %name, "finalized"),
            Ok(Err(s)) => {
                tracing::debug!(stream = %name, error = %s, "finalize failed; the stream expires on its own")
            }
            Err(e) => tracing::debug!(stream = %name, error = %e, "finalize failed"),
        }
    }
}

/// The error report of a lost stream.
pub(super) fn report_lost(
    table: &TableRef,
    tp: &Tp,
    id: &str,
    lost: Option<(i64, i64)>,
    error: &BqError,
) {
    match lost {
        Some((first, last)) => {
            tracing::error!(%tp, table = %table, stream = %id, first_row = first, last_row = last, error = %error, kind = "sink_failure",
            "a write stream was finalized or deleted by someone else after Kafka committed rows it held: those rows were never made visible and are lost")
        }
        None => {
            tracing::error!(%tp, table = %table, stream = %id, error = %error, kind = "sink_failure",
            "a write stream was finalized or deleted by someone else: the partition's commit stays below the rows it held; restart bqsink to write them again")
        }
    }
}
