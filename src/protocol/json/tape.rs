//! Parsing into simd-json's tape and walking it the way Go's protojson does.
//!
//! Why the tape and not simd-json's object values: those are hash maps, and a
//! map keeps one entry per key, so `{"ping":{},"ping":{}}` would silently
//! pass. protojson rejects duplicate fields, and the tape keeps every key in
//! input order, which also makes the walk allocation-free.
//!
//! This module owns:
//! * the per-thread parser state ([`with_document`]), reused across messages;
//! * [`Value`], [`Fields`] and [`Elements`]: bounds-checked views of the tape;
//! * [`visit_message`]: protojson's field rules (unknown field, duplicate
//!   field in either spelling, `null` means unset);
//! * protojson's scalar rules for the types the protocol uses.

use std::cell::RefCell;

use simd_json::{Buffers, Node, StaticNode, Tape};

use crate::protocol::Malformed;

/// The tape should always be well formed; this is for the impossible case.
const BROKEN_TAPE: Malformed = Malformed("inconsistent JSON tape");

/// Inputs larger than this are parsed with fresh buffers, so that one huge
/// message does not pin its buffers to the thread forever. Herald's frame
/// limit (4 KiB) keeps every real request far below it.
const MAX_REUSED_INPUT: usize = 64 * 1024;

/// One thread's parser state, kept between messages so that a parse
/// allocates nothing once the buffers have grown to the usual message size.
struct Scratch {
    /// simd-json's stage 1 and stage 2 working memory.
    buffers: Buffers,
    /// The node vector of the last tape, emptied and kept for its capacity.
    /// `None` only while a parse is running.
    tape: Option<Tape<'static>>,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            buffers: Buffers::new(4096),
            tape: Some(Tape::null()),
        }
    }

    fn parse<R>(
        &mut self,
        payload: &mut [u8],
        read: impl for<'t, 'i> Fn(Value<'t, 'i>) -> Result<R, Malformed>,
    ) -> Result<R, Malformed> {
        // `reset` empties the vector and re-labels its lifetime, so the
        // allocation survives while the borrowed strings do not.
        let mut tape = self.tape.take().unwrap_or_else(Tape::null).reset();
        let result = match simd_json::fill_tape(payload, &mut self.buffers, &mut tape) {
            Ok(()) => read_root(&tape, read),
            Err(_) => Err(Malformed("invalid JSON")),
        };
        self.tape = Some(tape.reset());
        result
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::new());
}

/// Parses `payload` (in place: string escapes are decoded inside it) and
/// hands the top-level value to `read`.
///
/// Invalid JSON, an empty input and trailing garbage are all [`Malformed`].
pub(super) fn with_document<R>(
    payload: &mut [u8],
    read: impl for<'t, 'i> Fn(Value<'t, 'i>) -> Result<R, Malformed>,
) -> Result<R, Malformed> {
    if payload.len() > MAX_REUSED_INPUT {
        return Scratch::new().parse(payload, read);
    }
    SCRATCH
        .try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => scratch.parse(payload, &read),
            // Only reachable if `read` itself decoded JSON; stay correct anyway.
            Err(_) => Scratch::new().parse(payload, &read),
        })
        // The thread is shutting down and its locals are gone.
        .unwrap_or_else(|_| Scratch::new().parse(payload, &read))
}

fn read_root<R>(
    tape: &Tape<'_>,
    read: impl for<'t, 'i> Fn(Value<'t, 'i>) -> Result<R, Malformed>,
) -> Result<R, Malformed> {
    let (root, rest) = split_value(&tape.0)?;
    if !rest.is_empty() {
        return Err(BROKEN_TAPE);
    }
    read(root)
}

/// One JSON value on the tape: its head node and every node nested in it.
#[derive(Clone, Copy)]
pub(super) struct Value<'t, 'i> {
    /// Never empty: `nodes[0]` is the head.
    nodes: &'t [Node<'i>],
}

