//! The backfill worker: one task per streaming session, on a plain SQL connection. It takes
//! the oldest active backfill of the slot, and for each chunk waits for the table's writers
//! that may be committing (writers.rs), writes the low watermark, waits briefly for writers
//! that began meanwhile, reads the chunk in key order, hands it to the replication task,
//! writes the high watermark, waits until the broker confirmed the high mark's transaction,
//! and only then records progress.
//! One chunk is held at a time: memory is bounded by `backfill.chunk_rows`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::chunk::{ChunkQuery, describe, estimate};
use super::store::{self, Record};
use super::writers::{self, Waited};
use super::{BackfillSettings, Chunk, Mark, MarkKind, PREFIX};
use crate::event::TableIdentity;
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::pgoutput::Relation;
use crate::schema::RelationFacts;
use crate::source::params::ConnParams;
use crate::source::setup::quote_literal;
use crate::source::{Connection, SourceError};

/// How often a running backfill logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How long the worker waits, after a low mark, for the table's writers that began since its
/// wait before the mark; longer, and the chunk is abandoned and started again.
const AFTER_LOW_WAIT: Duration = Duration::from_secs(1);

/// Everything the worker needs from its session.
pub(crate) struct Worker {
    pub conn: ConnParams,
    pub slot: String,
    pub publication: String,
    pub settings: BackfillSettings,
    /// Written into every watermark: the replication task ignores marks of other sessions.
    pub session: String,
    pub chunks: mpsc::Sender<Chunk>,
    /// `(backfill, chunk, end LSN)` of each published chunk's high-mark transaction.
    pub ends: mpsc::UnboundedReceiver<(i64, i64, Lsn)>,
    /// The broker-confirmed position (the session's ack tracker).
    pub acked: watch::Receiver<Lsn>,
    pub metrics: Arc<Metrics>,
}

/// A chunk handed over whose confirmation is awaited before its progress is recorded.
struct Progress {
    chunk: i64,
    last_key: Vec<String>,
    rows: i64,
}

/// Why one backfill cannot go on: recorded as `failed` with this reason; others still run.
pub(super) struct Refusal(pub(super) String);

pub(super) enum Failure {
    /// The backfill itself is impossible (no key, no such table, a bad where clause).
    Refused(Refusal),
    /// The connection failed or the session ends: try again later.
    Source(SourceError),
}

impl From<SourceError> for Failure {
    fn from(e: SourceError) -> Self {
        match e {
            // A bad where clause or a missing column is the request's fault, not the server's.
            SourceError::Server(s) if s.code.starts_with("42") || s.code.starts_with("22") => {
                Failure::Refused(Refusal(format!("PostgreSQL refused the chunk query: {s}")))
            }
            e => Failure::Source(e),
        }
    }
}

impl Worker {
    /// Runs until the session ends (it is aborted with it).
    pub(crate) async fn run(mut self) {
        let mut conn: Option<Connection> = None;
        loop {
            let result = async {
                if conn.is_none() {
                    conn = Some(Connection::connect(&self.conn, false).await?);
                }
                let c = conn.as_mut().expect("connected above");
                // The table is created by the first request (`walrelay backfill`, a snapshot):
                // without one there is nothing to do, and no privilege to ask for.
                if !store::exists(c, &self.settings.schema).await? {
                    return Ok(false);
                }
                match store::next(c, &self.settings.schema, &self.slot).await? {
                    Some(record) => self.backfill(c, record).await.map(|()| true),
                    None => Ok(false),
                }
            }
            .await;
            match result {
                Ok(true) => continue,
                Ok(false) => {}
                Err(Failure::Refused(_)) => {}
                Err(Failure::Source(e)) => {
                    warn!(error = %e, "backfill worker: reconnecting");
                    conn = None;
                }
            }
            self.metrics.backfill_running.set(0);
            tokio::time::sleep(self.settings.poll_interval).await;
        }
    }

    /// Runs one backfill to its end (or cancellation); a refusal is recorded as `failed`.
    async fn backfill(&mut self, c: &mut Connection, record: Record) -> Result<(), Failure> {
        let schema = self.settings.schema.clone();
        match self.chunks_of(c, &record).await {
            Err(Failure::Refused(Refusal(why))) => {
                warn!(backfill = record.id, table = %record.table, reason = %why, "backfill refused");
                store::finish(c, &schema, record.id, "failed", Some(&why)).await?;
                Err(Failure::Refused(Refusal(why)))
            }
            other => other,
        }
    }

