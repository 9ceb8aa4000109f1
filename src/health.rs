//! Liveness and readiness: a few atomics the pipeline writes as it works, and the rule that
//! turns them into "ready" or a list of reasons why not. Served by the `http` module.
//!
//! Ready means: replication is streaming, the broker connection is open and not blocked, the
//! broker has confirmed within `confirm_timeout` whenever messages are in flight, and a status
//! update went to Postgres recently (so the slot's position is being reported). A standby
//! instance waiting for the slot is alive but not ready.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The pipeline's live state, as far as health is concerned.
#[derive(Debug, Default)]
pub(crate) struct Health {
    pub streaming: AtomicBool,
    pub broker_connected: AtomicBool,
    pub broker_blocked: AtomicBool,
    /// Waiting because another instance holds the slot.
    pub standby: AtomicBool,
    /// When the last standby status update went to Postgres (ms since the epoch; 0: never).
    pub last_status_ms: AtomicU64,
    /// When the oldest unconfirmed message was published (ms since the epoch; 0: none).
    pub oldest_unconfirmed_ms: AtomicU64,
    /// Limits, in ms: status updates older than this are stale; confirms slower than this
    /// mean the broker is not confirming.
    pub status_stale_ms: AtomicU64,
    pub confirm_timeout_ms: AtomicU64,
    /// Why the last session ended, while walrelay retries (0: it did not, or streaming resumed).
    /// One of the `RETRY_*` codes, so `/readyz` gives the real reason instead of the symptom
    /// ("not connected" between sessions).
    pub retrying: std::sync::atomic::AtomicU8,
}

/// Which part an instance plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Active,
    Standby,
}

impl Role {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Standby => "standby",
        }
    }
}

/// Why walrelay is between sessions, for [`Health::retrying`].
pub(crate) const RETRY_NONE: u8 = 0;
pub(crate) const RETRY_UNROUTABLE: u8 = 1;
pub(crate) const RETRY_NACKED: u8 = 2;
pub(crate) const RETRY_BROKER: u8 = 3;
pub(crate) const RETRY_POSTGRES: u8 = 4;
/// PostgreSQL refused the role (`source::sqlstate::Access`): the cause, not "unavailable".
pub(crate) const RETRY_REPLICATION_ROLE: u8 = 5;
pub(crate) const RETRY_PRIVILEGE: u8 = 6;
pub(crate) const RETRY_PASSWORD: u8 = 7;
pub(crate) const RETRY_HBA: u8 = 8;
pub(crate) const RETRY_LOGIN: u8 = 9;

fn retry_reason(code: u8) -> Option<&'static str> {
    match code {
        RETRY_UNROUTABLE => Some(
            "a message was returned unroutable (no queue is bound for its routing key): retrying until one is",
        ),
        RETRY_NACKED => {
            Some("RabbitMQ nacked a message (e.g. a full queue that rejects): retrying")
        }
        RETRY_BROKER => Some("RabbitMQ is unavailable or not confirming: reconnecting"),
        RETRY_POSTGRES => Some("PostgreSQL is unavailable: reconnecting"),
        RETRY_REPLICATION_ROLE => Some(
            "PostgreSQL refused the role: it lacks the REPLICATION attribute (retrying until it has it)",
        ),
        RETRY_PRIVILEGE => Some(
            "PostgreSQL refused the role a privilege walrelay needs (the log names it; retrying until it has it)",
        ),
        RETRY_PASSWORD => Some("PostgreSQL rejected the password (retrying)"),
        RETRY_HBA => {
            Some("PostgreSQL's pg_hba.conf admits no such connection (retrying until it does)")
        }
        RETRY_LOGIN => Some("PostgreSQL refused the role's login (retrying)"),
        _ => None,
    }
}

impl Health {
    pub(crate) fn new(status_interval: Duration, confirm_timeout: Duration) -> Health {
        let h = Health::default();
        // Three missed intervals, and never less than 5 s, so a busy second is not an outage.
        let stale = (status_interval.as_millis() as u64 * 3).max(5_000);
        h.status_stale_ms.store(stale, Ordering::Relaxed);
        h.confirm_timeout_ms
            .store(confirm_timeout.as_millis() as u64, Ordering::Relaxed);
        h
    }

