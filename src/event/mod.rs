//! The change event: what consumers receive for each change, and how it is built from decoded
//! pgoutput messages. The JSON body is the contract documented in `docs/events.md`.
//!
//! An event's `id` is `<commit LSN>:<index>`: the LSN of the transaction's commit record and the
//! position of the change within the transaction (counting every change pgoutput sent, so the
//! index does not depend on filters). Decoding is deterministic, so a replayed transaction
//! produces the same ids, which is what lets consumers de-duplicate.

mod encode;
pub mod identity;
mod other;
pub mod routing;
pub mod time;

use std::sync::Arc;

use crate::lsn::Lsn;
use crate::pgoutput::{Datum, OldTuple, Relation, ReplicaIdentity, TupleData};
use crate::value::{TypeRegistry, ValueError};

pub use encode::{Body, Columns};
pub use identity::TableIdentity;
pub use other::{
    BulkBackfill, BulkSummary, bulk_event_body, message_event_body, truncate_event_body,
};

/// What happened to the row(s).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
    Message,
    /// A summary of a bulk transaction (see the flood guard in `filter`).
    Bulk,
    /// A row that already existed, published by a backfill (`new` only).
    Read,
    /// A control event (`backfill_started`, …) on the control routing key.
    Control,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
            Op::Message => "message",
            Op::Bulk => "bulk",
            Op::Read => "read",
            Op::Control => "control",
        }
    }
}

/// The transaction a change belongs to (from pgoutput's Begin message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxContext {
    /// Start LSN of the commit record: with the change index, the event id.
    pub commit_lsn: Lsn,
    pub xid: Option<u32>,
    /// Microseconds since 2000-01-01 UTC; `None` for non-transactional messages.
    pub commit_time_us: Option<i64>,
}

/// A change ready for the publisher: routing key, body and the facts that go into properties.
#[derive(Clone, Debug)]
pub struct Event {
    pub id: String,
    pub op: Op,
    /// Empty for logical messages.
    pub schema: String,
    /// The table name, or the message prefix for logical messages.
    pub table: String,
    pub commit_lsn: Lsn,
    pub commit_time_us: Option<i64>,
    pub routing_key: String,
    /// The row's key hash ([`routing::key_hash`]); `None` for events without a key (truncates,
    /// bulk summaries, logical messages, control events). Picks a super stream's partition.
    pub key_hash: Option<u64>,
    /// The exchange, when a table rule or the flood guard overrides the default one.
    pub exchange: Option<Arc<str>>,
    /// The `table` label of this event's metrics: the table's name when the configuration
    /// names it exactly, else `other` (keeps label cardinality bounded).
    pub metric_table: Arc<str>,
    pub body: Vec<u8>,
}

/// What travels from the replication task to the publisher, in WAL order.
#[derive(Debug)]
pub enum Outbound {
    /// A change to publish; it belongs to the currently open transaction.
    Event(Event),
    /// The open transaction (possibly with no events) ends; confirm `end_lsn` once all of its
    /// events and everything before are broker-confirmed.
    Position(Lsn),
}

impl Event {
    /// A control event: `kind` in the body, routed to `routing_key`, naming `table`.
    pub fn control(
        id: String,
        table: Option<&TableIdentity>,
        tx: &TxContext,
        routing_key: String,
        body: Vec<u8>,
    ) -> Event {
        Event {
            id,
            op: Op::Control,
            schema: table.map_or_else(String::new, |t| t.schema.clone()),
            table: table.map_or_else(String::new, |t| t.name.clone()),
            commit_lsn: tx.commit_lsn,
            commit_time_us: tx.commit_time_us,
            routing_key,
            key_hash: None,
            exchange: None,
            metric_table: Arc::from("control"),
            body,
        }
    }

    /// A logical message's event (`pg_logical_emit_message`): named by its prefix, in no table.
    pub fn message(
        id: String,
        prefix: &str,
        tx: &TxContext,
        routing_key: String,
        body: Vec<u8>,
    ) -> Event {
        Event {
            id,
            op: Op::Message,
            schema: String::new(),
            table: prefix.to_owned(),
            commit_lsn: tx.commit_lsn,
            commit_time_us: tx.commit_time_us,
            routing_key,
            key_hash: None,
            exchange: None,
            metric_table: Arc::from("message"),
            body,
        }
    }
}

/// Why a change could not be turned into an event. Permanent: skipping it would lose data.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("change refers to relation OID {0}, which pgoutput never described")]
    UnknownRelation(u32),
    #[error("{schema}.{table}: row has {got} columns but the relation has {want}")]
    ColumnCount {
        schema: String,
        table: String,
        got: usize,
        want: usize,
    },
    #[error("{schema}.{table} column {column}: {source}")]
    Value {
        schema: String,
        table: String,
        column: String,
        #[source]
        source: ValueError,
    },
}

/// The row images of one row change, borrowed from the decoded message.
pub enum RowChange<'a> {
    Insert {
        new: &'a TupleData<'a>,
    },
    /// A backfilled row: rendered like an insert, with op `read`.
    Read {
        new: &'a TupleData<'a>,
    },
    Update {
        old: Option<&'a OldTuple<'a>>,
        new: &'a TupleData<'a>,
    },
    Delete {
        old: &'a OldTuple<'a>,
    },
}

impl RowChange<'_> {
    pub fn op(&self) -> Op {
        match self {
            RowChange::Insert { .. } => Op::Insert,
            RowChange::Read { .. } => Op::Read,
            RowChange::Update { .. } => Op::Update,
            RowChange::Delete { .. } => Op::Delete,
        }
    }
}

