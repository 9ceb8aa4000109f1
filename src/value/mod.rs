//! Column values rendered as the JSON that PostgreSQL's own `to_jsonb()` produces.
//!
//! pgoutput sends each value as its type's text output. `to_jsonb()` decides how to write a
//! value from the type's category (see `jsonb_categorize_type` in PostgreSQL's `jsonb.c`):
//! booleans, the six number types, date/timestamp/timestamptz, json/jsonb, arrays, and
//! everything else as a string of the text output. Domains count as their base type.
//! [`TypeRegistry`] maps type OIDs to those categories; it is loaded from `pg_type` when a
//! session starts, so domains and arrays of user types render like their base types.
//!
//! The rendering equals `to_jsonb()` in a session with the settings walrelay sets on its
//! replication connection (see `source::SESSION_SETTINGS`): DateStyle ISO, TimeZone UTC,
//! IntervalStyle iso_8601, extra_float_digits 3, bytea_output hex.
//! Composite (row) values become objects of their attributes and `hstore` an object of
//! strings, as `to_jsonb()` writes them. Other extension types with their own cast to json are
//! written as their text output (a known difference, see docs/events.md).

mod array;
mod datetime;
mod hstore;
pub mod json_string;
mod number;
mod record;

use std::collections::HashMap;
use std::sync::Arc;

pub use json_string::write_json_string;

/// How `to_jsonb()` writes values of a type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TypeKind {
    Bool,
    /// int2, int4, int8, float4, float8, numeric.
    Number,
    Date,
    Timestamp,
    TimestampTz,
    /// json and jsonb: embedded as JSON.
    Json,
    /// An array of `elem`, whose text output separates elements with `delim`.
    Array {
        elem: Box<TypeKind>,
        delim: u8,
    },
    /// A composite (row) type: an object of its attributes.
    Composite(Arc<[Field]>),
    /// The `hstore` extension type: an object of strings (its cast to json).
    Hstore,
    /// Everything else: a JSON string of the text output.
    Text,
}

/// One attribute of a composite type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub kind: TypeKind,
}

/// Why a value could not be rendered. Permanent: the value is not what its type promises.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValueError {
    #[error("value is not valid UTF-8")]
    InvalidUtf8,
    #[error("boolean value is neither 't' nor 'f'")]
    BadBool,
    #[error("array text output could not be parsed near byte {at}")]
    BadArray { at: usize },
    #[error("composite text output could not be parsed near byte {at}")]
    BadRecord { at: usize },
    /// The value has more or fewer attributes than the type had when walrelay read the
    /// catalog: the type was altered (or the value predates an alteration). Handled by
    /// reloading the types, not by stopping (`pipeline::changes`).
    #[error(
        "composite value does not have the {known} attributes its type had when walrelay read the catalog (the type was altered)"
    )]
    RecordShape { known: usize },
    #[error("hstore text output could not be parsed near byte {at}")]
    BadHstore { at: usize },
    #[error("binary-format values are not supported (walrelay requests text format)")]
    Binary,
}

/// A row of `pg_type`, as much as rendering needs.
#[derive(Clone, Debug, Default)]
pub struct PgTypeRow {
    pub oid: u32,
    /// `typtype`: b base, c composite, d domain, e enum, p pseudo, r range, m multirange.
    pub typtype: u8,
    pub typelem: u32,
    pub typdelim: u8,
    pub typbasetype: u32,
    pub typlen: i16,
    pub typname: String,
}

/// An attribute of a composite type (`pg_attribute` of its `typrelid`), in attribute order.
#[derive(Clone, Debug)]
pub struct PgAttrRow {
    pub typoid: u32,
    pub name: String,
    pub atttypid: u32,
}

/// What `resolve` reads: types by OID and composite attributes by type OID.
struct Catalog<'a> {
    types: HashMap<u32, &'a PgTypeRow>,
    attrs: HashMap<u32, Vec<&'a PgAttrRow>>,
}

