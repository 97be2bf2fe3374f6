//! A local insertAll-compatible HTTP server: the demo's destination and the tests' BigQuery fake.
//! It also speaks the Storage Write API's `AppendRows` over gRPC on a second port ([`Sink::grpc_url`],
//! `grpc.rs`), into the same tables, with the same hook.
//!
//! It answers `POST /bigquery/v2/projects/{p}/datasets/{d}/tables/{t}/insertAll` like BigQuery with
//! `skipInvalidRows = false`: all rows are stored, or, when a row is rejected, none is (the rejected
//! rows get `invalid`, the others `stopped`). It does *not* deduplicate by `insertId`, so tests see
//! exactly what bqsink sent. A hook decides per request whether to accept, fail, reject rows or hang,
//! which is how tests inject BigQuery faults.
//!
//! With [`Sink::manage_tables`] it also keeps datasets and tables like BigQuery: `datasets.insert`,
//! `tables.insert` / `get` / `patch` (checking partitioning and clustering columns, and that a patch
//! only adds fields), insertAll answering 404 for a missing table and rejecting rows with fields the
//! schema lacks ("no such field"), honouring `skipInvalidRows` and `ignoreUnknownValues`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::{Listener, ListenerExt as _};
use axum::{Json, Router};
use bqsink_actors::stage::json::{lookup, Key, Pick};
use bqsink_actors::stage::schema::{unknown_fields, FieldSchema};
use hdrhistogram::Histogram;
use serde::de::{DeserializeSeed, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserializer;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::TcpIncoming;
use xxhash_rust::xxh3::xxh3_64;

/// What the sink does with one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Store the rows, answer 200 without errors.
    Accept,
    /// Answer with this status and BigQuery-style error `reason`; store nothing.
    Fail { status: u16, reason: String },
    /// Reject the rows at these indices with reason `invalid` (the others are `stopped`); store nothing.
    RejectRows(Vec<usize>),
    /// Wait, then do the inner reply (a request timeout when the wait is long enough).
    Delay(Duration, Box<Reply>),
    /// Storage Write API only: answer this gRPC code in band (`AppendRowsResponse.error`, the
    /// connection stays open), e.g. 6 `ALREADY_EXISTS`, 11 `OUT_OF_RANGE`; store nothing. insertAll
    /// answers it as a 500.
    InBand { code: i32, message: String },
}

/// One request as the hook sees it.
pub struct Request<'a> {
    /// `dataset.table`.
    pub table: &'a str,
    /// The `rows` array, each `{"insertId":…, "json":{…}}`.
    pub rows: &'a [Value],
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
    /// How many requests came before this one.
    pub seq: u64,
    /// Storage Write API: the stream (`_default` or a created stream's id) and the append offset.
    pub stream: Option<&'a str>,
    pub offset: Option<i64>,
}

/// Decides the reply to a `FlushRows(stream, offset)` (Storage Write API): `Accept` flushes,
/// `Fail` answers that status, `Delay` waits first.
pub type FlushHook = Arc<dyn Fn(&str, i64) -> Reply + Send + Sync>;

