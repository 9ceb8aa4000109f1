//! How events name a table and identify its rows: the name consumers see (a partition's root,
//! not the partition), and the `key` columns — the row's identity as users understand it (the
//! primary key), independent of the table's REPLICA IDENTITY. Resolved once per relation from
//! the pgoutput description and the catalog's facts.

use crate::pgoutput::{Relation, ReplicaIdentity};
use crate::schema::{KeySource, QualifiedName, RelationFacts};

/// The columns that identify a row, by position in the relation pgoutput described.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowKey {
    /// Positions in `Relation::columns`, ascending (table order, which the partition hash uses).
    pub columns: Vec<usize>,
    pub source: KeyOrigin,
}

/// Where a key came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyOrigin {
    Catalog(KeySource),
    /// The catalog no longer knows the relation (dropped since): pgoutput's replica identity
    /// flags, which are the key's columns under DEFAULT and USING INDEX.
    ReplicaIdentity,
}

/// A table as its events name and key it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableIdentity {
    /// The name events carry: the partition tree's root for a partition.
    pub schema: String,
    pub name: String,
    /// The relation pgoutput published the change under, when it is not the root (a partition
    /// of a publication without `publish_via_partition_root`).
    pub partition: Option<QualifiedName>,
    /// `None`: the table has no identity (no primary key, replica identity index or single
    /// unique NOT NULL index among the published columns); events carry `"key": null`.
    pub key: Option<RowKey>,
}

impl TableIdentity {
    /// Resolves the identity of `rel` from the catalog's `facts` (`None`: not in the catalog).
    pub fn resolve(rel: &Relation, facts: Option<&RelationFacts>) -> TableIdentity {
        let (schema, name, partition) = match facts.and_then(|f| f.root.as_ref()) {
            Some(root)
                if (root.schema.as_str(), root.name.as_str()) != (&rel.schema, &rel.name) =>
            {
                (
                    root.schema.clone(),
                    root.name.clone(),
                    Some(QualifiedName {
                        schema: rel.schema.clone(),
                        name: rel.name.clone(),
                    }),
                )
            }
            _ => (rel.schema.clone(), rel.name.clone(), None),
        };
        let key = match facts {
            Some(f) => f.keys.iter().find_map(|k| {
                let mut cols = k
                    .columns
                    .iter()
                    .map(|c| rel.columns.iter().position(|rc| rc.name == *c))
                    .collect::<Option<Vec<usize>>>()?;
                cols.sort_unstable();
                Some(RowKey {
                    columns: cols,
                    source: KeyOrigin::Catalog(k.source),
                })
            }),
            None => {
                let cols: Vec<usize> = rel
                    .columns
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.is_key)
                    .map(|(i, _)| i)
                    .collect();
                let usable = matches!(
                    rel.replica_identity,
                    ReplicaIdentity::Default | ReplicaIdentity::Index
                );
                (usable && !cols.is_empty()).then_some(RowKey {
                    columns: cols,
                    source: KeyOrigin::ReplicaIdentity,
                })
            }
        };
        TableIdentity {
            schema,
            name,
            partition,
            key,
        }
    }

    /// The key's column positions (empty when the table has no identity).
    pub fn key_columns(&self) -> &[usize] {
        self.key.as_ref().map_or(&[], |k| k.columns.as_slice())
    }

    /// True when `position` is one of the key's columns.
    pub fn is_key(&self, position: usize) -> bool {
        self.key_columns().contains(&position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::Column;
    use crate::schema::KeyCandidate;

    fn rel(identity: ReplicaIdentity, cols: &[(&str, bool)]) -> Relation {
        Relation {
            oid: 7,
            schema: "public".into(),
            name: "m_eu".into(),
            replica_identity: identity,
            columns: cols
                .iter()
                .map(|(n, k)| Column {
                    name: (*n).into(),
                    is_key: *k,
                    type_oid: 23,
                    type_modifier: -1,
                })
                .collect(),
        }
    }

    fn facts(keys: &[(KeySource, &[&str])], root: Option<(&str, &str)>) -> RelationFacts {
        RelationFacts {
            root: root.map(|(s, n)| QualifiedName {
                schema: s.into(),
                name: n.into(),
            }),
            keys: keys
                .iter()
                .map(|(s, c)| KeyCandidate {
                    source: *s,
                    columns: c.iter().map(|c| (*c).to_owned()).collect(),
                })
                .collect(),
            unlogged: false,
        }
    }

    #[test]
    fn full_identity_keys_by_the_primary_key_not_every_column() {
        let r = rel(
            ReplicaIdentity::Full,
            &[("balance", true), ("id", true), ("region", true)],
        );
        let f = facts(&[(KeySource::PrimaryKey, &["region", "id"])], None);
        let id = TableIdentity::resolve(&r, Some(&f));
        assert_eq!(id.key_columns(), [1, 2], "table order, not index order");
        assert_eq!(id.partition, None);
        assert_eq!((id.schema.as_str(), id.name.as_str()), ("public", "m_eu"));
    }

    #[test]
    fn a_partition_is_named_after_its_root() {
        let r = rel(ReplicaIdentity::Default, &[("id", true)]);
        let f = facts(&[(KeySource::PrimaryKey, &["id"])], Some(("sales", "m")));
        let id = TableIdentity::resolve(&r, Some(&f));
        assert_eq!((id.schema.as_str(), id.name.as_str()), ("sales", "m"));
        assert_eq!(id.partition.unwrap().to_string(), "public.m_eu");
    }

    #[test]
    fn an_unpublished_key_column_falls_to_the_next_candidate_or_none() {
        let r = rel(ReplicaIdentity::Full, &[("email", true), ("note", true)]);
        let f = facts(
            &[
                (KeySource::PrimaryKey, &["id"]),
                (KeySource::UniqueIndex, &["email"]),
            ],
            None,
        );
        let id = TableIdentity::resolve(&r, Some(&f));
        assert_eq!(id.key_columns(), [0]);
        assert_eq!(
            id.key.unwrap().source,
            KeyOrigin::Catalog(KeySource::UniqueIndex)
        );
        let none = facts(&[(KeySource::PrimaryKey, &["id"])], None);
        assert_eq!(TableIdentity::resolve(&r, Some(&none)).key, None);
    }

    #[test]
    fn without_the_catalog_only_a_real_replica_identity_is_a_key() {
        let d = rel(ReplicaIdentity::Default, &[("id", true), ("x", false)]);
        assert_eq!(TableIdentity::resolve(&d, None).key_columns(), [0]);
        let f = rel(ReplicaIdentity::Full, &[("id", true), ("x", true)]);
        assert_eq!(TableIdentity::resolve(&f, None).key, None);
    }
}
