//! The slot as the server shows it, what is wrong with it ([`diagnose`], pure), and its repair
//! ([`repair`]), decided from what the catalog shows now so that a step a crash interrupted is
//! finished, never done twice. [`probe`] decodes the slot's backlog to find a publication gap,
//! which the catalog cannot show.

use std::time::Duration;

use super::{Cause, Gap, ResyncError};
use crate::config::Settings;
use crate::lsn::Lsn;
use crate::source::error::Broken;
use crate::source::replication::{ReplMessage, ReplicationStream};
use crate::source::setup::{self, quote_literal};
use crate::source::{Connection, SourceError};

/// The slot now.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Observed {
    Missing,
    /// `wal_status = lost`: removed WAL, or (16+) a recovery conflict on a standby.
    Lost {
        confirmed: Option<Lsn>,
    },
    Healthy {
        confirmed: Lsn,
        active: bool,
    },
    /// Another plugin or database: not walrelay's slot, never dropped.
    Foreign(String),
}

pub(super) async fn observe(
    c: &mut Connection,
    slot: &str,
    database: &str,
) -> Result<Observed, SourceError> {
    let rows = c
        .simple_query(&format!(
            "SELECT plugin, database, confirmed_flush_lsn, wal_status, active \
             FROM pg_replication_slots WHERE slot_name = {}",
            quote_literal(slot)
        ))
        .await?;
    let Some(row) = rows.first() else {
        return Ok(Observed::Missing);
    };
    let get = |i: usize| row.get(i).cloned().flatten();
    let confirmed = get(2).and_then(|s| s.parse::<Lsn>().ok());
    if get(0).as_deref() != Some("pgoutput") || get(1).as_deref() != Some(database) {
        return Ok(Observed::Foreign(format!(
            "replication slot {slot:?} uses plugin {:?} in database {:?}: it is not walrelay's slot for {database:?}. \
             Choose another postgres.slot; a resync never drops a slot it did not create",
            get(0).unwrap_or_default(),
            get(1).unwrap_or_default()
        )));
    }
    if get(3).as_deref() == Some("lost") {
        return Ok(Observed::Lost { confirmed });
    }
    Ok(Observed::Healthy {
        confirmed: confirmed.unwrap_or(Lsn::ZERO),
        active: get(4).as_deref() == Some("t"),
    })
}

/// What is broken, and the last position walrelay confirmed; `None` when nothing is.
/// `known` is the highest position walrelay is known to have confirmed (this process, the
/// state file, the last resync); `gap_seen`, that decoding met a publication gap.
pub(super) fn diagnose(
    observed: &Observed,
    known: Option<Lsn>,
    gap_seen: bool,
) -> Result<Option<(Cause, Option<Lsn>)>, ResyncError> {
    Ok(match observed {
        Observed::Foreign(why) => return Err(ResyncError::Refused(why.clone())),
        Observed::Missing => Some((Cause::Slot(Broken::Dropped), known)),
        Observed::Lost { confirmed } => {
            Some((Cause::Slot(Broken::Invalidated), confirmed.or(known)))
        }
        Observed::Healthy { confirmed, .. } if known.is_some_and(|k| *confirmed > k) => {
            Some((Cause::Slot(Broken::Moved), known))
        }
        Observed::Healthy { active: true, .. } if gap_seen => {
            return Err(ResyncError::Refused(
                "the slot is in use by another process (a walrelay still running?): stop it, then resync".into(),
            ));
        }
        Observed::Healthy { confirmed, .. } if gap_seen => {
            Some((Cause::PublicationGap, Some(*confirmed)))
        }
        Observed::Healthy { .. } => None,
    })
}

/// What `walrelay resync` says about a slot with nothing to repair.
pub(super) fn healthy_text(observed: &Observed, slot: &str) -> String {
    match observed {
        Observed::Healthy {
            confirmed,
            active: true,
        } => format!(
            "slot {slot:?} is healthy (confirmed {confirmed}, streaming to a running walrelay): nothing to resync, nothing changed\n"
        ),
        Observed::Healthy { confirmed, .. } => format!(
            "slot {slot:?} is healthy (confirmed {confirmed}; its backlog decodes with the publication): nothing to resync, nothing changed\n"
        ),
        _ => format!("slot {slot:?}: nothing to resync, nothing changed\n"),
    }
}

