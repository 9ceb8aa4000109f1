//! `StreamLink`: walrelay's own stream-protocol connection to the node that leads some
//! streams, the publishers declared on it, and the publish frame being filled.
//!
//! Why walrelay publishes over a connection of its own instead of the client library's
//! (which it still uses to create streams, read metadata and consume, for `walrelay tail`):
//! - Frames. The library's producer packs whatever is queued into one frame with no size
//!   check, so a burst of large rows makes a frame over the broker's `frame_max` and the
//!   broker closes the connection — and the replay after reconnecting does the same, forever.
//!   Here a frame holds one publisher's messages up to [`FRAME_BUDGET`] bytes (less when the
//!   broker agreed a smaller `frame_max`) and [`FRAME_MESSAGES`] messages, and is sent when
//!   full, when the next message is another publisher's, or by [`StreamLink::flush`].
//! - Cost. The library's message model (a `HashMap` per message, owned strings, two walks to
//!   encode, two body copies) was a third of walrelay's CPU per event; messages are written
//!   here straight into the frame ([`super::amqp10`]).
//! - Sockets. The library leaves Nagle's algorithm on (a 40 ms stall in its handshake); this
//!   connection sets TCP_NODELAY, and notices a broker that went silent: no frame for two
//!   heartbeat intervals ends the connection (the library noticed only at the next publish).
//!
//! All publishers of a stream live on its leader's one connection, so the broker receives
//! their frames in publish order: a message may move from one producer to another (a derived
//! event after row changes, a new epoch) without waiting for confirms.
//!
//! Confirms and errors arrive on the connection's reader task (`super::answers`) and become
//! signals by delivery tag; a confirm for an id walrelay did not send is logged and ignored
//! (never a panic), and a frame walrelay cannot read ends the connection with its reason.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::amqp10;
use super::answers::{Awaited, Confirms, Tags, read_loop};
use super::failed;
use super::frame::{self, PublishFrame, Writer};
use super::handshake::{BoxIo, connect_and_open};
use crate::sink::{AmqpUrl, SinkError};

pub use super::answers::{FanOut, Routes};

/// Bytes of messages in one publish frame at most: RabbitMQ's default stream `frame_max` of
/// 1 MiB, less room for the frame's own header. `stream.max_message_bytes`'s default
/// (1,000,000) plus a message's properties fits.
pub const FRAME_BUDGET: usize = 1_048_576 - 8192;

/// Messages in one publish frame at most (bounds the latency a full frame adds).
pub const FRAME_MESSAGES: usize = 256;

/// How long connecting (TCP, TLS, handshake) and each request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The write half, shared by publishes, requests, the heartbeat task and the reader (which
/// answers a close): whole frames only.
pub(super) type Out = Arc<tokio::sync::Mutex<WriteHalf<BoxIo>>>;

/// One connection and its publishers.
pub struct StreamLink {
    out: Out,
    awaited: Awaited,
    next_correlation: u32,
    tags: Tags,
    /// Set before walrelay closes the connection itself: its end is then no failure.
    closing: Arc<AtomicBool>,
    /// Set while a write is under way: a write cut off (its future dropped by a timeout)
    /// leaves part of a frame on the wire, and nothing may follow it.
    writing: bool,
    /// Publisher ids in use on this connection (the protocol allows 256).
    declared: u16,
    /// The node's address as it advertises it: which node this connection reached.
    advertised: Option<(String, u16)>,
    /// The frame being filled.
    frame: PublishFrame,
    budget: usize,
    reader: JoinHandle<()>,
    heartbeat: Option<JoinHandle<()>>,
}

impl Drop for StreamLink {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Relaxed);
        self.reader.abort();
        if let Some(h) = &self.heartbeat {
            h.abort();
        }
    }
}

