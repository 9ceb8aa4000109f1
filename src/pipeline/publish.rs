//! The publisher task: publishes events in order with a bounded window of unconfirmed
//! messages, awaits confirms in publish order, and moves the confirmed LSN forward through
//! the ack tracker. It is the only writer of the `acked` watch.
//!
//! Priorities (`biased`): (1) the oldest outstanding confirm, so the window drains first;
//! (2) the next item from the replication task, while the window has room; (3) the stall
//! watchdog: no confirm for `confirm_timeout` while messages are in flight means the broker is
//! blocked or gone, and the session ends so the replication connection is released.

use std::collections::VecDeque;
use std::time::Duration;

use lapin::PublisherConfirm;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::debug;

use super::replicate::Outbound;
use crate::checkpoint::AckTracker;
use crate::lsn::Lsn;
use crate::sink::{Publisher, SinkError};

/// What we remember about a message until its confirm arrives.
struct InFlight {
    confirm: PublisherConfirm,
    id: String,
    exchange: Option<std::sync::Arc<str>>,
    routing_key: String,
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
                        window.push_back(InFlight { confirm, id: ev.id, exchange: ev.exchange, routing_key: ev.routing_key });
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

    fn publish_position(&self) {
        let pos = self.tracker.confirmed();
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
