//! A pure decoder for the `pgoutput` logical replication protocol, version 1.
//!
//! The bytes are the payload of one XLogData message (see PostgreSQL's "Logical Replication
//! Message Formats"). Decoding never panics and never allocates in proportion to a length the
//! server claims: every length is checked against the bytes actually present. Tuple values are
//! borrowed from the payload; rendering them is the `value` module's job.
//!
//! Protocol version 1 without `streaming` means a transaction arrives whole, after it commits:
//! `Begin`, its changes, `Commit`. Relation ('R') and Type ('Y') messages may appear inside.

mod cursor;
pub mod relation;

use cursor::Cursor;
pub use relation::{Column, Relation, RelationCache, ReplicaIdentity};

use crate::lsn::Lsn;

/// Why a pgoutput message could not be decoded. Always a permanent error: the stream is not
/// something we understand, and skipping it would lose data.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("pgoutput message is empty")]
    Empty,
    #[error("unknown pgoutput message type {0:?}")]
    UnknownTag(char),
    #[error("pgoutput message ends early while reading {what} at byte {offset}")]
    Truncated { what: &'static str, offset: usize },
    #[error("pgoutput message has {extra} unexpected trailing bytes")]
    TrailingBytes { extra: usize },
    #[error("invalid UTF-8 in {what} at byte {offset}")]
    InvalidUtf8 { what: &'static str, offset: usize },
    #[error("invalid {what} byte {byte:?} at byte {offset}")]
    InvalidByte {
        what: &'static str,
        byte: char,
        offset: usize,
    },
    #[error("negative {what}: {value}")]
    Negative { what: &'static str, value: i64 },
}

/// One decoded pgoutput message. Tuple data borrows from the payload.
#[derive(Debug, PartialEq)]
pub enum Message<'a> {
    Begin(Begin),
    Commit(Commit),
    Origin {
        origin_lsn: Lsn,
        name: &'a str,
    },
    Relation(Relation),
    Type {
        oid: u32,
        schema: &'a str,
        name: &'a str,
    },
    Insert {
        relation_oid: u32,
        new: TupleData<'a>,
    },
    Update {
        relation_oid: u32,
        old: Option<OldTuple<'a>>,
        new: TupleData<'a>,
    },
    Delete {
        relation_oid: u32,
        old: OldTuple<'a>,
    },
    Truncate(Truncate),
    Message(LogicalMessage<'a>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the commit record (its start), the same as `Commit::commit_lsn`.
    pub final_lsn: Lsn,
    /// Commit time in microseconds since 2000-01-01 00:00:00 UTC.
    pub commit_time_us: i64,
    pub xid: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Commit {
    pub commit_lsn: Lsn,
    /// End of the commit record: the position to confirm so the transaction is not sent again.
    pub end_lsn: Lsn,
    pub commit_time_us: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncate {
    pub cascade: bool,
    pub restart_identity: bool,
    pub relation_oids: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogicalMessage<'a> {
    pub transactional: bool,
    pub lsn: Lsn,
    pub prefix: &'a str,
    pub content: &'a [u8],
}

/// The old row sent with an update or delete.
#[derive(Debug, PartialEq)]
pub enum OldTuple<'a> {
    /// 'K': only replica identity columns hold values; the rest are null.
    Key(TupleData<'a>),
    /// 'O': the whole old row (REPLICA IDENTITY FULL).
    Full(TupleData<'a>),
}

/// One column's value in a tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datum<'a> {
    Null,
    /// A TOASTed value that did not change; its value is not in the WAL.
    UnchangedToast,
    /// The type's text output.
    Text(&'a [u8]),
    /// The type's binary output (only with the `binary` option, which walrelay does not request).
    Binary(&'a [u8]),
}

/// The columns of one row, in relation column order.
#[derive(Debug, PartialEq)]
pub struct TupleData<'a> {
    pub columns: Vec<Datum<'a>>,
}

impl<'a> Message<'a> {
    /// Decodes one pgoutput message.
    pub fn parse(buf: &'a [u8]) -> Result<Message<'a>, DecodeError> {
        let mut c = Cursor::new(buf);
        let tag = c.u8("message type").map_err(|_| DecodeError::Empty)?;
        let msg = match tag {
            b'B' => Message::Begin(Begin {
                final_lsn: Lsn(c.u64("begin final LSN")?),
                commit_time_us: c.i64("begin commit time")?,
                xid: c.u32("begin xid")?,
            }),
            b'C' => {
                let _flags = c.u8("commit flags")?;
                Message::Commit(Commit {
                    commit_lsn: Lsn(c.u64("commit LSN")?),
                    end_lsn: Lsn(c.u64("commit end LSN")?),
                    commit_time_us: c.i64("commit time")?,
                })
            }
            b'O' => Message::Origin {
                origin_lsn: Lsn(c.u64("origin LSN")?),
                name: c.cstr("origin name")?,
            },
            b'R' => Message::Relation(parse_relation(&mut c)?),
            b'Y' => Message::Type {
                oid: c.u32("type OID")?,
                schema: c.cstr("type namespace")?,
                name: c.cstr("type name")?,
            },
            b'I' => {
                let relation_oid = c.u32("insert relation OID")?;
                expect(&mut c, b'N', "insert tuple marker")?;
                Message::Insert {
                    relation_oid,
                    new: parse_tuple(&mut c)?,
                }
            }
            b'U' => {
                let relation_oid = c.u32("update relation OID")?;
                let offset = c.offset();
                let old = match c.u8("update tuple marker")? {
                    b'K' => Some(OldTuple::Key(parse_tuple(&mut c)?)),
                    b'O' => Some(OldTuple::Full(parse_tuple(&mut c)?)),
                    b'N' => None,
                    other => return Err(invalid("update tuple marker", other, offset)),
                };
                if old.is_some() {
                    expect(&mut c, b'N', "update new tuple marker")?;
                }
                Message::Update {
                    relation_oid,
                    old,
                    new: parse_tuple(&mut c)?,
                }
            }
            b'D' => {
                let relation_oid = c.u32("delete relation OID")?;
                let offset = c.offset();
                let old = match c.u8("delete tuple marker")? {
                    b'K' => OldTuple::Key(parse_tuple(&mut c)?),
                    b'O' => OldTuple::Full(parse_tuple(&mut c)?),
                    other => return Err(invalid("delete tuple marker", other, offset)),
                };
                Message::Delete { relation_oid, old }
            }
            b'T' => {
                let count = non_negative(
                    c.i32("truncate relation count")?.into(),
                    "truncate relation count",
                )?;
                let options = c.u8("truncate options")?;
                // Each OID takes 4 bytes: refuse a count the message cannot hold before allocating.
                if c.remaining() / 4 < count {
                    return Err(DecodeError::Truncated {
                        what: "truncate relation OIDs",
                        offset: c.offset(),
                    });
                }
                let mut relation_oids = Vec::with_capacity(count);
                for _ in 0..count {
                    relation_oids.push(c.u32("truncate relation OID")?);
                }
                Message::Truncate(Truncate {
                    cascade: options & 1 != 0,
                    restart_identity: options & 2 != 0,
                    relation_oids,
                })
            }
            b'M' => {
                let transactional = c.u8("message flags")? & 1 != 0;
                let lsn = Lsn(c.u64("message LSN")?);
                let prefix = c.cstr("message prefix")?;
                let len = non_negative(c.i32("message length")?.into(), "message length")?;
                let content = c.take(len, "message content")?;
                Message::Message(LogicalMessage {
                    transactional,
                    lsn,
                    prefix,
                    content,
                })
            }
            other => return Err(DecodeError::UnknownTag(other as char)),
        };
        if c.remaining() != 0 {
            return Err(DecodeError::TrailingBytes {
                extra: c.remaining(),
            });
        }
        Ok(msg)
    }
}

fn invalid(what: &'static str, byte: u8, offset: usize) -> DecodeError {
    DecodeError::InvalidByte {
        what,
        byte: byte as char,
        offset,
    }
}

fn expect(c: &mut Cursor<'_>, want: u8, what: &'static str) -> Result<(), DecodeError> {
    let offset = c.offset();
    let got = c.u8(what)?;
    if got == want {
        Ok(())
    } else {
        Err(invalid(what, got, offset))
    }
}

fn non_negative(value: i64, what: &'static str) -> Result<usize, DecodeError> {
    usize::try_from(value).map_err(|_| DecodeError::Negative { what, value })
}

fn parse_relation(c: &mut Cursor<'_>) -> Result<Relation, DecodeError> {
    let oid = c.u32("relation OID")?;
    let schema = c.cstr("relation namespace")?;
    let name = c.cstr("relation name")?.to_owned();
    let offset = c.offset();
    let ident = c.u8("replica identity")?;
    let replica_identity = ReplicaIdentity::from_byte(ident)
        .ok_or_else(|| invalid("replica identity", ident, offset))?;
    let ncols = non_negative(
        c.i16("relation column count")?.into(),
        "relation column count",
    )?;
    // Each column takes at least 10 bytes (flags, empty name, type OID, modifier).
    let mut columns = Vec::with_capacity(ncols.min(c.remaining() / 10));
    for _ in 0..ncols {
        let is_key = c.u8("column flags")? & 1 != 0;
        columns.push(Column {
            name: c.cstr("column name")?.to_owned(),
            is_key,
            type_oid: c.u32("column type OID")?,
            type_modifier: c.i32("column type modifier")?,
        });
    }
    let schema = if schema.is_empty() {
        "pg_catalog".to_owned()
    } else {
        schema.to_owned()
    };
    Ok(Relation {
        oid,
        schema,
        name,
        replica_identity,
        columns,
    })
}

fn parse_tuple<'a>(c: &mut Cursor<'a>) -> Result<TupleData<'a>, DecodeError> {
    let ncols = non_negative(c.i16("tuple column count")?.into(), "tuple column count")?;
    // Each column takes at least one byte.
    if c.remaining() < ncols {
        return Err(DecodeError::Truncated {
            what: "tuple columns",
            offset: c.offset(),
        });
    }
    let mut columns = Vec::with_capacity(ncols);
    for _ in 0..ncols {
        let offset = c.offset();
        let datum = match c.u8("column kind")? {
            b'n' => Datum::Null,
            b'u' => Datum::UnchangedToast,
            kind @ (b't' | b'b') => {
                let len = non_negative(c.i32("column length")?.into(), "column length")?;
                let bytes = c.take(len, "column value")?;
                if kind == b't' {
                    Datum::Text(bytes)
                } else {
                    Datum::Binary(bytes)
                }
            }
            other => return Err(invalid("column kind", other, offset)),
        };
        columns.push(datum);
    }
    Ok(TupleData { columns })
}

#[cfg(test)]
mod tests;
