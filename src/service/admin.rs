//! The admin HTTP API (axum, bound to `admin.listen`) and the periodic refresher, on a
//! current-thread Tokio runtime of their own so that a busy pipeline never delays a probe.
//!
//! | endpoint | auth | answer |
//! |---|---|---|
//! | `GET /healthz` | no | 200 while the process serves requests |
//! | `GET /readyz` | no | 200 when a pipeline runs, its consumer joined the group, BigQuery answered the last probe and no sink is failing; else 503 |
//! | `GET /metrics` | no | Prometheus text format |
//! | `GET /status` | token | overall state, one entry per assigned partition (`FAILING` while its records wait for a failing sink), and the sinks that fail (`sinks`) |
//! | `POST /pause`, `/resume`, `/restart` | token | 202, or 409 while shutting down |
//!
//! With `admin.token` set, the endpoints marked *token* need `Authorization: Bearer <token>`.
//!
//! Past ~500 lines with its unit tests; the routes and their handlers stay together.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bqsink_actors::config::Secret;
use bqsink_actors::health::SinkCondition;
use bqsink_actors::messages::{StatusReport, Tp};
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

use super::prometheus::{self, names};
use super::state::{Phase, Refused, ServiceState, Watermarks};

/// The runtime thread serving the admin API and running the refresher.
pub struct Background {
    addr: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Clone)]
struct AppState {
    service: Arc<ServiceState>,
    metrics: Option<PrometheusHandle>,
}

impl Background {
    /// Binds the admin listener (fails at once if the address is taken), installs the metrics
    /// recorder and starts the runtime thread. With `signals`, SIGTERM and Ctrl-C stop the service.
    pub fn start(service: Arc<ServiceState>, signals: bool) -> anyhow::Result<Self> {
        let config = &service.config;
        let listener = if config.admin.enabled {
            let l = std::net::TcpListener::bind(&config.admin.listen)
                .with_context(|| format!("binding admin.listen {}", config.admin.listen))?;
            l.set_nonblocking(true)
                .context("setting the admin listener non-blocking")?;
            Some(l)
        } else {
            None
        };
        let addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        let refresh = Duration::from_millis(config.metrics.refresh_interval_ms);
        let metrics = if config.admin.enabled && config.metrics.enabled {
            Some(
                prometheus::install(refresh * 3 + Duration::from_secs(10))
                    .context("installing the Prometheus recorder")?,
            )
            .inspect(|_| {
                bqsink_actors::telemetry::TABLE_LABELS.set_limit(config.metrics.max_table_labels)
            })
        } else {
            None
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the admin runtime")?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = AppState { service, metrics };
        let thread = std::thread::Builder::new()
            .name("bqsink-admin".into())
            .spawn(move || {
                runtime.block_on(background(app, listener, signals, stopped));
                // Do not wait for a lag query still blocked on a broker.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .context("spawning the admin thread")?;
        if let Some(a) = addr {
            tracing::info!(listen = %a, "admin API listening");
        }
        Ok(Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Stops serving and refreshing.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn background(
    app: AppState,
    listener: Option<std::net::TcpListener>,
    signals: bool,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    if let Some(l) = listener {
        match tokio::net::TcpListener::from_std(l) {
            Ok(l) => {
                let router = router(app.clone());
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(l, router).await {
                        tracing::error!(error = %e, "admin API stopped");
                    }
                });
            }
            Err(e) => tracing::error!(error = %e, "cannot serve the admin API"),
        }
        tokio::spawn(refresher(app.clone()));
    }
    if signals {
        let service = Arc::clone(&app.service);
        tokio::spawn(async move {
            super::run::wait_for_signal().await;
            tracing::info!("signal received");
            service.stop();
        });
    }
    let _ = stopped.await;
}

fn router(app: AppState) -> Router {
    let protected = Router::new()
        .route("/status", get(status))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/restart", post(restart))
        .route_layer(middleware::from_fn_with_state(app.clone(), authorize));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .merge(protected)
        .with_state(app)
}

/// Compares without stopping at the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether an `Authorization` header value carries the expected bearer token.
pub fn bearer_matches(header: Option<&str>, token: &str) -> bool {
    header
        .and_then(|h| h.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.trim().as_bytes(), token.as_bytes()))
}

async fn authorize(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = app
        .service
        .config
        .admin
        .token
        .as_ref()
        .map(Secret::expose)
        .filter(|t| !t.is_empty())
    else {
        return next.run(req).await;
    };
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if bearer_matches(header, token) {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "missing or wrong bearer token (admin.token)"})),
        )
            .into_response()
    }
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "UP"}))
}

