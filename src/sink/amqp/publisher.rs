//! `Publisher`: a confirm-mode channel that publishes events persistently with `mandatory`
//! and hands every broker answer ([`Signal`]) to the publish loop, which settles them in
//! publish order through a [`ConfirmWindow`](crate::sink::confirms::ConfirmWindow).
//!
//! `basic_publish` only queues the frames for amqprs's writer task (on this runtime); the
//! answers arrive through the channel callback as signals. So publishing never waits for the
//! broker, and the window of unconfirmed messages is bounded by the publish loop alone.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use amqprs::channel::{BasicPublishArguments, Channel, ExchangeDeclareArguments};
use amqprs::{BasicProperties, FieldTable, FieldValue, LongStr};
use tokio::sync::{mpsc, watch};

use super::link::{BrokerState, Link, Signal};
use crate::event::Event;
use crate::sink::{SinkError, SinkSettings};

/// AMQP short strings (exchange, routing key, message id) hold at most 255 bytes; amqprs
/// panics on longer ones, so they are checked first.
const SHORT_STRING_MAX: usize = 255;

/// The publishing side of one session.
pub struct Publisher {
    link: Link,
    channel: Channel,
    signals: mpsc::UnboundedReceiver<Signal>,
    exchange: Arc<str>,
}

/// An answer of the broker for the publish loop.
pub type Answer = Signal;

impl Publisher {
    /// Connects, opens a channel, enables confirms and declares the exchanges, all within
    /// `confirm_timeout` (the caller bounds the whole of it too).
    pub async fn connect(settings: &SinkSettings) -> Result<Publisher, SinkError> {
        let amqp = |context| move |source| SinkError::Amqp { context, source };
        let start = settings.node_in_use.load(Ordering::Relaxed);
        let (link, signals, node) =
            Link::open_any(&settings.nodes, start, "walrelay", settings.confirm_timeout)
                .await
                .map_err(|e| match e.timed_out {
                    true => SinkError::ConnectTimeout {
                        waited: settings.confirm_timeout,
                    },
                    false => SinkError::Amqp {
                        context: "connecting",
                        source: e,
                    },
                })?;
        let channel = link
            .confirm_channel()
            .await
            .map_err(amqp("opening the publishing channel"))?;
        if settings.declare_exchange {
            for name in std::iter::once(&settings.exchange).chain(&settings.extra_exchanges) {
                let args = ExchangeDeclareArguments::new(name, "topic")
                    .durable(true)
                    .finish();
                channel
                    .exchange_declare(args)
                    .await
                    .map_err(|e| link.explain("declaring an exchange", e))
                    .map_err(amqp("declaring an exchange"))?;
            }
        }
        if node != start && settings.nodes.len() > 1 {
            tracing::warn!(node = %node_name(&settings.nodes[node]),
                  previous = %node_name(&settings.nodes[start % settings.nodes.len()]),
                  "publishing through another RabbitMQ node");
        }
        settings.node_in_use.store(node, Ordering::Relaxed);
        Ok(Publisher {
            link,
            channel,
            signals,
            exchange: Arc::from(settings.exchange.as_str()),
        })
    }

