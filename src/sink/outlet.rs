//! `Outlet`: the sink a session publishes to — an AMQP exchange ([`Publisher`]) or a RabbitMQ
//! stream ([`StreamPublisher`]). Both answer with the same [`Signal`]s on delivery tags
//! numbered from 1, so the publish loop, the confirm window and the LSN contract are one code
//! path whichever the configuration chose.

use std::sync::Arc;

use tokio::sync::watch;

use super::{BrokerState, Publisher, Signal, SinkError, SinkSettings};
use crate::event::Event;
use crate::stream::StreamPublisher;
use crate::stream::publishing_id::Origin;

/// Both variants are boxed: the pair is moved between tasks and is large either way.
pub enum Outlet {
    Amqp(Box<Publisher>),
    Stream(Box<StreamPublisher>),
}

impl Outlet {
    /// Connects to the configured sink (`[stream]` when set, else `[rabbitmq]`).
    pub async fn connect(settings: &SinkSettings) -> Result<Outlet, SinkError> {
        match &settings.stream {
            Some(stream) => Ok(Outlet::Stream(Box::new(
                StreamPublisher::connect(settings, stream).await?,
            ))),
            None => Ok(Outlet::Amqp(Box::new(Publisher::connect(settings).await?))),
        }
    }

    /// What the sink is called in logs: `exchange` or `stream`.
    pub fn kind(&self) -> &'static str {
        match self {
            Outlet::Amqp(_) => "exchange",
            Outlet::Stream(_) => "stream",
        }
    }

    /// The server walrelay reads from: the stream sink names its producers after it.
    pub fn set_origin(&mut self, origin: Origin, metrics: Arc<crate::metrics::Metrics>) {
        if let Outlet::Stream(s) = self {
            s.set_origin(origin, metrics);
        }
    }

    /// The default exchange or stream.
    pub fn destination(&self) -> &str {
        match self {
            Outlet::Amqp(p) => p.exchange(),
            Outlet::Stream(s) => s.stream(),
        }
    }

    /// True when published messages wait in a frame (the stream sink frames its publishes;
    /// AMQP's client writes each at once).
    pub fn has_pending(&self) -> bool {
        match self {
            Outlet::Amqp(_) => false,
            Outlet::Stream(s) => s.has_pending(),
        }
    }

    /// Sends the messages waiting in frames: the publish loop calls it when it has nothing
    /// more to add right now.
    pub async fn flush(&mut self) -> Result<(), SinkError> {
        match self {
            Outlet::Amqp(_) => Ok(()),
            Outlet::Stream(s) => s.flush().await,
        }
    }

    /// True when `a` and `b` may share one batch message.
    pub fn same_producer(&self, a: &Event, b: &Event) -> bool {
        match self {
            Outlet::Amqp(_) => true,
            Outlet::Stream(s) => s.route(a).0 == s.route(b).0,
        }
    }

    pub async fn publish_message(
        &mut self,
        event: &Event,
        body: Vec<u8>,
        count: usize,
    ) -> Result<(), SinkError> {
        match self {
            Outlet::Amqp(p) => p.publish_message(event, body, count).await,
            Outlet::Stream(s) => s.publish_message(event, body, count).await,
        }
    }

    pub async fn answer(&mut self) -> Signal {
        match self {
            Outlet::Amqp(p) => p.answer().await,
            Outlet::Stream(s) => s.answer().await,
        }
    }

    /// The next answer if one has arrived already (never waits).
    pub fn try_answer(&mut self) -> Option<Signal> {
        match self {
            Outlet::Amqp(p) => p.try_answer(),
            Outlet::Stream(s) => s.try_answer(),
        }
    }

    pub fn state(&self) -> watch::Receiver<BrokerState> {
        match self {
            Outlet::Amqp(p) => p.state(),
            Outlet::Stream(s) => s.state(),
        }
    }

    pub async fn close(self) {
        match self {
            Outlet::Amqp(p) => p.close().await,
            Outlet::Stream(s) => s.close().await,
        }
    }
}
