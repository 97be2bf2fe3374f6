//! A local insertAll-compatible HTTP server: the demo's destination and the tests' BigQuery fake.
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
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bqsink_actors::stage::json::{lookup, Key, Pick};
use bqsink_actors::stage::schema::{unknown_fields, FieldSchema};
use hdrhistogram::Histogram;
use serde::de::{DeserializeSeed, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserializer;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
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
}

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
    /// Hash of the id value → times written.
    ids: HashMap<u64, u32>,
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

/// A running sink; stops when dropped.
pub struct Sink {
    url: String,
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
        let listener = runtime.block_on(tokio::net::TcpListener::bind(addr))?;
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
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bq-sink".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    });
                    if let Err(e) = serve.await {
                        tracing::error!(error = %e, "sink server failed");
                    }
                });
            })?;
        Ok(Sink {
            url,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Base URL, for `bigquery.endpoint`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sets the hook deciding replies (default: accept everything).
    pub fn set_hook(&self, hook: impl Fn(&Request<'_>) -> Reply + Send + Sync + 'static) {
        self.shared.lock().hook = Some(Arc::new(hook));
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
        let inner = self.shared.lock();
        let distinct = inner.ids.len() as u64;
        let repeats = inner
            .ids
            .values()
            .map(|&n| u64::from(n.saturating_sub(1)))
            .sum();
        (distinct, repeats)
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

/// Write latencies of the rows a sink stored, and when it stored its first and last row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latency {
    /// Rows with a readable `_kafka_timestamp`.
    pub rows: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// When the first and the last stored row arrived (all rows, with or without a timestamp).
    pub first_row: Option<Instant>,
    pub last_row: Option<Instant>,
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {} ms, p99 {} ms, max {} ms over {} rows",
            self.p50.as_millis(),
            self.p99.as_millis(),
            self.max.as_millis(),
            self.rows
        )
    }
}

struct LatencyTracker {
    /// Milliseconds, two significant digits (1 % resolution).
    histogram: Histogram<u64>,
    first_row: Option<Instant>,
    last_row: Option<Instant>,
}

impl Default for LatencyTracker {
    fn default() -> Self {
        Self {
            // Up to a day; longer latencies are recorded as a day.
            histogram: Histogram::new_with_max(86_400_000, 2).expect("valid histogram bounds"),
            first_row: None,
            last_row: None,
        }
    }
}

impl LatencyTracker {
    fn summary(&self) -> Latency {
        let ms = |v: u64| Duration::from_millis(v);
        let h = &self.histogram;
        Latency {
            rows: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            first_row: self.first_row,
            last_row: self.last_row,
        }
    }
}

fn error_body(status: u16, reason: &str, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({"error": {"code": status, "message": message, "errors": [{"reason": reason, "message": message}]}});
    (code, Json(body)).into_response()
}

/// What the sink reads of a row: its `json` object's `_kafka_timestamp` and the member the id
/// pointer starts with (as raw JSON text); `None` for a row without `json`.
type RowFacts<'a> = Option<[Option<&'a RawValue>; 2]>;

/// Reads a request body in one pass, keeping two members of each row's `json` object.
#[derive(Clone, Copy)]
struct BodySeed<'k> {
    keys: [&'k str; 2],
}

impl<'de> DeserializeSeed<'de> for BodySeed<'_> {
    type Value = Vec<RowFacts<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for BodySeed<'_> {
    type Value = Vec<RowFacts<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an insertAll request")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut rows = None;
        while let Some(Key(key)) = map.next_key()? {
            if key == "rows" {
                rows = Some(map.next_value_seed(RowsSeed(self))?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        rows.ok_or_else(|| A::Error::missing_field("rows"))
    }
}

struct RowsSeed<'k>(BodySeed<'k>);

impl<'de> DeserializeSeed<'de> for RowsSeed<'_> {
    type Value = Vec<RowFacts<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowsSeed<'_> {
    type Value = Vec<RowFacts<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of rows")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut rows = Vec::with_capacity(seq.size_hint().unwrap_or(512));
        while let Some(facts) = seq.next_element_seed(RowSeed(self.0))? {
            rows.push(facts);
        }
        Ok(rows)
    }
}

