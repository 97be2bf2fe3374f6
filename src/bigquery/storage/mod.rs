//! The BigQuery Storage Write API client (`bigquery.write_api = "storage"`): rows encoded as
//! protobuf from the table's schema and appended over gRPC (tonic) to the table's `_default`
//! stream, where they are committed on append (at-least-once, like insertAll).
//!
//! The invariant is the port's (see [`crate::bigquery`]): a row the encoder or BigQuery rejects is a
//! row error (a record failure, reported by its index as insertAll reports it); anything else that
//! kept the rows out — a gRPC status (`UNAVAILABLE`, `RESOURCE_EXHAUSTED`, `DEADLINE_EXCEEDED`,
//! `NOT_FOUND`, `PERMISSION_DENIED`, …), a timeout, a closed connection — is a [`BqError`] (a sink
//! failure, which the writer retries while the partitions are paused). The client never retries on
//! its own.
//!
//! | piece | where |
//! |---|---|
//! | the row format (descriptor, JSON → protobuf) | `bqsink_actors::stage::proto` |
//! | one pipelined `AppendRows` call | [`connection`] |
//! | at least once: the table's `_default` stream | [`default_stream`] |
//! | exactly once: BUFFERED streams per (table, partition), appends | [`exactly_once`] |
//! | exactly once: the offset commit's metadata, flushes, finalizes | [`commits`] |
//! | statuses as [`BqError`]s | [`status`] |
//!
//! Table calls (`tables.get`, `tables.insert`, `tables.patch`) go to the REST client, so table
//! management (auto-creation, new fields) works as on the insertAll path. The row format of a table
//! is its `tables.get` schema, cached; it is fetched again after a patch, after BigQuery reports an
//! updated schema or a schema mismatch, and a new format opens a new connection (an old connection
//! refuses appends with new fields).

mod commits;
mod connection;
mod default_stream;
mod exactly_once;
mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bqsink_actors::bigquery::{
    BigQuery, BqError, CommitHook, ErrorProto, GrpcCode, InsertAllResponse, RowErrors,
};
use bqsink_actors::config::{BigQueryConfig, Delivery};
use bqsink_actors::messages::Tp;
use bqsink_actors::stage::batch::InsertOptions;
use bqsink_actors::stage::proto::{RowBody, RowData, RowFormat, RowFormats};
use bqsink_actors::stage::schema::FieldSchema;
use bqsink_actors::stage::transform::TableRef;
use bqsink_actors::tables::TableDefinition;
use bytes::Bytes;
use futures::future::BoxFuture;
use googleapis_tonic_google_cloud_bigquery_storage_v1::google::cloud::bigquery::storage::v1::big_query_write_client::BigQueryWriteClient;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::auth::TokenSource;
use super::rest::{ClientError, RestClient};
pub use commits::Commits;
use connection::Connection;

/// The most bytes of rows in one `AppendRows` request: Google's limit is 10 MB for the whole
/// request, descriptor and envelope included.
const MAX_REQUEST_ROW_BYTES: usize = 9_000_000;

/// Storage Write API client for one project; table calls go to the REST client.
#[derive(Clone)]
pub struct StorageWriteClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// Taken in `drop` to be shut down without blocking (the last reference may go in a task).
    runtime: Option<tokio::runtime::Runtime>,
    rest: RestClient,
    write: BigQueryWriteClient<Channel>,
    auth: Arc<dyn TokenSource>,
    project: String,
    timeout: Duration,
    state: Mutex<State>,
    delivery: Delivery,
    exactly_once: exactly_once::ExactlyOnce,
    /// The formats in `state`, shared with the transform stage, which encodes rows with them.
    shared: RowFormats,
}

#[derive(Default)]
struct State {
    formats: HashMap<TableRef, Arc<Format>>,
    connections: HashMap<TableRef, Arc<Connection>>,
    versions: u64,
}

/// A table's row format, numbered so that a connection knows which descriptor it was opened with.
struct Format {
    /// Shared with the transform stage: rows it encoded with this very `Arc` are sent as they are.
    rows: Arc<RowFormat>,
    version: u64,
}