/// Decides the reply to each request.
pub type Hook = Arc<dyn Fn(&Request<'_>) -> Reply + Send + Sync>;

/// Sink settings.
#[derive(Clone, Default)]
pub struct SinkOptions {
    /// Keep every row (tests); otherwise only counts are kept (demo, benchmarks).
    pub keep_rows: bool,
    /// A JSON pointer into each row whose value is counted per distinct value (to find duplicates).
    pub id_pointer: Option<String>,
    /// Drop rows whose `insertId` was already stored, as BigQuery's best-effort dedup does.
    pub honor_insert_id: bool,
}

#[derive(Default)]
struct Table {
    count: u64,
    rows: Vec<Value>,
}

#[derive(Default)]
struct Inner {
    tables: HashMap<String, Table>,
    /// The hash of each stored row's id value, in arrival order until [`Sink::id_stats`] sorts
    /// them to count. Appending is all a stored row costs here: a map of ids counted as rows
    /// arrived (2 M entries in `bqsink bench`, SipHash, growing) took a third of the bench
    /// process's CPU while the pipeline it measures ran beside it.
    ids: Vec<u64>,
    requests: u64,
    hook: Option<Hook>,
    /// Hashes of the insertIds stored (with `honor_insert_id`), and rows dropped for them.
    insert_ids: std::collections::HashSet<u64>,
    insert_id_dropped: u64,
    /// Table management on (see [`Sink::manage_tables`]).
    managed: bool,
    datasets: HashSet<String>,
    /// `dataset.table` → the `tables.insert` body as sent, its schema as patched since.
    definitions: HashMap<String, Value>,
    /// Table-management calls, e.g. `tables.insert ds.t`.
    calls: Vec<String>,
    latency: LatencyTracker,
    /// Storage Write API streams created with `CreateWriteStream`, by full name.
    streams: HashMap<String, streams::BufferedStream>,
    streams_created: u64,
    flush_hook: Option<FlushHook>,
}

struct Shared {
    options: SinkOptions,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the counters half-updated in a way that
        // matters to a test; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The REST port's connections, each with `TCP_NODELAY`, as Google's front ends answer. With
/// Nagle's algorithm a small answer written while the previous one is still unacknowledged waits
/// for the client's delayed ACK, 40 ms on Linux: seen as appends answered 40 ms late, four at a
/// time, which stalled the whole pipeline in `bqsink bench`.
fn rest_incoming(listener: TcpListener) -> impl Listener<Io = TcpStream, Addr = SocketAddr> {
    listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "sink: cannot set TCP_NODELAY");
        }
    })
}

/// The gRPC port's connections, each with `TCP_NODELAY` (see [`rest_incoming`]). Not through the
/// server builder's `tcp_nodelay`: tonic ignores it for an incoming stream of our own.
fn grpc_incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// A running sink; stops when dropped.
pub struct Sink {
    url: String,
    grpc_url: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    /// Starts the sink on a free loopback port.
    pub fn start(options: SinkOptions) -> std::io::Result<Sink> {
        Self::start_on("127.0.0.1:0".parse().expect("valid address"), options)
    }