/// Splits the value at the front of `nodes` from the nodes after it.
fn split_value<'t, 'i>(
    nodes: &'t [Node<'i>],
) -> Result<(Value<'t, 'i>, &'t [Node<'i>]), Malformed> {
    let width = match nodes.first() {
        Some(Node::Object { count, .. } | Node::Array { count, .. }) => count.saturating_add(1),
        Some(_) => 1,
        None => return Err(BROKEN_TAPE),
    };
    let (value, rest) = nodes.split_at_checked(width).ok_or(BROKEN_TAPE)?;
    Ok((Value { nodes: value }, rest))
}

impl<'t, 'i> Value<'t, 'i> {
    fn head(self) -> Option<Node<'i>> {
        self.nodes.first().copied()
    }

    pub(super) fn is_null(self) -> bool {
        matches!(self.head(), Some(Node::Static(StaticNode::Null)))
    }

    /// The fields of an object, or `None` for any other value.
    pub(super) fn object(self) -> Option<Fields<'t, 'i>> {
        match self.head()? {
            Node::Object { len, .. } => Some(Fields {
                rest: self.nodes.get(1..)?,
                left: len,
            }),
            _ => None,
        }
    }

    /// The elements of an array, or `None` for any other value.
    pub(super) fn array(self) -> Option<Elements<'t, 'i>> {
        match self.head()? {
            Node::Array { len, .. } => Some(Elements {
                rest: self.nodes.get(1..)?,
                left: len,
            }),
            _ => None,
        }
    }

    /// A JSON string (protojson's `string` and `StringValue`).
    pub(super) fn string(self) -> Result<&'i str, Malformed> {
        match self.head() {
            Some(Node::String(text)) => Ok(text),
            _ => Err(Malformed("expected a JSON string")),
        }
    }

    /// A JSON `true` or `false` (protojson's `bool`; no strings, no numbers).
    pub(super) fn bool(self) -> Result<bool, Malformed> {
        match self.head() {
            Some(Node::Static(StaticNode::Bool(value))) => Ok(value),
            _ => Err(Malformed("expected a JSON boolean")),
        }
    }

    /// protojson's `int32`: a JSON number, or a JSON string holding one,
    /// whose value is an integer in range (`3`, `3.0`, `3e0`, `"3"`).
    pub(super) fn int32(self) -> Result<i32, Malformed> {
        const NOT_INT32: Malformed = Malformed("expected an int32");
        let value = match self.head() {
            Some(Node::Static(StaticNode::I64(n))) => i32::try_from(n).ok(),
            Some(Node::Static(StaticNode::U64(n))) => i32::try_from(n).ok(),
            // Go decides on the literal's digits; simd-json has already made a
            // double of them. The two differ only for literals with more
            // significant digits than a double holds (`1.00000000000000001`
            // is rejected by Go, accepted here).
            Some(Node::Static(StaticNode::F64(f)))
                if f.fract() == 0.0 && f >= f64::from(i32::MIN) && f <= f64::from(i32::MAX) =>
            {
                // Exact: the value is integral and in range.
                Some(f as i32)
            }
            Some(Node::String(text)) => int32_from_string(text),
            _ => None,
        };
        value.ok_or(NOT_INT32)
    }
}

/// The fields of a JSON object, in input order, duplicates included.
pub(super) struct Fields<'t, 'i> {
    rest: &'t [Node<'i>],
    left: usize,
}

impl<'t, 'i> Fields<'t, 'i> {
    pub(super) fn next_field(&mut self) -> Result<Option<(&'i str, Value<'t, 'i>)>, Malformed> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let Some((Node::String(key), rest)) = self.rest.split_first() else {
            return Err(BROKEN_TAPE);
        };
        let (value, rest) = split_value(rest)?;
        self.rest = rest;
        Ok(Some((key, value)))
    }

    /// The number of fields not yet visited.
    pub(super) fn len(&self) -> usize {
        self.left
    }
}

