//! The members of an object whose text is already known to be valid JSON (a value inside a record
//! the converter validated), found by scanning for its delimiters instead of parsing it again.
//!
//! Valid JSON is all this needs to be right: a structural byte (`"`, `:`, `,`, `{`, `}`, `[`, `]`)
//! outside a string is never part of a value's text, and inside a string the only byte to watch is
//! `\`, which escapes the next one. Every index it slices at is such an ASCII byte, so it is a
//! character boundary. Text that is not valid JSON ends the members with an error, never a panic.

use std::borrow::Cow;

/// Why the text could not be read as an object (it was not the valid JSON promised).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotValid;

/// The members of the JSON object `text`: each key (unescaped) and its value's text, in order,
/// duplicates included.
pub fn valid_object_members(text: &str) -> ValidMembers<'_> {
    let b = text.as_bytes();
    let mut pos = skip_ws(b, 0);
    let done = b.get(pos) != Some(&b'{');
    pos += 1;
    ValidMembers {
        text,
        pos,
        done,
        first: true,
        failed: done,
    }
}

/// See [`valid_object_members`].
pub struct ValidMembers<'a> {
    text: &'a str,
    pos: usize,
    done: bool,
    first: bool,
    /// The text did not start as an object: the first item is the error.
    failed: bool,
}

impl<'a> Iterator for ValidMembers<'a> {
    type Item = Result<(Cow<'a, str>, &'a str), NotValid>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return self.failed.then(|| {
                self.failed = false;
                Err(NotValid)
            });
        }
        let member = self.member();
        match member {
            Ok(Some(m)) => Some(Ok(m)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl<'a> ValidMembers<'a> {
    fn member(&mut self) -> Result<Option<(Cow<'a, str>, &'a str)>, NotValid> {
        let b = self.text.as_bytes();
        let mut pos = skip_ws(b, self.pos);
        match b.get(pos) {
            Some(b'}') => return Ok(None),
            Some(b',') if !self.first => pos = skip_ws(b, pos + 1),
            Some(b'"') if self.first => {}
            _ => return Err(NotValid),
        }
        self.first = false;
        if b.get(pos) != Some(&b'"') {
            return Err(NotValid);
        }
        let (key_end, escaped) = string_end(b, pos).ok_or(NotValid)?;
        let raw_key = self.text.get(pos..key_end).ok_or(NotValid)?;
        let key = if escaped {
            Cow::Owned(serde_json::from_str::<String>(raw_key).map_err(|_| NotValid)?)
        } else {
            Cow::Borrowed(raw_key.get(1..raw_key.len() - 1).ok_or(NotValid)?)
        };
        pos = skip_ws(b, key_end);
        if b.get(pos) != Some(&b':') {
            return Err(NotValid);
        }
        let start = skip_ws(b, pos + 1);
        let end = value_end(b, start).ok_or(NotValid)?;
        self.pos = end;
        let value = self.text.get(start..end).ok_or(NotValid)?;
        Ok(Some((key, value)))
    }
}

/// The first byte at or after `pos` that is not JSON whitespace.
#[inline]
pub(super) fn skip_ws(b: &[u8], mut pos: usize) -> usize {
    while matches!(b.get(pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        pos += 1;
    }
    pos
}

/// `0x01` in every byte of a word.
pub(super) const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Bytes of `x` (a little-endian word of text) that are zero, flagged by their high bit. The lowest
/// flag is exact (borrows run only upwards from a flagged byte); higher ones may not be.
#[inline]
pub(super) fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGH
}

/// Bytes of `x` below 0x20 (control characters), flagged as [`zero_bytes`] flags them.
#[inline]
pub(super) fn below_0x20(x: u64) -> u64 {
    x.wrapping_sub(ONES * 0x20) & !x & HIGH
}

/// From `i`, skips eight bytes at a time while `flags` flags none of them: the index of the first
/// flagged byte, or of the last few bytes (fewer than eight), for the caller's byte loop to decide.
#[inline]
pub(super) fn skip_words(b: &[u8], mut i: usize, flags: impl Fn(u64) -> u64) -> usize {
    while let Some(chunk) = b.get(i..i + 8) {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let found = flags(u64::from_le_bytes(word));
        if found != 0 {
            return i + (found.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i
}

/// The end (after the closing quote) of the string starting at `pos`, and whether it has escapes.
fn string_end(b: &[u8], pos: usize) -> Option<(usize, bool)> {
    let mut i = pos + 1;
    let mut escaped = false;
    let stops = |x: u64| {
        zero_bytes(x ^ (ONES * u64::from(b'"'))) | zero_bytes(x ^ (ONES * u64::from(b'\\')))
    };
    while i < b.len() {
        i = skip_words(b, i, stops);
        let Some(&c) = b.get(i) else { break };
        match c {
            b'"' => return Some((i + 1, escaped)),
            b'\\' => {
                escaped = true;
                i += 2;
            }
            _ => i += 1,
        }
    }
    None
}

/// The end of the value starting at `pos`.
fn value_end(b: &[u8], pos: usize) -> Option<usize> {
    match b.get(pos)? {
        b'"' => string_end(b, pos).map(|(end, _)| end),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = pos;
            while i < b.len() {
                match b[i] {
                    b'"' => {
                        i = string_end(b, i)?.0;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            let mut i = pos;
            while i < b.len() && !matches!(b[i], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                i += 1;
            }
            (i > pos).then_some(i)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(text: &str) -> Result<Vec<(String, String)>, NotValid> {
        valid_object_members(text)
            .map(|m| m.map(|(k, v)| (k.into_owned(), v.to_owned())))
            .collect()
    }

    #[test]
    fn finds_every_member_as_serde_json_reads_it() {
        let text = r#" { "a" : 1 , "b":"x,}\"]" ,"c\u0064":{"n":[1,{"m":"}"}]},"e":[],"f":null,"a":-1.5e3 } "#;
        let expected: Vec<(String, String)> = [
            ("a", "1"),
            ("b", r#""x,}\"]""#),
            ("cd", r#"{"n":[1,{"m":"}"}]}"#),
            ("e", "[]"),
            ("f", "null"),
            ("a", "-1.5e3"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(members(text).unwrap(), expected);
        assert_eq!(members("{}").unwrap(), vec![]);
    }

    #[test]
    fn text_that_is_not_an_object_is_an_error_not_a_panic() {
        for bad in [
            "",
            "[1]",
            "{",
            r#"{"a""#,
            r#"{"a":"#,
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{"a":"x}"#,
            "{,}",
            r#"{"a":{"#,
        ] {
            assert!(members(bad).is_err(), "{bad:?}");
        }
    }
}
