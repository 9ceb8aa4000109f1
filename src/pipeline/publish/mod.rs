//! The publisher task: publishes events in order with a bounded window of unconfirmed
//! messages, awaits confirms in publish order, and moves the confirmed LSN forward through
//! the ack tracker. It is the only writer of the `acked` watch.
//!
//! Priorities (`biased`): (1) the broker's answers (confirms, returns, closes, a lost
//! connection), so the window drains first and a failure ends the session at once, even when
//! nothing is in flight; (2) the next item from the replication task, while the window has
//! room; (3) the stall watchdog: no confirm for `confirm_timeout` while messages are in flight
//! means the broker is blocked or gone, and the session ends so the replication connection is
//! released. How answers settle messages in publish order: [`ConfirmWindow`].
//!
//! Held publishing is noticed sooner than the stall: with messages in flight and no confirm
//! for `hold_warning`, the loop says so once (and asks the management API, when reachable,
//! whether a memory or disk alarm is the cause), sets `walrelay_broker_blocked`, and says
//! again when confirms resume. RabbitMQ's own `connection.blocked` notification would say it
//! directly, but the broker sends it only to clients announcing the capability, and amqprs
//! does not (docs/architecture.md).

mod batch;
mod dead_letter;
#[cfg(test)]
mod dead_letter_tests;
mod settle;
mod tally;
#[cfg(test)]
pub(super) mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::checkpoint::AckTracker;
use crate::error::RunError;
use crate::event::Outbound;
use crate::event::{Event, Op};
use crate::health::{Health, now_ms};
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::sink::confirms::ConfirmWindow;
use crate::sink::{BatchLimits, Sink, SinkError};

use batch::Batch;

/// Ready answers and items the loop takes in a row before it looks at its timers again.
const QUICK_RUN: u32 = 64;

/// What we remember about a message until its confirm arrives.
struct InFlight {
    id: String,
    exchange: Option<Arc<str>>,
    routing_key: String,
    op: Op,
    metric_table: Arc<str>,
    bytes: usize,
    /// When it was published: for the publish-to-confirm latency and readiness.
    published_at: Instant,
    commit_time_us: Option<i64>,
    /// Events in the message (more than one in batch mode).
    events: usize,
    /// A claim check standing in for an oversized event (counted as set aside when confirmed).
    claim_check: bool,
    /// A copy to the dead-letter exchange: it settles its original, and is not a message of
    /// the stream itself (the ack tracker never counts it).
    shadow: bool,
}

/// Settings of the publish loop, over any [`Sink`] (the session's [`Outlet`](crate::sink::Outlet),
/// or a scripted one in the unit tests).
pub(crate) struct PublishLoop<S: Sink> {
    publisher: S,
    rx: mpsc::Receiver<Outbound>,
    acked: watch::Sender<Lsn>,
    tracker: AckTracker,
    max_in_flight: usize,
    max_message_bytes: usize,
    confirm_timeout: Duration,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    batch: BatchLimits,
    /// No confirm for this long with messages in flight: publishing is held (said once).
    hold_warning: Duration,
    /// The management API, to name the alarm that holds publishing (best effort).
    alarms: Option<Arc<crate::sink::management::Api>>,
    /// Why the broker refused the last refused message (the stream sink's status code).
    refusal: Option<String>,
    /// What an oversized or unroutable event does instead of holding the stream.
    dead_letters: crate::sink::DeadLetters,
    /// Returned messages whose copies to the dead-letter exchange are still to be published.
    due: Vec<dead_letter::Due>,
    /// The next message sent is a claim check (read and cleared by `send`).
    claim_next: bool,
    /// (reason, table) pairs already logged: a poison row is said once per table.
    told: std::collections::HashSet<(&'static str, Arc<str>)>,
}

impl<S: Sink> PublishLoop<S> {
    /// A loop publishing what `rx` brings through `publisher`, as `sink` configures it, and
    /// telling `acked` the confirmed position (from `start`, where the slot stands).
    pub(crate) fn new(
        publisher: S,
        rx: mpsc::Receiver<Outbound>,
        acked: watch::Sender<Lsn>,
        start: Lsn,
        sink: &crate::sink::SinkSettings,
        obs: &super::Observers,
    ) -> PublishLoop<S> {
        PublishLoop {
            publisher,
            rx,
            acked,
            tracker: AckTracker::new(start),
            max_in_flight: sink.max_in_flight,
            max_message_bytes: sink.max_message_bytes,
            confirm_timeout: sink.confirm_timeout,
            metrics: Arc::clone(&obs.metrics),
            health: Arc::clone(&obs.health),
            batch: sink.batch,
            // Long enough to not warn about a slow confirm, short enough to say it before
            // the stall ends the session.
            hold_warning: (sink.confirm_timeout / 10)
                .clamp(Duration::from_secs(1), Duration::from_secs(5)),
            alarms: sink.management_api().map(Arc::new),
            refusal: None,
            dead_letters: sink.dead_letters.clone(),
            due: Vec::new(),
            claim_next: false,
            told: Default::default(),
        }
    }

