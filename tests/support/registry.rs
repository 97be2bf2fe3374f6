//! A Schema Registry inside the test: Confluent's REST API for what bqsink asks
//! (`GET /schemas/ids/{id}`: 200 with the schema, 404 with error code 40403), which can be taken
//! down (503) and counts lookups per id.
#![allow(dead_code)]

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
    lookups: Mutex<HashMap<u32, usize>>,
    down: AtomicBool,
}

pub struct Registry {
    pub url: String,
    shared: Arc<Shared>,
    _runtime: tokio::runtime::Runtime,
}

impl Registry {
    pub fn start() -> Self {
        async fn by_id(
            State(shared): State<Arc<Shared>>,
            Path(id): Path<u32>,
        ) -> (StatusCode, Json<Value>) {
            *shared.lookups.lock().unwrap().entry(id).or_default() += 1;
            if shared.down.load(Ordering::SeqCst) {
                let body = json!({"error_code": 50302, "message": "backend down"});
                return (StatusCode::SERVICE_UNAVAILABLE, Json(body));
            }
            match shared.schemas.lock().unwrap().get(&id) {
                Some(answer) => (StatusCode::OK, Json(answer.clone())),
                None => (
                    StatusCode::NOT_FOUND,
                    Json(json!({"error_code": 40403, "message": format!("Schema {id} not found")})),
                ),
            }
        }
        let shared = Arc::new(Shared::default());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/schemas/ids/{id}", axum::routing::get(by_id))
            .with_state(Arc::clone(&shared));
        runtime.spawn(async move { axum::serve(listener, app).await });
        Registry {
            url,
            shared,
            _runtime: runtime,
        }
    }

    /// Registers an Avro schema under `id`.
    pub fn register(&self, id: u32, schema: &str) {
        let answer = json!({ "schema": schema });
        self.shared.schemas.lock().unwrap().insert(id, answer);
    }

    /// Registers a schema of another type (`PROTOBUF`, `JSON`) under `id`.
    pub fn register_typed(&self, id: u32, kind: &str, schema: &str) {
        let answer = json!({ "schema": schema, "schemaType": kind });
        self.shared.schemas.lock().unwrap().insert(id, answer);
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
