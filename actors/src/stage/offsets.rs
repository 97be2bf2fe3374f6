//! Offset tracking: the contiguous "handled" watermark of one partition.
//!
//! Records are registered in the order they are read and marked handled in any order. The commit
//! offset is the first offset not yet handled (or one past the last read record when all are): it
//! never moves past a record still in flight, however batches complete. Offsets that were never read
//! (compaction holes, transaction markers) are not waited for. A record marked *stuck* (failed under
//! `errors.tolerance = "none"`) leaves the in-flight count but holds the commit offset below itself
//! for good.
//!
//! Offsets of one partition only ever increase while it is read continuously. A chunk that goes
//! backwards means the log itself changed under the reader (truncated after an unclean leader
//! election, or the fetch position reset when it fell out of range): the records now at those
//! offsets are new, so the partition is read again from there ([`OffsetTracker::rewind_point`]),
//! never skipped.

use std::collections::VecDeque;

/// Per-partition in-flight state.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    /// Read offsets in increasing order, with their state and size.
    pending: VecDeque<(i64, State, usize)>,
    /// One past the last offset read.
    next_read: Option<i64>,
    inflight_records: usize,
    inflight_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    InFlight,
    Handled,
    Stuck,
}

/// A record registered out of order (offset not above the last one read).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("offset {offset} read after {last}: offsets must increase")]
pub struct OutOfOrder {
    pub offset: i64,
    pub last: i64,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a record as read (and not yet handled).
    pub fn read(&mut self, offset: i64, bytes: usize) -> Result<(), OutOfOrder> {
        if let Some(next) = self.next_read {
            if offset < next {
                return Err(OutOfOrder {
                    offset,
                    last: next - 1,
                });
            }
        }
        self.pending.push_back((offset, State::InFlight, bytes));
        self.next_read = Some(offset + 1);
        self.inflight_records += 1;
        self.inflight_bytes += bytes;
        Ok(())
    }

    /// Where to read the partition again from, if `offsets` (a chunk, in delivery order) go
    /// backwards: below an offset already read, or below the previous record of the chunk. It is
    /// the lower of the first backwards offset and the first unhandled one (records still in
    /// flight are abandoned with the consumer, so they are read again too). `None`: the chunk
    /// continues the partition and may be read.
    pub fn rewind_point(&self, offsets: impl IntoIterator<Item = i64>) -> Option<i64> {
        let mut next = self.next_read;
        let mut first = None;
        for offset in offsets {
            first.get_or_insert(offset);
            if next.is_some_and(|n| offset < n) {
                let unhandled = self.commit_offset().or(first).unwrap_or(offset);
                return Some(offset.min(unhandled));
            }
            next = Some(offset + 1);
        }
        None
    }

    /// Marks a read record handled. Unknown or already-settled offsets are ignored (returns false).
    pub fn handled(&mut self, offset: i64) -> bool {
        self.settle(offset, State::Handled)
    }

    /// Marks a read record failed for good: no longer in flight, never committed past.
    pub fn stuck(&mut self, offset: i64) -> bool {
        self.settle(offset, State::Stuck)
    }

    fn settle(&mut self, offset: i64, to: State) -> bool {
        // Offsets are mostly contiguous: try the record's place as if they were, then search.
        let guess = self
            .pending
            .front()
            .and_then(|(first, _, _)| usize::try_from(offset - first).ok());
        let i = match guess {
            Some(i) if self.pending.get(i).is_some_and(|(o, _, _)| *o == offset) => i,
            _ => match self.pending.binary_search_by_key(&offset, |(o, _, _)| *o) {
                Ok(i) => i,
                Err(_) => return false,
            },
        };
        let (_, state, bytes) = &mut self.pending[i];
        if *state != State::InFlight {
            return false;
        }
        *state = to;
        self.inflight_records -= 1;
        self.inflight_bytes -= *bytes;
        while matches!(self.pending.front(), Some((_, State::Handled, _))) {
            self.pending.pop_front();
        }
        true
    }

    /// The offset to commit: everything before it is handled. `None` before anything was read.
    pub fn commit_offset(&self) -> Option<i64> {
        match self.pending.front() {
            Some((offset, _, _)) => Some(*offset),
            None => self.next_read,
        }
    }

    pub fn inflight_records(&self) -> usize {
        self.inflight_records
    }

