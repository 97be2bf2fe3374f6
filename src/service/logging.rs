//! Log output: `pretty` or `json` lines ([`super::log_format`]) on stderr; `RUST_LOG` overrides `logging.level`. With
//! `telemetry.otlp_endpoint` set, an OpenTelemetry layer exports the pipeline's spans as well: it has
//! its own filter (the `DEBUG` spans of bqsink's crates), so the log level does not change which
//! spans are exported, and without it those spans are disabled at their call sites.

use bqsink_actors::config::{Config, LogFormat, LoggingConfig, TelemetryConfig};
use opentelemetry::trace::TracerProvider as _;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use super::log_format::JsonLines;
use super::telemetry::{self, TelemetryError, Tracing};

/// `config.logging`, with the trace project defaulted to `bigquery.project`.
pub fn settings(config: &Config) -> LoggingConfig {
    let mut logging = config.logging.clone();
    if logging.trace_project.is_empty() {
        logging.trace_project = config.bigquery.project.clone();
    }
    logging
}

/// Installs the global subscriber without trace export (once; later calls are ignored).
pub fn init(config: &LoggingConfig) {
    install(config, None);
}

/// Installs the global subscriber, with trace export when `telemetry.otlp_endpoint` is set. Keep
/// the returned handle until exit: dropping it flushes the last spans.
pub fn init_with_traces(
    logging: &LoggingConfig,
    telemetry: &TelemetryConfig,
) -> Result<Option<Tracing>, TelemetryError> {
    let tracing = telemetry::start(telemetry)?;
    if install(logging, tracing.as_ref()) && tracing.is_some() {
        bqsink_actors::telemetry::set_exporting(true);
        tracing::info!(
            endpoint = %telemetry.otlp_endpoint,
            protocol = ?telemetry.protocol,
            sampling_ratio = telemetry.sampling_ratio,
            "exporting traces"
        );
    }
    Ok(tracing)
}

/// Returns whether this call installed the subscriber.
fn install(config: &LoggingConfig, tracing: Option<&Tracing>) -> bool {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match config.format {
        LogFormat::Json => fmt
            .event_format(JsonLines {
                project: config.trace_project.clone(),
            })
            .boxed(),
        LogFormat::Pretty => fmt.compact().boxed(),
    };
    let otel = tracing.map(|t| {
        tracing_opentelemetry::layer()
            .with_tracer(t.provider().tracer("bqsink"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(
                Targets::new()
                    .with_target("bqsink", Level::DEBUG)
                    .with_target("bqsink_actors", Level::DEBUG),
            )
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()
        .is_ok()
}
