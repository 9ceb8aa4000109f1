//! The RabbitMQ side: where and how walrelay publishes ([`SinkSettings`]), what can go wrong
//! ([`SinkError`]), the connection ([`link`]) and the confirm-mode publisher ([`publisher`]).
//!
//! Durability contract (what the ack tracker relies on): a message counts as delivered only
//! when the broker answers `basic.ack` *without* a preceding `basic.return` for it. A returned
//! (unroutable) message, a nack, a channel or connection close and a lost socket are failures.
//! Nothing reconnects by itself: any failure ends the session, and the unconfirmed messages
//! are replayed from the slot.

use std::time::Duration;

use crate::secret::Secret;

pub mod confirms;
pub mod link;
pub mod management;
pub mod outlet;
pub mod publisher;
pub mod routable;
pub mod topic;
pub mod url;

pub use link::{AmqpError, BrokerState, Link, Signal};
pub use outlet::Outlet;
pub use publisher::{Answer, Publisher};
pub use url::AmqpUrl;

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
    pub url: AmqpUrl,
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
    pub stream: Option<crate::stream::StreamSettings>,
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

/// Batch mode limits; `max_events <= 1` turns it off.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    pub max_events: usize,
    pub max_bytes: usize,
}
