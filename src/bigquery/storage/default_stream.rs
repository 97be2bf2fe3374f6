//! At-least-once delivery through each table's `_default` stream (`bigquery.delivery =
//! "at_least_once"`, and `bqsink replay`): one connection per table, requests pipelined on it, rows
//! committed on append. A batch is split into requests of at most [`MAX_REQUEST_ROW_BYTES`]; a
//! request that failed while another went in leaves its rows `stopped`, to be sent again at once.

use std::collections::HashMap;
use std::sync::Arc;

use bqsink_actors::bigquery::{BqError, InsertAllResponse};
use bqsink_actors::stage::transform::TableRef;
use googleapis_tonic_google_cloud_bigquery_storage_v1::google::cloud::bigquery::storage::v1::{
    append_rows_request::{ProtoData, Rows},
    append_rows_response::Response,
    AppendRowsRequest, ProtoRows,
};

use super::connection::Connection;
use super::{row_error, status, Encoded, Format, Inner, MAX_REQUEST_ROW_BYTES};

impl Inner {
    /// The name of `table`'s `_default` stream.
    pub(super) fn default_stream(&self, table: &TableRef) -> String {
        format!(
            "projects/{}/datasets/{}/tables/{}/streams/_default",
            self.project, table.dataset, table.table
        )
    }

    /// The open connection to `table`'s default stream for `format`, or a new one, and the token
    /// it was opened with.
    async fn connection(
        &self,
        table: &TableRef,
        format: &Format,
        stream: &str,
    ) -> Result<(Arc<Connection>, Option<String>), BqError> {
        if let Some(c) = self.state().connections.get(table) {
            if c.is_open() && c.format_version == format.version {
                return Ok((Arc::clone(c), None));
            }
        }
        let metadata = self.metadata(stream).await?;
        let token = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let mut state = self.state();
        let c = Arc::new(Connection::open(
            &self.handle(),
            self.write.clone(),
            metadata,
            format.version,
        ));
        state.connections.insert(table.clone(), Arc::clone(&c));
        Ok((c, token))
    }

    /// Appends the encoded rows to the table's default stream, at most [`MAX_REQUEST_ROW_BYTES`]
    /// a request, and reports per row as insertAll does.
    pub(super) async fn append(
        &self,
        table: &TableRef,
        format: Arc<Format>,
        encoded: Encoded,
    ) -> Result<InsertAllResponse, BqError> {
        let mut response = InsertAllResponse {
            insert_errors: encoded.failed,
        };
        if encoded.rows.is_empty() {
            return Ok(response);
        }
        let stream = self.default_stream(table);
        let (conn, token) = self.connection(table, &format, &stream).await?;
        // Requests of at most MAX_REQUEST_ROW_BYTES each.
        let mut chunks: Vec<(std::ops::Range<usize>, _)> = Vec::new();
        let mut start = 0;
        while start < encoded.rows.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < encoded.rows.len()
                && (end == start || bytes + encoded.rows[end].len() + 8 <= MAX_REQUEST_ROW_BYTES)
            {
                bytes += encoded.rows[end].len() + 8;
                end += 1;
            }
            let request = AppendRowsRequest {
                write_stream: stream.clone(),
                rows: Some(Rows::ProtoRows(ProtoData {
                    writer_schema: None,
                    rows: Some(ProtoRows {
                        serialized_rows: encoded.rows[start..end].to_vec(),
                    }),
                })),
                ..Default::default()
            };
            chunks.push((start..end, request));
            start = end;
        }
        let mut written_any = false;
        let mut first_error: Option<BqError> = None;
        let stopped = |range: std::ops::Range<usize>, response: &mut InsertAllResponse| {
            for i in range {
                response
                    .insert_errors
                    .push(row_error(encoded.index[i], "stopped", ""));
            }
        };
        // One request after the other (a batch is split only past 9 MB).
        for (range, request) in chunks {
            let answer = conn
                .call(request, format.rows.descriptor(), self.timeout)
                .await;
            match answer {
                Ok(r) => {
                    if r.updated_schema.is_some() {
                        // Taken up with the next batch (from tables.get, like the first).
                        self.state().formats.remove(table);
                    }
                    match r.response {
                        Some(Response::Error(e)) if !r.row_errors.is_empty() => {
                            // The request failed for these rows; the others can be sent again.
                            let bad: HashMap<usize, String> = r
                                .row_errors
                                .iter()
                                .map(|e| (range.start + e.index.max(0) as usize, e.message.clone()))
                                .collect();
                            tracing::debug!(table = %table, rows = bad.len(), status = %e.message, "row errors");
                            for i in range.clone() {
                                match bad.get(&i) {
                                    Some(m) => response.insert_errors.push(row_error(
                                        encoded.index[i],
                                        "invalid",
                                        m,
                                    )),
                                    None => response.insert_errors.push(row_error(
                                        encoded.index[i],
                                        "stopped",
                                        "",
                                    )),
                                }
                            }
                        }
                        Some(Response::Error(e)) => {
                            first_error.get_or_insert(status::from_rpc(&e));
                            stopped(range, &mut response);
                        }
                        _ => written_any = true,
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                    stopped(range, &mut response);
                }
            }
        }
        match first_error {
            // Nothing went in: the whole call failed (a sink failure).
            Some(e) if !written_any => {
                self.after_error(table, &e, token.as_deref()).await;
                Err(e)
            }
            // Some requests went in; the others' rows are "stopped" and sent again at once.
            _ => Ok(response),
        }
    }
}
