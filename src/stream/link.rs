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
//! Confirms and errors arrive on the connection's reader task and become [`Signal`]s by
//! delivery tag; a confirm for an id walrelay did not send is logged and ignored (never a
//! panic), and a frame walrelay cannot read ends the connection with its reason.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::amqp10;
use super::failed;
use super::frame::{self, Incoming, PublishFrame, Writer};
use crate::sink::{AmqpUrl, BrokerState, Signal, SinkError};

/// Bytes of messages in one publish frame at most: RabbitMQ's default stream `frame_max` of
/// 1 MiB, less room for the frame's own header. `stream.max_message_bytes`'s default
/// (1,000,000) plus a message's properties fits.
pub const FRAME_BUDGET: usize = 1_048_576 - 8192;

/// Messages in one publish frame at most (bounds the latency a full frame adds).
pub const FRAME_MESSAGES: usize = 256;

/// How long connecting (TCP, TLS, handshake) and each request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest frame read from the broker when it set no `frame_max`.
const READ_MAX: usize = 16 << 20;

/// A byte stream to the broker: plain TCP or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type BoxIo = Box<dyn Io>;

/// The messages sent and not answered yet, shared with the reader.
type Tags = Arc<Mutex<Outstanding>>;

/// Answers awaited, by correlation id: the response code and the fields after it.
type Awaited = Arc<Mutex<HashMap<u32, oneshot::Sender<(u16, Bytes)>>>>;

/// The write half, shared by publishes, requests and the heartbeat task (whole frames only).
type Out = Arc<tokio::sync::Mutex<WriteHalf<BoxIo>>>;

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

