//! The `bqsink` binary: the global allocator, then [`bqsink::cli`].

use std::process::ExitCode;

/// jemalloc: records are allocated on one thread and freed on another, which glibc malloc does
/// slowly (README, Performance: −10 % CPU per record, +8 % records/s in `bqsink bench`).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    bqsink::cli::main()
}
