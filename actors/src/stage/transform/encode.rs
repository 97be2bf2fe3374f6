//! Writing values into a row's JSON text: RFC 3339 timestamps (with the formatted second reused)
//! and JSON scalars.

use std::time::{Duration, UNIX_EPOCH};

/// Writes `ms` since the epoch as a quoted RFC 3339 timestamp with milliseconds, reusing the
/// formatted date and time of `second` when it is the same second. After year 9999 (BigQuery's
/// largest TIMESTAMP, and humantime's largest year) it writes `null`.
pub(super) fn write_timestamp(out: &mut Vec<u8>, ms: u64, second: &mut Option<(u64, String)>) {
    let (secs, millis) = (ms / 1000, ms % 1000);
    if secs >= 253_402_300_800 {
        out.extend_from_slice(b"null");
        return;
    }
    let text = match second {
        Some((s, text)) if *s == secs => text,
        _ => {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            let mut text = humantime::format_rfc3339_seconds(t).to_string();
            text.pop(); // the `Z`
            &mut second.insert((secs, text)).1
        }
    };
    out.push(b'"');
    out.extend_from_slice(text.as_bytes());
    let digits = [
        b'.',
        b'0' + (millis / 100) as u8,
        b'0' + (millis / 10 % 10) as u8,
        b'0' + (millis % 10) as u8,
        b'Z',
        b'"',
    ];
    out.extend_from_slice(&digits);
}

pub(super) fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Serializing a string or a number into a Vec cannot fail: no I/O.
    serde_json::to_writer(out, v).expect("JSON value serializes into memory");
}
