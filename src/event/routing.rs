//! Routing key templates such as `{schema}.{table}.{op}` or `orders.{key.id}.{partition}`,
//! compiled once at start-up so that rendering a key per event is a few string pushes.
//!
//! `{key.<column>}` is the text value of a replica identity column (empty when the event has
//! no key, as for truncates); `{partition}` is [`partition_of`] the key, for tables with
//! `partitions = N`.

use crate::pgoutput::{Datum, Relation, TupleData};

/// One piece of a compiled template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Schema,
    Table,
    Op,
    Key(String),
    Partition,
}

/// A compiled routing key template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingTemplate {
    parts: Vec<Part>,
}

/// Why a template is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error(
        "unknown placeholder {{{0}}} (known: {{schema}}, {{table}}, {{op}}, {{key.<column>}}, {{partition}})"
    )]
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
                "partition" => Part::Partition,
                key if key.starts_with("key.") && key.len() > 4 => Part::Key(key[4..].to_owned()),
                other => return Err(TemplateError::UnknownPlaceholder(other.to_owned())),
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Ok(RoutingTemplate { parts })
    }

    /// True when the template contains `{partition}`.
    pub fn uses_partition(&self) -> bool {
        self.parts.contains(&Part::Partition)
    }

    /// The columns named by `{key.<column>}` placeholders.
    pub fn key_columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Key(c) => Some(c.as_str()),
            _ => None,
        })
    }

    /// Renders the key for one event.
    pub fn render(&self, vars: &RouteVars<'_>) -> String {
        let mut s = String::with_capacity(vars.schema.len() + vars.table.len() + 16);
        for p in &self.parts {
            match p {
                Part::Literal(l) => s.push_str(l),
                Part::Schema => s.push_str(vars.schema),
                Part::Table => s.push_str(vars.table),
                Part::Op => s.push_str(vars.op),
                Part::Partition => {
                    if let Some(n) = vars.partition {
                        s.push_str(&n.to_string());
                    }
                }
                Part::Key(col) => {
                    if let Some((rel, tuple)) = vars.key {
                        let value = rel
                            .columns
                            .iter()
                            .zip(&tuple.columns)
                            .find(|(c, _)| c.name == *col)
                            .and_then(|(_, d)| match d {
                                Datum::Text(b) => std::str::from_utf8(b).ok(),
                                _ => None,
                            });
                        s.push_str(value.unwrap_or(""));
                    }
                }
            }
        }
        s
    }
}

/// What a routing key is rendered from.
pub struct RouteVars<'a> {
    pub schema: &'a str,
    pub table: &'a str,
    pub op: &'a str,
    /// The relation and the tuple holding the event's key, when it has one.
    pub key: Option<(&'a Relation, &'a TupleData<'a>)>,
    pub partition: Option<u32>,
}

/// The partition of a row: 64-bit FNV-1a over the text of its replica identity columns, in
/// column order, each followed by a 0xFF byte (which never occurs in UTF-8), modulo `n`.
/// Stable across releases and platforms, so consumers may compute it too. A row without a key
/// is in partition 0.
pub fn partition_of(key: Option<(&Relation, &TupleData<'_>)>, n: u32) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let Some((rel, tuple)) = key else {
        return 0;
    };
    let mut h = OFFSET;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    };
    for (col, d) in rel.columns.iter().zip(&tuple.columns) {
        if !col.is_key {
            continue;
        }
        if let Datum::Text(bytes) = d {
            bytes.iter().for_each(|b| eat(*b));
        }
        eat(0xFF);
    }
    (h % u64::from(n.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(key: Option<(&'a Relation, &'a TupleData<'a>)>) -> RouteVars<'a> {
        RouteVars {
            schema: "public",
            table: "orders",
            op: "insert",
            key,
            partition: Some(3),
        }
    }

    #[test]
    fn renders_placeholders() {
        let t = RoutingTemplate::parse("cdc.{schema}.{table}.{op}").unwrap();
        assert_eq!(t.render(&vars(None)), "cdc.public.orders.insert");
        assert_eq!(
            RoutingTemplate::parse("fixed").unwrap().render(&vars(None)),
            "fixed"
        );
        let rel = Relation {
            oid: 1,
            schema: "public".into(),
            name: "orders".into(),
            replica_identity: crate::pgoutput::ReplicaIdentity::Default,
            columns: ["id", "name"]
                .iter()
                .map(|n| crate::pgoutput::Column {
                    name: (*n).into(),
                    is_key: *n == "id",
                    type_oid: 23,
                    type_modifier: -1,
                })
                .collect(),
        };
        let tuple = TupleData {
            columns: vec![Datum::Text(b"42"), Datum::Text(b"x")],
        };
        let t = RoutingTemplate::parse("{table}.{key.id}.p{partition}").unwrap();
        assert!(t.uses_partition());
        assert_eq!(t.key_columns().collect::<Vec<_>>(), ["id"]);
        assert_eq!(t.render(&vars(Some((&rel, &tuple)))), "orders.42.p3");
        assert_eq!(t.render(&vars(None)), "orders..p3");
        // The partition depends on the key only, is stable, and spreads keys.
        let p = |id: &'static [u8], name: &'static [u8]| {
            let t = TupleData {
                columns: vec![Datum::Text(id), Datum::Text(name)],
            };
            partition_of(Some((&rel, &t)), 16)
        };
        assert_eq!(p(b"42", b"x"), p(b"42", b"y"));
        let spread: std::collections::HashSet<u32> = (0..200u32)
            .map(|i| {
                let s: &'static [u8] = Box::leak(i.to_string().into_bytes().into_boxed_slice());
                p(s, b"")
            })
            .collect();
        assert_eq!(spread.len(), 16);
        assert_eq!(partition_of(None, 16), 0);
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
