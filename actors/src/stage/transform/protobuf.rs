//! The row as the Storage Write API's protobuf message, written from the record's members (the
//! spans the converter found) with the table's format as the client last read it. A row that does
//! not fit its format is left to the JSON path: the writer reports it, or table management adds
//! its new fields, exactly as without this step.

use std::collections::HashMap;
use std::sync::Arc;

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
}

impl KnownFormats {
    pub(super) fn new(formats: RowFormats) -> Self {
        Self {
            formats,
            generation: u64::MAX,
            by_table: HashMap::new(),
        }
    }

    /// The table's format, if the client knows it.
    pub(super) fn get(&mut self, table: &Arc<TableRef>) -> Option<Arc<RowFormat>> {
        let generation = self.formats.generation();
        if self.generation != generation {
            self.generation = generation;
            self.by_table.clear();
        }
        let formats = &self.formats;
        let (_, format) = self
            .by_table
            .entry(Arc::as_ptr(table) as usize)
            .or_insert_with(|| (Arc::clone(table), formats.get(table)));
        format.clone()
    }
}

impl Transformer {
    /// Writes the row's protobuf message for `format`: the members under their names in the row,
    /// then the metadata columns, as [`Transformer::write_entry`] writes them in JSON.
    pub(super) fn write_proto(
        &mut self,
        format: &RowFormat,
        tp: &Tp,
        source: Source<'_>,
        text: &[u8],
        members: &[Member],
    ) -> Result<Vec<u8>, FieldError> {
        let bad = |message: String| FieldError {
            path: String::new(),
            message,
        };
        let text = std::str::from_utf8(text).map_err(|e| bad(format!("not UTF-8: {e}")))?;
        let span = |s: crate::stage::json::Span| {
            text.get(s.start as usize..s.end as usize)
                .ok_or_else(|| bad("a member outside the record".into()))
        };
        let mut out = Vec::with_capacity(text.len() + 64);
        let mut row = format.writer_of(text.as_bytes());
        for (m, name) in members.iter().zip(&self.names) {
            let value = span(m.value)?;
            match *name {
                Name::Gone => {}
                Name::Own if !m.escaped => row.member(span(m.key)?, value, &mut out)?,
                Name::Own => row.member(&m.name(text.as_bytes()), value, &mut out)?,
                Name::Renamed(r) => row.member(&self.renames[r].1, value, &mut out)?,
            }
        }
        let meta = &self.cfg.metadata;
        if meta.topic {
            row.string(META_TOPIC, &tp.topic, &mut out)?;
        }
        if meta.partition {
            row.integer(META_PARTITION, i64::from(tp.partition), &mut out)?;
        }
        if meta.offset {
            row.integer(META_OFFSET, source.offset, &mut out)?;
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
                    row.timestamp_ms(META_TIMESTAMP, ms, text, &mut out)?
                }
                None => row.member(META_TIMESTAMP, "null", &mut out)?,
            }
        }
        if meta.key {
            match source.key {
                Some(k) => row.string(META_KEY, &String::from_utf8_lossy(k), &mut out)?,
                None => row.member(META_KEY, "null", &mut out)?,
            }
        }
        row.finish()?;
        Ok(out)
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
        if let Some(format) = self.formats.as_mut().and_then(|f| f.get(&table)) {
            if let Ok(bytes) = self.write_proto(&format, tp, source, text, members) {
                if bytes.len() > self.max_row_bytes {
                    return Err(TransformError::Oversize {
                        size: bytes.len(),
                        limit: self.max_row_bytes,
                    });
                }
                return Ok(Transformed {
                    table,
                    dedup_hash,
                    body: RowBody::Proto(ProtoRow {
                        format,
                        bytes: bytes.into(),
                    }),
                });
            }
        }
        self.write_entry(tp, source, text, members, table, dedup_hash, key)
    }
}