    async fn chunks_of(&mut self, c: &mut Connection, record: &Record) -> Result<(), Failure> {
        let schema = self.settings.schema.clone();
        let (rel, facts, identity) = describe(c, &self.publication, &record.table).await?;
        let key_names: Vec<String> = identity
            .key_columns()
            .iter()
            .map(|i| rel.columns[*i].name.clone())
            .collect();
        let query = ChunkQuery {
            table: &record.table,
            columns: &rel,
            key: &key_names,
            where_clause: record.where_clause.as_deref(),
        };
        let info = Mark {
            session: self.session.clone(),
            backfill: record.id,
            chunk: record.chunks_done,
            kind: MarkKind::Low,
            schema: identity.schema.clone(),
            table: identity.name.clone(),
            where_clause: record.where_clause.clone(),
            rows: record.rows_done,
        };
        if record.state == "cancelling" {
            self.mark(c, record.id, record.chunks_done, MarkKind::Cancelled, &info)
                .await?;
            store::finish(c, &schema, record.id, "cancelled", None).await?;
            info!(backfill = record.id, table = %record.table, "backfill cancelled");
            return Ok(());
        }
        let stop_key = match &record.stop_key {
            Some(k) => Some(k.clone()),
            None => query.max_key(c).await?,
        };
        if record.state == "pending" {
            let estimate = estimate(c, &record.table).await?;
            store::start(c, &schema, record.id, stop_key.as_deref(), estimate).await?;
            info!(backfill = record.id, table = %record.table, estimate, "backfill started");
        }
        self.metrics.backfill_running.set(1);
        self.run_chunks(c, record, &query, (&rel, &facts, &identity), stop_key, info)
            .await
    }

