//! `bqsink demo`: the whole job on one machine. It starts an embedded Kafka (librdkafka's mock
//! cluster), a generator of member events (with duplicates and malformed records), a local
//! insertAll-compatible sink, and the pipeline between them; then checks that the sink holds every
//! unique event exactly once.
//!
//! The tooling (mock cluster, generator, sink) comes from `bqsink_devtools`; this module is the wiring
//! that needs the pipeline.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bqsink_actors::config::ValueFormat;
use bqsink_actors::stats::StatsSnapshot;
use bqsink_devtools::generator::{self, Counts, Generator, Mix};
use bqsink_devtools::kafka::{mock_cluster, produce, producer, TOPIC};
use bqsink_devtools::registered::Encoder;
use bqsink_devtools::registry::Registry;
use bqsink_devtools::sink::{Sink, SinkOptions};
use rdkafka::producer::Producer;

use crate::service::PipelineHandle;
use crate::{bigquery, settings};

/// Demo settings (`bqsink demo --records N [--follow]`).
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub records: u64,
    pub follow: bool,
    pub partitions: i32,
    /// Records per second while following.
    pub follow_rate: u64,
    /// The records' format: JSON, or Avro, Protobuf or JSON Schema through a local Schema
    /// Registry.
    pub format: ValueFormat,
}

/// The member events' schema id in the demo's registry.
const SCHEMA_ID: u32 = 1;

fn config_text(
    bootstrap: &str,
    endpoint: &str,
    storage_endpoint: &str,
    registry: Option<(ValueFormat, &str)>,
) -> String {
    let formats = match registry {
        Some((format, url)) => {
            format!("[kafka.formats]\n\"{TOPIC}\" = \"{format}\"\n[registry]\nurl = \"{url}\"\n")
        }
        None => String::new(),
    };
    format!(
        r#"
[kafka]
brokers = "{bootstrap}"
group_id = "bqsink-demo"
topics = ["{TOPIC}"]
commit_interval_ms = 250
[kafka.properties]
"session.timeout.ms" = "6000"
"max.poll.interval.ms" = "10000"
[bigquery]
endpoint = "{endpoint}"
write_api = "storage"
delivery = "exactly_once"
storage_endpoint = "{storage_endpoint}"
project = "demo"
dataset = "members"
[bigquery.tables]
"{TOPIC}" = "member_events"
[errors]
tolerance = "all"
log_include_messages = true
{formats}"#
    )
}

fn line(s: &StatsSnapshot, produced: u64, secs: f64) -> String {
    format!(
        "produced {produced}  consumed {}  written {}  deduplicated {}  failed {}  ({:.0} records/s)",
        s.consumed,
        s.written,
        s.deduplicated,
        s.failed,
        (s.written + s.deduplicated + s.failed) as f64 / secs.max(1e-3)
    )
}

