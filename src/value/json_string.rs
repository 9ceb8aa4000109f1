//! JSON string escaping exactly as PostgreSQL's `escape_json()` does it, so a rendered string is
//! byte-for-byte what `to_jsonb(x)::text` prints.
//!
//! Every text value and every column name of every event goes through here, and most hold
//! nothing to escape: the scan tests eight bytes at a time and copies runs in one go.

/// Appends `s` as a quoted JSON string.
pub fn write_json_string(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(chunk) = bytes.get(i..i + 8) {
            let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            if !needs_escape(word) {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        if let Some(esc) = escape(b) {
            // `b` is ASCII, so `start..i` and `i + 1..` are on character boundaries.
            out.push_str(&s[start..i]);
            match esc {
                Escape::Short(e) => out.push_str(e),
                Escape::Unicode => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.push_str("\\u00");
                    out.push(char::from(HEX[usize::from(b >> 4)]));
                    out.push(char::from(HEX[usize::from(b & 0xF)]));
                }
            }
            start = i + 1;
        }
        i += 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

enum Escape {
    Short(&'static str),
    /// `\u00XX`: the other control characters.
    Unicode,
}

fn escape(b: u8) -> Option<Escape> {
    Some(match b {
        b'"' => Escape::Short("\\\""),
        b'\\' => Escape::Short("\\\\"),
        b'\n' => Escape::Short("\\n"),
        b'\r' => Escape::Short("\\r"),
        b'\t' => Escape::Short("\\t"),
        0x08 => Escape::Short("\\b"),
        0x0c => Escape::Short("\\f"),
        0..=0x1f => Escape::Unicode,
        _ => return None,
    })
}

/// True when one of the eight bytes of `word` is a control character, `"` or `\`. Exact: the
/// zero-byte test below has false positives only above a byte that really matches.
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte below 0x20 (bytes of 0x80 and above never set the high bit of the result).
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let quote = zero(word ^ (ONES * u64::from(b'"')));
    let backslash = zero(word ^ (ONES * u64::from(b'\\')));
    (control | quote | backslash) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_postgres() {
        let mut out = String::new();
        write_json_string(&mut out, "a\"b\\c\nd\te\u{1}f\u{8}é");
        assert_eq!(out, "\"a\\\"b\\\\c\\nd\\te\\u0001f\\bé\"");
    }

    /// The byte-at-a-time escaping the word scan replaced, kept as the reference.
    fn reference(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    #[test]
    fn every_byte_at_every_position_of_a_word() {
        for b in 0u8..0x80 {
            for at in 0..17 {
                let mut s = "x".repeat(17);
                s.replace_range(at..=at, &char::from(b).to_string());
                let mut out = String::new();
                write_json_string(&mut out, &s);
                assert_eq!(out, reference(&s), "byte {b:#x} at {at}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn escapes_as_the_reference_does(s in "(\\PC|[\\x00-\\x1f\"\\\\]){0,40}") {
            let mut out = String::new();
            write_json_string(&mut out, &s);
            proptest::prop_assert_eq!(out, reference(&s));
        }

        #[test]
        fn the_word_test_is_exact(word: u64) {
            let bytes = word.to_le_bytes();
            let expected = bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
            proptest::prop_assert_eq!(needs_escape(word), expected);
        }
    }
}
