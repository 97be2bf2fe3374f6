//! Claims: a duplicate is acknowledged only once its first copy is durable.
//!
//! Invariant: a record is acknowledged as a duplicate only if another copy of its key is written to
//! BigQuery (or was read back by the warm-up, which only sees committed records). Acknowledging it
//! any earlier lets its offset be committed while the first copy can still be lost (abandoned on a
//! revoke, a kill, a drain that runs out): the event would then be in neither BigQuery nor the DLQ.
//!
//! So a key has one of three states:
//! - *unknown*: the first record that carries it passes on and makes a **pending claim** for it;
//! - *pending* (in `pending`, with the position of the claiming record): a copy at the claim's own
//!   position (a re-read) passes as well; a copy from any other position is **held** — kept here,
//!   unacknowledged, still in flight — until the claim settles;
//! - *settled* (in the bounded key cache of [`super`]): copies from other positions are duplicates at
//!   once, a re-read at the same position passes.
//!
//! When a claim settles ([`Claims::settle`], told by the writer):
//! - `Written`: the key is settled; the held copies are released as duplicates;
//! - `Reported` (a bad record, sent to the error destinations): the key is forgotten; the held copies
//!   are admitted again, in arrival order: the first passes on and makes the new claim, the others are
//!   held behind it;
//! - `Abandoned` (dropped unwritten): the same, without forgetting (the key was not settled).
//!
//! A claim counts the copies passed at its position (a re-read while the first read is in flight): an
//! unwritten outcome of one copy ends the claim only once no copy is left, so two copies from
//! different positions are never in flight together.
//!
//! Memory: a held item is a record already counted in its partition's in-flight budget, so the held
//! copies are bounded by the budgets, and so is the pending map (one entry per key in flight). An entry
//! goes as its claim settles; [`Claims::shrink`] gives back room after a burst.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::time::Instant;

use super::{Deduplicator, KeyHasher, Keys, Position};
use crate::messages::SettledAs;

/// What became of an admitted item.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission<T> {
    /// Pass it on (to be written): its key is new, or this is a re-read of the key's own record.
    Pass(T),
    /// Another copy of its key is durable: acknowledge it as deduplicated.
    Duplicate(T),
    /// Another copy of its key is in flight: the item is kept until that copy settles.
    Held,
}

/// What [`Claims::decide`] says about an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Pass,
    Duplicate,
    /// To be handed over with [`Claims::hold`].
    Hold,
}

/// Held items released by settled claims.
#[derive(Debug)]
pub struct Released<T> {
    /// To pass on (to be written or reported on their own).
    pub pass: Vec<T>,
    /// Duplicates of a written copy: to acknowledge as deduplicated.
    pub duplicates: Vec<T>,
}

impl<T> Default for Released<T> {
    fn default() -> Self {
        Self {
            pass: Vec::new(),
            duplicates: Vec::new(),
        }
    }
}

/// A key passed on and not yet settled.
struct Claim<T> {
    /// The position of the record that claimed the key.
    at: Position,
    /// Copies passed on from `at` and not yet settled.
    copies: u32,
    /// Copies from other positions, in arrival order.
    held: Vec<(Position, T)>,
}

/// The key cache with the claims pending on it, holding items of type `T` (rows, in the pipeline).
pub struct Claims<T> {
    keys: Keys,
    pending: HashMap<u64, Claim<T>, BuildHasherDefault<KeyHasher>>,
    /// Items held over all claims.
    held: usize,
}

impl<T> Claims<T> {
    /// Claims over `cache`'s keys (which count as settled).
    pub fn new(cache: Deduplicator) -> Self {
        Self {
            keys: cache.keys.into_inner().unwrap_or_else(|e| e.into_inner()),
            pending: HashMap::default(),
            held: 0,
        }
    }

    /// Lets the settled keys of past `ttl` periods go (pending claims stay until settled).
    pub fn expire(&mut self, now: Instant) {
        self.keys.expire(now);
    }

