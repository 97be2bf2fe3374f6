//! bqsink's development tooling: what the demo, the benchmark and the tests run *around* the
//! pipeline. None of it is in the production binary: `bqsink` uses this crate only behind its
//! `devtools` cargo feature (the `demo` and `bench` subcommands) and in its tests and benches.
//!
//! | module | holds |
//! |---|---|
//! | [`sink`] | a local insertAll-compatible BigQuery server: the demo's destination, the tests' fake |
//! | [`generator`] | member events with duplicates and malformed payloads, deterministic per seed |
//! | [`avro`] | the member events as Avro in the Schema Registry's wire format |
//! | [`registered`] | the member events in each registry format (Avro, Protobuf, JSON Schema), with their schemas |
//! | [`kafka`] | librdkafka's mock cluster and a fast producer for it |
//! | [`registry`] | a local Schema Registry (the demo's and the bench's records, the tests) |
//! | [`bench`](mod@bench) | the `bqsink bench` harness: rounds, raw consumer, checks; drives a worker process |
//! | [`measure`] | peak RSS, CPU time, rates |
//!
//! Depends on `bqsink-actors` (the stage code the sink reuses to read rows) and external crates,
//! never on `bqsink` (cargo forbids the cycle): where the pipeline itself is needed, the caller
//! provides it (the demo's wiring in `bqsink::cli::demo`) or a child process runs it (the bench
//! worker, `bqsink bench-worker`).

pub mod avro;
pub mod bench;
pub mod generator;
pub mod kafka;
pub mod measure;
pub mod registered;
pub mod registry;
pub mod sink;
