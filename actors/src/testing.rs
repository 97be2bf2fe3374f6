//! Test doubles shared by the actors' unit tests.

use std::sync::{Arc, Mutex};

use actix::prelude::*;

use crate::messages::{Handled, HandledKind};

/// What a fake partition consumer was told: the offsets of each acknowledgement and how they were
/// settled.
pub type Seen = Arc<Mutex<Vec<(Vec<i64>, HandledKind)>>>;

/// Collects acknowledgements, like a partition consumer.
pub struct Acks(pub Seen);

impl Actor for Acks {
    type Context = Context<Self>;
}

impl Handler<Handled> for Acks {
    type Result = ();
    fn handle(&mut self, msg: Handled, _: &mut Self::Context) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((msg.offsets, msg.kind));
    }
}
