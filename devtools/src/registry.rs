//! A local Schema Registry: Confluent's REST API for what bqsink asks (`GET /schemas/ids/{id}`:
//! 200 with the schema, 404 with error code 40403; `GET /subjects/{subject}/versions/{version}`
//! for references: 200, or 404 with 40401), for the demo's and the bench's records and the tests,
//! which take it down (503) and count its lookups per id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

#[derive(Default)]
struct Shared {
    schemas: Mutex<HashMap<u32, Value>>,
    subjects: Mutex<HashMap<(String, i64), Value>>,
    lookups: Mutex<HashMap<u32, usize>>,
    down: AtomicBool,
}

/// A running registry; stops with its runtime when dropped.
pub struct Registry {
    pub url: String,
    shared: Arc<Shared>,
    _runtime: tokio::runtime::Runtime,
}

impl Registry {
    /// Starts it on a free loopback port.
    pub fn start() -> std::io::Result<Self> {
        async fn by_id(
            State(shared): State<Arc<Shared>>,
            Path(id): Path<u32>,
        ) -> (StatusCode, Json<Value>) {
            *lock(&shared.lookups).entry(id).or_default() += 1;
            if shared.down.load(Ordering::SeqCst) {
                let body = json!({"error_code": 50302, "message": "backend down"});
                return (StatusCode::SERVICE_UNAVAILABLE, Json(body));
            }
            let answer = lock(&shared.schemas).get(&id).cloned();
            match answer {
                Some(answer) => (StatusCode::OK, Json(answer)),
                None => (
                    StatusCode::NOT_FOUND,
                    Json(json!({"error_code": 40403, "message": format!("Schema {id} not found")})),
                ),
            }
        }
        async fn by_subject(
            State(shared): State<Arc<Shared>>,
            Path((subject, version)): Path<(String, i64)>,
        ) -> (StatusCode, Json<Value>) {
            if shared.down.load(Ordering::SeqCst) {
                let body = json!({"error_code": 50302, "message": "backend down"});
                return (StatusCode::SERVICE_UNAVAILABLE, Json(body));
            }
            let answer = lock(&shared.subjects)
                .get(&(subject.clone(), version))
                .cloned();
            match answer {
                Some(answer) => (StatusCode::OK, Json(answer)),
                None => (
                    StatusCode::NOT_FOUND,
                    Json(
                        json!({"error_code": 40401, "message": format!("Subject '{subject}' not found.")}),
                    ),
                ),
            }
        }
        let shared = Arc::new(Shared::default());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let url = format!("http://{}", listener.local_addr()?);
        let app = axum::Router::new()
            .route("/schemas/ids/{id}", axum::routing::get(by_id))
            .route(
                "/subjects/{subject}/versions/{version}",
                axum::routing::get(by_subject),
            )
            .with_state(Arc::clone(&shared));
        runtime.spawn(async move { axum::serve(listener, app).await });
        Ok(Registry {
            url,
            shared,
            _runtime: runtime,
        })
    }

    /// Registers an Avro schema under `id`.
    pub fn register(&self, id: u32, schema: &str) {
        let answer = json!({ "schema": schema });
        lock(&self.shared.schemas).insert(id, answer);
    }

    /// Registers a schema of another type (`PROTOBUF`, `JSON`) under `id`.
    pub fn register_typed(&self, id: u32, kind: &str, schema: &str) {
        let answer = json!({ "schema": schema, "schemaType": kind });
        lock(&self.shared.schemas).insert(id, answer);
    }

    /// Registers a schema of type `kind` under `id` that references `references` (name, subject,
    /// version), each registered with [`Self::register_subject`].
    pub fn register_with_references(
        &self,
        id: u32,
        kind: &str,
        schema: &str,
        references: &[(&str, &str, i64)],
    ) {
        let refs: Vec<Value> = references
            .iter()
            .map(|(name, subject, version)| json!({"name": name, "subject": subject, "version": version}))
            .collect();
        let answer = json!({ "schema": schema, "schemaType": kind, "references": refs });
        lock(&self.shared.schemas).insert(id, answer);
    }

    /// Registers `schema` (of type `kind`) as `version` of `subject`.
    pub fn register_subject(&self, subject: &str, version: i64, kind: &str, schema: &str) {
        let answer = json!({
            "subject": subject, "version": version, "schema": schema, "schemaType": kind,
        });
        lock(&self.shared.subjects).insert((subject.to_owned(), version), answer);
    }

    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// Lookups of `id` so far (including those answered 503).
    pub fn lookups(&self, id: u32) -> usize {
        self.shared
            .lookups
            .lock()
            .unwrap()
            .get(&id)
            .copied()
            .unwrap_or(0)
    }
}

/// A poisoned lock still holds usable maps.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
