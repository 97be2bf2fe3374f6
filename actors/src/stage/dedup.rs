//! Dedup: a bounded, expiring memory of the keys already passed on.
//!
//! The cache maps a key hash to the position (partition and offset) of the record that first carried
//! it. A record whose key is known from *another* position is a duplicate and is dropped. A record
//! seen again at the *same* position is a re-read (after a rebalance or a retry from the committed
//! offset), not a duplicate: it passes, because the first pass may never have reached BigQuery.
//!
//! The pipeline does not put a key in this cache when it first passes a record on, but when that
//! record is *durable* (written, or read back by the warm-up): until then the key is a pending claim
//! and later copies wait behind it. See [`Claims`], which the deduplicator actor uses; the plain
//! [`Deduplicator`] (check and remember at once) serves the replay tool, which has nothing to wait for.
//!
//! Memory: two generations of at most `max_keys / 2` keys each, hash maps of key → position
//! fingerprint (16 bytes a slot), about 36 MiB for the default 1,000,000 keys. New keys go into the
//! current generation; when it is full, or when a `ttl` period ends, it becomes the previous one and
//! the previous one is forgotten whole. So a key is remembered for at least `max_keys / 2` newer keys
//! (and at most `max_keys`) and for at least `ttl` (at most twice that). Forgetting a generation at
//! once, rather than key by key, leaves no deleted slots behind: the maps never grow past their
//! first size, however long the process runs.
//!
//! A deliberate departure from the design card, which named moka's cache: measured (README,
//! Performance), moka took 329.5 MiB for a million keys and, being frequency-based, forgot recent
//! keys and let 3,054 duplicates through in the first bench; this map holds a million keys in about
//! 34 MiB resident (34.1 MiB with jemalloc, as shipped), and a unit test checks its allocation.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::xxh3_64_with_seed;

pub use crate::model::Position;

mod claims;
pub use claims::{Admission, Claims, Decision, Released};

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
    keys: Mutex<Keys>,
}

/// Checks made at one moment; see [`Deduplicator::batch`].
pub struct DedupBatch<'a> {
    keys: MutexGuard<'a, Keys>,
}

impl DedupBatch<'_> {
    /// Checks a key and remembers it.
    pub fn check(&mut self, key: u64, at: Position) -> Verdict {
        self.keys.check(key, at.fingerprint())
    }
}

/// Keys are xxh3 hashes already: the map uses them as they are.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxh3_64_with_seed(bytes, self.0);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct Keys {
    /// Keys per generation.
    half: usize,
    ttl: Duration,
    /// Generations are `ttl` periods counted from here.
    origin: Instant,
    /// The period of `current`.
    period: u128,
    /// Key → fingerprint of the position that first carried it.
    current: HashMap<u64, u64, BuildHasherDefault<KeyHasher>>,
    previous: HashMap<u64, u64, BuildHasherDefault<KeyHasher>>,
}

impl Keys {
    fn new(max_keys: u64, ttl: Duration) -> Self {
        let max_keys = usize::try_from(max_keys).unwrap_or(usize::MAX).max(2);
        let half = max_keys / 2;
        // Room for a whole generation up front (pages are touched only as keys come), within reason.
        let capacity = half.min(1 << 24);
        let map = || HashMap::with_capacity_and_hasher(capacity, Default::default());
        Keys {
            half,
            ttl,
            origin: Instant::now(),
            period: 0,
            current: map(),
            previous: map(),
        }
    }

    /// Passes a key new or known for `fingerprint`, and remembers it if new. One probe of the
    /// current generation serves both the lookup and the insert (each is a cache miss in a full
    /// cache); a full generation is rotated first.
    fn check(&mut self, key: u64, fingerprint: u64) -> Verdict {
        if self.current.len() >= self.half {
            self.rotate();
        }
        let verdict = |first: u64| {
            if first == fingerprint {
                Verdict::Pass
            } else {
                Verdict::Duplicate
            }
        };
        match self.current.entry(key) {
            Entry::Occupied(e) => verdict(*e.get()),
            Entry::Vacant(e) => match self.previous.get(&key) {
                Some(first) => verdict(*first),
                None => {
                    e.insert(fingerprint);
                    Verdict::Pass
                }
            },
        }
    }

