//! The reader of a stream publishing connection: the broker's answers to requests (by
//! correlation id), publish confirms and errors turned into [`Signal`]s by delivery tag, and
//! the end of the connection — closed by the broker, a frame walrelay cannot read, or no frame
//! for two heartbeat intervals. A confirm for an id walrelay did not send is logged and
//! ignored, never a panic.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, ReadHalf};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};

use super::frame::{self, Incoming, Writer};
use super::handshake::BoxIo;
use super::link::{Out, send};
use crate::sink::{BrokerState, Signal};

/// The messages sent and not answered yet, shared by the link (which adds) and its reader.
pub(super) type Tags = Arc<Mutex<Outstanding>>;

/// Answers awaited, by correlation id: the response code and the fields after it.
pub(super) type Awaited = Arc<Mutex<HashMap<u32, oneshot::Sender<(u16, Bytes)>>>>;

/// Per publisher, (publishing id, delivery tag) of each message sent and not answered, in
/// the order sent. The broker answers a publisher's messages in that order, so an answer is
/// almost always for the oldest: a queue makes that O(1) with no hashing, and an answer out
/// of order is still found (further in).
#[derive(Default)]
pub(super) struct Outstanding {
    by_publisher: Vec<VecDeque<(u64, u64)>>,
}

impl Outstanding {
    pub(super) fn insert(&mut self, publisher: u8, id: u64, tag: u64) {
        let p = usize::from(publisher);
        if self.by_publisher.len() <= p {
            self.by_publisher.resize_with(p + 1, VecDeque::new);
        }
        self.by_publisher[p].push_back((id, tag));
    }

    /// The delivery tag of `publisher`'s message `id`, which is answered now; `None` for a
    /// message this link did not send (or already answered).
    pub(super) fn remove(&mut self, publisher: u8, id: u64) -> Option<u64> {
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

/// Where a link's answers go.
pub struct Routes {
    pub signals: mpsc::UnboundedSender<Signal>,
    pub state: Arc<watch::Sender<BrokerState>>,
    pub fan_out: FanOut,
}

/// Reads the next whole frame; an error when the connection ends.
pub(super) async fn read_frame<R: AsyncRead + Unpin + ?Sized>(
    io: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Bytes, String> {
    loop {
        if let Some(frame) = frame::take(buf, max).map_err(|e| e.to_string())? {
            return Ok(frame);
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        match io.read_buf(buf).await {
            Ok(0) => return Err("the broker closed the connection".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The connection's reader: answers to requests, confirms and errors by delivery tag, and
/// the end of the connection (by the broker, by a frame walrelay cannot read, by silence).
pub(super) async fn read_loop(
    mut read: ReadHalf<BoxIo>,
    mut buf: BytesMut,
    max: usize,
    silence: Option<Duration>,
    out: Out,
    awaited: &Awaited,
    confirms: Confirms,
) {
    loop {
        let next = match silence {
            Some(limit) => {
                match tokio::time::timeout(limit, read_frame(&mut read, &mut buf, max)).await {
                    Ok(next) => next,
                    Err(_) => Err(format!(
                        "no frame from the broker in {} s (two heartbeats)",
                        limit.as_secs()
                    )),
                }
            }
            None => read_frame(&mut read, &mut buf, max).await,
        };
        let incoming = next.and_then(|f| Incoming::parse(f).map_err(|e| e.to_string()));
        match incoming {
            Ok(Incoming::Response {
                correlation,
                code,
                rest,
                ..
            }) => {
                let waiter = awaited
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&correlation);
                match waiter {
                    Some(tx) => {
                        let _ = tx.send((code, rest));
                    }
                    None => debug!(correlation, "an answer to no request; ignored"),
                }
            }
            Ok(Incoming::Confirm { publisher, ids }) => confirms.confirmed(publisher, &ids),
            Ok(Incoming::Errors { publisher, errors }) => confirms.refused(publisher, &errors),
            // Sent for a stream this connection publishes to when it is deleted or its
            // leader moves: a new session finds the stream (or reports it missing).
            Ok(Incoming::MetadataUpdate { code, stream }) => {
                confirms.lost(Signal::Closed {
                    what: "stream producer",
                    reply: format!(
                        "stream {stream:?} was deleted or its leader moved (metadata update: {})",
                        frame::code_name(code)
                    ),
                });
                return;
            }
            Ok(Incoming::Close {
                correlation,
                code,
                reason,
            }) => {
                let mut answer = Vec::new();
                let mut w = Writer::begin(&mut answer, frame::CLOSE | frame::RESPONSE, 1);
                w.u32(correlation).u16(frame::OK);
                w.end();
                let _ = send(&out, &answer).await;
                if !confirms.closing.load(Ordering::Relaxed) {
                    confirms.lost(Signal::Closed {
                        what: "stream connection",
                        reply: format!("{}: {reason}", frame::code_name(code)),
                    });
                }
                return;
            }
            Ok(Incoming::Heartbeat | Incoming::Tune { .. }) => {}
            Ok(Incoming::Other { key }) => {
                debug!(key, "a stream command publishing does not use; ignored")
            }
            Err(_) if confirms.closing.load(Ordering::Relaxed) => return,
            Err(e) => {
                warn!(
                    error = %e,
                    "the stream connection failed; unconfirmed messages are replayed from the slot"
                );
                confirms.lost(Signal::Lost);
                return;
            }
        }
    }
}

/// Turns the broker's answers into signals by delivery tag.
pub(super) struct Confirms {
    pub tags: Tags,
    /// Set before walrelay closes the connection itself: its end is then no failure.
    pub closing: Arc<AtomicBool>,
    pub routes: Routes,
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
            .routes
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

    fn confirmed(&self, publisher: u8, ids: &[u64]) {
        for &id in ids {
            if let Some(tag) = self.tag(publisher, id)
                && self.last_copy(tag)
            {
                let _ = self.routes.signals.send(Signal::Ack {
                    tag,
                    multiple: false,
                });
            }
        }
    }

    fn refused(&self, publisher: u8, errors: &[(u64, u16)]) {
        for &(id, code) in errors {
            if let Some(tag) = self.tag(publisher, id) {
                let _ = self.routes.signals.send(Signal::Refused {
                    tag,
                    reason: format!("refused by the stream: {}", frame::code_name(code)),
                });
            }
        }
    }

    fn lost(&self, signal: Signal) {
        self.routes.state.send_modify(|s| s.open = false);
        let _ = self.routes.signals.send(signal);
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