async fn readyz(State(app): State<AppState>) -> Response {
    let service = &app.service;
    let report = service.report().await;
    let bq = service
        .bigquery_reachable
        .lock()
        .map(|r| r.clone())
        .unwrap_or(None);
    let mut reasons = Vec::new();
    match (&service.phase(), &report) {
        (Phase::Running, Some(r)) if r.draining => reasons.push("the pipeline is draining".into()),
        (Phase::Running, Some(r)) if !r.joined => {
            reasons.push("the consumer has not joined its group yet".into())
        }
        (Phase::Running, Some(_)) => {}
        (Phase::Running, None) => reasons.push("the pipeline does not answer".into()),
        (phase, _) => reasons.push(format!("the pipeline is {}", phase_name(phase))),
    }
    match &bq {
        Some(Ok(_)) => {}
        Some(Err(e)) => reasons.push(format!("BigQuery is unreachable: {e}")),
        None => reasons.push("BigQuery has not been probed yet".into()),
    }
    for s in service.stats.health.failing_now() {
        reasons.push(format!(
            "{} is failing since {}: {}",
            s.sink,
            humantime::format_rfc3339_seconds(s.since),
            s.last_error
        ));
    }
    let code = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": reasons.is_empty(),
        "reasons": reasons,
        "bigquery_status": bq.and_then(|r| r.ok()),
    });
    (code, Json(body)).into_response()
}

async fn metrics_text(State(app): State<AppState>) -> Response {
    match &app.metrics {
        Some(h) => {
            prometheus::record_stats(&app.service.stats.snapshot());
            // Refreshed at every scrape too: a sink retried less often than the gauges' idle
            // timeout must not drop out of the metrics while it fails.
            for s in app.service.stats.health.failing_now() {
                metrics::gauge!(bqsink_actors::health::SINK_FAILING_METRIC, "sink" => s.sink)
                    .set(1.0);
            }
            (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                h.render(),
            )
                .into_response()
        }
        None => (StatusCode::NOT_FOUND, "metrics.enabled is false\n").into_response(),
    }
}

fn phase_name(phase: &Phase) -> &'static str {
    match phase {
        Phase::Starting => "STARTING",
        Phase::Running => "RUNNING",
        Phase::Restarting => "RESTARTING",
        Phase::Stopping => "STOPPING",
        Phase::Failed(_) => "FAILED",
        Phase::Stopped => "STOPPED",
    }
}

/// The overall state, as Kafka Connect names them where they apply.
pub fn overall_state(phase: &Phase, report: Option<&StatusReport>, paused: bool) -> &'static str {
    match (phase, report) {
        (Phase::Running, Some(r)) if r.draining => "STOPPING",
        (Phase::Running, _) if paused => "PAUSED",
        (p, _) => phase_name(p),
    }
}

async fn status(State(app): State<AppState>) -> Json<Value> {
    Json(status_json(&app.service).await)
}