    /// The generation that started two periods ago is forgotten, the current one becomes previous.
    fn expire(&mut self, now: Instant) {
        let period =
            now.saturating_duration_since(self.origin).as_nanos() / self.ttl.as_nanos().max(1);
        if period >= self.period + 2 {
            self.current.clear();
            self.previous.clear();
        } else if period == self.period + 1 {
            self.rotate();
        }
        self.period = self.period.max(period);
    }

    /// Forgets the previous generation; the current one takes its place. `clear` keeps the
    /// allocation, so no memory is freed or taken.
    fn rotate(&mut self) {
        std::mem::swap(&mut self.current, &mut self.previous);
        self.current.clear();
    }

    fn get(&self, key: u64) -> Option<u64> {
        self.current
            .get(&key)
            .or_else(|| self.previous.get(&key))
            .copied()
    }

    /// Removes `key` if it is remembered for `fingerprint`.
    fn remove(&mut self, key: u64, fingerprint: u64) {
        for map in [&mut self.current, &mut self.previous] {
            if map.get(&key) == Some(&fingerprint) {
                map.remove(&key);
            }
        }
    }
}

impl Deduplicator {
    pub fn new(max_keys: u64, ttl: Duration) -> Self {
        Self {
            keys: Mutex::new(Keys::new(max_keys, ttl)),
        }
    }

    fn keys(&self) -> MutexGuard<'_, Keys> {
        // The state is consistent between calls; a panic elsewhere does not corrupt it.
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks a key and remembers it.
    pub fn check(&self, key: u64, at: Position) -> Verdict {
        self.batch(Instant::now()).check(key, at)
    }

    /// Holds the cache for several checks made at one moment `now` (one lock, one expiry pass).
    pub fn batch(&self, now: Instant) -> DedupBatch<'_> {
        let mut keys = self.keys();
        keys.expire(now);
        DedupBatch { keys }
    }

    /// Remembers a key seen before this process read anything (dedup warm-up), unless known.
    pub fn remember(&self, key: u64, at: Position) {
        self.check(key, at);
    }

    /// Forgets a key, if it is remembered for this position (another record's claim stays).
    pub fn forget(&self, key: u64, at: Position) {
        self.keys().remove(key, at.fingerprint());
    }

    /// Keys currently remembered.
    pub fn len(&self) -> u64 {
        let keys = self.keys();
        (keys.current.len() + keys.previous.len()) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes allocated for the keys (the two hash maps' slots and control bytes).
    pub fn allocated_bytes(&self) -> usize {
        let keys = self.keys();
        [&keys.current, &keys.previous]
            .iter()
            .map(|m| {
                // hashbrown keeps at most 7/8 of a power-of-two number of slots in use.
                let slots = (m.capacity() * 8 / 7).next_power_of_two();
                slots * (std::mem::size_of::<(u64, u64)>() + 1)
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Tp;

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
    fn when_full_the_oldest_generation_goes() {
        // Generations of 2 keys: {1,2} is forgotten when {5} starts.
        let d = Deduplicator::new(4, Duration::from_secs(60));
        for k in 1..=5 {
            assert_eq!(d.check(k, at(k as i64)), Verdict::Pass);
        }
        assert_eq!(d.len(), 3);
        assert_eq!(
            d.check(4, at(11)),
            Verdict::Duplicate,
            "key 4 is remembered"
        );
        assert_eq!(
            d.check(3, at(12)),
            Verdict::Duplicate,
            "key 3 is remembered"
        );
        assert_eq!(d.check(1, at(10)), Verdict::Pass, "key 1 was forgotten");
    }

    #[test]
    fn memory_stays_put_under_churn() {
        let d = Deduplicator::new(10_000, Duration::from_secs(60));
        d.check(0, at(0));
        let before = d.allocated_bytes();
        for k in 1..200_000u64 {
            d.check(k.wrapping_mul(0x9E37_79B9_7F4A_7C15), at(k as i64));
        }
        assert_eq!(d.allocated_bytes(), before, "the maps never grew");
        assert!(d.len() <= 10_000);
    }

    #[test]
    fn a_million_keys_fit_in_64_mib() {
        let d = Deduplicator::new(1_000_000, Duration::from_secs(3600));
        for k in 0..1_000_000u64 {
            d.check(k.wrapping_mul(0x9E37_79B9_7F4A_7C15), at(k as i64));
        }
        assert_eq!(d.len(), 1_000_000);
        let bytes = d.allocated_bytes();
        assert!(bytes <= 64 << 20, "{bytes} bytes");
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
