//! `bqsink replay`: its arguments, turned into [`crate::replay::ReplayOptions`] and run.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use bqsink_actors::bigquery::BigQuery;
use bqsink_actors::config::Config;
use bqsink_actors::destinations::parse_stage;
use clap::Args;

use crate::bigquery;
use crate::replay::{self, ReplayFrom, ReplayOptions, ReplayTo};

#[derive(Args)]
#[command(group(clap::ArgGroup::new("from").required(true).args(["from_dlq", "from_file"])))]
#[command(group(clap::ArgGroup::new("to").required(true).args(["to_source", "to_bigquery"])))]
pub struct ReplayArgs {
    /// Read the dead-letter topic TOPIC (progress kept in a consumer group, see --group).
    #[arg(long, value_name = "TOPIC")]
    from_dlq: Option<String>,
    /// Read error files (errors.file.path and its rotated PATH.N); progress kept per file (first
    /// line) in PATH.replay-progress, so it follows files through rotation.
    #[arg(long, value_name = "PATH", num_args = 1..)]
    from_file: Vec<PathBuf>,
    /// Produce each record to the topic and partition it came from (__connect.errors.topic).
    #[arg(long)]
    to_source: bool,
    /// Write each record to BigQuery through transform, dedup and insertAll.
    #[arg(long)]
    to_bigquery: bool,
    /// Only records that failed at this stage: convert, transform, bigquery (or Kafka Connect's
    /// VALUE_CONVERTER, TRANSFORMATION, TASK_PUT).
    #[arg(long, value_name = "STAGE")]
    filter_stage: Option<String>,
    /// Only records with a timestamp at or after TIME: RFC 3339 (2024-05-01T12:00:00Z) or a
    /// duration back from now (2h, 3days).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Consumer group keeping the progress through the dead-letter topic
    /// [default: <kafka.group_id>.replay.<stage or all>].
    #[arg(long)]
    group: Option<String>,
    /// Append records that fail again to this NDJSON file (replayable with --from-file).
    #[arg(long, value_name = "PATH")]
    still_failing: Option<PathBuf>,
}

/// Runs the replay; 1 when records still fail, 0 otherwise.
pub fn run(config: &Config, args: ReplayArgs) -> anyhow::Result<i32> {
    let from = match args.from_dlq {
        Some(topic) => ReplayFrom::Dlq(topic),
        None => ReplayFrom::Files(args.from_file),
    };
    let to = if args.to_source {
        ReplayTo::Source
    } else {
        ReplayTo::BigQuery
    };
    let mut opts = ReplayOptions::new(from, to);
    opts.filter_stage = match &args.filter_stage {
        Some(s) => Some(parse_stage(s).with_context(|| {
            format!("--filter-stage {s:?}: expected convert, transform or bigquery")
        })?),
        None => None,
    };
    opts.since_ms = args.since.as_deref().map(replay::parse_since).transpose()?;
    opts.group = args.group;
    opts.still_failing_file = args.still_failing;
    opts.progress = true;
    let bq: Option<Arc<dyn BigQuery>> = match to {
        ReplayTo::BigQuery => Some(
            bigquery::from_config(&config.bigquery)
                .context("setting up BigQuery")?
                .0,
        ),
        ReplayTo::Source => None,
    };
    let report = replay::run(config, bq, &opts)?;
    println!("{}", replay::render_report(&report, to));
    Ok(i32::from(report.still_failing > 0))
}
