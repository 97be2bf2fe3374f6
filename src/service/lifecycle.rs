//! `bqsink run` as a service: the pipeline, restarted in-process on request, plus the admin HTTP
//! API, the metrics refresher and signal handling on a small Tokio runtime of their own.
//!
//! One pipeline *incarnation* is [`super::run::run`]: an actix `System`, the actors and the Kafka
//! poller, from joining the group to leaving it. `POST /restart` drains and commits the running
//! incarnation like a shutdown and starts a new one (a new consumer that joins the group again,
//! empty dedup cache); after a failure under `errors.tolerance = "none"` with
//! `admin.on_failure = "wait"` it starts a new one from the committed offsets, i.e. at the failed
//! record. Pausing survives restarts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context as _;
use bqsink_actors::bigquery::BigQuery;
use bqsink_actors::config::Config;
use bqsink_actors::stats::Stats;

use super::admin::Background;
use super::run;
use super::state::{Next, ServiceState};

/// A service ready to run: admin API bound, background runtime started.
pub struct Service {
    state: Arc<ServiceState>,
    bq: Arc<dyn BigQuery>,
    admin_addr: Option<SocketAddr>,
    background: Option<Background>,
}

impl Service {
    /// Binds the admin API (when `admin.enabled`), installs the metrics recorder (when
    /// `metrics.enabled`), starts the background runtime; with `signals`, SIGTERM and Ctrl-C stop
    /// the service gracefully.
    pub fn start(
        config: Config,
        bq: Arc<dyn BigQuery>,
        stats: Arc<Stats>,
        signals: bool,
    ) -> anyhow::Result<Self> {
        let state = Arc::new(ServiceState::new(config, stats));
        let background =
            Background::start(Arc::clone(&state), signals).context("starting the admin API")?;
        Ok(Self {
            state,
            bq,
            admin_addr: background.admin_addr(),
            background: Some(background),
        })
    }

    /// Where the admin API listens.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn state(&self) -> &Arc<ServiceState> {
        &self.state
    }

    /// Runs pipeline incarnations until the service is stopped or the pipeline fails (with
    /// `admin.on_failure = "exit"`); returns the exit code of the last one.
    pub fn run(mut self) -> anyhow::Result<i32> {
        let result = self.run_loop();
        self.state.set_stopped();
        if let Some(bg) = self.background.take() {
            bg.stop();
        }
        result
    }

    fn run_loop(&self) -> anyhow::Result<i32> {
        loop {
            let (tx, rx) = std::sync::mpsc::channel();
            let (config, bq, stats) = (
                self.state.config.clone(),
                Arc::clone(&self.bq),
                Arc::clone(&self.state.stats),
            );
            let pipeline = std::thread::Builder::new()
                .name("pipeline".into())
                .spawn(move || run::run(&config, bq, stats, false, Some(tx)))
                .context("spawning the pipeline thread")?;
            match rx.recv() {
                Ok((sup, _system)) => self.state.started(sup),
                Err(_) => {
                    return match pipeline.join() {
                        Ok(Err(e)) => Err(e),
                        _ => Err(anyhow::anyhow!("the pipeline stopped before it started")),
                    }
                }
            }
            let code = pipeline
                .join()
                .map_err(|_| anyhow::anyhow!("the pipeline thread panicked"))??;
            match self.state.ended(code) {
                Next::Restart => continue,
                Next::Exit(code) => return Ok(code),
            }
        }
    }
}

/// A service running on a thread of its own (tests).
pub struct ServiceHandle {
    pub stats: Arc<Stats>,
    pub state: Arc<ServiceState>,
    admin_addr: Option<SocketAddr>,
    thread: JoinHandle<anyhow::Result<i32>>,
}

impl ServiceHandle {
    pub fn spawn(config: Config, bq: Arc<dyn BigQuery>) -> anyhow::Result<Self> {
        let stats = Arc::new(Stats::default());
        let service = Service::start(config, bq, Arc::clone(&stats), false)?;
        let state = Arc::clone(service.state());
        let admin_addr = service.admin_addr();
        let thread = std::thread::Builder::new()
            .name("service".into())
            .spawn(move || service.run())
            .context("spawning the service thread")?;
        Ok(Self {
            stats,
            state,
            admin_addr,
            thread,
        })
    }

    /// Base URL of the admin API, e.g. `http://127.0.0.1:40123`.
    pub fn admin_url(&self) -> String {
        match self.admin_addr {
            Some(a) => format!("http://{a}"),
            None => String::new(),
        }
    }

    /// Stops gracefully; returns the exit code.
    pub fn shutdown(self) -> anyhow::Result<i32> {
        self.state.stop();
        self.wait()
    }

    /// Waits for the service to end by itself.
    pub fn wait(self) -> anyhow::Result<i32> {
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the service thread panicked"))?
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}
