//! The RabbitMQ side: where and how walrelay publishes ([`SinkSettings`]), what can go wrong
//! ([`SinkError`]), and the [`Sink`] trait with the durability contract every destination meets.
//!
//! - [`amqp`]: an exchange over AMQP 0-9-1 (amqprs): connection, confirm-mode publisher with
//!   `mandatory`, topic matching, the wait for a binding after an unroutable message.
//! - [`stream`]: a RabbitMQ stream or super stream over the stream protocol, with publishing
//!   ids the broker deduplicates on.
//! - [`outlet`]: the one of them the configuration chose, as one [`Sink`].
//! - [`confirms`]: the window that settles answers in publish order (shared by both).
//! - [`url`], [`management`]: the broker's URLs and its management API, shared by both.

use std::time::Duration;

use crate::secret::Secret;

pub mod amqp;
pub mod confirms;
pub mod management;
pub mod outlet;
pub mod stream;
pub mod url;

pub use amqp::link::ReturnedMessage;
pub use amqp::{AmqpError, Answer, BrokerState, Link, Publisher, Signal};
pub use outlet::Outlet;
pub use url::AmqpUrl;

use std::future::Future;

use crate::event::Event;

/// A destination a session publishes to: an exchange ([`amqp::Publisher`]), a stream
/// ([`stream::StreamPublisher`]), the one the configuration chose ([`Outlet`]), or the scripted
/// sink of the publish loop's unit tests.
///
/// # The durability contract
///
/// Every implementation keeps it; the ack tracker, and so the slot's position in PostgreSQL,
/// rely on nothing else:
///
/// 1. **Numbered in publish order.** Each [`publish`](Sink::publish) hands over one message,
///    and the answers name it by its delivery tag: 1 for the first message of the sink, then
///    one more per message, in the order they were handed over.
/// 2. **A confirm is delivery.** [`Signal::Ack`] for a tag (or for every tag up to it, with
///    `multiple`) means the broker holds the message as durably as its queue or stream
///    promises. Nothing else makes a message delivered.
/// 3. **Everything else is failure.** [`Signal::Nack`] and [`Signal::Refused`] (the broker
///    refused it), [`Signal::Returned`] (no queue is bound for it: the ack that follows does not
///    make it delivered), [`Signal::Closed`] and [`Signal::Lost`]. The session ends on the first
///    of them; a sink never reconnects or re-sends by itself, because the unconfirmed messages
///    come back from the replication slot.
/// 4. **No invented answers.** A sink reports only what the broker said, in the order it said
///    it; [`try_answer`](Sink::try_answer) never waits.
///
/// So the slot moves only over the confirmed prefix: the publish loop gives the ack tracker
/// the delivered messages in publish order, and the tracker confirms a transaction's end
/// position only once every message up to it is delivered.
pub trait Sink: Send + 'static {
    /// What the destination is called in logs: `exchange` or `stream`.
    fn kind(&self) -> &'static str;

    /// The default exchange or stream.
    fn destination(&self) -> &str;

    /// Hands one message over (`count` events: more than one in batch mode). Returns once the
    /// sink took it, not when the broker confirmed it.
    fn publish(
        &mut self,
        event: &Event,
        body: Vec<u8>,
        count: usize,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// The broker's next answer, in the order it arrived.
    fn answer(&mut self) -> impl Future<Output = Signal> + Send;

    /// The next answer if one has arrived already (never waits).
    fn try_answer(&mut self) -> Option<Signal>;

    /// True when handed-over messages wait in a frame of the sink's own (the stream sink
    /// frames its publishes; AMQP's client writes each at once).
    fn has_pending(&self) -> bool {
        false
    }

    /// Sends the messages waiting in frames: the publish loop calls it when it has nothing
    /// more to add right now.
    fn flush(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send {
        async { Ok(()) }
    }

    /// True when `a` and `b` may share one batch message (the stream sink packs only events
    /// of one producer).
    fn same_producer(&self, _a: &Event, _b: &Event) -> bool {
        true
    }

    /// Publishes a message the broker returned again, to the dead-letter exchange `to`, with
    /// the exchange and routing key it was meant for (`rabbitmq.on_unroutable =
    /// "dead_letter"`). Numbered like any publish (rule 1), and delivered only when confirmed
    /// and not returned again. Only exchanges return messages: the default refuses.
    fn dead_letter(
        &mut self,
        message: ReturnedMessage,
        to: &str,
        exchange: &str,
        routing_key: &str,
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        let _ = (message, to, exchange, routing_key);
        async {
            Err(SinkError::Amqp {
                context: "publishing a dead letter",
                source: AmqpError::new("this destination never returns messages"),
            })
        }
    }

    /// The connection's state: open, blocked by a resource alarm.
    fn state(&self) -> tokio::sync::watch::Receiver<BrokerState>;

    /// Closes politely (best effort, bounded).
    fn close(self) -> impl Future<Output = ()> + Send
    where
        Self: Sized;
}

/// The next signal if one has arrived already (never waits); a channel whose senders are
/// gone is a lost connection. Both sinks' `try_answer`.
pub(crate) fn try_signal(
    signals: &mut tokio::sync::mpsc::UnboundedReceiver<Signal>,
) -> Option<Signal> {
    match signals.try_recv() {
        Ok(signal) => Some(signal),
        Err(tokio::sync::mpsc::error::TryRecvError::Empty) => None,
        Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => Some(Signal::Lost),
    }
}

/// Errors of the RabbitMQ side.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("RabbitMQ: {context}: {source}")]
    Amqp {
        context: &'static str,
        #[source]
        source: AmqpError,
    },
    #[error("RabbitMQ closed the publishing {what}: {reply}")]
    Closed { what: &'static str, reply: String },
    #[error("RabbitMQ: the connection was lost (socket error or missed heartbeats)")]
    Lost,
    #[error("message {id}: {what} is {len} bytes, over AMQP's 255-byte limit for a short string")]
    TooLong {
        id: String,
        what: &'static str,
        len: usize,
    },
    #[error(
        "message {id} was returned unroutable by exchange {exchange:?} with routing key {routing_key:?}: \
         no queue is bound for it; walrelay holds its position until a binding exists"
    )]
    Unroutable {
        id: String,
        exchange: String,
        routing_key: String,
    },
    #[error("message {id} (routing key {routing_key:?}) was {why}")]
    Nacked {
        id: String,
        routing_key: String,
        why: String,
    },
    #[error(
        "no broker confirm for {waited:?} with {in_flight} messages in flight (broker blocked or unreachable)"
    )]
    Stalled { waited: Duration, in_flight: usize },
    #[error(
        "event {id} of {table} is {size} bytes, over rabbitmq.max_message_bytes = {max}; \
         the broker would refuse it, so walrelay stops here instead of skipping it"
    )]
    Oversized {
        id: String,
        table: String,
        size: usize,
        max: usize,
    },
    /// The address the broker advertises for a stream's leader did not take a connection.
    #[error(
        "the leader of stream {stream:?} is at {host}:{port}, the address the broker advertises; \
         if RabbitMQ is behind a load balancer or a port mapping that address may not be \
         reachable from here: set stream.load_balancer = true (or the broker's \
         stream.advertised_host and advertised_port)"
    )]
    LeaderUnreachable {
        stream: String,
        host: String,
        port: u16,
        #[source]
        source: Box<SinkError>,
    },
    /// A stream message that no publish frame of this broker can carry: the broker's stream
    /// `frame_max` is below what `max_message_bytes` lets through.
    #[error(
        "event {id} of {table} is {size} bytes as a stream message, over the {max} bytes a publish \
         frame of this broker holds (its stream frame_max); lower rabbitmq.max_message_bytes or \
         raise the broker's stream frame_max: walrelay stops here instead of skipping it"
    )]
    OverFrame {
        id: String,
        table: String,
        size: usize,
        max: usize,
    },
    #[error("RabbitMQ: no complete connection (handshake, channel, exchanges) within {waited:?}")]
    ConnectTimeout { waited: Duration },
    /// The broker's layout contradicts the configuration in a way no retry mends.
    #[error("RabbitMQ: {0}")]
    Layout(String),
}

