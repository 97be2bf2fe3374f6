//! The commit plan: prefixes, appends finished out of order, inherited streams, finalizing.

use super::*;

fn t(name: &str) -> TableRef {
    TableRef::parse(name, "ds").unwrap()
}

fn book_with(table: &TableRef, id: &str) -> PartitionBook {
    let mut b = PartitionBook::default();
    b.streams(table).push(Stream::new(id.into()));
    b
}

#[test]
fn a_commit_names_the_rows_of_the_records_below_its_offset() {
    let a = t("a");
    let mut b = book_with(&a, "s1");
    b.current(&a).unwrap().acked(100, 0, 99); // rows 0..=99
    b.current(&a).unwrap().acked(50, 100, 149); // rows 100..=149
                                                // The tracker has handled everything below 120 only: the second append is not a prefix below
                                                // 120, so the commit stays at 100 and names rows 0..=99.
    let plan = b.prepare(120);
    assert_eq!(plan.offset, 100);
    assert_eq!(plan.streams, vec![(a.clone(), "s1".into(), 99)]);
    b.committed(&plan);
    assert!(b.needs_commit(), "committed, not yet flushed");
    b.flushed(&a, "s1", 99);
    let plan = b.prepare(150);
    assert_eq!(
        (plan.offset, plan.streams.clone()),
        (150, vec![(a.clone(), "s1".into(), 149)])
    );
    b.committed(&plan);
    b.flushed(&a, "s1", 149);
    assert!(!b.needs_commit());
    assert_eq!(b.prepare(150).streams, vec![], "nothing new: nothing named");
    assert!(
        b.take_finished().is_empty(),
        "the current stream is never finalized"
    );
}

#[test]
fn appends_that_finished_out_of_order_hold_the_commit_until_the_rows_below_it_are_a_prefix() {
    let a = t("a");
    let mut b = book_with(&a, "s1");
    // Records 100..=199 were appended first (rows 0..=99), then 0..=99 (rows 100..=199).
    b.current(&a).unwrap().acked(100, 100, 199);
    b.current(&a).unwrap().acked(100, 0, 99);
    // Everything below 100 is handled, but flushing rows 100..=199 would publish rows 0..=99, which
    // hold records 100..=199 too: nothing can be committed yet.
    let plan = b.prepare(100);
    assert_eq!(
        plan,
        CommitPlan {
            offset: 0,
            streams: vec![]
        }
    );
    let plan = b.prepare(200);
    assert_eq!(plan.offset, 200);
    assert_eq!(plan.streams, vec![(a, "s1".into(), 199)]);
}

#[test]
fn every_table_of_the_partition_is_named_with_its_own_prefix() {
    let (a, c) = (t("a"), t("c"));
    let mut b = book_with(&a, "sa");
    b.streams(&c).push(Stream::new("sc".into()));
    b.current(&a).unwrap().acked(2, 0, 2); // records 0 and 2
    b.current(&c).unwrap().acked(1, 1, 1); // record 1
    b.current(&c).unwrap().acked(1, 5, 5); // record 5: above the commit
    let plan = b.prepare(3);
    assert_eq!(plan.offset, 3);
    assert_eq!(
        plan.streams,
        vec![(a.clone(), "sa".into(), 1), (c.clone(), "sc".into(), 0)]
    );
}

#[test]
fn a_retired_stream_is_flushed_to_its_acknowledged_rows_and_the_next_append_goes_to_a_new_one() {
    let a = t("a");
    let mut b = book_with(&a, "s1");
    b.current(&a).unwrap().acked(10, 0, 9);
    // An append of records 10..=19 timed out: its outcome is unknown, the stream retires.
    b.current(&a).unwrap().retired = true;
    assert!(b.current(&a).is_none());
    b.streams(&a).push(Stream::new("s2".into()));
    b.current(&a).unwrap().acked(10, 10, 19);
    let plan = b.prepare(20);
    assert_eq!(
        plan.streams,
        vec![(a.clone(), "s1".into(), 9), (a.clone(), "s2".into(), 9)],
        "s1 only to its acknowledged rows, whatever the unknown append left beyond them"
    );
    b.committed(&plan);
    b.flushed(&a, "s1", 9);
    b.flushed(&a, "s2", 9);
    assert!(
        b.take_finished().is_empty(),
        "s1 is still named by the last commit"
    );
    assert!(b.needs_commit(), "a commit without s1 is due");
    let plan = b.prepare(20);
    assert_eq!(plan.streams, vec![]);
    b.committed(&plan);
    assert_eq!(b.take_finished(), vec![(a, "s1".to_owned())]);
    assert!(!b.needs_commit());
}

