//! The row as the Storage Write API's protobuf message, written from the record's members (the
//! spans the converter found) with the table's format as the client last read it. A row that does
//! not fit its format is left to the JSON path: the writer reports it, or table management adds
//! its new fields, exactly as without this step.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::encode::write_timestamp;
use std::borrow::Cow;

use super::{Member, Name, Source, TableRef, Tp, TransformError, Transformed, Transformer};
use super::{META_KEY, META_OFFSET, META_PARTITION, META_TIMESTAMP, META_TOPIC};
use crate::stage::proto::{FieldError, ProtoRow, RowBody, RowFormat, RowFormats};

/// The client's formats as this transformer last read them, by table.
pub(super) struct KnownFormats {
    formats: RowFormats,
    /// The [`RowFormats::generation`] `by_table` was read at.
    generation: u64,
    /// By the table's `Arc` address (the `Arc` is kept, so the address is not reused).
    by_table: HashMap<usize, (Arc<TableRef>, Option<Arc<RowFormat>>)>,
    /// The table asked for last (an address `by_table` holds) and its format.
    last: Option<(usize, Option<Arc<RowFormat>>)>,
    /// Where rows are written, reused: each row then gets an allocation of its own size. (Written
    /// straight into a guess of the text's size, a row kept about 130 bytes unused while in flight:
    /// peak RSS of `bqsink bench` 142.6–148.3 MiB against 132.5–135.9 in alternating pairs.)
    out: Vec<u8>,
}

impl KnownFormats {
    pub(super) fn new(formats: RowFormats) -> Self {
        Self {
            formats,
            generation: u64::MAX,
            by_table: HashMap::new(),
            last: None,
            out: Vec::new(),
        }
    }

    /// The table's format, if the client knows it.
    pub(super) fn get(&mut self, table: &Arc<TableRef>) -> Option<Arc<RowFormat>> {
        let generation = self.formats.generation();
        if self.generation != generation {
            self.generation = generation;
            self.by_table.clear();
            self.last = None;
        }
        let address = Arc::as_ptr(table) as usize;
        // Records come in chunks of one partition, mostly of one table: no lookup for those.
        if let Some((last, format)) = &self.last {
            if *last == address {
                return format.clone();
            }
        }
        let formats = &self.formats;
        let (_, format) = self
            .by_table
            .entry(address)
            .or_insert_with(|| (Arc::clone(table), formats.get(table)));
        self.last = Some((address, format.clone()));
        format.clone()
    }
}

impl Transformer {
    /// Writes the row's protobuf message for `format` to `out` (cleared first): the members under
    /// their names in the row, then the metadata columns, as [`Transformer::write_entry`] writes
    /// them in JSON.
    pub(super) fn write_proto(
        &mut self,
        format: &RowFormat,
        tp: &Tp,
        source: Source<'_>,
        text: &[u8],
        members: &[Member],
        out: &mut Vec<u8>,
    ) -> Result<(), FieldError> {
        let bad = |message: String| FieldError {
            path: String::new(),
            message,
        };
        let text = std::str::from_utf8(text).map_err(|e| bad(format!("not UTF-8: {e}")))?;
        let span = |s: crate::stage::json::Span| {
            text.get(s.start as usize..s.end as usize)
                .ok_or_else(|| bad("a member outside the record".into()))
        };
        out.clear();
        let mut row = format
            .writer_of(text.as_bytes())
            .with_inner(text, source.inner);
        for (m, name) in members.iter().zip(&self.names) {
            let value = span(m.value)?;
            match *name {
                Name::Gone => {}
                Name::Own if !m.escaped => row.member(span(m.key)?, value, out)?,
                Name::Own => row.member(&m.name(text.as_bytes()), value, out)?,
                Name::Renamed(r) => row.member(&self.renames[r].1, value, out)?,
            }
        }
        let meta = &self.cfg.metadata;
        if meta.topic {
            row.string(META_TOPIC, &tp.topic, out)?;
        }
        if meta.partition {
            row.integer(META_PARTITION, i64::from(tp.partition), out)?;
        }
        if meta.offset {
            row.integer(META_OFFSET, source.offset, out)?;
        }
        if meta.timestamp {
            match source.timestamp_ms.filter(|ms| *ms >= 0) {
                Some(ms) => {
                    let second = &mut self.second;
                    let text = || {
                        let mut t = Vec::with_capacity(32);
                        write_timestamp(&mut t, ms as u64, second);
                        t
                    };
                    row.timestamp_ms(META_TIMESTAMP, ms, text, out)?
                }
                None => row.member(META_TIMESTAMP, "null", out)?,
            }
        }
        if meta.key {
            match source.key {
                Some(k) => row.string(META_KEY, &String::from_utf8_lossy(k), out)?,
                None => row.member(META_KEY, "null", out)?,
            }
        }
        row.finish()
    }

    /// Writes the row: its protobuf message when the table's format is known and the row fits it,
    /// else its insertAll entry (a row that does not fit its table is reported by the writer, with
    /// the table management that may add its new fields).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn write_row(
        &mut self,
        tp: &Tp,
        source: Source<'_>,
        text: &[u8],
        members: &[Member],
        table: Arc<TableRef>,
        dedup_hash: Option<u64>,
        key: Option<Cow<'_, str>>,
    ) -> Result<Transformed, TransformError> {
        if let Some((format, mut out)) = self
            .formats
            .as_mut()
            .and_then(|f| Some((f.get(&table)?, std::mem::take(&mut f.out))))
        {
            // The row fits its format: copied out at its size (`Ok`), or too large (`Err(size)`).
            let row = match self.write_proto(&format, tp, source, text, members, &mut out) {
                Ok(()) if out.len() <= self.max_row_bytes => Some(Ok(Bytes::copy_from_slice(&out))),
                Ok(()) => Some(Err(out.len())),
                Err(_) => None,
            };
            if let Some(f) = self.formats.as_mut() {
                f.out = out;
            }
            match row {
                Some(Ok(bytes)) => {
                    return Ok(Transformed {
                        table,
                        dedup_hash,
                        body: RowBody::Proto(ProtoRow { format, bytes }),
                    })
                }
                Some(Err(size)) => {
                    return Err(TransformError::Oversize {
                        size,
                        limit: self.max_row_bytes,
                    })
                }
                None => {}
            }
        }
        self.write_entry(tp, source, text, members, table, dedup_hash, key)
    }
}