    /// Starts the sink on `addr`.
    pub fn start_on(addr: SocketAddr, options: SinkOptions) -> std::io::Result<Sink> {
        let shared = Arc::new(Shared {
            options,
            inner: Mutex::new(Inner::default()),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind(addr))?;
        let url = format!("http://{}", listener.local_addr()?);
        let app = Router::new()
            .route(
                "/bigquery/v2/projects/{project}/datasets/{dataset}/tables/{table}/insertAll",
                post(insert_all),
            )
            .route(
                "/bigquery/v2/projects/{project}/datasets",
                post(datasets_insert),
            )
            .route(
                "/bigquery/v2/projects/{project}/datasets/{dataset}/tables",
                post(tables_insert),
            )
            .route(
                "/bigquery/v2/projects/{project}/datasets/{dataset}/tables/{table}",
                get(tables_get).patch(tables_patch),
            )
            .with_state(Arc::clone(&shared));
        // The Storage Write API (gRPC) on the next free port.
        let grpc_listener = runtime.block_on(TcpListener::bind(SocketAddr::new(
            listener.local_addr()?.ip(),
            0,
        )))?;
        let grpc_url = format!("http://{}", grpc_listener.local_addr()?);
        let write = grpc::WriteService {
            shared: Arc::clone(&shared),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bq-sink".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let (grpc_stop, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
                    let serve = axum::serve(rest_incoming(listener), app).with_graceful_shutdown(
                        async move {
                            let _ = stopped.await;
                            let _ = grpc_stop.send(());
                        },
                    );
                    // Receive windows as large as a gRPC server's after its BDP probing (the
                    // HTTP/2 default of 64 KiB stalls every append bigger than that).
                    let grpc = tonic::transport::Server::builder()
                        .initial_stream_window_size(8 << 20)
                        .initial_connection_window_size(32 << 20)
                        .add_service(write)
                        .serve_with_incoming_shutdown(grpc_incoming(grpc_listener), async move {
                            let _ = grpc_stopped.await;
                        });
                    let (rest, grpc) = tokio::join!(serve, grpc);
                    if let Err(e) = rest {
                        tracing::error!(error = %e, "sink server failed");
                    }
                    if let Err(e) = grpc {
                        tracing::error!(error = %e, "sink gRPC server failed");
                    }
                });
            })?;
        Ok(Sink {
            url,
            grpc_url,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Base URL, for `bigquery.endpoint`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Base URL of its Storage Write API (gRPC, plaintext), for `bigquery.storage_endpoint`.
    pub fn grpc_url(&self) -> &str {
        &self.grpc_url
    }

    /// Sets the hook deciding replies (default: accept everything).
    pub fn set_hook(&self, hook: impl Fn(&Request<'_>) -> Reply + Send + Sync + 'static) {
        self.shared.lock().hook = Some(Arc::new(hook));
    }

    /// Sets the hook deciding `FlushRows` replies (default: flush).
    pub fn set_flush_hook(&self, hook: impl Fn(&str, i64) -> Reply + Send + Sync + 'static) {
        self.shared.lock().flush_hook = Some(Arc::new(hook));
    }

    /// The Storage Write API streams created so far: (name, rows appended, rows flushed,
    /// finalized), in creation order.
    pub fn write_streams(&self) -> Vec<(String, usize, usize, bool)> {
        let inner = self.shared.lock();
        let mut v: Vec<_> = inner
            .streams
            .iter()
            .map(|(n, s)| (s.seq, n.clone(), s.rows.len(), s.flushed, s.finalized))
            .collect();
        v.sort();
        v.into_iter().map(|(_, n, a, f, z)| (n, a, f, z)).collect()
    }

    /// Finalizes a stream as if someone else did (a fault for tests): it takes no more appends
    /// or flushes.
    pub fn finalize_stream(&self, name: &str) {
        if let Some(s) = self.shared.lock().streams.get_mut(name) {
            s.finalized = true;
        }
    }

    /// Removes the hook: accept everything.
    pub fn clear_hook(&self) {
        self.shared.lock().hook = None;
    }

    /// Rows stored in `dataset.table` (the `json` objects), if rows are kept.
    pub fn rows(&self, table: &str) -> Vec<Value> {
        self.shared
            .lock()
            .tables
            .get(table)
            .map(|t| t.rows.clone())
            .unwrap_or_default()
    }

    /// Rows stored over all tables.
    pub fn total_rows(&self) -> u64 {
        self.shared.lock().tables.values().map(|t| t.count).sum()
    }

    /// Rows stored per table.
    pub fn table_counts(&self) -> HashMap<String, u64> {
        self.shared
            .lock()
            .tables
            .iter()
            .map(|(k, t)| (k.clone(), t.count))
            .collect()
    }

    /// Distinct id values seen, and how many rows repeated an id already stored.
    pub fn id_stats(&self) -> (u64, u64) {
        let mut inner = self.shared.lock();
        // Sorted in place: a second call finds them sorted but for the rows stored since.
        inner.ids.sort_unstable();
        let rows = inner.ids.len() as u64;
        let distinct = if inner.ids.is_empty() {
            0
        } else {
            1 + inner.ids.windows(2).filter(|w| w[0] != w[1]).count() as u64
        };
        (distinct, rows - distinct)
    }

    /// Rows dropped because their insertId was already stored (with `honor_insert_id`).
    pub fn insert_id_dropped(&self) -> u64 {
        self.shared.lock().insert_id_dropped
    }

    /// insertAll requests received.
    pub fn requests(&self) -> u64 {
        self.shared.lock().requests
    }

    /// Write latency of the stored rows that have a `_kafka_timestamp` column: the time the sink
    /// received a row minus that timestamp (the record's produce time), with millisecond resolution.
    pub fn latency(&self) -> Latency {
        self.shared.lock().latency.summary()
    }

    /// Forgets the latencies recorded so far (e.g. after a warm-up).
    pub fn reset_latency(&self) {
        self.shared.lock().latency = LatencyTracker::default();
    }

    /// Behave like BigQuery about datasets and tables from now on: insertAll to a table that was
    /// not created answers 404, rows with fields the schema lacks are rejected.
    pub fn manage_tables(&self) {
        self.shared.lock().managed = true;
    }

    /// Creates a dataset (as if it existed before bqsink started).
    pub fn create_dataset(&self, dataset: &str) {
        self.shared.lock().datasets.insert(dataset.to_owned());
    }

    /// Creates a table with this schema (as if it existed before bqsink started).
    pub fn create_table(&self, table: &str, fields: Value) {
        let (dataset, name) = table.split_once('.').unwrap_or(("", table));
        let mut inner = self.shared.lock();
        inner.datasets.insert(dataset.to_owned());
        inner.definitions.insert(
            table.to_owned(),
            json!({"tableReference": {"datasetId": dataset, "tableId": name}, "schema": {"fields": fields}}),
        );
    }

    /// The definition of `dataset.table`: the `tables.insert` body as sent, with its schema as
    /// patched since.
    pub fn table(&self, table: &str) -> Option<Value> {
        self.shared.lock().definitions.get(table).cloned()
    }

    /// Datasets that exist.
    pub fn datasets(&self) -> Vec<String> {
        let mut d: Vec<_> = self.shared.lock().datasets.iter().cloned().collect();
        d.sort();
        d
    }

    /// Table-management calls received, in order, e.g. `tables.insert ds.t`, `tables.patch ds.t`.
    pub fn calls(&self) -> Vec<String> {
        self.shared.lock().calls.clone()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

mod decode;
mod facts;
mod grpc;
mod latency;
mod proto_rows;
mod streams;
mod tables;

use decode::store_fast;
pub use latency::Latency;
use latency::{LatencyTracker, Seconds};
use tables::{datasets_insert, insert_managed, tables_get, tables_insert, tables_patch};

fn error_body(status: u16, reason: &str, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({"error": {"code": status, "message": message, "errors": [{"reason": reason, "message": message}]}});
    (code, Json(body)).into_response()
}

async fn insert_all(
    State(shared): State<Arc<Shared>>,
    Path((_project, dataset, table)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let table = format!("{dataset}.{table}");
    let fast = {
        let inner = shared.lock();
        inner.hook.is_none() && !inner.managed
    } && !shared.options.keep_rows
        && !shared.options.honor_insert_id;
    if fast {
        return store_fast(&shared, &table, &body);
    }
    let Ok(mut request) = serde_json::from_slice::<Value>(&body) else {
        return error_body(400, "invalid", "request body is not JSON");
    };
    let skip_invalid = request["skipInvalidRows"] == true;
    let ignore_unknown = request["ignoreUnknownValues"] == true;
    let rows = match request.get_mut("rows").map(Value::take) {
        Some(Value::Array(rows)) => rows,
        _ => return error_body(400, "invalid", "request has no rows array"),
    };
    let (mut reply, hook) = {
        let mut inner = shared.lock();
        inner.requests += 1;
        (
            Reply::Accept,
            inner.hook.clone().map(|h| (h, inner.requests - 1)),
        )
    };
    if let Some((hook, seq)) = hook {
        let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
        reply = hook(&Request {
            table: &table,
            rows: &rows,
            authorization,
            seq,
            stream: None,
            offset: None,
        });
    }
    while let Reply::Delay(wait, inner) = reply {
        tokio::time::sleep(wait).await;
        reply = *inner;
    }
    match reply {
        Reply::Accept | Reply::Delay(..) if shared.lock().managed => {
            insert_managed(&shared, &table, rows, skip_invalid, ignore_unknown)
        }
        Reply::Accept | Reply::Delay(..) => {
            store(&shared, &table, rows);
            Json(json!({"kind": "bigquery#tableDataInsertAllResponse"})).into_response()
        }
        Reply::Fail { status, reason } => error_body(status, &reason, "injected failure"),
        Reply::InBand { message, .. } => error_body(500, "backendError", &message),
        Reply::RejectRows(bad) => {
            let errors: Vec<Value> = (0..rows.len())
                .map(|i| {
                    let (reason, message) = if bad.contains(&i) {
                        ("invalid", "no such field: bogus.")
                    } else {
                        ("stopped", "")
                    };
                    json!({"index": i, "errors": [{"reason": reason, "location": if reason == "invalid" {"bogus"} else {""}, "message": message}]})
                })
                .collect();
            Json(json!({"kind": "bigquery#tableDataInsertAllResponse", "insertErrors": errors}))
                .into_response()
        }
    }
}

fn store(shared: &Shared, table: &str, mut rows: Vec<Value>) {
    let (at, now) = (Instant::now(), SystemTime::now());
    let mut seconds = Seconds::default();
    let latencies: Vec<u64> = rows
        .iter()
        .filter_map(|r| match r.get("json")?.get("_kafka_timestamp")? {
            Value::String(t) => seconds.latency_ms(t, now),
            // Written through the Storage Write API: microseconds since the epoch.
            Value::Number(micros) => {
                let at = UNIX_EPOCH + Duration::from_micros(micros.as_u64()?);
                Some(now.duration_since(at).unwrap_or_default().as_millis() as u64)
            }
            _ => None,
        })
        .collect();
    let mut inner = shared.lock();
    let inner = &mut *inner;
    facts::record_latencies(
        &mut inner.latency,
        latencies.into_iter(),
        !rows.is_empty(),
        at,
    );
    if shared.options.honor_insert_id {
        let before = rows.len();
        rows.retain(|r| match r.get("insertId").and_then(Value::as_str) {
            Some(id) => inner
                .insert_ids
                .insert(xxh3_64(format!("{table}\0{id}").as_bytes())),
            None => true,
        });
        inner.insert_id_dropped += (before - rows.len()) as u64;
    }
    if let Some(ptr) = &shared.options.id_pointer {
        for row in &rows {
            if let Some(id) = row.get("json").and_then(|j| j.pointer(ptr)) {
                inner.ids.push(xxh3_64(id.to_string().as_bytes()));
            }
        }
    }
    let t = inner.tables.entry(table.to_owned()).or_default();
    t.count += rows.len() as u64;
    if shared.options.keep_rows {
        t.rows.extend(
            rows.into_iter()
                .map(|mut r| r.get_mut("json").map(Value::take).unwrap_or(Value::Null)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;

    /// Both ports answer without Nagle's delay: every accepted connection has `TCP_NODELAY`.
    #[test]
    fn accepted_connections_have_tcp_nodelay() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let bind = || TcpListener::bind("127.0.0.1:0");
            let (rest, grpc) = (bind().await.unwrap(), bind().await.unwrap());
            let (rest_at, grpc_at) = (rest.local_addr().unwrap(), grpc.local_addr().unwrap());
            let mut rest = rest_incoming(rest);
            let _client = TcpStream::connect(rest_at).await.unwrap();
            let (accepted, _) = rest.accept().await;
            assert!(
                accepted.nodelay().unwrap(),
                "REST connection without TCP_NODELAY"
            );
            let mut grpc = grpc_incoming(grpc);
            let _client = TcpStream::connect(grpc_at).await.unwrap();
            let accepted = grpc.next().await.unwrap().unwrap();
            assert!(
                accepted.nodelay().unwrap(),
                "gRPC connection without TCP_NODELAY"
            );
        });
    }
}