/// The elements of a JSON array, in order.
pub(super) struct Elements<'t, 'i> {
    rest: &'t [Node<'i>],
    left: usize,
}

impl<'t, 'i> Elements<'t, 'i> {
    pub(super) fn next_element(&mut self) -> Result<Option<Value<'t, 'i>>, Malformed> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let (value, rest) = split_value(self.rest)?;
        self.rest = rest;
        Ok(Some(value))
    }

    /// The number of elements not yet visited (bounded by the tape's length,
    /// so it is safe to size an allocation with).
    pub(super) fn len(&self) -> usize {
        self.left.min(self.rest.len())
    }
}

/// Walks the JSON object `value` as protojson unmarshals a message:
///
/// * anything but an object (including a JSON `null` at this point) is an error;
/// * a key `field_number` does not know is an unknown field;
/// * the same field number twice, in either spelling, is a duplicate field,
///   also when one of them is `null`; this is checked first, as in Go;
/// * a `null` value then means "not set" and is skipped;
/// * everything else is handed to `visit` with its field number.
///
/// Oneof rules are the caller's, since they apply only to non-null members.
pub(super) fn visit_message<'t, 'i>(
    value: Value<'t, 'i>,
    field_number: fn(&str) -> Option<u8>,
    mut visit: impl FnMut(u8, Value<'t, 'i>) -> Result<(), Malformed>,
) -> Result<(), Malformed> {
    let mut fields = value
        .object()
        .ok_or(Malformed("expected a JSON object for a message"))?;
    let mut seen = 0u64;
    while let Some((key, value)) = fields.next_field()? {
        let number = field_number(key).ok_or(Malformed("unknown field"))?;
        // Field numbers are ours (schema.rs), all below 64.
        let bit = 1u64 << (number & 63);
        if seen & bit != 0 {
            return Err(Malformed("duplicate field"));
        }
        seen |= bit;
        if value.is_null() {
            continue;
        }
        visit(number, value)?;
    }
    Ok(())
}

/// A `repeated string`: an array of JSON strings (a `null` element is an error).
pub(super) fn string_list(value: Value<'_, '_>, out: &mut Vec<String>) -> Result<(), Malformed> {
    let mut elements = value.array().ok_or(Malformed("expected a JSON array"))?;
    out.reserve(elements.len());
    while let Some(element) = elements.next_element()? {
        out.push(element.string()?.to_owned());
    }
    Ok(())
}

/// A `repeated` message: an array of JSON objects, each handed to `read`.
pub(super) fn message_list<'t, 'i>(
    value: Value<'t, 'i>,
    mut read: impl FnMut(Value<'t, 'i>) -> Result<(), Malformed>,
) -> Result<(), Malformed> {
    let mut elements = value.array().ok_or(Malformed("expected a JSON array"))?;
    while let Some(element) = elements.next_element()? {
        read(element)?;
    }
    Ok(())
}

/// A `map<string, string>`: an object with distinct keys and string values.
pub(super) fn string_map(value: Value<'_, '_>) -> Result<(), Malformed> {
    let mut fields = value.object().ok_or(Malformed("expected a JSON object"))?;
    let mut keys = Vec::with_capacity(fields.len().min(64));
    while let Some((key, value)) = fields.next_field()? {
        value.string()?;
        keys.push(key);
    }
    keys.sort_unstable();
    if keys.windows(2).any(|pair| pair.first() == pair.last()) {
        return Err(Malformed("duplicate map key"));
    }
    Ok(())
}

/// protojson's `int32` given as a JSON string, following Go's rules exactly:
/// no surrounding whitespace; the text must begin with one JSON number
/// token, which ends at a delimiter (anything after that is ignored, as Go
/// reads only the first token); the number must be an integer once its
/// exponent is applied.
fn int32_from_string(text: &str) -> Option<i32> {
    if text.trim() != text {
        return None;
    }
    let number = NumberParts::parse(text.as_bytes())?;
    let digits = number.integer_digits()?;
    // At most 20 digits (see `integer_digits`): fits an i128.
    let mut magnitude: i128 = 0;
    for digit in digits {
        magnitude = magnitude * 10 + i128::from(digit - b'0');
    }
    let value = if number.negative {
        -magnitude
    } else {
        magnitude
    };
    i32::try_from(value).ok()
}

