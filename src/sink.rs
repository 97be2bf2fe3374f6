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
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bqsink_actors::stage::schema::{unknown_fields, FieldSchema};
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
    let mut inner = shared.lock();
    let inner = &mut *inner;
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
