//! Routing key templates such as `{schema}.{table}.{op}` or `orders.{key.id}.{partition}`,
//! compiled once at start-up so that rendering a key per event is a few string pushes.
//!
//! `{key.<column>}` is the text value of one of the row's key columns (empty when the event has
//! no key, as for truncates); `{partition}` is [`partition_of`] the key, for tables with
//! `partitions = N`.
//!
//! A topic exchange splits routing keys into words at `.`, so every value put in a placeholder
//! is escaped: `%` becomes `%25` and `.` becomes `%2E` (a table `my.table` routes as
//! `public.my%2Etable.insert`, one word). Only the template's own dots separate words.
//!
//! Key values are the text PostgreSQL sent, except that a `numeric` key is normalized
//! (trailing fractional zeros removed: `1.50` → `1.5`), because `1.5` and `1.50` are the same
//! key to a unique index: an update that rewrites `1.50` as `1.5` must not move the row to
//! another partition.

use crate::pgoutput::{Datum, Relation, TupleData};

/// `numeric`'s type OID.
const NUMERIC_OID: u32 = 1700;

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
                Part::Schema => push_escaped(&mut s, vars.schema),
                Part::Table => push_escaped(&mut s, vars.table),
                Part::Op => s.push_str(vars.op),
                Part::Partition => {
                    if let Some(n) = vars.partition {
                        s.push_str(&n.to_string());
                    }
                }
                Part::Key(col) => {
                    if let Some(key) = &vars.key {
                        let value = key
                            .values()
                            .find(|(c, _)| c.name == *col)
                            .and_then(|(c, d)| key_text(c.type_oid, d));
                        push_escaped(&mut s, value.unwrap_or(""));
                    }
                }
            }
        }
        s
    }
}

/// Appends `value` with `%` and `.` escaped (see the module docs).
fn push_escaped(out: &mut String, value: &str) {
    // Most names have neither: one scan and one copy (this runs for every event).
    if !value.bytes().any(|b| b == b'%' || b == b'.') {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '%' => out.push_str("%25"),
            '.' => out.push_str("%2E"),
            c => out.push(c),
        }
    }
}

/// The text of one key value for routing and partitioning: as sent, with `numeric` normalized;
/// `None` for NULL or a value not sent as text.
fn key_text<'a>(type_oid: u32, d: &'a Datum<'_>) -> Option<&'a str> {
    let Datum::Text(bytes) = d else {
        return None;
    };
    let text = std::str::from_utf8(bytes).ok()?;
    if type_oid == NUMERIC_OID && text.contains('.') && !text.contains(['e', 'E']) {
        let trimmed = text.trim_end_matches('0').trim_end_matches('.');
        let trimmed = if trimmed == "-0" { "0" } else { trimmed };
        return Some(trimmed);
    }
    Some(text)
}

/// The key of one row: the relation, the key's column positions and the tuple holding them.
#[derive(Clone, Copy)]
pub struct KeyRef<'a> {
    pub rel: &'a Relation,
    /// Positions in `rel.columns`, ascending.
    pub columns: &'a [usize],
    pub tuple: &'a TupleData<'a>,
}

impl<'a> KeyRef<'a> {
    /// The key's columns with their values, in column order.
    fn values(&self) -> impl Iterator<Item = (&'a crate::pgoutput::Column, &'a Datum<'a>)> + '_ {
        self.columns
            .iter()
            .filter_map(|&i| Some((self.rel.columns.get(i)?, self.tuple.columns.get(i)?)))
    }
}

/// What a routing key is rendered from.
pub struct RouteVars<'a> {
    pub schema: &'a str,
    pub table: &'a str,
    pub op: &'a str,
    /// The event's key, when it has one.
    pub key: Option<KeyRef<'a>>,
    pub partition: Option<u32>,
}

/// The partition of a row: its [`key_hash`] modulo `n`. Stable across releases and
/// platforms, so consumers may compute it too. A row without a key is in partition 0.
pub fn partition_of(key: Option<KeyRef<'_>>, n: u32) -> u32 {
    key.map_or(0, |k| partition_by_hash(key_hash(k), n))
}

