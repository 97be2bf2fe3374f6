//! The `bqsink` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use bqsink::settings::{self, Sources};
use bqsink::{bigquery, demo, logging, run};
use bqsink_actors::config::LoggingConfig;
use bqsink_actors::stats::Stats;
use clap::{Parser, Subcommand};

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
            logging::init(&config.logging);
            tracing::info!(topics = ?config.kafka.topics, group = %config.kafka.group_id, endpoint = %config.bigquery.endpoint, "starting bqsink");
            let client =
                bigquery::RestClient::new(&config.bigquery).context("setting up BigQuery")?;
            run::run(
                &config,
                Arc::new(client),
                Arc::new(Stats::default()),
                true,
                None,
            )
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
    }
}