    pub fn inflight_bytes(&self) -> usize {
        self.inflight_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_read_nothing_to_commit() {
        assert_eq!(OffsetTracker::new().commit_offset(), None);
    }

    #[test]
    fn in_order_completion() {
        let mut t = OffsetTracker::new();
        for o in 0..5 {
            t.read(o, 10).unwrap();
        }
        assert_eq!(t.commit_offset(), Some(0));
        assert_eq!((t.inflight_records(), t.inflight_bytes()), (5, 50));
        for o in 0..5 {
            assert!(t.handled(o));
        }
        assert_eq!(t.commit_offset(), Some(5));
        assert_eq!((t.inflight_records(), t.inflight_bytes()), (0, 0));
    }

    #[test]
    fn out_of_order_completion_never_passes_a_gap() {
        let mut t = OffsetTracker::new();
        for o in 100..110 {
            t.read(o, 1).unwrap();
        }
        // A later batch (105..110) finishes first: nothing may be committed past 100.
        for o in 105..110 {
            t.handled(o);
        }
        assert_eq!(t.commit_offset(), Some(100));
        // Part of the first batch: the watermark stops at the first unhandled record.
        for o in [100, 101, 103] {
            t.handled(o);
        }
        assert_eq!(t.commit_offset(), Some(102));
        t.handled(102);
        assert_eq!(t.commit_offset(), Some(104));
        t.handled(104);
        assert_eq!(t.commit_offset(), Some(110));
    }

    #[test]
    fn holes_in_the_log_are_not_waited_for() {
        let mut t = OffsetTracker::new();
        for o in [10, 11, 15, 20] {
            t.read(o, 1).unwrap();
        }
        t.handled(10);
        t.handled(11);
        assert_eq!(t.commit_offset(), Some(15));
        t.handled(20);
        assert_eq!(t.commit_offset(), Some(15));
        t.handled(15);
        assert_eq!(t.commit_offset(), Some(21));
    }

    #[test]
    fn duplicate_and_unknown_acks_are_ignored() {
        let mut t = OffsetTracker::new();
        t.read(0, 1).unwrap();
        t.read(1, 1).unwrap();
        assert!(t.handled(1));
        assert!(!t.handled(1));
        assert!(!t.handled(7));
        assert_eq!(t.inflight_records(), 1);
        assert_eq!(t.commit_offset(), Some(0));
    }

    #[test]
    fn a_stuck_record_holds_the_commit_offset() {
        let mut t = OffsetTracker::new();
        for o in 0..4 {
            t.read(o, 1).unwrap();
        }
        t.handled(0);
        assert!(t.stuck(1));
        t.handled(2);
        t.handled(3);
        assert_eq!(t.inflight_records(), 0, "nothing is in flight any more");
        assert_eq!(
            t.commit_offset(),
            Some(1),
            "but nothing at or after the failure is committable"
        );
        assert!(!t.handled(1), "a stuck record cannot be handled later");
    }

    #[test]
    fn a_chunk_that_goes_backwards_is_read_again_from_the_lower_of_it_and_the_first_unhandled() {
        let mut t = OffsetTracker::new();
        assert_eq!(t.rewind_point([0, 1, 2]), None, "nothing read yet");
        assert_eq!(t.rewind_point(Vec::new()), None);
        for o in 0..10 {
            t.read(o, 1).unwrap();
        }
        assert_eq!(
            t.rewind_point([10, 11]),
            None,
            "the chunk continues the partition"
        );
        assert_eq!(t.rewind_point([12, 13]), None, "a hole is not a rewind");
        for o in 0..10 {
            t.handled(o);
        }
        assert_eq!(
            t.rewind_point([3, 4, 5]),
            Some(3),
            "all handled: from the rewound offset"
        );
        assert_eq!(t.rewind_point([9]), Some(9), "a record read again");
        assert_eq!(
            t.rewind_point([10, 11, 4]),
            Some(4),
            "backwards inside the chunk"
        );
        for o in 10..20 {
            t.read(o, 1).unwrap();
        }
        t.handled(10);
        t.handled(12);
        assert_eq!(
            t.rewind_point([15]),
            Some(11),
            "offset 11 is still in flight: it is abandoned and read again"
        );
        assert_eq!(t.rewind_point([5]), Some(5));
        let fresh = OffsetTracker::new();
        assert_eq!(
            fresh.rewind_point([7, 8, 2]),
            Some(2),
            "backwards inside the first chunk"
        );
        assert_eq!(
            fresh.rewind_point([7, 8, 8]),
            Some(7),
            "nothing read: from the chunk's first"
        );
    }

    #[test]
    fn offsets_must_increase() {
        let mut t = OffsetTracker::new();
        t.read(5, 1).unwrap();
        assert_eq!(t.read(5, 1), Err(OutOfOrder { offset: 5, last: 5 }));
    }
}
