//! Protobuf binary, read with its compiled [`Plan`], written as the JSON text BigQuery takes for
//! the columns its fields map to (the table in [`super`]): straight from the bytes into the row's
//! text, with no message object in between.
//!
//! Why not prost-reflect's `DynamicMessage`: it stores every field in a map of values, and
//! building, walking and dropping it was 90 % of the decoding cost (callgrind, `benches/stages.rs`
//! convert/protobuf_object: 21,350 instructions per member event). prost-reflect still describes
//! the messages (the plan is built from its descriptors), and the tests encode with it, so this
//! reader is checked against it. The encoding read here is protobuf's
//! (<https://protobuf.dev/programming-guides/encoding/>), with its parsing rules: fields in any
//! order, the last value of a singular field wins, a singular message met twice is merged (read as
//! the concatenation of its occurrences), repeated scalars packed or not, unknown fields skipped,
//! the last member set of a oneof wins.
//!
//! Each message is read in two passes: one that notes where each known field's values are, then
//! one that writes the fields in declaration order (the order the columns have).

use base64::Engine;

use super::super::text::{self, Misfit};
use super::super::wire::unzigzag;
use super::plan::{FieldKind, FieldPlan, Logical, MessagePlan, Out, Plan, Shape};
use super::read::{fixed, len, next, utf8, varint, wrong_wire_type, Raw};
use crate::stage::json::{Member, Span};

/// Messages nested deeper than this fail (recursive types could otherwise exhaust the stack).
const MAX_DEPTH: usize = 100;

/// Writes the message of plan `message` that `bytes` hold as a JSON object into `out` and returns
/// its members as spans of `out` (what `parse_object` would find, without reading the text again).
pub(super) fn write(
    plan: &Plan,
    message: usize,
    bytes: &[u8],
    out: &mut Vec<u8>,
) -> Result<Vec<Member>, Misfit> {
    let mut members = Vec::with_capacity(plan.messages[message].fields.len());
    let mut w = Writer {
        plan,
        out,
        depth: 0,
    };
    w.object(message, &[bytes], Some(&mut members))?;
    Ok(members)
}

/// A value of a known field: its slot and place in the message.
#[derive(Debug, Clone, Copy)]
struct Occurrence<'a> {
    slot: u16,
    seq: u32,
    raw: Raw<'a>,
}

