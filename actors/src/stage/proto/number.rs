//! Numbers in the forms BigQuery takes them: INTEGER written as an integral float, NUMERIC text.

/// An integer written as a float with no fraction (`3.0`, `1e3`), as BigQuery takes it.
pub(super) fn integral_float(text: &str) -> Result<i64, String> {
    let f: f64 = text
        .trim()
        .parse()
        .map_err(|_| "expected an integer".to_owned())?;
    if f.fract() == 0.0 && f.abs() < 9.2e18 {
        Ok(f as i64)
    } else {
        Err("expected an integer".into())
    }
}

/// `[+-]digits[.digits][e[+-]digits]`, with at least one digit.
pub(super) fn is_decimal(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    let mut n = digits(&mut i);
    if i < b.len() && b[i] == b'.' {
        i += 1;
        n += digits(&mut i);
    }
    if n == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}
