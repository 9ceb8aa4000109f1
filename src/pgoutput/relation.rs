//! Relation descriptions sent by pgoutput ('R' messages) and the cache that maps relation OIDs
//! to them. pgoutput sends a relation before the first change that uses it in a session, and
//! again after its schema changes, so the cache is per replication connection.

use std::collections::HashMap;
use std::sync::Arc;

/// The table's REPLICA IDENTITY, which decides what PostgreSQL logs as the old row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// 'd': the primary key columns (old key sent on delete, and on update when the key changed).
    Default,
    /// 'n': nothing; updates and deletes carry no old row.
    Nothing,
    /// 'f': the whole old row.
    Full,
    /// 'i': the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            b'd' => ReplicaIdentity::Default,
            b'n' => ReplicaIdentity::Nothing,
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            _ => return None,
        })
    }
}

/// One column of a published relation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// Part of the replica identity (pgoutput flag 1). Under FULL every column is flagged.
    pub is_key: bool,
    /// The column's type OID (a domain's own OID for domain columns).
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// A published relation as pgoutput describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    /// Schema name; pgoutput sends an empty string for `pg_catalog`, which we restore.
    pub schema: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<Column>,
}

/// Relations seen on this connection, by OID. Shared as `Arc` so events can hold them cheaply.
#[derive(Default, Debug)]
pub struct RelationCache {
    by_oid: HashMap<u32, Arc<Relation>>,
}

impl RelationCache {
    pub fn insert(&mut self, relation: Relation) -> Arc<Relation> {
        let rel = Arc::new(relation);
        self.by_oid.insert(rel.oid, Arc::clone(&rel));
        rel
    }

    pub fn get(&self, oid: u32) -> Option<&Arc<Relation>> {
        self.by_oid.get(&oid)
    }
}
