//! Running the service: `[logging]`, `[telemetry]` (OTLP trace export), `[admin]` (the HTTP API)
//! and `[metrics]`.

use serde::{Deserialize, Serialize};

use super::Secret;

/// Log output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// `pretty` (default, for terminals) or `json` (one object per line, for log shippers; with
    /// Google Cloud Logging's `severity` and trace fields).
    pub format: LogFormat,
    /// Level filter in `RUST_LOG` syntax; `RUST_LOG` wins when set. Default `info`.
    pub level: String,
    /// `json` lines inside an exported span name its trace as Cloud Logging links it:
    /// `projects/<trace_project>/traces/<id>`. Default empty: `bigquery.project`.
    pub trace_project: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".into(),
            trace_project: String::new(),
        }
    }
}

/// `logging.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Trace export with OpenTelemetry (OTLP), e.g. to Jaeger. Off unless `otlp_endpoint` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Base URL of the OTLP receiver, e.g. `http://jaeger:4318` (HTTP) or `http://jaeger:4317`
    /// (gRPC). Empty (default): no spans are exported and the pipeline's spans cost nothing.
    pub otlp_endpoint: String,
    /// `http` (default: protobuf over HTTP, `/v1/traces` is appended to the endpoint) or `grpc`
    /// (needs a binary built with the `otlp-grpc` cargo feature).
    pub protocol: OtlpProtocol,
    /// `service.name` of the exported spans. Default `bqsink`.
    pub service_name: String,
    /// Share of new traces that are sampled, 0.0 to 1.0. Records carrying a W3C `traceparent`
    /// header follow the producer's sampling decision instead. Default 1.0.
    pub sampling_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            protocol: OtlpProtocol::Http,
            service_name: "bqsink".into(),
            sampling_ratio: 1.0,
        }
    }
}

/// `telemetry.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    Http,
    Grpc,
}

/// The admin HTTP API: health, readiness, status, pause/resume/restart and `/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin API (`bqsink run` only). Default true.
    pub enabled: bool,
    /// Address to bind. Default `127.0.0.1:8083`; use `0.0.0.0:8083` in a container so probes and
    /// Prometheus can reach it.
    pub listen: String,
    /// Bearer token required by every endpoint except `/healthz`, `/readyz` and `/metrics`
    /// (or env `BQSINK__ADMIN__TOKEN`). Default none: no authentication.
    pub token: Option<Secret>,
    /// What the process does when the pipeline stops on a failure (a failed record under
    /// `errors.tolerance = "none"`, or a sink failure under `errors.sink_failure = "stop"`): `exit`
    /// (default; exit code 1, the orchestrator restarts it) or `wait` (stay up with status FAILED
    /// until `POST /restart` or SIGTERM).
    pub on_failure: OnFailure,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:8083".into(),
            token: None,
            on_failure: OnFailure::Exit,
        }
    }
}

/// `admin.on_failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    Exit,
    Wait,
}

/// Prometheus metrics, served at `GET /metrics` of the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Record metrics (needs `admin.enabled`). Default true.
    pub enabled: bool,
    /// How often consumer lag (high watermark minus committed offset, per partition), the
    /// process metrics and librdkafka's statistics (its `statistics.interval.ms`, unless
    /// `kafka.properties` sets it) are refreshed, in ms. Default 10000.
    pub refresh_interval_ms: u64,
    /// Tables that get a `table` label of their own; rows of tables seen after that many count
    /// under `table="_other"`, so that routing by a record field cannot add time series without
    /// bound. Default 100.
    pub max_table_labels: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            refresh_interval_ms: 10_000,
            max_table_labels: 100,
        }
    }
}
