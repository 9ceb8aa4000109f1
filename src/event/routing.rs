//! Routing key templates such as `{schema}.{table}.{op}`, compiled once at start-up so that
//! rendering a key per event is a few string pushes.

/// One piece of a compiled template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Schema,
    Table,
    Op,
}

/// A compiled routing key template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingTemplate {
    parts: Vec<Part>,
}

/// Why a template is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("unknown placeholder {{{0}}} (known: {{schema}}, {{table}}, {{op}})")]
    UnknownPlaceholder(String),
    #[error("unclosed '{{' in template")]
    Unclosed,
}

/// AMQP limits routing keys to 255 bytes (a shortstr).
pub const MAX_ROUTING_KEY_BYTES: usize = 255;

impl RoutingTemplate {
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let close = rest[open..].find('}').ok_or(TemplateError::Unclosed)? + open;
            parts.push(match &rest[open + 1..close] {
                "schema" => Part::Schema,
                "table" => Part::Table,
                "op" => Part::Op,
                other => return Err(TemplateError::UnknownPlaceholder(other.to_owned())),
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Ok(RoutingTemplate { parts })
    }

    /// Renders the key for one event.
    pub fn render(&self, schema: &str, table: &str, op: &str) -> String {
        let mut s = String::with_capacity(schema.len() + table.len() + 16);
        for p in &self.parts {
            match p {
                Part::Literal(l) => s.push_str(l),
                Part::Schema => s.push_str(schema),
                Part::Table => s.push_str(table),
                Part::Op => s.push_str(op),
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_placeholders() {
        let t = RoutingTemplate::parse("cdc.{schema}.{table}.{op}").unwrap();
        assert_eq!(
            t.render("public", "orders", "insert"),
            "cdc.public.orders.insert"
        );
        assert_eq!(
            RoutingTemplate::parse("fixed")
                .unwrap()
                .render("a", "b", "c"),
            "fixed"
        );
    }

    #[test]
    fn rejects_unknown_and_unclosed() {
        assert_eq!(
            RoutingTemplate::parse("{schema}.{tabel}"),
            Err(TemplateError::UnknownPlaceholder("tabel".into()))
        );
        assert_eq!(
            RoutingTemplate::parse("{schema"),
            Err(TemplateError::Unclosed)
        );
    }
}