impl StreamLink {
    /// Connects to `host:port` with the URL's credentials, vhost, heartbeat and TLS, named
    /// `name` in the broker's connection list, and routes its answers to `routes`.
    pub async fn open(
        url: &AmqpUrl,
        name: &str,
        host: &str,
        port: u16,
        routes: Routes,
    ) -> Result<StreamLink, SinkError> {
        let opened = tokio::time::timeout(REQUEST_TIMEOUT, connect_and_open(url, name, host, port))
            .await
            .map_err(|_| {
                failed(
                    "connecting to the stream's leader",
                    format!(
                        "{host}:{port}: no answer in {} s",
                        REQUEST_TIMEOUT.as_secs()
                    ),
                )
            })??;
        let (tuned, advertised, buf) = (opened.tuned, opened.advertised, opened.buf);
        let (read, write) = tokio::io::split(opened.io);
        let out: Out = Arc::new(tokio::sync::Mutex::new(write));
        let tags: Tags = Arc::default();
        let awaited: Awaited = Arc::default();
        let closing = Arc::new(AtomicBool::new(false));
        let confirms = Confirms {
            tags: Arc::clone(&tags),
            closing: Arc::clone(&closing),
            routes,
        };
        let silence =
            (tuned.heartbeat > 0).then(|| Duration::from_secs(2 * u64::from(tuned.heartbeat) + 5));
        let reader = {
            let (out, awaited) = (Arc::clone(&out), Arc::clone(&awaited));
            tokio::spawn(async move {
                read_loop(
                    read,
                    buf,
                    tuned.read_max(),
                    silence,
                    out,
                    &awaited,
                    confirms,
                )
                .await;
                // Requests still waiting fail now rather than at their timeout.
                awaited
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clear();
            })
        };
        let heartbeat = (tuned.heartbeat > 0).then(|| {
            tokio::spawn(heartbeats(
                Arc::clone(&out),
                Duration::from_secs(u64::from(tuned.heartbeat)),
            ))
        });
        let budget = match tuned.frame_max {
            0 => FRAME_BUDGET,
            max => FRAME_BUDGET.min((max as usize).saturating_sub(8192)),
        };
        Ok(StreamLink {
            out,
            awaited,
            next_correlation: 1,
            tags,
            closing,
            writing: false,
            declared: 0,
            advertised,
            frame: PublishFrame::default(),
            budget,
            reader,
            heartbeat,
        })
    }

    /// Declares a publisher on `stream`, named (`Some`: the broker deduplicates by this name)
    /// or not. Returns its id on this connection.
    pub async fn declare(&mut self, name: Option<&str>, stream: &str) -> Result<u8, SinkError> {
        let id = u8::try_from(self.declared).map_err(|_| {
            SinkError::Layout(
                "more than 256 stream producers on one connection (fewer super stream partitions, or fewer streams per leader node)"
                    .into(),
            )
        })?;
        let (code, _) = self
            .request(
                "declaring a stream producer",
                frame::DECLARE_PUBLISHER,
                |w| {
                    w.u8(id).string(name.unwrap_or("")).string(stream);
                },
            )
            .await?;
        if code != frame::OK {
            return Err(failed(
                "declaring a stream producer",
                format!("stream {stream:?}: {}", frame::code_name(code)),
            ));
        }
        self.declared += 1;
        Ok(id)
    }

    /// The highest publishing id the broker stored for producer `name` on `stream` (0: none).
    pub async fn stored_id(&mut self, name: &str, stream: &str) -> Result<u64, SinkError> {
        const WHAT: &str = "reading a producer's last publishing id";
        let (code, mut rest) = self
            .request(WHAT, frame::QUERY_PUBLISHER_SEQUENCE, |w| {
                w.string(name).string(stream);
            })
            .await?;
        if code != frame::OK {
            return Err(failed(
                WHAT,
                format!("stream {stream:?}: {}", frame::code_name(code)),
            ));
        }
        if rest.remaining() < 8 {
            return Err(failed(WHAT, "the answer ends before the sequence"));
        }
        Ok(rest.get_u64())
    }

    /// True when the frame being filled has messages.
    pub fn has_pending(&self) -> bool {
        !self.frame.is_empty()
    }

    /// The node this connection reached, as it advertises itself (`None` when it did not say).
    pub fn advertised(&self) -> Option<&(String, u16)> {
        self.advertised.as_ref()
    }

