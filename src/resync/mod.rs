//! Resync: the way back from a broken stream (`walrelay resync`, `postgres.on_slot_lost =
//! "resync"`). A slot that was dropped, invalidated or moved by someone else, or a publication
//! gap, means changes were never published and never will be. A resync makes that loss visible
//! and repairs it, in four steps, each safe to repeat (docs/operations.md, When a slot is lost):
//!
//! 1. **Record** the gap durably (`<backfill.schema>.resync`: the last confirmed LSN, the
//!    cause, the tables) before anything changes. A record not marked done is resumed by the
//!    next `walrelay resync` or `walrelay run`, so a crash never skips the rest.
//! 2. **Repair the slot** as the server shows it now: create it when missing, drop and create
//!    it when invalidated, advance it past a publication gap, or keep a moved one. Each is
//!    decided from what the catalog shows, so a step done before a crash is not done twice.
//! 3. **Announce and backfill** in one transaction: a `stream_gap` logical message (published
//!    as `_walrelay.control.stream_gap` through the new slot), a backfill request per table
//!    (older active backfills of those tables are cancelled: their progress is from before the
//!    gap), and the record marked done with the new stream's start.
//! 4. The running walrelay streams from the new start and runs the backfills: a consumer that
//!    applies every event converges to the tables' state (tests/resync.rs proves it).

mod record;
mod slot;
mod tables;

use tracing::info;

use crate::config::Settings;
use crate::error::RunError;
use crate::filter::glob::TablePattern;
use crate::lsn::Lsn;
use crate::position_file::PositionFile;
use crate::source::error::Broken;
use crate::source::setup::TableName;
use crate::source::{Connection, SourceError};

use slot::Observed;

/// Why the stream broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    Slot(Broken),
    /// The publication was missing at a point of the WAL the slot had still to decode.
    PublicationGap,
}

impl Cause {
    /// The `cause` label of records, metrics and the `stream_gap` event.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Cause::Slot(b) => b.label(),
            Cause::PublicationGap => "publication_gap",
        }
    }

    fn parse(label: &str) -> Option<Cause> {
        Some(match label {
            "slot_dropped" => Cause::Slot(Broken::Dropped),
            "slot_invalidated" => Cause::Slot(Broken::Invalidated),
            "slot_moved" => Cause::Slot(Broken::Moved),
            "publication_gap" => Cause::PublicationGap,
            _ => return None,
        })
    }
}

/// A gap as recorded.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Gap {
    pub id: i64,
    pub cause: Cause,
    /// The last position walrelay confirmed (unknown when the slot vanished and no state file
    /// or earlier record says).
    pub from: Option<Lsn>,
    /// For a publication gap: how far the slot is advanced (the WAL end when recorded).
    pub target: Option<Lsn>,
    /// Where the new stream starts (set when done).
    pub to: Option<Lsn>,
    pub tables: Vec<TableName>,
}

/// What the caller asks for.
#[derive(Default)]
pub(crate) struct Ask {
    /// Only the tables these match (all published tables when empty).
    pub patterns: Vec<TablePattern>,
    pub dry_run: bool,
    /// What this process confirmed last (the state file and earlier records are read too).
    pub known: Option<Lsn>,
    /// The session met a publication gap (the catalog cannot show one).
    pub gap_seen: bool,
    /// Decode the slot's backlog to find a publication gap (the command, when the slot looks
    /// healthy): bounded by this long.
    pub probe: Option<std::time::Duration>,
}

