//! `walrelay tail`: a small consumer that prints what walrelay publishes, one line per event
//! (`<routing key> <JSON body>`). It declares a durable queue bound to the configured exchange,
//! so it doubles as the demo's consumer and as a debugging tool: point it at a binding
//! (`--binding 'public.orders.*'`) and watch. Messages are acknowledged after printing.

use std::io::Write;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicAckOptions, BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};

use crate::config::Settings;

/// What to consume.
pub struct TailOptions {
    pub queue: String,
    pub binding: String,
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
) -> Result<u64, lapin::Error> {
    let conn =
        Connection::connect(settings.sink.url.expose(), ConnectionProperties::default()).await?;
    let exchange = settings.sink.exchange.as_str();
    // An existing queue is used as it is (whatever its type and arguments): a passive declare
    // checks it exists; a failed passive declare closes the channel, so open another.
    let probe = conn.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let exists = probe
        .queue_declare(opts.queue.as_str().into(), passive, FieldTable::default())
        .await
        .is_ok();
    let ch = conn.create_channel().await?;
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    if !exists {
        ch.queue_declare(
            opts.queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    }
    ch.queue_bind(
        opts.queue.as_str().into(),
        exchange.into(),
        opts.binding.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    eprintln!(
        "walrelay tail: consuming queue {:?} bound to exchange {exchange:?} with {:?}",
        opts.queue, opts.binding
    );
    let mut printed = 0;
    let mut last = Instant::now();
    loop {
        if opts.count.is_some_and(|c| printed >= c) {
            break;
        }
        if opts.idle_timeout.is_some_and(|t| last.elapsed() > t) {
            break;
        }
        match ch
            .basic_get(
                opts.queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await?
        {
            Some(msg) => {
                let body = String::from_utf8_lossy(&msg.delivery.data);
                let _ = writeln!(out, "{} {}", msg.delivery.routing_key, body);
                let _ = out.flush();
                msg.delivery.acker.ack(BasicAckOptions::default()).await?;
                printed += 1;
                last = Instant::now();
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let _ = conn.close(200, "walrelay tail done".into()).await;
    Ok(printed)
}
