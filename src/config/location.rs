//! Where a key sits in the config file, and what a deserializer's complaint means, so every
//! config error names the full key path and its line (`service.shutdown_timeout_ms (line 17)`)
//! and never echoes a value: a value can be a URL with a password in it.
//!
//! The scanner understands the TOML this file uses: `[section]` and `[[array.of.tables]]`
//! headers, `key = value` lines (bare or quoted keys, dotted keys) and values that continue on
//! later lines (multi-line arrays and strings). It only locates; the TOML parser decides.

/// One `key = …` of the file: its full path (`filter.table[0].where`) and line (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Located {
    pub path: String,
    pub line: usize,
}

/// Strips TOML quoting from one key part: `"a b"` → `a b`, `'x'` → `x`.
fn unquote(part: &str) -> String {
    let p = part.trim();
    if p.len() >= 2
        && ((p.starts_with('"') && p.ends_with('"')) || (p.starts_with('\'') && p.ends_with('\'')))
    {
        p[1..p.len() - 1].to_owned()
    } else {
        p.to_owned()
    }
}

/// The key before `=` on a line, when the line is a `key = value` (not inside a value).
fn key_of(line: &str) -> Option<String> {
    let t = line.trim_start();
    if t.starts_with('#') || t.starts_with('[') || t.is_empty() {
        return None;
    }
    let mut quote: Option<char> = None;
    for (i, c) in t.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '=') => {
                let key: Vec<String> = t[..i].split('.').map(unquote).collect();
                let key = key.join(".");
                return (!key.is_empty()).then_some(key);
            }
            (None, c) if !(c.is_alphanumeric() || "_-. \t".contains(c)) => return None,
            _ => {}
        }
    }
    None
}

/// Every key of `text`, in order, with its full path and line.
pub(super) fn keys(text: &str) -> Vec<Located> {
    let mut out = Vec::new();
    let mut prefix = String::new();
    let mut arrays: std::collections::HashMap<String, usize> = Default::default();
    let mut open_value = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if open_value {
            // Inside a multi-line array or string: no keys or headers here.
            if t.ends_with(']') || t.ends_with("\"\"\"") || t.ends_with("'''") {
                open_value = false;
            }
            continue;
        }
        if let Some(h) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name: Vec<String> = h.split('.').map(unquote).collect();
            let name = name.join(".");
            let n = arrays.entry(name.clone()).or_insert(0);
            prefix = format!("{name}[{n}]");
            *n += 1;
            continue;
        }
        if let Some(h) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            let name: Vec<String> = h.split('.').map(unquote).collect();
            prefix = name.join(".");
            continue;
        }
        if let Some(key) = key_of(line) {
            let path = if prefix.is_empty() {
                key
            } else {
                format!("{prefix}.{key}")
            };
            out.push(Located { path, line: i + 1 });
            let value = line.split_once('=').map_or("", |(_, v)| v).trim();
            let opens_array = value.starts_with('[') && !value.trim_end().ends_with(']');
            let opens_string = (value.starts_with("\"\"\"")
                && value.matches("\"\"\"").count() == 1)
                || (value.starts_with("'''") && value.matches("'''").count() == 1);
            open_value = opens_array || opens_string;
        }
    }
    out
}

/// The line of `path` in `text`, when the file sets it.
pub(super) fn line_of(text: &str, path: &str) -> Option<usize> {
    keys(text)
        .into_iter()
        .find(|k| k.path == path)
        .map(|k| k.line)
}

/// The key whose value (or name) covers byte `offset` of `text`: the last key that starts at or
/// before it.
pub(super) fn key_at(text: &str, offset: usize) -> Option<Located> {
    let line = text[..offset.min(text.len())].matches('\n').count() + 1;
    keys(text).into_iter().take_while(|k| k.line <= line).last()
}

/// What a serde type name means to a person editing the file.
fn expected(what: &str, key: &str) -> String {
    let unsigned = ["u8", "u16", "u32", "u64", "usize"];
    if unsigned.contains(&what) {
        if key.ends_with("_ms") {
            return "milliseconds as a non-negative integer".into();
        }
        if key.ends_with("_bytes") {
            return "a number of bytes as a non-negative integer".into();
        }
        return "a non-negative integer".into();
    }
    match what {
        "i8" | "i16" | "i32" | "i64" => "an integer".into(),
        "a boolean" => "true or false".into(),
        "a string" => "a string".into(),
        "a sequence" => "a list".into(),
        w if w.starts_with("struct ") || w == "a map" => "a table".into(),
        w => w.replace('`', ""),
    }
}

