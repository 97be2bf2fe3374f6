//! The service's shared state: where it is ([`Phase`]), the operator's requests (pause, restart,
//! stop), and what the metrics refresher saw. Invariant: every change of phase happens under one
//! lock and wakes the service loop, so a request is never lost between two incarnations.
//!
//! Plain data and its state machine: this module imports neither the admin API nor the service
//! loop, which both use it ([`super::admin`] reads and requests, [`super::lifecycle`] drives).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use actix::Addr;
use bqsink_actors::config::{Config, OnFailure};
use bqsink_actors::messages::{GetStatus, PauseAll, ResumeAll, Shutdown, StatusReport, Tp};
use bqsink_actors::stats::Stats;
use bqsink_actors::supervisor::SupervisorActor;

use super::prometheus::names;

/// Where the service is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// A pipeline incarnation is starting (not yet running its actors).
    Starting,
    /// The pipeline runs (it may be paused or draining: see the supervisor's report).
    Running,
    /// Draining before a restart.
    Restarting,
    /// Draining before exit.
    Stopping,
    /// Stopped after a failed record; waiting for `POST /restart` (`admin.on_failure = "wait"`).
    Failed(String),
    /// The service has ended.
    Stopped,
}

/// Offsets seen by the metrics refresher for one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watermarks {
    pub low: i64,
    pub high: i64,
    /// The group's committed offset as the broker has it.
    pub committed: Option<i64>,
}

struct Inner {
    phase: Phase,
    supervisor: Option<Addr<SupervisorActor>>,
    /// Operator pause, applied to every incarnation.
    paused: bool,
    restart_requested: bool,
    stop_requested: bool,
    restarts: u64,
}

/// What the admin API and the refresher share with the service loop.
pub struct ServiceState {
    pub config: Config,
    pub stats: Arc<Stats>,
    inner: Mutex<Inner>,
    wake: Condvar,
    /// Per partition, refreshed every `metrics.refresh_interval_ms`.
    pub watermarks: Mutex<HashMap<Tp, Watermarks>>,
    /// Whether BigQuery answered the last probe (None before the first).
    pub bigquery_reachable: Mutex<Option<Result<u16, String>>>,
}

