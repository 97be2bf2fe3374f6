//! The members of a record's JSON object in one pass that also validates it, for the common
//! record: UTF-8 text without a `\` anywhere (so no string in it has an escape).
//!
//! The invariant: [`members`] returns `Some` only for a text that `serde_json` reads as one JSON
//! object, and then with exactly the members [`super::object_members`] finds through `serde_json`
//! (the same spans, in the same order, the last of duplicate keys kept). `None` says nothing about
//! the text: the caller reads it with `serde_json`, which gives the members or the precise error.
//! So an input this module does not understand costs a second read, never a different answer. The
//! test at the bottom holds the two readers to that on generated and mutated texts.
//!
//! Why it exists: `serde_json` spent about 5,800 instructions a record on the bench's member
//! events (`benches/stages.rs`, `convert/json_object`), mostly in starting and ending its string
//! scans for short keys and values. Without escapes a string is the bytes up to the next `"`, none
//! below 0x20, which this scans eight bytes at a time.
//!
//! What is checked, as `serde_json` checks it (`de.rs`, `ignore_value` and its helpers): whitespace
//! is space, tab, LF and CR; strings have no control character; numbers are
//! `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`; `true`, `false`, `null`; objects' keys are
//! strings; no trailing commas; nothing but whitespace after the object. Containers nested deeper
//! than 64 are left to `serde_json`.

use super::scan::{below_0x20, skip_words, skip_ws, zero_bytes, ONES};
use super::{InnerMembers, Member, Span};

/// The members of the object `text`, and with `inner` the members of the objects among their values
/// (each tagged with the offset of its object's `{`, duplicates kept, as
/// [`super::valid_object_members`] gives them); or `None` to read the text with `serde_json` (see
/// the module).
pub(super) fn members(text: &str, inner: bool) -> Option<(Vec<Member>, InnerMembers)> {
    let b = text.as_bytes();
    if memchr::memchr(b'\\', b).is_some() {
        return None;
    }
    let mut pos = skip_ws(b, 0);
    if b.get(pos) != Some(&b'{') {
        return None;
    }
    pos = skip_ws(b, pos + 1);
    let mut members: Vec<Member> = Vec::with_capacity(8);
    let (capture, mut inner) = (inner, Vec::new());
    // Bit `n`: a key of length `n` (modulo 64) was read.
    let mut lengths = 0u64;
    if b.get(pos) == Some(&b'}') {
        pos += 1;
    } else {
        loop {
            let (key, start) = key(b, pos)?;
            pos = match b.get(start) {
                Some(b'{') if capture => inner_object(b, start, &mut inner)?,
                _ => value_end(b, start)?,
            };
            // A repeated key is looked for only among keys of its length (modulo 64): most records
            // have few keys of each length, so most keys are known new without a comparison.
            let (name, len) = (key.of(b), key.end - key.start);
            let bit = 1u64 << (len % 64);
            if lengths & bit != 0 {
                let same = |m: &Member| m.key.end - m.key.start == len && m.key.of(b) == name;
                if let Some(i) = members.iter().position(same) {
                    members.remove(i);
                }
            }
            lengths |= bit;
            members.push(Member {
                key,
                escaped: false,
                value: Span::new(start, pos),
            });
            match after_member(b, pos)? {
                Ok(next) => pos = next,
                Err(end) => {
                    pos = end;
                    break;
                }
            }
        }
    }
    (skip_ws(b, pos) == b.len()).then_some((members, inner))
}

/// Reads the object whose `{` is at `pos`, a member's value, with its members into `inner` (tagged
/// with `pos`); the end of the object.
fn inner_object(b: &[u8], pos: usize, inner: &mut InnerMembers) -> Option<usize> {
    let tag = pos as u32;
    let mut pos = skip_ws(b, pos + 1);
    if b.get(pos) == Some(&b'}') {
        return Some(pos + 1);
    }
    loop {
        let (key, start) = key(b, pos)?;
        pos = value_end(b, start)?;
        let value = Span::new(start, pos);
        inner.push((
            tag,
            Member {
                key,
                escaped: false,
                value,
            },
        ));
        match after_member(b, pos)? {
            Ok(next) => pos = next,
            Err(end) => return Some(end),
        }
    }
}

