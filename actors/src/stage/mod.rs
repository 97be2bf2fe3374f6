//! Pure stage logic, free of actors and I/O, each with its unit tests. The actors in this crate are
//! thin shells around these.

pub mod batch;
pub mod convert;
pub mod dedup;
pub mod exactly_once;
pub mod flow;
pub mod guard;
pub mod json;
pub mod offsets;
pub mod proto;
pub mod registered;
pub mod schema;
pub mod transform;
