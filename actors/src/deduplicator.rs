//! The deduplicator: passes on the first copy of each dedup key, acknowledges later copies as
//! deduplicated once that first copy is durable, and holds them until then (see
//! [`crate::stage::dedup::Claims`]: a duplicate is never acknowledged while its first copy can still
//! be lost). The writer tells it how each passed row ended ([`Settled`]); a held copy whose first copy
//! was not written is passed on in its place.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;

use crate::messages::{acknowledge, Dedup, HandledKind, Row, Settled, WarmupKeys, Write};
use crate::stage::dedup::{Claims, Decision, Deduplicator, Position, Released};
use crate::stats::Stats;
use crate::telemetry;

pub struct DedupActor {
    claims: Claims<Row>,
    writer: Recipient<Write>,
    stats: Arc<Stats>,
}

impl DedupActor {
    /// A deduplicator over `dedup`'s keys, passing unique rows to `writer`.
    pub fn new(dedup: Deduplicator, writer: Recipient<Write>, stats: Arc<Stats>) -> Self {
        Self {
            claims: Claims::new(dedup),
            writer,
            stats,
        }
    }

    /// Acknowledges rows as deduplicated (their first copy is durable) and counts them.
    fn deduplicated(&self, rows: Vec<Row>) {
        if rows.is_empty() {
            return;
        }
        Stats::add(&self.stats.deduplicated, rows.len());
        let mut counted: Vec<(&Arc<crate::messages::Origin>, usize)> = Vec::new();
        for row in &rows {
            match counted
                .iter_mut()
                .find(|(o, _)| Arc::ptr_eq(o, &row.origin))
            {
                Some((_, n)) => *n += 1,
                None => counted.push((&row.origin, 1)),
            }
        }
        for (origin, n) in counted {
            telemetry::count(telemetry::names::DEDUPLICATED, &origin.tp, n);
        }
        acknowledge(
            rows.iter().map(|r| (&r.origin, r.source.offset)),
            HandledKind::Done,
        );
    }

    fn pass(&self, rows: Vec<Row>) {
        if !rows.is_empty() {
            self.writer.do_send(Write { rows });
        }
    }
}

impl Actor for DedupActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(std::time::Duration::from_secs(1), |act, _| {
            metrics::gauge!(telemetry::names::DEDUP_CACHE_KEYS).set(act.claims.keys() as f64);
            act.claims.shrink();
        });
    }
}

impl Handler<Dedup> for DedupActor {
    type Result = ();

    fn handle(&mut self, msg: Dedup, _: &mut Self::Context) {
        let _span = tracing::debug_span!(parent: &msg.span, "dedup", rows = msg.rows.len() as i64, duplicates = tracing::field::Empty, held = tracing::field::Empty).entered();
        self.claims.expire(Instant::now());
        // Decided in place; only the rows that do not pass are taken out of the chunk (a row is
        // some 200 bytes, and moving every row into new vectors was a quarter of this stage).
        let mut rows = msg.rows;
        let at = |row: &Row| Position::new(&row.origin.tp, row.source.offset);
        let decisions: Vec<Decision> = rows
            .iter()
            .map(|row| match row.dedup_hash {
                Some(hash) => self.claims.decide(hash, at(row)),
                None => Decision::Pass,
            })
            .collect();
        let mut dups = Vec::new();
        let mut held = 0usize;
        if decisions.iter().any(|d| *d != Decision::Pass) {
            // The passing rows move to the front in order (swapped with the others, which end up
            // behind them out of order and are put back in arrival order: held copies wait in it).
            let mut fates: Vec<(Decision, usize)> = decisions.into_iter().zip(0..).collect();
            let mut kept = 0;
            for i in 0..rows.len() {
                if fates[i].0 == Decision::Pass {
                    rows.swap(kept, i);
                    fates.swap(kept, i);
                    kept += 1;
                }
            }
            let mut taken: Vec<_> = fates
                .split_off(kept)
                .into_iter()
                .zip(rows.split_off(kept))
                .collect();
            taken.sort_unstable_by_key(|((_, arrival), _)| *arrival);
            for ((fate, _), row) in taken {
                match (fate, row.dedup_hash) {
                    (Decision::Hold, Some(hash)) => {
                        let at = at(&row);
                        match self.claims.hold(hash, at, row) {
                            None => held += 1,
                            Some(row) => rows.push(row),
                        }
                    }
                    (Decision::Duplicate, _) => dups.push(row),
                    (_, _) => rows.push(row),
                }
            }
        }
        if !dups.is_empty() {
            _span.record("duplicates", dups.len() as i64);
        }
        if held > 0 {
            _span.record("held", held as i64);
        }
        self.deduplicated(dups);
        self.pass(rows);
    }
}

