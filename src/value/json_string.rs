//! JSON string escaping exactly as PostgreSQL's `escape_json()` does it, so a rendered string is
//! byte-for-byte what `to_jsonb(x)::text` prints.

/// Appends `s` as a quoted JSON string.
pub fn write_json_string(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            out.push_str(&format!("\\u{b:04x}"));
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
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
}
