//! The pipeline side of `bqsink bench`: `bqsink bench-worker` runs the full pipeline (as `bqsink run`
//! does) and answers the harness (`bqsink_devtools::bench`, see its `worker` module for the line
//! protocol). Only this part needs the pipeline, so only this part lives in `bqsink`.

use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bqsink_actors::config::Config;
use bqsink_actors::kafka::KafkaControl;
use bqsink_actors::messages::{Shutdown, Tp};
use bqsink_actors::pipeline;
use bqsink_actors::stats::Stats;
use bqsink_devtools::bench::WorkerReport;
use bqsink_devtools::measure::{cpu_secs, peak_rss_kib};

use crate::{bigquery, destinations, kafka};

/// Runs the pipeline (as `bqsink run` does) until standard input closes. Reads `pause N` and
/// `resume N` lines (partitions 0..N of the first topic) and answers `paused` / `resumed`; prints
/// `progress <consumed> <handled>` whenever the counters move (checked every 10 ms) and a final
/// `report <json>` line.
pub fn worker(config: Config) -> anyhow::Result<i32> {
    let topic = config
        .kafka
        .topics
        .first()
        .cloned()
        .context("no topic configured")?;
    let (client, _) = bigquery::from_config(&config.bigquery)?;
    let hook = client.commit_hook();
    let stats = Arc::new(Stats::default());
    // As `run::run` starts it, keeping a handle on the consumer's controls for pause and resume.
    let destinations = destinations::from_config(&config, &stats)?;
    let system = actix::System::new();
    let (control, commands) = kafka::control();
    let registry = crate::registry::from_config(&config.registry)
        .context("setting up the schema registry (registry.url)")?;
    let supervisor = system.block_on(async {
        pipeline::start_with_registry(
            &config,
            control.clone(),
            client,
            Arc::clone(&stats),
            destinations.clone(),
            registry,
        )
    });
    let poller = kafka::spawn_consumer(
        &config,
        supervisor.clone(),
        commands,
        Arc::clone(&stats),
        hook,
    )?;

    std::thread::spawn(move || {
        let tps = |n: &str| -> Vec<Tp> {
            (0..n.parse().unwrap_or(0))
                .map(|p| Tp::new(topic.as_str(), p))
                .collect()
        };
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("pause ") {
                tps(n).iter().for_each(|tp| control.pause(tp));
                // The poller runs commands between polls (at most 50 ms apart).
                std::thread::sleep(Duration::from_millis(200));
                println!("paused");
            } else if let Some(n) = line.strip_prefix("resume ") {
                tps(n).iter().for_each(|tp| control.resume(tp));
                println!("resumed");
            }
        }
        supervisor.do_send(Shutdown);
    });
    let stopped = Arc::new(AtomicBool::new(false));
    let progress = {
        let (stats, stopped) = (Arc::clone(&stats), Arc::clone(&stopped));
        std::thread::spawn(move || {
            let mut last = (u64::MAX, u64::MAX);
            while !stopped.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
                let s = stats.snapshot();
                let now = (s.consumed, s.written + s.deduplicated + s.failed);
                if now != last {
                    println!("progress {} {}", now.0, now.1);
                    last = now;
                }
            }
        })
    };

    let exit_code = system.run_with_code().context("running the actor system")?;
    drop(destinations);
    stopped.store(true, Relaxed);
    let _ = progress.join();
    if poller.join().is_err() {
        bail!("the Kafka poller thread panicked");
    }
    let (user_secs, sys_secs) = cpu_secs();
    let s = stats.snapshot();
    let report = WorkerReport {
        consumed: s.consumed,
        written: s.written,
        deduplicated: s.deduplicated,
        failed: s.failed,
        requests: s.batches,
        pauses: s.pauses,
        exit_code,
        peak_rss_kib: peak_rss_kib().unwrap_or(0),
        user_secs,
        sys_secs,
    };
    println!("report {}", serde_json::to_string(&report)?);
    Ok(exit_code)
}

/// The pipeline consumer's librdkafka fetch settings, for the harness's raw consumer
/// (`BenchOptions::fetch_defaults`).
pub fn fetch_defaults() -> Vec<(String, String)> {
    kafka::FETCH_DEFAULTS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