/// A batch's rows encoded: what is sent and what the encoder already refused.
struct Encoded {
    rows: Vec<Bytes>,
    /// The batch index of each row in `rows`.
    index: Vec<usize>,
    failed: Vec<RowErrors>,
}

impl StorageWriteClient {
    /// A client for `bigquery.storage_endpoint`, authenticating like the REST client.
    pub fn new(config: &BigQueryConfig) -> Result<Self, ClientError> {
        let auth = super::auth::from_config(config)?;
        Self::with_auth(config, auth)
    }

    /// A client taking its tokens from `auth`.
    pub fn with_auth(
        config: &BigQueryConfig,
        auth: Arc<dyn TokenSource>,
    ) -> Result<Self, ClientError> {
        let rest = RestClient::with_auth(config, Arc::clone(&auth))?;
        let endpoint = config.storage_endpoint.trim_end_matches('/').to_owned();
        let mut channel = Endpoint::from_shared(endpoint.clone())
            .map_err(|e| ClientError::Endpoint(format!("{endpoint}: {e}")))?
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            // Flow-control windows sized by the measured bandwidth-delay product, as gRPC's own
            // clients do: with HTTP/2's fixed 64 KiB default, every append larger than that (a
            // 500-row batch is ~125 KB) waits a round trip for window updates.
            .http2_adaptive_window(true)
            .keep_alive_while_idle(true);
        if endpoint.starts_with("https://") {
            channel = channel
                .tls_config(ClientTlsConfig::new().with_native_roots())
                .map_err(|e| ClientError::Endpoint(format!("{endpoint}: {e}")))?;
        }
        tracing::debug!(endpoint = %endpoint, "BigQuery Storage Write API client");
        // The channel and the connections' reader tasks live on a runtime of their own, so that
        // the client works from any thread or runtime (actors, replay) and outlives none of them.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bq-grpc")
            .enable_all()
            .build()
            .map_err(|e| ClientError::Endpoint(format!("cannot start the gRPC runtime: {e}")))?;
        let write = {
            let _entered = runtime.enter();
            BigQueryWriteClient::new(channel.connect_lazy())
        };
        Ok(Self {
            inner: Arc::new(Inner {
                runtime: Some(runtime),
                rest,
                write,
                auth,
                project: config.project.clone(),
                timeout: Duration::from_millis(config.request_timeout_ms),
                state: Mutex::new(State::default()),
                delivery: config.delivery,
                exactly_once: Default::default(),
                shared: RowFormats::default(),
            }),
        })
    }

