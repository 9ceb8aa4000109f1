//! `hstore` values as `to_jsonb()` writes them. hstore defines a cast to json, which
//! `to_jsonb()` uses for non-built-in types: an object whose values are strings or `null`.
//! The input is `hstore_out`'s text: `"a"=>"1", "b"=>NULL`, keys and values always quoted,
//! with `"` and `\` escaped by a backslash.

use super::{ValueError, write_json_string};

/// Appends the JSON object for `text`, an hstore's text output.
pub(super) fn write_hstore(out: &mut String, text: &str) -> Result<(), ValueError> {
    let mut p = Parser { text, i: 0 };
    out.push('{');
    p.skip_space();
    let mut first = true;
    while p.i < text.len() {
        if !first {
            p.expect(",")?;
            p.skip_space();
            out.push(',');
        }
        first = false;
        let key = p.quoted()?;
        p.skip_space();
        p.expect("=>")?;
        p.skip_space();
        write_json_string(out, &key);
        out.push(':');
        if text[p.i..].starts_with("NULL") {
            p.i += 4;
            out.push_str("null");
        } else {
            let value = p.quoted()?;
            write_json_string(out, &value);
        }
        p.skip_space();
    }
    out.push('}');
    Ok(())
}

struct Parser<'a> {
    text: &'a str,
    i: usize,
}

impl Parser<'_> {
    fn err(&self) -> ValueError {
        ValueError::BadHstore { at: self.i }
    }

    fn skip_space(&mut self) {
        while self
            .text
            .as_bytes()
            .get(self.i)
            .is_some_and(|b| b.is_ascii_whitespace())
        {
            self.i += 1;
        }
    }

    fn expect(&mut self, token: &str) -> Result<(), ValueError> {
        if !self.text[self.i..].starts_with(token) {
            return Err(self.err());
        }
        self.i += token.len();
        Ok(())
    }

    fn quoted(&mut self) -> Result<String, ValueError> {
        self.expect("\"")?;
        let mut v = String::new();
        let mut chars = self.text[self.i..].char_indices();
        while let Some((at, c)) = chars.next() {
            match c {
                '"' => {
                    self.i += at + 1;
                    return Ok(v);
                }
                '\\' => v.push(chars.next().ok_or_else(|| self.err())?.1),
                c => v.push(c),
            }
        }
        self.i = self.text.len();
        Err(self.err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(text: &str) -> Result<String, ValueError> {
        let mut out = String::new();
        write_hstore(&mut out, text).map(|_| out)
    }

    #[test]
    fn pairs_become_string_or_null_members() {
        assert_eq!(render("").unwrap(), "{}");
        assert_eq!(
            render(r#""a"=>"1", "b"=>NULL"#).unwrap(),
            r#"{"a":"1","b":null}"#
        );
        assert_eq!(
            render(r#""q\"k"=>"back\\slash", "é"=>"NULL""#).unwrap(),
            r#"{"q\"k":"back\\slash","é":"NULL"}"#
        );
    }

    #[test]
    fn malformed_hstores_are_errors() {
        for bad in [
            r#""a"=>"1"#,
            r#""a"="1""#,
            r#""a"=>"1" "b"=>"2""#,
            "a=>1",
            r#""a"=>"#,
        ] {
            assert!(render(bad).is_err(), "{bad:?}");
        }
    }
}