/// A JSON number split into its parts, as Go's `parseNumberParts` does.
struct NumberParts<'a> {
    negative: bool,
    /// The integer digits; empty for a leading `0`.
    integer: &'a [u8],
    /// The fraction digits, trailing zeros removed.
    fraction: &'a [u8],
    /// The exponent digits with their sign, if any.
    exponent: &'a [u8],
}

impl<'a> NumberParts<'a> {
    fn parse(input: &'a [u8]) -> Option<NumberParts<'a>> {
        let digits_at = |s: &[u8]| s.iter().take_while(|b| b.is_ascii_digit()).count();
        let (negative, mut s) = match input.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, input),
        };
        let integer = match s.first()? {
            b'0' => {
                s = s.get(1..)?;
                &[][..]
            }
            b'1'..=b'9' => {
                let (integer, rest) = s.split_at_checked(digits_at(s))?;
                s = rest;
                integer
            }
            _ => return None,
        };
        let mut fraction: &[u8] = &[];
        if let [b'.', next, ..] = s {
            if next.is_ascii_digit() {
                let after_dot = s.get(1..)?;
                let (digits, rest) = after_dot.split_at_checked(digits_at(after_dot))?;
                fraction = digits;
                s = rest;
            }
        }
        let mut exponent: &[u8] = &[];
        if let [b'e' | b'E', _, ..] = s {
            let after_e = s.get(1..)?;
            let sign = usize::from(matches!(after_e.first(), Some(b'+' | b'-')));
            let count = sign + digits_at(after_e.get(sign..)?);
            let (digits, rest) = after_e.split_at_checked(count)?;
            exponent = digits;
            s = rest;
        }
        // The token must end at a delimiter (Go's `isNotDelim`).
        if let Some(&next) = s.first() {
            if next.is_ascii_alphanumeric() || matches!(next, b'-' | b'+' | b'.' | b'_') {
                return None;
            }
        }
        while let Some((b'0', rest)) = fraction.split_last() {
            fraction = rest;
        }
        Some(NumberParts {
            negative,
            integer,
            fraction,
            exponent,
        })
    }

    /// The integer's decimal digits with the exponent applied (Go's
    /// `normalizeToIntString`), or `None` when the number is not an integer
    /// or would need more than 20 digits.
    fn integer_digits(&self) -> Option<Vec<u8>> {
        if self.integer.is_empty() && self.fraction.is_empty() {
            return Some(vec![b'0']);
        }
        let exponent = if self.exponent.is_empty() {
            0
        } else {
            std::str::from_utf8(self.exponent)
                .ok()?
                .parse::<i32>()
                .ok()?
        };
        if let Ok(shift) = usize::try_from(exponent) {
            if self.fraction.len() > shift || self.integer.len().saturating_add(shift) > 20 {
                return None;
            }
            let mut digits = Vec::with_capacity(self.integer.len() + shift);
            digits.extend_from_slice(self.integer);
            digits.extend_from_slice(self.fraction);
            digits.resize(self.integer.len() + shift, b'0');
            Some(digits)
        } else {
            if !self.fraction.is_empty() {
                return None;
            }
            let cut = usize::try_from(exponent.unsigned_abs()).ok()?;
            let keep = self.integer.len().checked_sub(cut)?;
            let (kept, dropped) = self.integer.split_at_checked(keep)?;
            dropped.iter().all(|&d| d == b'0').then(|| kept.to_vec())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<R>(
        text: &str,
        read: impl for<'t, 'i> Fn(Value<'t, 'i>) -> Result<R, Malformed>,
    ) -> Result<R, Malformed> {
        let mut bytes = text.as_bytes().to_vec();
        with_document(&mut bytes, read)
    }

    fn int32_of(text: &str) -> Result<i32, Malformed> {
        parse(text, |root| {
            let mut fields = root.object().ok_or(Malformed("not an object"))?;
            let (_, value) = fields.next_field()?.ok_or(Malformed("empty"))?;
            value.int32()
        })
    }

    #[test]
    fn int32_accepts_what_go_accepts() {
        for (text, expected) in [
            (r#"{"n":3}"#, 3),
            (r#"{"n":-0}"#, 0),
            (r#"{"n":3.0}"#, 3),
            (r#"{"n":1e2}"#, 100),
            (r#"{"n":1.5e1}"#, 15),
            (r#"{"n":-2147483648}"#, i32::MIN),
            (r#"{"n":2147483647}"#, i32::MAX),
            (r#"{"n":"3"}"#, 3),
            (r#"{"n":"-3"}"#, -3),
            (r#"{"n":"3.0"}"#, 3),
            (r#"{"n":"300e-2"}"#, 3),
            (r#"{"n":"0.05e2"}"#, 5),
            (r#"{"n":"0e5"}"#, 0),
            (r#"{"n":"-0.0"}"#, 0),
            (r#"{"n":"3 4"}"#, 3),
            (r#"{"n":"3,"}"#, 3),
            (r#"{"n":"-2147483648"}"#, i32::MIN),
        ] {
            assert_eq!(int32_of(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn int32_rejects_what_go_rejects() {
        for text in [
            r#"{"n":3.5}"#,
            r#"{"n":2147483648}"#,
            r#"{"n":-2147483649}"#,
            r#"{"n":1e10}"#,
            r#"{"n":true}"#,
            r#"{"n":[]}"#,
            r#"{"n":{}}"#,
            r#"{"n":""}"#,
            r#"{"n":" 3"}"#,
            r#"{"n":"3 "}"#,
            r#"{"n":"3x"}"#,
            r#"{"n":"03"}"#,
            r#"{"n":"+3"}"#,
            r#"{"n":".5"}"#,
            r#"{"n":"3."}"#,
            r#"{"n":"35e-1"}"#,
            r#"{"n":"1e-1"}"#,
            r#"{"n":"0.5"}"#,
            r#"{"n":"2147483648"}"#,
            r#"{"n":"1e400"}"#,
            r#"{"n":"1e99999999999"}"#,
            r#"{"n":"-"}"#,
            r#"{"n":"x"}"#,
        ] {
            assert!(int32_of(text).is_err(), "{text}");
        }
    }

    #[test]
    fn parse_rejects_empty_input_and_trailing_garbage() {
        for text in ["", " ", "{} x", "{}{}", "{", "}"] {
            assert_eq!(
                parse(text, |_| Ok(())),
                Err(Malformed("invalid JSON")),
                "{text:?}"
            );
        }
    }

    #[test]
    fn the_reused_tape_survives_many_documents_of_varying_size() {
        for size in [0usize, 1, 1000, 10, 70_000, 3] {
            let text = format!("[{}]", vec!["1"; size].join(","));
            let count = parse(&text, |root| {
                let mut elements = root.array().ok_or(Malformed("not an array"))?;
                let mut count = 0;
                while elements.next_element()?.is_some() {
                    count += 1;
                }
                Ok(count)
            });
            assert_eq!(count, Ok(size));
        }
    }

    #[test]
    fn string_maps_reject_duplicate_keys_and_non_string_values() {
        let map = |text: &str| parse(text, string_map);
        assert_eq!(map(r#"{"a":"1","b":"2"}"#), Ok(()));
        assert_eq!(map("{}"), Ok(()));
        assert!(map(r#"{"a":"1","a":"2"}"#).is_err());
        assert!(map(r#"{"a":"1","\u0061":"2"}"#).is_err());
        assert!(map(r#"{"a":null}"#).is_err());
        assert!(map(r#"{"a":1}"#).is_err());
        assert!(map(r#"[]"#).is_err());
    }
}