/// The `/status` document.
pub async fn status_json(service: &ServiceState) -> Value {
    let phase = service.phase();
    let report = service.report().await;
    let paused = service.paused();
    let errors = service.stats.errors();
    let watermarks = service
        .watermarks
        .lock()
        .map(|w| w.clone())
        .unwrap_or_default();
    let sinks = service.stats.health.snapshot();
    // The failing sink a partition's records wait for, if any.
    let sink_error = |tp: &Tp| {
        sinks
            .iter()
            .find(|s| s.condition == SinkCondition::Failing && s.partitions.contains(tp))
            .map(|s| format!("{}: {}", s.sink, s.last_error))
    };
    let mut partitions: Vec<Value> = Vec::new();
    let error_json = |tp: &Tp| {
        errors.get(tp).map(|e| {
            json!({
                "offset": e.offset,
                "error": e.error,
                "fatal": e.fatal,
                "at": humantime::format_rfc3339_millis(e.at).to_string(),
            })
        })
    };
    if let Some(r) = &report {
        for p in &r.partitions {
            let w = watermarks.get(&p.tp);
            let committed = match (p.committed, w.and_then(|w| w.committed)) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            let high = w.map(|w| w.high);
            let lag = high.map(|h| (h - committed.or(w.map(|w| w.low)).unwrap_or(0)).max(0));
            let fatal = errors.get(&p.tp).is_some_and(|e| e.fatal);
            let waiting = sink_error(&p.tp);
            let state = if fatal {
                "FAILED"
            } else if waiting.is_some() {
                "FAILING"
            } else if p.paused {
                "PAUSED"
            } else {
                "RUNNING"
            };
            partitions.push(json!({
                "topic": &*p.tp.topic,
                "partition": p.tp.partition,
                "state": state,
                "committed_offset": committed,
                "handled_offset": p.commit_offset,
                "high_watermark": high,
                "lag": lag,
                "inflight_records": p.inflight_records,
                "last_error": error_json(&p.tp),
                "sink_error": waiting,
            }));
        }
    } else {
        // No pipeline runs (failed, starting): list the partitions that failed.
        let mut failed: Vec<&Tp> = errors.keys().collect();
        failed.sort();
        for tp in failed {
            partitions.push(json!({
                "topic": &*tp.topic,
                "partition": tp.partition,
                "state": if errors[tp].fatal { "FAILED" } else { "UNASSIGNED" },
                "last_error": error_json(tp),
            }));
        }
    }
    let s = service.stats.snapshot();
    json!({
        "name": service.config.kafka.group_id,
        "state": overall_state(&phase, report.as_ref(), paused),
        "paused": paused,
        "joined": report.as_ref().is_some_and(|r| r.joined),
        "restarts": service.restarts(),
        "error": match &phase { Phase::Failed(reason) => Some(reason.clone()), _ => None },
        "partitions": partitions,
        "sinks": sinks.iter().map(|s| json!({
            "sink": s.sink,
            "state": s.condition.as_str(),
            "since": humantime::format_rfc3339_millis(s.since).to_string(),
            "last_error": s.last_error,
            "attempts": s.attempts,
            "partitions": s.partitions.iter().map(|tp| json!({"topic": &*tp.topic, "partition": tp.partition})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "counters": {
            "consumed": s.consumed,
            "written": s.written,
            "deduplicated": s.deduplicated,
            "failed": s.failed,
            "batches": s.batches,
            "retries": s.retries,
            "commits": s.commits,
            "sink_failures": service.stats.health.incidents(),
        },
    })
}

fn accepted(service: &ServiceState, action: &str, result: Result<(), Refused>) -> Response {
    match result {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(json!({"requested": action, "paused": service.paused()})),
        )
            .into_response(),
        Err(e) => (StatusCode::CONFLICT, Json(json!({"error": e.to_string()}))).into_response(),
    }
}

async fn pause(State(app): State<AppState>) -> Response {
    accepted(&app.service, "pause", app.service.pause())
}

async fn resume(State(app): State<AppState>) -> Response {
    accepted(&app.service, "resume", app.service.resume())
}

async fn restart(State(app): State<AppState>) -> Response {
    accepted(&app.service, "restart", app.service.restart())
}

/// How often the refresher looks for a rebalance, and how long it lets one settle.
const REBALANCE_POLL: Duration = Duration::from_millis(200);
const REBALANCE_SETTLE: Duration = Duration::from_millis(300);

/// Every `metrics.refresh_interval_ms`, at start and soon after every rebalance: watermarks and
/// committed offsets of the assigned partitions (consumer lag), the partition gauges, a BigQuery
/// reachability probe, process metrics.
async fn refresher(app: AppState) {
    let service = app.service;
    let config = service.config.clone();
    let interval = Duration::from_millis(config.metrics.refresh_interval_ms);
    let mut due = tokio::time::Instant::now();
    let rebalances = || {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = &service.stats;
        (stats.assigned.load(Relaxed), stats.revoked.load(Relaxed))
    };
    let mut seen = rebalances();
    let client: Option<Arc<BaseConsumer>> = match crate::kafka::consumer_config(&config).create() {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot create the Kafka client for consumer lag; lag is not reported");
            None
        }
    };
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok();
    let collector = metrics_process::Collector::default();
    let record = app.metrics.is_some();
    loop {
        // The interval, or a rebalance: a scrape right after start or a scale-out must not show
        // no partitions and no lag for a whole interval.
        loop {
            if tokio::time::Instant::now() >= due {
                break;
            }
            if rebalances() != seen {
                // Let the partition consumers start, so that the report holds them.
                tokio::time::sleep(REBALANCE_SETTLE).await;
                break;
            }
            tokio::time::sleep(REBALANCE_POLL.min(due - tokio::time::Instant::now())).await;
        }
        seen = rebalances();
        due = tokio::time::Instant::now() + interval;
        let report = service.report().await;
        if let (Some(report), Some(client)) = (&report, &client) {
            let tps: Vec<Tp> = report.partitions.iter().map(|p| p.tp.clone()).collect();
            let client = Arc::clone(client);
            let fetched = tokio::task::spawn_blocking(move || fetch_watermarks(&client, &tps))
                .await
                .unwrap_or_default();
            if record {
                for (tp, w) in &fetched {
                    let (topic, partition) = (tp.topic.to_string(), tp.partition.to_string());
                    let lag = (w.high - w.committed.unwrap_or(w.low)).max(0);
                    metrics::gauge!(names::CONSUMER_LAG, "topic" => topic.clone(), "partition" => partition.clone()).set(lag as f64);
                    metrics::gauge!(names::HIGH_WATERMARK, "topic" => topic.clone(), "partition" => partition.clone()).set(w.high as f64);
                    if let Some(c) = w.committed {
                        metrics::gauge!(names::COMMITTED_OFFSET, "topic" => topic, "partition" => partition).set(c as f64);
                    }
                }
            }
            if let Ok(mut w) = service.watermarks.lock() {
                *w = fetched;
            }
        }
        if record {
            let parts = report.as_ref().map_or(&[][..], |r| &r.partitions[..]);
            metrics::gauge!(names::PARTITIONS_ASSIGNED).set(parts.len() as f64);
            metrics::gauge!(names::PARTITIONS_PAUSED)
                .set(parts.iter().filter(|p| p.paused).count() as f64);
            for p in parts {
                metrics::gauge!(names::INFLIGHT_RECORDS, "topic" => p.tp.topic.to_string(), "partition" => p.tp.partition.to_string())
                    .set(p.inflight_records as f64);
            }
            let failed = matches!(service.phase(), Phase::Failed(_));
            metrics::gauge!(names::PIPELINE_FAILED).set(if failed { 1.0 } else { 0.0 });
            prometheus::record_stats(&service.stats.snapshot());
            prometheus::record_process(&collector);
            if let Some(h) = &app.metrics {
                h.run_upkeep();
            }
        }
        if let Some(probe) = &probe {
            let result = match probe.get(&config.bigquery.endpoint).send().await {
                Ok(resp) => Ok(resp.status().as_u16()),
                Err(e) => Err(e.to_string()),
            };
            if let Ok(mut r) = service.bigquery_reachable.lock() {
                *r = Some(result);
            }
        }
    }
}

/// High watermarks and the group's committed offsets (blocking calls to the brokers).
fn fetch_watermarks(client: &BaseConsumer, tps: &[Tp]) -> HashMap<Tp, Watermarks> {
    let timeout = Duration::from_secs(5);
    let mut out = HashMap::new();
    if tps.is_empty() {
        return out;
    }
    let mut tpl = TopicPartitionList::new();
    for tp in tps {
        tpl.add_partition(&tp.topic, tp.partition);
    }
    let committed = match client.committed_offsets(tpl, timeout) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::debug!(error = %e, "fetching committed offsets failed");
            None
        }
    };
    for tp in tps {
        match client.fetch_watermarks(&tp.topic, tp.partition, timeout) {
            Ok((low, high)) => {
                let committed = committed
                    .as_ref()
                    .and_then(|c| c.find_partition(&tp.topic, tp.partition))
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    });
                out.insert(
                    tp.clone(),
                    Watermarks {
                        low,
                        high,
                        committed,
                    },
                );
            }
            Err(e) => tracing::debug!(%tp, error = %e, "fetching watermarks failed"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_must_match_exactly() {
        assert!(bearer_matches(Some("Bearer s3cret"), "s3cret"));
        assert!(!bearer_matches(Some("Bearer s3cre"), "s3cret"));
        assert!(!bearer_matches(Some("Bearer s3cretx"), "s3cret"));
        assert!(!bearer_matches(Some("s3cret"), "s3cret"));
        assert!(!bearer_matches(None, "s3cret"));
    }

    #[test]
    fn overall_state_follows_kafka_connect_names() {
        let report = |draining| StatusReport {
            draining,
            joined: true,
            paused: false,
            partitions: vec![],
        };
        assert_eq!(
            overall_state(&Phase::Running, Some(&report(false)), false),
            "RUNNING"
        );
        assert_eq!(
            overall_state(&Phase::Running, Some(&report(false)), true),
            "PAUSED"
        );
        assert_eq!(
            overall_state(&Phase::Running, Some(&report(true)), false),
            "STOPPING"
        );
        assert_eq!(
            overall_state(&Phase::Failed("x".into()), None, false),
            "FAILED"
        );
    }
}