    /// The default exchange's name.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// Publishes a message holding `count` events (a batch when more than one: its body is a
    /// JSON array of event objects and the `batch` header says how many). Takes the body:
    /// it is handed to the socket writer without a copy.
    pub async fn publish_message(
        &self,
        event: &Event,
        body: Vec<u8>,
        count: usize,
    ) -> Result<(), SinkError> {
        let exchange = event.exchange.as_deref().unwrap_or(&self.exchange);
        for (what, text) in [
            ("the exchange name", exchange),
            ("the routing key", event.routing_key.as_str()),
            ("the message id", event.id.as_str()),
        ] {
            if text.len() > SHORT_STRING_MAX {
                return Err(SinkError::TooLong {
                    id: event.id.clone(),
                    what,
                    len: text.len(),
                });
            }
        }
        let mut headers = FieldTable::new();
        // A long string holds up to 4 GiB: more than any event (max_message_bytes).
        let long = |v: &str| FieldValue::S(LongStr::try_from(v).unwrap_or_default());
        if count > 1 {
            headers.insert(name("batch"), FieldValue::l(count as i64));
        }
        headers.insert(name("op"), long(event.op.as_str()));
        headers.insert(name("schema"), long(&event.schema));
        headers.insert(name("table"), long(&event.table));
        headers.insert(name("commit_lsn"), long(&event.commit_lsn.to_string()));
        let timestamp = event.commit_time_us.map(|t| {
            let unix_secs = crate::event::time::pg_to_unix_us(t).div_euclid(1_000_000);
            unix_secs.max(0) as u64
        });
        // Built in one go: the builder's `finish` clones the whole header table.
        let props = BasicProperties::new(
            Some("application/json".to_owned()),
            None,
            Some(headers),
            Some(amqprs::DELIVERY_MODE_PERSISTENT),
            None,
            None,
            None,
            None,
            Some(event.id.clone()),
            timestamp,
            None,
            None,
            None,
            None,
        );
        let args = BasicPublishArguments {
            exchange: exchange.to_owned(),
            routing_key: event.routing_key.clone(),
            mandatory: true,
            immediate: false,
        };
        self.channel
            .basic_publish(props, body, args)
            .await
            .map_err(|e| SinkError::Amqp {
                context: "publishing",
                source: self.link.explain("publishing", e),
            })
    }

    /// Publishes a returned message again to the dead-letter exchange `to`, with its routing
    /// key, its properties (message id, headers) and three headers more: the reason and the
    /// exchange and routing key it was meant for. `mandatory`, so a dead-letter exchange that
    /// routes nothing is returned too, never lost.
    pub async fn dead_letter(
        &self,
        message: crate::sink::amqp::link::ReturnedMessage,
        to: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), SinkError> {
        let long = |v: &str| FieldValue::S(LongStr::try_from(v).unwrap_or_default());
        let mut props = message.properties;
        let mut headers = props.headers().cloned().unwrap_or_default();
        headers.insert(name("x-walrelay-dead-letter"), long("unroutable"));
        headers.insert(name("x-walrelay-original-exchange"), long(exchange));
        headers.insert(name("x-walrelay-original-routing-key"), long(routing_key));
        props.with_headers(headers);
        let args = BasicPublishArguments {
            exchange: to.to_owned(),
            routing_key: routing_key.to_owned(),
            mandatory: true,
            immediate: false,
        };
        self.channel
            .basic_publish(props, message.body, args)
            .await
            .map_err(|e| SinkError::Amqp {
                context: "publishing a dead letter",
                source: self.link.explain("publishing a dead letter", e),
            })
    }

    /// The next answer of the broker (confirms, returns, closes, a lost connection).
    pub async fn answer(&mut self) -> Answer {
        // The link holds a sender itself, so the channel never ends while we hold the link.
        self.signals.recv().await.unwrap_or(Signal::Lost)
    }

    /// The next answer if one has arrived already.
    pub fn try_answer(&mut self) -> Option<Answer> {
        crate::sink::try_signal(&mut self.signals)
    }

    /// A live view of the connection's state (open, blocked by an alarm).
    pub fn state(&self) -> watch::Receiver<BrokerState> {
        self.link.state()
    }

    /// Closes channel and connection politely (best effort, bounded).
    pub async fn close(self) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.channel.close()).await;
        self.link.close().await;
    }
}

/// A node as metrics and logs name it: `host:port`.
pub fn node_name(url: &crate::sink::AmqpUrl) -> String {
    format!("{}:{}", url.host, url.port)
}

/// A header name; walrelay's are short literals.
fn name(s: &str) -> amqprs::FieldName {
    s.try_into().expect("header names are short literals")
}
