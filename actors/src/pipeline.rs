//! Wiring: starts every actor of one pipeline inside the running actix `System`.
//!
//! ```text
//!                    ┌────────────── Supervisor ──────────────┐ commits, pause/resume, shutdown
//!  Kafka poller ──▶ Consumer (one per partition) ──▶ Convert ×N ──▶ Transform ×N ──▶ Dedup ──▶ Writer ──▶ BigQuery
//!   (own thread)        ▲   offsets + backpressure     (sync threads)                   (own arbiter)  (own arbiter)
//!                       └──────────── Handled (acks) ◀── Dedup, Writer, ErrorReport ◀── failures from any stage
//! ```
//! The supervisor, the partition consumers and the error report share the system's thread; the CPU
//! stages run on `SyncArbiter` threads, dedup and the writer on arbiters of their own.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::bigquery::{BigQuery, RetryPolicy};
use crate::config::{Config, SinkFailure, Tolerance};
use crate::converter::ConvertActor;
use crate::deduplicator::DedupActor;
use crate::destinations::{DeliveryBackoff, ErrorDestination, SinkFailurePolicy};
use crate::error_report::ErrorReportActor;
use crate::kafka::KafkaControl;
use crate::messages::{Convert, SettledVia};
use crate::registry::{RegistryTopics, SchemaRegistry};
use crate::resolver::ResolverActor;
use crate::stage::dedup::Deduplicator;
use crate::stage::transform::Transformer;
use crate::stats::Stats;
use crate::supervisor::{SupervisorActor, SupervisorSettings};
use crate::tables::registered::RegistryColumns;
use crate::transformer::TransformActor;
use crate::writer::{WriterActor, WriterSettings};

/// Starts the actors; returns the supervisor, which the Kafka poller talks to. Must be called from
/// within a running actix `System`. Failed records are only logged; see [`start_with_destinations`].
pub fn start(
    config: &Config,
    kafka: Arc<dyn KafkaControl>,
    bq: Arc<dyn BigQuery>,
    stats: Arc<Stats>,
) -> Addr<SupervisorActor> {
    start_with_destinations(config, kafka, bq, stats, Vec::new())
}

/// [`start`], with error destinations (dead-letter topic, file, Slack) besides the log.
pub fn start_with_destinations(
    config: &Config,
    kafka: Arc<dyn KafkaControl>,
    bq: Arc<dyn BigQuery>,
    stats: Arc<Stats>,
    destinations: Vec<Arc<dyn ErrorDestination>>,
) -> Addr<SupervisorActor> {
    start_with_registry(config, kafka, bq, stats, destinations, None)
}

