//! `Link`: one AMQP connection to RabbitMQ (amqprs), as every part of walrelay uses it — the
//! publisher, `walrelay tail`, `doctor`'s probes and the tests' consumers.
//!
//! amqprs runs the socket as tokio tasks on the caller's runtime (no thread of its own, which is
//! why walrelay uses it: docs/architecture.md), and reports what the server says through
//! callbacks. A `Link` turns those callbacks into state walrelay can act on:
//! - the connection's [`BrokerState`] (open, blocked by a resource alarm) as a `watch`;
//! - every server-initiated close (connection or channel) and every network failure as a
//!   [`Signal`] on a channel the publisher selects on, so a failure ends the session at once;
//! - the server's reason for the last close (`404 NOT_FOUND - no exchange 'x' …`), so an error
//!   names the cause instead of amqprs's "channel closed".
//!
//! Nothing here reconnects: a lost connection ends the session, and the unconfirmed messages
//! are replayed from the slot by the next one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use amqprs::callbacks::{ChannelCallback, ConnectionCallback};
use amqprs::channel::Channel;
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::tls::TlsAdaptor;
use amqprs::{Ack, BasicProperties, Cancel, Close, CloseChannel, Nack, Return};
use tokio::sync::{mpsc, watch};

use crate::sink::url::AmqpUrl;

/// What the connection is doing now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BrokerState {
    pub open: bool,
    /// `connection.blocked`: a memory or disk alarm holds publishing.
    pub blocked: bool,
}

/// A returned message as the broker gave it back: published again, with a header more, to
/// the dead-letter exchange (`rabbitmq.on_unroutable = "dead_letter"`).
#[derive(Debug)]
pub struct ReturnedMessage {
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

/// What the broker said, as it arrived (publisher confirms, returns, closes, failures).
#[derive(Debug)]
pub enum Signal {
    Ack {
        tag: u64,
        multiple: bool,
    },
    Nack {
        tag: u64,
        multiple: bool,
    },
    /// The stream sink: a confirm with an error status (or the client failing the message).
    Refused {
        tag: u64,
        reason: String,
    },
    /// A `mandatory` message no queue was bound for (always followed by its ack).
    Returned {
        message_id: Option<String>,
        exchange: String,
        routing_key: String,
        reply: String,
        /// The message as it came back, for a dead letter (`None` from scripted sinks
        /// that do not keep it).
        message: Option<Box<ReturnedMessage>>,
    },
    /// The server closed a channel or the connection; `reply` is its code and text.
    Closed {
        what: &'static str,
        reply: String,
    },
    /// The socket failed or the server stopped answering heartbeats.
    Lost,
}

/// Why an AMQP operation failed, with the server's own reason when it gave one.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct AmqpError {
    pub detail: String,
    /// The bounded connect ran out of time (no answer, as opposed to a refusal).
    pub timed_out: bool,
}

impl AmqpError {
    pub fn new(detail: impl Into<String>) -> AmqpError {
        AmqpError {
            detail: detail.into(),
            timed_out: false,
        }
    }
}

/// One open connection and what it reports.
pub struct Link {
    pub connection: Connection,
    pub url: AmqpUrl,
    state: watch::Receiver<BrokerState>,
    signals_tx: mpsc::UnboundedSender<Signal>,
    reason: Arc<Mutex<Option<String>>>,
    _lost_watch: AbortOnDrop,
}

