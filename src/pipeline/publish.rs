//! The publisher task: publishes events in order with a bounded window of unconfirmed
//! messages, awaits confirms in publish order, and moves the confirmed LSN forward through
//! the ack tracker. It is the only writer of the `acked` watch.
//!
//! Priorities (`biased`): (1) the oldest outstanding confirm, so the window drains first;
//! (2) the next item from the replication task, while the window has room; (3) the stall
//! watchdog: no confirm for `confirm_timeout` while messages are in flight means the broker is
//! blocked or gone, and the session ends so the replication connection is released.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use lapin::PublisherConfirm;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::debug;

use super::replicate::Outbound;
use crate::checkpoint::AckTracker;
use crate::event::Op;
use crate::health::{Health, now_ms};
use crate::lsn::Lsn;
use crate::metrics::{Metrics, OpTable};
use crate::sink::{Publisher, SinkError};

/// What we remember about a message until its confirm arrives.
struct InFlight {
    confirm: PublisherConfirm,
    id: String,
    exchange: Option<Arc<str>>,
    routing_key: String,
    op: Op,
    metric_table: Arc<str>,
    bytes: usize,
    /// When it was published: for the publish-to-confirm latency and readiness.
    published_at: Instant,
    published_ms: u64,
    commit_time_us: Option<i64>,
}

/// Settings of the publish loop.
pub struct PublishLoop {
    pub publisher: Publisher,
    pub rx: mpsc::Receiver<Outbound>,
    pub acked: watch::Sender<Lsn>,
    pub tracker: AckTracker,
    pub max_in_flight: usize,
    pub max_message_bytes: usize,
    pub confirm_timeout: Duration,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

impl PublishLoop {
    /// Runs until the replication task closes the channel and every message is confirmed, or
    /// until the first failure.
    pub async fn run(mut self) -> Result<Publisher, SinkError> {
        let mut window: VecDeque<InFlight> = VecDeque::with_capacity(self.max_in_flight);
        let mut input_open = true;
        let mut last_progress = Instant::now();
        loop {
            if !input_open && window.is_empty() {
                return Ok(self.publisher);
            }
            let stall_at = last_progress + self.confirm_timeout;
            tokio::select! {
                biased;
                answer = async { (&mut window.front_mut().expect("guarded by is_empty").confirm).await },
                    if !window.is_empty() => {
                    let done = window.pop_front().expect("guarded by is_empty");
                    self.publisher.check(answer, &done.id, done.exchange.as_deref(), &done.routing_key)?;
                    self.tracker.confirmed_one()?;
                    last_progress = Instant::now();
                    self.observe_confirm(&done, window.front());
                    self.publish_position();
                }
                item = self.rx.recv(), if input_open && window.len() < self.max_in_flight => match item {
                    Some(Outbound::Event(ev)) => {
                        if ev.body.len() > self.max_message_bytes {
                            return Err(SinkError::Oversized {
                                id: ev.id, table: format!("{}.{}", ev.schema, ev.table),
                                size: ev.body.len(), max: self.max_message_bytes,
                            });
                        }
                        if window.is_empty() {
                            last_progress = Instant::now();
                        }
                        let confirm = tokio::time::timeout(self.confirm_timeout, self.publisher.publish(&ev))
                            .await
                            .map_err(|_| SinkError::Stalled { waited: self.confirm_timeout, in_flight: window.len() })??;
                        self.tracker.published();
                        crate::failpoint::hit("publish.before_confirm");
                        self.metrics.in_flight.inc();
                        let published_ms = now_ms();
                        if window.is_empty() {
                            self.health.set_oldest_unconfirmed(Some(published_ms));
                        }
                        window.push_back(InFlight {
                            confirm, id: ev.id, exchange: ev.exchange, routing_key: ev.routing_key,
                            op: ev.op, metric_table: ev.metric_table, bytes: ev.body.len(),
                            published_at: Instant::now(), published_ms, commit_time_us: ev.commit_time_us,
                        });
                    }
                    Some(Outbound::Position(lsn)) => {
                        self.tracker.close_unit(lsn);
                        self.publish_position();
                    }
                    None => {
                        debug!(in_flight = window.len(), "replication side closed; draining confirms");
                        input_open = false;
                    }
                },
                _ = tokio::time::sleep_until(stall_at), if !window.is_empty() => {
                    return Err(SinkError::Stalled { waited: self.confirm_timeout, in_flight: window.len() });
                }
            }
        }
    }

    fn observe_confirm(&self, done: &InFlight, next: Option<&InFlight>) {
        let m = &self.metrics;
        m.in_flight.dec();
        m.events_published
            .get_or_create(&OpTable {
                op: done.op.as_str(),
                table: Arc::clone(&done.metric_table),
            })
            .inc();
        m.bytes_published.inc_by(done.bytes as u64);
        m.publish_confirm_seconds
            .observe(done.published_at.elapsed().as_secs_f64());
        if let Some(t) = done.commit_time_us {
            let commit_unix_us = crate::event::time::pg_to_unix_us(t);
            let now_us = now_ms() as i64 * 1000;
            m.commit_confirm_seconds
                .observe(((now_us - commit_unix_us).max(0)) as f64 / 1e6);
        }
        self.health
            .set_oldest_unconfirmed(next.map(|n| n.published_ms));
    }

    fn publish_position(&self) {
        let pos = self.tracker.confirmed();
        if pos > *self.acked.borrow() {
            crate::failpoint::hit("confirm.before_status");
        }
        self.metrics.confirmed_lsn.set(pos.0);
        let wal_end = self.metrics.server_wal_end.get();
        self.metrics.lag_bytes.set(wal_end.saturating_sub(pos.0));
        self.acked.send_if_modified(|cur| {
            if pos > *cur {
                *cur = pos;
                true
            } else {
                false
            }
        });
    }
}
