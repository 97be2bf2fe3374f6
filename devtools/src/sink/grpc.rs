//! The sink's BigQuery Storage Write API (gRPC over plaintext HTTP/2): `AppendRows` on a table's
//! `_default` stream, stored in the same tables as insertAll rows and subject to the same hook, and
//! BUFFERED streams (`CreateWriteStream`, appends at offsets, `FlushRows`, `FinalizeWriteStream`;
//! see `streams.rs`).
//!
//! Rows are decoded with the connection's writer schema (the `DescriptorProto` of its first
//! request) into JSON objects: strings as strings, integers and floats as numbers (a TIMESTAMP is
//! its microseconds, a DATE its days), bytes as base64, nested messages as objects. As BigQuery: a
//! request without a writer schema on a new connection, or whose descriptor names a field the table
//! lacks (managed tables), fails as a whole (`INVALID_ARGUMENT`); a missing table is `NOT_FOUND`;
//! the hook's replies map to gRPC statuses (503 → `UNAVAILABLE`, 429 → `RESOURCE_EXHAUSTED`, …) and
//! [`Reply::RejectRows`] to `row_errors`. No code is generated for the server side: the one service
//! is routed by hand below.

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use googleapis_tonic_google_cloud_bigquery_storage_v1::google::cloud::bigquery::storage::v1::{
    append_rows_request::Rows, append_rows_response, row_error::RowErrorCode, write_stream,
    AppendRowsRequest, AppendRowsResponse, CreateWriteStreamRequest, FinalizeWriteStreamRequest,
    FinalizeWriteStreamResponse, FlushRowsRequest, FlushRowsResponse, GetWriteStreamRequest,
    RowError, WriteStream,
};
use googleapis_tonic_google_cloud_bigquery_storage_v1::google::rpc;
use prost_types::DescriptorProto;
use tonic::{Code, Status};

use super::facts::{FactFields, Facts};
use super::proto_rows::decode_row;
use super::streams::{self, StreamRows};
use super::*;

const SERVICE: &str = "/google.cloud.bigquery.storage.v1.BigQueryWrite/";

/// The `BigQueryWrite` service over the sink's state.
#[derive(Clone)]
pub(super) struct WriteService {
    pub(super) shared: Arc<Shared>,
}

impl tonic::server::NamedService for WriteService {
    const NAME: &'static str = "google.cloud.bigquery.storage.v1.BigQueryWrite";
}

impl tower_service::Service<http::Request<tonic::body::Body>> for WriteService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let path = req.uri().path().to_owned();
        let method = path.strip_prefix(SERVICE).unwrap_or("");
        match method {
            "AppendRows" => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.streaming(AppendRowsSvc { shared }, req).await)
            }),
            "CreateWriteStream" => unary(req, move |m: CreateWriteStreamRequest| {
                let name = streams::create(&shared, &m.parent)?;
                Ok(WriteStream {
                    name,
                    r#type: write_stream::Type::Buffered as i32,
                    ..Default::default()
                })
            }),
            "GetWriteStream" => unary(req, move |m: GetWriteStreamRequest| {
                match shared.lock().streams.contains_key(&m.name) {
                    true => Ok(WriteStream {
                        name: m.name,
                        r#type: write_stream::Type::Buffered as i32,
                        ..Default::default()
                    }),
                    false => Err(Status::not_found(format!("Stream not found: {}", m.name))),
                }
            }),
            "FinalizeWriteStream" => unary(req, move |m: FinalizeWriteStreamRequest| {
                let row_count = streams::finalize(&shared, &m.name)?;
                Ok(FinalizeWriteStreamResponse { row_count })
            }),
            "FlushRows" => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(FlushSvc { shared }, req).await)
            }),
            _ => {
                let status = Status::unimplemented(format!("the local sink does not serve {path}"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// Serves one unary call with `f`.
fn unary<Req, Resp, F>(
    req: http::Request<tonic::body::Body>,
    f: F,
) -> BoxFuture<'static, Result<http::Response<tonic::body::Body>, Infallible>>
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    F: FnOnce(Req) -> Result<Resp, Status> + Send + 'static,
{
    struct Svc<F>(Option<F>);
    impl<Req, Resp, F> tonic::server::UnaryService<Req> for Svc<F>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        F: FnOnce(Req) -> Result<Resp, Status> + Send + 'static,
    {
        type Response = Resp;
        type Future = BoxFuture<'static, Result<tonic::Response<Resp>, Status>>;
        fn call(&mut self, request: tonic::Request<Req>) -> Self::Future {
            let result = match self.0.take() {
                Some(f) => f(request.into_inner()).map(tonic::Response::new),
                None => Err(Status::internal("called twice")),
            };
            Box::pin(async move { result })
        }
    }
    Box::pin(async move {
        let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<Resp, Req>::default());
        Ok(grpc.unary(Svc(Some(f)), req).await)
    })
}

/// `FlushRows`, through the flush hook.
struct FlushSvc {
    shared: Arc<Shared>,
}

impl tonic::server::UnaryService<FlushRowsRequest> for FlushSvc {
    type Response = FlushRowsResponse;
    type Future = BoxFuture<'static, Result<tonic::Response<FlushRowsResponse>, Status>>;

    fn call(&mut self, request: tonic::Request<FlushRowsRequest>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let m = request.into_inner();
            let offset = m
                .offset
                .ok_or_else(|| Status::invalid_argument("FlushRows without an offset"))?;
            let hook = shared.lock().flush_hook.clone();
            let mut reply = hook.map_or(Reply::Accept, |h| h(&m.write_stream, offset));
            while let Reply::Delay(wait, inner) = reply {
                tokio::time::sleep(wait).await;
                reply = *inner;
            }
            match reply {
                Reply::Fail { status, reason } => Err(Status::new(
                    grpc_code(status),
                    format!("injected failure: {reason}"),
                )),
                Reply::InBand { code, message } => Err(Status::new(Code::from(code), message)),
                _ => {
                    let offset = streams::flush(&shared, &m.write_stream, offset)?;
                    Ok(tonic::Response::new(FlushRowsResponse { offset }))
                }
            }
        })
    }
}

