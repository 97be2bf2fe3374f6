//! Running one pipeline: an actix `System` on the calling thread, the actors, and the Kafka poller
//! thread. `bqsink run` calls [`run`] on the main thread; the demo, the benchmark and the tests use
//! [`PipelineHandle`] to run it on a thread of its own and stop it gracefully or abruptly.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use actix::Addr;
use anyhow::Context as _;
use bqsink_actors::bigquery::BigQuery;
use bqsink_actors::config::Config;
use bqsink_actors::messages::Shutdown;
use bqsink_actors::pipeline;
use bqsink_actors::stats::Stats;
use bqsink_actors::supervisor::SupervisorActor;

use crate::{destinations, kafka};

/// Runs a pipeline until it stops; returns the process exit code (0 after a clean shutdown, 1 after
/// a fatal failure under `errors.tolerance = "none"`).
///
/// With `signals`, SIGTERM and Ctrl-C start a graceful shutdown. `started` receives the supervisor
/// and the system once they run.
pub fn run(
    config: &Config,
    bq: Arc<dyn BigQuery>,
    stats: Arc<Stats>,
    signals: bool,
    started: Option<mpsc::Sender<(Addr<SupervisorActor>, actix::System)>>,
) -> anyhow::Result<i32> {
    // Kept until the end, so the Slack thread posts what is pending after the pipeline stopped.
    let destinations = destinations::from_config(config, &stats)?;
    let system = actix::System::new();
    let (control, commands) = kafka::control();
    let poller_stats = Arc::clone(&stats);
    let hook = bq.commit_hook();
    let registry = crate::registry::from_config(&config.registry)
        .context("setting up the schema registry (registry.url)")?;
    let supervisor = system.block_on(async {
        pipeline::start_with_registry(config, control, bq, stats, destinations.clone(), registry)
    });
    let poller =
        match kafka::spawn_consumer(config, supervisor.clone(), commands, poller_stats, hook) {
            Ok(p) => p,
            Err(e) => {
                actix::System::current().stop();
                return Err(e).context("starting the Kafka consumer");
            }
        };
    if signals {
        let sup = supervisor.clone();
        system.block_on(async move {
            actix::spawn(async move {
                wait_for_signal().await;
                tracing::info!("signal received");
                sup.do_send(Shutdown);
            });
        });
    }
    if let Some(tx) = started {
        let current = system.block_on(async { actix::System::current() });
        let _ = tx.send((supervisor, current));
    }
    let code = system.run_with_code().context("running the actor system")?;
    drop(destinations);
    if poller.join().is_err() {
        anyhow::bail!("the Kafka poller thread panicked");
    }
    Ok(code)
}

pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A pipeline running on a thread of its own.
pub struct PipelineHandle {
    pub stats: Arc<Stats>,
    supervisor: Addr<SupervisorActor>,
    system: actix::System,
    thread: JoinHandle<anyhow::Result<i32>>,
}

impl PipelineHandle {
    /// Starts a pipeline on a new thread.
    pub fn spawn(config: Config, bq: Arc<dyn BigQuery>) -> anyhow::Result<Self> {
        let stats = Arc::new(Stats::default());
        let (tx, rx) = mpsc::channel();
        let thread_stats = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("pipeline".into())
            .spawn(move || run(&config, bq, thread_stats, false, Some(tx)))
            .context("spawning the pipeline thread")?;
        match rx.recv() {
            Ok((supervisor, system)) => Ok(Self {
                stats,
                supervisor,
                system,
                thread,
            }),
            Err(_) => match thread.join() {
                Ok(Err(e)) => Err(e),
                _ => anyhow::bail!("the pipeline stopped before it started"),
            },
        }
    }

    /// Drains, commits, leaves the group; returns the exit code.
    pub fn shutdown(self) -> anyhow::Result<i32> {
        self.supervisor.do_send(Shutdown);
        self.wait()
    }

    /// Stops at once, like a crash: nothing is drained or committed beyond the last periodic commit.
    pub fn abort(self) -> anyhow::Result<i32> {
        self.system.stop_with_code(137);
        self.wait()
    }

    /// Waits for the pipeline to stop by itself.
    pub fn wait(self) -> anyhow::Result<i32> {
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the pipeline thread panicked"))?
    }

    /// Whether the pipeline has stopped.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}