    /// The chunk loop, pipelined by one chunk: chunk N is read and handed over while the
    /// broker confirms chunk N-1, whose progress is recorded once it is confirmed. At most two
    /// chunks are in memory.
    async fn run_chunks(
        &mut self,
        c: &mut Connection,
        record: &Record,
        query: &ChunkQuery<'_>,
        (rel, facts, identity): (&Arc<Relation>, &Option<RelationFacts>, &TableIdentity),
        stop_key: Option<Vec<String>>,
        mut info: Mark,
    ) -> Result<(), Failure> {
        let schema = self.settings.schema.clone();
        let mut last = record.last_key.clone();
        let mut chunk_no = record.chunks_done;
        let started = Instant::now();
        let mut read = 0u64;
        let mut said = Instant::now();
        let mut pending: Option<Progress> = None;
        loop {
            if let Some(state) = store::next(c, &schema, &self.slot).await?
                && state.id == record.id
                && state.state == "cancelling"
            {
                self.settle(c, record, &mut pending, &mut info).await?;
                self.mark(c, record.id, chunk_no, MarkKind::Cancelled, &info)
                    .await?;
                store::finish(c, &schema, record.id, "cancelled", None).await?;
                info!(backfill = record.id, table = %record.table, rows = info.rows, "backfill cancelled");
                return Ok(());
            }
            // A write whose commit record precedes the low mark may not be visible yet
            // (writers.rs): wait for the table's writers before the mark, with no window open,
            // then briefly after it for those that began meanwhile.
            let cancel = writers::CancelCheck {
                schema: &schema,
                slot: &self.slot,
                backfill: record.id,
            };
            if let Waited::Cancelled =
                writers::wait_for_writers(c, &record.table, &cancel, None).await?
            {
                // The top of the loop settles, marks and records the cancellation.
                continue;
            }
            self.mark(c, record.id, chunk_no, MarkKind::Low, &info)
                .await?;
            match writers::wait_for_writers(c, &record.table, &cancel, Some(AFTER_LOW_WAIT)).await?
            {
                Waited::Clear => {}
                Waited::Cancelled => continue,
                Waited::TimedOut => {
                    // Close the window rather than let it gather keys for as long as a
                    // writer runs; the chunk starts again with a new low mark.
                    self.mark(c, record.id, chunk_no, MarkKind::Abandoned, &info)
                        .await?;
                    tracing::debug!(
                        backfill = record.id,
                        chunk = chunk_no,
                        "a writer outlasted the wait after the low mark: chunk started again"
                    );
                    continue;
                }
            }
            let rows = match &stop_key {
                None => Vec::new(),
                Some(stop) => {
                    query
                        .read(c, last.as_deref(), stop, self.settings.chunk_rows)
                        .await?
                }
            };
            if rows.is_empty() {
                self.settle(c, record, &mut pending, &mut info).await?;
                self.mark(c, record.id, chunk_no, MarkKind::Finished, &info)
                    .await?;
                store::finish(c, &schema, record.id, "finished", None).await?;
                self.metrics.backfill_rows_remaining.set(0);
                info!(backfill = record.id, table = %record.table, rows = info.rows, "backfill finished");
                return Ok(());
            }
            let n = rows.len() as i64;
            let last_key: Vec<String> = identity
                .key_columns()
                .iter()
                .map(|i| rows[rows.len() - 1][*i].clone().unwrap_or_default())
                .collect();
            let chunk = Chunk {
                backfill: record.id,
                chunk: chunk_no,
                rel: Arc::clone(rel),
                facts: facts.clone(),
                rows,
            };
            // Handed over before the high mark exists, so the replication task has it when the
            // mark arrives.
            if self.chunks.send(chunk).await.is_err() {
                return Err(Failure::Source(SourceError::Setup(
                    "the replication task ended".into(),
                )));
            }
            self.mark(c, record.id, chunk_no, MarkKind::High, &info)
                .await?;
            // The previous chunk was being confirmed meanwhile: record it now.
            self.settle(c, record, &mut pending, &mut info).await?;
            pending = Some(Progress {
                chunk: chunk_no,
                last_key: last_key.clone(),
                rows: n,
            });
            read += n as u64;
            chunk_no += 1;
            last = Some(last_key);
            if said.elapsed() >= PROGRESS_EVERY {
                said = Instant::now();
                info!(backfill = record.id, table = %record.table, rows = info.rows,
                      estimated = record.rows_estimated.unwrap_or(0),
                      rows_per_second = (read as f64 / started.elapsed().as_secs_f64()) as u64,
                      "backfill progress");
            }
            if let Some(rate) = self.settings.rows_per_second {
                let due = Duration::from_secs_f64(read as f64 / rate.max(1) as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Waits until the pending chunk is broker-confirmed, then records it as progress.
    async fn settle(
        &mut self,
        c: &mut Connection,
        record: &Record,
        pending: &mut Option<Progress>,
        info: &mut Mark,
    ) -> Result<(), Failure> {
        let Some(p) = pending.take() else {
            return Ok(());
        };
        let t0 = Instant::now();
        self.confirmed(record.id, p.chunk).await?;
        store::progress(c, &self.settings.schema, record.id, &p.last_key, p.rows).await?;
        tracing::debug!(
            backfill = record.id,
            chunk = p.chunk,
            rows = p.rows,
            waited_ms = t0.elapsed().as_millis() as u64,
            "chunk confirmed and recorded"
        );
        self.metrics.backfill_chunks.inc();
        info.rows += p.rows;
        let estimated = record.rows_estimated.unwrap_or(0);
        self.metrics
            .backfill_rows_remaining
            .set((estimated - info.rows).max(0));
        Ok(())
    }

    /// Writes a watermark (its own transaction).
    async fn mark(
        &self,
        c: &mut Connection,
        backfill: i64,
        chunk: i64,
        kind: MarkKind,
        info: &Mark,
    ) -> Result<(), SourceError> {
        let mark = Mark {
            backfill,
            chunk,
            kind,
            ..info.clone()
        };
        c.simple_query(&format!(
            "SELECT pg_logical_emit_message(true, {}, {})",
            quote_literal(PREFIX),
            quote_literal(&mark.to_json())
        ))
        .await?;
        Ok(())
    }

    /// Waits until the chunk's high-mark transaction is broker-confirmed.
    async fn confirmed(&mut self, backfill: i64, chunk: i64) -> Result<(), Failure> {
        let end = loop {
            match self.ends.recv().await {
                Some((b, n, end)) if (b, n) == (backfill, chunk) => break end,
                Some(_) => continue,
                None => {
                    return Err(Failure::Source(SourceError::Setup(
                        "the replication task ended".into(),
                    )));
                }
            }
        };
        self.acked
            .wait_for(|acked| *acked >= end)
            .await
            .map_err(|_| Failure::Source(SourceError::Setup("the session ended".into())))?;
        Ok(())
    }
}
