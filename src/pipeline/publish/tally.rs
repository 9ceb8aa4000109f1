//! What confirms deliver, counted once per broker answer: the published-events and bytes
//! metrics, the publish-to-confirm and commit-to-confirm latencies, the oldest unconfirmed
//! message for readiness, and the loop's progress clock.

use std::sync::Arc;

use tokio::time::Instant;

use super::{InFlight, PublishLoop};
use crate::health::now_ms;
use crate::metrics::OpTable;
use crate::sink::Sink;

/// What one broker answer delivered, applied to metrics and health once.
#[derive(Default)]
pub(super) struct Tally {
    /// The clock, read once per answer (monotonic, and wall time in µs for commit latency).
    now: Option<Instant>,
    now_us: i64,
    /// The current run of messages of one op and table: one metric lookup per run.
    run: Option<(&'static str, Arc<str>, u64)>,
    messages: i64,
    events: u64,
    bytes: u64,
}

impl Tally {
    fn clock(&mut self) -> (Instant, i64) {
        let now = *self.now.get_or_insert_with(|| {
            self.now_us = now_ms() as i64 * 1000;
            Instant::now()
        });
        (now, self.now_us)
    }
}

impl<S: Sink> PublishLoop<S> {
    /// Counts one delivered message into the tally of this answer.
    pub(super) fn observe_confirm(&self, tally: &mut Tally, done: &InFlight) {
        let m = &self.metrics;
        let (now, now_us) = tally.clock();
        m.publish_confirm_seconds.observe(
            now.saturating_duration_since(done.published_at)
                .as_secs_f64(),
        );
        if let Some(t) = done.commit_time_us {
            let commit_unix_us = crate::event::time::pg_to_unix_us(t);
            m.commit_confirm_seconds
                .observe(((now_us - commit_unix_us).max(0)) as f64 / 1e6);
        }
        match &mut tally.run {
            Some((op, table, n))
                if *op == done.op.as_str() && Arc::ptr_eq(table, &done.metric_table) =>
            {
                *n += done.events as u64
            }
            run => {
                if let Some((op, table, n)) = run.take() {
                    self.count_published(op, table, n);
                }
                *run = Some((
                    done.op.as_str(),
                    Arc::clone(&done.metric_table),
                    done.events as u64,
                ));
            }
        }
        tally.messages += 1;
        tally.events += done.events as u64;
        tally.bytes += done.bytes as u64;
    }

    pub(super) fn count_published(&self, op: &'static str, table: Arc<str>, n: u64) {
        self.metrics
            .events_published
            .get_or_create(&OpTable { op, table })
            .inc_by(n);
    }

    /// Applies a tally: metrics, the oldest unconfirmed message, progress. True when anything
    /// was delivered.
    pub(super) fn finish_tally(
        &self,
        tally: Tally,
        next: Option<&InFlight>,
        last_progress: &mut Instant,
    ) -> bool {
        let Some(now) = tally.now else {
            return false;
        };
        let m = &self.metrics;
        if let Some((op, table, n)) = tally.run {
            self.count_published(op, table, n);
        }
        m.in_flight.dec_by(tally.messages);
        m.bytes_published.inc_by(tally.bytes);
        m.progress_events
            .fetch_add(tally.events, std::sync::atomic::Ordering::Relaxed);
        let now_ms = (tally.now_us / 1000) as u64;
        self.health.set_oldest_unconfirmed(next.map(|n| {
            now_ms.saturating_sub(now.saturating_duration_since(n.published_at).as_millis() as u64)
        }));
        *last_progress = now;
        true
    }
}