    /// Runs until the replication task closes the channel and every message is confirmed, or
    /// until the first failure.
    pub(crate) async fn run(mut self) -> Result<S, RunError> {
        let mut window: ConfirmWindow<InFlight> = ConfirmWindow::new(self.max_in_flight);
        let mut input_open = true;
        let mut last_progress = Instant::now();
        let mut batch = Batch::default();
        let mut held = false;
        let mut quick = 0;
        // Answers delivered messages since the confirmed position was last published.
        let mut moved = false;
        self.set_held(false);
        loop {
            // What is ready already is taken without arming the `select!` below (its timers
            // and wake-up registrations cost more than a message does): answers first, all
            // that are ready before the confirmed position is published once (a watch send
            // per answer was a measurable part of the CPU per event), then the next item.
            // Every `QUICK_RUN` turns the select runs anyway, so the stall and hold timers
            // are looked at under a load that is never idle.
            if quick < QUICK_RUN
                && let Some(answer) = self.publisher.try_answer()
            {
                quick += 1;
                self.answered(
                    answer,
                    &mut window,
                    &mut last_progress,
                    &mut held,
                    &mut moved,
                )?;
                self.send_dead_letters(&mut window).await?;
                continue;
            }
            if std::mem::take(&mut moved) {
                self.publish_position();
            }
            if !input_open && window.is_empty() {
                return Ok(self.publisher);
            }
            // The stream sink fills frames: send them once nothing more is ready to add (or
            // no more may be added), before waiting on anything.
            if self.publisher.has_pending()
                && (self.rx.is_empty() || !input_open || window.len() >= self.max_in_flight)
            {
                self.flush_frames(window.len()).await?;
            }
            if quick < QUICK_RUN
                && input_open
                && window.len() < self.max_in_flight
                && let Ok(item) = self.rx.try_recv()
            {
                quick += 1;
                self.take(
                    Some(item),
                    &mut window,
                    &mut batch,
                    &mut last_progress,
                    &mut input_open,
                )
                .await?;
                continue;
            }
            quick = 0;
            let stall_at = last_progress + self.confirm_timeout;
            tokio::select! {
                biased;
                answer = self.publisher.answer() => {
                    self.answered(answer, &mut window, &mut last_progress, &mut held, &mut moved)?;
                    self.send_dead_letters(&mut window).await?;
                }
                item = self.rx.recv(), if input_open && window.len() < self.max_in_flight => {
                    self.take(item, &mut window, &mut batch, &mut last_progress, &mut input_open)
                        .await?;
                }
                _ = tokio::time::sleep_until(last_progress + self.hold_warning), if !window.is_empty() && !held => {
                    held = true;
                    self.set_held(true);
                    warn!(
                        in_flight = window.len(),
                        waited_ms = self.hold_warning.as_millis() as u64,
                        "RabbitMQ confirms nothing: publishing is held (blocked by a memory or disk alarm, or the broker is overloaded or unreachable); the session ends after rabbitmq.confirm_timeout_ms"
                    );
                    if let Some(api) = &self.alarms {
                        tokio::spawn(crate::sink::management::report_alarms(Arc::clone(api)));
                    }
                }
                _ = tokio::time::sleep_until(stall_at), if !window.is_empty() => {
                    return Err(SinkError::Stalled { waited: self.confirm_timeout, in_flight: window.len() }.into());
                }
            }
        }
    }

