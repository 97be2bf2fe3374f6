//! The Schema Registry adapter: Confluent's REST API (`GET /schemas/ids/{id}`, and
//! `GET /subjects/{subject}/versions/{version}` for the schemas a schema references), which
//! Karapace and Redpanda's registry serve too, behind `bqsink_actors::registry::SchemaRegistry`.
//!
//! What an answer means for the records naming the id:
//!
//! | answer | meaning |
//! |---|---|
//! | 200 with `schemaType` absent, `AVRO`, `PROTOBUF` or `JSON` | the schema (its references fetched too) |
//! | 200 with another `schemaType` | record failure `wrong_schema_type` |
//! | 404 with the registry's `error_code` 40403 (no such id), 40401/40402 (a reference's subject or version is gone) | record failure `unknown_schema_id` |
//! | any other 404 (not a registry at `registry.url`?), 401/403, 429, 5xx, timeout, no connection | sink failure: retried, nothing failed or committed |
//!
//! Hand-written rather than `schema_registry_converter` (the issue's suggestion): its 4.0 release
//! is built on reqwest 0.11 (bqsink uses 0.13, so a second HTTP stack) and decodes through its own
//! clients, while bqsink needs one GET whose answers it classifies as record or sink failures.
//!
//! A topic read as one format whose records name a schema of another type is a record failure
//! (`wrong_schema_type`) in the converter, not here: the schema is cached by id whatever the topic.
//!
//! Depends on: `bqsink_actors` (the port and the config) and reqwest only.

use std::time::Duration;

use bqsink_actors::config::RegistryConfig;
use bqsink_actors::registry::{RegisteredSchema, RegistryError, SchemaKind, SchemaRegistry};
use futures::future::BoxFuture;
use serde::Deserialize;

/// The registry over HTTP (cheap to clone: the client is shared).
#[derive(Clone)]
pub struct HttpRegistry {
    client: reqwest::Client,
    base: reqwest::Url,
    config: RegistryConfig,
}

/// Errors setting up the client.
#[derive(Debug, thiserror::Error)]
pub enum RegistrySetupError {
    #[error("cannot read registry.{key} {path}")]
    Read {
        key: &'static str,
        path: String,
        #[source]
        error: std::io::Error,
    },
    #[error("registry.{key} {path} holds no usable PEM {what}")]
    Pem {
        key: &'static str,
        path: String,
        what: &'static str,
        #[source]
        error: reqwest::Error,
    },
    #[error("registry.url {url} is not a URL: {error}")]
    Url { url: String, error: String },
    #[error("cannot build the Schema Registry's HTTP client")]
    Client(#[source] reqwest::Error),
}

/// The PEM text of `registry.<key>` (`path`).
fn read_pem(key: &'static str, path: &str) -> Result<Vec<u8>, RegistrySetupError> {
    std::fs::read(path).map_err(|error| RegistrySetupError::Read {
        key,
        path: path.to_owned(),
        error,
    })
}

/// A schema lookup's answer (`GET /schemas/ids/{id}`, `GET /subjects/{s}/versions/{v}`).
#[derive(Debug, Deserialize)]
pub struct SchemaAnswer {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<ReferenceAnswer>,
}

/// A schema's reference: the name it imports under, and where it is registered.
#[derive(Debug, Deserialize)]
struct ReferenceAnswer {
    name: String,
    subject: String,
    version: i64,
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
        let mut builder =
            reqwest::Client::builder().timeout(Duration::from_millis(config.timeout_ms));
        if !config.ca_file.is_empty() {
            let pem = read_pem("ca_file", &config.ca_file)?;
            let bad = |error| RegistrySetupError::Pem {
                key: "ca_file",
                path: config.ca_file.clone(),
                what: "certificate",
                error,
            };
            let roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(bad)?;
            if roots.is_empty() {
                return Err(RegistrySetupError::Read {
                    key: "ca_file",
                    path: config.ca_file.clone(),
                    error: std::io::Error::other("no PEM certificate in it"),
                });
            }
            builder = builder.tls_certs_only(roots);
        }
        if !config.identity_file.is_empty() {
            let pem = read_pem("identity_file", &config.identity_file)?;
            let identity =
                reqwest::Identity::from_pem(&pem).map_err(|error| RegistrySetupError::Pem {
                    key: "identity_file",
                    path: config.identity_file.clone(),
                    what: "certificate and private key",
                    error,
                })?;
            builder = builder.identity(identity);
        }
        let client = builder.build().map_err(RegistrySetupError::Client)?;
        let url = config.url.trim_end_matches('/');
        let base = reqwest::Url::parse(url).map_err(|e| RegistrySetupError::Url {
            url: url.to_owned(),
            error: e.to_string(),
        })?;
        Ok(Some(Self {
            client,
            base,
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

/// The most schemas one schema may reference, transitively (a guard against reference loops and
/// runaway registries; a schema past it is a record failure of its records).
const MAX_REFERENCES: usize = 100;

impl HttpRegistry {
    /// One GET of the registry's API, with its authentication; the status and the body.
    fn get(
        &self,
        segments: &[&str],
    ) -> BoxFuture<'static, Result<(u16, bytes::Bytes), reqwest::Error>> {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        let mut request = self.client.get(url).header(
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
            let response = request.send().await?;
            let status = response.status().as_u16();
            Ok((status, response.bytes().await?))
        })
    }
}

impl SchemaRegistry for HttpRegistry {
    /// `GET /schemas/ids/{id}`, then `GET /subjects/{subject}/versions/{version}` for each schema
    /// it references, transitively.
    fn fetch(&self, id: u32) -> BoxFuture<'static, Result<RegisteredSchema, RegistryError>> {
        let this = self.clone();
        Box::pin(async move {
            let unavailable = |e: reqwest::Error| {
                RegistryError::Unavailable(format!("schema id {id}: {}", e.without_url()))
            };
            let id_text = id.to_string();
            let (status, body) = this
                .get(&["schemas", "ids", &id_text])
                .await
                .map_err(unavailable)?;
            let root = classify(id, "", status, &body)?;
            let kind = kind_of(id, &root)?;
            let mut references = Vec::new();
            let mut pending: Vec<ReferenceAnswer> = root.references;
            while let Some(r) = pending.pop() {
                if references.iter().any(|(name, _)| *name == r.name) {
                    continue;
                }
                if references.len() == MAX_REFERENCES {
                    return Err(RegistryError::NotFound {
                        id,
                        detail: format!("it references more than {MAX_REFERENCES} schemas"),
                    });
                }
                let version = r.version.to_string();
                let (status, body) = this
                    .get(&["subjects", &r.subject, "versions", &version])
                    .await
                    .map_err(unavailable)?;
                let what = format!(
                    " (its reference {} = {} version {version})",
                    r.name, r.subject
                );
                let answer = classify(id, &what, status, &body)?;
                pending.extend(answer.references);
                references.push((r.name, answer.schema));
            }
            Ok(RegisteredSchema {
                kind,
                text: root.schema,
                references,
            })
        })
    }

