//! Dedup: a bounded, expiring memory of the keys already passed on.
//!
//! The cache maps a key hash to the position (partition and offset) of the record that first carried
//! it. A record whose key is known from *another* position is a duplicate and is dropped. A record
//! seen again at the *same* position is a re-read (after a rebalance or a retry from the committed
//! offset), not a duplicate: it passes, because the first pass may never have reached BigQuery.

use std::time::Duration;

use moka::sync::Cache;
use xxhash_rust::xxh3::xxh3_64;

use crate::messages::Tp;

/// Where a record sits in Kafka, compactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub partition: u64,
    pub offset: i64,
}

impl Position {
    pub fn new(tp: &Tp, offset: i64) -> Self {
        let mut buf = Vec::with_capacity(tp.topic.len() + 4);
        buf.extend_from_slice(tp.topic.as_bytes());
        buf.extend_from_slice(&tp.partition.to_le_bytes());
        Self {
            partition: xxh3_64(&buf),
            offset,
        }
    }
}

/// What the deduplicator says about a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// First time this key is seen (or seen again at the same position): pass it on.
    Pass,
    /// The key was already passed on from another record: drop it.
    Duplicate,
}

/// The bounded key cache (capacity `dedup.max_keys`, time-to-live `dedup.ttl_secs`).
pub struct Deduplicator {
    seen: Cache<u64, Position>,
}

impl Deduplicator {
    pub fn new(max_keys: u64, ttl: Duration) -> Self {
        Self {
            seen: Cache::builder()
                .max_capacity(max_keys)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// Checks a key and remembers it.
    pub fn check(&self, key: u64, at: Position) -> Verdict {
        match self.seen.get(&key) {
            Some(first) if first != at => Verdict::Duplicate,
            Some(_) => Verdict::Pass,
            None => {
                self.seen.insert(key, at);
                Verdict::Pass
            }
        }
    }

    /// Remembers a key seen before this process read anything (dedup warm-up), unless known.
    pub fn remember(&self, key: u64, at: Position) {
        self.seen.entry(key).or_insert(at);
    }

    /// Forgets a key, if it is remembered for this position (another record's claim stays).
    pub fn forget(&self, key: u64, at: Position) {
        if self.seen.get(&key) == Some(at) {
            self.seen.invalidate(&key);
        }
    }

    /// Keys currently remembered (approximate until pending maintenance has run).
    pub fn len(&self) -> u64 {
        self.seen.run_pending_tasks();
        self.seen.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: i64) -> Position {
        Position::new(&Tp::new("t", 0), offset)
    }

    #[test]
    fn drops_duplicates_but_not_rereads() {
        let d = Deduplicator::new(100, Duration::from_secs(60));
        assert_eq!(d.check(1, at(10)), Verdict::Pass);
        assert_eq!(d.check(2, at(11)), Verdict::Pass);
        assert_eq!(
            d.check(1, at(12)),
            Verdict::Duplicate,
            "same key, later offset"
        );
        assert_eq!(
            d.check(1, at(10)),
            Verdict::Pass,
            "the original record read again"
        );
        let other_partition = Position::new(&Tp::new("t", 1), 10);
        assert_eq!(d.check(1, other_partition), Verdict::Duplicate);
    }

    #[test]
    fn warmed_up_keys_drop_later_duplicates_but_pass_their_own_record() {
        let d = Deduplicator::new(100, Duration::from_secs(60));
        d.remember(5, at(3));
        d.remember(5, at(9)); // the first position stays
        assert_eq!(d.check(5, at(3)), Verdict::Pass);
        assert_eq!(d.check(5, at(20)), Verdict::Duplicate);
    }

    #[test]
    fn a_forgotten_key_passes_again_from_another_position() {
        let d = Deduplicator::new(100, Duration::from_secs(60));
        assert_eq!(d.check(1, at(10)), Verdict::Pass);
        d.forget(1, at(11));
        assert_eq!(
            d.check(1, at(12)),
            Verdict::Duplicate,
            "only the position that claimed it can forget a key"
        );
        d.forget(1, at(10));
        assert_eq!(d.check(1, at(12)), Verdict::Pass, "the record sent again");
        assert_eq!(d.check(1, at(10)), Verdict::Duplicate);
    }

    #[test]
    fn capacity_is_bounded() {
        let d = Deduplicator::new(1_000, Duration::from_secs(60));
        for k in 0..10_000u64 {
            d.check(k, at(k as i64));
        }
        let len = d.len();
        assert!(len <= 1_000, "cache holds {len} keys, cap is 1000");
        assert!(len > 0);
    }

    #[test]
    fn keys_expire_after_ttl() {
        let d = Deduplicator::new(100, Duration::from_millis(200));
        assert_eq!(d.check(7, at(1)), Verdict::Pass);
        assert_eq!(d.check(7, at(2)), Verdict::Duplicate);
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(
            d.check(7, at(3)),
            Verdict::Pass,
            "key forgotten after its ttl"
        );
    }
}
