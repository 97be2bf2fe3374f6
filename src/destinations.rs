//! Builds the error destinations `[errors]` asks for: dead-letter topic, file, Slack.

use std::sync::Arc;

use anyhow::Context as _;
use bqsink_actors::config::{Config, Tolerance};
use bqsink_actors::destinations::ErrorDestination;
use bqsink_actors::stats::Stats;

use crate::dlq::DeadLetterQueue;
use crate::error_file::ErrorFile;
use crate::slack::SlackAlerts;

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