/// Hashes a type OID with one multiplication instead of SipHash: the registry is looked up
/// for every column of every row, and OIDs come from the server's catalog, not from anyone
/// who could choose them to collide.
#[derive(Clone, Copy, Debug, Default)]
struct OidHash;

impl std::hash::BuildHasher for OidHash {
    type Hasher = OidHasher;
    fn build_hasher(&self) -> OidHasher {
        OidHasher(0)
    }
}

#[derive(Clone, Copy, Debug)]
struct OidHasher(u64);

impl std::hash::Hasher for OidHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: spreads consecutive OIDs over the high bits the table uses.
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Type OID → rendering kind.
#[derive(Clone, Debug, Default)]
pub struct TypeRegistry {
    kinds: HashMap<u32, TypeKind, OidHash>,
    /// Every OID of user-defined types (`>= FIRST_NORMAL_OID`) that `pg_type` had when loaded,
    /// text-rendered ones included, so a type created later can be told apart.
    user_types: std::collections::HashSet<u32>,
}

/// OIDs below this belong to built-in types, which never change while a server runs
/// (PostgreSQL's `FirstNormalObjectId`).
const FIRST_NORMAL_OID: u32 = 16384;

/// OIDs of the built-in types whose `to_jsonb()` category is not "text".
mod oid {
    pub(super) const BOOL: u32 = 16;
    pub(super) const INT8: u32 = 20;
    pub(super) const INT2: u32 = 21;
    pub(super) const INT4: u32 = 23;
    pub(super) const JSON: u32 = 114;
    pub(super) const FLOAT4: u32 = 700;
    pub(super) const FLOAT8: u32 = 701;
    pub(super) const DATE: u32 = 1082;
    pub(super) const TIMESTAMP: u32 = 1114;
    pub(super) const TIMESTAMPTZ: u32 = 1184;
    pub(super) const NUMERIC: u32 = 1700;
    pub(super) const JSONB: u32 = 3802;
}

fn scalar_kind(oid: u32) -> Option<TypeKind> {
    Some(match oid {
        oid::BOOL => TypeKind::Bool,
        oid::INT2 | oid::INT4 | oid::INT8 | oid::FLOAT4 | oid::FLOAT8 | oid::NUMERIC => {
            TypeKind::Number
        }
        oid::DATE => TypeKind::Date,
        oid::TIMESTAMP => TypeKind::Timestamp,
        oid::TIMESTAMPTZ => TypeKind::TimestampTz,
        oid::JSON | oid::JSONB => TypeKind::Json,
        _ => return None,
    })
}

impl TypeRegistry {
    /// A registry that knows only the built-in scalar types (enough until `pg_type` is loaded).
    pub fn builtin() -> Self {
        let mut kinds = HashMap::with_hasher(OidHash);
        for o in [
            oid::BOOL,
            oid::INT8,
            oid::INT2,
            oid::INT4,
            oid::JSON,
            oid::FLOAT4,
            oid::FLOAT8,
            oid::DATE,
            oid::TIMESTAMP,
            oid::TIMESTAMPTZ,
            oid::NUMERIC,
            oid::JSONB,
        ] {
            if let Some(k) = scalar_kind(o) {
                kinds.insert(o, k);
            }
        }
        TypeRegistry {
            kinds,
            user_types: Default::default(),
        }
    }

    /// Builds the registry from `pg_type` rows: resolves domains to their base type and arrays
    /// (`typelem` set and variable length) to their element kind, as `to_jsonb()` does.
    /// Composite types with attributes in `attrs` become objects.
    pub fn from_pg_type(rows: &[PgTypeRow], attrs: &[PgAttrRow]) -> Self {
        let mut cat = Catalog {
            types: rows.iter().map(|r| (r.oid, r)).collect(),
            attrs: HashMap::new(),
        };
        for a in attrs {
            cat.attrs.entry(a.typoid).or_default().push(a);
        }
        let mut kinds = HashMap::with_hasher(OidHash);
        for row in rows {
            let kind = resolve(row.oid, &cat, 0);
            if kind != TypeKind::Text {
                kinds.insert(row.oid, kind);
            }
        }
        let user_types = rows
            .iter()
            .map(|r| r.oid)
            .filter(|o| *o >= FIRST_NORMAL_OID)
            .collect();
        TypeRegistry { kinds, user_types }
    }

