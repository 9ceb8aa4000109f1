//! Batch mode: the events of one transaction for one exchange and routing key packed into
//! one message, a JSON array whose id is `<first id>+<count>`.

use tokio::time::Instant;

use super::{InFlight, PublishLoop};
use crate::error::RunError;
use crate::event::Event;
use crate::sink::Sink;
use crate::sink::confirms::ConfirmWindow;

/// Events of one transaction waiting to be packed into one message (batch mode).
#[derive(Default)]
pub(super) struct Batch {
    pub(super) events: Vec<Event>,
    pub(super) bytes: usize,
}

impl<S: Sink> PublishLoop<S> {
    /// Sends the pending batch: one event as itself, several as a JSON array in one message
    /// whose id is `<first id>+<count>`.
    pub(super) async fn flush(
        &mut self,
        window: &mut ConfirmWindow<InFlight>,
        batch: &mut Batch,
        last_progress: &mut Instant,
    ) -> Result<(), RunError> {
        let events = std::mem::take(&mut batch.events);
        batch.bytes = 0;
        let count = events.len();
        let mut parts = events.into_iter();
        let Some(mut first) = parts.next() else {
            return Ok(());
        };
        if count > 1 {
            let mut body = Vec::with_capacity(batch_body_capacity(&first, parts.as_slice()));
            body.push(b'[');
            body.extend_from_slice(&first.body);
            for e in parts {
                body.push(b',');
                body.extend_from_slice(&e.body);
            }
            body.push(b']');
            first.id = format!("{}+{count}", first.id);
            first.body = body;
        }
        self.send(window, first, count, last_progress).await
    }
}

/// Bytes of a batch body: the events, a separator each, and the brackets.
fn batch_body_capacity(first: &Event, rest: &[Event]) -> usize {
    first.body.len() + rest.iter().map(|e| e.body.len() + 1).sum::<usize>() + 2
}
