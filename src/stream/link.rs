//! `StreamLink`: one stream-protocol connection to the node that leads some streams, the
//! publishers walrelay declared on it, and the publish frame being filled.
//!
//! Why walrelay frames its own publishes instead of using the client's `Producer`: the
//! client's producer packs whatever is queued (up to its batch size) into one frame with no
//! size check, so a burst of large rows makes a frame over the broker's `frame_max` (1 MiB by
//! default) and the broker closes the connection — and the replay after reconnecting does
//! the same, forever. Here a frame holds messages of one publisher up to [`FRAME_BUDGET`]
//! bytes and [`FRAME_MESSAGES`] messages, and is sent when full, when the next message is
//! another publisher's, or when the publish loop has nothing more to add ([`Self::flush`]).
//!
//! All publishers of a stream live on its leader's one connection, so the broker receives
//! their frames in publish order: a message may move from one producer to another (a derived
//! event after row changes, a new epoch) without waiting for confirms.
//!
//! Confirms and errors arrive on the client's handler task and become [`Signal`]s by delivery
//! tag; a confirm for an id walrelay did not send is logged and ignored (never a panic).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rabbitmq_stream_client::types::Message;
use rabbitmq_stream_client::types::MessageResult;
use rabbitmq_stream_client::types::ResponseKind;
use rabbitmq_stream_client::{Client, ClientOptions};
use tokio::sync::{mpsc, watch};
use tracing::warn;

use super::failed;
use crate::sink::{BrokerState, Signal, SinkError};

/// Bytes of messages in one publish frame at most: RabbitMQ's default stream `frame_max` of
/// 1 MiB, less room for the frame's own header. `stream.max_message_bytes`'s default
/// (1,000,000) plus a message's properties fits.
pub const FRAME_BUDGET: usize = 1_048_576 - 8192;

/// Messages in one publish frame at most (bounds the latency a full frame adds).
pub const FRAME_MESSAGES: usize = 256;

/// What a message costs in a frame beyond its body and the strings it carries: publishing
/// id, length, AMQP 1.0 section headers, property and application-property encodings.
pub const MESSAGE_OVERHEAD: usize = 512;

/// The messages sent and not answered yet, shared with the handler.
type Tags = Arc<Mutex<Outstanding>>;

/// Per publisher, (publishing id, delivery tag) of each message sent and not answered, in
/// the order sent. The broker answers a publisher's messages in that order, so an answer is
/// almost always for the oldest: a queue makes that O(1) with no hashing, and an answer out
/// of order is still found (further in).
#[derive(Default)]
struct Outstanding {
    by_publisher: Vec<VecDeque<(u64, u64)>>,
}

impl Outstanding {
    fn insert(&mut self, publisher: u8, id: u64, tag: u64) {
        let p = usize::from(publisher);
        if self.by_publisher.len() <= p {
            self.by_publisher.resize_with(p + 1, VecDeque::new);
        }
        self.by_publisher[p].push_back((id, tag));
    }

    /// The delivery tag of `publisher`'s message `id`, which is answered now; `None` for a
    /// message this link did not send (or already answered).
    fn remove(&mut self, publisher: u8, id: u64) -> Option<u64> {
        let sent = self.by_publisher.get_mut(usize::from(publisher))?;
        if sent.front().is_some_and(|&(i, _)| i == id) {
            return sent.pop_front().map(|(_, tag)| tag);
        }
        let at = sent.iter().position(|&(i, _)| i == id)?;
        sent.remove(at).map(|(_, tag)| tag)
    }
}

/// Delivery tags sent as several copies (a truncate to every partition of a super stream) →
/// copies not confirmed yet. Shared by all links: the tag is acked once every copy is.
pub type FanOut = Arc<Mutex<HashMap<u64, usize>>>;

/// One connection and its publishers.
pub struct StreamLink {
    client: Client,
    tags: Tags,
    /// Set before walrelay closes the connection itself: its end is then no failure.
    closing: Arc<AtomicBool>,
    /// Publisher ids in use on this connection (the protocol allows 256).
    declared: u16,
    /// The frame being filled: messages of `pending_for` only.
    pending: Vec<Message>,
    pending_for: u8,
    pending_bytes: usize,
}

impl StreamLink {
    /// Connects with `options` and routes this connection's confirms to `signals`.
    pub async fn open(
        options: ClientOptions,
        signals: mpsc::UnboundedSender<Signal>,
        state: Arc<watch::Sender<BrokerState>>,
        fan_out: FanOut,
    ) -> Result<StreamLink, SinkError> {
        let client = Client::connect(options)
            .await
            .map_err(|e| failed("connecting to the stream's leader", e))?;
        let tags: Tags = Arc::default();
        let closing = Arc::new(AtomicBool::new(false));
        let confirms = Arc::new(Confirms {
            tags: Arc::clone(&tags),
            closing: Arc::clone(&closing),
            fan_out,
            signals,
            state,
        });
        // The client calls a clonable closure per message it does not route to a request.
        client
            .set_handler(move |item: MessageResult| {
                let confirms = Arc::clone(&confirms);
                async move {
                    confirms.handle(item);
                    Ok(())
                }
            })
            .await;
        Ok(StreamLink {
            client,
            tags,
            closing,
            declared: 0,
            pending: Vec::with_capacity(FRAME_MESSAGES),
            pending_for: 0,
            pending_bytes: 0,
        })
    }

