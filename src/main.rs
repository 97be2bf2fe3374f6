//! The `bqsink` binary: the global allocator, then [`bqsink::cli`].

use std::process::ExitCode;

/// jemalloc: records are allocated on one thread and freed on another, which glibc malloc does
/// slowly (README, Performance: −10 % CPU per record, +8 % records/s in `bqsink bench`).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (its `malloc_conf`, read before `main`; `_RJEM_MALLOC_CONF` in the
/// environment still overrides): freed pages go back to the system after 1 s instead of 10 s, by a
/// background thread rather than on the threads that free. Peak RSS in `bqsink bench` (Storage
/// Write API, 2 M records) 145.7-148.3 MiB over four runs, against 149.1-155.5 with jemalloc's
/// defaults, at no CPU cost this machine could measure (README, Performance).
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &u8 = &b"background_thread:true,dirty_decay_ms:1000\0"[0];

fn main() -> ExitCode {
    bqsink::cli::main()
}
