//! The Schema Registry adapter: Confluent's REST API (`GET /schemas/ids/{id}`), which Karapace and
//! Redpanda's registry serve too, behind `bqsink_actors::registry::SchemaRegistry`.
//!
//! What an answer means for the records naming the id:
//!
//! | answer | meaning |
//! |---|---|
//! | 200 with an Avro schema (`schemaType` absent or `AVRO`) | the schema |
//! | 200 with another `schemaType` | record failure `not_avro_schema` |
//! | 404 with the registry's `error_code` 40403 | record failure `unknown_schema_id` |
//! | any other 404 (not a registry at `registry.url`?), 401/403, 429, 5xx, timeout, no connection | sink failure: retried, nothing failed or committed |
//!
//! Hand-written rather than `schema_registry_converter` (the issue's suggestion): its 4.0 release
//! is built on reqwest 0.11 (bqsink uses 0.13, so a second HTTP stack) and decodes through its own
//! clients, while bqsink needs one GET whose answers it classifies as record or sink failures.
//!
//! Depends on: `bqsink_actors` (the port and the config) and reqwest only.

use std::time::Duration;

use bqsink_actors::config::RegistryConfig;
use bqsink_actors::registry::{RegistryError, SchemaRegistry};
use futures::future::BoxFuture;
use serde::Deserialize;

/// The registry over HTTP.
pub struct HttpRegistry {
    client: reqwest::Client,
    base: String,
    config: RegistryConfig,
}

/// Errors setting up the client.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the Schema Registry's HTTP client")]
pub struct RegistrySetupError(#[source] reqwest::Error);

/// `GET /schemas/ids/{id}`'s answer.
#[derive(Deserialize)]
struct SchemaAnswer {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
}

/// The registry's error body.
#[derive(Deserialize)]
struct ErrorAnswer {
    error_code: i64,
    #[serde(default)]
    message: String,
}

impl HttpRegistry {
    /// The registry of `registry.url`; `None` when it is empty.
    pub fn from_config(config: &RegistryConfig) -> Result<Option<Self>, RegistrySetupError> {
        if config.url.is_empty() {
            return Ok(None);
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .build()
            .map_err(RegistrySetupError)?;
        Ok(Some(Self {
            client,
            base: config.url.trim_end_matches('/').to_owned(),
            config: config.clone(),
        }))
    }
}

/// The registry of `registry.url` behind the pipeline's port; `None` when it is empty.
pub fn from_config(
    config: &RegistryConfig,
) -> Result<Option<std::sync::Arc<dyn SchemaRegistry>>, RegistrySetupError> {
    Ok(HttpRegistry::from_config(config)?
        .map(|r| std::sync::Arc::new(r) as std::sync::Arc<dyn SchemaRegistry>))
}

impl SchemaRegistry for HttpRegistry {
    fn fetch(&self, id: u32) -> BoxFuture<'static, Result<String, RegistryError>> {
        let mut request = self
            .client
            .get(format!("{}/schemas/ids/{id}", self.base))
            .header(
                reqwest::header::ACCEPT,
                "application/vnd.schemaregistry.v1+json, application/json",
            );
        if let Some(token) = &self.config.token {
            request = request.bearer_auth(token.expose());
        } else if !self.config.username.is_empty() {
            let password = self.config.password.as_ref().map(|p| p.expose());
            request = request.basic_auth(&self.config.username, password);
        }
        Box::pin(async move {
            let unavailable = |e: reqwest::Error| {
                RegistryError::Unavailable(format!("schema id {id}: {}", e.without_url()))
            };
            let response = request.send().await.map_err(unavailable)?;
            let status = response.status();
            let body = response.bytes().await.map_err(unavailable)?;
            classify(id, status.as_u16(), &body)
        })
    }

    fn name(&self) -> String {
        format!("schema registry {}", self.base)
    }
}

/// What the registry's answer to `GET /schemas/ids/{id}` means (see the module's table).
pub fn classify(id: u32, status: u16, body: &[u8]) -> Result<String, RegistryError> {
    let excerpt = || {
        let text = String::from_utf8_lossy(body);
        text.chars().take(200).collect::<String>()
    };
    match status {
        200 => {
            let answer: SchemaAnswer = serde_json::from_slice(body).map_err(|e| {
                RegistryError::Unavailable(format!(
                    "schema id {id}: the answer is not the registry's JSON ({e}): {}",
                    excerpt()
                ))
            })?;
            match answer.schema_type.as_deref() {
                None | Some("AVRO") => Ok(answer.schema),
                Some(kind) => Err(RegistryError::NotAvro {
                    id,
                    kind: kind.to_owned(),
                }),
            }
        }
        404 => match serde_json::from_slice::<ErrorAnswer>(body) {
            Ok(e) if e.error_code == 40403 => Err(RegistryError::NotFound {
                id,
                detail: format!("{}: {}", e.error_code, e.message),
            }),
            _ => Err(RegistryError::Unavailable(format!(
                "schema id {id}: HTTP 404 without the registry's error code 40403 (is registry.url \
                 the registry?): {}",
                excerpt()
            ))),
        },
        other => Err(RegistryError::Unavailable(format!(
            "schema id {id}: HTTP {other}: {}",
            excerpt()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_schemas_record_failures_or_sink_failures() {
        let avro = br#"{"schema":"{\"type\":\"string\"}"}"#;
        assert_eq!(classify(1, 200, avro), Ok("{\"type\":\"string\"}".into()));
        let typed = br#"{"schema":"x","schemaType":"AVRO"}"#;
        assert_eq!(classify(1, 200, typed), Ok("x".into()));
        let proto = br#"{"schema":"syntax = \"proto3\";","schemaType":"PROTOBUF"}"#;
        assert!(matches!(
            classify(2, 200, proto),
            Err(RegistryError::NotAvro { id: 2, .. })
        ));
        let missing = br#"{"error_code":40403,"message":"Schema 3 not found"}"#;
        assert!(matches!(
            classify(3, 404, missing),
            Err(RegistryError::NotFound { id: 3, .. })
        ));
        for (status, body) in [
            (404, &b"<html>Not Found</html>"[..]),
            (401, b"{\"error_code\":40101}"),
            (429, b""),
            (503, b"down"),
            (200, b"<html>"),
        ] {
            assert!(
                matches!(
                    classify(4, status, body),
                    Err(RegistryError::Unavailable(_))
                ),
                "{status}"
            );
        }
    }
}