    /// The connection, for queries (a producer's last stored id).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Declares a publisher on `stream`, named (`Some`: the broker deduplicates by this name)
    /// or not. Returns its id on this connection.
    pub async fn declare(&mut self, name: Option<String>, stream: &str) -> Result<u8, SinkError> {
        let id = u8::try_from(self.declared).map_err(|_| {
            SinkError::Layout(
                "more than 256 stream producers on one connection (fewer super stream partitions, or fewer streams per leader node)"
                    .into(),
            )
        })?;
        let answer = self
            .client
            .declare_publisher(id, name, stream)
            .await
            .map_err(|e| failed("declaring a stream producer", e))?;
        if !answer.is_ok() {
            return Err(failed(
                "declaring a stream producer",
                format!("stream {stream:?}: {:?}", answer.code()),
            ));
        }
        self.declared += 1;
        Ok(id)
    }

    /// True when the frame being filled has messages.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Adds a message of publisher `publisher` (with its publishing id `id`, confirmed as
    /// delivery tag `tag`) to the frame, sending the frame first when the message does not fit
    /// in it or belongs to another publisher.
    pub async fn push(
        &mut self,
        publisher: u8,
        id: u64,
        tag: u64,
        message: Message,
        size: usize,
    ) -> Result<(), SinkError> {
        let fits = self.pending.is_empty()
            || (self.pending_for == publisher
                && self.pending.len() < FRAME_MESSAGES
                && self.pending_bytes + size <= FRAME_BUDGET);
        if !fits {
            self.flush().await?;
        }
        self.tags
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(publisher, id, tag);
        self.pending_for = publisher;
        self.pending_bytes += size;
        self.pending.push(message);
        Ok(())
    }

    /// Sends the frame being filled.
    pub async fn flush(&mut self) -> Result<(), SinkError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let frame = std::mem::replace(&mut self.pending, Vec::with_capacity(FRAME_MESSAGES));
        self.pending_bytes = 0;
        self.client
            .publish(self.pending_for, frame, 1)
            .await
            .map_err(|e| failed("publishing", e))?;
        Ok(())
    }

    pub async fn close(self) {
        self.closing.store(true, Ordering::Relaxed);
        let _ = self.client.close().await;
    }
}

/// The connection's handler: confirms and publish errors by delivery tag, and the end of
/// the connection.
struct Confirms {
    tags: Tags,
    closing: Arc<AtomicBool>,
    fan_out: FanOut,
    signals: mpsc::UnboundedSender<Signal>,
    state: Arc<watch::Sender<BrokerState>>,
}

impl Confirms {
    fn tag(&self, publisher: u8, id: u64) -> Option<u64> {
        let tag = self
            .tags
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(publisher, id);
        if tag.is_none() {
            warn!(
                publisher,
                id, "the broker answered for a message walrelay did not send; ignored"
            );
        }
        tag
    }

    /// True when `tag`'s confirm completes it: it has no copies, or this was the last.
    fn last_copy(&self, tag: u64) -> bool {
        let mut fan_out = self
            .fan_out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if fan_out.is_empty() {
            // The usual case (no truncate of a super stream in flight): no lookup.
            return true;
        }
        match fan_out.get_mut(&tag) {
            None => true,
            Some(left) if *left > 1 => {
                *left -= 1;
                false
            }
            Some(_) => {
                fan_out.remove(&tag);
                true
            }
        }
    }

    fn lost(&self, signal: Signal) {
        self.state.send_modify(|s| s.open = false);
        let _ = self.signals.send(signal);
    }
}

impl Confirms {
    fn handle(&self, item: MessageResult) {
        match item {
            Some(Ok(response)) => match response.kind() {
                ResponseKind::PublishConfirm(c) => {
                    for id in c.publishing_ids {
                        if let Some(tag) = self.tag(c.publisher_id, id)
                            && self.last_copy(tag)
                        {
                            let _ = self.signals.send(Signal::Ack {
                                tag,
                                multiple: false,
                            });
                        }
                    }
                }
                ResponseKind::PublishError(e) => {
                    for err in e.publishing_errors {
                        if let Some(tag) = self.tag(e.publisher_id, err.publishing_id) {
                            let _ = self.signals.send(Signal::Refused {
                                tag,
                                reason: format!("refused by the stream: {:?}", err.error_code),
                            });
                        }
                    }
                }
                // Sent for a stream this connection publishes to when it is deleted or its
                // leader moves: a new session finds the stream (or reports it missing).
                ResponseKind::MetadataUpdate(_) => self.lost(Signal::Closed {
                    what: "stream producer",
                    reply: "the stream was deleted or its leader moved (metadata update)".into(),
                }),
                ResponseKind::Close(c) => self.lost(Signal::Closed {
                    what: "stream connection",
                    reply: format!("{c:?}"),
                }),
                _ => {}
            },
            Some(Err(e)) => {
                warn!(error = %e, "the stream connection failed");
                self.lost(Signal::Lost);
            }
            None if self.closing.load(Ordering::Relaxed) => {}
            None => {
                warn!(
                    "RabbitMQ closed a stream connection; unconfirmed messages are replayed from the slot"
                );
                self.lost(Signal::Lost);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Outstanding;

    #[test]
    fn answers_in_order_out_of_order_and_unknown() {
        let mut o = Outstanding::default();
        for (id, tag) in [(10, 1), (11, 2), (12, 3)] {
            o.insert(0, id, tag);
        }
        o.insert(3, 10, 4);
        assert_eq!(o.remove(0, 10), Some(1));
        assert_eq!(o.remove(0, 12), Some(3), "out of order");
        assert_eq!(o.remove(0, 12), None, "answered twice");
        assert_eq!(o.remove(0, 11), Some(2));
        assert_eq!(o.remove(3, 10), Some(4), "another publisher, same id");
        assert_eq!(o.remove(7, 1), None, "a publisher never used");
        assert_eq!(o.remove(0, 99), None);
    }
}
