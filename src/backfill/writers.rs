//! Before a chunk is read: wait for the transactions that may have committed before the low
//! mark without being visible yet.
//!
//! PostgreSQL makes a commit durable in two steps: it writes the commit record to the WAL, and
//! later removes the transaction from the running-transactions array, which is what makes it
//! visible to new snapshots. Between the two, a backend can wait for a group-commit flush, a
//! synchronous standby's answer, or simply the scheduler. A write whose commit record precedes
//! the low mark streams before the window opens, so its key is not dropped from the chunk; if
//! the chunk's `SELECT` then runs while that write is still invisible, the chunk holds the row's
//! older state and its `read` would be published after the newer change: a stale read.
//!
//! Such a transaction still holds its lock on the table when the low mark has committed: locks
//! are released only after a transaction has left the array. So, once the low mark is
//! committed, the worker lists the transactions holding a write lock on the table (or one of
//! its partitions) and waits until each has ended; the chunk's snapshot, taken afterwards, sees
//! every write whose commit record precedes the low mark. Writers never wait for walrelay.
//! The worker waits before the low mark too, with no window open, so the wait after it is short
//! (bounded: an open window keeps every changed key of the table).
//! A transaction whose session is idle in its transaction is not committing, so its commit
//! record (if any) will follow the low mark and the window covers it: it is not waited for.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::source::setup::{TableName, quote_literal};
use crate::source::{Connection, SourceError};

/// The first pause between checks; pauses double up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(2);
const MAX_PAUSE: Duration = Duration::from_millis(100);
/// A wait longer than this is logged (at `info`), then at `warn` every [`WARN_EVERY`].
const SAY_AFTER: Duration = Duration::from_secs(1);
const WARN_EVERY: Duration = Duration::from_secs(30);

/// How a wait ended.
pub(crate) enum Waited {
    /// Every listed writer has ended: the chunk may be read.
    Clear,
    /// The backfill was cancelled while writers were still running.
    Cancelled,
    /// The bound given passed with writers still running.
    TimedOut,
}

/// The lock modes of statements that change rows: `INSERT`/`UPDATE`/`DELETE`/`MERGE`
/// (RowExclusiveLock) and `TRUNCATE` or explicit table locks (the stronger ones).
const WRITE_MODES: &str =
    "'RowExclusiveLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock'";

/// The virtual transaction ids (and pids, for the log) of the transactions that hold a write
/// lock on `table` or its partitions and are not idle in their transaction.
/// (`pg_partition_tree` lists nothing for a table that is not partitioned: hence the `OR`.)
async fn writers(
    c: &mut Connection,
    table: &TableName,
) -> Result<Vec<(String, String)>, SourceError> {
    let rows = c
        .simple_query(&format!(
            "SELECT DISTINCT l.virtualtransaction, coalesce(l.pid::text, 'a prepared transaction') \
             FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'relation' AND l.granted \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND (l.relation = {t}::regclass \
                    OR l.relation IN (SELECT relid FROM pg_partition_tree({t}::regclass))) \
               AND l.mode IN ({WRITE_MODES}) \
               AND l.pid IS DISTINCT FROM pg_backend_pid() \
               AND coalesce(a.state, '') NOT IN ('idle in transaction', 'idle in transaction (aborted)')",
            t = quote_literal(&table.quoted())
        ))
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let mut it = r.into_iter();
            Some((it.next()??, it.next()??))
        })
        .collect())
}

/// Which of `vxids` are still running.
async fn running(c: &mut Connection, vxids: &[String]) -> Result<Vec<String>, SourceError> {
    let list: Vec<String> = vxids.iter().map(|v| quote_literal(v)).collect();
    let rows = c
        .simple_query(&format!(
            "SELECT DISTINCT virtualtransaction FROM pg_locks WHERE virtualtransaction IN ({})",
            list.join(", ")
        ))
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect())
}

/// Where to look for a cancellation of the backfill while the wait lasts.
pub(crate) struct CancelCheck<'a> {
    pub schema: &'a str,
    pub slot: &'a str,
    pub backfill: i64,
}

impl CancelCheck<'_> {
    async fn cancelled(&self, c: &mut Connection) -> Result<bool, SourceError> {
        Ok(super::store::next(c, self.schema, self.slot)
            .await?
            .is_some_and(|s| s.id == self.backfill && s.state == "cancelling"))
    }
}

/// Waits until every transaction writing `table` when called (and possibly committing) has
/// ended, or `limit` has passed. Needed after the low mark has committed and before the
/// chunk's `SELECT`; the worker also waits before the low mark, without a limit, so that a long
/// writer is waited out while no window is open (an open window holds the keys of every
/// change of the table). A cancellation of the backfill is looked for once a second.
pub(crate) async fn wait_for_writers(
    c: &mut Connection,
    table: &TableName,
    cancel: &CancelCheck<'_>,
    limit: Option<Duration>,
) -> Result<Waited, SourceError> {
    let listed = writers(c, table).await?;
    if listed.is_empty() {
        return Ok(Waited::Clear);
    }
    tracing::debug!(table = %table, writers = listed.len(), "waiting for the table's writers");
    let mut vxids: Vec<String> = listed.iter().map(|(v, _)| v.clone()).collect();
    let started = Instant::now();
    let mut pause = FIRST_PAUSE;
    let mut said = false;
    let mut warned = Instant::now();
    let mut asked = Instant::now();
    loop {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
        vxids = running(c, &vxids).await?;
        if vxids.is_empty() {
            return Ok(Waited::Clear);
        }
        if limit.is_some_and(|l| started.elapsed() >= l) {
            return Ok(Waited::TimedOut);
        }
        let pids = || {
            listed
                .iter()
                .filter(|(v, _)| vxids.contains(v))
                .map(|(_, p)| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !said && started.elapsed() >= SAY_AFTER {
            said = true;
            warned = Instant::now();
            info!(table = %table, pids = %pids(),
                  "backfill waits for transactions writing {table} to end before reading the next chunk");
        } else if said && warned.elapsed() >= WARN_EVERY {
            warned = Instant::now();
            warn!(table = %table, pids = %pids(), waited_s = started.elapsed().as_secs(),
                  "backfill still waits for transactions writing {table}: a long transaction \
                   delays the backfill (see pg_stat_activity for these pids)");
        }
        if asked.elapsed() >= Duration::from_secs(1) {
            asked = Instant::now();
            if cancel.cancelled(c).await? {
                return Ok(Waited::Cancelled);
            }
        }
    }
}
