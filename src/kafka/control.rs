//! The actors' handle on the consumer thread: [`RdKafkaControl`] implements the
//! `bqsink_actors::kafka::KafkaControl` port by sending a [`Command`] over a channel; the consumer
//! thread ([`super::consumer`]) runs them between polls, so no actor ever blocks on librdkafka.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use actix::Recipient;
use bqsink_actors::kafka::{CommitError, KafkaControl};
use bqsink_actors::messages::{RawChunk, Tp};
use bqsink_actors::stage::flow::Inflight;
use futures::future::BoxFuture;

/// A request from the actors to the consumer thread.
pub enum Command {
    Commit(
        Vec<(Tp, i64)>,
        futures::channel::oneshot::Sender<Result<(), CommitError>>,
    ),
    Pause(Tp),
    Resume(Tp),
    Restart {
        tp: Tp,
        from: Option<i64>,
        to: Recipient<RawChunk>,
        inflight: Arc<Inflight>,
        /// The partition's offsets went backwards: its committed offset may move back to `from`.
        rewind: bool,
    },
    StopReading,
    Close,
}

/// The actors' handle on the consumer thread.
pub struct RdKafkaControl {
    tx: Mutex<Sender<Command>>,
}

impl RdKafkaControl {
    fn send(&self, cmd: Command) {
        // The consumer thread is gone only after `close`; later commands have nothing to act on.
        let _ = self.tx.lock().map(|tx| tx.send(cmd));
    }
}

impl KafkaControl for RdKafkaControl {
    fn commit(&self, offsets: Vec<(Tp, i64)>) -> BoxFuture<'static, Result<(), CommitError>> {
        let (tx, rx) = futures::channel::oneshot::channel();
        self.send(Command::Commit(offsets, tx));
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(CommitError("the Kafka consumer thread has stopped".into()))
            })
        })
    }
    fn pause(&self, tp: &Tp) {
        self.send(Command::Pause(tp.clone()));
    }
    fn resume(&self, tp: &Tp) {
        self.send(Command::Resume(tp.clone()));
    }
    fn restart_partition(
        &self,
        tp: &Tp,
        from: Option<i64>,
        to: Recipient<RawChunk>,
        inflight: Arc<Inflight>,
    ) {
        self.send(Command::Restart {
            tp: tp.clone(),
            from,
            to,
            inflight,
            rewind: false,
        });
    }
    fn rewind_partition(
        &self,
        tp: &Tp,
        from: i64,
        to: Recipient<RawChunk>,
        inflight: Arc<Inflight>,
    ) {
        self.send(Command::Restart {
            tp: tp.clone(),
            from: Some(from),
            to,
            inflight,
            rewind: true,
        });
    }
    fn stop_reading(&self) {
        self.send(Command::StopReading);
    }
    fn close(&self) {
        self.send(Command::Close);
    }
}

/// Creates the command channel; the receiver goes to [`super::spawn_consumer`].
pub fn control() -> (Arc<RdKafkaControl>, Receiver<Command>) {
    let (tx, rx) = mpsc::channel();
    (Arc::new(RdKafkaControl { tx: Mutex::new(tx) }), rx)
}
