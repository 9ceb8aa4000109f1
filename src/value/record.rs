//! Composite (row) values as `to_jsonb()` writes them: an object of the type's attributes in
//! order, each rendered by its own type, NULL as `null`. The input is `record_out`'s text:
//! `(1,,"a b","say ""hi""")` — an empty field is NULL, `""` inside quotes is a quote, and a
//! backslash escapes the next character (as `record_in` reads it).

use super::{Field, ValueError, write_json_string, write_text_value};

/// Appends the JSON object for `text`, the output of a composite with `fields`.
pub(super) fn write_record(
    out: &mut String,
    text: &str,
    fields: &[Field],
) -> Result<(), ValueError> {
    let bad = |at: usize| ValueError::BadRecord { at };
    let s = text.as_bytes();
    if s.first() != Some(&b'(') {
        return Err(bad(0));
    }
    let mut i = 1;
    out.push('{');
    for (n, field) in fields.iter().enumerate() {
        if n > 0 {
            match s.get(i) {
                Some(b',') => {}
                // Well-formed, but ends before the known attributes do.
                Some(b')') if i + 1 == s.len() => {
                    return Err(ValueError::RecordShape {
                        known: fields.len(),
                    });
                }
                _ => return Err(bad(i)),
            }
            i += 1;
            out.push(',');
        }
        write_json_string(out, &field.name);
        out.push(':');
        let (value, next) = field_text(text, i).ok_or(bad(i))?;
        i = next;
        match value {
            None => out.push_str("null"),
            Some(v) => write_text_value(out, &field.kind, &v)?,
        }
    }
    if s.get(i) == Some(&b',') && count_fields(text).is_some() {
        // Well-formed, with attributes beyond the known ones.
        return Err(ValueError::RecordShape {
            known: fields.len(),
        });
    }
    if s.get(i) != Some(&b')') || i + 1 != s.len() {
        return Err(bad(i));
    }
    out.push('}');
    Ok(())
}

/// The number of fields of a well-formed record text, or None when it is malformed.
fn count_fields(text: &str) -> Option<usize> {
    let s = text.as_bytes();
    if s.first() != Some(&b'(') {
        return None;
    }
    let (mut i, mut n) = (1, 0);
    loop {
        let (_, next) = field_text(text, i)?;
        n += 1;
        match s.get(next) {
            Some(b',') => i = next + 1,
            Some(b')') if next + 1 == s.len() => return Some(n),
            _ => return None,
        }
    }
}

/// One field starting at byte `i`: its value (None for NULL) and the index of the `,` or `)`
/// that ends it. None when the text ends inside the field.
fn field_text(text: &str, mut i: usize) -> Option<(Option<String>, usize)> {
    let s = text.as_bytes();
    let mut v = String::new();
    let mut quoted = false;
    let mut any = false;
    loop {
        let &c = s.get(i)?;
        if !quoted && (c == b',' || c == b')') {
            return Some((any.then_some(v), i));
        }
        any = true;
        match c {
            b'\\' => {
                let ch = text.get(i + 1..)?.chars().next()?;
                v.push(ch);
                i += 1 + ch.len_utf8();
            }
            b'"' if quoted && s.get(i + 1) == Some(&b'"') => {
                v.push('"');
                i += 2;
            }
            b'"' => {
                quoted = !quoted;
                i += 1;
            }
            _ => {
                let ch = text.get(i..)?.chars().next()?;
                v.push(ch);
                i += ch.len_utf8();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::TypeKind;
    use super::*;

    fn fields() -> Vec<Field> {
        [
            ("n", TypeKind::Number),
            ("s", TypeKind::Text),
            ("b", TypeKind::Bool),
        ]
        .into_iter()
        .map(|(name, kind)| Field {
            name: name.into(),
            kind,
        })
        .collect()
    }

    fn render(text: &str) -> Result<String, ValueError> {
        let mut out = String::new();
        write_record(&mut out, text, &fields()).map(|_| out)
    }

    #[test]
    fn fields_render_by_type_and_empty_is_null() {
        assert_eq!(
            render("(1,abc,t)").unwrap(),
            r#"{"n":1,"s":"abc","b":true}"#
        );
        assert_eq!(render("(,,)").unwrap(), r#"{"n":null,"s":null,"b":null}"#);
        assert_eq!(
            render(r#"(2,"",f)"#).unwrap(),
            r#"{"n":2,"s":"","b":false}"#
        );
    }

    #[test]
    fn quoting_follows_record_out() {
        assert_eq!(
            render(r#"(3,"say ""hi"", (ok)",t)"#).unwrap(),
            r#"{"n":3,"s":"say \"hi\", (ok)","b":true}"#
        );
        assert_eq!(
            render(r#"(3,"a\\b",t)"#).unwrap(),
            r#"{"n":3,"s":"a\\b","b":true}"#
        );
        assert_eq!(
            render("(3,é ü,t)").unwrap(),
            r#"{"n":3,"s":"é ü","b":true}"#
        );
    }

    #[test]
    fn a_different_attribute_count_is_a_shape_error_not_a_parse_error() {
        let shape = Err(ValueError::RecordShape { known: 3 });
        assert_eq!(render("(1,2)"), shape);
        assert_eq!(render("(1,2,t,x)"), shape);
        assert_eq!(render("(1,\"a,b\",t,\"x)\")"), shape);
        assert_eq!(render("(1,\"a,b\")"), shape);
    }

    #[test]
    fn malformed_records_are_errors() {
        for bad in [
            "",
            "1,2,3",
            "(1,2,t",
            "(1,2,t)x",
            "(1,\"open,t)",
            "(1,2,\\",
            "(1,2,t,",
            "(1,2,t,\"x",
        ] {
            assert!(
                matches!(render(bad), Err(ValueError::BadRecord { .. })),
                "{bad:?}"
            );
        }
    }
}