impl Link {
    /// Opens a connection named `name` (shown in RabbitMQ's management UI), within `timeout`
    /// (a broker that accepts TCP but never finishes the handshake must not hold us forever).
    /// Also returns the receiver of the connection's signals.
    pub async fn open(
        url: &AmqpUrl,
        name: &str,
        timeout: Duration,
    ) -> Result<(Link, mpsc::UnboundedReceiver<Signal>), AmqpError> {
        let open = async {
            let mut args =
                OpenConnectionArguments::new(&url.host, url.port, &url.user, url.password.expose());
            args.virtual_host(&url.vhost)
                .connection_name(name)
                .heartbeat(url.heartbeat_secs);
            if url.tls {
                args.scheme("amqps").tls_adaptor(tls_adaptor(url)?);
            }
            Connection::open(&args.finish())
                .await
                .map_err(|e| AmqpError::new(explain_open(&e.to_string(), url)))
        };
        let connection = tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| AmqpError {
                detail: format!(
                    "no complete AMQP handshake with {} within {timeout:?}",
                    url.describe()
                ),
                timed_out: true,
            })??;
        let (state_tx, state) = watch::channel(BrokerState {
            open: true,
            blocked: false,
        });
        let state_tx = Arc::new(state_tx);
        let (signals_tx, signals) = mpsc::unbounded_channel();
        let reason = Arc::new(Mutex::new(None));
        connection
            .register_callback(OnConnection {
                state: Arc::clone(&state_tx),
                signals: signals_tx.clone(),
                reason: Arc::clone(&reason),
            })
            .await
            .map_err(|e| AmqpError::new(format!("registering the connection callback: {e}")))?;
        let lost_watch = AbortOnDrop(tokio::spawn(watch_lost(
            connection.clone(),
            state_tx,
            signals_tx.clone(),
        )));
        let link = Link {
            connection,
            url: url.clone(),
            state,
            signals_tx,
            reason,
            _lost_watch: lost_watch,
        };
        Ok((link, signals))
    }

    /// Opens a channel whose closes by the server are recorded (and signalled).
    pub async fn channel(&self) -> Result<Channel, AmqpError> {
        self.channel_with(None).await
    }

    /// Opens a channel in confirm mode; its acks, nacks and returns go to the link's signals.
    pub async fn confirm_channel(&self) -> Result<Channel, AmqpError> {
        let ch = self.channel_with(Some(self.signals_tx.clone())).await?;
        ch.confirm_select(amqprs::channel::ConfirmSelectArguments::default())
            .await
            .map_err(|e| self.explain("enabling publisher confirms", e))?;
        Ok(ch)
    }

    async fn channel_with(
        &self,
        confirms: Option<mpsc::UnboundedSender<Signal>>,
    ) -> Result<Channel, AmqpError> {
        let ch = self
            .connection
            .open_channel(None)
            .await
            .map_err(|e| self.explain("opening a channel", e))?;
        ch.register_callback(OnChannel {
            signals: self.signals_tx.clone(),
            confirms,
            reason: Arc::clone(&self.reason),
        })
        .await
        .map_err(|e| self.explain("registering the channel callback", e))?;
        Ok(ch)
    }

    /// The connection's state, as it changes.
    pub fn state(&self) -> watch::Receiver<BrokerState> {
        self.state.clone()
    }

    /// An amqprs error with the server's reason for the last close, when there is one (amqprs
    /// reports only that the channel or connection was closed).
    pub fn explain(&self, context: &str, err: amqprs::error::Error) -> AmqpError {
        let reason = self.reason.lock().map(|r| r.clone()).unwrap_or(None);
        match reason {
            Some(r) => AmqpError::new(format!("{context}: {r}")),
            None => AmqpError::new(format!("{context}: {err}")),
        }
    }

    /// The server's reason for the last close, if any.
    pub fn last_close(&self) -> Option<String> {
        self.reason.lock().map(|r| r.clone()).unwrap_or(None)
    }

    /// Closes the connection politely (best effort, bounded).
    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.connection.close()).await;
    }
}

/// The rustls configuration of `amqps`: the certificate is always verified (chain and host
/// name), against `cacertfile` when given, else webpki's and the system's roots.
fn tls_adaptor(url: &AmqpUrl) -> Result<TlsAdaptor, AmqpError> {
    let config = crate::tls::client_config(crate::tls::Verify::Full, url.ca_file.as_deref())
        .map_err(|e| AmqpError::new(format!("amqps: {e}")))?;
    Ok(TlsAdaptor::new(
        tokio_rustls::TlsConnector::from(config),
        url.server_name.clone().unwrap_or_else(|| url.host.clone()),
    ))
}

/// amqprs's open errors say what failed, not why a user would see it: add the likely cause.
fn explain_open(err: &str, url: &AmqpUrl) -> String {
    let hint = if err.contains("ACCESS_REFUSED") || err.contains("403") {
        " (user name or password refused)"
    } else if err.contains("NOT_ALLOWED") || err.contains("530") {
        " (the vhost does not exist or the user may not use it)"
    } else if err.contains("Connection refused") {
        " (nothing listens there)"
    } else {
        ""
    };
    format!("cannot connect to {}: {err}{hint}", url.describe())
}

