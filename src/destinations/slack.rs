//! Slack alerts (`errors.slack.*`): failed records are counted into an aggregate (by topic, stage
//! and error class, with the first few offsets of each) and posted to an incoming webhook as one
//! message per `window_secs`, never more often. Posts that get 429 or 5xx (or no answer) are retried
//! until the window ends; what could not be posted is merged into the next window's message.
//!
//! Sink failures ([`bqsink_actors::health`]) are alerted through the same window: one line when a
//! destination has failed for `errors.retry_timeout_ms` (BigQuery, the dead-letter topic), one when
//! it recovered, each once per incident.
//!
//! Nothing here can hold up the pipeline: `deliver` only adds to the in-memory aggregate (bounded:
//! at most [`MAX_GROUPS`] groups with [`MAX_SAMPLES`] offsets each; further failures are still
//! counted, without details), and posting happens on a thread of its own.
//!
//! Past ~500 lines only with its unit tests (the code is under 500).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use bqsink_actors::config::{Config, Secret};
use bqsink_actors::destinations::{DeliveryError, ErrorDestination, FailureRecord, Role};
use bqsink_actors::health::HealthEvent;
use bqsink_actors::stats::Stats;
use bqsink_actors::telemetry;
use futures::future::BoxFuture;

/// Groups (topic, stage, class) detailed in one message; more are summed up in one line.
pub const MAX_GROUPS: usize = 20;
/// Offsets listed per group.
pub const MAX_SAMPLES: usize = 5;
/// Longest error text quoted per group.
const MAX_ERROR_CHARS: usize = 200;
/// Sink failure and recovery lines kept for one message (more are counted).
pub const MAX_SINK_LINES: usize = 20;

#[derive(Debug, Clone, Default, PartialEq)]
struct Group {
    count: u64,
    /// (partition, offset) of the first failures.
    samples: Vec<(i32, i64)>,
    /// The first error text.
    error: String,
}

/// Failures counted since the last successful post.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Aggregate {
    groups: BTreeMap<(String, &'static str, &'static str), Group>,
    /// All failures counted, detailed or not.
    total: u64,
    /// Failures beyond [`MAX_GROUPS`] groups (counted in `total`, not detailed).
    undetailed: u64,
    since: Option<SystemTime>,
    /// Sink failures and recoveries, one line each, in order.
    sinks: Vec<String>,
    /// Sink lines beyond [`MAX_SINK_LINES`].
    sinks_undetailed: u64,
}

impl Aggregate {
    pub fn add(&mut self, r: &FailureRecord) {
        self.total += 1;
        self.since.get_or_insert_with(SystemTime::now);
        let key = (r.tp.topic.to_string(), r.stage.as_str(), r.class);
        let full = self.groups.len() >= MAX_GROUPS;
        match self.groups.get_mut(&key) {
            Some(g) => {
                g.count += 1;
                if g.samples.len() < MAX_SAMPLES {
                    g.samples.push((r.tp.partition, r.source.offset));
                }
            }
            None if full => self.undetailed += 1,
            None => {
                self.groups.insert(
                    key,
                    Group {
                        count: 1,
                        samples: vec![(r.tp.partition, r.source.offset)],
                        error: r.error.chars().take(MAX_ERROR_CHARS).collect(),
                    },
                );
            }
        }
    }

    /// Adds a sink failure or recovery.
    pub fn add_sink_event(&mut self, event: &HealthEvent) {
        if self.sinks.len() >= MAX_SINK_LINES {
            self.sinks_undetailed += 1;
            return;
        }
        let line = match event {
            HealthEvent::Failing(s) => {
                let partitions: Vec<String> =
                    s.partitions.iter().map(ToString::to_string).collect();
                format!(
                    ":red_circle: sink failing: {} since {} ({} attempts; nothing is committed past the records waiting for it; partitions {}): {}",
                    s.sink,
                    humantime::format_rfc3339_seconds(s.since),
                    s.attempts,
                    if partitions.is_empty() { "-".to_string() } else { partitions.join(", ") },
                    s.last_error.chars().take(MAX_ERROR_CHARS).collect::<String>()
                )
            }
            HealthEvent::Recovered { sink, after } => format!(
                ":large_green_circle: sink recovered: {sink} takes writes again after {}",
                humantime::format_duration(Duration::from_secs(after.as_secs()))
            ),
        };
        self.sinks.push(line);
    }