    /// What the tokens come from, for logs.
    pub fn auth_description(&self) -> String {
        self.inner.rest.auth_description()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Inner {
    fn handle(&self) -> tokio::runtime::Handle {
        match &self.runtime {
            Some(rt) => rt.handle().clone(),
            None => tokio::runtime::Handle::current(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cached_format(&self, table: &TableRef) -> Option<Arc<Format>> {
        self.state().formats.get(table).cloned()
    }

    /// Caches the format of `schema` for `table` unless the cached one has the same schema.
    fn set_schema(&self, table: &TableRef, schema: &[FieldSchema]) -> Result<Arc<Format>, BqError> {
        let rows = RowFormat::new(schema).map_err(|e| BqError::Grpc {
            code: GrpcCode::FailedPrecondition,
            message: format!("table {table}: {e}"),
        })?;
        let mut state = self.state();
        if let Some(f) = state.formats.get(table) {
            if f.rows.descriptor() == rows.descriptor() {
                return Ok(Arc::clone(f));
            }
        }
        state.versions += 1;
        let format = Arc::new(Format {
            rows: Arc::new(rows),
            version: state.versions,
        });
        state.formats.insert(table.clone(), Arc::clone(&format));
        self.shared.set(table, Some(Arc::clone(&format.rows)));
        Ok(format)
    }

    /// Forgets the table's format (and with it, at the next append, its connection).
    fn forget(&self, table: &TableRef) {
        let mut state = self.state();
        state.formats.remove(table);
        state.connections.remove(table);
        self.shared.set(table, None);
    }

    /// The table's row format, from `tables.get` when not cached; a missing table is `NOT_FOUND`
    /// (table management creates it and the batch is sent again).
    async fn format(&self, table: &TableRef) -> Result<Arc<Format>, BqError> {
        if let Some(f) = self.cached_format(table) {
            return Ok(f);
        }
        match self.rest.get_table(table).await? {
            Some(schema) => self.set_schema(table, &schema),
            None => Err(BqError::Grpc {
                code: GrpcCode::NotFound,
                message: format!("table {table} does not exist"),
            }),
        }
    }

    /// The call metadata: the bearer token and Google's routing header (`key=value`, the value
    /// URL-encoded as the API requires).
    async fn routing_metadata(
        &self,
        key: &str,
        value: &str,
    ) -> Result<tonic::metadata::MetadataMap, BqError> {
        let token = self.auth.token().await?;
        let mut metadata = tonic::metadata::MetadataMap::new();
        if let Some(t) = &token {
            let value = format!("Bearer {t}").parse().map_err(|_| BqError::Auth {
                message: "the OAuth token is not a valid header value".into(),
                retryable: false,
            })?;
            metadata.insert("authorization", value);
        }
        let routing = format!("{key}={}", value.replace('/', "%2F"));
        if let Ok(v) = routing.parse() {
            metadata.insert("x-goog-request-params", v);
        }
        Ok(metadata)
    }

    /// The metadata of an `AppendRows` call to `stream`.
    async fn metadata(&self, stream: &str) -> Result<tonic::metadata::MetadataMap, BqError> {
        self.routing_metadata("write_stream", stream).await
    }

    /// Sends encoded rows: exactly once with their sources, else to the default stream.
    async fn send(
        &self,
        table: &TableRef,
        format: Arc<Format>,
        encoded: Encoded,
        sources: Option<Vec<(Tp, i64)>>,
    ) -> Result<InsertAllResponse, BqError> {
        match sources {
            Some(sources) => {
                let result = self
                    .append_exactly_once(table, format, encoded, &sources)
                    .await;
                if let Err(e) = &result {
                    self.after_error(table, e, None).await;
                }
                result
            }
            None => self.append(table, format, encoded).await,
        }
    }

    /// What an error means for the cached format, the connection and the token.
    async fn after_error(&self, table: &TableRef, e: &BqError, token: Option<&str>) {
        if status::is_schema_mismatch(e) || e.is_not_found() {
            self.forget(table);
        }
        let current;
        let token = match token {
            Some(t) => Some(t),
            None => {
                current = self.auth.token().await.ok().flatten();
                current.as_deref()
            }
        };
        if let (
            BqError::Grpc {
                code: GrpcCode::Unauthenticated,
                ..
            },
            Some(rejected),
        ) = (e, token)
        {
            tracing::warn!(table = %table, "BigQuery refused the OAuth token (UNAUTHENTICATED); getting a new one");
            let _ = self.auth.refresh(rejected).await;
            self.state().connections.remove(table);
        }
    }
}

fn row_error(index: usize, reason: &str, message: &str) -> RowErrors {
    RowErrors {
        index,
        errors: vec![ErrorProto {
            reason: reason.into(),
            location: String::new(),
            message: message.into(),
        }],
    }
}

/// Encodes each row for `format`; rows that do not fit are row errors (`invalid`, with the field).
/// Rows the transform stage encoded with this format are taken as they are; rows encoded with a
/// format since replaced are encoded again from their JSON.
fn encode(format: &Format, rows: &[RowData<'_>]) -> Encoded {
    let mut encoded = Encoded {
        rows: Vec::with_capacity(rows.len()),
        index: Vec::with_capacity(rows.len()),
        failed: Vec::new(),
    };
    let mut buf = Vec::with_capacity(256);
    for (i, row) in rows.iter().enumerate() {
        let result = match row {
            RowData::Proto(p) if Arc::ptr_eq(&p.format, &format.rows) => {
                encoded.rows.push(p.bytes.clone());
                encoded.index.push(i);
                continue;
            }
            RowData::Json(entry) => format.rows.encode_entry(entry, &mut buf),
            RowData::Proto(_) => format.rows.encode_entry(&row.json(), &mut buf),
        };
        match result {
            Ok(()) => {
                encoded.rows.push(Bytes::copy_from_slice(&buf));
                encoded.index.push(i);
            }
            Err(e) => {
                let location = e.path.clone();
                encoded.failed.push(RowErrors {
                    index: i,
                    errors: vec![ErrorProto {
                        reason: "invalid".into(),
                        location,
                        message: e.to_string(),
                    }],
                });
            }
        }
    }
    encoded
}

impl BigQuery for StorageWriteClient {
    fn insert_all(
        &self,
        table: &TableRef,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<InsertAllResponse, BqError>> {
        self.inner.rest.insert_all(table, body)
    }

    fn write_rows(
        &self,
        table: &TableRef,
        rows: &[RowData<'_>],
        sources: &[(Tp, i64)],
        _options: InsertOptions,
    ) -> BoxFuture<'static, Result<InsertAllResponse, BqError>> {
        let inner = Arc::clone(&self.inner);
        let table = table.clone();
        // Exactly once needs each row's partition and offset; rows without them (a replay) go to
        // the default stream, at least once.
        let sources = (inner.delivery == Delivery::ExactlyOnce && sources.len() == rows.len())
            .then(|| sources.to_vec());
        // With the format known the rows are encoded here, without copying them for the future.
        if let Some(format) = inner.cached_format(&table) {
            let encoded = encode(&format, rows);
            return Box::pin(async move { inner.send(&table, format, encoded, sources).await });
        }
        let owned: Vec<RowBody> = rows
            .iter()
            .map(|r| match r {
                RowData::Json(entry) => RowBody::Json(entry.to_vec()),
                RowData::Proto(p) => RowBody::Proto((*p).clone()),
            })
            .collect();
        Box::pin(async move {
            let format = inner.format(&table).await?;
            let rows: Vec<RowData<'_>> = owned.iter().map(RowBody::data).collect();
            let encoded = encode(&format, &rows);
            inner.send(&table, format, encoded, sources).await
        })
    }

    fn row_formats(&self) -> Option<RowFormats> {
        Some(self.inner.shared.clone())
    }

    fn commit_hook(&self) -> Option<Arc<dyn CommitHook>> {
        (self.inner.delivery == Delivery::ExactlyOnce).then(|| {
            Arc::new(Commits {
                inner: Arc::clone(&self.inner),
            }) as Arc<dyn CommitHook>
        })
    }

    fn get_table(
        &self,
        table: &TableRef,
    ) -> BoxFuture<'static, Result<Option<Vec<FieldSchema>>, BqError>> {
        let inner = Arc::clone(&self.inner);
        let table = table.clone();
        Box::pin(async move {
            let schema = inner.rest.get_table(&table).await?;
            // Someone may have changed the table: rows are encoded for what it is now.
            match &schema {
                Some(s) => {
                    inner.set_schema(&table, s)?;
                }
                None => inner.forget(&table),
            }
            Ok(schema)
        })
    }

    fn create_table(&self, def: &TableDefinition) -> BoxFuture<'static, Result<bool, BqError>> {
        self.inner.rest.create_table(def)
    }

    fn create_dataset(&self, dataset: &str) -> BoxFuture<'static, Result<bool, BqError>> {
        self.inner.rest.create_dataset(dataset)
    }

    fn patch_schema(
        &self,
        table: &TableRef,
        schema: Vec<FieldSchema>,
    ) -> BoxFuture<'static, Result<(), BqError>> {
        let inner = Arc::clone(&self.inner);
        let table = table.clone();
        let patch = self.inner.rest.patch_schema(&table, schema);
        Box::pin(async move {
            patch.await?;
            inner.forget(&table);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests;