/// Where each slot's values are in a message's sorted occurrences.
fn ranges(occurrences: &[Occurrence<'_>], slots: usize) -> Vec<(u32, u32)> {
    let mut ranges = vec![(0, 0); slots];
    let mut start = 0;
    for (i, o) in occurrences.iter().enumerate() {
        let next = occurrences.get(i + 1).map(|n| n.slot);
        if next != Some(o.slot) {
            ranges[o.slot as usize] = (start as u32, i as u32 + 1);
            start = i + 1;
        }
    }
    ranges
}

struct Writer<'p, 'o> {
    plan: &'p Plan,
    out: &'o mut Vec<u8>,
    depth: usize,
}

impl Writer<'_, '_> {
    /// A message as an object, read from the concatenation of `parts` (one, unless a singular
    /// message field was met more than once: protobuf merges those).
    fn object(
        &mut self,
        index: usize,
        parts: &[&[u8]],
        mut members: Option<&mut Vec<Member>>,
    ) -> Result<(), Misfit> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Misfit::new(format!(
                "messages nested more than {MAX_DEPTH} deep"
            )));
        }
        let m = &self.plan.messages[index];
        let mut occurrences = Vec::with_capacity(2 * m.fields.len() + 8);
        for part in parts {
            let mut input = *part;
            while !input.is_empty() {
                let (number, raw) = next(&mut input)?;
                if let Some(slot) = m.slot(number) {
                    let seq = occurrences.len() as u32;
                    occurrences.push(Occurrence { slot, seq, raw });
                }
            }
        }
        // Stable: a slot's values stay in the order read.
        occurrences.sort_by_key(|o| o.slot);
        let ranges = ranges(&occurrences, m.fields.len());
        let of = |slot: u16| {
            let (from, to) = ranges[slot as usize];
            &occurrences[from as usize..to as usize]
        };
        self.out.push(b'{');
        let mut first = true;
        for out in &m.output {
            match *out {
                Out::Field(slot) => {
                    let f = &m.fields[slot as usize];
                    self.member(&mut first, &f.name, &mut members, |w| w.field(f, of(slot)))?;
                }
                Out::Oneof(slot) => {
                    let Some((name, slots)) = &m.fields[slot as usize].oneof else {
                        continue;
                    };
                    // The member read last is the one set.
                    let set = slots
                        .iter()
                        .filter_map(|&s| of(s).last().map(|o| (o.seq, s)))
                        .max();
                    self.member(&mut first, name, &mut members, |w| match set {
                        None => {
                            w.out.extend_from_slice(b"null");
                            Ok(())
                        }
                        Some((_, s)) => {
                            let f = &m.fields[s as usize];
                            w.out.push(b'{');
                            w.member(&mut true, &f.name, &mut None, |w| w.field(f, of(s)))?;
                            w.out.push(b'}');
                            Ok(())
                        }
                    })?;
                }
            }
        }
        self.out.push(b'}');
        self.depth -= 1;
        Ok(())
    }

    /// A member's key (protobuf names are `[A-Za-z_][A-Za-z0-9_]*`: nothing to escape) and its
    /// value; with `members`, recorded as spans.
    fn member(
        &mut self,
        first: &mut bool,
        name: &str,
        members: &mut Option<&mut Vec<Member>>,
        value: impl FnOnce(&mut Self) -> Result<(), Misfit>,
    ) -> Result<(), Misfit> {
        if !std::mem::take(first) {
            self.out.push(b',');
        }
        self.out.push(b'"');
        let key = Span::new(self.out.len(), self.out.len() + name.len());
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
        let start = self.out.len();
        value(self).map_err(|e| e.within(name))?;
        if let Some(members) = members.as_deref_mut() {
            members.push(Member {
                key,
                escaped: false,
                value: Span::new(start, self.out.len()),
            });
        }
        Ok(())
    }

    /// A field's value from its occurrences: unset, the last one, all of them, or a map.
    fn field(&mut self, f: &FieldPlan, values: &[Occurrence<'_>]) -> Result<(), Misfit> {
        match &f.shape {
            Shape::Single => match (&f.kind, values.last()) {
                (_, None) => self.out.extend_from_slice(&f.unset),
                (FieldKind::Message(i), Some(o)) if values.len() == 1 => {
                    self.nested(*i, &[len(o.raw, &f.kind)?])?;
                }
                (FieldKind::Message(i), Some(_)) => {
                    let mut parts = Vec::with_capacity(values.len());
                    for o in values {
                        parts.push(len(o.raw, &f.kind)?);
                    }
                    self.nested(*i, &parts)?;
                }
                (kind, Some(o)) => self.scalar(kind, o.raw)?,
            },
            Shape::Repeated => {
                self.out.push(b'[');
                let mut n = 0;
                for o in values {
                    match o.raw {
                        Raw::Len(mut packed) if f.kind.packable() => {
                            while !packed.is_empty() {
                                let raw = match f.kind {
                                    FieldKind::Double
                                    | FieldKind::Fixed64
                                    | FieldKind::Sfixed64 => {
                                        Raw::Fixed64(u64::from_le_bytes(fixed(&mut packed)?))
                                    }
                                    FieldKind::Float | FieldKind::Fixed32 | FieldKind::Sfixed32 => {
                                        Raw::Fixed32(u32::from_le_bytes(fixed(&mut packed)?))
                                    }
                                    _ => Raw::Varint(varint(&mut packed)?),
                                };
                                self.item(&f.kind, raw, &mut n)?;
                            }
                        }
                        raw => self.item(&f.kind, raw, &mut n)?,
                    }
                }
                self.out.push(b']');
            }
            Shape::Map {
                key,
                value,
                value_unset,
            } => self.map(key, value, value_unset, values)?,
        }
        Ok(())
    }

    /// The `n`-th item of a repeated field.
    fn item(&mut self, kind: &FieldKind, raw: Raw<'_>, n: &mut usize) -> Result<(), Misfit> {
        if *n > 0 {
            self.out.push(b',');
        }
        match kind {
            FieldKind::Message(i) => self.nested(*i, &[len(raw, kind)?]),
            kind => self.scalar(kind, raw),
        }
        .map_err(|e| e.within(*n))?;
        *n += 1;
        if self.out.len() > 32 << 20 {
            return Err(Misfit::new("the value's JSON text passes 32 MiB"));
        }
        Ok(())
    }

    /// A map as BigQuery's REPEATED RECORD (`key`, `value`), entries sorted by key (a key met
    /// twice: the last entry).
    fn map(
        &mut self,
        key_kind: &FieldKind,
        value_kind: &FieldKind,
        value_unset: &[u8],
        entries: &[Occurrence<'_>],
    ) -> Result<(), Misfit> {
        let start = self.out.len();
        let mut written: Vec<(MapKey<'_>, usize, usize)> = Vec::with_capacity(entries.len());
        for (n, o) in entries.iter().enumerate() {
            let mut entry = len(o.raw, &FieldKind::Bytes).map_err(|e| e.within(n))?;
            let (mut key, mut value) = (None, None);
            while !entry.is_empty() {
                match next(&mut entry).map_err(|e| e.within(n))? {
                    (1, raw) => key = Some(raw),
                    (2, raw) => value = Some(raw),
                    _ => {}
                }
            }
            let at = self.out.len();
            self.out.extend_from_slice(b"{\"key\":");
            let key = match key {
                Some(raw) => self.map_key(key_kind, raw).map_err(|e| e.within(n))?,
                // A key not set is its type's default.
                None => match key_kind {
                    FieldKind::String => self.map_key(key_kind, Raw::Len(b""))?,
                    FieldKind::Bool => self.map_key(key_kind, Raw::Varint(0))?,
                    _ => {
                        self.out.push(b'0');
                        MapKey::Int(0)
                    }
                },
            };
            self.out.extend_from_slice(b",\"value\":");
            match (value, value_kind) {
                (Some(raw), FieldKind::Message(i)) => self.nested(*i, &[len(raw, value_kind)?]),
                (Some(raw), kind) => self.scalar(kind, raw),
                // A message value not set reads as the message's defaults.
                (None, FieldKind::Message(i)) => self.nested(*i, &[]),
                (None, _) => {
                    self.out.extend_from_slice(value_unset);
                    Ok(())
                }
            }
            .map_err(|e| e.within(n))?;
            self.out.push(b'}');
            written.push((key, at, self.out.len()));
        }
        text::key_value_array(self.out, start, written);
        Ok(())
    }

    /// Writes a map key and returns it for sorting.
    fn map_key<'r>(&mut self, kind: &FieldKind, raw: Raw<'r>) -> Result<MapKey<'r>, Misfit> {
        let at = self.out.len();
        match kind {
            FieldKind::String => {
                let s = utf8(len(raw, kind)?)?;
                text::string(self.out, s);
                Ok(MapKey::Str(s))
            }
            FieldKind::Bool => {
                self.scalar(kind, raw)?;
                Ok(MapKey::Bool(self.out[at] == b't'))
            }
            _ => {
                self.scalar(kind, raw)?;
                let number = std::str::from_utf8(&self.out[at..])
                    .ok()
                    .and_then(|s| s.parse::<i128>().ok())
                    .unwrap_or_default();
                Ok(MapKey::Int(number))
            }
        }
    }

    /// A message inside the record: the logical types Confluent's converter knows by name, else
    /// an object.
    fn nested(&mut self, index: usize, parts: &[&[u8]]) -> Result<(), Misfit> {
        let m: &MessagePlan = &self.plan.messages[index];
        let Some(logical) = m.logical else {
            return self.object(index, parts, None);
        };
        // Fields 1 to 4, the last value of each (ints; the Decimal's value is bytes).
        let mut fields: [Option<Raw<'_>>; 5] = [None; 5];
        for part in parts {
            let mut input = *part;
            while !input.is_empty() {
                let (number, raw) = next(&mut input)?;
                if let Some(f) = fields.get_mut(number as usize) {
                    *f = Some(raw);
                }
            }
        }
        let int = |n: usize| -> i64 {
            match fields[n] {
                Some(Raw::Varint(v)) => v as i64,
                _ => 0,
            }
        };
        match logical {
            Logical::Timestamp => {
                // nanos is an int32: its varint is the sign-extended 64 bits.
                let micros = i128::from(int(1)) * 1_000_000 + i128::from(int(2) as i32) / 1_000;
                text::timestamp(self.out, micros, true).map_err(Misfit::new)
            }
            Logical::Date => {
                let (y, mo, d) = (int(1) as i32, int(2) as i32, int(3) as i32);
                let date = u8::try_from(mo)
                    .ok()
                    .and_then(|m| time::Month::try_from(m).ok())
                    .and_then(|mo| time::Date::from_calendar_date(y, mo, d as u8).ok())
                    .filter(|_| (1..=31).contains(&d))
                    .ok_or_else(|| {
                        Misfit::new(format!("date {y}-{mo}-{d} is not a calendar date"))
                    })?;
                text::quoted_date(self.out, date);
                Ok(())
            }
            Logical::TimeOfDay => {
                let [h, mi, s, n] = [1, 2, 3, 4].map(|i| i64::from(int(i) as i32));
                if !(0..24).contains(&h) || !(0..60).contains(&mi) || !(0..60).contains(&s) {
                    return Err(Misfit::new(format!(
                        "time of day {h}:{mi}:{s} out of range"
                    )));
                }
                let micros = ((h * 60 + mi) * 60 + s) * 1_000_000 + n / 1_000;
                text::time(self.out, micros).map_err(Misfit::new)
            }
            Logical::Decimal => {
                let bytes = match fields[1] {
                    Some(Raw::Len(b)) => b,
                    _ => &[],
                };
                let scale = int(3) as i32;
                let scale = usize::try_from(scale)
                    .map_err(|_| Misfit::new(format!("decimal scale {scale} is negative")))?;
                if bytes.len() > 32 {
                    return Err(Misfit::new("decimal wider than BIGNUMERIC's 32 bytes"));
                }
                text::string(self.out, &text::decimal_text(bytes, scale));
                Ok(())
            }
        }
    }

    /// A scalar value (not a message) of `kind`.
    fn scalar(&mut self, kind: &FieldKind, raw: Raw<'_>) -> Result<(), Misfit> {
        let mut number = itoa::Buffer::new();
        let text: &[u8] = match (kind, raw) {
            (FieldKind::Int32, Raw::Varint(v)) => number.format(v as i32).as_bytes(),
            (FieldKind::Int64, Raw::Varint(v)) => number.format(v as i64).as_bytes(),
            (FieldKind::Uint32, Raw::Varint(v)) => number.format(v as u32).as_bytes(),
            (FieldKind::Uint64, Raw::Varint(v)) => number.format(v).as_bytes(),
            // sint32 is zigzag over its low 32 bits.
            (FieldKind::Sint32, Raw::Varint(v)) => number
                .format(unzigzag(u64::from(v as u32)) as i32)
                .as_bytes(),
            (FieldKind::Sint64, Raw::Varint(v)) => number.format(unzigzag(v)).as_bytes(),
            (FieldKind::Bool, Raw::Varint(v)) => {
                if v != 0 {
                    b"true"
                } else {
                    b"false"
                }
            }
            (FieldKind::Enum(values), Raw::Varint(v)) => {
                let n = v as i32;
                match values.binary_search_by_key(&n, |(k, _)| *k) {
                    Ok(i) => &values[i].1,
                    Err(_) => {
                        text::string(self.out, &n.to_string());
                        return Ok(());
                    }
                }
            }
            (FieldKind::Fixed32, Raw::Fixed32(v)) => number.format(v).as_bytes(),
            (FieldKind::Sfixed32, Raw::Fixed32(v)) => number.format(v as i32).as_bytes(),
            (FieldKind::Float, Raw::Fixed32(v)) => {
                text::float(self.out, f64::from(f32::from_bits(v)));
                return Ok(());
            }
            (FieldKind::Fixed64, Raw::Fixed64(v)) => number.format(v).as_bytes(),
            (FieldKind::Sfixed64, Raw::Fixed64(v)) => number.format(v as i64).as_bytes(),
            (FieldKind::Double, Raw::Fixed64(v)) => {
                text::float(self.out, f64::from_bits(v));
                return Ok(());
            }
            (FieldKind::String, Raw::Len(b)) => {
                text::string(self.out, utf8(b)?);
                return Ok(());
            }
            (FieldKind::Bytes, Raw::Len(b)) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(b);
                self.out.push(b'"');
                self.out.extend_from_slice(encoded.as_bytes());
                self.out.push(b'"');
                return Ok(());
            }
            (kind, raw) => return Err(wrong_wire_type(kind, raw)),
        };
        self.out.extend_from_slice(text);
        Ok(())
    }
}

/// A map key, ordered as prost-reflect's `MapKey` orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum MapKey<'a> {
    Bool(bool),
    Int(i128),
    Str(&'a str),
}