struct RowSeed<'k>(BodySeed<'k>);

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = RowFacts<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = RowFacts<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a row object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut facts = None;
        while let Some(Key(key)) = map.next_key()? {
            if key == "json" {
                facts = Some(map.next_value_seed(Pick(self.0.keys))?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(facts)
    }
}

/// `SinkOptions::id_pointer`, split for reading: the first member's name and the rest.
struct IdPointer<'a> {
    pointer: Option<&'a str>,
    first: String,
    rest: &'a str,
}

impl<'a> IdPointer<'a> {
    fn new(pointer: Option<&'a str>) -> Self {
        let (first, rest) = match pointer.and_then(|p| p.strip_prefix('/')) {
            Some(p) => {
                let (first, rest) = p.split_at(p.find('/').unwrap_or(p.len()));
                (first.replace("~1", "/").replace("~0", "~"), rest)
            }
            None => (String::new(), ""),
        };
        Self {
            pointer,
            first,
            rest,
        }
    }

    /// The id of a row, from the member its first token named (read with the row).
    fn id<'r>(
        &self,
        first: Option<&'r RawValue>,
    ) -> Result<Option<&'r RawValue>, serde_json::Error> {
        match (self.pointer, first) {
            (None, _) | (_, None) => Ok(None),
            // Pointers that do not start with `/` (other than the whole row) point at nothing.
            (Some(p), _) if !p.starts_with('/') => Ok(None),
            (Some(_), Some(v)) if self.rest.is_empty() => Ok(Some(v)),
            (Some(_), Some(v)) => lookup(v.get(), self.rest),
        }
    }
}

