//! Poison rows set aside by rule (`rabbitmq.on_oversized`, `on_unroutable` = "dead_letter"),
//! never dropped: an oversized event is replaced, in its place, by a claim check; a returned
//! event is published again to the dead-letter exchange, and settles (in its own place in the
//! window, holding everything after it) only when that copy is confirmed. Both count as
//! delivered for the ack tracker only once the broker has confirmed them, like any message,
//! and both are counted in `walrelay_events_dead_lettered_total` and logged once per table.

use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::time::Instant;
use tracing::warn;

use super::{InFlight, PublishLoop};
use crate::error::RunError;
use crate::event::Event;
use crate::sink::confirms::ConfirmWindow;
use crate::sink::{ReturnedMessage, Sink, SinkError};

/// A returned message whose copy is to be published to the dead-letter exchange.
pub(super) struct Due {
    pub id: String,
    pub message: ReturnedMessage,
    /// Where it was meant to go.
    pub exchange: String,
    pub routing_key: String,
}

/// The claim check of an event over `max` bytes: its id (the same, so replays stay
/// recognizable), op, table, key and transaction fields, its size and `"oversized": true`,
/// without the row images. A consumer reads the row by its key.
pub(super) fn claim_check(mut ev: Event, max: usize) -> Event {
    let size = ev.body.len();
    let full: Value = serde_json::from_slice(&ev.body).unwrap_or(Value::Null);
    let mut claim = Map::new();
    for field in [
        "id",
        "op",
        "schema",
        "table",
        "partition",
        "key",
        "commit_lsn",
        "xid",
        "commit_time",
    ] {
        if let Some(v) = full.get(field) {
            claim.insert(field.to_owned(), v.clone());
        }
    }
    claim.insert("oversized".into(), Value::Bool(true));
    claim.insert("size".into(), size.into());
    claim.insert("max_message_bytes".into(), max.into());
    ev.body = Value::Object(claim).to_string().into_bytes();
    ev
}

impl<S: Sink> PublishLoop<S> {
    /// Publishes the copies of the messages returned since the last call, each in the window
    /// as a shadow of its original (which settles with it).
    pub(super) async fn send_dead_letters(
        &mut self,
        window: &mut ConfirmWindow<InFlight>,
    ) -> Result<(), RunError> {
        let Some(to) = self.dead_letters.unroutable_to.clone() else {
            return Ok(());
        };
        for due in std::mem::take(&mut self.due) {
            let tag = window.next_tag();
            let publish =
                self.publisher
                    .dead_letter(due.message, &to, &due.exchange, &due.routing_key);
            tokio::time::timeout(self.confirm_timeout, publish)
                .await
                .map_err(|_| SinkError::Stalled {
                    waited: self.confirm_timeout,
                    in_flight: window.len(),
                })??;
            window.push(InFlight {
                id: due.id.clone(),
                exchange: Some(Arc::from(to.as_str())),
                routing_key: due.routing_key,
                op: crate::event::Op::Control,
                metric_table: Arc::from("other"),
                bytes: 0,
                published_at: Instant::now(),
                commit_time_us: None,
                events: 0,
                claim_check: false,
                shadow: true,
            });
            window.diverted_to(|m| m.id == due.id && !m.shadow, tag);
        }
        Ok(())
    }

    /// A set-aside event was confirmed: counted, and said once per table and reason.
    pub(super) fn set_aside(&mut self, reason: &'static str, done: &InFlight) {
        self.metrics.heal.dead_lettered(reason, &done.metric_table);
        if self.told.insert((reason, Arc::clone(&done.metric_table))) {
            let to = self.dead_letters.unroutable_to.as_deref().unwrap_or("");
            match reason {
                "oversized" => warn!(reason, table = %done.metric_table, id = %done.id,
                    "an event over rabbitmq.max_message_bytes was replaced by a claim check (its key, no row): consumers read the row by its key; said once per table, counted in walrelay_events_dead_lettered_total"),
                _ => {
                    warn!(reason, table = %done.metric_table, id = %done.id, routing_key = %done.routing_key,
                    dead_letter_exchange = %to,
                    "an event no queue is bound for went to the dead-letter exchange; said once per table, counted in walrelay_events_dead_lettered_total")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_check_keeps_the_key_and_drops_the_rows() {
        let body = serde_json::json!({"id": "0/1:0", "op": "update", "schema": "public", "table": "t",
            "key": {"id": 7}, "commit_lsn": "0/1", "xid": 5, "old": null,
            "new": {"id": 7, "blob": "x".repeat(100)}});
        let ev = Event {
            id: "0/1:0".into(),
            op: crate::event::Op::Update,
            schema: "public".into(),
            table: "t".into(),
            commit_lsn: crate::lsn::Lsn(1),
            commit_time_us: None,
            routing_key: "public.t.update".into(),
            key_hash: None,
            exchange: None,
            metric_table: Arc::from("t"),
            body: body.to_string().into_bytes(),
        };
        let claim = claim_check(ev, 64);
        let v: Value = serde_json::from_slice(&claim.body).unwrap();
        assert_eq!(v["key"], serde_json::json!({"id": 7}));
        assert_eq!(v["id"], "0/1:0");
        assert_eq!(v["oversized"], true);
        assert!(v["size"].as_u64().unwrap() > 100);
        assert!(v.get("new").is_none() && v.get("old").is_none());
    }
}