/// `reply_code reply_text`, as RabbitMQ words a close.
fn reply(code: u16, text: &str) -> String {
    format!("{code} {text}")
}

fn remember(reason: &Mutex<Option<String>>, text: String) {
    if let Ok(mut r) = reason.lock() {
        *r = Some(text);
    }
}

struct OnConnection {
    state: Arc<watch::Sender<BrokerState>>,
    signals: mpsc::UnboundedSender<Signal>,
    reason: Arc<Mutex<Option<String>>>,
}

#[async_trait::async_trait]
impl ConnectionCallback for OnConnection {
    async fn close(&mut self, _: &Connection, close: Close) -> Result<(), amqprs::error::Error> {
        let text = reply(close.reply_code(), close.reply_text());
        remember(
            &self.reason,
            format!("the broker closed the connection: {text}"),
        );
        self.state.send_modify(|s| s.open = false);
        let _ = self.signals.send(Signal::Closed {
            what: "connection",
            reply: text,
        });
        Ok(())
    }

    async fn blocked(&mut self, _: &Connection, _reason: String) {
        self.state.send_modify(|s| s.blocked = true);
    }

    async fn unblocked(&mut self, _: &Connection) {
        self.state.send_modify(|s| s.blocked = false);
    }

    async fn secret_updated(&mut self, _: &Connection) {}
}

struct OnChannel {
    signals: mpsc::UnboundedSender<Signal>,
    /// Where acks, nacks and returns go: only a publisher's channel has them.
    confirms: Option<mpsc::UnboundedSender<Signal>>,
    reason: Arc<Mutex<Option<String>>>,
}

impl OnChannel {
    fn confirm(&self, signal: Signal) {
        if let Some(tx) = &self.confirms {
            let _ = tx.send(signal);
        }
    }
}

#[async_trait::async_trait]
impl ChannelCallback for OnChannel {
    async fn close(
        &mut self,
        _: &Channel,
        close: CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        let text = reply(close.reply_code(), close.reply_text());
        remember(
            &self.reason,
            format!("the broker closed the channel: {text}"),
        );
        // Only a publisher's channel closing ends a session; a probe's passive declare
        // closes its channel by design.
        if self.confirms.is_some() {
            let _ = self.signals.send(Signal::Closed {
                what: "channel",
                reply: text,
            });
        }
        Ok(())
    }

    async fn cancel(&mut self, _: &Channel, cancel: Cancel) -> Result<(), amqprs::error::Error> {
        remember(
            &self.reason,
            format!(
                "the broker cancelled consumer {} (queue deleted?)",
                cancel.consumer_tag()
            ),
        );
        Ok(())
    }

    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }

    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        self.confirm(Signal::Ack {
            tag: ack.delivery_tag(),
            multiple: ack.mutiple(),
        });
    }

    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        self.confirm(Signal::Nack {
            tag: nack.delivery_tag(),
            multiple: nack.multiple(),
        });
    }

    async fn publish_return(
        &mut self,
        _: &Channel,
        ret: Return,
        properties: BasicProperties,
        content: Vec<u8>,
    ) {
        self.confirm(Signal::Returned {
            message_id: properties.message_id().cloned(),
            exchange: ret.exchange().clone(),
            routing_key: ret.routing_key().clone(),
            reply: reply(ret.reply_code(), ret.reply_text()),
            message: Some(Box::new(ReturnedMessage {
                properties,
                body: content,
            })),
        });
    }
}

/// Marks the link lost when amqprs reports a network failure or a heartbeat timeout. Also
/// polls `is_open`, since a failure before the first poll of the listener is not repeated.
async fn watch_lost(
    connection: Connection,
    state: Arc<watch::Sender<BrokerState>>,
    signals: mpsc::UnboundedSender<Signal>,
) {
    let failed = connection.listen_network_io_failure();
    tokio::pin!(failed);
    loop {
        tokio::select! {
            _ = &mut failed => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if !connection.is_open() {
                    break;
                }
            }
        }
    }
    state.send_modify(|s| s.open = false);
    let _ = signals.send(Signal::Lost);
}

/// Aborts the watcher task with its link.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