/// Repairs the slot for `gap` and returns where the new stream starts.
pub(super) async fn repair(
    settings: &Settings,
    sql: &mut Connection,
    gap: &Gap,
) -> Result<Lsn, ResyncError> {
    let src = &settings.source;
    let database = super::current_database(sql).await?;
    let mut observed = observe(sql, &src.slot, &database).await?;
    if let Observed::Foreign(why) = observed {
        return Err(ResyncError::Refused(why));
    }
    if let Observed::Lost { .. } = observed {
        sql.simple_query(&format!(
            "SELECT pg_drop_replication_slot({})",
            quote_literal(&src.slot)
        ))
        .await?;
        observed = Observed::Missing;
    }
    match observed {
        Observed::Missing => {
            let mut repl = Connection::connect(&src.conn, true).await?;
            let created =
                setup::ensure_slot(&mut repl, &src.slot, &database, None, src.failover_slot)
                    .await?;
            repl.close().await;
            Ok(created.confirmed_flush)
        }
        Observed::Healthy { confirmed, .. } => match (gap.cause, gap.target) {
            (Cause::PublicationGap, Some(target)) if confirmed < target => {
                // Fast-forward decoding: no output plugin runs, so the missing publication is
                // never looked up; the gap's changes are passed over on purpose, and the
                // backfill that follows brings their tables back.
                sql.simple_query(&format!(
                    "SELECT pg_replication_slot_advance({}, {})",
                    quote_literal(&src.slot),
                    quote_literal(&target.to_string())
                ))
                .await?;
                Ok(target)
            }
            _ => Ok(confirmed),
        },
        Observed::Lost { .. } | Observed::Foreign(_) => Err(ResyncError::Refused(
            "the slot changed while being repaired: run walrelay resync again".into(),
        )),
    }
}

/// Decodes the slot's backlog up to the WAL end (read-only: nothing is confirmed) and says
/// whether a publication gap stops it. A healthy backlog ends with the server's keepalive
/// at or past the end; `limit` bounds the read.
pub(super) async fn probe(settings: &Settings, limit: Duration) -> Result<bool, ResyncError> {
    let src = &settings.source;
    let mut sql = Connection::connect(&src.conn, false).await?;
    let end = super::current_wal(&mut sql).await?;
    sql.close().await;
    let conn = Connection::connect(&src.conn, true).await?;
    let mut stream =
        match ReplicationStream::start(conn, &src.slot, Lsn::ZERO, &src.publication).await {
            Ok(s) => s,
            Err(SourceError::PublicationGap { .. }) => return Ok(true),
            Err(e) => return Err(e.into()),
        };
    let deadline = tokio::time::Instant::now() + limit;
    let mut ask = tokio::time::interval(Duration::from_millis(500));
    let outcome = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                break Err(ResyncError::Refused(format!(
                    "the slot's backlog could not be read to the WAL end ({end}) in {limit:?}: no problem found so far; \
                     try again with a longer --probe-seconds"
                )));
            }
            // Zero confirms nothing; the reply request makes the walsender say how far it
            // has decoded.
            _ = ask.tick() => {
                if let Err(e) = stream.send_status(Lsn::ZERO, Lsn::ZERO, true).await {
                    break Err(e.into());
                }
            }
            msg = stream.next() => match msg {
                Ok(ReplMessage::Keepalive { wal_end, .. }) if wal_end >= end => break Ok(false),
                Ok(ReplMessage::XLogData { wal_start, .. }) if wal_start >= end => break Ok(false),
                Ok(_) => {}
                Err(SourceError::PublicationGap { .. }) => break Ok(true),
                Err(e) => break Err(e.into()),
            }
        }
    };
    stream.close().await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy(at: u64, active: bool) -> Observed {
        Observed::Healthy {
            confirmed: Lsn(at),
            active,
        }
    }

    #[test]
    fn what_is_broken() {
        let d = |o: &Observed, known: Option<u64>, gap: bool| {
            diagnose(o, known.map(Lsn), gap)
                .map(|r| r.map(|(c, from)| (c, from.map(|l| l.0))))
                .map_err(|e| e.to_string())
        };
        assert_eq!(d(&healthy(10, false), Some(10), false), Ok(None));
        assert_eq!(d(&healthy(10, true), None, false), Ok(None));
        assert_eq!(
            d(&healthy(20, false), Some(10), false),
            Ok(Some((Cause::Slot(Broken::Moved), Some(10))))
        );
        assert_eq!(
            d(&healthy(10, false), Some(10), true),
            Ok(Some((Cause::PublicationGap, Some(10))))
        );
        assert!(d(&healthy(10, true), Some(10), true).is_err(), "in use");
        assert_eq!(
            d(&Observed::Missing, None, false),
            Ok(Some((Cause::Slot(Broken::Dropped), None)))
        );
        assert_eq!(
            d(
                &Observed::Lost {
                    confirmed: Some(Lsn(7))
                },
                Some(5),
                false
            ),
            Ok(Some((Cause::Slot(Broken::Invalidated), Some(7))))
        );
        let foreign = d(&Observed::Foreign("not ours".into()), None, false);
        assert_eq!(foreign, Err("not ours".into()));
    }
}
