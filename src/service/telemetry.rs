//! Trace export: an OpenTelemetry tracer provider that sends the pipeline's spans over OTLP (HTTP
//! with protobuf, or gRPC with the `otlp-grpc` feature) in batches, from a thread of its own.
//! Installed into the `tracing` subscriber by [`super::logging::init_with_traces`].

use std::time::Duration;

use bqsink_actors::config::{OtlpProtocol, TelemetryConfig};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;

/// Why trace export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the OTLP span exporter for {endpoint}")]
    Exporter {
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error(
        "telemetry.protocol = \"grpc\" needs a bqsink built with `--features otlp-grpc`; use \"http\""
    )]
    GrpcNotBuilt,
    #[error("cannot start the runtime of the gRPC exporter")]
    Runtime(#[source] std::io::Error),
}

/// The running exporter. Dropping it flushes the spans still queued and stops the export thread.
pub struct Tracing {
    provider: SdkTracerProvider,
    #[cfg(feature = "otlp-grpc")]
    _runtime: Option<tokio::runtime::Runtime>,
}

impl Tracing {
    /// The provider, to create tracers from.
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// Exports every finished span now.
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(error = %e, "flushing spans failed");
        }
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        bqsink_actors::telemetry::set_exporting(false);
        if let Err(e) = self.provider.shutdown() {
            eprintln!("bqsink: exporting the last spans failed: {e}");
        }
    }
}

/// The OTLP/HTTP URL for traces: `/v1/traces` under the configured base URL.
pub fn http_traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Builds the tracer provider, or `None` when `telemetry.otlp_endpoint` is empty.
pub fn start(config: &TelemetryConfig) -> Result<Option<Tracing>, TelemetryError> {
    if config.otlp_endpoint.is_empty() {
        return Ok(None);
    }
    let timeout = Duration::from_secs(10);
    #[cfg(feature = "otlp-grpc")]
    let mut runtime = None;
    let exporter = match config.protocol {
        OtlpProtocol::Http => {
            let url = http_traces_url(&config.otlp_endpoint);
            SpanExporter::builder()
                .with_http()
                .with_endpoint(url.clone())
                .with_timeout(timeout)
                .build()
                .map_err(|source| TelemetryError::Exporter {
                    endpoint: url,
                    source,
                })?
        }
        #[cfg(feature = "otlp-grpc")]
        OtlpProtocol::Grpc => {
            // tonic needs a Tokio runtime to drive its connections; the export thread only
            // blocks on the futures.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("otlp-grpc")
                .enable_all()
                .build()
                .map_err(TelemetryError::Runtime)?;
            let exporter = {
                let _guard = rt.enter();
                SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(config.otlp_endpoint.clone())
                    .with_timeout(timeout)
                    .build()
                    .map_err(|source| TelemetryError::Exporter {
                        endpoint: config.otlp_endpoint.clone(),
                        source,
                    })?
            };
            runtime = Some(rt);
            exporter
        }
        #[cfg(not(feature = "otlp-grpc"))]
        OtlpProtocol::Grpc => return Err(TelemetryError::GrpcNotBuilt),
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sampling_ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build();
    Ok(Some(Tracing {
        provider,
        #[cfg(feature = "otlp-grpc")]
        _runtime: runtime,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_appended_once() {
        assert_eq!(
            http_traces_url("http://jaeger:4318"),
            "http://jaeger:4318/v1/traces"
        );
        assert_eq!(
            http_traces_url("http://jaeger:4318/"),
            "http://jaeger:4318/v1/traces"
        );
        assert_eq!(
            http_traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }

    #[test]
    fn no_endpoint_means_no_exporter() {
        assert!(start(&TelemetryConfig::default()).unwrap().is_none());
    }

    #[cfg(not(feature = "otlp-grpc"))]
    #[test]
    fn grpc_without_the_feature_is_a_clear_error() {
        let config = TelemetryConfig {
            otlp_endpoint: "http://localhost:4317".into(),
            protocol: OtlpProtocol::Grpc,
            ..TelemetryConfig::default()
        };
        let err = start(&config).err().unwrap().to_string();
        assert!(err.contains("otlp-grpc"), "{err}");
    }
}
