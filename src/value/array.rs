//! Arrays as `to_jsonb()` writes them: PostgreSQL's array text output (`{1,NULL,"a b"}`, nested
//! braces per dimension, an optional `[2:3]=` bounds prefix that to_jsonb ignores) parsed and
//! re-emitted as nested JSON arrays whose elements are rendered by their element type.

use super::{TypeKind, ValueError, write_text_value};

/// Appends the JSON array for `text`, the output of an array whose elements are `elem`.
pub(super) fn write_array(
    out: &mut String,
    text: &str,
    elem: &TypeKind,
    delim: u8,
) -> Result<(), ValueError> {
    let mut p = Parser {
        s: text.as_bytes(),
        text,
        i: 0,
        delim,
    };
    if p.s.first() == Some(&b'[') {
        // Skip the dimension decoration: `[lo:hi][lo:hi]=`.
        let eq = text.find('=').ok_or_else(|| p.err())?;
        p.i = eq + 1;
    }
    p.array(out, elem)?;
    if p.i != p.s.len() {
        return Err(p.err());
    }
    Ok(())
}

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
    delim: u8,
}

impl Parser<'_> {
    fn err(&self) -> ValueError {
        ValueError::BadArray { at: self.i }
    }

    fn array(&mut self, out: &mut String, elem: &TypeKind) -> Result<(), ValueError> {
        if self.s.get(self.i) != Some(&b'{') {
            return Err(self.err());
        }
        self.i += 1;
        out.push('[');
        if self.s.get(self.i) == Some(&b'}') {
            self.i += 1;
            out.push(']');
            return Ok(());
        }
        let mut first = true;
        loop {
            if !first {
                out.push(',');
            }
            first = false;
            match self.s.get(self.i) {
                Some(b'{') => self.array(out, elem)?,
                Some(b'"') => {
                    let v = self.quoted()?;
                    write_text_value(out, elem, &v)?;
                }
                Some(_) => {
                    let start = self.i;
                    while let Some(&c) = self.s.get(self.i) {
                        if c == self.delim || c == b'}' {
                            break;
                        }
                        self.i += 1;
                    }
                    let raw = &self.text[start..self.i];
                    if raw.is_empty() {
                        return Err(self.err());
                    }
                    if raw.eq_ignore_ascii_case("NULL") {
                        out.push_str("null");
                    } else {
                        write_text_value(out, elem, raw)?;
                    }
                }
                None => return Err(self.err()),
            }
            match self.s.get(self.i) {
                Some(&c) if c == self.delim => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    out.push(']');
                    return Ok(());
                }
                _ => return Err(self.err()),
            }
        }
    }

    /// A double-quoted element; backslash escapes the next character.
    fn quoted(&mut self) -> Result<String, ValueError> {
        self.i += 1;
        let mut v = String::new();
        let mut start = self.i;
        loop {
            match self.s.get(self.i) {
                Some(b'"') => {
                    v.push_str(&self.text[start..self.i]);
                    self.i += 1;
                    return Ok(v);
                }
                Some(b'\\') => {
                    v.push_str(&self.text[start..self.i]);
                    self.i += 1;
                    // The escaped character may be multi-byte: copy up to the next boundary.
                    let rest = self.text.get(self.i..).ok_or_else(|| self.err())?;
                    let ch = rest.chars().next().ok_or_else(|| self.err())?;
                    v.push(ch);
                    self.i += ch.len_utf8();
                    start = self.i;
                }
                Some(_) => self.i += 1,
                None => return Err(self.err()),
            }
        }
    }
}
