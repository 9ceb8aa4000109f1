//! Table name patterns: `public.orders`, `public.*`, `audit_*`. A pattern with a dot matches
//! `schema.table`; a pattern without one matches the table name in any schema.

/// A compiled table pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TablePattern {
    /// The pattern as written, for messages.
    pub text: String,
    schema: Option<String>,
    table: String,
}

impl TablePattern {
    /// Parses a pattern. Only `*` (any run) and `?` (one character) are special.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (schema, table) = match text.split_once('.') {
            Some((s, t)) => (Some(s.to_owned()), t.to_owned()),
            None => (None, text.to_owned()),
        };
        if table.is_empty() || schema.as_deref() == Some("") || table.contains('.') {
            return Err(format!(
                "{text:?} is not a table pattern (\"schema.table\" or \"table\", with * and ?)"
            ));
        }
        Ok(TablePattern {
            text: text.to_owned(),
            schema,
            table,
        })
    }

    pub fn matches(&self, schema: &str, table: &str) -> bool {
        self.schema.as_deref().is_none_or(|s| glob(s, schema)) && glob(&self.table, table)
    }

    /// True when the pattern names exactly one table (no wildcard, schema given).
    pub fn exact(&self) -> Option<(&str, &str)> {
        let wild = |s: &str| s.contains(['*', '?']);
        match &self.schema {
            Some(s) if !wild(s) && !wild(&self.table) => Some((s, &self.table)),
            _ => None,
        }
    }
}

/// Glob match over characters with `*` and `?`, by backtracking on the last `*` (linear in
/// practice, never exponential).
pub fn glob(pattern: &str, text: &str) -> bool {
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
        assert!(TablePattern::parse(".x").is_err());
        assert!(TablePattern::parse("x.").is_err());
    }
}