/// Runs the demo; returns the exit code (0 when the sink holds exactly the unique events).
pub fn run(opts: &DemoOptions) -> anyhow::Result<i32> {
    let cluster = mock_cluster(TOPIC, opts.partitions)?;
    let bootstrap = cluster.bootstrap_servers();
    let sink = Sink::start(SinkOptions {
        keep_rows: false,
        id_pointer: Some("/event_id".into()),
        ..Default::default()
    })
    .context("starting the local insertAll sink")?;
    println!(
        "embedded Kafka at {bootstrap}, topic {TOPIC} ({} partitions)",
        opts.partitions
    );
    println!(
        "local BigQuery sink at {} (Storage Write API at {}, exactly once)",
        sink.url(),
        sink.grpc_url()
    );

    // The Storage Write API encodes rows from the table's schema: the table exists, as in BigQuery.
    sink.create_table("members.member_events", generator::member_events_fields());
    let encoder = Encoder::new(opts.format, SCHEMA_ID);
    let registry = match &encoder {
        None => None,
        Some(encoder) => {
            let registry = Registry::start().context("starting the local schema registry")?;
            encoder.register(&registry);
            println!(
                "local Schema Registry at {} (the events as {}, schema id {SCHEMA_ID})",
                registry.url, opts.format
            );
            Some(registry)
        }
    };
    let registry_url = registry.as_ref().map(|r| (opts.format, r.url.as_str()));
    let text = config_text(&bootstrap, sink.url(), sink.grpc_url(), registry_url);
    let config = settings::from_toml(&text)?;
    let (client, _) = bigquery::from_config(&config.bigquery)?;
    let started = Instant::now();
    let pipeline = PipelineHandle::spawn(config, client)?;

    // The generator produces while the pipeline consumes.
    let produced = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (records, follow, rate) = (opts.records, opts.follow, opts.follow_rate);
    let gen_thread = {
        let (produced, done, stop) = (Arc::clone(&produced), Arc::clone(&done), Arc::clone(&stop));
        std::thread::spawn(move || -> anyhow::Result<Counts> {
            let producer = producer(&bootstrap)?;
            let mut counts = Counts::default();
            let paced = Instant::now();
            for event in Generator::new(Mix {
                duplicates: 0.02,
                malformed: 0.0005,
                seed: 7,
            }) {
                if stop.load(Ordering::Relaxed) || (!follow && counts.total() >= records) {
                    break;
                }
                // In the registry format when asked (a malformed event stays JSON: not framed).
                let framed = encoder.as_ref().and_then(|e| e.encode(&event.payload));
                let payload = framed.as_deref().unwrap_or(&event.payload);
                produce(&producer, TOPIC, &event.key, payload)?;
                counts.add(event.kind);
                produced.store(counts.total(), Ordering::Relaxed);
                if follow && counts.total() % 100 == 0 {
                    let due = Duration::from_secs_f64(counts.total() as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(paced.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
            producer
                .flush(Duration::from_secs(30))
                .context("flushing the demo producer")?;
            done.store(true, Ordering::Relaxed);
            Ok(counts)
        })
    };
    if follow {
        let stop = Arc::clone(&stop);
        ctrlc_once(move || stop.store(true, Ordering::Relaxed))?;
        println!("following: producing {rate} events/s; Ctrl-C stops");
    }

    let mut last_print = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let s = pipeline.stats.snapshot();
        let p = produced.load(Ordering::Relaxed);
        if last_print.elapsed() >= Duration::from_secs(2) {
            println!("{}", line(&s, p, started.elapsed().as_secs_f64()));
            last_print = Instant::now();
        }
        if done.load(Ordering::Relaxed) && s.written + s.deduplicated + s.failed >= p {
            break;
        }
        if pipeline.is_finished() {
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let counts = gen_thread
        .join()
        .map_err(|_| anyhow::anyhow!("generator panicked"))??;
    let stats = Arc::clone(&pipeline.stats);
    let code = pipeline.shutdown()?;
    let s = stats.snapshot();
    let (distinct, repeats) = sink.id_stats();
    println!("\n== bqsink demo summary ==");
    println!(
        "produced      {:>10}  ({} unique, {} duplicates, {} malformed)",
        counts.total(),
        counts.unique,
        counts.duplicates,
        counts.malformed
    );
    println!(
        "written       {:>10}  (sink holds {} rows, {} distinct event ids, {} repeated)",
        s.written,
        sink.total_rows(),
        distinct,
        repeats
    );
    println!("deduplicated  {:>10}", s.deduplicated);
    println!(
        "failed        {:>10}  (reported as ERROR log lines with their payload)",
        s.failed
    );
    println!(
        "throughput    {:>10.0} records/s over {elapsed:.1} s",
        counts.total() as f64 / elapsed
    );
    let exact = distinct == counts.unique && repeats == 0 && s.failed == counts.malformed;
    println!(
        "result        {}",
        if exact {
            "OK: every unique event written exactly once"
        } else {
            "MISMATCH"
        }
    );
    Ok(if code != 0 {
        code
    } else if exact {
        0
    } else {
        1
    })
}

/// Runs `f` on the first Ctrl-C or SIGTERM.
fn ctrlc_once(f: impl FnOnce() + Send + 'static) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        rt.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
        f();
    });
    Ok(())
}