/// Where a link's answers go.
pub struct Routes {
    pub signals: mpsc::UnboundedSender<Signal>,
    pub state: Arc<watch::Sender<BrokerState>>,
    pub fan_out: FanOut,
}

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
        let (io, buf, tuned) =
            tokio::time::timeout(REQUEST_TIMEOUT, connect_and_open(url, name, host, port))
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
        let (read, write) = tokio::io::split(io);
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

    /// Adds a message of publisher `publisher` (with its publishing id `id`, confirmed as
    /// delivery tag `tag`) to the frame, sending the frame first when the message does not
    /// fit in it or belongs to another publisher.
    pub async fn push(
        &mut self,
        publisher: u8,
        id: u64,
        tag: u64,
        message: (&amqp10::Fields<'_>, &[u8]),
    ) -> Result<(), SinkError> {
        let size = PublishFrame::entry_len(message.0, message.1.len());
        if size > self.budget {
            return Err(failed(
                "publishing",
                format!(
                    "a message of {size} bytes does not fit in a frame of the {} bytes this broker accepts (lower stream.max_message_bytes, or raise the broker's stream frame_max)",
                    self.budget
                ),
            ));
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
async fn send(out: &Out, bytes: &[u8]) -> std::io::Result<()> {
    let mut w = out.lock().await;
    w.write_all(bytes).await?;
    w.flush().await
}

/// What the handshake agreed.
#[derive(Clone, Copy)]
struct Tuned {
    frame_max: u32,
    heartbeat: u32,
}

impl Tuned {
    fn read_max(&self) -> usize {
        match self.frame_max {
            0 => READ_MAX,
            n => n as usize,
        }
    }
}

/// TCP (TCP_NODELAY), TLS when the URL asks, then the handshake: peer properties, SASL
/// PLAIN, tune, open the vhost. Returns the stream and what was read past the handshake.
async fn connect_and_open(
    url: &AmqpUrl,
    name: &str,
    host: &str,
    port: u16,
) -> Result<(BoxIo, BytesMut, Tuned), SinkError> {
    const WHAT: &str = "connecting to the stream's leader";
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| failed(WHAT, format!("{host}:{port}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let io: BoxIo = if url.tls {
        let Some(ca) = &url.ca_file else {
            return Err(failed(
                "TLS",
                "rabbitmq-stream+tls:// needs ?cacertfile=<PEM bundle>",
            ));
        };
        let config =
            crate::source::tls::client_config(crate::source::SslMode::VerifyFull, Some(ca))
                .map_err(|e| failed("TLS", e))?;
        let server = crate::source::tls::server_name(host).map_err(|e| failed("TLS", e))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(server, tcp)
            .await
            .map_err(|e| failed("TLS", format!("{host}:{port}: {e}")))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let mut hs = Handshake {
        io,
        buf: BytesMut::with_capacity(4096),
    };
    let version = env!("CARGO_PKG_VERSION");
    hs.ask(
        frame::PEER_PROPERTIES,
        1,
        "exchanging peer properties",
        |w| {
            w.properties(&[
                ("connection_name", name),
                ("product", "walrelay"),
                ("version", version),
                ("platform", "Rust"),
            ]);
        },
    )
    .await?;
    let mut mechanisms = hs
        .ask(frame::SASL_HANDSHAKE, 2, "the SASL handshake", |_| {})
        .await?;
    let n = mechanisms
        .array("mechanisms", 2)
        .map_err(|e| failed(WHAT, e))?;
    let offered = (0..n)
        .map(|_| mechanisms.string("mechanism"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed(WHAT, e))?;
    if !offered.iter().any(|m| m == "PLAIN") {
        return Err(failed(
            WHAT,
            format!("the broker offers no PLAIN authentication (it offers {offered:?})"),
        ));
    }
    let mut plain = Vec::with_capacity(url.user.len() + 32);
    plain.push(0);
    plain.extend_from_slice(url.user.as_bytes());
    plain.push(0);
    plain.extend_from_slice(url.password.expose().as_bytes());
    hs.ask(frame::SASL_AUTHENTICATE, 3, "authenticating", |w| {
        w.string("PLAIN").bytes(&plain);
    })
    .await?;
    // The broker proposes its limits; walrelay takes its frame size and the smaller of the
    // two heartbeats (0 on one side means the other's).
    let tuned = loop {
        if let Incoming::Tune {
            frame_max,
            heartbeat,
        } = hs.next().await?
        {
            let ours = u32::from(url.heartbeat_secs);
            let heartbeat = match (ours, heartbeat) {
                (0, theirs) => theirs,
                (ours, 0) => ours,
                (ours, theirs) => ours.min(theirs),
            };
            break Tuned {
                frame_max,
                heartbeat,
            };
        }
    };
    let mut tune = Vec::new();
    // The answer to a tune is a tune (the key without the response bit, as RabbitMQ's own
    // clients send it).
    let mut w = Writer::begin(&mut tune, frame::TUNE, 1);
    w.u32(tuned.frame_max).u32(tuned.heartbeat);
    w.end();
    hs.send(&tune).await?;
    hs.ask(frame::OPEN, 4, "opening the virtual host", |w| {
        w.string(&url.vhost);
    })
    .await?;
    Ok((hs.io, hs.buf, tuned))
}

/// The connection before it is split: one request at a time, in order.
struct Handshake {
    io: BoxIo,
    buf: BytesMut,
}

impl Handshake {
    async fn send(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        self.io
            .write_all(bytes)
            .await
            .map_err(|e| failed("connecting to the stream's leader", e))?;
        self.io
            .flush()
            .await
            .map_err(|e| failed("connecting to the stream's leader", e))
    }

    async fn next(&mut self) -> Result<Incoming, SinkError> {
        let frame = read_frame(&mut self.io, &mut self.buf, READ_MAX)
            .await
            .map_err(|e| failed("connecting to the stream's leader", e))?;
        Incoming::parse(frame).map_err(|e| failed("connecting to the stream's leader", e))
    }

    /// Sends request `key` and returns the fields of its successful answer.
    async fn ask(
        &mut self,
        key: u16,
        correlation: u32,
        what: &'static str,
        fill: impl FnOnce(&mut Writer<'_>),
    ) -> Result<frame::Fields, SinkError> {
        let mut bytes = Vec::new();
        let mut w = Writer::begin(&mut bytes, key, 1);
        w.u32(correlation);
        fill(&mut w);
        w.end();
        self.send(&bytes).await?;
        loop {
            match self.next().await? {
                Incoming::Response {
                    key: k,
                    correlation: c,
                    code,
                    rest,
                } if k == key && c == correlation => {
                    if code != frame::OK {
                        return Err(failed(
                            "connecting to the stream's leader",
                            format!("{what}: {}", frame::code_name(code)),
                        ));
                    }
                    return Ok(frame::Fields::after_code(key, rest));
                }
                Incoming::Close { code, reason, .. } => {
                    return Err(failed(
                        "connecting to the stream's leader",
                        format!(
                            "{what}: the broker closed the connection ({}: {reason})",
                            frame::code_name(code)
                        ),
                    ));
                }
                _ => {}
            }
        }
    }
}

/// Reads the next whole frame; an error when the connection ends.
async fn read_frame<R: AsyncRead + Unpin + ?Sized>(
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

/// The connection's reader: answers to requests, confirms and errors by delivery tag, and
/// the end of the connection (by the broker, by a frame walrelay cannot read, by silence).
async fn read_loop(
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
struct Confirms {
    tags: Tags,
    closing: Arc<AtomicBool>,
    routes: Routes,
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