/// The common case (no hook, no table management, no kept rows, no insertId dedup): the body is read
/// in one pass for what is counted (rows, ids, latencies), without building values.
fn store_fast(shared: &Shared, table: &str, body: &[u8]) -> Response {
    let (at, now) = (Instant::now(), SystemTime::now());
    let pointer = IdPointer::new(shared.options.id_pointer.as_deref());
    let seed = BodySeed {
        keys: ["_kafka_timestamp", &pointer.first],
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let rows = match seed
        .deserialize(&mut de)
        .and_then(|rows| de.end().map(|()| rows))
    {
        Ok(rows) => rows,
        Err(e) => return error_body(400, "invalid", &format!("invalid request body: {e}")),
    };
    let mut ids = Vec::with_capacity(rows.len());
    let mut latencies = Vec::with_capacity(rows.len());
    let mut seconds = Seconds::default();
    for [timestamp, first] in rows.iter().flatten() {
        let text = timestamp.and_then(|t| serde_json::from_str::<&str>(t.get()).ok());
        if let Some(ms) = text.and_then(|t| seconds.latency_ms(t, now)) {
            latencies.push(ms);
        }
        match pointer.id(*first) {
            Ok(Some(id)) => ids.push(xxh3_64(id.get().as_bytes())),
            Ok(None) => {}
            Err(e) => return error_body(400, "invalid", &format!("invalid row: {e}")),
        }
    }
    let mut inner = shared.lock();
    let inner = &mut *inner;
    inner.requests += 1;
    for id in ids {
        *inner.ids.entry(id).or_default() += 1;
    }
    let lat = &mut inner.latency;
    for ms in latencies {
        lat.histogram.saturating_record(ms);
    }
    if !rows.is_empty() {
        lat.first_row.get_or_insert(at);
        lat.last_row = Some(at);
    }
    inner.tables.entry(table.to_owned()).or_default().count += rows.len() as u64;
    Json(json!({"kind": "bigquery#tableDataInsertAllResponse"})).into_response()
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
        .filter_map(|r| r.get("json")?.get("_kafka_timestamp")?.as_str())
        .filter_map(|t| seconds.latency_ms(t, now))
        .collect();
    let mut inner = shared.lock();
    let inner = &mut *inner;
    let lat = &mut inner.latency;
    for ms in latencies {
        lat.histogram.saturating_record(ms);
    }
    if !rows.is_empty() {
        lat.first_row.get_or_insert(at);
        lat.last_row = Some(at);
    }
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
                *inner
                    .ids
                    .entry(xxh3_64(id.to_string().as_bytes()))
                    .or_default() += 1;
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

/// Reads `_kafka_timestamp`s, parsing each second's date and time once (rows come in time order).
#[derive(Default)]
struct Seconds {
    last: Option<(String, SystemTime)>,
}

impl Seconds {
    /// Milliseconds from an RFC 3339 timestamp (a JSON string) to `now`; `None` if it is not one.
    fn latency_ms(&mut self, text: &str, now: SystemTime) -> Option<u64> {
        // `YYYY-MM-DDThh:mm:ss.mmmZ`, as bqsink writes it; anything else is parsed whole.
        let at = match (text.get(..19), text.get(19..)) {
            (Some(second), Some(rest))
                if rest.len() == 5 && rest.starts_with('.') && rest.ends_with('Z') =>
            {
                let millis: u64 = rest[1..4].parse().ok()?;
                let start = match &self.last {
                    Some((s, t)) if s == second => *t,
                    _ => {
                        let t = humantime::parse_rfc3339(&format!("{second}Z")).ok()?;
                        self.last = Some((second.to_owned(), t));
                        t
                    }
                };
                start + Duration::from_millis(millis)
            }
            _ => humantime::parse_rfc3339(text).ok()?,
        };
        Some(now.duration_since(at).unwrap_or_default().as_millis() as u64)
    }
}

/// insertAll with table management: 404 for a missing table; rows with unknown fields rejected
/// (`invalid`, "no such field: x."), the others `stopped` unless `skipInvalidRows`; unknown fields
/// dropped with `ignoreUnknownValues`.
fn insert_managed(
    shared: &Shared,
    table: &str,
    mut rows: Vec<Value>,
    skip_invalid: bool,
    ignore_unknown: bool,
) -> Response {
    let schema = match shared.lock().definitions.get(table) {
        Some(def) => schema_of(def),
        None => return error_body(404, "notFound", &format!("Not found: Table sink:{table}")),
    };
    let mut rejected: Vec<(usize, Vec<String>)> = Vec::new();
    for (i, row) in rows.iter_mut().enumerate() {
        let Some(json) = row.get_mut("json").and_then(Value::as_object_mut) else {
            rejected.push((i, vec!["json".into()]));
            continue;
        };
        let unknown = unknown_fields(&schema, json);
        if unknown.is_empty() {
            continue;
        }
        if ignore_unknown {
            drop_fields(json, &unknown);
        } else {
            rejected.push((i, unknown));
        }
    }
    if rejected.is_empty() {
        store(shared, table, rows);
        return Json(json!({"kind": "bigquery#tableDataInsertAllResponse"})).into_response();
    }
    let bad: HashSet<usize> = rejected.iter().map(|(i, _)| *i).collect();
    let mut errors: Vec<Value> = rejected
        .iter()
        .map(|(i, fields)| {
            let errs: Vec<Value> = fields
                .iter()
                .map(|f| json!({"reason": "invalid", "location": f, "message": format!("no such field: {f}.")}))
                .collect();
            json!({"index": i, "errors": errs})
        })
        .collect();
    if skip_invalid {
        let good = rows
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !bad.contains(i))
            .map(|(_, r)| r)
            .collect();
        store(shared, table, good);
    } else {
        errors.extend(
            (0..rows.len())
                .filter(|i| !bad.contains(i))
                .map(|i| json!({"index": i, "errors": [{"reason": "stopped", "location": "", "message": ""}]})),
        );
    }
    Json(json!({"kind": "bigquery#tableDataInsertAllResponse", "insertErrors": errors}))
        .into_response()
}

/// Removes dotted paths (as [`unknown_fields`] gives them) from a row.
fn drop_fields(row: &mut Map<String, Value>, paths: &[String]) {
    for path in paths {
        let mut parts: Vec<&str> = path.split('.').collect();
        let Some(last) = parts.pop() else { continue };
        let mut targets: Vec<&mut Map<String, Value>> = vec![row];
        for part in parts {
            targets = targets
                .into_iter()
                .filter_map(|m| m.get_mut(part))
                .flat_map(|v| match v {
                    Value::Array(items) => {
                        items.iter_mut().filter_map(Value::as_object_mut).collect()
                    }
                    Value::Object(m) => vec![m],
                    _ => vec![],
                })
                .collect();
        }
        for m in targets {
            m.remove(last);
        }
    }
}

fn schema_of(def: &Value) -> Vec<FieldSchema> {
    serde_json::from_value(def["schema"]["fields"].clone()).unwrap_or_default()
}

async fn datasets_insert(
    State(shared): State<Arc<Shared>>,
    Path(_project): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let Some(id) = body["datasetReference"]["datasetId"].as_str() else {
        return error_body(400, "invalid", "datasetReference.datasetId is required");
    };
    let mut inner = shared.lock();
    inner.calls.push(format!("datasets.insert {id}"));
    if !inner.datasets.insert(id.to_owned()) {
        return error_body(
            409,
            "duplicate",
            &format!("Already Exists: Dataset sink:{id}"),
        );
    }
    Json(body).into_response()
}

/// What BigQuery checks of a new table: a schema with valid names, partitioning by a top-level
/// TIMESTAMP/DATE/DATETIME column, at most 4 clustering columns that exist.
fn check_definition(def: &Value) -> Result<(), String> {
    let schema = def["schema"]["fields"]
        .as_array()
        .ok_or("the table needs a schema")?;
    let fields: Vec<FieldSchema> = serde_json::from_value(Value::Array(schema.clone()))
        .map_err(|e| format!("bad schema: {e}"))?;
    fn check(fields: &[FieldSchema]) -> Result<(), String> {
        for f in fields {
            if f.name.is_empty()
                || !f
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(format!("Invalid field name \"{}\"", f.name));
            }
            if f.is_record() == f.fields.is_empty() {
                return Err(format!(
                    "Field {} is a RECORD without fields, or fields without RECORD",
                    f.name
                ));
            }
            check(&f.fields)?;
        }
        Ok(())
    }
    check(&fields)?;
    let top = |name: &str| fields.iter().find(|f| f.name.eq_ignore_ascii_case(name));
    if let Some(tp) = def.get("timePartitioning") {
        if !matches!(tp["type"].as_str(), Some("DAY" | "HOUR" | "MONTH" | "YEAR")) {
            return Err(format!("invalid timePartitioning type {}", tp["type"]));
        }
        if let Some(field) = tp["field"].as_str() {
            match top(field) {
                Some(f) if matches!(f.field_type.as_str(), "TIMESTAMP" | "DATE" | "DATETIME") => {}
                Some(f) => {
                    return Err(format!(
                        "partitioning field {field} has type {}",
                        f.field_type
                    ))
                }
                None => return Err(format!("partitioning field {field} is not in the schema")),
            }
        }
    }
    if let Some(c) = def.get("clustering") {
        let cols = c["fields"]
            .as_array()
            .ok_or("clustering.fields must be a list")?;
        if cols.len() > 4 {
            return Err("at most 4 clustering fields".into());
        }
        for col in cols {
            if top(col.as_str().unwrap_or_default()).is_none() {
                return Err(format!("clustering field {col} is not in the schema"));
            }
        }
    }
    Ok(())
}

