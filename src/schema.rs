//! The catalog's facts about a relation, as words every layer may use: its name, the root of
//! its partition tree, the identities that can key its rows, whether it is logged. Read from
//! PostgreSQL by `source::catalog`; used by `event` (names, keys) and `filter` (views).

/// Where a row's identity (the event's `key`) comes from, in order of preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    PrimaryKey,
    /// The index named by `REPLICA IDENTITY USING INDEX`.
    ReplicaIdentityIndex,
    /// The one unique, non-partial index over NOT NULL columns (when there is exactly one).
    UniqueIndex,
}

impl KeySource {
    pub fn as_str(self) -> &'static str {
        match self {
            KeySource::PrimaryKey => "primary key",
            KeySource::ReplicaIdentityIndex => "replica identity index",
            KeySource::UniqueIndex => "unique index",
        }
    }
}

/// One candidate identity: its source and its column names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyCandidate {
    pub source: KeySource,
    pub columns: Vec<String>,
}

/// A `schema.name` pair as the catalog spells it (no quoting).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl std::fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// The catalog's facts about one relation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelationFacts {
    /// The root of the partition tree (`pg_partition_root`) when the relation is a partition.
    pub root: Option<QualifiedName>,
    /// Identities in order of preference; the first whose columns pgoutput publishes wins.
    pub keys: Vec<KeyCandidate>,
    /// `relpersistence = 'u'`: PostgreSQL never logs its changes, so they never stream.
    pub unlogged: bool,
}
