//! Avro binary, read with its compiled schema ([`Plan`]), written as the JSON text BigQuery takes
//! for the column each value maps to (the table in [`super`]): straight from the bytes into the
//! row's text, no value tree in between.
//!
//! Why not apache-avro's reader: it can only build its `Value` tree (strings copied, a field name
//! cloned per field, a `Vec` per record), and building and dropping that tree was 60 % of the
//! decoding cost (callgrind, `benches/stages.rs` convert/avro_object: 11,129 instructions per
//! member event with it). apache-avro still parses the schemas; the tests encode with it, so this
//! reader is checked against it. The binary encoding read here is the Avro specification's
//! (<https://avro.apache.org/docs/1.12.0/specification/#binary-encoding>): zigzag varints,
//! length-prefixed bytes and strings, arrays and maps in blocks (a negative count is followed by the
//! block's size in bytes), the union's branch index before its value, fixed as its bytes.

use base64::Engine;

use super::super::text::{self, Misfit};
use super::super::wire::{self, VarintError};
use super::plan::{Branch, Field, Node, Plan};
use super::MAX_ALLOCATION_BYTES;
use crate::stage::json::{Member, Span};

/// Writes the value `bytes` hold (of the plan's root schema) as JSON into `out`; for a record,
/// also returns its members as spans of `out` (what `parse_object` would find, without reading the
/// text again). Bytes left over after the value are an error.
pub(super) fn write(plan: &Plan, bytes: &[u8], out: &mut Vec<u8>) -> Result<Vec<Member>, Misfit> {
    let mut w = Writer {
        plan,
        input: bytes,
        out,
        depth: 0,
    };
    let members = match &plan.nodes[0] {
        Node::Record(fields) => {
            let mut members = Vec::with_capacity(fields.len());
            w.record(fields, Some(&mut members))?;
            members
        }
        _ => {
            w.value(0)?;
            Vec::new()
        }
    };
    if !w.input.is_empty() {
        return Err(Misfit::new(format!(
            "{} bytes left after the value",
            w.input.len()
        )));
    }
    Ok(members)
}

fn ends_early() -> Misfit {
    Misfit::new("the value ends early")
}

/// Records nested deeper than this fail (a recursive type could otherwise exhaust the stack: each
/// level of a nullable recursive field costs one byte of input).
const MAX_DEPTH: usize = 100;

struct Writer<'a> {
    plan: &'a Plan,
    /// What is left to read.
    input: &'a [u8],
    out: &'a mut Vec<u8>,
    /// Records open.
    depth: usize,
}

/// Reading the binary encoding.
impl<'a> Writer<'a> {
    /// A zigzag varint (int and long alike; at most 10 bytes).
    fn long(&mut self) -> Result<i64, Misfit> {
        match wire::varint(&mut self.input, 10) {
            Ok(raw) => Ok(wire::unzigzag(raw)),
            Err(VarintError::Ends) => Err(ends_early()),
            Err(VarintError::TooLong) => Err(Misfit::new(
                "a variable-length integer longer than 10 bytes",
            )),
        }
    }

    fn int(&mut self) -> Result<i32, Misfit> {
        let n = self.long()?;
        i32::try_from(n).map_err(|_| Misfit::new(format!("int {n} out of range")))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Misfit> {
        if n > self.input.len() {
            return Err(ends_early());
        }
        let (taken, rest) = self.input.split_at(n);
        self.input = rest;
        Ok(taken)
    }

    /// A length (of bytes, a string, a block), bounded by [`MAX_ALLOCATION_BYTES`]: a value of a
    /// few bytes can claim any length.
    fn length(&mut self, n: i64) -> Result<usize, Misfit> {
        match usize::try_from(n) {
            Ok(n) if n <= MAX_ALLOCATION_BYTES => Ok(n),
            _ => Err(Misfit::new(format!(
                "length {n} is not between 0 and {MAX_ALLOCATION_BYTES}"
            ))),
        }
    }

    fn bytes(&mut self) -> Result<&'a [u8], Misfit> {
        let n = self.long()?;
        let n = self.length(n)?;
        self.take(n)
    }

