//! BigQuery's JSON text for typed values, written straight into bytes: what the Avro and Protobuf
//! record writers ([`super::avro`], [`super::protobuf`]) share. Each writes the text
//! `tabledata.insertAll` takes for the column type the value maps to, and the Storage Write API's
//! row encoder ([`crate::stage::proto`]) reads the same text.

use std::io::Write;

use time::{Date, Duration, OffsetDateTime, Time};

/// A value that does not fit its schema, and where. Made where it fails with an empty path; each
/// level adds its segment as the error unwinds ([`Misfit::within`]), so the path costs nothing
/// unless a value fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misfit {
    pub path: String,
    pub error: String,
}

impl Misfit {
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            path: String::new(),
            error: error.into(),
        }
    }

    /// This misfit, one level down `segment`.
    pub fn within(self, segment: impl std::fmt::Display) -> Self {
        let path = if self.path.is_empty() {
            segment.to_string()
        } else {
            format!("{segment}.{}", self.path)
        };
        Self { path, ..self }
    }

    /// Where: the path, or "the record" for the record itself.
    pub fn at(&self) -> &str {
        if self.path.is_empty() {
            "the record"
        } else {
            &self.path
        }
    }
}

impl std::fmt::Display for Misfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at {}: {}", self.at(), self.error)
    }
}

/// A map as BigQuery's REPEATED RECORD (`key`, `value`): its entries, `{"key":…,"value":…}`, were
/// written into `out` from `start` in the order read, each at the span given with its key (values
/// must be read in order); they are put in key order inside `[…]`, and of equal keys the last read
/// is kept (a map holds a key once).
pub fn key_value_array<K: Ord>(
    out: &mut Vec<u8>,
    start: usize,
    mut entries: Vec<(K, usize, usize)>,
) {
    let written = out.split_off(start);
    // Stable: of equal keys, the last read stays last.
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    out.push(b'[');
    let mut first = true;
    for (i, (key, from, to)) in entries.iter().enumerate() {
        if entries.get(i + 1).is_some_and(|next| next.0 == *key) {
            continue;
        }
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        out.extend_from_slice(&written[from - start..to - start]);
    }
    out.push(b']');
}

/// A JSON string (serde_json escapes as JSON requires; writing into a Vec cannot fail).
pub fn string(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A FLOAT: a number, or BigQuery's strings for NaN and ±Infinity (JSON has no such numbers).
pub fn float(out: &mut Vec<u8>, f: f64) {
    if f.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if f.is_infinite() {
        let s: &[u8] = if f > 0.0 {
            b"\"Infinity\""
        } else {
            b"\"-Infinity\""
        };
        out.extend_from_slice(s);
    } else {
        let _ = write!(out, "{f}");
    }
}

/// A TIME `"HH:MM:SS.ffffff"`, `micros` after midnight; `Err` with the reason when out of range.
pub fn time(out: &mut Vec<u8>, micros: i64) -> Result<(), String> {
    if !(0..86_400_000_000).contains(&micros) {
        return Err(format!("time of day {micros} µs out of range"));
    }
    let t = Time::MIDNIGHT + Duration::microseconds(micros);
    out.push(b'"');
    push_time(out, t);
    out.push(b'"');
    Ok(())
}

/// A TIMESTAMP `"YYYY-MM-DDTHH:MM:SS.ffffffZ"` (`utc`) or a DATETIME (no zone), `micros` after
/// the epoch; `Err` with the reason when out of range.
pub fn timestamp(out: &mut Vec<u8>, micros: i128, utc: bool) -> Result<(), String> {
    let at = OffsetDateTime::from_unix_timestamp_nanos(micros * 1_000)
        .map_err(|_| format!("timestamp {micros} µs out of range"))?;
    out.push(b'"');
    push_date(out, at.date());
    out.push(b'T');
    push_time(out, at.time());
    if utc {
        out.push(b'Z');
    }
    out.push(b'"');
    Ok(())
}

/// A DATE `"YYYY-MM-DD"`.
pub fn quoted_date(out: &mut Vec<u8>, d: Date) {
    out.push(b'"');
    push_date(out, d);
    out.push(b'"');
}

/// The date `days` after 1970-01-01.
pub fn date(days: i32) -> Option<Date> {
    // 2440588 is the Julian day of 1970-01-01.
    Date::from_julian_day(2_440_588i32.checked_add(days)?).ok()
}

/// `n` as exactly `width` decimal digits (`n` < 10^width).
fn push_digits(out: &mut Vec<u8>, mut n: u32, width: usize) {
    let at = out.len();
    out.resize(at + width, b'0');
    for i in (0..width).rev() {
        out[at + i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// `YYYY-MM-DD` (years 0 to 9999, BigQuery's range; others as they are).
pub fn push_date(out: &mut Vec<u8>, d: Date) {
    match u32::try_from(d.year()) {
        Ok(y) if y <= 9999 => push_digits(out, y, 4),
        _ => {
            let _ = write!(out, "{}", d.year());
        }
    }
    out.push(b'-');
    push_digits(out, u32::from(u8::from(d.month())), 2);
    out.push(b'-');
    push_digits(out, u32::from(d.day()), 2);
}

/// `HH:MM:SS.ffffff`.
pub fn push_time(out: &mut Vec<u8>, t: Time) {
    push_digits(out, u32::from(t.hour()), 2);
    out.push(b':');
    push_digits(out, u32::from(t.minute()), 2);
    out.push(b':');
    push_digits(out, u32::from(t.second()), 2);
    out.push(b'.');
    push_digits(out, t.microsecond(), 6);
}

/// The decimal a big-endian two's-complement unscaled value stands for at `scale`, exactly.
pub fn decimal_text(bytes: &[u8], scale: usize) -> String {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    // Magnitude: the two's complement of a negative value.
    let mut magnitude: Vec<u8> = if negative {
        let mut m: Vec<u8> = bytes.iter().map(|b| !b).collect();
        for b in m.iter_mut().rev() {
            let (v, carry) = b.overflowing_add(1);
            *b = v;
            if !carry {
                break;
            }
        }
        m
    } else {
        bytes.to_vec()
    };
    // Decimal digits by repeated division by 10 (values are at most 32 bytes: BIGNUMERIC).
    let mut digits = Vec::new();
    while magnitude.iter().any(|&b| b != 0) {
        let mut rest = 0u32;
        for b in magnitude.iter_mut() {
            let cur = (rest << 8) | u32::from(*b);
            *b = (cur / 10) as u8;
            rest = cur % 10;
        }
        digits.push(b'0' + rest as u8);
    }
    while digits.len() <= scale {
        digits.push(b'0');
    }
    digits.reverse();
    let (int, frac) = digits.split_at(digits.len() - scale);
    let mut text = String::with_capacity(digits.len() + 2);
    if negative {
        text.push('-');
    }
    text.push_str(std::str::from_utf8(int).unwrap_or("0"));
    if scale > 0 {
        text.push('.');
        text.push_str(std::str::from_utf8(frac).unwrap_or("0"));
    }
    text
}