impl Handler<WarmupKeys> for DedupActor {
    type Result = ();

    fn handle(&mut self, msg: WarmupKeys, _: &mut Self::Context) {
        for (key, at) in msg.keys {
            self.claims.remember(key, at);
        }
    }
}

impl Handler<Settled> for DedupActor {
    type Result = ();

    /// Released copies of revoked partitions are passed on all the same: the writer abandons them,
    /// which hands the claim to the next copy.
    fn handle(&mut self, msg: Settled, _: &mut Self::Context) {
        let mut out = Released::default();
        for (key, at) in msg.keys {
            self.claims.settle(key, at, msg.how, &mut out);
        }
        self.deduplicated(out.duplicates);
        self.pass(out.pass);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::messages::{Origin, RawRecord, SettledAs, Tp};
    use crate::stage::transform::TableRef;
    use crate::testing::{Acks, Seen};

    /// Collects the rows passed on, as (partition, offset), like the writer.
    type Written = Arc<Mutex<Vec<(i32, i64)>>>;
    struct Writer(Written);
    impl Actor for Writer {
        type Context = Context<Self>;
    }
    impl Handler<Write> for Writer {
        type Result = ();
        fn handle(&mut self, msg: Write, _: &mut Self::Context) {
            let mut seen = self.0.lock().unwrap();
            seen.extend(
                msg.rows
                    .iter()
                    .map(|r| (r.origin.tp.partition, r.source.offset)),
            );
        }
    }

    struct Partition {
        origin: Arc<Origin>,
        acks: Seen,
    }

    fn partition(n: i32) -> Partition {
        let acks = Seen::default();
        let origin = Arc::new(Origin::new(
            Tp::new("t", n),
            Acks(Arc::clone(&acks)).start().recipient(),
            Arc::default(),
            Arc::default(),
        ));
        Partition { origin, acks }
    }

    fn row(p: &Partition, offset: i64, key: u64) -> Row {
        Row {
            origin: Arc::clone(&p.origin),
            source: RawRecord {
                offset,
                ..Default::default()
            },
            table: Arc::new(TableRef {
                dataset: "d".into(),
                table: "t".into(),
            }),
            dedup_hash: Some(key),
            body: crate::stage::proto::RowBody::Json(b"{}".to_vec()),
            trace: tracing::Span::none(),
        }
    }

    fn dedup_with(written: &Written) -> Addr<DedupActor> {
        DedupActor::new(
            Deduplicator::new(1_000, Duration::from_secs(60)),
            Writer(Arc::clone(written)).start().recipient(),
            Arc::new(Stats::default()),
        )
        .start()
    }

    fn at(p: &Partition, offset: i64) -> Position {
        Position::new(&p.origin.tp, offset)
    }

    /// Sends rows to dedup, as one chunk.
    async fn chunk(dedup: &Addr<DedupActor>, rows: Vec<Row>) {
        let span = tracing::Span::none();
        dedup.send(Dedup { rows, span }).await.unwrap();
    }

    /// Tells dedup how the row with `key` at `at` ended, then lets everyone take what followed.
    async fn settled(dedup: &Addr<DedupActor>, key: u64, at: Position, how: SettledAs) {
        let keys = vec![(key, at)];
        dedup.send(Settled { keys, how }).await.unwrap();
        settle_down().await;
    }

    /// Lets the fake writer and partition consumers take what was sent to them.
    async fn settle_down() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[actix::test]
    async fn a_duplicate_is_acknowledged_only_after_its_first_copy_is_written() {
        let written = Written::default();
        let dedup = dedup_with(&written);
        let (p0, p1) = (partition(0), partition(1));
        chunk(&dedup, vec![row(&p0, 5, 42)]).await;
        chunk(&dedup, vec![row(&p1, 9, 42)]).await;
        settle_down().await;
        assert_eq!(
            *written.lock().unwrap(),
            vec![(0, 5)],
            "only the first copy passed on"
        );
        assert!(
            p1.acks.lock().unwrap().is_empty(),
            "the duplicate was acknowledged while its first copy was unwritten: {:?}",
            p1.acks.lock().unwrap()
        );
        settled(&dedup, 42, at(&p0, 5), SettledAs::Written).await;
        assert_eq!(*p1.acks.lock().unwrap(), vec![(vec![9], HandledKind::Done)]);
        assert_eq!(
            *written.lock().unwrap(),
            vec![(0, 5)],
            "the duplicate is not written"
        );
        assert!(
            p0.acks.lock().unwrap().is_empty(),
            "the writer acknowledges the first copy"
        );
    }

    #[actix::test]
    async fn a_duplicate_takes_the_place_of_an_abandoned_first_copy() {
        let written = Written::default();
        let dedup = dedup_with(&written);
        let (p0, p1) = (partition(0), partition(1));
        chunk(&dedup, vec![row(&p0, 5, 42)]).await;
        chunk(&dedup, vec![row(&p1, 9, 42), row(&p1, 10, 42)]).await;
        settled(&dedup, 42, at(&p0, 5), SettledAs::Abandoned).await;
        assert_eq!(
            *written.lock().unwrap(),
            vec![(0, 5), (1, 9)],
            "the first held copy is passed on, the second stays held behind it"
        );
        assert!(
            p1.acks.lock().unwrap().is_empty(),
            "nothing acknowledged while no copy is written: {:?}",
            p1.acks.lock().unwrap()
        );
        settled(&dedup, 42, at(&p1, 9), SettledAs::Written).await;
        assert_eq!(
            *p1.acks.lock().unwrap(),
            vec![(vec![10], HandledKind::Done)]
        );
        assert!(
            p0.acks.lock().unwrap().is_empty(),
            "the abandoned copy is not acknowledged"
        );
    }

    #[actix::test]
    async fn in_a_mixed_chunk_passing_rows_keep_their_order_and_held_copies_their_arrival() {
        let written = Written::default();
        let dedup = dedup_with(&written);
        let (p0, p1) = (partition(0), partition(1));
        // Key 7 is written (settled); key 42 has a pending claim from partition 0.
        chunk(&dedup, vec![row(&p0, 1, 7), row(&p0, 5, 42)]).await;
        settled(&dedup, 7, at(&p0, 1), SettledAs::Written).await;
        let chunk_rows = vec![
            row(&p1, 1, 42),
            row(&p1, 2, 42),
            row(&p1, 3, 1),
            row(&p1, 4, 2),
            row(&p1, 5, 7),
            row(&p1, 6, 3),
        ];
        chunk(&dedup, chunk_rows).await;
        settle_down().await;
        assert_eq!(
            written.lock().unwrap()[2..],
            [(1, 3), (1, 4), (1, 6)],
            "the passing rows, in order"
        );
        assert_eq!(*p1.acks.lock().unwrap(), vec![(vec![5], HandledKind::Done)]);
        // The claim's copy is lost: the held copies come back in arrival order (1 before 2).
        settled(&dedup, 42, at(&p0, 5), SettledAs::Abandoned).await;
        assert_eq!(written.lock().unwrap()[5..], [(1, 1)]);
        settled(&dedup, 42, at(&p1, 1), SettledAs::Written).await;
        assert_eq!(
            *p1.acks.lock().unwrap(),
            vec![(vec![5], HandledKind::Done), (vec![2], HandledKind::Done)]
        );
    }
}