/// At a member's opening `"`: its key, and where its value starts (past the `:`).
#[inline]
fn key(b: &[u8], pos: usize) -> Option<(Span, usize)> {
    if b.get(pos) != Some(&b'"') {
        return None;
    }
    let key_end = string_end(b, pos + 1)?;
    let colon = skip_ws(b, key_end + 1);
    if b.get(colon) != Some(&b':') {
        return None;
    }
    Some((Span::new(pos + 1, key_end), skip_ws(b, colon + 1)))
}

/// After an object member's value: `Ok` with the next member's position after a `,`, or `Err` with
/// the object's end after its `}`.
#[inline]
fn after_member(b: &[u8], pos: usize) -> Option<Result<usize, usize>> {
    let pos = skip_ws(b, pos);
    match b.get(pos) {
        Some(b',') => Some(Ok(skip_ws(b, pos + 1))),
        Some(b'}') => Some(Err(pos + 1)),
        _ => None,
    }
}

/// The index of the `"` that closes the string whose characters start at `i`; `None` at a control
/// character or the end of the text. (There is no `\` in the text.)
#[inline]
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    // Eight bytes at a time past those that are neither `"` nor below 0x20.
    let mut i = skip_words(b, i, |x| {
        zero_bytes(x ^ (ONES * u64::from(b'"'))) | below_0x20(x)
    });
    while let Some(&c) = b.get(i) {
        if c == b'"' {
            return Some(i);
        }
        if c < 0x20 {
            return None;
        }
        i += 1;
    }
    None
}

/// The end of the value that starts at `pos`.
#[inline]
fn value_end(b: &[u8], pos: usize) -> Option<usize> {
    match b.get(pos)? {
        b'"' => string_end(b, pos + 1).map(|end| end + 1),
        b'{' | b'[' => container_end(b, pos),
        _ => scalar_end(b, pos),
    }
}

/// The end of the number or literal that starts at `pos`.
fn scalar_end(b: &[u8], pos: usize) -> Option<usize> {
    let literal = |word: &[u8]| (b.get(pos..pos + word.len())? == word).then_some(pos + word.len());
    match b.get(pos)? {
        b't' => literal(b"true"),
        b'f' => literal(b"false"),
        b'n' => literal(b"null"),
        b'-' | b'0'..=b'9' => number_end(b, pos),
        _ => None,
    }
}

