//! `walrelay tail`: a small consumer that prints what walrelay publishes, one line per event
//! (`<routing key> <JSON body>`).
//!
//! By default it binds a temporary queue of its own (server-named, exclusive, auto-delete, not
//! durable) to the exchange with `--binding`, so it shows events published from the moment it
//! starts and leaves nothing behind: no queue that keeps collecting messages after it exits, no
//! binding that makes `doctor` think someone reads those events. `--queue NAME` reads a queue
//! that exists instead; it only *peeks* (messages go back to the queue when tail exits) unless
//! `--ack` says to consume them, which is what the demo's consumer does. With `[stream]`,
//! [`stream`] reads the stream from an offset instead.

pub mod stream;

use std::io::Write;
use std::time::{Duration, Instant};

use amqprs::channel::{
    BasicAckArguments, BasicGetArguments, Channel, ExchangeDeclareArguments, QueueBindArguments,
    QueueDeclareArguments,
};

use crate::config::Settings;
use crate::sink::{AmqpError, Link};

/// What to consume.
pub struct TailOptions {
    /// A named queue (durable, declared when missing); `None`: a temporary queue of our own.
    pub queue: Option<String>,
    /// Binding key on the exchange. For a named queue, bound only when given.
    pub binding: Option<String>,
    /// Acknowledge (remove) what is printed from a named queue; a temporary queue is always
    /// consumed, since it is ours and vanishes anyway.
    pub ack: bool,
    /// Stop after this many messages.
    pub count: Option<u64>,
    /// Stop when nothing arrived for this long (after the first message, or from the start).
    pub idle_timeout: Option<Duration>,
}

/// Consumes until `count` messages, the idle timeout, or an error. Returns how many it printed.
pub async fn run(
    settings: &Settings,
    opts: &TailOptions,
    out: &mut dyn Write,
) -> Result<u64, AmqpError> {
    let (link, _signals) = Link::open(
        &settings.sink.url,
        "walrelay tail",
        settings.sink.confirm_timeout,
    )
    .await?;
    let exchange = settings.sink.exchange.as_str();
    let ch = link.channel().await?;
    ch.exchange_declare(
        ExchangeDeclareArguments::new(exchange, "topic")
            .durable(true)
            .finish(),
    )
    .await
    .map_err(|e| link.explain("declaring the exchange", e))?;
    let (queue, ack) = subscribe(&link, &ch, exchange, opts).await?;
    let mut printed = 0;
    let mut last = Instant::now();
    loop {
        if opts.count.is_some_and(|c| printed >= c) {
            break;
        }
        if opts.idle_timeout.is_some_and(|t| last.elapsed() > t) {
            break;
        }
        let got = ch
            .basic_get(BasicGetArguments::new(&queue).no_ack(false).finish())
            .await
            .map_err(|e| link.explain("reading the queue", e))?;
        match got {
            Some((get, _props, body)) => {
                let body = String::from_utf8_lossy(&body);
                let _ = writeln!(out, "{} {}", get.routing_key(), body);
                let _ = out.flush();
                if ack {
                    ch.basic_ack(BasicAckArguments::new(get.delivery_tag(), false))
                        .await
                        .map_err(|e| link.explain("acknowledging", e))?;
                }
                printed += 1;
                last = Instant::now();
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    // Closing returns every unacknowledged (peeked) message to its queue and deletes ours.
    link.close().await;
    Ok(printed)
}

/// Declares (or finds) the queue to read and binds it; says on stderr what will be shown.
/// Returns the queue and whether printed messages are acknowledged (removed).
async fn subscribe(
    link: &Link,
    ch: &Channel,
    exchange: &str,
    opts: &TailOptions,
) -> Result<(String, bool), AmqpError> {
    let (queue, ack) = match &opts.queue {
        None => {
            let declared = ch
                .queue_declare(
                    QueueDeclareArguments::exclusive_server_named()
                        .auto_delete(true)
                        .finish(),
                )
                .await
                .map_err(|e| link.explain("declaring a temporary queue", e))?;
            let name = declared
                .map(|(name, _, _)| name)
                .ok_or_else(|| AmqpError::new("the broker named no temporary queue".to_owned()))?;
            (name, true)
        }
        Some(name) => {
            // An existing queue is used as it is (whatever its type and arguments): a passive
            // declare checks it exists; a failed passive declare closes the channel.
            let probe = link.channel().await?;
            let exists = probe
                .queue_declare(QueueDeclareArguments::new(name).passive(true).finish())
                .await
                .is_ok();
            if !exists {
                ch.queue_declare(QueueDeclareArguments::durable_client_named(name))
                    .await
                    .map_err(|e| link.explain("declaring the queue", e))?;
            }
            (name.clone(), opts.ack)
        }
    };
    let binding = match (&opts.queue, &opts.binding) {
        (None, b) => Some(b.as_deref().unwrap_or("#")),
        (Some(_), b) => b.as_deref(),
    };
    if let Some(b) = binding {
        ch.queue_bind(QueueBindArguments::new(&queue, exchange, b))
            .await
            .map_err(|e| link.explain("binding the queue", e))?;
    }
    match &opts.queue {
        None => eprintln!(
            "walrelay tail: consuming a temporary queue bound to exchange {exchange:?} with {:?}: \
             events published from now on are shown",
            binding.unwrap_or("#")
        ),
        Some(q) if ack => {
            eprintln!("walrelay tail: consuming queue {q:?} (printed messages are removed from it)")
        }
        Some(q) => eprintln!(
            "walrelay tail: consuming queue {q:?} without removing anything (messages go back when tail exits; --ack consumes them)"
        ),
    }
    Ok((queue, ack))
}
