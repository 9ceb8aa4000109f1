//! The ack tracker: decides which LSN may be confirmed to PostgreSQL, from broker confirms.
//!
//! The contract (see `docs/architecture.md`): the flush LSN we report is the `end_lsn` of the
//! last transaction whose messages, and all messages before them, the broker has positively
//! confirmed. It never goes backwards. A transaction with nothing to publish, and an idle
//! keepalive position received while no transaction was open, are "units" with zero messages:
//! they advance the position as soon as everything queued before them is confirmed.
//!
//! The tracker is pure: the publisher tells it what was published and what was confirmed, in
//! publish order, and asks it for the position. Confirms resolve in publish order because the
//! publisher awaits them in that order, so "the unbroken prefix" is simply the front of a queue.

use std::collections::VecDeque;

use crate::lsn::Lsn;

/// One position waiting for the broker: reached when its `unconfirmed` messages are confirmed.
#[derive(Debug)]
struct Unit {
    /// Messages published for this unit that the broker has not confirmed yet.
    unconfirmed: u64,
    /// The LSN that may be confirmed to PostgreSQL once this unit and every earlier one is done.
    /// `None` while the unit is still open (its commit has not been seen yet).
    end: Option<Lsn>,
}

/// Tracks published-but-unconfirmed messages grouped by transaction, in publish order.
#[derive(Debug)]
pub(crate) struct AckTracker {
    /// Units in publish order; the front is the oldest.
    units: VecDeque<Unit>,
    /// The highest position every message before which is confirmed. Never decreases.
    confirmed: Lsn,
    /// Messages published and not yet confirmed, over all units (for metrics and shutdown).
    in_flight: u64,
}

/// Misuse of the tracker by its caller: a bug, reported rather than ignored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrackerError {
    /// A confirm arrived while no message was in flight.
    #[error("a broker confirm arrived with no message in flight")]
    UnexpectedConfirm,
}

impl AckTracker {
    /// A tracker whose position starts at `start` (the slot's confirmed position).
    pub(crate) fn new(start: Lsn) -> Self {
        AckTracker {
            units: VecDeque::new(),
            confirmed: start,
            in_flight: 0,
        }
    }

    /// The position that may be reported to PostgreSQL as flushed.
    pub(crate) fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    /// Messages published and not confirmed yet.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// True when nothing is waiting for the broker.
    #[cfg(test)]
    pub(crate) fn is_idle(&self) -> bool {
        self.units.is_empty()
    }

    /// A message was published; it belongs to the currently open unit (opened if needed).
    pub(crate) fn published(&mut self) {
        match self.units.back_mut() {
            Some(unit) if unit.end.is_none() => unit.unconfirmed += 1,
            _ => self.units.push_back(Unit {
                unconfirmed: 1,
                end: None,
            }),
        }
        self.in_flight += 1;
    }

    /// The open unit (if any) ends at `end`: a transaction's commit `end_lsn`, or an idle
    /// keepalive position. A unit with no messages is created when none is open.
    pub(crate) fn close_unit(&mut self, end: Lsn) {
        match self.units.back_mut() {
            Some(unit) if unit.end.is_none() => unit.end = Some(end),
            _ => self.units.push_back(Unit {
                unconfirmed: 0,
                end: Some(end),
            }),
        }
        self.advance();
    }

    /// The broker positively confirmed the oldest unconfirmed message.
    pub(crate) fn confirmed_one(&mut self) -> Result<(), TrackerError> {
        let front = self
            .units
            .iter_mut()
            .find(|u| u.unconfirmed > 0)
            .ok_or(TrackerError::UnexpectedConfirm)?;
        front.unconfirmed -= 1;
        self.in_flight -= 1;
        self.advance();
        Ok(())
    }

    /// Pops every finished unit at the front and moves the position forward (never back).
    fn advance(&mut self) {
        while let Some(front) = self.units.front() {
            match front.end {
                Some(end) if front.unconfirmed == 0 => {
                    if end > self.confirmed {
                        self.confirmed = end;
                    }
                    self.units.pop_front();
                }
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_only_over_a_fully_confirmed_prefix() {
        let mut t = AckTracker::new(Lsn(10));
        t.published();
        t.published();
        t.close_unit(Lsn(100));
        t.published();
        t.close_unit(Lsn(200));
        assert_eq!(t.confirmed(), Lsn(10));
        t.confirmed_one().unwrap();
        assert_eq!(
            t.confirmed(),
            Lsn(10),
            "half a transaction confirmed must not move the LSN"
        );
        t.confirmed_one().unwrap();
        assert_eq!(t.confirmed(), Lsn(100));
        t.confirmed_one().unwrap();
        assert_eq!(t.confirmed(), Lsn(200));
        assert!(t.is_idle());
        assert_eq!(t.confirmed_one(), Err(TrackerError::UnexpectedConfirm));
    }

    #[test]
    fn empty_transactions_and_idle_positions_wait_for_earlier_messages() {
        let mut t = AckTracker::new(Lsn(0));
        t.published();
        t.close_unit(Lsn(100));
        t.close_unit(Lsn(150)); // transaction with nothing to publish
        t.close_unit(Lsn(300)); // idle keepalive position
        assert_eq!(t.confirmed(), Lsn(0));
        t.confirmed_one().unwrap();
        assert_eq!(t.confirmed(), Lsn(300));
    }

    #[test]
    fn empty_unit_with_nothing_in_flight_advances_at_once() {
        let mut t = AckTracker::new(Lsn(50));
        t.close_unit(Lsn(70));
        assert_eq!(t.confirmed(), Lsn(70));
    }

    #[test]
    fn never_goes_backwards() {
        let mut t = AckTracker::new(Lsn(500));
        t.close_unit(Lsn(400)); // a replayed transaction below the start position
        assert_eq!(t.confirmed(), Lsn(500));
        t.published();
        t.close_unit(Lsn(450));
        t.confirmed_one().unwrap();
        assert_eq!(t.confirmed(), Lsn(500));
    }

    #[test]
    fn open_unit_holds_later_positions() {
        let mut t = AckTracker::new(Lsn(0));
        t.published(); // transaction still open: its commit not seen
        t.confirmed_one().unwrap();
        assert_eq!(t.confirmed(), Lsn(0));
        assert_eq!(t.in_flight(), 0);
        t.close_unit(Lsn(90));
        assert_eq!(t.confirmed(), Lsn(90));
    }
}