/// [`start_with_destinations`], with the Schema Registry that registry topics (`kafka.formats`) need.
pub fn start_with_registry(
    config: &Config,
    kafka: Arc<dyn KafkaControl>,
    bq: Arc<dyn BigQuery>,
    stats: Arc<Stats>,
    destinations: Vec<Arc<dyn ErrorDestination>>,
    registry: Option<Arc<dyn SchemaRegistry>>,
) -> Addr<SupervisorActor> {
    let config = config.clone();
    let workers = config.workers();
    // Registry topics (`avro`, `protobuf`, `json_schema` values or keys): a resolver fetches their
    // schemas before their records reach a converter.
    let registered = RegistryTopics::new(&config.kafka.formats, &config.kafka.key_formats);
    if let (Some(registered), None) = (&registered, &registry) {
        tracing::error!(topics = ?registered.topics(), "registry topics without a schema registry: their records fail");
    }
    // Table auto-creation, new fields and insert options from `[bigquery]` (see tables.rs); for
    // registry topics, with the columns their schemas give the tables.
    let registry_columns = Arc::new(RegistryColumns::default());
    let mut managed = crate::tables::Managed::new(bq, &config);
    if registered.is_some() {
        managed = managed.with_registry_columns(Arc::clone(&registry_columns));
    }
    let bq: Arc<dyn BigQuery> = Arc::new(managed);
    // On the Storage Write API path rows are encoded as protobuf by the transform workers.
    let formats = bq.row_formats();
    let delivery_backoff = DeliveryBackoff {
        min_delay: Duration::from_millis(100)
            .min(Duration::from_millis(config.errors.retry_delay_max_ms)),
        max_delay: Duration::from_millis(config.errors.retry_delay_max_ms),
    };
    let sink_failure = SinkFailurePolicy {
        on_failure: config.errors.sink_failure,
        retry_timeout: Duration::from_millis(config.errors.retry_timeout_ms),
    };
    SupervisorActor::create(move |ctx| {
        let errors = ErrorReportActor {
            tolerance: config.errors.tolerance,
            include_messages: config.errors.log_include_messages,
            supervisor: ctx.address().recipient(),
            stats: Arc::clone(&stats),
            fatal_sent: false,
            destinations,
            delivery_backoff,
            sink_failure,
        }
        .start();

        let writer_settings = WriterSettings {
            max_rows: config.batch.max_rows,
            max_bytes: config.batch.max_bytes,
            linger: Duration::from_millis(config.batch.linger_ms),
            max_concurrent: config.bigquery.max_concurrent_requests,
            per_partition: config.bigquery.write_api == crate::config::WriteApi::Storage
                && config.bigquery.delivery == crate::config::Delivery::ExactlyOnce,
            policy: RetryPolicy {
                timeout: Duration::from_millis(config.errors.retry_timeout_ms),
                max_delay: Duration::from_millis(config.errors.retry_delay_max_ms),
                min_delay: Duration::from_millis(100)
                    .min(Duration::from_millis(config.errors.retry_delay_max_ms)),
                give_up: config.errors.sink_failure == SinkFailure::Stop,
            },
            halt_after_failure: config.errors.tolerance == Tolerance::None,
        };
        let (w_errors, w_stats) = (errors.clone(), Arc::clone(&stats));
        let w_fatal = ctx.address().recipient();
        let writer = WriterActor::start_in_arbiter(&Arbiter::new().handle(), move |_| {
            WriterActor::new(bq, writer_settings, w_errors, w_fatal, w_stats)
        });

        let (d_writer, d_stats) = (writer.clone(), Arc::clone(&stats));
        let (max_keys, ttl) = (
            config.dedup.max_keys,
            Duration::from_secs(config.dedup.ttl_secs),
        );
        let dedup: Addr<DedupActor> =
            DedupActor::start_in_arbiter(&Arbiter::new().handle(), move |_| {
                DedupActor::new(
                    Deduplicator::new(max_keys, ttl),
                    d_writer.recipient(),
                    d_stats,
                )
            });
        writer.do_send(SettledVia(dedup.clone().recipient()));

        let (t_config, t_errors, t_dedup) = (config.clone(), errors.clone(), dedup.clone());
        let t_registered = registered
            .clone()
            .map(|r| (r, Arc::clone(&registry_columns)));
        let transformer = SyncArbiter::start(workers, move || TransformActor {
            transformer: Transformer::new(&t_config).with_formats(formats.clone()),
            dedup: t_dedup.clone(),
            errors: t_errors.clone(),
            registered: t_registered.clone(),
            noted: Default::default(),
            last_noted: None,
        });
        let c_registered = registered.clone();
        let converter = SyncArbiter::start(workers, move || ConvertActor {
            transformer: transformer.clone(),
            errors: errors.clone(),
            registered: c_registered.clone(),
        });
        let converter: Recipient<Convert> = match (registered, registry) {
            (Some(registered), Some(registry)) => ResolverActor::new(
                registry,
                registered,
                converter.recipient(),
                ctx.address().recipient(),
                Arc::clone(&stats),
                sink_failure,
                delivery_backoff,
            )
            .start()
            .recipient(),
            _ => converter.recipient(),
        };

        SupervisorActor::new(
            kafka,
            converter,
            writer,
            dedup.recipient(),
            SupervisorSettings {
                commit_interval: Duration::from_millis(config.kafka.commit_interval_ms),
                shutdown_timeout: Duration::from_millis(config.pipeline.shutdown_timeout_ms),
            },
            stats,
        )
    })
}
