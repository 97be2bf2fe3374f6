//! Protobuf's encoding, read: a field's key (number and wire type), varints, fixed-size values and
//! length-delimited ones (<https://protobuf.dev/programming-guides/encoding/>). What the values
//! mean is the writer's business (`json`).

use super::super::text::Misfit;
use super::super::wire::{self, VarintError};
use super::plan::FieldKind;

/// One value of a field as it is on the wire.
#[derive(Debug, Clone, Copy)]
pub(super) enum Raw<'a> {
    Varint(u64),
    Fixed64(u64),
    Len(&'a [u8]),
    Fixed32(u32),
}

pub(super) fn ends_early() -> Misfit {
    Misfit::new("the message ends early")
}

pub(super) fn varint(input: &mut &[u8]) -> Result<u64, Misfit> {
    wire::varint(input, 10).map_err(|e| match e {
        VarintError::Ends => ends_early(),
        VarintError::TooLong => Misfit::new("a varint longer than 10 bytes"),
    })
}

pub(super) fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], Misfit> {
    if n > input.len() {
        return Err(ends_early());
    }
    let (taken, rest) = input.split_at(n);
    *input = rest;
    Ok(taken)
}

pub(super) fn fixed<const N: usize>(input: &mut &[u8]) -> Result<[u8; N], Misfit> {
    let b = take(input, N)?;
    b.try_into().map_err(|_| ends_early())
}

/// Reads the next field of a message: its number and value.
pub(super) fn next<'a>(input: &mut &'a [u8]) -> Result<(u32, Raw<'a>), Misfit> {
    let key = varint(input)?;
    let number = u32::try_from(key >> 3)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| Misfit::new(format!("field number {}", key >> 3)))?;
    let raw = match key & 7 {
        0 => Raw::Varint(varint(input)?),
        1 => Raw::Fixed64(u64::from_le_bytes(fixed(input)?)),
        2 => {
            let n = varint(input)?;
            Raw::Len(take(input, usize::try_from(n).unwrap_or(usize::MAX))?)
        }
        5 => Raw::Fixed32(u32::from_le_bytes(fixed(input)?)),
        w => {
            return Err(Misfit::new(format!(
                "field {number} has wire type {w} (groups are not read)"
            )))
        }
    };
    Ok((number, raw))
}

pub(super) fn len<'a>(raw: Raw<'a>, kind: &FieldKind) -> Result<&'a [u8], Misfit> {
    match raw {
        Raw::Len(b) => Ok(b),
        raw => Err(wrong_wire_type(kind, raw)),
    }
}

pub(super) fn utf8(b: &[u8]) -> Result<&str, Misfit> {
    std::str::from_utf8(b).map_err(|e| Misfit::new(format!("a string: {e}")))
}

pub(super) fn wrong_wire_type(kind: &FieldKind, raw: Raw<'_>) -> Misfit {
    let wire = match raw {
        Raw::Varint(_) => "a varint",
        Raw::Fixed64(_) => "a 64-bit value",
        Raw::Len(_) => "a length-delimited value",
        Raw::Fixed32(_) => "a 32-bit value",
    };
    let kind = match kind {
        FieldKind::Message(_) => "message".to_owned(),
        FieldKind::Enum(_) => "enum".to_owned(),
        other => format!("{other:?}").to_lowercase(),
    };
    Misfit::new(format!("{wire} for a {kind} field"))
}
