//! The error destinations: where a *record failure* goes (never a sink failure, which is retried or
//! stops the pipeline). Invariant: a destination's `deliver` resolves only when what it stores is
//! stored (broker acknowledged, file synced), because the error report lets the record's offset be
//! committed on that; an alert-only destination (Slack) never holds the pipeline up.
//!
//! | module | holds |
//! |---|---|
//! | [`dlq`] (+ `dlq/setup.rs`) | the dead-letter topic: producer, Kafka Connect context headers, start-up checks |
//! | [`error_file`] | the NDJSON error file with rotation (what `bqsink replay --from-file` reads) |
//! | [`slack`] | aggregated Slack alerts for record failures and sink-health changes |
//! | this file | [`from_config`]: the destinations `[errors]` asks for |
//!
//! Depends on: `bqsink_actors` (the `ErrorDestination` port) and external crates only; nothing else
//! in this crate. [`crate::replay`] reads what `dlq` and `error_file` wrote.

pub mod dlq;
pub mod error_file;
pub mod slack;

use std::sync::Arc;

use anyhow::Context as _;
use bqsink_actors::config::{Config, Tolerance};
use bqsink_actors::destinations::ErrorDestination;
use bqsink_actors::stats::Stats;

use dlq::DeadLetterQueue;
use error_file::ErrorFile;
use slack::SlackAlerts;

/// The configured destinations, stores first. Dropping them stops the Slack thread (after a last
/// post of what is pending). Slack also alerts the sink failures of `stats.health`.
pub fn from_config(
    config: &Config,
    stats: &Arc<Stats>,
) -> anyhow::Result<Vec<Arc<dyn ErrorDestination>>> {
    let errors = &config.errors;
    let mut list: Vec<Arc<dyn ErrorDestination>> = Vec::new();
    if !errors.deadletterqueue.topic_name.is_empty() {
        list.push(Arc::new(
            DeadLetterQueue::new(config).context("setting up errors.deadletterqueue")?,
        ));
    }
    if let Some(path) = &errors.file.path {
        list.push(Arc::new(ErrorFile::new(path.clone(), config)));
    }
    if let Some(url) = errors.slack.webhook_url.as_ref().filter(|u| !u.is_empty()) {
        // Kept a Secret down to the request (slack.rs): the URL is the webhook's credential.
        list.push(Arc::new(
            SlackAlerts::start(url.clone(), config)
                .context("setting up errors.slack")?
                .watch_sinks(stats),
        ));
    }
    let stores = !errors.deadletterqueue.topic_name.is_empty() || errors.file.path.is_some();
    if stores && errors.tolerance == Tolerance::None {
        tracing::info!(
            "errors.tolerance = \"none\": failed records stop the pipeline and are not written to \
             the dead-letter topic or file (they are read again after a restart)"
        );
    }
    Ok(list)
}