    /// Decides about `item`, which carries `key` and sits at `at`; keeps it if it must wait.
    pub fn admit(&mut self, key: u64, at: Position, item: T) -> Admission<T> {
        match self.decide(key, at) {
            Decision::Pass => Admission::Pass(item),
            Decision::Duplicate => Admission::Duplicate(item),
            Decision::Hold => match self.hold(key, at, item) {
                None => Admission::Held,
                Some(item) => Admission::Pass(item),
            },
        }
    }

    /// [`Claims::admit`] without the item, for a caller that keeps its items where they are unless
    /// they are held: after [`Decision::Hold`] it must hand the item over with [`Claims::hold`]
    /// before anything else happens to `key`.
    pub fn decide(&mut self, key: u64, at: Position) -> Decision {
        match self.keys.get(key) {
            Some(first) if first == at.fingerprint() => return Decision::Pass,
            Some(_) => return Decision::Duplicate,
            None => {}
        }
        match self.pending.entry(key) {
            Entry::Vacant(e) => {
                e.insert(Claim {
                    at,
                    copies: 1,
                    held: Vec::new(),
                });
                Decision::Pass
            }
            Entry::Occupied(mut e) => {
                let claim = e.get_mut();
                if claim.at == at {
                    claim.copies = claim.copies.saturating_add(1);
                    Decision::Pass
                } else {
                    Decision::Hold
                }
            }
        }
    }

    /// Keeps `item` behind the pending claim on `key` that [`Claims::decide`] held it for. Should
    /// that claim be gone (the caller broke the contract), the item is given back, to pass on
    /// rather than be dropped unacknowledged.
    #[must_use]
    pub fn hold(&mut self, key: u64, at: Position, item: T) -> Option<T> {
        match self.pending.get_mut(&key) {
            Some(claim) => {
                claim.held.push((at, item));
                self.held += 1;
                None
            }
            None => Some(item),
        }
    }

    /// Remembers a durable key (dedup warm-up): a settled claim, unless the key is settled already.
    pub fn remember(&mut self, key: u64, at: Position) {
        self.keys.check(key, at.fingerprint());
    }

    /// The record at `at`, passed on with `key`, ended `how`; what it releases goes to `out`.
    pub fn settle(&mut self, key: u64, at: Position, how: SettledAs, out: &mut Released<T>) {
        let fingerprint = at.fingerprint();
        match how {
            // Durable, whether or not it held a claim (a re-read of a settled key holds none).
            SettledAs::Written => {
                self.keys.check(key, fingerprint);
            }
            // So that the record replayed from the dead-letter topic is not taken for a duplicate.
            SettledAs::Reported => self.keys.remove(key, fingerprint),
            SettledAs::Abandoned => {}
        }
        let Entry::Occupied(mut e) = self.pending.entry(key) else {
            return;
        };
        let claim = e.get_mut();
        if claim.at != at {
            // Another record's claim (this one passed as a re-read of a settled key).
            return;
        }
        if how != SettledAs::Written {
            claim.copies = claim.copies.saturating_sub(1);
            if claim.copies > 0 {
                return; // a copy from the same position is still in flight and keeps the claim
            }
        }
        let claim = e.remove();
        self.held -= claim.held.len();
        for (at, item) in claim.held {
            match self.admit(key, at, item) {
                Admission::Pass(item) => out.pass.push(item),
                Admission::Duplicate(item) => out.duplicates.push(item),
                Admission::Held => {}
            }
        }
    }

    /// Settled keys remembered.
    pub fn keys(&self) -> u64 {
        (self.keys.current.len() + self.keys.previous.len()) as u64
    }

    /// Keys with a pending claim.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Items held behind pending claims.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Gives back the pending map's room when it is mostly empty (after a burst of claims).
    pub fn shrink(&mut self) {
        let (len, capacity) = (self.pending.len(), self.pending.capacity());
        if capacity > 1024 && len * 4 < capacity {
            self.pending.shrink_to(len * 2);
        }
    }