/// Partition `0..n` of a key hash (the super stream sink and `{partition}` agree on it).
pub fn partition_by_hash(hash: u64, n: u32) -> u32 {
    (hash % u64::from(n.max(1))) as u32
}

/// A row's key hash: 64-bit FNV-1a over the text of its key columns (see `key_text`), in
/// column order, each followed by a 0xFF byte (which never occurs in UTF-8).
pub fn key_hash(key: KeyRef<'_>) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    };
    for (col, d) in key.values() {
        if let Some(text) = key_text(col.type_oid, d) {
            text.bytes().for_each(&mut eat);
        }
        eat(0xFF);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(key: Option<KeyRef<'a>>) -> RouteVars<'a> {
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
        let key = |tuple| KeyRef {
            rel: &rel,
            columns: &[0],
            tuple,
        };
        assert_eq!(t.render(&vars(Some(key(&tuple)))), "orders.42.p3");
        assert_eq!(t.render(&vars(None)), "orders..p3");
        // The partition depends on the key only, is stable, and spreads keys.
        let p = |id: &'static [u8], name: &'static [u8]| {
            let t = TupleData {
                columns: vec![Datum::Text(id), Datum::Text(name)],
            };
            partition_of(
                Some(KeyRef {
                    rel: &rel,
                    columns: &[0],
                    tuple: &t,
                }),
                16,
            )
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
    fn names_and_values_are_escaped_so_dots_never_split_words() {
        let t = RoutingTemplate::parse("{schema}.{table}.{op}.{key.email}").unwrap();
        let rel = Relation {
            oid: 1,
            schema: "My.Schema".into(),
            name: "50%.off".into(),
            replica_identity: crate::pgoutput::ReplicaIdentity::Default,
            columns: vec![crate::pgoutput::Column {
                name: "email".into(),
                is_key: true,
                type_oid: 25,
                type_modifier: -1,
            }],
        };
        let tuple = TupleData {
            columns: vec![Datum::Text(b"a@b.com")],
        };
        let key = KeyRef {
            rel: &rel,
            columns: &[0],
            tuple: &tuple,
        };
        let rk = t.render(&RouteVars {
            schema: &rel.schema,
            table: &rel.name,
            op: "insert",
            key: Some(key),
            partition: None,
        });
        assert_eq!(rk, "My%2ESchema.50%25%2Eoff.insert.a@b%2Ecom");
        assert_eq!(rk.split('.').count(), 4, "one word per placeholder");
        let unicode = t.render(&RouteVars {
            schema: "schéma",
            table: "table with spaces",
            op: "delete",
            key: None,
            partition: None,
        });
        assert_eq!(unicode, "schéma.table with spaces.delete.");
    }

    #[test]
    fn equal_numeric_keys_route_and_partition_alike() {
        let rel = Relation {
            oid: 1,
            schema: "public".into(),
            name: "acct".into(),
            replica_identity: crate::pgoutput::ReplicaIdentity::Full,
            columns: vec![crate::pgoutput::Column {
                name: "id".into(),
                is_key: true,
                type_oid: NUMERIC_OID,
                type_modifier: -1,
            }],
        };
        let t = RoutingTemplate::parse("{key.id}").unwrap();
        let render = |text: &'static [u8]| {
            let tuple = TupleData {
                columns: vec![Datum::Text(text)],
            };
            let key = KeyRef {
                rel: &rel,
                columns: &[0],
                tuple: &tuple,
            };
            let vars = RouteVars {
                schema: "public",
                table: "acct",
                op: "update",
                key: Some(key),
                partition: None,
            };
            (t.render(&vars), partition_of(Some(key), 8))
        };
        assert_eq!(render(b"1.50"), render(b"1.5"));
        assert_eq!(render(b"1.000"), render(b"1"));
        assert_eq!(render(b"-0.00"), render(b"0"));
        assert_eq!(render(b"1.50").0, "1%2E5");
        assert_eq!(render(b"100").0, "100", "integers keep their zeros");
        assert_eq!(render(b"NaN").0, "NaN");
        assert_ne!(render(b"10").0, render(b"1").0);
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