    /// Takes the next item of the replication task (`None`: it is done).
    async fn take(
        &mut self,
        item: Option<Outbound>,
        window: &mut ConfirmWindow<InFlight>,
        batch: &mut Batch,
        last_progress: &mut Instant,
        input_open: &mut bool,
    ) -> Result<(), RunError> {
        match item {
            Some(Outbound::Event(ev)) => {
                if ev.body.len() > self.max_message_bytes {
                    if !self.dead_letters.oversized {
                        return Err(RunError::Sink(SinkError::Oversized {
                            id: ev.id,
                            table: format!("{}.{}", ev.schema, ev.table),
                            size: ev.body.len(),
                            max: self.max_message_bytes,
                        }));
                    }
                    // In its own place and alone: a claim check is never batched.
                    self.flush(window, batch, last_progress).await?;
                    let claim = dead_letter::claim_check(ev, self.max_message_bytes);
                    self.claim_next = true;
                    return self.send(window, claim, 1, last_progress).await;
                }
                if self.batch.max_events <= 1 {
                    self.send(window, ev, 1, last_progress).await?;
                } else {
                    // A batch holds events of one transaction for one exchange and routing
                    // key, within the limits; anything else flushes it first.
                    let fits = batch.events.first().is_none_or(|f| {
                        f.commit_lsn == ev.commit_lsn
                            && f.exchange == ev.exchange
                            && f.routing_key == ev.routing_key
                            && batch.events.len() < self.batch.max_events
                            && batch.bytes + ev.body.len() < self.batch.max_bytes
                            && self.publisher.same_producer(f, &ev)
                    });
                    if !fits {
                        self.flush(window, batch, last_progress).await?;
                    }
                    batch.bytes += ev.body.len() + 1;
                    batch.events.push(ev);
                }
            }
            Some(Outbound::Position(lsn)) => {
                // Never across the LSN contract: a transaction's batch is sent before its end
                // position is recorded.
                self.flush(window, batch, last_progress).await?;
                self.tracker.close_unit(lsn);
                self.publish_position();
            }
            None => {
                self.flush(window, batch, last_progress).await?;
                debug!(
                    in_flight = window.len(),
                    "replication side closed; draining confirms"
                );
                *input_open = false;
            }
        }
        Ok(())
    }

    /// Publishes one message (of `count` events) and adds it to the window.
    async fn send(
        &mut self,
        window: &mut ConfirmWindow<InFlight>,
        ev: Event,
        count: usize,
        last_progress: &mut Instant,
    ) -> Result<(), RunError> {
        let mut ev = ev;
        let body = std::mem::take(&mut ev.body);
        let bytes = body.len();
        // Bounded: a broker that stops reading fills amqprs's outgoing queue and the publish
        // waits. Almost always it completes at once, so it is polled once before a timer is
        // armed (a timer per message was a measurable part of the CPU per event).
        {
            let mut publish = std::pin::pin!(self.publisher.publish(&ev, body, count));
            let first =
                std::future::poll_fn(|cx| std::task::Poll::Ready(publish.as_mut().poll(cx))).await;
            match first {
                std::task::Poll::Ready(done) => done?,
                std::task::Poll::Pending => tokio::time::timeout(self.confirm_timeout, publish)
                    .await
                    .map_err(|_| SinkError::Stalled {
                        waited: self.confirm_timeout,
                        in_flight: window.len(),
                    })??,
            }
        }
        self.tracker.published();
        crate::failpoint::hit("publish.before_confirm");
        self.metrics.in_flight.inc();
        let published_at = Instant::now();
        if window.is_empty() {
            *last_progress = published_at;
            self.health.set_oldest_unconfirmed(Some(now_ms()));
        }
        window.push(InFlight {
            id: ev.id,
            exchange: ev.exchange,
            routing_key: ev.routing_key,
            op: ev.op,
            metric_table: ev.metric_table,
            bytes,
            published_at,
            commit_time_us: ev.commit_time_us,
            events: count,
            claim_check: std::mem::take(&mut self.claim_next),
            shadow: false,
        });
        Ok(())
    }

    /// Sends the stream sink's filled frames, bounded like a publish: a broker that stops
    /// reading ends the session as stalled.
    async fn flush_frames(&mut self, in_flight: usize) -> Result<(), RunError> {
        tokio::time::timeout(self.confirm_timeout, self.publisher.flush())
            .await
            .map_err(|_| SinkError::Stalled {
                waited: self.confirm_timeout,
                in_flight,
            })??;
        Ok(())
    }

    fn set_held(&self, held: bool) {
        crate::health::Health::set(&self.health.broker_blocked, held);
        self.metrics.broker_blocked.set(i64::from(held));
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
