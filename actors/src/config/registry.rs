//! `[registry]`: the Schema Registry that `avro` topics' schemas come from (Confluent's REST API,
//! which Karapace and Redpanda's registry speak too).

use serde::{Deserialize, Serialize};

use super::Secret;

/// The Schema Registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Base URL, e.g. `https://registry:8081` (https checks the system's roots, or `ca_file`). Default
    /// empty: no registry (then no topic may be `avro` in `kafka.formats`).
    pub url: String,
    /// Basic authentication user (Confluent Cloud: the API key). Default empty: none.
    pub username: String,
    /// Basic authentication password (Confluent Cloud: the API secret; or env
    /// `BQSINK__REGISTRY__PASSWORD`). Default none.
    pub password: Option<Secret>,
    /// Bearer token instead of basic authentication (or env `BQSINK__REGISTRY__TOKEN`). Default none.
    pub token: Option<Secret>,
    /// Timeout of one request, in ms. Default 10000. A registry that does not answer is a sink
    /// failure: the records wait (their partitions pause) and the lookup is retried, as
    /// `errors.sink_failure` says; it never fails a record.
    pub timeout_ms: u64,
    /// PEM file of the certificate authorities an `https` registry's certificate is checked
    /// against, instead of the system's roots (a registry behind a private CA). Default empty: the
    /// system's roots.
    pub ca_file: String,
    /// PEM file of a client certificate and its private key, for a registry that asks for one
    /// (mutual TLS). Default empty: none.
    pub identity_file: String,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            username: String::new(),
            password: None,
            token: None,
            timeout_ms: 10_000,
            ca_file: String::new(),
            identity_file: String::new(),
        }
    }
}