async fn tables_insert(
    State(shared): State<Arc<Shared>>,
    Path((_project, dataset)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> Response {
    let Some(id) = body["tableReference"]["tableId"].as_str() else {
        return error_body(400, "invalid", "tableReference.tableId is required");
    };
    let table = format!("{dataset}.{id}");
    let mut inner = shared.lock();
    inner.calls.push(format!("tables.insert {table}"));
    if !inner.datasets.contains(&dataset) {
        return error_body(
            404,
            "notFound",
            &format!("Not found: Dataset sink:{dataset}"),
        );
    }
    if inner.definitions.contains_key(&table) {
        return error_body(
            409,
            "duplicate",
            &format!("Already Exists: Table sink:{table}"),
        );
    }
    if let Err(e) = check_definition(&body) {
        return error_body(400, "invalid", &e);
    }
    inner.definitions.insert(table, body.clone());
    Json(body).into_response()
}

async fn tables_get(
    State(shared): State<Arc<Shared>>,
    Path((_project, dataset, table)): Path<(String, String, String)>,
) -> Response {
    let table = format!("{dataset}.{table}");
    let mut inner = shared.lock();
    inner.calls.push(format!("tables.get {table}"));
    match inner.definitions.get(&table) {
        Some(def) => Json(def.clone()).into_response(),
        None => error_body(404, "notFound", &format!("Not found: Table sink:{table}")),
    }
}

/// A patch may add NULLABLE or REPEATED fields (nested too), never drop or change one.
fn check_patch(old: &[FieldSchema], new: &[FieldSchema], prefix: &str) -> Result<(), String> {
    for o in old {
        let Some(n) = new.iter().find(|n| n.name.eq_ignore_ascii_case(&o.name)) else {
            return Err(format!(
                "Provided Schema does not match Table: field {prefix}{} is missing",
                o.name
            ));
        };
        if n.field_type != o.field_type {
            return Err(format!("Field {prefix}{} has changed type", o.name));
        }
        check_patch(&o.fields, &n.fields, &format!("{prefix}{}.", o.name))?;
    }
    for n in new {
        let added = !old.iter().any(|o| o.name.eq_ignore_ascii_case(&n.name));
        if added && n.mode.as_deref() == Some("REQUIRED") {
            return Err(format!("Cannot add required field {prefix}{}", n.name));
        }
    }
    Ok(())
}

async fn tables_patch(
    State(shared): State<Arc<Shared>>,
    Path((_project, dataset, table)): Path<(String, String, String)>,
    Json(body): Json<Value>,
) -> Response {
    let table = format!("{dataset}.{table}");
    let mut inner = shared.lock();
    inner.calls.push(format!("tables.patch {table}"));
    let Some(def) = inner.definitions.get_mut(&table) else {
        return error_body(404, "notFound", &format!("Not found: Table sink:{table}"));
    };
    if let Some(fields) = body.get("schema").map(|s| s["fields"].clone()) {
        let new: Vec<FieldSchema> = match serde_json::from_value(fields.clone()) {
            Ok(f) => f,
            Err(e) => return error_body(400, "invalid", &format!("bad schema: {e}")),
        };
        if let Err(e) = check_patch(&schema_of(def), &new, "") {
            return error_body(400, "invalid", &e);
        }
        def["schema"] = json!({ "fields": fields });
    }
    Json(def.clone()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_read_in_one_pass() {
        let body = br#"{"skipInvalidRows":false,"rows":[
            {"insertId":"a","json":{"event_id":"e1","_kafka_timestamp":"2026-01-01T00:00:00.000Z","x":[1]}},
            {"json":{"n":{"id":7}}},
            {"insertId":"c"}]}"#;
        for (pointer, ids) in [
            ("/event_id", vec![Some(r#""e1""#), None]),
            ("/n/id", vec![None, Some("7")]),
            ("event_id", vec![None, None]),
        ] {
            let p = IdPointer::new(Some(pointer));
            let seed = BodySeed {
                keys: ["_kafka_timestamp", &p.first],
            };
            let rows = seed
                .deserialize(&mut serde_json::Deserializer::from_slice(body))
                .unwrap();
            assert_eq!(rows.len(), 3);
            assert!(rows[2].is_none(), "a row without json");
            let got: Vec<_> = rows
                .iter()
                .flatten()
                .map(|[_, first]| p.id(*first).unwrap().map(|v| v.get().to_owned()))
                .collect();
            let want: Vec<_> = ids.into_iter().map(|v| v.map(str::to_owned)).collect();
            assert_eq!(got, want, "{pointer}");
            assert!(rows[0].unwrap()[0].is_some() && rows[1].unwrap()[0].is_none());
        }
        let bad = BodySeed { keys: ["a", "b"] }
            .deserialize(&mut serde_json::Deserializer::from_slice(br#"{"rowz":[]}"#));
        assert!(bad.is_err(), "no rows array");
    }
}
