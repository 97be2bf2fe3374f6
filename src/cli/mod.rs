//! The `bqsink` command line: parsing (clap) and one function per subcommand. Invariant: every
//! error reaches the user with its context on stderr and a non-zero exit code (2 for an error, 1
//! when records still fail or the demo/bench check finds a mismatch).
//!
//! | module | holds |
//! |---|---|
//! | this file | the arguments, `run` and `validate` |
//! | `replay` | `bqsink replay` arguments into [`crate::replay`] options |
//! | [`demo`] | `bqsink demo`: the pipeline between the devtools' mock Kafka and local BigQuery |
//! | [`bench`](mod@bench) | `bqsink bench` and the pipeline process it measures (`bench-worker`) |
//!
//! Depends on everything else in this crate; nothing depends on it. `demo` and `bench` exist only
//! with the `devtools` cargo feature (on by default, off in the production image): they use the
//! `bqsink-devtools` crate. Without it the subcommands are hidden and say how to get them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
#[cfg(feature = "devtools")]
use bqsink_actors::config::LoggingConfig;
use bqsink_actors::stats::Stats;
use clap::{Parser, Subcommand};

use crate::bigquery;
use crate::service::{logging, Service};
use crate::settings::{self, Sources};

#[cfg(feature = "devtools")]
pub mod bench;
#[cfg(feature = "devtools")]
pub mod demo;
mod replay;

/// Kafka → BigQuery, at least once, deduplicated, with no silent failure.
#[derive(Parser)]
#[command(version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("BQSINK_GIT_SHA"), ")"), about)]
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
    #[command(hide = cfg!(not(feature = "devtools")))]
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
        /// The records' format: `json`, or `avro`, `protobuf` or `json-schema` (the Schema
        /// Registry's wire format, with a local registry).
        #[arg(long, value_enum, default_value_t = FormatArg::Json)]
        format: FormatArg,
    },
    /// Send failed records back: from the dead-letter topic or error files, to their source topic
    /// or straight to BigQuery. Progress is committed, so a second run repeats nothing; records
    /// that fail again are reported (exit code 1).
    Replay(replay::ReplayArgs),
    /// Measure the pipeline end to end: records/s, MB/s, latency, peak RSS, CPU per record.
    #[command(hide = cfg!(not(feature = "devtools")))]
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
        /// Which write path to measure: `storage` (the default configuration: Storage Write API,
        /// exactly once), `insert-all`, or `both`, one after the other, printed side by side.
        #[arg(long, value_enum, default_value_t = BenchPath::Both)]
        path: BenchPath,
        /// The records' format: `json`, or `avro`, `protobuf` or `json-schema` (the same events in
        /// the Schema Registry's wire format, with a local registry).
        #[arg(long, value_enum, default_value_t = FormatArg::Json)]
        format: FormatArg,
    },
    /// The pipeline process of `bqsink bench` (runs until standard input closes).
    #[command(hide = true)]
    BenchWorker,
}

/// `bqsink demo --format`, `bqsink bench --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FormatArg {
    Json,
    Avro,
    Protobuf,
    JsonSchema,
}

impl FormatArg {
    #[cfg_attr(not(feature = "devtools"), allow(dead_code))]
    fn value_format(self) -> bqsink_actors::config::ValueFormat {
        match self {
            FormatArg::Json => bqsink_actors::config::ValueFormat::Json,
            FormatArg::Avro => bqsink_actors::config::ValueFormat::Avro,
            FormatArg::Protobuf => bqsink_actors::config::ValueFormat::Protobuf,
            FormatArg::JsonSchema => bqsink_actors::config::ValueFormat::JsonSchema,
        }
    }
}

/// `bqsink bench --path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchPath {
    Storage,
    InsertAll,
    Both,
}

impl BenchPath {
    #[cfg(feature = "devtools")]
    fn paths(self) -> Vec<bqsink_devtools::bench::WritePath> {
        use bqsink_devtools::bench::WritePath;
        match self {
            BenchPath::Storage => vec![WritePath::Storage],
            BenchPath::InsertAll => vec![WritePath::InsertAll],
            BenchPath::Both => vec![WritePath::Storage, WritePath::InsertAll],
        }
    }
}

/// Parses the command line and runs the subcommand; the process's exit code.
pub fn main() -> ExitCode {
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
            let _traces = logging::init_with_traces(&logging::settings(&config), &config.telemetry)
                .context("setting up trace export")?;
            tracing::info!(topics = ?config.kafka.topics, group = %config.kafka.group_id, endpoint = %config.bigquery.endpoint, "starting bqsink");
            let (client, auth) =
                bigquery::from_config(&config.bigquery).context("setting up BigQuery")?;
            tracing::info!(auth = %auth, write_api = ?config.bigquery.write_api, "BigQuery authentication");
            Service::start(config, client, Arc::new(Stats::default()), true)?.run()
        }
        Command::Replay(args) => {
            let config = settings::load(&sources)?;
            logging::init(&logging::settings(&config));
            replay::run(&config, args)
        }
        #[cfg(feature = "devtools")]
        Command::Demo {
            records,
            follow,
            rate,
            partitions,
            format,
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
                format: format.value_format(),
            })
        }
        #[cfg(feature = "devtools")]
        Command::Bench {
            records,
            partitions,
            rate,
            duplicates,
            malformed,
            seed,
            worker_config,
            path,
            format,
        } => {
            logging::init(&LoggingConfig {
                level: "warn".into(),
                ..Default::default()
            });
            bqsink_devtools::bench::run(&bqsink_devtools::bench::BenchOptions {
                records,
                partitions,
                rate: rate.map(|r| r.max(1)),
                duplicates,
                malformed,
                seed,
                worker_config,
                fetch_defaults: bench::fetch_defaults(),
                paths: path.paths(),
                format: format.value_format(),
            })
        }
        #[cfg(feature = "devtools")]
        Command::BenchWorker => {
            let config = settings::load(&sources)?;
            logging::init(&logging::settings(&config));
            bench::worker(config)
        }
        #[cfg(not(feature = "devtools"))]
        Command::Demo { .. } => Err(without_devtools("demo")),
        #[cfg(not(feature = "devtools"))]
        Command::Bench { .. } | Command::BenchWorker => Err(without_devtools("bench")),
    }
}

/// The error of a development subcommand in a binary built without the `devtools` feature.
#[cfg(any(test, not(feature = "devtools")))]
fn without_devtools(command: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "`bqsink {command}` is development tooling, which this binary was built without (the \
         production build uses --no-default-features); run it from a checkout with the default \
         features: `cargo run --release -- {command}`"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_without_devtools_says_how_to_get_the_subcommand() {
        let message = without_devtools("demo").to_string();
        assert!(
            message.contains("`bqsink demo` is development tooling"),
            "{message}"
        );
        assert!(
            message.contains("`cargo run --release -- demo`"),
            "{message}"
        );
    }
}
