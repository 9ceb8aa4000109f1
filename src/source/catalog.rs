//! What PostgreSQL's catalog says about a relation beyond what pgoutput sends: the root of its
//! partition tree and the columns that identify its rows. Read over a plain SQL connection
//! (the walsender's is busy streaming) when pgoutput describes a relation, and at start-up for
//! `doctor` and the rule check.
//!
//! The catalog is read as it is *now*, not as it was when the change was written: after a
//! partition is detached or a primary key replaced, changes still in the backlog from before
//! are named and keyed by the current catalog (see `docs/events.md`).

use super::conn::Connection;
use super::error::SourceError;

pub use crate::schema::{KeyCandidate, KeySource, QualifiedName, RelationFacts};

/// `c.oid IN (…)` for a list of OIDs (never empty: `IN (0)` matches nothing).
pub fn oid_list(oids: &[u32]) -> String {
    if oids.is_empty() {
        return "0".to_owned();
    }
    oids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// OID, root, persistence and replica identity of each relation.
fn relations_sql(oids: &[u32]) -> String {
    format!(
        "SELECT c.oid, rn.nspname, r.relname, c.relpersistence, c.relreplident \
         FROM pg_catalog.pg_class c \
         LEFT JOIN pg_catalog.pg_class r ON c.relispartition AND r.oid = pg_catalog.pg_partition_root(c.oid) \
         LEFT JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace \
         WHERE c.oid IN ({})",
        oid_list(oids)
    )
}

/// The columns of every index that can identify a row, one row per column in index order:
/// table OID, index OID, kind (`p` primary key, `i` replica identity index, `u` other unique
/// index), column name, NOT NULL.
fn keys_sql(oids: &[u32]) -> String {
    format!(
        "SELECT i.indrelid, i.indexrelid, CASE WHEN i.indisprimary THEN 'p' WHEN i.indisreplident THEN 'i' ELSE 'u' END, \
                a.attname, a.attnotnull \
         FROM pg_catalog.pg_index i \
         CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
         WHERE i.indrelid IN ({}) AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL \
         ORDER BY i.indrelid, i.indisprimary DESC, i.indisreplident DESC, i.indexrelid, k.ord",
        oid_list(oids)
    )
}

/// Chooses the identity candidates from the index rows of `keys_sql` and the table's
/// replica identity (`relreplident`). Pure, so the preference order is unit-tested.
///
/// The primary key comes first, except under `REPLICA IDENTITY USING INDEX` when the key is
/// not inside that index: a delete then carries only the index's columns, and a key that a
/// delete cannot carry would not be stable. A unique index counts only when every column is
/// NOT NULL and it is the only such index (two would make the choice arbitrary).
pub fn choose_keys(replident: u8, rows: &[(String, u8, String, bool)]) -> Vec<KeyCandidate> {
    let mut pk = None;
    let mut ri = None;
    let mut uniques: Vec<Vec<String>> = Vec::new();
    let mut last_index = None;
    for (index, kind, column, not_null) in rows {
        let new_index = last_index.as_deref() != Some(index.as_str());
        last_index = Some(index.clone());
        let slot = match kind {
            b'p' => &mut pk,
            b'i' => &mut ri,
            _ => {
                if new_index {
                    uniques.push(Vec::new());
                }
                let cols = uniques.last_mut().expect("pushed above");
                // A nullable column disqualifies the index: mark it with an empty name.
                cols.push(if *not_null {
                    column.clone()
                } else {
                    String::new()
                });
                continue;
            }
        };
        slot.get_or_insert_with(Vec::new).push(column.clone());
    }
    let uniques: Vec<Vec<String>> = uniques
        .into_iter()
        .filter(|c| c.iter().all(|n| !n.is_empty()))
        .collect();
    let mut out = Vec::new();
    let candidate = |source, columns| KeyCandidate { source, columns };
    let pk_in_ri = match (&pk, &ri) {
        (Some(p), Some(r)) => p.iter().all(|c| r.contains(c)),
        _ => true,
    };
    if replident == b'i' && !pk_in_ri {
        out.extend(
            ri.clone()
                .map(|c| candidate(KeySource::ReplicaIdentityIndex, c)),
        );
        out.extend(pk.map(|c| candidate(KeySource::PrimaryKey, c)));
    } else {
        out.extend(pk.map(|c| candidate(KeySource::PrimaryKey, c)));
        out.extend(ri.map(|c| candidate(KeySource::ReplicaIdentityIndex, c)));
    }
    if let [only] = uniques.as_slice() {
        out.push(candidate(KeySource::UniqueIndex, only.clone()));
    }
    out
}

/// Reads the facts of relation `oid`; `None` when the catalog no longer has it (a table
/// dropped after the changes walrelay is still reading).
pub async fn relation_facts(
    conn: &mut Connection,
    oid: u32,
) -> Result<Option<RelationFacts>, SourceError> {
    Ok(relations_facts(conn, &[oid]).await?.remove(&oid))
}

/// The facts of many relations in two queries, whatever their number (a session start checks
/// every published table; a standby does so at each attempt).
pub async fn relations_facts(
    conn: &mut Connection,
    oids: &[u32],
) -> Result<std::collections::HashMap<u32, RelationFacts>, SourceError> {
    let mut out = std::collections::HashMap::new();
    let mut replident = std::collections::HashMap::new();
    for row in conn.simple_query(&relations_sql(oids)).await? {
        let get = |i: usize| row.get(i).cloned().flatten();
        let Some(oid) = get(0).and_then(|o| o.parse::<u32>().ok()) else {
            continue;
        };
        let root = match (get(1), get(2)) {
            (Some(schema), Some(name)) => Some(QualifiedName { schema, name }),
            _ => None,
        };
        replident.insert(oid, get(4).and_then(|s| s.bytes().next()).unwrap_or(b'd'));
        out.insert(
            oid,
            RelationFacts {
                root,
                keys: Vec::new(),
                unlogged: get(3).as_deref() == Some("u"),
            },
        );
    }
    let mut index_rows: std::collections::HashMap<u32, Vec<(String, u8, String, bool)>> =
        std::collections::HashMap::new();
    for r in conn.simple_query(&keys_sql(oids)).await? {
        let get = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
        let Ok(table) = get(0).parse::<u32>() else {
            continue;
        };
        index_rows.entry(table).or_default().push((
            get(1),
            get(2).bytes().next().unwrap_or(b'u'),
            get(3),
            get(4) == "t",
        ));
    }
    for (oid, facts) in out.iter_mut() {
        let rows = index_rows.remove(oid).unwrap_or_default();
        facts.keys = choose_keys(replident[oid], &rows);
    }
    Ok(out)
}

/// A plain SQL connection for catalog lookups while the replication connection streams. It
/// can sit idle for hours between Relation messages, so a lookup that finds it closed (an
/// idle timeout, a proxy) reconnects once before it gives up, and every lookup is bounded: the
/// replication task waits for it, and must get back to its status updates.
pub struct Catalog {
    conn: Option<Connection>,
    params: super::params::ConnParams,
    /// The most one lookup (with its reconnect) may take.
    limit: std::time::Duration,
}

impl Catalog {
    pub async fn connect(
        params: &super::params::ConnParams,
        limit: std::time::Duration,
    ) -> Result<Catalog, SourceError> {
        Ok(Catalog {
            conn: Some(Connection::connect(params, false).await?),
            params: params.clone(),
            limit,
        })
    }

    /// A catalog that connects at its first lookup (the loop tests never describe a relation).
    #[cfg(test)]
    pub(crate) fn unconnected(
        params: &super::params::ConnParams,
        limit: std::time::Duration,
    ) -> Catalog {
        Catalog {
            conn: None,
            params: params.clone(),
            limit,
        }
    }

    pub async fn facts(&mut self, oid: u32) -> Result<Option<RelationFacts>, SourceError> {
        let limit = self.limit;
        tokio::time::timeout(limit, self.lookup(oid))
            .await
            .map_err(|_| SourceError::CatalogTimeout(limit))?
    }

    async fn lookup(&mut self, oid: u32) -> Result<Option<RelationFacts>, SourceError> {
        if let Some(conn) = self.conn.as_mut() {
            match relation_facts(conn, oid).await {
                Err(e) if e.connection_failed() => {
                    tracing::debug!(error = %e, "catalog connection lost; reconnecting it");
                    self.conn = None;
                }
                other => return other,
            }
        }
        let conn = self
            .conn
            .insert(Connection::connect(&self.params, false).await?);
        relation_facts(conn, oid).await
    }

    /// The connection, connected again when it was lost: for the replication task's rare
    /// writes (a flood's backfill request), which the caller bounds like a lookup.
    pub async fn connection(&mut self) -> Result<&mut Connection, SourceError> {
        let alive = match self.conn.as_mut() {
            Some(c) => c.simple_query("SELECT 1").await.is_ok(),
            None => false,
        };
        if !alive {
            self.conn = Some(Connection::connect(&self.params, false).await?);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| SourceError::Protocol("no catalog connection".into()))
    }

    /// The most one lookup may take.
    pub fn limit(&self) -> std::time::Duration {
        self.limit
    }

    pub async fn close(self) {
        if let Some(conn) = self.conn {
            conn.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(index: &str, kind: u8, col: &str, not_null: bool) -> (String, u8, String, bool) {
        (index.into(), kind, col.into(), not_null)
    }

    fn sources(keys: &[KeyCandidate]) -> Vec<(KeySource, Vec<&str>)> {
        keys.iter()
            .map(|k| (k.source, k.columns.iter().map(String::as_str).collect()))
            .collect()
    }

    #[test]
    fn primary_key_first() {
        let rows = [row("1", b'p', "id", true), row("2", b'u', "email", true)];
        for replident in [b'd', b'f', b'n'] {
            assert_eq!(
                sources(&choose_keys(replident, &rows)),
                [
                    (KeySource::PrimaryKey, vec!["id"]),
                    (KeySource::UniqueIndex, vec!["email"])
                ]
            );
        }
    }

    #[test]
    fn replica_index_first_when_it_does_not_hold_the_primary_key() {
        let rows = [
            row("1", b'p', "id", true),
            row("2", b'i', "tenant", true),
            row("2", b'i', "code", true),
        ];
        assert_eq!(
            sources(&choose_keys(b'i', &rows)),
            [
                (KeySource::ReplicaIdentityIndex, vec!["tenant", "code"]),
                (KeySource::PrimaryKey, vec!["id"])
            ]
        );
        // The index holds the key: the key is still the primary key.
        let rows = [
            row("1", b'p', "id", true),
            row("2", b'i', "id", true),
            row("2", b'i', "tenant", true),
        ];
        assert_eq!(
            choose_keys(b'i', &rows)[0].source,
            KeySource::PrimaryKey,
            "the primary key is inside the replica identity index"
        );
    }

    #[test]
    fn a_unique_index_counts_only_when_alone_and_not_null() {
        let nullable = [row("2", b'u', "email", false)];
        assert!(choose_keys(b'f', &nullable).is_empty());
        let two = [row("2", b'u', "email", true), row("3", b'u', "code", true)];
        assert!(choose_keys(b'f', &two).is_empty());
        let one = [
            row("2", b'u', "a", true),
            row("2", b'u', "b", true),
            row("3", b'u', "c", false),
        ];
        assert_eq!(
            sources(&choose_keys(b'f', &one)),
            [(KeySource::UniqueIndex, vec!["a", "b"])]
        );
        assert!(choose_keys(b'f', &[]).is_empty());
    }
}