/// Why an admin request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the service is shutting down")]
    Stopping,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data; a panic while holding a lock cannot leave it half-updated in a way that matters.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ServiceState {
    pub(super) fn new(config: Config, stats: Arc<Stats>) -> Self {
        Self {
            config,
            stats,
            inner: Mutex::new(Inner {
                phase: Phase::Starting,
                supervisor: None,
                paused: false,
                restart_requested: false,
                stop_requested: false,
                restarts: 0,
            }),
            wake: Condvar::new(),
            watermarks: Mutex::default(),
            bigquery_reachable: Mutex::new(None),
        }
    }

    pub fn phase(&self) -> Phase {
        lock(&self.inner).phase.clone()
    }

    /// Whether the operator paused the pipeline.
    pub fn paused(&self) -> bool {
        lock(&self.inner).paused
    }

    /// Completed restarts.
    pub fn restarts(&self) -> u64 {
        lock(&self.inner).restarts
    }

    /// The running incarnation's supervisor.
    pub fn supervisor(&self) -> Option<Addr<SupervisorActor>> {
        let inner = lock(&self.inner);
        match inner.phase {
            Phase::Running | Phase::Restarting | Phase::Stopping => inner.supervisor.clone(),
            _ => None,
        }
    }

    /// The supervisor's report, if a pipeline runs and answers within 5 s.
    pub async fn report(&self) -> Option<StatusReport> {
        let sup = self.supervisor()?;
        tokio::time::timeout(Duration::from_secs(5), sup.send(GetStatus))
            .await
            .ok()?
            .ok()
    }

    /// Pauses every partition (now and in later incarnations).
    pub fn pause(&self) -> Result<(), Refused> {
        let mut inner = lock(&self.inner);
        if inner.stop_requested {
            return Err(Refused::Stopping);
        }
        inner.paused = true;
        if let Some(sup) = &inner.supervisor {
            sup.do_send(PauseAll);
        }
        Ok(())
    }

    /// Undoes [`Self::pause`].
    pub fn resume(&self) -> Result<(), Refused> {
        let mut inner = lock(&self.inner);
        if inner.stop_requested {
            return Err(Refused::Stopping);
        }
        inner.paused = false;
        if let Some(sup) = &inner.supervisor {
            sup.do_send(ResumeAll);
        }
        Ok(())
    }

    /// Restarts the pipeline: drains and commits the running incarnation, then starts a new one;
    /// or starts a new one after a failure.
    pub fn restart(&self) -> Result<(), Refused> {
        let mut inner = lock(&self.inner);
        if inner.stop_requested {
            return Err(Refused::Stopping);
        }
        inner.restart_requested = true;
        match inner.phase {
            Phase::Running => {
                tracing::info!("restart requested: draining the pipeline");
                inner.phase = Phase::Restarting;
                if let Some(sup) = &inner.supervisor {
                    sup.do_send(Shutdown);
                }
            }
            Phase::Failed(_) => {
                tracing::info!("restart requested: starting the failed pipeline again");
                self.wake.notify_all();
            }
            // Starting: it is stopped right after it started, below. Restarting: already.
            _ => {}
        }
        Ok(())
    }

    /// Drains, commits and ends the service.
    pub fn stop(&self) {
        let mut inner = lock(&self.inner);
        inner.stop_requested = true;
        inner.restart_requested = false;
        if matches!(inner.phase, Phase::Running | Phase::Restarting) {
            inner.phase = Phase::Stopping;
            if let Some(sup) = &inner.supervisor {
                sup.do_send(Shutdown);
            }
        }
        self.wake.notify_all();
    }

    /// An incarnation is running: remember its supervisor, apply a pause and pending requests.
    pub(super) fn started(&self, sup: Addr<SupervisorActor>) {
        let mut inner = lock(&self.inner);
        if inner.paused {
            sup.do_send(PauseAll);
        }
        if inner.stop_requested || inner.restart_requested {
            sup.do_send(Shutdown);
            inner.phase = if inner.stop_requested {
                Phase::Stopping
            } else {
                Phase::Restarting
            };
        } else {
            inner.phase = Phase::Running;
        }
        inner.supervisor = Some(sup);
    }

    /// The service has ended (whatever the phase was).
    pub(super) fn set_stopped(&self) {
        lock(&self.inner).phase = Phase::Stopped;
    }

    /// What to do after an incarnation ended with `code`.
    pub(super) fn ended(&self, code: i32) -> Next {
        let mut inner = lock(&self.inner);
        inner.supervisor = None;
        if inner.stop_requested {
            inner.phase = Phase::Stopped;
            return Next::Exit(code);
        }
        if inner.restart_requested {
            return self.restart_now(inner);
        }
        if code != 1 || self.config.admin.on_failure == OnFailure::Exit {
            inner.phase = Phase::Stopped;
            return Next::Exit(code);
        }
        let reason = self
            .stats
            .errors()
            .into_iter()
            .filter(|(_, e)| e.fatal)
            .map(|(tp, e)| format!("{tp} offset {}: {}", e.offset, e.error))
            .next()
            .unwrap_or_else(|| "a record failed".into());
        tracing::error!(%reason, "pipeline FAILED; waiting for POST /restart or SIGTERM");
        metrics::gauge!(names::PIPELINE_FAILED).set(1.0);
        inner.phase = Phase::Failed(reason);
        loop {
            inner = self.wake.wait(inner).unwrap_or_else(|e| e.into_inner());
            if inner.stop_requested {
                inner.phase = Phase::Stopped;
                return Next::Exit(code);
            }
            if inner.restart_requested {
                metrics::gauge!(names::PIPELINE_FAILED).set(0.0);
                return self.restart_now(inner);
            }
        }
    }

    fn restart_now(&self, mut inner: MutexGuard<'_, Inner>) -> Next {
        inner.restart_requested = false;
        inner.restarts += 1;
        inner.phase = Phase::Starting;
        metrics::counter!(names::PIPELINE_RESTARTS).increment(1);
        self.stats.clear_errors();
        lock(&self.watermarks).clear();
        Next::Restart
    }
}

/// What the service loop does after an incarnation ended.
pub(super) enum Next {
    Restart,
    Exit(i32),
}
