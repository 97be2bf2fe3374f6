//! BigQuery's civil date and time texts, read with the `time` crate: TIMESTAMP as microseconds
//! since the epoch, DATE as days since the epoch, TIME and DATETIME checked and normalised.
//!
//! Accepted, as BigQuery's canonical formats: `YYYY-MM-DD`, then optionally `T` or a space and
//! `HH:MM:SS[.ffffff]`, then (TIMESTAMP only) optionally `Z`, ` UTC`, or an offset `±HH[:MM]`.

use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::{Date, Time};

const DATE: &[BorrowedFormatItem<'_>] = format_description!("[year]-[month]-[day]");
const TIME: &[BorrowedFormatItem<'_>] =
    format_description!("[hour]:[minute]:[second][optional [.[subsecond]]]");
/// Julian day of 1970-01-01.
const EPOCH_JULIAN_DAY: i64 = 2_440_588;

/// Days since 1970-01-01 of a `YYYY-MM-DD` text.
pub(super) fn date_days(text: &str) -> Result<i32, String> {
    let date = Date::parse(text.trim(), DATE).map_err(|e| format!("not a date ({e})"))?;
    Ok((i64::from(date.to_julian_day()) - EPOCH_JULIAN_DAY) as i32)
}

/// Checks an `HH:MM:SS[.ffffff]` text.
pub(super) fn check_time(text: &str) -> Result<(), String> {
    Time::parse(text.trim(), TIME)
        .map(drop)
        .map_err(|e| format!("not a time ({e})"))
}

/// Splits `date[( |T)time]` into its date and optional rest.
fn split(text: &str) -> (&str, Option<&str>) {
    let text = text.trim();
    match text.get(10..11) {
        Some("T" | "t" | " ") => (&text[..10], Some(&text[11..])),
        _ => (text, None),
    }
}

/// A DATETIME text as `YYYY-MM-DD HH:MM:SS[.f]` (a `T` becomes a space), checked.
pub(super) fn datetime_text(text: &str) -> Result<String, String> {
    let (date, time) = split(text);
    Date::parse(date, DATE).map_err(|e| format!("not a datetime ({e})"))?;
    match time {
        Some(t) => {
            check_time(t).map_err(|e| format!("not a datetime ({e})"))?;
            Ok(format!("{date} {}", t.trim()))
        }
        None => Ok(format!("{date} 00:00:00")),
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.f…]Z`, the form bqsink writes (`_kafka_timestamp`) and most producers
/// use, read without the format parser; `None` for any other form.
fn rfc3339_utc_micros(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let digits = |from: usize, n: usize| -> Option<i64> {
        b.get(from..from + n)?.iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (rest, zulu) = (&b[19..b.len() - 1], b[b.len() - 1]);
    if zulu != b'Z' {
        return None;
    }
    let micros = match rest {
        [] => 0,
        [b'.', frac @ ..] if (1..=6).contains(&frac.len()) => {
            let v = digits(20, frac.len())?;
            v * 10i64.pow(6 - frac.len() as u32)
        }
        _ => return None,
    };
    let month = time::Month::try_from(u8::try_from(digits(5, 2)?).ok()?).ok()?;
    let date = Date::from_calendar_date(
        i32::try_from(digits(0, 4)?).ok()?,
        month,
        u8::try_from(digits(8, 2)?).ok()?,
    )
    .ok()?;
    let time = Time::from_hms(
        u8::try_from(digits(11, 2)?).ok()?,
        u8::try_from(digits(14, 2)?).ok()?,
        u8::try_from(digits(17, 2)?).ok()?,
    )
    .ok()?;
    let days = i64::from(date.to_julian_day()) - EPOCH_JULIAN_DAY;
    let secs = days * 86_400
        + i64::from(time.hour()) * 3600
        + i64::from(time.minute()) * 60
        + i64::from(time.second());
    Some(secs * 1_000_000 + micros)
}

/// Microseconds since the epoch of a TIMESTAMP text.
pub(super) fn timestamp_micros(text: &str) -> Result<i64, String> {
    if let Some(micros) = rfc3339_utc_micros(text) {
        return Ok(micros);
    }
    let bad = |e: &dyn std::fmt::Display| format!("not a timestamp ({e})");
    let (date, rest) = split(text);
    let date = Date::parse(date, DATE).map_err(|e| bad(&e))?;
    let (time, offset_secs) = match rest {
        None => (Time::MIDNIGHT, 0),
        Some(rest) => {
            let (clock, zone) = zone_split(rest.trim());
            let time = Time::parse(clock, TIME).map_err(|e| bad(&e))?;
            (time, zone_offset(zone).ok_or_else(|| bad(&"bad zone"))?)
        }
    };
    let days = i64::from(date.to_julian_day()) - EPOCH_JULIAN_DAY;
    let secs = days * 86_400
        + i64::from(time.hour()) * 3600
        + i64::from(time.minute()) * 60
        + i64::from(time.second())
        - offset_secs;
    Ok(secs * 1_000_000 + i64::from(time.microsecond()))
}

/// Splits `HH:MM:SS[.f][zone]` at the zone.
fn zone_split(text: &str) -> (&str, &str) {
    let end = text
        .char_indices()
        .find(|&(i, c)| i >= 8 && (c == 'Z' || c == 'z' || c == '+' || c == '-' || c == ' '))
        .map_or(text.len(), |(i, _)| i);
    (&text[..end], text[end..].trim())
}

/// Seconds east of UTC of `""`, `Z`, `UTC`, `±HH`, `±HHMM` or `±HH:MM`.
fn zone_offset(zone: &str) -> Option<i64> {
    match zone {
        "" | "Z" | "z" | "UTC" | "+00:00" => return Some(0),
        _ => {}
    }
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits: String = zone[1..].chars().filter(|c| *c != ':').collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m) = match digits.len() {
        2 => (digits.parse::<i64>().ok()?, 0),
        4 => (digits[..2].parse().ok()?, digits[2..].parse().ok()?),
        _ => return None,
    };
    (h <= 14 && m < 60).then_some(sign * (h * 3600 + m * 60))
}
