//! The bodies of the events that are not row changes: a truncate of one relation, a logical
//! message (`pg_logical_emit_message`), and the flood guard's summary of a bulk transaction.

use super::encode::Body;
use super::*;

/// Builds the body of a truncate of one relation.
pub fn truncate_event_body(
    tx: &TxContext,
    index: u64,
    table: &TableIdentity,
    cascade: bool,
    restart_identity: bool,
) -> (String, Vec<u8>) {
    let id = event_id(tx.commit_lsn, index);
    let mut body = Body::start(&id, Op::Truncate, Some(table), tx);
    for f in ["key", "old", "new"] {
        body.null_field(f);
    }
    body.string_list("unchanged_toast", &[]);
    body.raw_field(
        "truncate",
        &format!("{{\"cascade\":{cascade},\"restart_identity\":{restart_identity}}}"),
    );
    (id, body.finish())
}

/// Builds the body of a logical message (`pg_logical_emit_message`).
pub fn message_event_body(
    tx: &TxContext,
    index: u64,
    prefix: &str,
    content: &[u8],
    transactional: bool,
) -> (String, Vec<u8>) {
    let id = event_id(tx.commit_lsn, index);
    let mut body = Body::start(&id, Op::Message, None, tx);
    for f in ["key", "old", "new"] {
        body.null_field(f);
    }
    body.string_list("unchanged_toast", &[]);
    body.string_field("prefix", prefix);
    match std::str::from_utf8(content) {
        Ok(text) => body.string_field("content", text),
        Err(_) => {
            let mut hex = String::with_capacity(2 + content.len() * 2);
            hex.push_str("\\x");
            for b in content {
                hex.push_str(&format!("{b:02x}"));
            }
            body.string_field("content", &hex)
        }
    }
    body.raw_field(
        "transactional",
        if transactional { "true" } else { "false" },
    );
    (id, body.finish())
}

/// What a bulk (flood) summary says about one table of one transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BulkSummary {
    /// Why the transaction is a flood: `max_changes`, `marker` or `origin`.
    pub reason: &'static str,
    pub inserts: u64,
    pub updates: u64,
    pub deletes: u64,
    pub truncates: u64,
    /// The `key` objects (JSON) of the first and last row changed, when the rows have keys.
    pub first_key: Option<String>,
    pub last_key: Option<String>,
    /// `flood.then = "backfill"`: the backfill that follows.
    pub backfill: Option<BulkBackfill>,
}

/// The backfill a flood's bulk event announces: its condition (`None`: the whole table) and,
/// for a single integer key, the range it reads, for consumers that sweep their copy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BulkBackfill {
    pub where_clause: Option<String>,
    /// Key column, smallest and largest key.
    pub range: Option<(String, i64, i64)>,
}

/// Builds the body of a bulk summary event (op `bulk`). `index` is the position of the
/// table's first change in the transaction, so the id is stable across replays.
pub fn bulk_event_body(
    tx: &TxContext,
    index: u64,
    table: &TableIdentity,
    summary: &BulkSummary,
) -> (String, Vec<u8>) {
    let id = event_id(tx.commit_lsn, index);
    let mut body = Body::start(&id, Op::Bulk, Some(table), tx);
    for f in ["key", "old", "new"] {
        body.null_field(f);
    }
    body.string_list("unchanged_toast", &[]);
    let s = summary;
    body.raw_field(
        "bulk",
        &format!(
            "{{\"reason\":\"{}\",\"counts\":{{\"insert\":{},\"update\":{},\"delete\":{},\"truncate\":{}}},\"total\":{},\"first_key\":{},\"last_key\":{},\"backfill\":{}}}",
            s.reason,
            s.inserts,
            s.updates,
            s.deletes,
            s.truncates,
            s.inserts + s.updates + s.deletes + s.truncates,
            s.first_key.as_deref().unwrap_or("null"),
            s.last_key.as_deref().unwrap_or("null"),
            match &s.backfill {
                None => "null".to_owned(),
                Some(b) => match &b.range {
                    Some((key, from, to)) => serde_json::json!({
                        "where": b.where_clause, "key": key, "from": from, "to": to
                    }),
                    None => serde_json::json!({ "where": b.where_clause }),
                }
                .to_string(),
            },
        ),
    );
    (id, body.finish())
}