    /// False for a user-defined type created after the registry was loaded.
    pub fn knows(&self, type_oid: u32) -> bool {
        type_oid < FIRST_NORMAL_OID || self.user_types.contains(&type_oid)
    }

    /// A copy in which `type_oid` renders as its text output: the fallback for a composite
    /// value whose shape no longer matches the catalog (see `pipeline::changes`).
    pub fn with_text(&self, type_oid: u32) -> TypeRegistry {
        let mut copy = self.clone();
        copy.kinds.remove(&type_oid);
        copy
    }

    /// The kind for a type OID; unknown types render as text.
    pub fn kind(&self, type_oid: u32) -> &TypeKind {
        const TEXT: TypeKind = TypeKind::Text;
        self.kinds.get(&type_oid).unwrap_or(&TEXT)
    }
}

/// Domains nest and arrays nest; a depth bound keeps a cyclic catalog from looping forever.
fn resolve(oid: u32, cat: &Catalog, depth: u32) -> TypeKind {
    if depth > 16 {
        return TypeKind::Text;
    }
    let Some(row) = cat.types.get(&oid) else {
        return scalar_kind(oid).unwrap_or(TypeKind::Text);
    };
    if row.typtype == b'd' && row.typbasetype != 0 {
        return resolve(row.typbasetype, cat, depth + 1);
    }
    if let Some(k) = scalar_kind(oid) {
        return k;
    }
    if row.typelem != 0 && row.typlen == -1 {
        // The delimiter belongs to the element type (box uses ';').
        let delim = cat.types.get(&row.typelem).map_or(b',', |e| e.typdelim);
        return TypeKind::Array {
            elem: Box::new(resolve(row.typelem, cat, depth + 1)),
            delim,
        };
    }
    if row.typtype == b'c'
        && let Some(attrs) = cat.attrs.get(&oid)
    {
        let fields = attrs.iter().map(|a| Field {
            name: a.name.clone(),
            kind: resolve(a.atttypid, cat, depth + 1),
        });
        return TypeKind::Composite(fields.collect());
    }
    if row.typtype == b'b' && row.typname == "hstore" {
        return TypeKind::Hstore;
    }
    TypeKind::Text
}

/// Appends the JSON for one non-null value given as its type's text output.
pub fn write_value(out: &mut String, kind: &TypeKind, text: &[u8]) -> Result<(), ValueError> {
    let text = std::str::from_utf8(text).map_err(|_| ValueError::InvalidUtf8)?;
    write_text_value(out, kind, text)
}

fn write_text_value(out: &mut String, kind: &TypeKind, text: &str) -> Result<(), ValueError> {
    match kind {
        TypeKind::Bool => match text {
            "t" => out.push_str("true"),
            "f" => out.push_str("false"),
            _ => return Err(ValueError::BadBool),
        },
        TypeKind::Number => number::write_number(out, text),
        TypeKind::Date | TypeKind::Text => write_json_string(out, text),
        TypeKind::Timestamp => datetime::write_timestamp(out, text),
        TypeKind::TimestampTz => datetime::write_timestamptz(out, text),
        TypeKind::Json => out.push_str(text),
        TypeKind::Array { elem, delim } => array::write_array(out, text, elem, *delim)?,
        TypeKind::Composite(fields) => record::write_record(out, text, fields)?,
        TypeKind::Hstore => hstore::write_hstore(out, text)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests;
