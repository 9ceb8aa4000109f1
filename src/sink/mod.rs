//! The RabbitMQ side: a lapin channel in confirm mode that publishes events with `mandatory`
//! set and reports every broker answer, in publish order.
//!
//! Durability contract (what the ack tracker relies on): a message counts as delivered only
//! when the broker answers `basic.ack` *without* a preceding `basic.return`. lapin reports a
//! returned (unroutable) mandatory message as `Confirmation::Ack(Some(_))`; that is a failure
//! here, as are nacks and channel errors. Auto-recovery is not used: any failure ends the
//! session, and the unconfirmed messages are replayed from the slot.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use lapin::{Confirmation, PublisherConfirm};

use crate::event::Event;
use crate::secret::Secret;

/// Errors of the RabbitMQ side.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("RabbitMQ: {context}: {source}")]
    Amqp {
        context: &'static str,
        #[source]
        source: lapin::Error,
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
    #[error(
        "message {id} (routing key {routing_key:?}) was nacked by the broker (queue full with reject-publish, or a queue error)"
    )]
    Nacked { id: String, routing_key: String },
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
    #[error("RabbitMQ: no complete connection (handshake, channel, exchanges) within {waited:?}")]
    ConnectTimeout { waited: Duration },
}

/// Where and how to publish.
#[derive(Clone, Debug)]
pub struct SinkSettings {
    pub url: Secret,
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
}

/// Batch mode limits; `max_events <= 1` turns it off.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    pub max_events: usize,
    pub max_bytes: usize,
}

/// A publishing channel in confirm mode.
pub struct Publisher {
    connection: Connection,
    channel: Channel,
    exchange: ShortString,
}

impl Publisher {
    /// Connects, opens a channel, enables confirms and declares the exchange.
    pub async fn connect(settings: &SinkSettings) -> Result<Publisher, SinkError> {
        let amqp = |context| move |source| SinkError::Amqp { context, source };
        let props = ConnectionProperties::default().with_connection_name("walrelay".into());
        let connection = Connection::connect(settings.url.expose(), props)
            .await
            .map_err(amqp("connecting"))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(amqp("opening a channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(amqp("enabling publisher confirms"))?;
        if settings.declare_exchange {
            for name in std::iter::once(&settings.exchange).chain(&settings.extra_exchanges) {
                channel
                    .exchange_declare(
                        name.as_str().into(),
                        ExchangeKind::Topic,
                        ExchangeDeclareOptions {
                            durable: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map_err(amqp("declaring an exchange"))?;
            }
        }
        Ok(Publisher {
            connection,
            channel,
            exchange: settings.exchange.as_str().into(),
        })
    }

    /// Publishes one event persistently with `mandatory`; the returned future is its confirm.
    pub async fn publish(&self, event: &Event) -> Result<PublisherConfirm, SinkError> {
        self.publish_message(event, 1).await
    }

    /// Publishes a message holding `count` events (a batch when more than one: its body is a
    /// JSON array of event objects and the `batch` header says how many).
    pub async fn publish_message(
        &self,
        event: &Event,
        count: usize,
    ) -> Result<PublisherConfirm, SinkError> {
        let mut headers = FieldTable::default();
        if count > 1 {
            headers.insert("batch".into(), AMQPValue::LongLongInt(count as i64));
        }
        headers.insert(
            "op".into(),
            AMQPValue::LongString(LongString::from(event.op.as_str())),
        );
        headers.insert(
            "schema".into(),
            AMQPValue::LongString(LongString::from(event.schema.as_str())),
        );
        headers.insert(
            "table".into(),
            AMQPValue::LongString(LongString::from(event.table.as_str())),
        );
        headers.insert(
            "commit_lsn".into(),
            AMQPValue::LongString(LongString::from(event.commit_lsn.to_string())),
        );
        let mut props = BasicProperties::default()
            .with_message_id(event.id.as_str().into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(headers);
        if let Some(t) = event.commit_time_us {
            let unix_secs = crate::event::time::pg_to_unix_us(t).div_euclid(1_000_000);
            props = props.with_timestamp(unix_secs.max(0) as u64);
        }
        let exchange = match &event.exchange {
            Some(x) => ShortString::from(&**x),
            None => self.exchange.clone(),
        };
        self.channel
            .basic_publish(
                exchange,
                event.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &event.body,
                props,
            )
            .await
            .map_err(|source| SinkError::Amqp {
                context: "publishing",
                source,
            })
    }

    /// Turns a broker answer into success or the failure it is.
    pub fn check(
        &self,
        answer: Result<Confirmation, lapin::Error>,
        id: &str,
        exchange: Option<&str>,
        routing_key: &str,
    ) -> Result<(), SinkError> {
        match answer {
            Ok(Confirmation::Ack(None)) => Ok(()),
            Ok(Confirmation::Ack(Some(_))) => Err(SinkError::Unroutable {
                id: id.to_owned(),
                exchange: exchange.map_or_else(|| self.exchange.to_string(), str::to_owned),
                routing_key: routing_key.to_owned(),
            }),
            Ok(Confirmation::Nack(_)) => Err(SinkError::Nacked {
                id: id.to_owned(),
                routing_key: routing_key.to_owned(),
            }),
            // Confirms were enabled on this channel, so this is a broken promise, not success.
            Ok(Confirmation::NotRequested) => Err(SinkError::Amqp {
                context: "publisher confirms were not active on the channel",
                source: lapin::ErrorKind::InvalidChannelState(
                    lapin::ChannelState::Initial,
                    "confirm",
                )
                .into(),
            }),
            Err(source) => Err(SinkError::Amqp {
                context: "waiting for a publisher confirm",
                source,
            }),
        }
    }

    /// A live view of the connection's state (connected, blocked by an alarm).
    pub fn status(&self) -> lapin::ConnectionStatus {
        self.connection.status().clone()
    }

    /// Closes channel and connection politely (best effort).
    pub async fn close(self) {
        let _ = self
            .channel
            .close(200, "walrelay shutting down".into())
            .await;
        let _ = self
            .connection
            .close(200, "walrelay shutting down".into())
            .await;
    }
}
