//! The one-pass reading of an insertAll body (when tables are not managed): only the rows' ids and
//! timestamps are picked out, without building a `Value` per row.

use super::*;

/// What the sink reads of a row: its `json` object's `_kafka_timestamp` and the member the id
/// pointer starts with (as raw JSON text); `None` for a row without `json`.
type RowFacts<'a> = Option<[Option<&'a RawValue>; 2]>;

/// Reads a request body in one pass, keeping two members of each row's `json` object.
#[derive(Clone, Copy)]
struct BodySeed<'k> {
    keys: [&'k str; 2],
}

impl<'de> DeserializeSeed<'de> for BodySeed<'_> {
    type Value = Vec<RowFacts<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for BodySeed<'_> {
    type Value = Vec<RowFacts<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an insertAll request")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut rows = None;
        while let Some(Key(key)) = map.next_key()? {
            if key == "rows" {
                rows = Some(map.next_value_seed(RowsSeed(self))?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        rows.ok_or_else(|| A::Error::missing_field("rows"))
    }
}

struct RowsSeed<'k>(BodySeed<'k>);

impl<'de> DeserializeSeed<'de> for RowsSeed<'_> {
    type Value = Vec<RowFacts<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowsSeed<'_> {
    type Value = Vec<RowFacts<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of rows")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut rows = Vec::with_capacity(seq.size_hint().unwrap_or(512));
        while let Some(facts) = seq.next_element_seed(RowSeed(self.0))? {
            rows.push(facts);
        }
        Ok(rows)
    }
}

struct RowSeed<'k>(BodySeed<'k>);

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = RowFacts<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = RowFacts<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a row object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut facts = None;
        while let Some(Key(key)) = map.next_key()? {
            if key == "json" {
                facts = Some(map.next_value_seed(Pick(self.0.keys))?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(facts)
    }
}

/// `SinkOptions::id_pointer`, split for reading: the first member's name and the rest.
pub(super) struct IdPointer<'a> {
    pointer: Option<&'a str>,
    first: String,
    rest: &'a str,
}

impl<'a> IdPointer<'a> {
    fn new(pointer: Option<&'a str>) -> Self {
        let (first, rest) = match pointer.and_then(|p| p.strip_prefix('/')) {
            Some(p) => {
                let (first, rest) = p.split_at(p.find('/').unwrap_or(p.len()));
                (first.replace("~1", "/").replace("~0", "~"), rest)
            }
            None => (String::new(), ""),
        };
        Self {
            pointer,
            first,
            rest,
        }
    }

    /// The id of a row, from the member its first token named (read with the row).
    fn id<'r>(
        &self,
        first: Option<&'r RawValue>,
    ) -> Result<Option<&'r RawValue>, serde_json::Error> {
        match (self.pointer, first) {
            (None, _) | (_, None) => Ok(None),
            // Pointers that do not start with `/` (other than the whole row) point at nothing.
            (Some(p), _) if !p.starts_with('/') => Ok(None),
            (Some(_), Some(v)) if self.rest.is_empty() => Ok(Some(v)),
            (Some(_), Some(v)) => lookup(v.get(), self.rest),
        }
    }
}

/// The common case (no hook, no table management, no kept rows, no insertId dedup): the body is read
/// in one pass for what is counted (rows, ids, latencies), without building values.
pub(super) fn store_fast(shared: &Shared, table: &str, body: &[u8]) -> Response {
    let (at, now) = (Instant::now(), SystemTime::now());
    let pointer = IdPointer::new(shared.options.id_pointer.as_deref());
    let seed = BodySeed {
        keys: ["_kafka_timestamp", &pointer.first],
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let rows = match seed
        .deserialize(&mut de)
        .and_then(|rows| de.end().map(|()| rows))
    {
        Ok(rows) => rows,
        Err(e) => return error_body(400, "invalid", &format!("invalid request body: {e}")),
    };
    let mut ids = Vec::with_capacity(rows.len());
    let mut latencies = Vec::with_capacity(rows.len());
    let mut seconds = Seconds::default();
    for [timestamp, first] in rows.iter().flatten() {
        let text = timestamp.and_then(|t| serde_json::from_str::<&str>(t.get()).ok());
        if let Some(ms) = text.and_then(|t| seconds.latency_ms(t, now)) {
            latencies.push(ms);
        }
        match pointer.id(*first) {
            Ok(Some(id)) => ids.push(xxh3_64(id.get().as_bytes())),
            Ok(None) => {}
            Err(e) => return error_body(400, "invalid", &format!("invalid row: {e}")),
        }
    }
    let mut inner = shared.lock();
    let inner = &mut *inner;
    inner.requests += 1;
    inner.ids.extend(ids);
    super::facts::record_latencies(
        &mut inner.latency,
        latencies.into_iter(),
        !rows.is_empty(),
        at,
    );
    inner.tables.entry(table.to_owned()).or_default().count += rows.len() as u64;
    Json(json!({"kind": "bigquery#tableDataInsertAllResponse"})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_read_in_one_pass() {
        let body = br#"{"skipInvalidRows":false,"rows":[
            {"insertId":"a","json":{"event_id":"e1","_kafka_timestamp":"2026-01-01T00:00:00.000Z","x":[1]}},
            {"json":{"n":{"id":7}}},
            {"insertId":"c"}]}"#;
        for (pointer, ids) in [
            ("/event_id", vec![Some(r#""e1""#), None]),
            ("/n/id", vec![None, Some("7")]),
            ("event_id", vec![None, None]),
        ] {
            let p = IdPointer::new(Some(pointer));
            let seed = BodySeed {
                keys: ["_kafka_timestamp", &p.first],
            };
            let rows = seed
                .deserialize(&mut serde_json::Deserializer::from_slice(body))
                .unwrap();
            assert_eq!(rows.len(), 3);
            assert!(rows[2].is_none(), "a row without json");
            let got: Vec<_> = rows
                .iter()
                .flatten()
                .map(|[_, first]| p.id(*first).unwrap().map(|v| v.get().to_owned()))
                .collect();
            let want: Vec<_> = ids.into_iter().map(|v| v.map(str::to_owned)).collect();
            assert_eq!(got, want, "{pointer}");
            assert!(rows[0].unwrap()[0].is_some() && rows[1].unwrap()[0].is_none());
        }
        let bad = BodySeed { keys: ["a", "b"] }
            .deserialize(&mut serde_json::Deserializer::from_slice(br#"{"rowz":[]}"#));
        assert!(bad.is_err(), "no rows array");
    }
}
