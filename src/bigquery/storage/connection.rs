//! One `AppendRows` connection: a long-lived bidirectional gRPC stream to one write stream, on which
//! requests are pipelined and answered in order.
//!
//! The invariant: the n-th response belongs to the n-th request (gRPC keeps order within a
//! stream), so each request's waiter is queued in the order the request is sent, both under one
//! lock. When the stream ends — an error, the server's 600 s idle close, a timeout the caller gives
//! up on — every waiter hears the error and the connection is closed for good; the caller opens a
//! new one. A late answer can never be taken for another request's.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bqsink_actors::bigquery::BqError;
use googleapis_tonic_google_cloud_bigquery_storage_v1::google::cloud::bigquery::storage::v1::{
    append_rows_request::Rows, big_query_write_client::BigQueryWriteClient, AppendRowsRequest,
    AppendRowsResponse, ProtoSchema,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::Status;

use super::status;

type Waiter = oneshot::Sender<Result<AppendRowsResponse, Status>>;

/// What senders and the reader task share, under one lock.
#[derive(Default)]
struct Queue {
    /// Waiters of the requests sent and not yet answered, oldest first.
    waiters: VecDeque<Waiter>,
    /// Whether a request with the writer schema was sent (the first of a connection needs it).
    schema_sent: bool,
}

struct Shared {
    /// `None` once closed.
    queue: Mutex<Option<Queue>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Queue>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the connection: every waiting request fails with `status`.
    fn close(&self, status: &Status) {
        let queue = self.lock().take();
        for w in queue.into_iter().flat_map(|q| q.waiters) {
            let _ = w.send(Err(status.clone()));
        }
    }
}

/// An open `AppendRows` call. Dropping it half-closes the call; the reader task then ends.
pub(super) struct Connection {
    requests: mpsc::UnboundedSender<AppendRowsRequest>,
    shared: Arc<Shared>,
    /// The version of the row format whose descriptor this connection was opened with.
    pub(super) format_version: u64,
}

impl Connection {
    /// Opens a call with `metadata` (authorization, routing) on `client`. The call itself runs in a
    /// task on `runtime`; its failure reaches the waiting requests.
    pub(super) fn open(
        runtime: &tokio::runtime::Handle,
        mut client: BigQueryWriteClient<Channel>,
        metadata: tonic::metadata::MetadataMap,
        format_version: u64,
    ) -> Self {
        let (requests, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Some(Queue::default())),
        });
        let reader = Arc::clone(&shared);
        runtime.spawn(async move {
            let mut request = tonic::Request::new(UnboundedReceiverStream::new(rx));
            *request.metadata_mut() = metadata;
            let mut inbound = match client.append_rows(request).await {
                Ok(response) => response.into_inner(),
                Err(status) => return reader.close(&status),
            };
            loop {
                match inbound.message().await {
                    Ok(Some(response)) => {
                        let waiter = reader.lock().as_mut().and_then(|q| q.waiters.pop_front());
                        match waiter {
                            Some(w) => {
                                let _ = w.send(Ok(response));
                            }
                            None => {
                                tracing::warn!("AppendRows answered a request it was not sent; closing the connection");
                                return reader
                                    .close(&Status::internal("unexpected AppendRows response"));
                            }
                        }
                    }
                    Ok(None) => {
                        return reader.close(&Status::unavailable(
                            "the server closed the AppendRows connection",
                        ))
                    }
                    Err(status) => return reader.close(&status),
                }
            }
        });
        Self {
            requests,
            shared,
            format_version,
        }
    }

    /// Whether requests can still be sent.
    pub(super) fn is_open(&self) -> bool {
        self.shared.lock().is_some() && !self.requests.is_closed()
    }

    /// Sends `request`, with the writer schema from `schema` when it is the connection's first; the
    /// receiver yields its response, or the error that closed the connection.
    pub(super) fn send(
        &self,
        mut request: AppendRowsRequest,
        schema: impl FnOnce(&mut AppendRowsRequest),
    ) -> oneshot::Receiver<Result<AppendRowsResponse, Status>> {
        let (tx, rx) = oneshot::channel();
        let mut queue = self.shared.lock();
        let Some(q) = queue.as_mut() else {
            let _ = tx.send(Err(Status::unavailable(
                "the AppendRows connection is closed",
            )));
            return rx;
        };
        if !q.schema_sent {
            schema(&mut request);
        }
        if self.requests.send(request).is_ok() {
            q.schema_sent = true;
            q.waiters.push_back(tx);
        } else {
            let _ = tx.send(Err(Status::unavailable(
                "the AppendRows connection is closed",
            )));
        }
        rx
    }

    /// Closes the connection (a request timed out: its answer may still come and must not be
    /// taken for the next request's).
    pub(super) fn close(&self, status: &Status) {
        self.shared.close(status);
    }
}

impl Connection {
    /// Sends `request` (with `descriptor` as the writer schema when it is the connection's first)
    /// and waits at most `timeout` for its answer. A timeout closes the connection: the answer may
    /// still come, and must not be taken for the next request's.
    pub(super) async fn call(
        &self,
        request: AppendRowsRequest,
        descriptor: &prost_types::DescriptorProto,
        timeout: std::time::Duration,
    ) -> Result<AppendRowsResponse, BqError> {
        let rx = self.send(request, |r| {
            if let Some(Rows::ProtoRows(data)) = &mut r.rows {
                data.writer_schema = Some(ProtoSchema {
                    proto_descriptor: Some(descriptor.clone()),
                });
            }
        });
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer.map_err(|s| status::from_status(&s)),
            Ok(Err(_)) => Err(BqError::Transport("the AppendRows connection ended".into())),
            Err(_) => {
                self.close(&Status::deadline_exceeded("AppendRows timed out"));
                Err(BqError::Timeout)
            }
        }
    }
}