    /// The bytes of messages one publish frame of this broker holds (from its `frame_max`).
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Adds a message of publisher `publisher` (with its publishing id `id`, confirmed as
    /// delivery tag `tag`; `size` is its [`PublishFrame::entry_len`], at most
    /// [`Self::budget`]) to the frame, sending the frame first when the message does not fit
    /// in it or belongs to another publisher.
    pub async fn push(
        &mut self,
        publisher: u8,
        id: u64,
        tag: u64,
        message: (&amqp10::Fields<'_>, &[u8]),
        size: usize,
    ) -> Result<(), SinkError> {
        debug_assert_eq!(size, PublishFrame::entry_len(message.0, message.1.len()));
        if size > self.budget {
            // The caller names the event (`SinkError::OverFrame`); this is the last guard
            // against a frame the broker would close the connection over.
            return Err(SinkError::Layout(format!(
                "a stream message of {size} bytes is over the {} bytes a publish frame holds",
                self.budget
            )));
        }
        let fits = self.frame.is_empty()
            || (self.frame.publisher() == publisher
                && self.frame.len() < FRAME_MESSAGES
                && self.frame.bytes() + size <= self.budget);
        if !fits {
            self.flush().await?;
        }
        self.tags
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(publisher, id, tag);
        self.frame.add(publisher, id, message.0, message.1);
        Ok(())
    }

    /// Sends the frame being filled.
    pub async fn flush(&mut self) -> Result<(), SinkError> {
        if self.frame.is_empty() {
            return Ok(());
        }
        write(&self.out, &mut self.writing, self.frame.finish()).await
    }

    /// Tells the broker walrelay is closing, waits briefly for its answer, and ends.
    pub async fn close(mut self) {
        self.closing.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.request("closing", frame::CLOSE, |w| {
                w.u16(frame::OK).string("walrelay is stopping");
            }),
        )
        .await;
    }

    /// Sends request `key` (its correlation id, then what `fill` writes) and waits for the
    /// answer.
    async fn request(
        &mut self,
        what: &'static str,
        key: u16,
        fill: impl FnOnce(&mut Writer<'_>),
    ) -> Result<(u16, Bytes), SinkError> {
        let correlation = self.next_correlation;
        self.next_correlation = self.next_correlation.wrapping_add(1);
        let (tx, rx) = oneshot::channel();
        self.awaited
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(correlation, tx);
        let mut bytes = Vec::new();
        let mut w = Writer::begin(&mut bytes, key, 1);
        w.u32(correlation);
        fill(&mut w);
        w.end();
        if self.reader.is_finished() {
            // The reader ended (the connection is gone) and will not answer.
            return Err(failed(what, "the connection is closed"));
        }
        write(&self.out, &mut self.writing, &bytes).await?;
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(failed(what, "the connection closed before the answer")),
            Err(_) => Err(failed(
                what,
                format!("no answer in {} s", REQUEST_TIMEOUT.as_secs()),
            )),
        }
    }
}

/// Writes one whole frame (or several) and flushes (TLS buffers).
async fn write(out: &Out, writing: &mut bool, bytes: &[u8]) -> Result<(), SinkError> {
    if *writing {
        return Err(failed(
            "publishing",
            "an earlier write on this connection was cut off",
        ));
    }
    *writing = true;
    send(out, bytes)
        .await
        .map_err(|e| failed("publishing", e))?;
    *writing = false;
    Ok(())
}

/// Writes whole frames under the write half's lock and flushes them (TLS buffers): every
/// writer of the connection (publishes, requests, heartbeats, the answer to a close).
pub(super) async fn send(out: &Out, bytes: &[u8]) -> std::io::Result<()> {
    let mut w = out.lock().await;
    w.write_all(bytes).await?;
    w.flush().await
}

/// A heartbeat frame every `every`; ends when a write fails (the reader reports the loss).
async fn heartbeats(out: Out, every: Duration) {
    let mut beat = Vec::new();
    Writer::begin(&mut beat, frame::HEARTBEAT, 1).end();
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        if send(&out, &beat).await.is_err() {
            return;
        }
    }
}