struct AppendRowsSvc {
    shared: Arc<Shared>,
}

/// What one `AppendRows` connection remembers.
struct Connection {
    shared: Arc<Shared>,
    schema: Option<DescriptorProto>,
    /// Where the counted facts are in the rows of `schema` (when the sink keeps no rows).
    facts: Option<FactFields>,
    authorization: Option<String>,
    done: bool,
}

impl tonic::server::StreamingService<AppendRowsRequest> for AppendRowsSvc {
    type Response = AppendRowsResponse;
    type ResponseStream = BoxStream<'static, Result<AppendRowsResponse, Status>>;
    type Future = BoxFuture<'static, Result<tonic::Response<Self::ResponseStream>, Status>>;

    fn call(
        &mut self,
        request: tonic::Request<tonic::Streaming<AppendRowsRequest>>,
    ) -> Self::Future {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let conn = Connection {
            shared: Arc::clone(&self.shared),
            schema: None,
            facts: None,
            authorization,
            done: false,
        };
        let inbound = request.into_inner();
        let responses = stream::unfold((inbound, conn), |(mut inbound, mut conn)| async move {
            if conn.done {
                return None;
            }
            let answer = match inbound.message().await {
                Ok(Some(req)) => conn.append(req).await,
                Ok(None) => return None,
                Err(status) => Err(status),
            };
            // A status ends the call, as a stream-level error does at BigQuery.
            conn.done = answer.is_err();
            Some((answer, (inbound, conn)))
        });
        Box::pin(async move { Ok(tonic::Response::new(responses.boxed())) })
    }
}

/// The answer to a request whose row `index` cannot be decoded.
fn undecodable(stream: &str, index: usize, e: &str) -> AppendRowsResponse {
    let error = RowError {
        index: index as i64,
        code: RowErrorCode::FieldsError as i32,
        message: format!("cannot decode the row: {e}"),
    };
    in_band(stream, Code::InvalidArgument, "row errors", vec![error])
}

/// An in-band error answer (the connection stays open).
fn in_band(
    stream: &str,
    code: Code,
    message: &str,
    row_errors: Vec<RowError>,
) -> AppendRowsResponse {
    AppendRowsResponse {
        write_stream: stream.to_owned(),
        row_errors,
        response: Some(append_rows_response::Response::Error(rpc::Status {
            code: code as i32,
            message: message.to_owned(),
            details: Vec::new(),
        })),
        ..Default::default()
    }
}

/// An HTTP status of the hook as the gRPC code BigQuery's Storage Write API gives for it.
fn grpc_code(status: u16) -> Code {
    match status {
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::AlreadyExists,
        429 => Code::ResourceExhausted,
        504 => Code::DeadlineExceeded,
        503 => Code::Unavailable,
        _ => Code::Internal,
    }
}

/// `projects/p/datasets/d/tables/t/streams/s` → (`d.t`, `s`).
fn parse_stream(name: &str) -> Option<(String, &str)> {
    let parts: Vec<&str> = name.split('/').collect();
    match parts.as_slice() {
        ["projects", _, "datasets", d, "tables", t, "streams", s] => Some((format!("{d}.{t}"), s)),
        _ => None,
    }
}

