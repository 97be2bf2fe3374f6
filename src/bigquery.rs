//! The BigQuery adapter: `tabledata.insertAll` over reqwest, against `bigquery.endpoint`.

use std::time::Duration;

use bqsink_actors::bigquery::{BigQuery, BqError, InsertAllResponse};
use bqsink_actors::config::BigQueryConfig;
use bqsink_actors::stage::transform::TableRef;
use futures::future::BoxFuture;
use serde::Deserialize;

/// A BigQuery REST client for one project.
#[derive(Clone)]
pub struct RestClient {
    http: reqwest::Client,
    base: String,
    project: String,
    token: Option<String>,
}

/// Errors building the client.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client for BigQuery")]
pub struct ClientError(#[source] reqwest::Error);

/// `{"error": {...}}`, the body of a non-200 answer.
#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: ErrorDetail,
}

#[derive(Deserialize, Default)]
struct ErrorDetail {
    #[serde(default)]
    message: String,
    #[serde(default)]
    errors: Vec<bqsink_actors::bigquery::ErrorProto>,
    #[serde(default)]
    status: String,
}

impl RestClient {
    pub fn new(config: &BigQueryConfig) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(config.max_concurrent_requests.max(1))
            .build()
            .map_err(ClientError)?;
        Ok(Self {
            http,
            base: config.endpoint.trim_end_matches('/').to_owned(),
            project: config.project.clone(),
            token: config.token.clone().filter(|t| !t.is_empty()),
        })
    }

    fn insert_all_url(&self, table: &TableRef) -> String {
        format!(
            "{}/bigquery/v2/projects/{}/datasets/{}/tables/{}/insertAll",
            self.base, self.project, table.dataset, table.table
        )
    }
}

/// A reqwest error as a [`BqError`], keeping its chain of causes.
fn transport_error(e: reqwest::Error) -> BqError {
    if e.is_timeout() {
        return BqError::Timeout;
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    BqError::Transport(text)
}

impl BigQuery for RestClient {
    fn insert_all(
        &self,
        table: &TableRef,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<InsertAllResponse, BqError>> {
        let mut req = self
            .http
            .post(self.insert_all_url(table))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        Box::pin(async move {
            let resp = req.send().await.map_err(transport_error)?;
            let status = resp.status();
            let bytes = resp.bytes().await.map_err(transport_error)?;
            if status.is_success() {
                return serde_json::from_slice(&bytes)
                    .map_err(|e| BqError::Decode(format!("{e} in {} bytes", bytes.len())));
            }
            let detail = serde_json::from_slice::<ErrorBody>(&bytes)
                .unwrap_or_default()
                .error;
            let reason = detail
                .errors
                .first()
                .map(|e| e.reason.clone())
                .unwrap_or(detail.status);
            let message = if detail.message.is_empty() {
                String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).into_owned()
            } else {
                detail.message
            };
            Err(BqError::Http {
                status: status.as_u16(),
                reason,
                message,
            })
        })
    }
}
