//! The bench's pipeline process, seen from the harness: `Worker` starts it as
//! `<current executable> ... bench-worker` (the `bqsink` binary's hidden subcommand, which runs the
//! full pipeline as `bqsink run` does) and speaks a line protocol with it:
//!
//! | direction | line | meaning |
//! |---|---|---|
//! | harness → worker | `pause N`, `resume N` | pause / resume partitions 0..N of the topic |
//! | worker → harness | `paused`, `resumed` | the command ran |
//! | worker → harness | `progress <consumed> <handled>` | counters moved (checked every 10 ms) |
//! | worker → harness | `report <json>` | last line: a [`WorkerReport`] |
//!
//! Closing the worker's standard input makes it drain, commit and exit. This crate cannot run the
//! pipeline itself (it must not depend on `bqsink`); the worker side lives in `bqsink::cli::bench`.

use bqsink_actors::config::ValueFormat;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use super::{WritePath, FETCH_WAIT_MS, GROUP, TABLE};
use crate::kafka::TOPIC;
use crate::measure::fmt_n;
use crate::sink::Sink;

/// What the worker prints on its last line.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    pub consumed: u64,
    pub written: u64,
    pub deduplicated: u64,
    pub failed: u64,
    /// insertAll requests sent, and partitions paused at the in-flight limits.
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub pauses: u64,
    pub exit_code: i32,
    /// `VmHWM` of the worker process, in KiB.
    pub peak_rss_kib: u64,
    pub user_secs: f64,
    pub sys_secs: f64,
}

/// The worker's configuration: the defaults, plus where Kafka and the sink are, tolerance `all` so
/// the malformed records are reported without stopping the pipeline, and a shorter fetch wait for
/// the mock broker.
fn worker_config(
    bootstrap: &str,
    sink: &Sink,
    path: WritePath,
    registry: Option<(ValueFormat, &str)>,
) -> String {
    let (endpoint, grpc) = (sink.url(), sink.grpc_url());
    let (write, commit_ms) = match path {
        // The defaults, spelled out.
        WritePath::Storage => (
            "write_api = \"storage\"\ndelivery = \"exactly_once\"\n",
            "commit_interval_ms = 250\n",
        ),
        // insertAll: the defaults' commit interval.
        WritePath::InsertAll => (
            "write_api = \"insert_all\"\ndelivery = \"at_least_once\"\n",
            "",
        ),
    };
    format!(
        r#"
[kafka]
brokers = "{bootstrap}"
group_id = "{GROUP}"
topics = ["{TOPIC}"]
{commit_ms}[bigquery]
endpoint = "{endpoint}"
storage_endpoint = "{grpc}"
{write}project = "bench"
dataset = "bench"
[bigquery.tables]
"{TOPIC}" = "{TABLE}"
[errors]
tolerance = "all"
# The mock broker holds a fetch that finds no data for the whole fetch.wait.max.ms (500 ms) instead
# of answering when data arrives, and at the end of each round some partitions have none left: the
# partitions resumed meanwhile would wait for it. A real broker answers when data arrives.
[kafka.properties]
"fetch.wait.max.ms" = "{FETCH_WAIT_MS}"
{formats}"#,
        formats = match registry {
            Some((format, url)) => format!(
                "[kafka.formats]\n\"{TOPIC}\" = \"{format}\"\n[registry]\nurl = \"{url}\"\n"
            ),
            None => String::new(),
        }
    )
}

/// What the benchmark hears from the worker.
#[derive(Default)]
pub(super) struct Heard {
    pub(super) consumed: u64,
    pub(super) handled: u64,
    /// When `consumed` first passed `watch_from`.
    pub(super) first_read: Option<Instant>,
    /// When `handled` last grew (the worker reports every 10 ms).
    pub(super) last_handled: Option<Instant>,
    pub(super) watch_from: u64,
    pub(super) acks: u64,
    pub(super) report: Option<WorkerReport>,
}

/// The worker process, seen from the benchmark.
pub(super) struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    heard: Arc<Mutex<Heard>>,
    reader: Option<std::thread::JoinHandle<()>>,
    log: PathBuf,
}

