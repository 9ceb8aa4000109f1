//! Table name patterns: `public.orders`, `public.*`, `audit_*`. A pattern with a dot matches
//! `schema.table`; a pattern without one matches the table name in any schema. A part written
//! in double quotes, as in SQL (`"my.schema"."Odd ""name"""`), is literal: it may hold dots,
//! and `*` and `?` in it match themselves.

/// One part of a pattern (schema or table).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    /// `*` and `?` are wildcards.
    Glob(String),
    /// Written in double quotes: matched exactly.
    Literal(String),
}

impl Part {
    fn matches(&self, name: &str) -> bool {
        match self {
            Part::Glob(p) => glob(p, name),
            Part::Literal(l) => l == name,
        }
    }

    fn exact(&self) -> Option<&str> {
        match self {
            Part::Glob(p) if p.contains(['*', '?']) => None,
            Part::Glob(p) | Part::Literal(p) => Some(p),
        }
    }
}

/// A compiled table pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TablePattern {
    /// The pattern as written, for messages.
    pub text: String,
    schema: Option<Part>,
    table: Part,
}

/// Splits `text` into its dot-separated parts, honouring double quotes.
fn split_parts(text: &str) -> Option<Vec<Part>> {
    let mut parts = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let part = if chars.peek() == Some(&'"') {
            chars.next();
            let mut lit = String::new();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        lit.push('"');
                    }
                    '"' => break,
                    c => lit.push(c),
                }
            }
            Part::Literal(lit)
        } else {
            let mut g = String::new();
            while let Some(&c) = chars.peek() {
                if c == '.' || c == '"' {
                    break;
                }
                g.push(c);
                chars.next();
            }
            Part::Glob(g)
        };
        if matches!(&part, Part::Glob(g) | Part::Literal(g) if g.is_empty()) {
            return None;
        }
        parts.push(part);
        match chars.next() {
            None => return Some(parts),
            Some('.') => {}
            Some(_) => return None,
        }
    }
}

impl TablePattern {
    /// Parses a pattern. Only `*` (any run) and `?` (one character) are special, outside quotes.
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = || {
            format!(
                "{text:?} is not a table pattern (\"schema.table\" or \"table\", with * and ?; \
                 double-quote a name that contains a dot)"
            )
        };
        let mut parts = split_parts(text).ok_or_else(invalid)?;
        let (schema, table) = match parts.len() {
            1 => (None, parts.remove(0)),
            2 => {
                let table = parts.remove(1);
                (Some(parts.remove(0)), table)
            }
            _ => return Err(invalid()),
        };
        Ok(TablePattern {
            text: text.to_owned(),
            schema,
            table,
        })
    }

    pub fn matches(&self, schema: &str, table: &str) -> bool {
        self.schema.as_ref().is_none_or(|s| s.matches(schema)) && self.table.matches(table)
    }

    /// True when the pattern names exactly one table (no wildcard, schema given).
    pub fn exact(&self) -> Option<(&str, &str)> {
        Some((self.schema.as_ref()?.exact()?, self.table.exact()?))
    }
}

/// Glob match over characters with `*` and `?`, by backtracking on the last `*` (linear in
/// practice, never exponential).
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("audit_*", "audit_log"));
        assert!(!glob("audit_*", "xaudit_log"));
        assert!(glob("a?c", "abc"));
        assert!(glob("*_log", "audit_log"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob("orders", "orders"));
        assert!(!glob("orders", "orders2"));
    }

    #[test]
    fn patterns() {
        let p = TablePattern::parse("public.*").unwrap();
        assert!(p.matches("public", "orders"));
        assert!(!p.matches("audit", "orders"));
        let p = TablePattern::parse("audit_*").unwrap();
        assert!(p.matches("any", "audit_x"));
        assert_eq!(p.exact(), None);
        assert_eq!(
            TablePattern::parse("public.orders").unwrap().exact(),
            Some(("public", "orders"))
        );
        assert!(TablePattern::parse("a.b.c").is_err());
        let q = TablePattern::parse(r#""my.schema"."Odd ""x"".*""#).unwrap();
        assert!(q.matches("my.schema", "Odd \"x\".*"));
        assert!(
            !q.matches("my.schema", "Odd \"x\".y"),
            "quoted * is literal"
        );
        assert_eq!(q.exact(), Some(("my.schema", "Odd \"x\".*")));
        let mixed = TablePattern::parse(r#"public."a.b""#).unwrap();
        assert!(mixed.matches("public", "a.b"));
        assert!(TablePattern::parse(r#""unclosed"#).is_err());
        assert!(TablePattern::parse(r#""a"x"#).is_err());
        assert!(TablePattern::parse(r#""""#).is_err());
        assert!(TablePattern::parse(".x").is_err());
        assert!(TablePattern::parse("x.").is_err());
    }
}
