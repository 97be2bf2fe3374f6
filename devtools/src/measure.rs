//! Measuring a process: peak memory, CPU time, rates. Used by the bench harness for itself and by
//! `bqsink bench-worker` for the pipeline process it reports on.

/// Peak resident set size of this process in KiB (`VmHWM` from `/proc/self/status`).
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User and system CPU seconds of this process, all threads (`getrusage`).
pub fn cpu_secs() -> (f64, f64) {
    // SAFETY: getrusage only writes into the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return (0.0, 0.0);
        }
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime), secs(usage.ru_stime))
}

/// This process's CPU seconds so far (user + system).
pub fn own_cpu() -> f64 {
    let (user, sys) = cpu_secs();
    user + sys
}

/// Records (and payload bytes) over a time, and the CPU time this process spent meanwhile.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rate {
    pub records: u64,
    pub bytes: u64,
    pub secs: f64,
    pub cpu_secs: f64,
}

impl Rate {
    pub fn add(&mut self, other: Rate) {
        self.records += other.records;
        self.bytes += other.bytes;
        self.secs += other.secs;
        self.cpu_secs += other.cpu_secs;
    }
    pub fn cpu_per_million(&self) -> f64 {
        self.cpu_secs * 1e6 / self.records.max(1) as f64
    }
    pub fn per_sec(&self) -> f64 {
        self.records as f64 / self.secs.max(1e-9)
    }
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.secs.max(1e-9)
    }
}

/// `n` with thousands separators: 1,234,567.
pub fn fmt_n(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
