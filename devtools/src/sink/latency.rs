//! Write latency of stored rows: from each row's `_kafka_timestamp` to when the sink stored it.

use super::*;

/// Write latencies of the rows a sink stored, and when it stored its first and last row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latency {
    /// Rows with a readable `_kafka_timestamp`.
    pub rows: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// When the first and the last stored row arrived (all rows, with or without a timestamp).
    pub first_row: Option<Instant>,
    pub last_row: Option<Instant>,
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {} ms, p99 {} ms, max {} ms over {} rows",
            self.p50.as_millis(),
            self.p99.as_millis(),
            self.max.as_millis(),
            self.rows
        )
    }
}

pub(super) struct LatencyTracker {
    /// Milliseconds, two significant digits (1 % resolution).
    pub(super) histogram: Histogram<u64>,
    pub(super) first_row: Option<Instant>,
    pub(super) last_row: Option<Instant>,
}

impl Default for LatencyTracker {
    fn default() -> Self {
        Self {
            // Up to a day; longer latencies are recorded as a day.
            histogram: Histogram::new_with_max(86_400_000, 2).expect("valid histogram bounds"),
            first_row: None,
            last_row: None,
        }
    }
}

impl LatencyTracker {
    pub(super) fn summary(&self) -> Latency {
        let ms = |v: u64| Duration::from_millis(v);
        let h = &self.histogram;
        Latency {
            rows: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            first_row: self.first_row,
            last_row: self.last_row,
        }
    }
}

/// Reads `_kafka_timestamp`s, parsing each second's date and time once (rows come in time order).
#[derive(Default)]
pub(super) struct Seconds {
    last: Option<(String, SystemTime)>,
}

impl Seconds {
    /// Milliseconds from an RFC 3339 timestamp (a JSON string) to `now`; `None` if it is not one.
    pub(super) fn latency_ms(&mut self, text: &str, now: SystemTime) -> Option<u64> {
        // `YYYY-MM-DDThh:mm:ss.mmmZ`, as bqsink writes it; anything else is parsed whole.
        let at = match (text.get(..19), text.get(19..)) {
            (Some(second), Some(rest))
                if rest.len() == 5 && rest.starts_with('.') && rest.ends_with('Z') =>
            {
                let millis: u64 = rest[1..4].parse().ok()?;
                let start = match &self.last {
                    Some((s, t)) if s == second => *t,
                    _ => {
                        let t = humantime::parse_rfc3339(&format!("{second}Z")).ok()?;
                        self.last = Some((second.to_owned(), t));
                        t
                    }
                };
                start + Duration::from_millis(millis)
            }
            _ => humantime::parse_rfc3339(text).ok()?,
        };
        Some(now.duration_since(at).unwrap_or_default().as_millis() as u64)
    }
}