    #[cfg(test)]
    fn pending_capacity(&self) -> usize {
        self.pending.capacity()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::messages::Tp;

    fn at(partition: i32, offset: i64) -> Position {
        Position::new(&Tp::new("t", partition), offset)
    }

    fn claims() -> Claims<&'static str> {
        Claims::new(Deduplicator::new(1_000, Duration::from_secs(60)))
    }

    fn settle(
        c: &mut Claims<&'static str>,
        key: u64,
        at: Position,
        how: SettledAs,
    ) -> Released<&'static str> {
        let mut out = Released::default();
        c.settle(key, at, how, &mut out);
        out
    }

    #[test]
    fn a_copy_waits_while_the_first_is_pending_and_a_reread_passes() {
        let mut c = claims();
        assert_eq!(c.admit(1, at(0, 5), "first"), Admission::Pass("first"));
        assert_eq!(c.admit(1, at(1, 9), "copy"), Admission::Held);
        assert_eq!(c.admit(1, at(0, 5), "re-read"), Admission::Pass("re-read"));
        assert_eq!(
            c.admit(2, at(0, 6), "other key"),
            Admission::Pass("other key")
        );
        assert_eq!((c.pending(), c.held()), (2, 1));
    }

    #[test]
    fn written_releases_the_held_copies_as_duplicates() {
        let mut c = claims();
        c.admit(1, at(0, 5), "first");
        c.admit(1, at(1, 9), "copy 1");
        c.admit(1, at(0, 7), "copy 2");
        let out = settle(&mut c, 1, at(0, 5), SettledAs::Written);
        assert_eq!(out.duplicates, vec!["copy 1", "copy 2"]);
        assert!(out.pass.is_empty());
        assert_eq!((c.pending(), c.held(), c.keys()), (0, 0, 1));
        assert_eq!(c.admit(1, at(2, 1), "later"), Admission::Duplicate("later"));
        assert_eq!(c.admit(1, at(0, 5), "re-read"), Admission::Pass("re-read"));
        assert_eq!(c.pending(), 0, "a re-read of a settled key claims nothing");
    }

    #[test]
    fn abandoned_hands_the_claim_to_the_first_held_copy() {
        let mut c = claims();
        c.admit(1, at(0, 5), "first");
        c.admit(1, at(1, 9), "copy 1");
        c.admit(1, at(2, 3), "copy 2");
        c.admit(1, at(1, 9), "copy 1 re-read");
        let out = settle(&mut c, 1, at(0, 5), SettledAs::Abandoned);
        assert_eq!(out.pass, vec!["copy 1", "copy 1 re-read"]);
        assert!(out.duplicates.is_empty());
        assert_eq!((c.pending(), c.held(), c.keys()), (1, 1, 0));
        assert_eq!(
            c.admit(1, at(0, 5), "first read again"),
            Admission::Held,
            "the abandoned record is now a copy of the new claim"
        );
        // One copy of the new claim abandoned, the other still in flight: the claim stays.
        assert!(settle(&mut c, 1, at(1, 9), SettledAs::Abandoned)
            .pass
            .is_empty());
        let out = settle(&mut c, 1, at(1, 9), SettledAs::Written);
        assert_eq!(out.duplicates, vec!["copy 2", "first read again"]);
        assert_eq!((c.pending(), c.held()), (0, 0));
    }

    #[test]
    fn reported_forgets_the_key_and_passes_the_first_held_copy() {
        let mut c = claims();
        c.admit(1, at(0, 5), "first");
        c.admit(1, at(1, 9), "copy 1");
        c.admit(1, at(2, 3), "copy 2");
        let out = settle(&mut c, 1, at(0, 5), SettledAs::Reported);
        assert_eq!(out.pass, vec!["copy 1"]);
        assert_eq!((c.pending(), c.held(), c.keys()), (1, 1, 0));
        let out = settle(&mut c, 1, at(1, 9), SettledAs::Reported);
        assert_eq!(out.pass, vec!["copy 2"]);
        let out = settle(&mut c, 1, at(2, 3), SettledAs::Reported);
        assert!(out.pass.is_empty() && out.duplicates.is_empty());
        assert_eq!((c.pending(), c.held(), c.keys()), (0, 0, 0));
        assert_eq!(
            c.admit(1, at(0, 5), "replayed"),
            Admission::Pass("replayed"),
            "a reported key is forgotten"
        );
    }

    #[test]
    fn a_reported_reread_of_a_settled_key_forgets_it() {
        let mut c = claims();
        c.admit(1, at(0, 5), "first");
        settle(&mut c, 1, at(0, 5), SettledAs::Written);
        assert_eq!(c.admit(1, at(0, 5), "re-read"), Admission::Pass("re-read"));
        settle(&mut c, 1, at(0, 5), SettledAs::Reported);
        assert_eq!(c.keys(), 0);
        assert_eq!(c.admit(1, at(1, 1), "copy"), Admission::Pass("copy"));
    }

    #[test]
    fn settling_another_position_leaves_the_claim_alone() {
        let mut c = claims();
        c.admit(1, at(0, 5), "first");
        c.admit(1, at(1, 9), "copy");
        for how in [SettledAs::Abandoned, SettledAs::Reported] {
            let out = settle(&mut c, 1, at(3, 3), how);
            assert!(out.pass.is_empty() && out.duplicates.is_empty());
        }
        assert_eq!((c.pending(), c.held()), (1, 1));
    }

    #[test]
    fn warmed_up_keys_are_settled_claims() {
        let mut c = claims();
        c.remember(1, at(0, 5));
        assert_eq!(c.admit(1, at(1, 9), "copy"), Admission::Duplicate("copy"));
        assert_eq!(c.admit(1, at(0, 5), "own"), Admission::Pass("own"));
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn held_copies_of_a_key_that_became_durable_meanwhile_are_duplicates() {
        let mut c = claims();
        c.admit(1, at(0, 5), "first");
        c.admit(1, at(1, 9), "copy");
        // Assigned a partition whose committed records carry the key.
        c.remember(1, at(2, 0));
        let out = settle(&mut c, 1, at(0, 5), SettledAs::Abandoned);
        assert_eq!(out.duplicates, vec!["copy"]);
        assert!(out.pass.is_empty());
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn the_pending_map_empties_as_claims_settle() {
        let mut c: Claims<u64> = Claims::new(Deduplicator::new(100_000, Duration::from_secs(60)));
        let n = 10_000u64;
        for k in 0..n {
            assert_eq!(c.admit(k, at(0, k as i64), k), Admission::Pass(k));
            assert_eq!(c.admit(k, at(1, k as i64), n + k), Admission::Held);
        }
        assert_eq!((c.pending(), c.held()), (n as usize, n as usize));
        let grown = c.pending_capacity();
        let mut out = Released::default();
        for k in 0..n {
            let how = match k % 3 {
                0 => SettledAs::Written,
                1 => SettledAs::Reported,
                _ => SettledAs::Abandoned,
            };
            c.settle(k, at(0, k as i64), how, &mut out);
        }
        // The copies passed on in place of the unwritten first copies settle in turn.
        let passed = std::mem::take(&mut out.pass);
        assert_eq!(passed.len() + out.duplicates.len(), n as usize);
        for item in passed {
            let k = item - n;
            c.settle(k, at(1, k as i64), SettledAs::Written, &mut out);
        }
        assert!(out.pass.is_empty());
        assert_eq!((c.pending(), c.held()), (0, 0), "every claim is gone");
        c.shrink();
        assert!(
            c.pending_capacity() < grown / 4,
            "room given back: {} of {grown}",
            c.pending_capacity()
        );
    }
}