/// What a resync found and did.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Nothing is broken: nothing was changed.
    Healthy(String),
    /// `--dry-run`: what would be done (`resumed`: a pending record would be finished).
    Planned {
        gap: Gap,
        resumed: bool,
    },
    Done {
        gap: Gap,
        resumed: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ResyncError {
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Something an operator must change first; nothing was recorded.
    #[error("{0}")]
    Refused(String),
    #[error("service.state_file: {0}")]
    PositionFile(String),
}

/// Runs (or resumes) a resync; see the module's steps.
pub(crate) async fn resync(settings: &Settings, ask: &Ask) -> Result<Outcome, ResyncError> {
    let src = &settings.source;
    let schema = &settings.backfill.schema;
    let mut sql = Connection::connect(&src.conn, false).await?;
    let (gap, resumed) = match record::pending(&mut sql, schema, &src.slot).await? {
        Some(gap) => (gap, true),
        None => {
            let database = current_database(&mut sql).await?;
            let mut observed = slot::observe(&mut sql, &src.slot, &database).await?;
            // The session that met the gap has just closed its connection; its walsender may
            // hold the slot a moment longer.
            let mut waited = 0;
            while ask.gap_seen
                && matches!(observed, Observed::Healthy { active: true, .. })
                && waited < 50
            {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                observed = slot::observe(&mut sql, &src.slot, &database).await?;
                waited += 1;
            }
            let mut file = src_file(settings);
            let stored = match file.as_mut() {
                Some(f) => f
                    .load()
                    .map_err(|e| ResyncError::PositionFile(e.to_string()))?,
                None => None,
            };
            let known = ask
                .known
                .max(stored)
                .max(record::accepted(&mut sql, schema, &src.slot).await?);
            let mut gap_seen = ask.gap_seen;
            if let (Observed::Healthy { active: false, .. }, Some(limit), false) =
                (&observed, ask.probe, gap_seen)
            {
                gap_seen = slot::probe(settings, limit).await?;
            }
            let Some((cause, from)) = slot::diagnose(&observed, known, gap_seen)? else {
                sql.close().await;
                return Ok(Outcome::Healthy(slot::healthy_text(&observed, &src.slot)));
            };
            let tables = tables::affected(&mut sql, settings, &ask.patterns).await?;
            let target = match cause {
                Cause::PublicationGap => Some(current_wal(&mut sql).await?),
                Cause::Slot(_) => None,
            };
            let gap = Gap {
                id: 0,
                cause,
                from,
                target,
                to: None,
                tables,
            };
            if ask.dry_run {
                sql.close().await;
                return Ok(Outcome::Planned {
                    gap,
                    resumed: false,
                });
            }
            let id = record::insert(&mut sql, schema, &src.slot, &gap).await?;
            info!(resync = id, cause = cause.label(), from = ?from, tables = gap.tables.len(),
                  "stream gap recorded: repairing the slot");
            (Gap { id, ..gap }, false)
        }
    };
    if ask.dry_run {
        sql.close().await;
        return Ok(Outcome::Planned { gap, resumed });
    }
    crate::failpoint::hit("resync.after_record");
    let to = slot::repair(settings, &mut sql, &gap).await?;
    crate::failpoint::hit("resync.after_repair");
    // Before the announcement: a restart after it must not take the new start for a slot
    // moved by someone else.
    if let Some(f) = src_file(settings).as_mut() {
        f.store(to)
            .map_err(|e| ResyncError::PositionFile(e.to_string()))?;
    }
    let gap = Gap {
        to: Some(to),
        ..gap
    };
    record::finish(&mut sql, settings, &gap).await?;
    sql.close().await;
    info!(resync = gap.id, cause = gap.cause.label(), to = %to, tables = gap.tables.len(),
          "resync done: stream_gap announced, backfills requested");
    Ok(Outcome::Done { gap, resumed })
}

/// Finishes a resync that a crash interrupted, if any (every `walrelay run` session asks
/// on `conn` before it streams, whatever `on_slot_lost` says: a recorded gap is never
/// skipped), and returns the position walrelay accepted by the last resync.
pub(crate) async fn resume(
    conn: &mut Connection,
    settings: &Settings,
) -> Result<Option<Lsn>, ResyncError> {
    let (schema, slot) = (&settings.backfill.schema, &settings.source.slot);
    if record::pending(conn, schema, slot).await?.is_some() {
        tracing::warn!(slot = %slot, "a resync was interrupted: finishing it before streaming");
        resync(settings, &Ask::default()).await?;
    }
    Ok(record::accepted(conn, schema, slot).await?)
}

/// True for the errors a resync repairs: a slot dropped, invalidated or moved (never one that
/// belongs to someone else), and a publication gap.
pub(crate) fn repairs(e: &RunError) -> bool {
    matches!(
        e,
        RunError::Source(
            SourceError::SlotLost {
                broken: Broken::Dropped | Broken::Invalidated | Broken::Moved,
                ..
            } | SourceError::PublicationGap { .. }
        )
    )
}

impl From<ResyncError> for RunError {
    fn from(e: ResyncError) -> RunError {
        match e {
            ResyncError::Source(e) => RunError::Source(e),
            ResyncError::Refused(m) => RunError::Source(SourceError::Setup(format!("resync: {m}"))),
            ResyncError::PositionFile(m) => RunError::PositionFile(m),
        }
    }
}

/// Refuses `on_slot_lost = "resync"` when some published table could not be backfilled (no
/// key): the resync could not bring its consumers back, so say so at start, not after a loss.
pub(crate) async fn check_policy(
    conn: &mut Connection,
    settings: &Settings,
) -> Result<(), ResyncError> {
    tables::affected(conn, settings, &[]).await.map(|_| ())
}

fn src_file(settings: &Settings) -> Option<PositionFile> {
    settings
        .service
        .state_file
        .as_deref()
        .map(PositionFile::new)
}

async fn current_database(c: &mut Connection) -> Result<String, SourceError> {
    let rows = c.simple_query("SELECT current_database()").await?;
    Ok(rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .unwrap_or_default())
}

async fn current_wal(c: &mut Connection) -> Result<Lsn, SourceError> {
    let rows = c
        .simple_query(
            "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END",
        )
        .await?;
    rows.first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| SourceError::Protocol("the WAL position is not an LSN".into()))
}

/// The plan or the result, for people.
pub(crate) fn describe(gap: &Gap) -> String {
    let lsn = |l: Option<Lsn>| l.map_or("unknown".to_owned(), |l| l.to_string());
    let tables: Vec<String> = gap.tables.iter().map(ToString::to_string).collect();
    let repair = match gap.cause {
        Cause::Slot(Broken::Dropped) => "create the slot".to_owned(),
        Cause::Slot(Broken::Invalidated) => "drop the invalidated slot and create it".to_owned(),
        Cause::Slot(Broken::Moved) => "keep the slot where it was moved to".to_owned(),
        Cause::Slot(Broken::Foreign) => "nothing (a foreign slot is never touched)".to_owned(),
        Cause::PublicationGap => format!("advance the slot past the gap, to {}", lsn(gap.target)),
    };
    format!(
        "cause:      {}\nlast confirmed: {}\nnew start:  {}\nslot:       {repair}\nannounce:   stream_gap (control event)\nbackfill:   {} table(s): {}\n",
        gap.cause.label(),
        lsn(gap.from),
        lsn(gap.to),
        tables.len(),
        tables.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_round_trip_and_are_the_metric_labels() {
        let all = [
            Cause::Slot(Broken::Dropped),
            Cause::Slot(Broken::Invalidated),
            Cause::Slot(Broken::Moved),
            Cause::PublicationGap,
        ];
        for c in all {
            assert_eq!(Cause::parse(c.label()), Some(c));
        }
        assert_eq!(all.map(Cause::label), crate::metrics::RESYNC_CAUSES);
        assert_eq!(Cause::parse("slot_foreign"), None, "never recorded");
    }
}
