//! The error report: every failed record becomes one structured ERROR log line with its topic,
//! partition, offset, stage and error (and, with `errors.log_include_messages`, its key and payload).
//! Under `errors.tolerance = "all"` the record then counts as handled; under `"none"` it is marked
//! stuck (its offset is never committed) and the supervisor is told to stop.

use std::sync::Arc;

use actix::prelude::*;
use base64::Engine;

use crate::config::Tolerance;
use crate::messages::{acknowledge, Failed, Failure, Fatal, HandledKind};
use crate::stats::Stats;

pub struct ErrorReportActor {
    pub tolerance: Tolerance,
    pub include_messages: bool,
    pub supervisor: Recipient<Fatal>,
    pub stats: Arc<Stats>,
    pub fatal_sent: bool,
}

/// Bytes as text for a log line: UTF-8 when they are, base64 (prefixed `base64:`) when not.
pub fn printable(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ),
    }
}

impl ErrorReportActor {
    fn log(&self, f: &Failure) {
        let tp = &f.origin.tp;
        if self.include_messages {
            let key = f.source.key.as_deref().map(printable);
            let payload = f.source.payload.as_deref().map(printable);
            tracing::error!(
                topic = %tp.topic, partition = tp.partition, offset = f.source.offset,
                stage = f.stage.as_str(), class = f.class, error = %f.error,
                key = key.as_deref().unwrap_or(""), payload = payload.as_deref().unwrap_or(""),
                "record failed"
            );
        } else {
            tracing::error!(
                topic = %tp.topic, partition = tp.partition, offset = f.source.offset,
                stage = f.stage.as_str(), class = f.class, error = %f.error,
                "record failed"
            );
        }
    }
}

impl Actor for ErrorReportActor {
    type Context = Context<Self>;
}

impl Handler<Failed> for ErrorReportActor {
    type Result = ();

    fn handle(&mut self, msg: Failed, _: &mut Self::Context) {
        Stats::add(&self.stats.failed, msg.failures.len());
        for f in &msg.failures {
            self.log(f);
        }
        let records = msg.failures.iter().map(|f| (&f.origin, f.source.offset));
        match self.tolerance {
            Tolerance::All => acknowledge(records, HandledKind::Done),
            Tolerance::None => {
                acknowledge(records, HandledKind::Stuck);
                if let Some(f) = msg.failures.first().filter(|_| !self.fatal_sent) {
                    self.fatal_sent = true;
                    self.supervisor.do_send(Fatal {
                        reason: format!(
                            "record {} offset {} failed at {} ({}): {}; errors.tolerance = \"none\"",
                            f.origin.tp, f.source.offset, f.stage.as_str(), f.class, f.error
                        ),
                    });
                }
            }
        }
    }
}
