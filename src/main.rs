//! The `bqsink` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use bqsink::replay::{self, ReplayFrom, ReplayOptions, ReplayTo};
use bqsink::service::Service;
use bqsink::settings::{self, Sources};
use bqsink::{bench, bigquery, demo, logging};
use bqsink_actors::config::LoggingConfig;
use bqsink_actors::destinations::parse_stage;
use bqsink_actors::stats::Stats;
use clap::{Args, Parser, Subcommand};

/// jemalloc: records are allocated on one thread and freed on another, which glibc malloc does
/// slowly (README, Performance: −10 % CPU per record, +8 % records/s in `bqsink bench`).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Kafka → BigQuery, at least once, deduplicated, with no silent failure.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Environment: layers `<config-dir>/<ENV>.toml` over `default.toml`.
    #[arg(long, global = true, env = "BQSINK_ENV")]
    env: Option<String>,
    /// One more TOML file on top of the environment's.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Directory of `default.toml` and the environment files.
    #[arg(
        long,
        global = true,
        env = "BQSINK_CONFIG_DIR",
        default_value = "config"
    )]
    config_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume the configured topics into BigQuery until SIGTERM or Ctrl-C.
    Run,
    /// Load and check the configuration, print the merged result.
    Validate,
    /// Run the whole job locally: embedded Kafka, event generator, local BigQuery sink.
    Demo {
        /// Events to produce before the demo ends by itself.
        #[arg(long, default_value_t = 100_000)]
        records: u64,
        /// Keep producing (at --rate events/s) until Ctrl-C.
        #[arg(long)]
        follow: bool,
        /// Events per second with --follow.
        #[arg(long, default_value_t = 2_000)]
        rate: u64,
        /// Partitions of the demo topic.
        #[arg(long, default_value_t = 8)]
        partitions: i32,
    },
    /// Send failed records back: from the dead-letter topic or error files, to their source topic
    /// or straight to BigQuery. Progress is committed, so a second run repeats nothing; records
    /// that fail again are reported (exit code 1).
    Replay(ReplayArgs),
    /// Measure the pipeline end to end: records/s, MB/s, latency, peak RSS, CPU per record.
    Bench {
        /// Member events to produce (~250 bytes each).
        #[arg(long, default_value_t = 2_000_000)]
        records: u64,
        /// Partitions of the bench topic.
        #[arg(long, default_value_t = 16)]
        partitions: i32,
        /// Produce at this many records/s while the pipeline consumes, to measure record latency
        /// (default: consume a backlog at full speed, to measure throughput).
        #[arg(long)]
        rate: Option<u64>,
        /// Share of duplicate events.
        #[arg(long, default_value_t = 0.01)]
        duplicates: f64,
        /// Share of malformed events.
        #[arg(long, default_value_t = 0.001)]
        malformed: f64,
        /// Seed of the event generator.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// A TOML file of pipeline settings to try (layered under the bench's own: Kafka and sink
        /// addresses, `errors.tolerance = "all"`).
        #[arg(long)]
        worker_config: Option<PathBuf>,
    },
    /// The pipeline process of `bqsink bench` (runs until standard input closes).
    #[command(hide = true)]
    BenchWorker,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("from").required(true).args(["from_dlq", "from_file"])))]
#[command(group(clap::ArgGroup::new("to").required(true).args(["to_source", "to_bigquery"])))]
struct ReplayArgs {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("bqsink: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<i32> {
    let sources = Sources {
        dir: cli.config_dir,
        env: cli.env,
        file: cli.config,
    };
    match cli.command {
        Command::Validate => {
            let config = settings::load(&sources)?;
            print!("{}", settings::to_toml_redacted(&config));
            eprintln!("configuration is valid");
            Ok(0)
        }
        Command::Run => {
            let config = settings::load(&sources)?;
            // Kept until exit: dropping it exports the last spans.
            let _traces = logging::init_with_traces(&config.logging, &config.telemetry)
                .context("setting up trace export")?;
            tracing::info!(topics = ?config.kafka.topics, group = %config.kafka.group_id, endpoint = %config.bigquery.endpoint, "starting bqsink");
            let client =
                bigquery::RestClient::new(&config.bigquery).context("setting up BigQuery")?;
            tracing::info!(auth = %client.auth_description(), "BigQuery authentication");
            Service::start(config, Arc::new(client), Arc::new(Stats::default()), true)?.run()
        }
        Command::Replay(args) => {
            let config = settings::load(&sources)?;
            logging::init(&config.logging);
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
            let bq: Option<Arc<dyn bqsink_actors::bigquery::BigQuery>> = match to {
                ReplayTo::BigQuery => Some(Arc::new(
                    bigquery::RestClient::new(&config.bigquery).context("setting up BigQuery")?,
                )),
                ReplayTo::Source => None,
            };
            let report = replay::run(&config, bq, &opts)?;
            println!("{}", replay::render_report(&report, to));
            Ok(i32::from(report.still_failing > 0))
        }
        Command::Demo {
            records,
            follow,
            rate,
            partitions,
        } => {
            logging::init(&LoggingConfig {
                level: "warn,bqsink_actors::error_report=error".into(),
                ..Default::default()
            });
            demo::run(&demo::DemoOptions {
                records,
                follow,
                partitions,
                follow_rate: rate.max(1),
            })
        }
        Command::Bench {
            records,
            partitions,
            rate,
            duplicates,
            malformed,
            seed,
            worker_config,
        } => {
            logging::init(&LoggingConfig {
                level: "warn".into(),
                ..Default::default()
            });
            bench::run(&bench::BenchOptions {
                records,
                partitions,
                rate: rate.map(|r| r.max(1)),
                duplicates,
                malformed,
                seed,
                worker_config,
            })
        }
        Command::BenchWorker => {
            let config = settings::load(&sources)?;
            logging::init(&config.logging);
            bench::worker(config)
        }
    }
}