    fn name(&self) -> String {
        format!(
            "schema registry {}",
            self.base.as_str().trim_end_matches('/')
        )
    }
}

/// The kind of schema an answer holds.
fn kind_of(id: u32, answer: &SchemaAnswer) -> Result<SchemaKind, RegistryError> {
    SchemaKind::from_registry(answer.schema_type.as_deref()).ok_or_else(|| {
        RegistryError::UnknownType {
            id,
            kind: answer.schema_type.clone().unwrap_or_default(),
        }
    })
}

/// What the registry's answer to a schema lookup for `id` means (see the module's table); `what`
/// names the reference looked up, empty for the schema itself.
pub fn classify(
    id: u32,
    what: &str,
    status: u16,
    body: &[u8],
) -> Result<SchemaAnswer, RegistryError> {
    let excerpt = || {
        let text = String::from_utf8_lossy(body);
        text.chars().take(200).collect::<String>()
    };
    match status {
        200 => serde_json::from_slice(body).map_err(|e| {
            RegistryError::Unavailable(format!(
                "schema id {id}{what}: the answer is not the registry's JSON ({e}): {}",
                excerpt()
            ))
        }),
        404 => match serde_json::from_slice::<ErrorAnswer>(body) {
            // 40403: no such schema id; 40401/40402: no such subject or version (a reference).
            Ok(e) if matches!(e.error_code, 40401..=40403) => Err(RegistryError::NotFound {
                id,
                detail: format!("{}{what}: {}", e.error_code, e.message),
            }),
            _ => Err(RegistryError::Unavailable(format!(
                "schema id {id}{what}: HTTP 404 without one of the registry's error codes \
                 (is registry.url the registry?): {}",
                excerpt()
            ))),
        },
        other => Err(RegistryError::Unavailable(format!(
            "schema id {id}{what}: HTTP {other}: {}",
            excerpt()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(status: u16, body: &[u8]) -> Result<SchemaKind, RegistryError> {
        kind_of(1, &classify(1, "", status, body)?)
    }

    #[test]
    fn answers_are_schemas_record_failures_or_sink_failures() {
        let avro = br#"{"schema":"{\"type\":\"string\"}"}"#;
        let answer = classify(1, "", 200, avro).unwrap();
        assert_eq!(answer.schema, "{\"type\":\"string\"}");
        assert_eq!(kind(200, avro), Ok(SchemaKind::Avro));
        assert_eq!(
            kind(200, br#"{"schema":"x","schemaType":"AVRO"}"#),
            Ok(SchemaKind::Avro)
        );
        let proto = br#"{"schema":"syntax = \"proto3\";","schemaType":"PROTOBUF",
            "references":[{"name":"a.proto","subject":"a","version":2}]}"#;
        assert_eq!(kind(200, proto), Ok(SchemaKind::Protobuf));
        let answer = classify(1, "", 200, proto).unwrap();
        assert_eq!(answer.references[0].subject, "a");
        assert_eq!(answer.references[0].version, 2);
        assert_eq!(
            kind(200, br#"{"schema":"{}","schemaType":"JSON"}"#),
            Ok(SchemaKind::Json)
        );
        assert!(matches!(
            kind(200, br#"{"schema":"x","schemaType":"THRIFT"}"#),
            Err(RegistryError::UnknownType { id: 1, .. })
        ));
        for code in [40401, 40402, 40403] {
            let missing = format!(r#"{{"error_code":{code},"message":"not found"}}"#);
            assert!(matches!(
                classify(3, "", 404, missing.as_bytes()),
                Err(RegistryError::NotFound { id: 3, .. })
            ));
        }
        for (status, body) in [
            (404, &b"<html>Not Found</html>"[..]),
            (401, b"{\"error_code\":40101}"),
            (429, b""),
            (503, b"down"),
            (200, b"<html>"),
        ] {
            assert!(
                matches!(
                    classify(4, "", status, body),
                    Err(RegistryError::Unavailable(_))
                ),
                "{status}"
            );
        }
    }
}