#[test]
fn an_inherited_stream_is_flushed_then_dropped_from_the_metadata_then_finalized() {
    let a = t("a");
    let mut b = PartitionBook::default();
    b.inherit(vec![(a.clone(), "old".into(), 41)]);
    assert!(b.current(&a).is_none(), "never appended to");
    assert!(b.needs_commit());
    // The same offset is committed naming it again, then it is flushed.
    let plan = b.prepare(500);
    assert_eq!(plan.streams, vec![(a.clone(), "old".into(), 41)]);
    b.committed(&plan);
    b.flushed(&a, "old", 41);
    assert!(b.take_finished().is_empty(), "named by the last commit");
    let plan = b.prepare(500);
    b.committed(&plan);
    assert_eq!(b.take_finished(), vec![(a, "old".to_owned())]);
    assert!(b.is_empty());
}

#[test]
fn the_metadata_round_trips_and_refuses_what_kafka_would() {
    let streams = vec![
        (t("ds.events"), "CiQ2YjNk-_x".to_owned(), 41),
        (t("other.t2"), "s2".to_owned(), 0),
    ];
    let text = encode_metadata(&streams).unwrap();
    assert_eq!(text, "bqsink1;ds.events,CiQ2YjNk-_x,41;other.t2,s2,0");
    assert_eq!(decode_metadata(&text).unwrap(), streams);
    assert_eq!(decode_metadata("").unwrap(), vec![]);
    assert_eq!(decode_metadata("someone else's").unwrap(), vec![]);
    assert!(decode_metadata("bqsink1;ds.events,x").is_err());
    let many: Vec<_> = (0..100)
        .map(|i| (t(&format!("ds.table_{i}")), "C".repeat(40), 1_000_000))
        .collect();
    assert!(matches!(
        encode_metadata(&many),
        Err(MetadataError::TooLarge { streams: 100, .. })
    ));
}

#[test]
fn a_stream_finalized_by_someone_else_holds_the_commit_below_its_unflushed_records() {
    let a = t("a");
    let mut b = book_with(&a, "s1");
    b.current(&a).unwrap().acked(10, 0, 9);
    let plan = b.prepare(10);
    b.committed(&plan);
    b.flushed(&a, "s1", 9);
    b.current(&a).unwrap().acked(10, 10, 19); // not committed yet
    assert_eq!(b.lose(&a, "s1"), None, "nothing committed was lost");
    b.streams(&a).push(Stream::new("s2".into()));
    b.current(&a).unwrap().acked(10, 20, 29);
    let plan = b.prepare(30);
    assert_eq!(plan.offset, 10, "held below the records only s1 holds");
    assert!(plan.streams.iter().all(|(_, id, _)| id != "s1"), "{plan:?}");
    assert!(
        b.take_finished().is_empty(),
        "a lost stream is kept: it holds the commit"
    );
}

#[test]
fn committed_rows_of_a_lost_stream_are_reported() {
    let a = t("a");
    let mut b = book_with(&a, "s1");
    b.current(&a).unwrap().acked(10, 0, 9);
    let plan = b.prepare(10);
    b.committed(&plan);
    assert_eq!(b.lose(&a, "s1"), Some((0, 9)), "committed, never flushed");
    assert!(!b.needs_commit(), "no flush is retried on a lost stream");
}

#[test]
fn a_partition_given_up_abandons_its_uncommitted_rows_so_taking_it_back_publishes_nothing_twice() {
    let a = t("a");
    let mut b = book_with(&a, "s1");
    b.current(&a).unwrap().acked(100, 0, 99);
    let plan = b.prepare(100);
    b.committed(&plan);
    b.flushed(&a, "s1", 99);
    // Records 100..=199 appended, then the partition is revoked and the final commit fails.
    b.current(&a).unwrap().acked(100, 100, 199);
    b.retire_all();
    // It comes back to this instance: records 100.. are read again into a new stream.
    b.inherit(vec![]);
    b.streams(&a).push(Stream::new("s2".into()));
    b.current(&a).unwrap().acked(100, 100, 199);
    let plan = b.prepare(200);
    assert_eq!(
        plan.streams,
        vec![(a, "s2".into(), 99)],
        "s1's rows 100..=199 hold the same records: never flushed"
    );
}