impl Connection {
    async fn append(&mut self, req: AppendRowsRequest) -> Result<AppendRowsResponse, Status> {
        let stream = req.write_stream.clone();
        let Some((table, stream_id)) = parse_stream(&stream) else {
            return Err(Status::not_found(format!("Stream not found: {stream}")));
        };
        let default = stream_id == "_default";
        if !default && !self.shared.lock().streams.contains_key(&stream) {
            return Err(Status::not_found(format!("Stream not found: {stream}")));
        }
        if default && req.offset.is_some() {
            return Ok(in_band(
                &stream,
                Code::InvalidArgument,
                "the _default stream does not take offsets",
                vec![],
            ));
        }
        let Some(Rows::ProtoRows(data)) = req.rows else {
            return Ok(in_band(
                &stream,
                Code::InvalidArgument,
                "only proto rows are served",
                vec![],
            ));
        };
        if let Some(schema) = data.writer_schema.and_then(|s| s.proto_descriptor) {
            self.schema = Some(schema);
            self.facts = None;
        }
        let Some(schema) = &self.schema else {
            return Ok(in_band(
                &stream,
                Code::InvalidArgument,
                "proto_rows sent without a writer_schema on this connection",
                vec![],
            ));
        };
        let serialized = data.rows.map(|r| r.serialized_rows).unwrap_or_default();
        let mut decoded = StreamRows::empty(&self.shared.options);
        let has_hook = self.shared.lock().hook.is_some();
        if let (StreamRows::Facts(facts), false) = (&mut decoded, has_hook) {
            // Counted only (demo, benchmarks): the id and timestamp, read in one pass.
            if self.facts.is_none() {
                self.facts = FactFields::new(schema, self.shared.options.id_pointer.as_deref());
            }
            if let Some(fields) = &self.facts {
                let mut buf = Vec::new();
                for (i, bytes) in serialized.iter().enumerate() {
                    match fields.read(bytes, &mut buf) {
                        Ok(f) => facts.push(f),
                        Err(e) => return Ok(undecodable(&stream, i, &e)),
                    }
                }
            }
        }
        let mut rows = Vec::new();
        if decoded.len() < serialized.len() {
            rows.reserve(serialized.len());
            for (i, bytes) in serialized.iter().enumerate() {
                match decode_row(schema, bytes) {
                    Ok(json) => rows.push(json!({ "json": json })),
                    Err(e) => return Ok(undecodable(&stream, i, &e)),
                }
            }
        }
        let (mut reply, hook, managed) = {
            let mut inner = self.shared.lock();
            inner.requests += 1;
            let hook = inner.hook.clone().map(|h| (h, inner.requests - 1));
            (Reply::Accept, hook, inner.managed)
        };
        if let Some((hook, seq)) = hook {
            reply = hook(&Request {
                table: &table,
                rows: &rows,
                authorization: self.authorization.as_deref(),
                seq,
                stream: Some(stream_id),
                offset: req.offset,
            });
        }
        while let Reply::Delay(wait, inner) = reply {
            tokio::time::sleep(wait).await;
            reply = *inner;
        }
        match reply {
            Reply::Accept | Reply::Delay(..) => {}
            Reply::Fail { status, reason } => {
                return Err(Status::new(
                    grpc_code(status),
                    format!("injected failure: {reason}"),
                ))
            }
            Reply::InBand { code, message } => {
                return Ok(in_band(&stream, Code::from(code), &message, vec![]))
            }
            Reply::RejectRows(bad) => {
                let errors = bad
                    .iter()
                    .map(|&i| RowError {
                        index: i as i64,
                        code: RowErrorCode::FieldsError as i32,
                        message: "injected row error".into(),
                    })
                    .collect();
                return Ok(in_band(
                    &stream,
                    Code::InvalidArgument,
                    "row errors",
                    errors,
                ));
            }
        }
        if managed {
            let Some(def) = self.shared.lock().definitions.get(&table).cloned() else {
                return Err(Status::not_found(format!("Not found: Table sink:{table}")));
            };
            let names: HashSet<String> = tables::schema_of(&def)
                .iter()
                .map(|f| f.name.to_ascii_lowercase())
                .collect();
            let extra: Vec<&str> = schema
                .field
                .iter()
                .map(|f| f.name())
                .filter(|n| !names.contains(&n.to_ascii_lowercase()))
                .collect();
            if !extra.is_empty() {
                let message = format!(
                    "Input schema has more fields than BigQuery schema, extra fields: '{}'",
                    extra.join(",")
                );
                return Ok(in_band(&stream, Code::InvalidArgument, &message, vec![]));
            }
        }
        if let StreamRows::Facts(facts) = &mut decoded {
            if facts.is_empty() {
                let pointer = self.shared.options.id_pointer.as_deref();
                *facts = rows.iter().map(|r| Facts::of_row(r, pointer)).collect();
            }
        } else {
            decoded = StreamRows::Whole(rows);
        }
        if default {
            decoded.store(&self.shared, &table);
        } else if let Err((code, message)) =
            streams::append(&self.shared, &stream, req.offset, decoded)?
        {
            return Ok(in_band(&stream, code, &message, vec![]));
        }
        Ok(AppendRowsResponse {
            write_stream: stream,
            response: Some(append_rows_response::Response::AppendResult(
                append_rows_response::AppendResult { offset: req.offset },
            )),
            ..Default::default()
        })
    }
}