    /// Adds a newer aggregate into this one.
    pub fn merge(&mut self, newer: Aggregate) {
        self.sinks_undetailed += newer.sinks_undetailed;
        for line in newer.sinks {
            if self.sinks.len() < MAX_SINK_LINES {
                self.sinks.push(line);
            } else {
                self.sinks_undetailed += 1;
            }
        }
        self.total += newer.total;
        self.undetailed += newer.undetailed;
        self.since = match (self.since, newer.since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        for (key, g) in newer.groups {
            let full = self.groups.len() >= MAX_GROUPS;
            match self.groups.get_mut(&key) {
                Some(mine) => {
                    mine.count += g.count;
                    let room = MAX_SAMPLES - mine.samples.len();
                    mine.samples.extend(g.samples.into_iter().take(room));
                }
                None if full => self.undetailed += g.count,
                None => {
                    self.groups.insert(key, g);
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0 && self.sinks.is_empty() && self.sinks_undetailed == 0
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// The message text (Slack mrkdwn): sink lines first, then, when records failed, a line that
    /// reads `... N records failed since ...` and the groups.
    pub fn render(&self, connector: &str) -> String {
        let mut text = String::new();
        for line in &self.sinks {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&format!("bqsink (group `{connector}`): {line}"));
        }
        if self.sinks_undetailed > 0 {
            text.push_str(&format!(
                "\n• {} more sink failures/recoveries",
                self.sinks_undetailed
            ));
        }
        if self.total == 0 {
            return text;
        }
        if !text.is_empty() {
            text.push('\n');
        }
        let since = self
            .since
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_default();
        text.push_str(&format!(
            ":rotating_light: bqsink (group `{connector}`): {} records failed since {since}",
            self.total
        ));
        let mut groups: Vec<_> = self.groups.iter().collect();
        groups.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
        for ((topic, stage, class), g) in groups {
            let offsets: Vec<String> = g.samples.iter().map(|(p, o)| format!("{p}@{o}")).collect();
            let more = if g.count as usize > g.samples.len() {
                ", …"
            } else {
                ""
            };
            text.push_str(&format!(
                "\n• `{topic}` {stage} {class}: {} (partition@offset {}{more}) — {}",
                g.count,
                offsets.join(", "),
                g.error
            ));
        }
        if self.undetailed > 0 {
            text.push_str(&format!(
                "\n• {} more in other topics/stages/errors",
                self.undetailed
            ));
        }
        text
    }
}

/// The destination's name (logs, the `destination` label of its metrics).
const NAME: &str = "Slack";

/// Counters of the alerting thread.
#[derive(Debug, Default)]
pub struct SlackCounters {
    /// Messages Slack accepted.
    pub posts: AtomicU64,
    /// Attempts that failed (each retry counts).
    pub failed_attempts: AtomicU64,
    /// Failures whose alert was given up (the webhook refused it for good).
    pub dropped: AtomicU64,
}

struct Shared {
    aggregate: Mutex<Aggregate>,
    counters: SlackCounters,
    stop: tokio::sync::Notify,
}

/// The Slack destination; stopping it (drop) makes a last attempt to post what is pending.
pub struct SlackAlerts {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// The sink health this instance listens to, and its subscription.
    watching: Option<(Arc<Stats>, u64)>,
}

/// Errors setting up Slack alerts.
#[derive(Debug, thiserror::Error)]
pub enum SlackSetupError {
    #[error("cannot build the HTTP client for Slack")]
    Client(#[source] reqwest::Error),
    #[error("cannot start the Slack alert thread")]
    Thread(#[source] std::io::Error),
}

/// Why one post attempt failed.
#[derive(Debug, thiserror::Error)]
enum PostError {
    #[error("Slack answered {status}: {body}")]
    Status {
        status: u16,
        body: String,
        retry_after: Option<Duration>,
    },
    #[error("cannot reach Slack: {0}")]
    Transport(String),
}

impl PostError {
    fn retryable(&self) -> bool {
        match self {
            PostError::Status { status, .. } => *status == 429 || *status >= 500,
            PostError::Transport(_) => true,
        }
    }
}

async fn post_once(client: &reqwest::Client, url: &str, text: &str) -> Result<(), PostError> {
    let body = serde_json::to_vec(&serde_json::json!({ "text": text })).unwrap_or_default();
    let resp = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        // The webhook URL is a secret, and reqwest's error text ends with the request's URL.
        .map_err(|e| PostError::Transport(e.without_url().to_string()))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = resp.text().await.unwrap_or_default();
    Err(PostError::Status {
        status: status.as_u16(),
        body: body.chars().take(200).collect(),
        retry_after,
    })
}

/// Posts `text`, retrying 429/5xx/transport errors with backoff until `deadline`.
async fn post_with_retries(
    client: &reqwest::Client,
    url: &str,
    text: &str,
    deadline: Instant,
    counters: &SlackCounters,
) -> Result<(), PostError> {
    let mut delay = Duration::from_millis(250);
    loop {
        let err = match post_once(client, url, text).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        counters.failed_attempts.fetch_add(1, Ordering::Relaxed);
        let wait = match &err {
            PostError::Status {
                retry_after: Some(r),
                ..
            } => *r,
            _ => delay,
        };
        if !err.retryable() || Instant::now() + wait >= deadline {
            return Err(err);
        }
        tracing::debug!(error = %err, "Slack alert failed, retrying");
        tokio::time::sleep(wait).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

impl SlackAlerts {
    /// Starts the alert thread for `url`, posting at most once per `errors.slack.window_secs`.
    pub fn start(url: Secret, config: &Config) -> Result<Self, SlackSetupError> {
        let window = Duration::from_secs(config.errors.slack.window_secs);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10).min(window.max(Duration::from_secs(1))))
            .build()
            .map_err(SlackSetupError::Client)?;
        let shared = Arc::new(Shared {
            aggregate: Mutex::new(Aggregate::default()),
            counters: SlackCounters::default(),
            stop: tokio::sync::Notify::new(),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(SlackSetupError::Thread)?;
        let connector = config.kafka.group_id.clone();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("slack-alerts".into())
            .spawn(move || {
                runtime.block_on(run(thread_shared, client, url, window, connector));
            })
            .map_err(SlackSetupError::Thread)?;
        Ok(Self {
            shared,
            thread: Some(thread),
            watching: None,
        })
    }

    /// Alerts sink failures and recoveries of `stats.health` too, until dropped.
    pub fn watch_sinks(mut self, stats: &Arc<Stats>) -> Self {
        let shared = Arc::downgrade(&self.shared);
        let id = stats.health.subscribe(move |event| {
            if let Some(shared) = shared.upgrade() {
                shared
                    .aggregate
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .add_sink_event(event);
            }
        });
        self.watching = Some((Arc::clone(stats), id));
        self
    }

    pub fn counters(&self) -> &SlackCounters {
        &self.shared.counters
    }
}

fn take(shared: &Shared) -> Aggregate {
    std::mem::take(&mut *shared.aggregate.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Puts back what could not be posted, under what arrived since.
fn put_back(shared: &Shared, mut older: Aggregate) {
    let mut agg = shared.aggregate.lock().unwrap_or_else(|e| e.into_inner());
    older.merge(std::mem::take(&mut *agg));
    *agg = older;
}

async fn run(
    shared: Arc<Shared>,
    client: reqwest::Client,
    url: Secret,
    window: Duration,
    connector: String,
) {
    let mut next = Instant::now() + window;
    let mut stopping = false;
    while !stopping {
        stopping = tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => false,
            _ = shared.stop.notified() => true,
        };
        let agg = take(&shared);
        if agg.is_empty() {
            next = Instant::now() + window;
            continue;
        }
        let text = agg.render(&connector);
        let result = if stopping {
            last_try(&client, url.expose(), &text, &shared.counters).await
        } else {
            tokio::select! {
                r = post_with_retries(&client, url.expose(), &text, Instant::now() + window, &shared.counters) => r,
                _ = shared.stop.notified() => {
                    stopping = true;
                    last_try(&client, url.expose(), &text, &shared.counters).await
                }
            }
        };
        match result {
            Ok(()) => {
                shared.counters.posts.fetch_add(1, Ordering::Relaxed);
                telemetry::destination_outcome(NAME, "delivered", agg.total());
                tracing::debug!(failures = agg.total(), "Slack alert posted");
            }
            Err(e) if e.retryable() && !stopping => {
                telemetry::destination_outcome(NAME, "failed", agg.total());
                tracing::warn!(error = %e, failures = agg.total(), "Slack alert not posted; it is merged into the next window's");
                put_back(&shared, agg);
            }
            Err(e) => {
                shared
                    .counters
                    .dropped
                    .fetch_add(agg.total(), Ordering::Relaxed);
                telemetry::destination_outcome(NAME, "dropped", agg.total());
                tracing::error!(error = %e, failures = agg.total(), "Slack alert given up");
            }
        }
        next = Instant::now() + window;
    }
}

/// On shutdown: one short attempt (bounded, so stopping never waits on Slack for long).
async fn last_try(
    client: &reqwest::Client,
    url: &str,
    text: &str,
    counters: &SlackCounters,
) -> Result<(), PostError> {
    let limit = Duration::from_secs(3);
    match tokio::time::timeout(
        limit,
        post_with_retries(client, url, text, Instant::now() + limit, counters),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(PostError::Transport("no answer before shutdown".into())),
    }
}

impl Drop for SlackAlerts {
    fn drop(&mut self) {
        if let Some((stats, id)) = self.watching.take() {
            stats.health.unsubscribe(id);
        }
        self.shared.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl ErrorDestination for SlackAlerts {
    fn name(&self) -> &'static str {
        NAME
    }

    fn role(&self) -> Role {
        Role::Alert
    }

    fn deliver(
        &self,
        records: Arc<[FailureRecord]>,
    ) -> BoxFuture<'static, Result<(), DeliveryError>> {
        {
            let mut agg = self
                .shared
                .aggregate
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for r in records.iter() {
                agg.add(r);
            }
        }
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use bqsink_actors::messages::{RawRecord, Stage, Tp};

    use super::*;

    fn failure(topic: &str, partition: i32, offset: i64, class: &'static str) -> FailureRecord {
        FailureRecord {
            tp: Tp::new(topic, partition),
            source: RawRecord {
                offset,
                ..Default::default()
            },
            stage: Stage::Convert,
            class,
            error: "value is not valid JSON".into(),
        }
    }

    #[tokio::test]
    async fn transport_errors_never_carry_the_webhook_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener); // nothing listens there now: the request fails to connect
        let url = format!("http://127.0.0.1:{port}/services/T000/B000/s3cr3tw3bh00k");
        let err = post_once(&reqwest::Client::new(), &url, "hi")
            .await
            .unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(matches!(err, PostError::Transport(_)), "{text}");
        assert!(!text.contains("s3cr3t"), "the webhook URL leaked: {text}");
    }

    #[test]
    fn failures_are_counted_by_group_with_the_first_offsets() {
        let mut agg = Aggregate::default();
        for o in 0..12 {
            agg.add(&failure("a", 0, o, "invalid_json"));
        }
        agg.add(&failure("b", 2, 9, "tombstone"));
        let text = agg.render("g");
        let mut lines = text.lines();
        assert!(lines
            .next()
            .unwrap()
            .contains("(group `g`): 13 records failed since"));
        assert_eq!(
            lines.next().unwrap(),
            "• `a` convert invalid_json: 12 (partition@offset 0@0, 0@1, 0@2, 0@3, 0@4, …) — value is not valid JSON"
        );
        assert!(lines
            .next()
            .unwrap()
            .starts_with("• `b` convert tombstone: 1 (partition@offset 2@9)"));
        assert_eq!(lines.next(), None);
    }

    #[test]
    fn groups_are_bounded_but_every_failure_is_counted() {
        let mut agg = Aggregate::default();
        for t in 0..(MAX_GROUPS + 10) {
            agg.add(&failure(&format!("t{t}"), 0, 1, "x"));
            agg.add(&failure(&format!("t{t}"), 0, 2, "x"));
        }
        assert_eq!(agg.total(), 2 * (MAX_GROUPS as u64 + 10));
        assert_eq!(agg.groups.len(), MAX_GROUPS);
        assert!(agg
            .render("g")
            .ends_with("• 20 more in other topics/stages/errors"));
    }

    #[test]
    fn an_unposted_aggregate_merges_into_the_next() {
        let mut old = Aggregate::default();
        old.add(&failure("a", 0, 1, "x"));
        let mut new = Aggregate::default();
        new.add(&failure("a", 0, 2, "x"));
        new.add(&failure("b", 0, 3, "y"));
        old.merge(new);
        assert_eq!(old.total(), 3);
        let g = &old.groups[&("a".to_string(), "convert", "x")];
        assert_eq!((g.count, g.samples.clone()), (2, vec![(0, 1), (0, 2)]));
    }

    #[test]
    fn sink_failures_and_recoveries_are_one_line_each_before_the_record_failures() {
        use bqsink_actors::health::{SinkCondition, SinkState};
        let mut agg = Aggregate::default();
        assert!(agg.is_empty());
        agg.add_sink_event(&HealthEvent::Failing(SinkState {
            sink: "bigquery ds.t".into(),
            condition: SinkCondition::Failing,
            since: SystemTime::UNIX_EPOCH,
            last_error: "HTTP 503 from BigQuery".into(),
            attempts: 7,
            partitions: [Tp::new("t", 0)].into_iter().collect(),
        }));
        assert!(!agg.is_empty());
        let text = agg.render("g");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains("sink failing: bigquery ds.t since 1970-01-01T00:00:00Z (7 attempts"),
            "{text}"
        );
        assert!(text.contains("partitions t[0]): HTTP 503"), "{text}");
        agg.add_sink_event(&HealthEvent::Recovered {
            sink: "bigquery ds.t".into(),
            after: Duration::from_millis(61_500),
        });
        agg.add(&failure("a", 0, 1, "x"));
        let text = agg.render("g");
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].contains("sink recovered: bigquery ds.t takes writes again after 1m 1s"),
            "{text}"
        );
        assert!(lines[2].contains("1 records failed since"), "{text}");
    }
}
