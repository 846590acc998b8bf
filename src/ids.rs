//! Identifier newtypes: [`UserId`] and [`SessionId`].
//!
//! Both wrap a UUID, so that a session id can never be passed where a user id
//! belongs. Parsing follows Nakama (gofrs `uuid.FromString`): case-insensitive,
//! and it accepts the canonical 36-character form, 32 plain hex digits, either
//! of those in braces, and either of those behind `urn:uuid:`. Output is always
//! the canonical lowercase form.

use std::fmt;

use uuid::Uuid;

/// The id of a user account (the token's `uid` claim).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct UserId(pub Uuid);

/// The id of one realtime connection. Fresh and random for every socket.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SessionId(pub Uuid);

/// Parses a UUID the way Nakama's Go server does (see the module doc).
pub fn parse_uuid(text: &str) -> Option<Uuid> {
    let inner = text
        .strip_prefix("urn:uuid:")
        .or_else(|| {
            text.strip_prefix('{')
                .and_then(|rest| rest.strip_suffix('}'))
        })
        .unwrap_or(text);
    let bytes = inner.as_bytes();
    let mut out = [0u8; 16];
    match bytes.len() {
        36 => {
            if bytes[8] != b'-' || bytes[13] != b'-' || bytes[18] != b'-' || bytes[23] != b'-' {
                return None;
            }
            let mut nibbles = bytes
                .iter()
                .enumerate()
                .filter(|(i, _)| !matches!(i, 8 | 13 | 18 | 23))
                .map(|(_, b)| *b);
            fill_hex(&mut out, &mut nibbles)?;
        }
        32 => fill_hex(&mut out, &mut bytes.iter().copied())?,
        _ => return None,
    }
    Some(Uuid::from_bytes(out))
}

fn fill_hex(out: &mut [u8; 16], digits: &mut impl Iterator<Item = u8>) -> Option<()> {
    for byte in out.iter_mut() {
        let hi = hex_value(digits.next()?)?;
        let lo = hex_value(digits.next()?)?;
        *byte = (hi << 4) | lo;
    }
    Some(())
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

macro_rules! uuid_newtype {
    ($name:ident) => {
        impl $name {
            /// The all-zero id.
            pub const NIL: $name = $name(Uuid::nil());

            /// Parses any form Nakama accepts (see the module doc).
            pub fn parse(text: &str) -> Option<Self> {
                parse_uuid(text).map($name)
            }

            /// True for the all-zero id.
            pub fn is_nil(&self) -> bool {
                self.0.is_nil()
            }

            /// Writes the canonical lowercase 36-character form into `buf` and returns it.
            pub fn encode<'b>(&self, buf: &'b mut [u8; 36]) -> &'b str {
                self.0.hyphenated().encode_lower(buf)
            }

            /// A 64-bit hash input that is stable across runs (the UUID's high half mixed with its low half).
            pub fn hash_key(&self) -> u64 {
                let (hi, lo) = self.0.as_u64_pair();
                hi ^ lo.rotate_left(32)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }
    };
}

uuid_newtype!(UserId);
uuid_newtype!(SessionId);

impl SessionId {
    /// A fresh random (v4) session id.
    pub fn random() -> Self {
        SessionId(Uuid::new_v4())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANONICAL: &str = "4c2ae592-b2a7-4b5f-9d1b-0a1b2c3d4e5f";

    #[test]
    fn parse_accepts_every_form_gofrs_accepts() {
        let expected = parse_uuid(CANONICAL).expect("canonical");
        let plain = CANONICAL.replace('-', "");
        for form in [
            CANONICAL.to_string(),
            CANONICAL.to_uppercase(),
            plain.clone(),
            format!("{{{CANONICAL}}}"),
            format!("{{{plain}}}"),
            format!("urn:uuid:{CANONICAL}"),
            format!("urn:uuid:{plain}"),
        ] {
            assert_eq!(parse_uuid(&form), Some(expected), "form {form}");
        }
    }

    #[test]
    fn parse_rejects_malformed_ids() {
        for bad in [
            "",
            "not-a-uuid",
            "4c2ae592b2a7-4b5f-9d1b-0a1b2c3d4e5f0",
            "4c2ae592-b2a7-4b5f-9d1b-0a1b2c3d4e5g",
            "{4c2ae592-b2a7-4b5f-9d1b-0a1b2c3d4e5f",
            "urn:uuid:{4c2ae592-b2a7-4b5f-9d1b-0a1b2c3d4e5f}",
            " 4c2ae592-b2a7-4b5f-9d1b-0a1b2c3d4e5f",
            "4c2ae592-b2a7-4b5f-9d1b-0a1b2c3d4é5",
        ] {
            assert_eq!(parse_uuid(bad), None, "input {bad:?}");
        }
    }

    #[test]
    fn encode_is_canonical_lowercase() {
        let id = UserId::parse(&CANONICAL.to_uppercase()).expect("parse");
        let mut buf = [0u8; 36];
        assert_eq!(id.encode(&mut buf), CANONICAL);
        assert_eq!(id.to_string(), CANONICAL);
    }
}
