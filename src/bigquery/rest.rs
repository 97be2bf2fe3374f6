//! The BigQuery adapter over reqwest, against `bigquery.endpoint`: `tabledata.insertAll`, and the
//! table calls of table management (`tables.get`, `tables.insert`, `tables.patch`,
//! `datasets.insert`). Each request carries a bearer token from [`super::auth`]; a 401 gets the token
//! replaced and the request sent once more.

use std::sync::Arc;
use std::time::Duration;

use bqsink_actors::bigquery::{BigQuery, BqError, InsertAllResponse};
use bqsink_actors::config::BigQueryConfig;
use bqsink_actors::stage::schema::FieldSchema;
use bqsink_actors::stage::transform::TableRef;
use bqsink_actors::tables::TableDefinition;
use bytes::Bytes;
use futures::future::BoxFuture;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{self, TokenSource};

/// A BigQuery REST client for one project.
#[derive(Clone)]
pub struct RestClient {
    http: reqwest::Client,
    base: String,
    project: String,
    auth: Arc<dyn TokenSource>,
}

/// Errors building the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot build the HTTP client for BigQuery")]
    Http(#[source] reqwest::Error),
    #[error("cannot set up authentication for BigQuery")]
    Auth(#[from] auth::AuthError),
    #[error("bad BigQuery endpoint {0}")]
    Endpoint(String),
}

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
    /// A client authenticating as `bigquery.auth` says (see [`auth::resolve`]).
    pub fn new(config: &BigQueryConfig) -> Result<Self, ClientError> {
        let auth = auth::from_config(config)?;
        Self::with_auth(config, auth)
    }

    /// A client taking its tokens from `auth`.
    pub fn with_auth(
        config: &BigQueryConfig,
        auth: Arc<dyn TokenSource>,
    ) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(config.max_concurrent_requests.max(1))
            .build()
            .map_err(ClientError::Http)?;
        tracing::debug!(auth = %auth.describe(), endpoint = %config.endpoint, "BigQuery client");
        Ok(Self {
            http,
            base: config.endpoint.trim_end_matches('/').to_owned(),
            project: config.project.clone(),
            auth,
        })
    }

    /// What the tokens come from, for logs.
    pub fn auth_description(&self) -> String {
        self.auth.describe()
    }

    fn datasets_url(&self) -> String {
        format!(
            "{}/bigquery/v2/projects/{}/datasets",
            self.base, self.project
        )
    }

    fn tables_url(&self, dataset: &str) -> String {
        format!("{}/{dataset}/tables", self.datasets_url())
    }

    fn table_url(&self, table: &TableRef) -> String {
        format!("{}/{}", self.tables_url(&table.dataset), table.table)
    }

    fn insert_all_url(&self, table: &TableRef) -> String {
        format!("{}/insertAll", self.table_url(table))
    }

    /// Sends one request with the current token; after a 401, once more with a new token.
    /// Returns the status and body of a 2xx answer, the answer as a [`BqError`] otherwise.
    fn send(
        &self,
        method: Method,
        url: String,
        body: Option<Bytes>,
    ) -> BoxFuture<'static, Result<Bytes, BqError>> {
        let (http, auth) = (self.http.clone(), Arc::clone(&self.auth));
        Box::pin(async move {
            let mut token = auth.token().await?;
            let mut refreshed = false;
            loop {
                let mut req = http.request(method.clone(), &url);
                if let Some(body) = &body {
                    req = req
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body.clone());
                }
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                let resp = req.send().await.map_err(transport_error)?;
                let status = resp.status();
                let retry_after = retry_after(resp.headers());
                let bytes = resp.bytes().await.map_err(transport_error)?;
                if status.is_success() {
                    return Ok(bytes);
                }
                if let (StatusCode::UNAUTHORIZED, Some(rejected), false) =
                    (status, token.as_deref(), refreshed)
                {
                    tracing::warn!(url = %url, "BigQuery refused the OAuth token (401); getting a new one");
                    token = auth.refresh(rejected).await?;
                    refreshed = true;
                    continue;
                }
                return Err(http_error(status, &bytes, retry_after));
            }
        })
    }
}

/// The `Retry-After` header in seconds (BigQuery and Google front ends send seconds, not dates).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let text = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    text.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// A non-2xx answer as a [`BqError`], with BigQuery's reason and message when the body has them.
fn http_error(status: StatusCode, bytes: &[u8], retry_after: Option<Duration>) -> BqError {
    let detail = serde_json::from_slice::<ErrorBody>(bytes)
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
    BqError::Http {
        status: status.as_u16(),
        reason,
        message,
        retry_after,
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

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, BqError> {
    serde_json::from_slice(bytes)
        .map_err(|e| BqError::Decode(format!("{e} in {} bytes", bytes.len())))
}

/// `Ok(false)` for 409 (already exists).
fn created(r: Result<Bytes, BqError>) -> Result<bool, BqError> {
    match r {
        Ok(_) => Ok(true),
        Err(BqError::Http { status: 409, .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The body of `tables.insert`.
pub fn table_resource(project: &str, def: &TableDefinition) -> Value {
    let mut v = json!({
        "tableReference": {"projectId": project, "datasetId": def.table.dataset, "tableId": def.table.table},
        "schema": {"fields": def.schema},
    });
    if let Some(p) = &def.time_partitioning {
        let mut tp = json!({"type": p.kind.as_str()});
        if let Some(f) = &p.field {
            tp["field"] = json!(f);
        }
        v["timePartitioning"] = tp;
    }
    if !def.clustering.is_empty() {
        v["clustering"] = json!({"fields": def.clustering});
    }
    v
}

impl BigQuery for RestClient {
    fn insert_all(
        &self,
        table: &TableRef,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<InsertAllResponse, BqError>> {
        let send = self.send(Method::POST, self.insert_all_url(table), Some(body.into()));
        Box::pin(async move { decode(&send.await?) })
    }

    fn get_table(
        &self,
        table: &TableRef,
    ) -> BoxFuture<'static, Result<Option<Vec<FieldSchema>>, BqError>> {
        #[derive(Deserialize, Default)]
        struct Schema {
            #[serde(default)]
            fields: Vec<FieldSchema>,
        }
        #[derive(Deserialize)]
        struct Table {
            #[serde(default)]
            schema: Schema,
        }
        let send = self.send(Method::GET, self.table_url(table), None);
        Box::pin(async move {
            match send.await {
                Ok(bytes) => Ok(Some(decode::<Table>(&bytes)?.schema.fields)),
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn create_table(&self, def: &TableDefinition) -> BoxFuture<'static, Result<bool, BqError>> {
        let body = table_resource(&self.project, def).to_string();
        let send = self.send(
            Method::POST,
            self.tables_url(&def.table.dataset),
            Some(body.into()),
        );
        Box::pin(async move { created(send.await) })
    }

    fn create_dataset(&self, dataset: &str) -> BoxFuture<'static, Result<bool, BqError>> {
        let body = json!({"datasetReference": {"projectId": self.project, "datasetId": dataset}});
        let send = self.send(
            Method::POST,
            self.datasets_url(),
            Some(body.to_string().into()),
        );
        Box::pin(async move { created(send.await) })
    }

    fn patch_schema(
        &self,
        table: &TableRef,
        schema: Vec<FieldSchema>,
    ) -> BoxFuture<'static, Result<(), BqError>> {
        let body = json!({"schema": {"fields": schema}});
        let send = self.send(
            Method::PATCH,
            self.table_url(table),
            Some(body.to_string().into()),
        );
        Box::pin(async move { send.await.map(drop) })
    }
}
