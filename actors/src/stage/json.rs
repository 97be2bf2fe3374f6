//! Reading JSON text without building `serde_json::Value`s: the members of an object as spans of
//! the text, values picked by key or JSON pointer as raw text. Convert and transform use these so
//! that a record's bytes are parsed once and copied into its row as they are, without allocating a
//! string per field; the local insertAll sink uses them to read rows.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

mod quick;
mod scan;
pub use scan::{valid_object_members, NotValid, ValidMembers};

/// A byte range of a JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    /// The bytes `start..end` of a text (texts are under 4 GiB: rows are at most 10 MB).
    pub fn new(start: usize, end: usize) -> Self {
        Self {
            start: start as u32,
            end: end as u32,
        }
    }

    /// The spanned bytes of `text`.
    pub fn of<'a>(&self, text: &'a [u8]) -> &'a [u8] {
        &text[self.start as usize..self.end as usize]
    }
}

/// One member of an object: its key (the text between the quotes, as written, escapes included)
/// and its value (JSON text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub key: Span,
    /// Whether the key's text has escapes, so that it is not the key itself.
    pub escaped: bool,
    pub value: Span,
}

impl Member {
    /// The key, unescaped.
    pub fn name<'a>(&self, text: &'a [u8]) -> Cow<'a, str> {
        let raw = self.key.of(text);
        if self.escaped {
            // The key was read as a valid JSON string, so it reads again.
            let quoted = [b"\"", raw, b"\""].concat();
            Cow::Owned(serde_json::from_slice(&quoted).unwrap_or_default())
        } else {
            // Unescaped keys are validated UTF-8.
            String::from_utf8_lossy(raw)
        }
    }

    /// Whether the key is `name`.
    pub fn is(&self, text: &[u8], name: &str) -> bool {
        if self.escaped {
            self.name(text) == name
        } else {
            self.key.of(text) == name.as_bytes()
        }
    }
}

/// The text between the quotes of `raw`, a JSON string value of a validated text, escapes as
/// written; `None` when `raw` is not a string.
#[inline]
pub fn string_text(raw: &str) -> Option<&str> {
    raw.strip_prefix('"')?.strip_suffix('"')
}

/// The characters of `raw`, a JSON string value of a validated text: borrowed from between its
/// quotes when it has no escapes (no parser), unescaped otherwise; `None` when `raw` is not a
/// string.
#[inline]
pub fn string_value(raw: &str) -> Option<Cow<'_, str>> {
    let text = string_text(raw)?;
    if !text.contains('\\') {
        return Some(Cow::Borrowed(text));
    }
    serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
}

/// What a JSON text is when it is not an object: its kind, or why it is not JSON.
#[derive(Debug)]
pub enum NotAnObject {
    Invalid(serde_json::Error),
    Kind(&'static str),
}

/// Parses `text` as one JSON object and returns its members in order. A key that appears more than
/// once keeps only its last member, as `serde_json` does. Everything is validated (syntax, escapes,
/// UTF-8), so the spans can be copied into other JSON as they are.
pub fn object_members(text: &[u8]) -> Result<Vec<Member>, NotAnObject> {
    read_object(text, false).map(|(members, _)| members)
}

/// The members of the objects among an object's values, tagged with the offset of their object's
/// `{` in the text, in order, repeated keys kept (as [`valid_object_members`] reads them). Found
/// while reading the text when it has no escapes; empty otherwise (read them from the text then).
pub type InnerMembers = Vec<(u32, Member)>;

/// [`object_members`], and the [`InnerMembers`] found on the way.
pub fn object_members_and_inner(text: &[u8]) -> Result<(Vec<Member>, InnerMembers), NotAnObject> {
    read_object(text, true)
}

/// [`object_members_and_inner`], the inner members looked for only if `inner`.
fn read_object(text: &[u8], inner: bool) -> Result<(Vec<Member>, InnerMembers), NotAnObject> {
    if u32::try_from(text.len()).is_err() {
        return Err(NotAnObject::Invalid(serde_json::Error::custom(
            "value larger than 4 GiB",
        )));
    }
    // Checking UTF-8 once up front is cheaper than serde_json checking each string and value; text
    // that is not UTF-8 goes through the byte parser for its precise error.
    let members = match std::str::from_utf8(text) {
        Ok(s) => match quick::members(s, inner) {
            // The common record, read and validated in one pass (see `quick`).
            Some(read) => return Ok(read),
            None => parse_members(&mut serde_json::Deserializer::from_str(s), text),
        },
        Err(_) => parse_members(&mut serde_json::Deserializer::from_slice(text), text),
    };
    let members = members
        .map_err(NotAnObject::Invalid)?
        .map_err(NotAnObject::Kind)?;
    Ok((members, Vec::new()))
}

fn parse_members<'de, R: serde_json::de::Read<'de>>(
    de: &mut serde_json::Deserializer<R>,
    text: &[u8],
) -> Result<MembersResult, serde_json::Error> {
    let members = de.deserialize_any(Members { text })?;
    de.end()?;
    Ok(members)
}

/// Collects the members of an object; anything else is read to its end and named.
struct Members<'t> {
    text: &'t [u8],
}

