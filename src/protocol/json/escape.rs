//! JSON string escaping, byte for byte as Go's protojson writes strings.
//!
//! Go escapes only `"`, `\` and the control characters below U+0020 (`\b`,
//! `\f`, `\n`, `\r`, `\t` by name, the rest as `\u00xx` with lowercase hex).
//! Everything else goes out raw: `<`, `>`, `&`, DEL, U+2028, U+2029 and all
//! other non-ASCII text. Rust strings are valid UTF-8, so Go's invalid-UTF-8
//! error cannot arise.
//!
//! Statuses and usernames rarely need escaping, so the escaper scans eight
//! bytes at a time for a byte that does and copies the clean runs whole.

/// Appends `text` to `out` as a quoted JSON string.
pub(super) fn push_string(text: &str, out: &mut Vec<u8>) {
    out.reserve(text.len() + 2);
    out.push(b'"');
    let mut rest = text.as_bytes();
    while let Some(at) = find_escape(rest) {
        let Some((run, tail)) = rest.split_at_checked(at) else {
            break;
        };
        out.extend_from_slice(run);
        let Some((&byte, tail)) = tail.split_first() else {
            break;
        };
        push_escape(byte, out);
        rest = tail;
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// Bit tricks over a little-endian word of eight bytes ("Bit Twiddling
/// Hacks", `haszero`/`hasless`). Each test is exact for the word as a
/// whole, though not per byte, which is all that is asked of it.
const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

fn word_needs_escape(word: u64) -> bool {
    let below = |word: u64, n: u64| word.wrapping_sub(ONES * n) & !word & HIGHS;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    (below(word, 0x20) | below(quote, 1) | below(backslash, 1)) != 0
}

/// The index of the first byte of `bytes` that must be escaped.
fn find_escape(bytes: &[u8]) -> Option<usize> {
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let word = <[u8; 8]>::try_from(chunk).map_or(0, u64::from_le_bytes);
        if word_needs_escape(word) {
            return chunk
                .iter()
                .position(|&b| needs_escape(b))
                .map(|at| offset + at);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| needs_escape(b))
        .map(|at| offset + at)
}

fn push_escape(byte: u8, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let named = match byte {
        b'"' => b'"',
        b'\\' => b'\\',
        0x08 => b'b',
        0x0c => b'f',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        _ => {
            // Only control characters get here: below 0x20, so two hex digits.
            let high = HEX.get(usize::from(byte >> 4)).copied().unwrap_or(b'0');
            let low = HEX.get(usize::from(byte & 0xf)).copied().unwrap_or(b'0');
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', high, low]);
            return;
        }
    };
    out.extend_from_slice(&[b'\\', named]);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn escaped(text: &str) -> String {
        let mut out = Vec::new();
        push_string(text, &mut out);
        String::from_utf8(out).expect("escaped output is UTF-8")
    }

    #[test]
    fn quotes_and_backslashes_are_escaped() {
        assert_eq!(escaped(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(escaped(""), r#""""#);
    }

    #[test]
    fn named_control_characters_use_their_short_escapes() {
        assert_eq!(escaped("\u{8}\u{c}\n\r\t"), r#""\b\f\n\r\t""#);
    }

    #[test]
    fn other_control_characters_use_lowercase_u_escapes() {
        assert_eq!(escaped("\0"), r#""\u0000""#);
        assert_eq!(escaped("\u{1}\u{b}\u{1f}"), r#""\u0001\u000b\u001f""#);
        assert_eq!(escaped("\u{1a}"), r#""\u001a""#);
    }

    #[test]
    fn html_characters_del_and_line_separators_are_raw() {
        let text = "<a href=\"x\">&amp;</a>\u{7f}\u{2028}\u{2029}";
        assert_eq!(
            escaped(text),
            "\"<a href=\\\"x\\\">&amp;</a>\u{7f}\u{2028}\u{2029}\""
        );
    }

    #[test]
    fn non_ascii_text_is_raw() {
        assert_eq!(escaped("héllo wörld 😀 日本"), "\"héllo wörld 😀 日本\"");
    }

    #[test]
    fn escapes_are_found_at_every_offset_of_a_word() {
        for len in 0..20 {
            for at in 0..len {
                let mut text = "x".repeat(len);
                text.replace_range(at..at + 1, "\"");
                let expected = format!("\"{}\\\"{}\"", "x".repeat(at), "x".repeat(len - at - 1));
                assert_eq!(escaped(&text), expected, "len {len} at {at}");
            }
        }
    }

    #[test]
    fn bytes_near_the_escape_set_are_not_escaped() {
        // Neighbours of 0x1f, 0x22 and 0x5c, and high bytes, inside whole words.
        let text = " !#$[]^~ é€ \u{80}\u{ff}";
        assert_eq!(escaped(text), format!("\"{text}\""));
    }

    proptest! {
        #[test]
        fn escaping_agrees_with_serde_json(text in any::<String>()) {
            // serde_json escapes exactly Go's set, and also uses lowercase hex.
            let expected = serde_json::to_string(&text).expect("serialize");
            prop_assert_eq!(escaped(&text), expected);
        }

        #[test]
        fn escaped_strings_parse_back(text in "[\"\\\\\\x00-\\x1f a-z<>&\u{2028}é😀]{0,40}") {
            let parsed: String = serde_json::from_str(&escaped(&text)).expect("parse");
            prop_assert_eq!(parsed, text);
        }
    }
}
