//! `bqsink run` as a long-running service: everything around the pipeline that keeps it running and
//! lets an operator see and steer it.
//!
//! Invariant: the pipeline is stopped only by draining it (every handled offset committed) — on
//! SIGTERM, `POST /restart` or a failure — and the service's phase says truthfully where it is.
//!
//! | module | holds |
//! |---|---|
//! | [`run`] | one pipeline *incarnation*: actix system, actors, Kafka poller; [`PipelineHandle`] for the demo and tests |
//! | [`lifecycle`] | [`Service`]: the restart loop around incarnations, [`ServiceHandle`] for tests |
//! | [`state`] | the shared state machine (phase, pause/restart/stop requests, watermarks) |
//! | [`admin`] | the admin HTTP API and the lag/health refresher |
//! | [`prometheus`] | the metrics recorder and the gauges it refreshes |
//! | [`logging`], [`log_format`], [`telemetry`] | log subscriber, JSON lines for Cloud Logging, OTLP trace export |
//!
//! Depends on: `bqsink_actors`, [`crate::kafka`] (consumer set-up), [`crate::destinations`] (error
//! destinations of an incarnation). Not on [`crate::cli`] or [`crate::replay`]. Inside, `state`
//! imports neither `admin` nor `lifecycle`; `admin` reads `state`; `lifecycle` drives both.

pub mod admin;
pub mod lifecycle;
pub mod log_format;
pub mod logging;
pub mod prometheus;
pub mod run;
pub mod state;
pub mod telemetry;

pub use lifecycle::{Service, ServiceHandle};
pub use run::PipelineHandle;
pub use state::{Phase, Refused, ServiceState, Watermarks};