impl Members<'_> {
    fn offset(&self, part: &[u8]) -> u32 {
        // `part` is a subslice of `text`, which is shorter than 4 GiB.
        (part.as_ptr() as usize - self.text.as_ptr() as usize) as u32
    }

    /// The key's span: the string ending before the `:` that precedes the value at `value_start`,
    /// and starting after `from` (the object's `{` or the previous member's end).
    fn key_span(&self, from: u32, value_start: u32) -> Span {
        let t = self.text;
        let mut end = value_start as usize;
        // Back over whitespace and the colon to the closing quote.
        while end > 0 && t[end - 1] != b'"' {
            end -= 1;
        }
        let mut start = from as usize;
        while start < end && t[start] != b'"' {
            start += 1;
        }
        Span {
            start: (start + 1) as u32,
            end: (end - 1) as u32,
        }
    }
}

type MembersResult = Result<Vec<Member>, &'static str>;

impl<'de> Visitor<'de> for Members<'_> {
    type Value = MembersResult;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MembersResult, A::Error> {
        let mut members: Vec<Member> = Vec::with_capacity(8);
        // Where the next key starts looking: the `{` (the first non-space byte) or a value's end.
        let mut from = self.text.iter().position(|b| *b == b'{').unwrap_or(0) as u32;
        while let Some(Key(key)) = map.next_key()? {
            let value: &RawValue = map.next_value()?;
            let start = self.offset(value.get().as_bytes());
            let span = Span {
                start,
                end: start + value.get().len() as u32,
            };
            let member = Member {
                key: self.key_span(from, start),
                escaped: matches!(key, Cow::Owned(_)),
                value: span,
            };
            from = span.end;
            let name = member.key.of(self.text);
            if let Some(i) = members.iter().position(|m| {
                if m.escaped || member.escaped {
                    m.name(self.text) == key
                } else {
                    m.key.of(self.text) == name
                }
            }) {
                members.remove(i);
            }
            members.push(member);
        }
        Ok(Ok(members))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MembersResult, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Err("array"))
    }
    fn visit_bool<E>(self, _: bool) -> Result<MembersResult, E> {
        Ok(Err("boolean"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<MembersResult, E> {
        Ok(Err("number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<MembersResult, E> {
        Ok(Err("number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<MembersResult, E> {
        Ok(Err("number"))
    }
    fn visit_str<E>(self, _: &str) -> Result<MembersResult, E> {
        Ok(Err("string"))
    }
    fn visit_unit<E>(self) -> Result<MembersResult, E> {
        Ok(Err("null"))
    }
}

/// An object key, borrowed from the input unless it has escapes.
pub struct Key<'a>(pub Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// The values of the given members of a JSON object (or elements of an array, by index) as raw
/// JSON text; `None` for those missing, and for every key of a scalar. The last of duplicate
/// members wins, as in `serde_json`.
pub fn pick<'a, const N: usize>(
    json: &'a str,
    keys: [&str; N],
) -> Result<[Option<&'a RawValue>; N], serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(json);
    let picked = Pick(keys).deserialize(&mut de)?;
    de.end()?;
    Ok(picked)
}

/// The value at an RFC 6901 JSON pointer in `json`, as raw JSON text.
pub fn lookup<'a>(json: &'a str, pointer: &str) -> Result<Option<&'a RawValue>, serde_json::Error> {
    let Some(path) = pointer.strip_prefix('/') else {
        if pointer.is_empty() {
            return serde_json::from_str(json).map(Some);
        }
        return Ok(None);
    };
    let mut current: &'a str = json;
    let mut found = None;
    for token in path.split('/') {
        let token = token.replace("~1", "/").replace("~0", "~");
        match pick(current, [token.as_str()])? {
            [Some(v)] => {
                current = v.get();
                found = Some(v);
            }
            [None] => return Ok(None),
        }
    }
    Ok(found)
}

/// Reads a JSON value and keeps the members named by the keys (elements by index), as raw JSON
/// text; see [`pick`].
pub struct Pick<'k, const N: usize>(pub [&'k str; N]);

impl<'de, const N: usize> DeserializeSeed<'de> for Pick<'_, N> {
    type Value = [Option<&'de RawValue>; N];
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, const N: usize> Visitor<'de> for Pick<'_, N> {
    type Value = [Option<&'de RawValue>; N];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = [None; N];
        while let Some(Key(key)) = map.next_key()? {
            match self.0.iter().position(|k| *k == key) {
                Some(i) => found[i] = Some(map.next_value()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut found = [None; N];
        let mut index = 0usize;
        loop {
            match self.0.iter().position(|k| k.parse::<usize>() == Ok(index)) {
                Some(i) => match seq.next_element()? {
                    Some(v) => found[i] = Some(v),
                    None => break,
                },
                None => {
                    if seq.next_element::<IgnoredAny>()?.is_none() {
                        break;
                    }
                }
            }
            index += 1;
        }
        Ok(found)
    }

    // Scalars have no members.
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok([None; N])
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok([None; N])
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok([None; N])
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok([None; N])
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok([None; N])
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok([None; N])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<(String, String)> {
        let t = text.as_bytes();
        object_members(t)
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m.name(t).into_owned(),
                    String::from_utf8(m.value.of(t).to_vec()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn members_are_spans_of_the_text() {
        assert_eq!(
            names(r#" { "a" : 1 ,"b":{"c": [1, "x"]},"s":"q\"uote" } "#),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), r#"{"c": [1, "x"]}"#.into()),
                ("s".into(), r#""q\"uote""#.into()),
            ]
        );
        assert!(names("{}").is_empty());
    }

    #[test]
    fn escaped_keys_and_duplicates() {
        let text = br#"{"k\"1":1,"\u0041":2,"A":3,"z":4,"k\"1":5}"#;
        let members = object_members(text).unwrap();
        let got: Vec<_> = members
            .iter()
            .map(|m| {
                (
                    m.name(text).into_owned(),
                    m.escaped,
                    m.value.of(text).to_vec(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("A".into(), false, b"3".to_vec()),
                ("z".into(), false, b"4".to_vec()),
                ("k\"1".into(), true, b"5".to_vec()),
            ],
            "the last of duplicate keys wins, escaped or not"
        );
        assert_eq!(members[2].key.of(text), br#"k\"1"#);
        assert!(members[2].is(text, "k\"1"));
        assert!(members[0].is(text, "A") && !members[0].is(text, "a"));
    }

    #[test]
    fn non_objects_and_invalid_json() {
        let kind = |t: &[u8]| match object_members(t) {
            Err(NotAnObject::Kind(k)) => k,
            other => panic!("{other:?}"),
        };
        assert_eq!(kind(b"[1,{\"a\":2}]"), "array");
        assert_eq!(kind(b" null"), "null");
        assert_eq!(kind(b"\"s\""), "string");
        assert_eq!(kind(b"-1.5e3"), "number");
        assert_eq!(kind(b"true"), "boolean");
        for bad in [
            &b"{\"a\":1"[..],
            b"{\"a\":1}x",
            b"{\"a\":\"\xff\"}",
            b"{\"a\":\"\\q\"}",
            b"",
        ] {
            assert!(
                matches!(object_members(bad), Err(NotAnObject::Invalid(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn lookup_follows_pointers() {
        let v = r#"{"a":{"b":[10,{"c":"x"}],"a~/b":1},"a":{"b":[20,{"c":"last"}]},"n":null}"#;
        let get = |p: &str| lookup(v, p).unwrap().map(|r| r.get().to_owned());
        assert_eq!(get("/a/b/1/c").as_deref(), Some(r#""last""#));
        assert_eq!(get("/a/b/0").as_deref(), Some("20"));
        assert_eq!(get("/a/b/2"), None);
        assert_eq!(get("/a/x"), None);
        assert_eq!(get("/n").as_deref(), Some("null"));
        assert_eq!(get("/n/deeper"), None);
        assert_eq!(get("no-slash"), None);
        let escaped = r#"{"a~/b":1,"k\"q":2}"#;
        assert_eq!(lookup(escaped, "/a~0~1b").unwrap().unwrap().get(), "1");
        assert_eq!(lookup(escaped, "/k\"q").unwrap().unwrap().get(), "2");
        assert_eq!(lookup(escaped, "").unwrap().unwrap().get(), escaped);
        assert!(lookup("{\"a\":", "/a").is_err());
    }
}