fn number_end(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |mut i: usize| {
        while matches!(b.get(i), Some(b'0'..=b'9')) {
            i += 1;
        }
        i
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i)? {
        // A leading `0` stands alone: a digit after it ends the number where the caller expects a
        // delimiter, so the text goes to `serde_json`.
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(i + 1),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let end = digits(i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let end = digits(i);
        if end == i {
            return None;
        }
        i = end;
    }
    Some(i)
}

/// The end of the object or array that starts at `pos`, walked without recursion: bit `i` of
/// `objects` says whether the container `i` levels up from the current one is an object.
fn container_end(b: &[u8], mut pos: usize) -> Option<usize> {
    let mut objects: u64 = 0;
    let mut depth = 0u32;
    loop {
        // `pos` is at a value's first byte.
        match b.get(pos)? {
            &open @ (b'{' | b'[') => {
                if depth == 64 {
                    return None;
                }
                let object = open == b'{';
                objects = objects << 1 | u64::from(object);
                depth += 1;
                pos = skip_ws(b, pos + 1);
                let close = if object { b'}' } else { b']' };
                if b.get(pos) != Some(&close) {
                    if object {
                        pos = key(b, pos)?.1;
                    }
                    continue;
                }
                // Empty: closed below, as after a last value.
            }
            b'"' => pos = string_end(b, pos + 1)? + 1,
            _ => pos = scalar_end(b, pos)?,
        }
        // After a value (or at an empty container's close): a comma and the next one, or closes.
        loop {
            pos = skip_ws(b, pos);
            let object = objects & 1 == 1;
            match b.get(pos)? {
                b',' => {
                    pos = skip_ws(b, pos + 1);
                    if object {
                        pos = key(b, pos)?.1;
                    }
                    break;
                }
                b'}' if object => {}
                b']' if !object => {}
                _ => return None,
            }
            pos += 1;
            depth -= 1;
            objects >>= 1;
            if depth == 0 {
                return Some(pos);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse_members, valid_object_members, Member};
    use super::*;

    /// What `serde_json` makes of the text (through the reader `object_members` falls back to).
    fn by_serde(text: &str) -> Option<Vec<Member>> {
        let mut de = serde_json::Deserializer::from_str(text);
        parse_members(&mut de, text.as_bytes()).ok()?.ok()
    }

    /// The members of each object among the values of a valid object's members (all of them, the
    /// repeated ones included), as the validated-text scan finds them, tagged with their offset.
    fn by_scan(text: &str) -> Vec<(u32, Member)> {
        let base = text.as_ptr() as usize;
        let offset = |s: &str| (s.as_ptr() as usize - base) as u32;
        let mut inner = Vec::new();
        for member in valid_object_members(text) {
            let (_, value) = member.expect("valid");
            if !value.starts_with('{') {
                continue;
            }
            for m in valid_object_members(value) {
                let (key, v) = m.expect("valid");
                // No escapes here: the key is the text between the quotes.
                let key_start = offset(&key) as usize;
                let key_span = Span::new(key_start, key_start + key.len());
                inner.push((
                    offset(value),
                    Member {
                        key: key_span,
                        escaped: false,
                        value: Span::new(offset(v) as usize, (offset(v) as usize) + v.len()),
                    },
                ));
            }
        }
        inner
    }

    /// Asserts the invariant for one text; true when this reader took it.
    fn agrees(text: &str) -> bool {
        assert_eq!(
            members(text, false).map(|(m, _)| m),
            members(text, true).map(|(m, _)| m)
        );
        match members(text, true) {
            None => false,
            Some((quick, inner)) => {
                assert_eq!(Some(quick), by_serde(text), "{text:?}");
                assert_eq!(inner, by_scan(text), "{text:?}");
                true
            }
        }
    }

    #[test]
    fn reads_objects_as_serde_json_does() {
        for text in [
            r#"{"a":1,"b":"x","c":{"d":[1,{"e":null}],"f":[]},"g":true,"h":false,"i":-0.5e+3}"#,
            " \t\r\n{ \"a\" : [ ] , \"b\" : { } }\n ",
            "{}",
            r#"{"a":1,"b":2,"a":3}"#,
            r#"{"":"","é":"ü 한글 😀","long string value over eight bytes":"0123456789abcdef"}"#,
            r#"{"n":[0,-0,1.0,1e5,1E-5,12.34e+56,[[[[]]]],{"x":{"y":{}}}]}"#,
        ] {
            assert!(agrees(text), "not taken: {text:?}");
        }
    }

    #[test]
    fn leaves_escapes_errors_and_deep_nesting_to_serde_json() {
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(70), "]".repeat(70));
        for text in [
            r#"{"a":"q\"uote"}"#,
            r#"{"k\u0041":1}"#,
            "{\"a\":\"tab\there\"}",
            "{\"a\":\"nl\nhere\"}",
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":-}"#,
            r#"{"a":1e}"#,
            r#"{"a":+1}"#,
            r#"{"a":tru}"#,
            r#"{"a":truex}"#,
            r#"{"a":1,}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":{"b":1,}}"#,
            r#"{"a":{1:2}}"#,
            r#"{"a":[1}"#,
            r#"{"a":{"b":1]}"#,
            r#"{"a" 1}"#,
            r#"{"a":1} x"#,
            r#"{"a":1}{}"#,
            "[1]",
            "\"s\"",
            "",
            "{",
            r#"{"a":"#,
            r#"{"a":"x"#,
            &deep,
        ] {
            assert!(!agrees(text), "taken: {text:?}");
        }
    }

    /// Generated objects, valid and then mutated a byte at a time: wherever this reader answers,
    /// `serde_json` gives the same members; every valid one without a `\` is taken.
    #[test]
    fn agrees_with_serde_json_on_generated_and_mutated_texts() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut taken, mut mutants_taken) = (0, 0);
        for _ in 0..20_000 {
            let mut text = String::new();
            object(&mut rng, &mut text, 0);
            if !text.contains('\\') {
                assert!(agrees(&text), "valid but not taken: {text:?}");
                taken += 1;
            }
            let mut bytes = text.into_bytes();
            for _ in 0..4 {
                mutate(&mut rng, &mut bytes);
                if let Ok(text) = std::str::from_utf8(&bytes) {
                    mutants_taken += usize::from(agrees(text));
                }
            }
        }
        // Enough of both kinds for the comparison to mean something.
        assert!(
            taken > 8000 && mutants_taken > 4000,
            "{taken} {mutants_taken}"
        );
    }

    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
        }
    }

    const WS: &[&str] = &["", "", "", " ", "\n", "\t", "\r", "  "];
    const STRINGS: &[&str] = &[
        "",
        "a",
        "event_id",
        "k",
        "a",
        "x,}]:{[",
        "é한",
        "long value past eight",
        "b",
        "seq",
        "member_id",
        "0",
        "true",
        "nul",
        " ",
        "\\n",
        "\\\"",
    ];
    const SCALARS: &[&str] = &[
        "0", "-1", "12", "3.25", "-0.5e-7", "1E+9", "true", "false", "null", "\"\"",
    ];

    fn pad(rng: &mut Rng, out: &mut String) {
        out.push_str(WS[rng.below(WS.len())]);
    }

    fn value(rng: &mut Rng, out: &mut String, depth: usize) {
        pad(rng, out);
        match rng.below(if depth > 3 { 2 } else { 4 }) {
            0 => out.push_str(SCALARS[rng.below(SCALARS.len())]),
            1 => {
                out.push('"');
                out.push_str(STRINGS[rng.below(STRINGS.len())]);
                out.push('"');
            }
            2 => object(rng, out, depth + 1),
            _ => {
                out.push('[');
                for i in 0..rng.below(4) {
                    if i > 0 {
                        out.push(',');
                    }
                    value(rng, out, depth + 1);
                }
                pad(rng, out);
                out.push(']');
            }
        }
        pad(rng, out);
    }

    fn object(rng: &mut Rng, out: &mut String, depth: usize) {
        out.push('{');
        for i in 0..rng.below(6) {
            if i > 0 {
                out.push(',');
            }
            pad(rng, out);
            out.push('"');
            out.push_str(STRINGS[rng.below(STRINGS.len())]);
            out.push('"');
            pad(rng, out);
            out.push(':');
            value(rng, out, depth);
        }
        pad(rng, out);
        out.push('}');
    }

    /// Deletes, inserts or replaces one byte, with bytes that matter to JSON.
    fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
        const BYTES: &[u8] = b"{}[]\":,0123456789-+.eEtrufalsn \t\n\x01\x1fx\\/\x7f";
        let at = rng.below(bytes.len() + 1);
        let byte = BYTES[rng.below(BYTES.len())];
        match rng.below(3) {
            0 if at < bytes.len() => {
                bytes.remove(at);
            }
            1 if at < bytes.len() => bytes[at] = byte,
            _ => bytes.insert(at, byte),
        }
    }
}
