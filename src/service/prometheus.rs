//! Prometheus metrics: the process-wide recorder behind the `metrics` facade (the actors record
//! through it, see `bqsink_actors::telemetry`), and the gauges refreshed periodically by the admin
//! service: consumer lag per partition, assigned and paused partitions, in-flight records, process
//! metrics (RSS, CPU, threads, open files). Rendered in the text format at `GET /metrics`.

use std::sync::Mutex;
use std::time::Duration;

use bqsink_actors::stats::StatsSnapshot;
use bqsink_actors::telemetry;
use metrics::{describe_counter, describe_gauge, Unit};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

/// Names of the metrics this crate records (the actors' are in `bqsink_actors::telemetry::names`).
pub mod names {
    pub const CONSUMER_LAG: &str = "bqsink_consumer_lag";
    pub const COMMITTED_OFFSET: &str = "bqsink_committed_offset";
    pub const HIGH_WATERMARK: &str = "bqsink_high_watermark";
    pub const PARTITIONS_ASSIGNED: &str = "bqsink_partitions_assigned";
    pub const PARTITIONS_PAUSED: &str = "bqsink_partitions_paused";
    pub const INFLIGHT_RECORDS: &str = "bqsink_inflight_records";
    pub const PIPELINE_FAILED: &str = "bqsink_pipeline_failed";
    pub const PIPELINE_RESTARTS: &str = "bqsink_pipeline_restarts_total";
    pub const OFFSET_COMMITS: &str = "bqsink_offset_commits_total";
    pub const BATCHES: &str = "bqsink_batches_total";
    pub const BUILD_INFO: &str = "bqsink_build_info";
    pub const BACKPRESSURE_PAUSES: &str = "bqsink_backpressure_pauses_total";
}

/// The git commit this binary was built from (`build.rs`): "unknown" without git or
/// `BQSINK_GIT_SHA`.
pub const GIT_SHA: &str = env!("BQSINK_GIT_SHA");

static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Seconds buckets for latencies: 5 ms to 1 h.
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
const ROWS_BUCKETS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0, 10000.0, 50000.0,
];
const BYTES_BUCKETS: &[f64] = &[1e3, 1e4, 1e5, 2.5e5, 5e5, 1e6, 2.5e6, 5e6, 9e6];

/// Installs the Prometheus recorder (once per process; later calls return the same handle).
/// Gauges not refreshed for `idle` (partitions revoked from this instance) disappear.
pub fn install(idle: Duration) -> Result<PrometheusHandle, BuildError> {
    let mut installed = HANDLE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = &*installed {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(telemetry::names::BATCH_ROWS.into()),
            ROWS_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(telemetry::names::BATCH_BYTES.into()),
            BYTES_BUCKETS,
        )?
        .idle_timeout(MetricKindMask::GAUGE, Some(idle))
        .install_recorder()?;
    telemetry::describe();
    crate::kafka::describe_metrics();
    describe();
    metrics_process::Collector::default().describe();
    *installed = Some(handle.clone());
    Ok(handle)
}

fn describe() {
    describe_gauge!(
        names::CONSUMER_LAG,
        Unit::Count,
        "High watermark minus the group's committed offset, per assigned partition"
    );
    describe_gauge!(
        names::COMMITTED_OFFSET,
        "Committed offset per assigned partition"
    );
    describe_gauge!(
        names::HIGH_WATERMARK,
        "High watermark per assigned partition"
    );
    describe_gauge!(
        names::PARTITIONS_ASSIGNED,
        "Partitions assigned to this instance"
    );
    describe_gauge!(
        names::PARTITIONS_PAUSED,
        "Assigned partitions paused by the operator (POST /pause)"
    );
    describe_gauge!(names::INFLIGHT_RECORDS, "Records read but not yet handled");
    describe_gauge!(
        names::PIPELINE_FAILED,
        "1 while the pipeline is stopped after a failed record (errors.tolerance = \"none\")"
    );
    describe_counter!(
        names::PIPELINE_RESTARTS,
        "Pipeline restarts (POST /restart)"
    );
    describe_counter!(names::OFFSET_COMMITS, "Successful offset commits");
    describe_counter!(names::BATCHES, "insertAll batches completed");
    describe_counter!(
        names::BACKPRESSURE_PAUSES,
        "Partitions paused because the pipeline held its in-flight limit (resumed below half)"
    );
    describe_gauge!(
        names::BUILD_INFO,
        "Always 1; the labels say which bqsink runs: version and git_sha"
    );
}

/// Copies the pipeline's own counters that have no per-event metric.
pub fn record_stats(s: &StatsSnapshot) {
    metrics::counter!(names::OFFSET_COMMITS).absolute(s.commits);
    metrics::counter!(names::BATCHES).absolute(s.batches);
    metrics::counter!(names::BACKPRESSURE_PAUSES).absolute(s.pauses);
    // A gauge, refreshed here so that it outlives the gauges' idle timeout.
    metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "git_sha" => GIT_SHA)
        .set(1.0);
}

/// Collects process metrics (`process_resident_memory_bytes`, CPU, threads, open files).
pub fn record_process(collector: &metrics_process::Collector) {
    collector.collect();
}