impl Worker {
    pub(super) fn start(
        dir: &Path,
        bootstrap: &str,
        sink: &Sink,
        path: WritePath,
        extra: Option<&Path>,
        registry: Option<(ValueFormat, &str)>,
    ) -> anyhow::Result<Worker> {
        let config = dir.join("bench.toml");
        std::fs::write(&config, worker_config(bootstrap, sink, path, registry))
            .with_context(|| format!("writing {}", config.display()))?;
        // `--worker-config` becomes the environment layer, under the bench's own file.
        let extra_layer = dir.join("extra.toml");
        match extra {
            Some(file) => std::fs::copy(file, &extra_layer)
                .map(drop)
                .with_context(|| format!("reading {}", file.display()))?,
            None => std::fs::write(&extra_layer, "")?,
        }
        let log = dir.join("worker.log");
        let stderr =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let exe = std::env::current_exe().context("finding the bqsink executable")?;
        // `--config-dir` has no default.toml: the built-in defaults (which it mirrors) apply.
        let mut child = Command::new(exe)
            .arg("--config-dir")
            .arg(dir)
            .arg("--env")
            .arg("extra")
            .arg("--config")
            .arg(&config)
            .arg("bench-worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("starting the bench worker")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("worker stdout")?;
        let heard = Arc::new(Mutex::new(Heard::default()));
        let reader = {
            let heard = Arc::clone(&heard);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let mut h = heard.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(rest) = line.strip_prefix("progress ") {
                        let mut n = rest.split(' ').map(|v| v.parse().unwrap_or(0));
                        let handled = h.handled;
                        (h.consumed, h.handled) = (n.next().unwrap_or(0), n.next().unwrap_or(0));
                        if h.handled > handled {
                            h.last_handled = Some(Instant::now());
                        }
                        if h.first_read.is_none() && h.consumed > h.watch_from {
                            h.first_read = Some(Instant::now());
                        }
                    } else if line == "paused" || line == "resumed" {
                        h.acks += 1;
                    } else if let Some(json) = line.strip_prefix("report ") {
                        h.report = serde_json::from_str(json).ok();
                    }
                }
            })
        };
        Ok(Worker {
            child,
            stdin,
            heard,
            reader: Some(reader),
            log,
        })
    }

    pub(super) fn heard(&self) -> MutexGuard<'_, Heard> {
        self.heard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a command and waits for its acknowledgement.
    pub(super) fn command(&mut self, line: &str) -> anyhow::Result<()> {
        let acks = self.heard().acks;
        let stdin = self.stdin.as_mut().context("worker stdin closed")?;
        writeln!(stdin, "{line}").context("writing to the bench worker")?;
        stdin.flush()?;
        while self.heard().acks == acks {
            self.check_alive()?;
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Notes the time of the next record read.
    pub(super) fn watch_reads(&self) {
        let mut h = self.heard();
        (h.watch_from, h.first_read) = (h.consumed, None);
    }

    /// Waits until the worker has handled `n` records in all.
    pub(super) fn wait_handled(&mut self, n: u64) -> anyhow::Result<()> {
        let (mut last, mut since, mut printed) = (0, Instant::now(), Instant::now());
        loop {
            let handled = self.heard().handled;
            if handled >= n {
                return Ok(());
            }
            self.check_alive()?;
            if handled != last {
                (last, since) = (handled, Instant::now());
            } else if since.elapsed() > Duration::from_secs(60) {
                bail!(
                    "no progress for 60 s at {handled} of {n} records; see {}",
                    self.log.display()
                );
            }
            if printed.elapsed() >= Duration::from_secs(10) {
                eprintln!("  … {} of {} records handled", fmt_n(handled), fmt_n(n));
                printed = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the bench worker exited early ({status}); see {}",
                self.log.display()
            );
        }
        Ok(())
    }

    /// Closes its standard input (the worker drains, commits and exits) and collects its report.
    pub(super) fn finish(mut self) -> anyhow::Result<WorkerReport> {
        drop(self.stdin.take());
        let status = self.child.wait().context("waiting for the bench worker")?;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        match self.heard().report.clone() {
            Some(r) if status.success() => Ok(r),
            _ => bail!(
                "the bench worker failed ({status}); see {}",
                self.log.display()
            ),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.reader.is_some() {
            // Not finished normally: stop it.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