/// Builds the id of the change at `index` in the transaction.
pub fn event_id(commit_lsn: Lsn, index: u64) -> String {
    let mut id = String::with_capacity(24);
    commit_lsn.push_to(&mut id);
    id.push(':');
    encode::push_decimal(&mut id, index, 1);
    id
}

/// A rendered row event.
pub struct RowBody {
    pub body: Vec<u8>,
    /// Where the `key` object sits in `body` (absent when the key is null).
    pub key: Option<std::ops::Range<usize>>,
}

/// The tuple an event's key comes from: the old image when there is one (under DEFAULT and
/// USING INDEX it holds the key the row had before an update changed it; under FULL, every
/// column), else the new image (an insert, or an update that left the replica identity
/// unchanged). `None` when the table has no key.
pub fn key_tuple<'a>(
    table: &TableIdentity,
    change: &'a RowChange<'a>,
) -> Option<&'a TupleData<'a>> {
    table.key.as_ref()?;
    match change {
        RowChange::Insert { new } | RowChange::Read { new } => Some(new),
        RowChange::Update {
            old: Some(OldTuple::Key(t) | OldTuple::Full(t)),
            ..
        } => Some(t),
        RowChange::Update { old: None, new } => Some(new),
        RowChange::Delete {
            old: OldTuple::Key(t) | OldTuple::Full(t),
        } => Some(t),
    }
}

/// Builds the body of an insert, update, delete or read with the given `id`. `mask` marks the
/// published columns (none: all); key columns are always published (the filter config refuses
/// to hide them).
pub fn row_event_body(
    tx: &TxContext,
    id: &str,
    rel: &Arc<Relation>,
    table: &TableIdentity,
    change: &RowChange<'_>,
    mask: Option<&[bool]>,
    types: &TypeRegistry,
) -> Result<RowBody, EventError> {
    let op = change.op();
    let mut body = Body::start(id, op, Some(table), tx);
    let render = |b: &mut Body, field: &str, tuple: &TupleData<'_>, columns: Columns<'_>| {
        check_width(rel, tuple)?;
        b.row(field, rel, tuple, columns, mask, types)
            .map_err(|(column, source)| EventError::Value {
                schema: rel.schema.clone(),
                table: rel.name.clone(),
                column,
                source,
            })
    };
    let has_identity =
        rel.replica_identity != ReplicaIdentity::Nothing && rel.columns.iter().any(|c| c.is_key);
    let key = match key_tuple(table, change) {
        Some(t) => Some(render(
            &mut body,
            "key",
            t,
            Columns::Only(table.key_columns()),
        )?),
        None => {
            body.null_field("key");
            None
        }
    };
    let identity = Columns::ReplicaIdentity;
    match change {
        RowChange::Insert { .. } | RowChange::Read { .. } => body.null_field("old"),
        RowChange::Update {
            old: Some(OldTuple::Full(t)),
            ..
        }
        | RowChange::Delete {
            old: OldTuple::Full(t),
        } => render(&mut body, "old", t, Columns::All).map(|_| ())?,
        RowChange::Update {
            old: Some(OldTuple::Key(t)),
            ..
        }
        | RowChange::Delete {
            old: OldTuple::Key(t),
        } => render(&mut body, "old", t, identity).map(|_| ())?,
        // The replica identity did not change, so the old identity is the new row's.
        RowChange::Update { old: None, new } if has_identity => {
            render(&mut body, "old", new, identity).map(|_| ())?
        }
        RowChange::Update { old: None, .. } => body.null_field("old"),
    }
    match change {
        RowChange::Insert { new } | RowChange::Read { new } | RowChange::Update { new, .. } => {
            render(&mut body, "new", new, Columns::All).map(|_| ())?
        }
        RowChange::Delete { .. } => body.null_field("new"),
    }
    let unchanged: Vec<&str> = match change {
        RowChange::Update { new, .. } => rel
            .columns
            .iter()
            .zip(&new.columns)
            .enumerate()
            .filter(|(i, (_, d))| {
                matches!(d, Datum::UnchangedToast)
                    && mask.is_none_or(|m| m.get(*i).copied().unwrap_or(true))
            })
            .map(|(_, (c, _))| c.name.as_str())
            .collect(),
        _ => Vec::new(),
    };
    body.string_list("unchanged_toast", &unchanged);
    Ok(RowBody {
        body: body.finish(),
        key,
    })
}

/// The row's key as an event's `key` object renders it (`{"id":5}`): the form a backfill
/// compares streamed and read rows by. `None` when the table has no key.
pub fn key_json(
    rel: &Relation,
    table: &TableIdentity,
    tuple: &TupleData<'_>,
    types: &TypeRegistry,
) -> Result<Option<String>, EventError> {
    if table.key.is_none() {
        return Ok(None);
    }
    check_width(rel, tuple)?;
    encode::key_object(rel, tuple, table.key_columns(), types)
        .map(Some)
        .map_err(|(column, source)| EventError::Value {
            schema: rel.schema.clone(),
            table: rel.name.clone(),
            column,
            source,
        })
}

fn check_width(rel: &Relation, tuple: &TupleData<'_>) -> Result<(), EventError> {
    if tuple.columns.len() != rel.columns.len() {
        return Err(EventError::ColumnCount {
            schema: rel.schema.clone(),
            table: rel.name.clone(),
            got: tuple.columns.len(),
            want: rel.columns.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