    pub(crate) fn set(flag: &AtomicBool, v: bool) {
        flag.store(v, Ordering::Relaxed);
    }

    pub(crate) fn status_sent(&self) {
        self.last_status_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// `None` when nothing is in flight.
    pub(crate) fn set_oldest_unconfirmed(&self, published_ms: Option<u64>) {
        self.oldest_unconfirmed_ms
            .store(published_ms.unwrap_or(0), Ordering::Relaxed);
    }

    /// Ready (`/readyz`): healthy in its role — the active instance streaming and confirming,
    /// or a hot standby waiting for the slot. A standby counts as ready so that a rolling
    /// update or a disruption budget never waits forever on a pod that is standing by by
    /// design; [`Health::activity`] (`/activez`) tells the roles apart.
    pub(crate) fn readiness(&self, now_ms: u64) -> Result<Role, Vec<&'static str>> {
        if self.standby.load(Ordering::Relaxed) {
            return Ok(Role::Standby);
        }
        self.activity(now_ms).map(|()| Role::Active)
    }

    /// Active (`/activez`): this instance holds the slot, streams and confirms; or the reasons
    /// why not (short, fixed phrases: no values, no secrets).
    pub(crate) fn activity(&self, now_ms: u64) -> Result<(), Vec<&'static str>> {
        let mut why = Vec::new();
        let get = |a: &AtomicBool| a.load(Ordering::Relaxed);
        let retrying = retry_reason(self.retrying.load(Ordering::Relaxed));
        if get(&self.standby) {
            why.push("standby: another instance holds the replication slot");
        } else if let Some(r) = retrying {
            // Between sessions nothing is connected; the cause is what matters.
            why.push(r);
        } else if !get(&self.streaming) {
            why.push("replication is not streaming");
        }
        if retrying.is_none() && !get(&self.broker_connected) {
            why.push("not connected to RabbitMQ");
        }
        if get(&self.broker_blocked) {
            why.push(
                "RabbitMQ holds publishing: no confirm (a resource alarm, or an overloaded broker)",
            );
        }
        let oldest = self.oldest_unconfirmed_ms.load(Ordering::Relaxed);
        if oldest != 0
            && now_ms.saturating_sub(oldest) > self.confirm_timeout_ms.load(Ordering::Relaxed)
        {
            why.push("RabbitMQ is not confirming messages");
        }
        let last = self.last_status_ms.load(Ordering::Relaxed);
        if get(&self.streaming)
            && now_ms.saturating_sub(last) > self.status_stale_ms.load(Ordering::Relaxed)
        {
            why.push("status updates to PostgreSQL are stale");
        }
        if why.is_empty() { Ok(()) } else { Err(why) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_rules() {
        let h = Health::new(Duration::from_secs(1), Duration::from_secs(30));
        let now = 1_000_000;
        assert_eq!(
            h.activity(now),
            Err(vec![
                "replication is not streaming",
                "not connected to RabbitMQ"
            ])
        );
        Health::set(&h.streaming, true);
        Health::set(&h.broker_connected, true);
        h.last_status_ms.store(now - 1_000, Ordering::Relaxed);
        assert_eq!(h.readiness(now), Ok(Role::Active));
        h.last_status_ms.store(now - 6_000, Ordering::Relaxed);
        assert_eq!(
            h.readiness(now),
            Err(vec!["status updates to PostgreSQL are stale"])
        );
        h.last_status_ms.store(now, Ordering::Relaxed);
        h.set_oldest_unconfirmed(Some(now - 31_000));
        assert_eq!(
            h.readiness(now),
            Err(vec!["RabbitMQ is not confirming messages"])
        );
        h.set_oldest_unconfirmed(None);
        Health::set(&h.broker_blocked, true);
        assert!(h.readiness(now).is_err());
        Health::set(&h.broker_blocked, false);
        Health::set(&h.streaming, false);
        Health::set(&h.standby, true);
        assert_eq!(
            h.activity(now),
            Err(vec!["standby: another instance holds the replication slot"])
        );
        assert_eq!(h.readiness(now), Ok(Role::Standby), "a standby is ready");
        Health::set(&h.standby, false);
        h.retrying.store(RETRY_UNROUTABLE, Ordering::Relaxed);
        let why = h.readiness(now).unwrap_err();
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(why[0].contains("unroutable"));
    }
}