/// The kind of value serde found (its `Unexpected`), without the value itself.
fn found(unexpected: &str) -> &'static str {
    let u = unexpected.trim();
    if u.starts_with("string") || u.starts_with("char") {
        "a string"
    } else if u.starts_with("integer `-") {
        "a negative number"
    } else if u.starts_with("integer") {
        "an integer"
    } else if u.starts_with("floating point") {
        "a number with a fraction"
    } else if u.starts_with("boolean") {
        "true or false"
    } else if u.starts_with("sequence") {
        "a list"
    } else if u.starts_with("map") {
        "a table"
    } else {
        "a value of another type"
    }
}

/// Rewrites a deserializer's message for `key` so it explains and never quotes a value.
pub(super) fn explain(message: &str, key: &str) -> String {
    let m = message.trim();
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = m.strip_prefix(prefix)
            && let Some((unexpected, exp)) = rest.rsplit_once(", expected ")
        {
            return format!(
                "expected {}, found {}",
                expected(exp, key),
                found(unexpected)
            );
        }
    }
    if let Some(rest) = m.strip_prefix("unknown field ") {
        let name = rest.split('`').nth(1).unwrap_or("");
        let known = rest
            .split_once("expected ")
            .map(|(_, k)| k.replace('`', ""))
            .unwrap_or_default();
        return format!("unknown key {name:?}; expected {known}");
    }
    // Anything else: drop quoted parts, which could be values.
    let mut out = String::new();
    let mut quoted = false;
    for c in m.chars() {
        if c == '"' || c == '`' {
            if !quoted {
                out.push('…');
            }
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# walrelay\n[postgres]\nurl = \"postgres://u:pw@h/db\"\n\n[service]\nshutdown_timeout_ms = \"ten\"\n\
                        [filter]\ninclude = [\n  \"public.a\",\n  \"public.b\",\n]\n[[filter.table]]\nname = \"a\"\n\
                        [[filter.table]]\nname = \"b\"\n\"where\" = \"x = 1\"\n";

    #[test]
    fn every_key_has_its_path_and_line() {
        let k = keys(FILE);
        let paths: Vec<(&str, usize)> = k.iter().map(|k| (k.path.as_str(), k.line)).collect();
        assert_eq!(
            paths,
            [
                ("postgres.url", 3),
                ("service.shutdown_timeout_ms", 6),
                ("filter.include", 8),
                ("filter.table[0].name", 13),
                ("filter.table[1].name", 15),
                ("filter.table[1].where", 16),
            ]
        );
        assert_eq!(line_of(FILE, "filter.table[1].where"), Some(16));
        assert_eq!(line_of(FILE, "rabbitmq.url"), None);
    }

    #[test]
    fn an_offset_finds_the_key_it_belongs_to() {
        let at = FILE.find("\"ten\"").unwrap();
        assert_eq!(
            key_at(FILE, at).unwrap().path,
            "service.shutdown_timeout_ms"
        );
        let inside_array = FILE.find("public.b").unwrap();
        assert_eq!(key_at(FILE, inside_array).unwrap().path, "filter.include");
    }

    #[test]
    fn explanations_never_quote_values() {
        assert_eq!(
            explain(
                "invalid type: string \"ten\", expected u64",
                "service.shutdown_timeout_ms"
            ),
            "expected milliseconds as a non-negative integer, found a string"
        );
        assert_eq!(
            explain(
                "invalid value: integer `-5`, expected usize",
                "rabbitmq.max_in_flight"
            ),
            "expected a non-negative integer, found a negative number"
        );
        assert_eq!(
            explain("invalid type: string \"s3cret\", expected a boolean", "x.y"),
            "expected true or false, found a string"
        );
        let e = explain(
            "unknown field `slott`, expected one of `url`, `slot`",
            "postgres",
        );
        assert_eq!(e, "unknown key \"slott\"; expected one of url, slot");
        let e = explain("something odd with \"a-secret\" inside", "k");
        assert!(!e.contains("a-secret"), "{e}");
    }
}
