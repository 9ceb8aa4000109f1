//! `Outlet`: the sink a session publishes to — an AMQP exchange ([`Publisher`]) or a RabbitMQ
//! stream ([`StreamPublisher`]), as the configuration chose. Each implements [`Sink`] and answers
//! with the same [`Signal`]s on delivery tags numbered from 1, so the publish loop, the confirm
//! window and the LSN contract are one code path whichever was chosen.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;

use super::stream::StreamPublisher;
use super::stream::publishing_id::Origin;
use super::{BrokerState, Publisher, ReturnedMessage, Signal, Sink, SinkError, SinkSettings};
use crate::event::Event;

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

    /// The server walrelay reads from: the stream sink names its producers after it.
    pub fn set_origin(&mut self, origin: Origin, metrics: Arc<crate::metrics::Metrics>) {
        if let Outlet::Stream(s) = self {
            s.set_origin(origin, metrics);
        }
    }
}

impl Sink for Outlet {
    fn kind(&self) -> &'static str {
        match self {
            Outlet::Amqp(p) => p.kind(),
            Outlet::Stream(s) => s.kind(),
        }
    }

    fn destination(&self) -> &str {
        match self {
            Outlet::Amqp(p) => p.destination(),
            Outlet::Stream(s) => s.destination(),
        }
    }

    async fn publish(
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

    async fn dead_letter(
        &mut self,
        message: ReturnedMessage,
        to: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), SinkError> {
        match self {
            Outlet::Amqp(p) => p.dead_letter(message, to, exchange, routing_key).await,
            Outlet::Stream(s) => {
                Sink::dead_letter(&mut **s, message, to, exchange, routing_key).await
            }
        }
    }

    async fn answer(&mut self) -> Signal {
        match self {
            Outlet::Amqp(p) => p.answer().await,
            Outlet::Stream(s) => s.answer().await,
        }
    }

    fn try_answer(&mut self) -> Option<Signal> {
        match self {
            Outlet::Amqp(p) => p.try_answer(),
            Outlet::Stream(s) => s.try_answer(),
        }
    }

    fn has_pending(&self) -> bool {
        match self {
            Outlet::Amqp(p) => p.has_pending(),
            Outlet::Stream(s) => s.has_pending(),
        }
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        match self {
            Outlet::Amqp(_) => Ok(()),
            Outlet::Stream(s) => s.flush().await,
        }
    }

    fn same_producer(&self, a: &Event, b: &Event) -> bool {
        match self {
            Outlet::Amqp(p) => p.same_producer(a, b),
            Outlet::Stream(s) => s.same_producer(a, b),
        }
    }

    fn state(&self) -> watch::Receiver<BrokerState> {
        match self {
            Outlet::Amqp(p) => Publisher::state(p),
            Outlet::Stream(s) => StreamPublisher::state(s),
        }
    }

    async fn close(self) {
        match self {
            Outlet::Amqp(p) => p.close().await,
            Outlet::Stream(s) => s.close().await,
        }
    }
}

impl Sink for Publisher {
    fn kind(&self) -> &'static str {
        "exchange"
    }

    fn destination(&self) -> &str {
        self.exchange()
    }

    fn publish(
        &mut self,
        event: &Event,
        body: Vec<u8>,
        count: usize,
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        self.publish_message(event, body, count)
    }

    fn dead_letter(
        &mut self,
        message: ReturnedMessage,
        to: &str,
        exchange: &str,
        routing_key: &str,
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        Publisher::dead_letter(self, message, to, exchange, routing_key)
    }

    fn answer(&mut self) -> impl Future<Output = Signal> + Send {
        Publisher::answer(self)
    }

    fn try_answer(&mut self) -> Option<Signal> {
        Publisher::try_answer(self)
    }

    fn state(&self) -> watch::Receiver<BrokerState> {
        Publisher::state(self)
    }

    async fn close(self) {
        Publisher::close(self).await
    }
}

impl Sink for StreamPublisher {
    fn kind(&self) -> &'static str {
        "stream"
    }

    fn destination(&self) -> &str {
        self.stream()
    }

    fn publish(
        &mut self,
        event: &Event,
        body: Vec<u8>,
        count: usize,
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        self.publish_message(event, body, count)
    }

    fn answer(&mut self) -> impl Future<Output = Signal> + Send {
        StreamPublisher::answer(self)
    }

    fn try_answer(&mut self) -> Option<Signal> {
        StreamPublisher::try_answer(self)
    }

    fn has_pending(&self) -> bool {
        StreamPublisher::has_pending(self)
    }

    fn flush(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send {
        StreamPublisher::flush(self)
    }

    fn same_producer(&self, a: &Event, b: &Event) -> bool {
        self.route(a).0 == self.route(b).0
    }

    fn state(&self) -> watch::Receiver<BrokerState> {
        StreamPublisher::state(self)
    }

    async fn close(self) {
        StreamPublisher::close(self).await
    }
}
