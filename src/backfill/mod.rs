//! Backfill: the rows that already exist, published beside the live stream as `read` events,
//! by the watermark scheme of Netflix's DBLog (docs/backfill.md).
//!
//! For each chunk (keyset order, `chunk_rows` rows), the [`worker`] writes a *low* watermark
//! into the WAL (`pg_logical_emit_message(true, 'walrelay.backfill', …)`), waits for the
//! table's writers that may still be committing ([`writers`]), reads the chunk with a plain
//! `SELECT`, hands it to the replication task, and writes a *high* watermark. The
//! replication task ([`window`]) records the key of every change of that table it decodes
//! between the two marks; at the high mark it drops those keys from the chunk (the stream
//! already carries a newer state) and emits the rest as `read` events at that point of the
//! stream, followed by the high mark's commit position. So:
//! - a `read` is never older than a change published before it;
//! - the slot is never confirmed past a high mark whose chunk is not broker-confirmed (the
//!   chunk's events are ordinary events of the high mark's transaction);
//! - progress ([`store`], a table in the streamed database, which every instance sees) is
//!   recorded only once the high mark's position is broker-confirmed, so a restart redoes at
//!   most the chunk in flight, with identical ids.

mod chunk;
pub(crate) mod privileges;
pub(crate) mod store;
pub(crate) mod window;
pub(crate) mod worker;
pub(crate) mod writers;

use serde::{Deserialize, Serialize};

/// The logical message prefix of watermarks: reserved, never published.
pub(crate) const PREFIX: &str = "walrelay.backfill";

/// The logical message prefix of walrelay's announcements (`slot_created`): reserved,
/// published only as control events.
pub(crate) const CONTROL_PREFIX: &str = "walrelay.control";

/// How backfills run (`[backfill]`).
#[derive(Clone, Debug)]
pub struct BackfillSettings {
    /// Rows per chunk: the memory bound (one chunk is held at a time).
    pub chunk_rows: usize,
    /// Upper bound on rows read per second (`None`: as fast as the broker confirms).
    pub rows_per_second: Option<u64>,
    /// How often the worker looks for a new request.
    pub poll_interval: std::time::Duration,
    /// The schema of walrelay's progress table (`<schema>.backfill`).
    pub schema: String,
    /// Tables backfilled once when walrelay creates its slot (the initial snapshot).
    pub snapshot: Vec<crate::filter::glob::TablePattern>,
    /// Control events (`backfill_started`, `_finished`, `_cancelled`) are published.
    pub control_events: bool,
    /// `schema_changed` and `slot_created` are published too (off by default: every DDL
    /// would need a bound queue, or the stream holds on an unroutable message).
    pub schema_events: bool,
    /// The routing key prefix of control events: `<prefix>.<kind>`.
    pub control_prefix: String,
}

/// What a watermark says. `session` ties it to the worker that wrote it: marks of an earlier
/// session (replayed from the slot after a restart) have no chunk and are skipped — that
/// session's unconfirmed chunks are read again by the next one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Mark {
    pub session: String,
    pub backfill: i64,
    pub chunk: i64,
    pub kind: MarkKind,
    /// The table backfilled: changes of it between a low and a high mark supersede rows.
    pub schema: String,
    pub table: String,
    #[serde(default)]
    pub where_clause: Option<String>,
    /// Rows published before this mark (for control events).
    #[serde(default)]
    pub rows: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum MarkKind {
    /// Before the chunk's `SELECT`: changes of the table from here on supersede its rows.
    Low,
    /// After it: the chunk, minus superseded rows, is published here.
    High,
    /// The backfill has no rows left (a `backfill_finished` control event goes here).
    Finished,
    /// The backfill was cancelled (`backfill_cancelled`).
    Cancelled,
    /// The chunk after the low mark of the same number is not read (a writer of the table
    /// outlasted the wait after the low mark): the window closes, nothing is published, and
    /// the chunk starts again with a new low mark.
    Abandoned,
}

impl Mark {
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a watermark's content; `None` for anything else under the prefix.
    pub(crate) fn parse(content: &[u8]) -> Option<Mark> {
        serde_json::from_slice(content).ok()
    }
}

/// A chunk read by the worker, handed to the replication task before its high mark is written.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub backfill: i64,
    pub chunk: i64,
    /// The table as pgoutput describes it (published columns, in table order) and its facts.
    pub rel: std::sync::Arc<crate::pgoutput::Relation>,
    pub facts: Option<crate::schema::RelationFacts>,
    /// Each row's columns as text (`None`: NULL), in `rel`'s column order.
    pub rows: Vec<Vec<Option<String>>>,
}

/// The id of a `read` event: the backfill and a 128-bit digest of the row's rendered key, so a
/// chunk published again after a crash carries the same ids.
pub(crate) fn read_id(backfill: i64, key_json: &str) -> String {
    format!("read:{backfill}:{:032x}", fnv1a_128(key_json.as_bytes()))
}

/// FNV-1a, 128 bits: stable across Rust versions and platforms (the standard hasher is not).
fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u128::from(*b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_ids_are_stable() {
        let m = Mark {
            session: "s1".into(),
            backfill: 3,
            chunk: 7,
            kind: MarkKind::High,
            schema: "public".into(),
            table: "odd \"name\"".into(),
            where_clause: Some("a > 1".into()),
            rows: 5,
        };
        assert_eq!(Mark::parse(m.to_json().as_bytes()), Some(m));
        assert_eq!(Mark::parse(b"not json"), None);
        // Known FNV-1a 128 value of the empty input is the offset basis.
        assert_eq!(fnv1a_128(b""), 0x6c62272e07bb014262b821756295c58d);
        assert_eq!(read_id(3, "{\"id\":1}"), read_id(3, "{\"id\":1}"));
        assert_ne!(read_id(3, "{\"id\":1}"), read_id(3, "{\"id\":2}"));
        assert_ne!(read_id(3, "{\"id\":1}"), read_id(4, "{\"id\":1}"));
        assert!(read_id(1, "{}").starts_with("read:1:"));
    }
}