    fn str(&mut self) -> Result<&'a str, Misfit> {
        std::str::from_utf8(self.bytes()?).map_err(|e| Misfit::new(format!("a string: {e}")))
    }

    /// The item count of the next block of an array or map; 0 at the end.
    fn block(&mut self) -> Result<usize, Misfit> {
        let n = self.long()?;
        if n < 0 {
            self.long()?; // the block's size in bytes
        }
        self.length(n.checked_neg().filter(|_| n < 0).unwrap_or(n))
    }
}

/// Writing JSON.
impl Writer<'_> {
    fn value(&mut self, node: usize) -> Result<(), Misfit> {
        let plan = self.plan;
        match &plan.nodes[node] {
            Node::Null => self.out.extend_from_slice(b"null"),
            Node::Boolean => match self.take(1)?[0] {
                0 => self.out.extend_from_slice(b"false"),
                1 => self.out.extend_from_slice(b"true"),
                b => return Err(Misfit::new(format!("a boolean byte {b}"))),
            },
            Node::Long => {
                let n = self.long()?;
                self.out
                    .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            }
            Node::Float => {
                let b = self.take(4)?;
                let f = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                text::float(self.out, f64::from(f));
            }
            Node::Double => {
                let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| ends_early())?;
                text::float(self.out, f64::from_le_bytes(b));
            }
            Node::Bytes => {
                let b = self.bytes()?;
                self.base64(b);
            }
            Node::Fixed(size) => {
                let b = self.take(*size)?;
                self.base64(b);
            }
            Node::String => {
                let s = self.str()?;
                text::string(self.out, s);
            }
            Node::Enum(symbols) => {
                let i = self.int()?;
                let symbol = usize::try_from(i).ok().and_then(|i| symbols.get(i));
                let symbol = symbol
                    .ok_or_else(|| Misfit::new(format!("enum symbol {i} of {}", symbols.len())))?;
                self.out.extend_from_slice(symbol);
            }
            Node::Record(fields) => self.record(fields, None)?,
            Node::Array(item) => {
                self.out.push(b'[');
                let mut n = 0;
                loop {
                    let count = self.block()?;
                    if count == 0 {
                        break;
                    }
                    for _ in 0..count {
                        if n > 0 {
                            self.out.push(b',');
                        }
                        self.value(*item).map_err(|e| e.within(n))?;
                        n += 1;
                        self.bounded()?;
                    }
                }
                self.out.push(b']');
            }
            Node::Map(values) => self.map(*values)?,
            Node::Union(branches) => self.union(branches)?,
            Node::Date => {
                let days = self.int()?;
                let date = text::date(days)
                    .ok_or_else(|| Misfit::new(format!("date {days} out of range")))?;
                text::quoted_date(self.out, date);
            }
            Node::Time { millis } => {
                let n = if *millis {
                    i64::from(self.int()?) * 1_000
                } else {
                    self.long()?
                };
                text::time(self.out, n).map_err(Misfit::new)?;
            }
            Node::Timestamp { unit, utc } => {
                let n = self.long()?;
                text::timestamp(self.out, unit.micros(n), *utc).map_err(Misfit::new)?;
            }
            Node::Decimal { scale, fixed } => {
                let unscaled = match fixed {
                    Some(size) => self.take(*size)?,
                    None => self.bytes()?,
                };
                text::string(self.out, &text::decimal_text(unscaled, *scale));
            }
            Node::BigDecimal => {
                // bytes holding the unscaled value's bytes (length-prefixed), then the scale.
                let mut inner = Writer {
                    plan,
                    input: self.bytes()?,
                    out: &mut Vec::new(),
                    depth: 0,
                };
                let unscaled = inner.bytes()?;
                let scale = inner.long()?;
                let digits = text::decimal_text(unscaled, usize::try_from(scale).unwrap_or(0));
                let zeros = if scale < 0 && digits != "0" {
                    "0".repeat(inner.length(-scale)?)
                } else {
                    String::new()
                };
                text::string(self.out, &format!("{digits}{zeros}"));
            }
            Node::Uuid => {
                // As apache-avro reads it: length-prefixed, 16 raw bytes or the text.
                let b = self.bytes()?;
                let uuid = match b.len() {
                    16 => uuid::Uuid::from_slice(b).ok(),
                    _ => std::str::from_utf8(b)
                        .ok()
                        .and_then(|s| uuid::Uuid::parse_str(s).ok()),
                };
                let uuid = uuid.ok_or_else(|| Misfit::new("a uuid that is none"))?;
                text::string(self.out, uuid.hyphenated().encode_lower(&mut [0; 36]));
            }
            Node::Duration => {
                let b = self.take(12)?;
                let n = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
                let (months, days, ms) = (n(0), n(4), n(8));
                let json = format!("{{\"months\":{months},\"days\":{days},\"milliseconds\":{ms}}}");
                self.out.extend_from_slice(json.as_bytes());
            }
        }
        Ok(())
    }

    fn base64(&mut self, b: &[u8]) {
        self.out.push(b'"');
        let at = self.out.len();
        self.out.resize(at + b.len().div_ceil(3) * 4, 0);
        let engine = base64::engine::general_purpose::STANDARD;
        let written = engine.encode_slice(b, &mut self.out[at..]).unwrap_or(0);
        self.out.truncate(at + written);
        self.out.push(b'"');
    }

    /// The text grows with the input only, except through arrays of empty items: bound it too.
    fn bounded(&self) -> Result<(), Misfit> {
        if self.out.len() > 2 * MAX_ALLOCATION_BYTES {
            return Err(Misfit::new("the value's JSON text passes 32 MiB"));
        }
        Ok(())
    }

    /// A record as an object, fields in schema order; with `members`, each member's key and value
    /// as spans of the text (Avro names are `[A-Za-z_][A-Za-z0-9_]*`: nothing to escape).
    fn record(
        &mut self,
        fields: &[Field],
        mut members: Option<&mut Vec<Member>>,
    ) -> Result<(), Misfit> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Misfit::new(format!(
                "records nested more than {MAX_DEPTH} deep"
            )));
        }
        self.out.push(b'{');
        for (n, field) in fields.iter().enumerate() {
            if n > 0 {
                self.out.push(b',');
            }
            self.out.push(b'"');
            let key = Span::new(self.out.len(), self.out.len() + field.name.len());
            self.out.extend_from_slice(field.name.as_bytes());
            self.out.extend_from_slice(b"\":");
            let start = self.out.len();
            self.value(field.node).map_err(|e| e.within(&field.name))?;
            if let Some(members) = members.as_deref_mut() {
                members.push(Member {
                    key,
                    escaped: false,
                    value: Span::new(start, self.out.len()),
                });
            }
        }
        self.out.push(b'}');
        self.depth -= 1;
        Ok(())
    }

    /// A map as BigQuery's REPEATED RECORD (`key`, `value`), entries sorted by key.
    fn map(&mut self, values: usize) -> Result<(), Misfit> {
        let start = self.out.len();
        let mut entries: Vec<(&str, usize, usize)> = Vec::new();
        loop {
            let count = self.block()?;
            if count == 0 {
                break;
            }
            for _ in 0..count {
                let key = self.str()?;
                let at = self.out.len();
                self.out.extend_from_slice(b"{\"key\":");
                text::string(self.out, key);
                self.out.extend_from_slice(b",\"value\":");
                self.value(values).map_err(|e| e.within(key))?;
                self.out.push(b'}');
                entries.push((key, at, self.out.len()));
                self.bounded()?;
            }
        }
        text::key_value_array(self.out, start, entries);
        Ok(())
    }

    fn union(&mut self, branches: &[Branch]) -> Result<(), Misfit> {
        let i = self.long()?;
        let branch = usize::try_from(i).ok().and_then(|i| branches.get(i));
        let branch =
            branch.ok_or_else(|| Misfit::new(format!("union branch {i} of {}", branches.len())))?;
        match &branch.label {
            None => self.value(branch.node),
            Some((name, label)) => {
                self.out.extend_from_slice(label);
                self.value(branch.node).map_err(|e| e.within(name))?;
                self.out.push(b'}');
                Ok(())
            }
        }
    }
}
