//! A minimal OTLP/HTTP trace receiver for tests: decodes each `ExportTraceServiceRequest`
//! (protobuf) posted to `/v1/traces` and keeps the spans.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use serde_json::Value;

/// One received span, with ids as lowercase hex.
#[derive(Debug, Clone)]
pub struct RecvSpan {
    pub name: String,
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub attrs: HashMap<String, Value>,
    /// (trace id, span id) of each link.
    pub links: Vec<(String, String)>,
}

impl RecvSpan {
    pub fn int(&self, key: &str) -> i64 {
        self.attrs
            .get(key)
            .and_then(Value::as_i64)
            .unwrap_or_else(|| {
                panic!(
                    "span {} has no integer attribute {key}: {:?}",
                    self.name, self.attrs
                )
            })
    }

    pub fn str(&self, key: &str) -> &str {
        self.attrs
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_else(|| {
                panic!(
                    "span {} has no string attribute {key}: {:?}",
                    self.name, self.attrs
                )
            })
    }
}

/// The receiver; stops when dropped.
pub struct Receiver {
    pub url: String,
    spans: Arc<Mutex<Vec<RecvSpan>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn value(v: &KeyValue) -> Value {
    match v.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => Value::from(s.clone()),
        Some(Any::IntValue(i)) => Value::from(*i),
        Some(Any::BoolValue(b)) => Value::from(*b),
        Some(Any::DoubleValue(d)) => Value::from(*d),
        other => Value::from(format!("{other:?}")),
    }
}

async fn traces(State(spans): State<Arc<Mutex<Vec<RecvSpan>>>>, body: Bytes) -> impl IntoResponse {
    let req =
        ExportTraceServiceRequest::decode(body).expect("a protobuf ExportTraceServiceRequest");
    let mut got = Vec::new();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
            .map(value)
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                got.push(RecvSpan {
                    name: s.name.clone(),
                    service: service.clone(),
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    attrs: s
                        .attributes
                        .iter()
                        .map(|a| (a.key.clone(), value(a)))
                        .collect(),
                    links: s
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                });
            }
        }
    }
    spans.lock().unwrap().extend(got);
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

impl Receiver {
    pub fn start() -> Receiver {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/v1/traces", post(traces))
            .with_state(Arc::clone(&spans));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            })
        });
        Receiver {
            url,
            spans,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<RecvSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// Spans received so far with this name.
    pub fn named(&self, name: &str) -> Vec<RecvSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.name == name)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A W3C `traceparent` value for trace `i` (sampled), and its trace and span ids.
pub fn traceparent(i: u64) -> (String, String, String) {
    let trace_id = format!("{:016x}{:016x}", 0x4bf9_2f35_77b3_4da6u64, i + 1);
    let span_id = format!("{:016x}", 0x00f0_67aa_0ba9_0000u64 + i + 1);
    (format!("00-{trace_id}-{span_id}-01"), trace_id, span_id)
}

/// Sends `payload` to partition 0 of `topic` with the `traceparent` header of trace `i`.
pub fn send_traced(
    p: &rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    topic: &str,
    payload: &str,
    i: u64,
) {
    use rdkafka::message::{Header, OwnedHeaders};
    let (tp, _, _) = traceparent(i);
    let r = rdkafka::producer::BaseRecord::<(), str>::to(topic)
        .partition(0)
        .payload(payload)
        .headers(OwnedHeaders::new().insert(Header {
            key: "traceparent",
            value: Some(tp.as_str()),
        }));
    p.send(r).map_err(|(e, _)| e).unwrap();
}
