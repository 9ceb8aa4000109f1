//! RabbitMQ Streams: the stream sink (`[stream]` in the config). Events go to a stream over
//! the stream protocol with the same body, the same LSN contract and the same publish loop as
//! the AMQP sink; named producers with publishing ids derived from the change's place in the
//! slot ([`publishing_id`]) let the broker drop replays, so consumers see each change once.

pub mod amqp10;
mod answers;
pub mod connect;
mod creation;
pub mod destinations;
pub mod frame;
pub mod handshake;
pub mod link;
pub mod nodelay;
pub mod publisher;
pub mod publishing_id;

use std::time::Duration;

use crate::sink::{AmqpUrl, SinkError};

pub use publisher::StreamPublisher;

/// RabbitMQ's default stream `frame_max` is 1 MiB; a message and its frame must fit in it.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

/// `[stream]`: where the stream sink publishes. The stream's name is the sink's exchange
/// (`SinkSettings::exchange`), so table rules and the flood reroute name other streams.
#[derive(Clone, Debug)]
pub struct StreamSettings {
    /// `rabbitmq-stream://` or `rabbitmq-stream+tls://` (the first node).
    pub url: AmqpUrl,
    /// Every node of `stream.url` (a list), `url` first: the query connection tries them in
    /// turn, from the one used last; publishing connections go to each stream's leader as
    /// the broker's metadata names it.
    pub nodes: Vec<AmqpUrl>,
    /// Create missing streams at start (else a missing stream is an error).
    pub create: bool,
    /// Retention of streams walrelay creates: `max-length-bytes`, `max-age`.
    pub max_length_bytes: Option<u64>,
    pub max_age: Option<Duration>,
    /// `stream-max-segment-size-bytes` of streams walrelay creates.
    pub max_segment_bytes: Option<u64>,
    /// `Some(n)`: the stream is a super stream of `n` partitions, and each event goes to the
    /// partition its key hash picks (the same hash as `{partition}`). The count is checked
    /// against the broker's at start: changing it would move keys between partitions.
    pub partitions: Option<u32>,
    /// The URL's host is a load balancer or a port mapping in front of the nodes, and the
    /// addresses the broker advertises for stream leaders may not be reachable from here:
    /// every publishing connection goes to the URL's address, and the one that lands on the
    /// stream's leader (the node's advertised host and port in its answer to `open`) is kept.
    pub load_balancer: bool,
}

/// What the stream protocol needs on the broker's side, for connection errors: an older
/// broker (3.10 here) closes the connection at the client's first command.
pub(crate) const NEEDS: &str = "walrelay's stream sink needs RabbitMQ 3.13 or later with the rabbitmq_stream plugin on the stream port";

/// Errors of the stream side, named for the log.
pub(crate) fn failed(context: &'static str, e: impl std::fmt::Display) -> SinkError {
    SinkError::Amqp {
        context,
        source: crate::sink::AmqpError::new(format!("(stream protocol) {e}")),
    }
}
