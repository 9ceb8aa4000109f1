//! How the broker's answers settle the window: each answer marks messages, then the settled
//! prefix leaves the window in publish order. Delivered messages advance the ack tracker; the
//! first returned or nacked one ends the session, after what was delivered before it counted.

use tokio::time::Instant;
use tracing::info;

use super::tally::Tally;
use super::{InFlight, PublishLoop};
use crate::error::RunError;
use crate::sink::confirms::{ConfirmWindow, Settled};
use crate::sink::{Answer, Signal, Sink, SinkError};

impl<S: Sink> PublishLoop<S> {
    /// Applies an answer of the broker; says so when confirms resume after a hold. `moved`
    /// is set when messages were delivered: the caller publishes the confirmed position. When
    /// the answer ends the session, the position is published first, so what earlier answers
    /// delivered is not replayed.
    pub(super) fn answered(
        &mut self,
        answer: Answer,
        window: &mut ConfirmWindow<InFlight>,
        last_progress: &mut Instant,
        held: &mut bool,
        moved: &mut bool,
    ) -> Result<(), RunError> {
        let before = *last_progress;
        match self.settle(answer, window, last_progress) {
            Ok(delivered) => *moved |= delivered,
            Err(e) => {
                if std::mem::take(moved) {
                    self.publish_position();
                }
                return Err(e);
            }
        }
        if *held && *last_progress != before {
            *held = false;
            self.set_held(false);
            info!(
                held_ms = before.elapsed().as_millis() as u64,
                "RabbitMQ confirms again: publishing resumed"
            );
        }
        Ok(())
    }

    /// Applies one answer of the broker, then moves every message settled at the front of the
    /// window out of it, in publish order: delivered ones advance the ack tracker; the first
    /// returned or nacked one ends the session (after what was delivered before it counted).
    ///
    /// True when messages were delivered: the caller publishes the confirmed position once
    /// the answers that are ready have all been applied (a watch send per answer was a
    /// measurable part of the CPU per event).
    fn settle(
        &mut self,
        answer: Answer,
        window: &mut ConfirmWindow<InFlight>,
        last_progress: &mut Instant,
    ) -> Result<bool, RunError> {
        let protocol = |e: crate::sink::confirms::UnknownTag| SinkError::Amqp {
            context: "publisher confirms",
            source: crate::sink::AmqpError::new(e.to_string()),
        };
        match answer {
            Signal::Ack { tag, multiple } => window.ack(tag, multiple).map_err(protocol)?,
            Signal::Nack { tag, multiple } => window.nack(tag, multiple).map_err(protocol)?,
            Signal::Refused { tag, reason } => {
                self.refusal = Some(reason);
                window.nack(tag, false).map_err(protocol)?
            }
            Signal::Returned {
                message_id,
                exchange,
                routing_key,
                reply,
                message,
            } => {
                // Its ack follows: the message is settled (as returned) when that arrives; or,
                // with a dead-letter exchange, when its copy there is confirmed.
                let id = message_id.unwrap_or_default();
                if self.dead_letters.unroutable_to.is_some()
                    && let Some(message) = message
                    && window.returned_for_dead_letter(|m| m.id == id && !m.shadow, reply.clone())
                {
                    self.due.push(super::dead_letter::Due {
                        id,
                        message: *message,
                        exchange,
                        routing_key,
                    });
                    return Ok(false);
                }
                if window.returned(|m| m.id == id, reply) {
                    return Ok(false);
                }
                return Err(SinkError::Unroutable {
                    id,
                    exchange,
                    routing_key,
                }
                .into());
            }
            Signal::Closed { what, reply } => return Err(SinkError::Closed { what, reply }.into()),
            Signal::Lost => return Err(SinkError::Lost.into()),
        }
        let mut tally = Tally::default();
        while let Some(done) = window.pop_settled() {
            match done {
                // A dead letter's copy: its original settled (or failed) with it.
                Settled::Delivered(done) | Settled::Returned(done, _) | Settled::Nacked(done)
                    if done.shadow => {}
                Settled::Delivered(done) => {
                    self.tracker.confirmed_one()?;
                    self.observe_confirm(&mut tally, &done);
                    if done.claim_check {
                        self.set_aside("oversized", &done);
                    }
                }
                Settled::DeadLettered(done) => {
                    self.tracker.confirmed_one()?;
                    self.observe_confirm(&mut tally, &done);
                    self.set_aside("unroutable", &done);
                }
                Settled::Returned(done, _) => {
                    self.finish_tally(tally, window.front(), last_progress);
                    self.publish_position();
                    // With a dead-letter exchange, it is the copy that came back: that
                    // exchange routes nothing.
                    return Err(SinkError::Unroutable {
                        id: done.id,
                        exchange: self
                            .dead_letters
                            .unroutable_to
                            .as_deref()
                            .or(done.exchange.as_deref())
                            .unwrap_or(self.publisher.destination())
                            .to_owned(),
                        routing_key: done.routing_key,
                    }
                    .into());
                }
                Settled::Nacked(done) => {
                    self.finish_tally(tally, window.front(), last_progress);
                    self.publish_position();
                    return Err(SinkError::Nacked {
                        id: done.id,
                        routing_key: done.routing_key,
                        why: self.refusal.take().unwrap_or_else(|| {
                            "nacked by the broker (queue full with reject-publish, or a queue error)".to_owned()
                        }),
                    }
                    .into());
                }
            }
        }
        Ok(self.finish_tally(tally, window.front(), last_progress))
    }
}