/// Where and how to publish.
#[derive(Clone, Debug)]
pub struct SinkSettings {
    /// The first node: what the management API, `doctor` and messages default to.
    pub url: AmqpUrl,
    /// Every node walrelay may publish through (`rabbitmq.url` as a list), `url` first. On a
    /// lost connection walrelay tries them in turn from the one it used last.
    pub nodes: Vec<AmqpUrl>,
    /// The index in `nodes` of the node connected last (shared by the sessions of a process:
    /// a reconnect starts there, and moves on at once when it is gone).
    pub node_in_use: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub exchange: String,
    /// Exchanges named by table rules and the flood reroute; declared like the default one.
    pub extra_exchanges: Vec<String>,
    /// Declare the exchanges (durable topic) at start; off when they are managed elsewhere.
    pub declare_exchange: bool,
    /// The routing key template of events no table rule routes.
    pub routing_key: crate::event::routing::RoutingTemplate,
    /// Unconfirmed messages allowed at once (the in-flight window).
    pub max_in_flight: usize,
    pub max_message_bytes: usize,
    /// No confirm for this long with messages in flight: the broker is treated as gone.
    pub confirm_timeout: Duration,
    /// Publish `pg_logical_emit_message` messages (op `message`); off by default because no
    /// queue is usually bound for them and an unroutable message holds the stream.
    pub publish_messages: bool,
    /// Batch mode: events of one transaction packed into one message (off at 1 event).
    pub batch: BatchLimits,
    /// RabbitMQ's management API, for `walrelay doctor` (bindings and queue types).
    pub management_url: Option<Secret>,
    /// `[stream]`: publish to RabbitMQ Streams instead (`exchange` is then the stream).
    pub stream: Option<crate::sink::stream::StreamSettings>,
    /// What an oversized or unroutable event does instead of holding the stream.
    pub dead_letters: DeadLetters,
}

impl SinkSettings {
    /// The management API: `management_url`, else `http://<user>:<password>@<host>:15672`.
    pub fn management_api(&self) -> Option<crate::sink::management::Api> {
        use crate::sink::management::{Api, segment};
        let url = self.management_url.as_ref().map_or_else(
            || {
                format!(
                    "http://{}:{}@{}:15672",
                    segment(&self.url.user),
                    segment(self.url.password.expose()),
                    self.url.host
                )
            },
            |u| u.expose().to_owned(),
        );
        Api::from_url(&url).ok()
    }
}

/// The opt-in ways past a poison row (`rabbitmq.on_oversized`, `on_unroutable`); by default
/// both hold the stream until an operator acts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeadLetters {
    /// An event over `max_message_bytes` is replaced, in its place, by a claim check (its
    /// id, table, op, key and size), so consumers learn of the change and can read the row.
    pub oversized: bool,
    /// An event no queue is bound for is published again to this exchange, with its
    /// routing key, and with the exchange it was meant for in a header.
    pub unroutable_to: Option<String>,
}

/// Batch mode limits; `max_events <= 1` turns it off.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    pub max_events: usize,
    pub max_bytes: usize,
}
