//! The sink's BUFFERED write streams, as Google documents them: `CreateWriteStream` names a stream
//! of a table; `AppendRows` with an offset takes rows only at exactly the stream's end
//! (`ALREADY_EXISTS` below, `OUT_OF_RANGE` above); rows are invisible until `FlushRows(F)` makes
//! rows `0..=F` visible (inclusive, cumulative; flushing again is harmless); after
//! `FinalizeWriteStream` a stream takes no appends and no flushes (`INVALID_ARGUMENT`).

use serde_json::Value;
use tonic::{Code, Status};

use super::facts::{store_facts, Facts};
use super::{store, Shared};

/// A stream's rows: whole (`{"json": …}`, when the sink keeps rows) or only what is counted.
pub(super) enum StreamRows {
    Whole(Vec<Value>),
    Facts(Vec<Facts>),
}

impl StreamRows {
    /// No rows, of the kind the sink keeps: whole when it keeps rows or honours insertIds.
    pub(super) fn empty(options: &super::SinkOptions) -> Self {
        if options.keep_rows || options.honor_insert_id {
            Self::Whole(Vec::new())
        } else {
            Self::Facts(Vec::new())
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Self::Whole(rows) => rows.len(),
            Self::Facts(rows) => rows.len(),
        }
    }

    /// Appends `more` (of the same kind: the sink's options decide it).
    fn extend(&mut self, more: StreamRows) {
        match (self, more) {
            (Self::Whole(rows), Self::Whole(more)) => rows.extend(more),
            (Self::Facts(rows), Self::Facts(more)) => rows.extend(more),
            (this, more) if this.len() == 0 => *this = more,
            (this, more) => {
                tracing::error!(
                    "sink: rows of another kind appended to a stream; counting them only"
                );
                let facts = |r: StreamRows| match r {
                    Self::Whole(rows) => rows.iter().map(|r| Facts::of_row(r, None)).collect(),
                    Self::Facts(rows) => rows,
                };
                let mut all: Vec<Facts> = facts(std::mem::replace(this, Self::Facts(Vec::new())));
                all.extend(facts(more));
                *this = Self::Facts(all);
            }
        }
    }

    /// A copy of rows `from..to`.
    fn slice(&self, from: usize, to: usize) -> Self {
        match self {
            Self::Whole(rows) => Self::Whole(rows[from..to].to_vec()),
            Self::Facts(rows) => Self::Facts(rows[from..to].to_vec()),
        }
    }

    /// Stores the rows in `table` (made visible).
    pub(super) fn store(self, shared: &Shared, table: &str) {
        match self {
            Self::Whole(rows) => store(shared, table, rows),
            Self::Facts(rows) => store_facts(shared, table, &rows),
        }
    }
}

/// One created stream.
pub(super) struct BufferedStream {
    pub(super) table: String,
    pub(super) seq: u64,
    /// Appended rows, visible up to `flushed`.
    pub(super) rows: StreamRows,
    pub(super) flushed: usize,
    pub(super) finalized: bool,
}

/// `projects/p/datasets/d/tables/t` → `d.t`.
pub(super) fn table_of(parent: &str) -> Option<String> {
    let parts: Vec<&str> = parent.split('/').collect();
    match parts.as_slice() {
        ["projects", _, "datasets", d, "tables", t] => Some(format!("{d}.{t}")),
        _ => None,
    }
}

/// Creates a BUFFERED stream of `parent`'s table; its full name.
pub(super) fn create(shared: &Shared, parent: &str) -> Result<String, Status> {
    let table =
        table_of(parent).ok_or_else(|| Status::invalid_argument(format!("bad parent {parent}")))?;
    let mut inner = shared.lock();
    if inner.managed && !inner.definitions.contains_key(&table) {
        return Err(Status::not_found(format!("Not found: Table sink:{table}")));
    }
    inner.streams_created += 1;
    let seq = inner.streams_created;
    let name = format!("{parent}/streams/{seq:016x}");
    inner.streams.insert(
        name.clone(),
        BufferedStream {
            table,
            seq,
            rows: StreamRows::empty(&shared.options),
            flushed: 0,
            finalized: false,
        },
    );
    Ok(name)
}

/// The stream named `name`, or BigQuery's `NOT_FOUND`.
fn open_stream<'a>(
    streams: &'a mut std::collections::HashMap<String, BufferedStream>,
    name: &str,
) -> Result<&'a mut BufferedStream, Status> {
    streams
        .get_mut(name)
        .ok_or_else(|| Status::not_found(format!("Stream not found: {name}")))
}

/// Google's words for an append or flush to a finalized stream.
fn finalized(name: &str) -> String {
    format!("Stream has been finalized and cannot be appended: {name}")
}

/// Appends `rows` at `offset`: `Ok` when taken, or the in-band code and message.
pub(super) fn append(
    shared: &Shared,
    name: &str,
    offset: Option<i64>,
    rows: StreamRows,
) -> Result<Result<(), (Code, String)>, Status> {
    let mut inner = shared.lock();
    let s = open_stream(&mut inner.streams, name)?;
    if s.finalized {
        return Ok(Err((Code::InvalidArgument, finalized(name))));
    }
    let end = s.rows.len() as i64;
    match offset {
        Some(o) if o < end => Ok(Err((
            Code::AlreadyExists,
            format!("The offset is within stream, expected offset {end}, received {o}"),
        ))),
        Some(o) if o > end => Ok(Err((
            Code::OutOfRange,
            format!("The offset is beyond stream, expected offset {end}, received {o}"),
        ))),
        _ => {
            s.rows.extend(rows);
            Ok(Ok(()))
        }
    }
}

/// `FlushRows(name, offset)`: rows up to `offset` (inclusive) become visible.
pub(super) fn flush(shared: &Shared, name: &str, offset: i64) -> Result<i64, Status> {
    let (table, rows) = {
        let mut inner = shared.lock();
        let s = open_stream(&mut inner.streams, name)?;
        if s.finalized {
            return Err(Status::invalid_argument(finalized(name)));
        }
        let end = usize::try_from(offset + 1).unwrap_or(0);
        if offset < 0 || end > s.rows.len() {
            return Err(Status::out_of_range(format!(
                "Offset {offset} is beyond the end of the stream ({} rows)",
                s.rows.len()
            )));
        }
        if end <= s.flushed {
            return Ok(offset);
        }
        let rows = s.rows.slice(s.flushed, end);
        s.flushed = end;
        (s.table.clone(), rows)
    };
    rows.store(shared, &table);
    Ok(offset)
}

/// `FinalizeWriteStream`: the row count.
pub(super) fn finalize(shared: &Shared, name: &str) -> Result<i64, Status> {
    let mut inner = shared.lock();
    let s = open_stream(&mut inner.streams, name)?;
    s.finalized = true;
    Ok(s.rows.len() as i64)
}
