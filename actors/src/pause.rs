//! Pausing by an operator (`POST /pause`): every assigned partition, and every partition assigned
//! while paused, is paused through [`KafkaControl::pause`] until the operator resumes.
//!
//! Backpressure pauses are the Kafka poller's own (`stage::flow`); the adapter keeps the two apart:
//! a partition paused on request is resumed only on request, and a resume on request does not resume
//! a partition that is still above its in-flight limit.

use std::sync::Arc;

use crate::kafka::KafkaControl;
use crate::messages::Tp;

/// The operator's pause state, driven by the supervisor.
pub struct OperatorPause {
    kafka: Arc<dyn KafkaControl>,
    paused: bool,
    /// An assignment (possibly empty) has been received: the consumer joined its group.
    joined: bool,
}

impl OperatorPause {
    pub fn new(kafka: Arc<dyn KafkaControl>) -> Self {
        Self {
            kafka,
            paused: false,
            joined: false,
        }
    }

    /// Pauses `assigned` and every partition assigned later, until [`Self::resume_all`].
    pub fn pause_all<'a>(&mut self, assigned: impl IntoIterator<Item = &'a Tp>) {
        self.paused = true;
        for tp in assigned {
            self.kafka.pause(tp);
        }
    }

    /// Resumes `assigned`.
    pub fn resume_all<'a>(&mut self, assigned: impl IntoIterator<Item = &'a Tp>) {
        self.paused = false;
        for tp in assigned {
            self.kafka.resume(tp);
        }
    }

    /// Partitions were assigned: pauses them if the operator paused the pipeline.
    pub fn assigned(&mut self, tps: &[Tp]) {
        self.joined = true;
        if self.paused {
            for tp in tps {
                self.kafka.pause(tp);
            }
        }
    }

    /// A dead partition consumer was replaced (its partition fetches again): pauses it again if
    /// the operator paused the pipeline.
    pub fn restarted(&mut self, tp: &Tp) {
        if self.paused {
            self.kafka.pause(tp);
        }
    }

    /// Whether the operator paused the pipeline.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Whether an assignment has been received (the consumer is a member of its group).
    pub fn joined(&self) -> bool {
        self.joined
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures::future::BoxFuture;

    use super::*;
    use crate::kafka::CommitError;

    /// Records pause/resume calls as `(+|-)partition`.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl KafkaControl for Recorder {
        fn commit(&self, _: Vec<(Tp, i64)>) -> BoxFuture<'static, Result<(), CommitError>> {
            Box::pin(async { Ok(()) })
        }
        fn pause(&self, tp: &Tp) {
            self.0.lock().unwrap().push(format!("+{}", tp.partition));
        }
        fn resume(&self, tp: &Tp) {
            self.0.lock().unwrap().push(format!("-{}", tp.partition));
        }
        fn restart_partition(
            &self,
            tp: &Tp,
            _: Option<i64>,
            _: actix::Recipient<crate::messages::RawChunk>,
            _: Arc<crate::stage::flow::Inflight>,
        ) {
            self.0.lock().unwrap().push(format!("r{}", tp.partition));
        }
        fn stop_reading(&self) {}
        fn close(&self) {}
    }

    fn calls(rec: &Recorder) -> Vec<String> {
        std::mem::take(&mut *rec.0.lock().unwrap())
    }

    #[test]
    fn pause_covers_assigned_and_later_assigned_partitions_until_resume() {
        let rec = Arc::new(Recorder::default());
        let mut op = OperatorPause::new(rec.clone());
        let (p0, p1, p2) = (Tp::new("t", 0), Tp::new("t", 1), Tp::new("t", 2));
        assert!(!op.joined());
        op.assigned(&[p0.clone(), p1.clone()]);
        assert!(op.joined());
        assert!(calls(&rec).is_empty(), "not paused: assignments run");
        op.pause_all([&p0, &p1]);
        assert!(op.is_paused());
        assert_eq!(calls(&rec), vec!["+0", "+1"]);
        op.assigned(std::slice::from_ref(&p2));
        assert_eq!(calls(&rec), vec!["+2"], "assigned while paused: paused");
        op.resume_all([&p0, &p1, &p2]);
        assert!(!op.is_paused());
        assert_eq!(calls(&rec), vec!["-0", "-1", "-2"]);
        op.assigned(&[Tp::new("t", 3)]);
        assert!(calls(&rec).is_empty());
        op.restarted(&p0);
        assert!(
            calls(&rec).is_empty(),
            "not paused: a restarted partition runs"
        );
        op.pause_all([&p0]);
        calls(&rec);
        op.restarted(&p0);
        assert_eq!(
            calls(&rec),
            vec!["+0"],
            "paused again after its consumer was replaced"
        );
    }

    #[test]
    fn an_empty_assignment_still_means_the_group_was_joined() {
        let mut op = OperatorPause::new(Arc::new(Recorder::default()));
        op.assigned(&[]);
        assert!(op.joined());
    }
}
