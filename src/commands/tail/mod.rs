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

use std::collections::HashSet;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use amqprs::channel::{
    BasicAckArguments, BasicGetArguments, Channel, ExchangeDeclareArguments, QueueBindArguments,
    QueueDeclareArguments,
};

use crate::config::Settings;
use crate::sink::{AmqpError, Link};

/// `walrelay tail`'s options.
#[derive(clap::Args)]
pub struct Args {
    /// Read this queue instead (declared durable when missing). It is only peeked at —
    /// messages go back when tail exits — unless `--ack` is given.
    #[arg(long)]
    queue: Option<String>,
    /// Binding key on the exchange (default `#` for the temporary queue; for `--queue`,
    /// bound only when given).
    #[arg(long)]
    binding: Option<String>,
    /// With `--queue`: remove the printed messages from the queue.
    #[arg(long)]
    ack: bool,
    /// Exit after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Exit when no event arrived for this many seconds.
    #[arg(long)]
    idle_timeout_secs: Option<u64>,
    /// With `[stream]`: where to start reading — `first`, `last`, `next` (the default), an
    /// offset, or an RFC 3339 time (e.g. 2026-12-02T18:00:00Z).
    #[arg(long)]
    offset: Option<stream::From>,
}

/// `walrelay tail`: the stream from `--offset` with `[stream]`, else a queue on the exchange.
/// Exit code 2 for an option that does not apply to the sink.
pub async fn run(settings: &Settings, args: Args) -> ExitCode {
    let idle_timeout = args.idle_timeout_secs.map(Duration::from_secs);
    let out = &mut std::io::stdout();
    if let Some(stream_settings) = &settings.sink.stream {
        let amqp_only = [
            ("--queue", args.queue.is_some()),
            ("--binding", args.binding.is_some()),
            ("--ack", args.ack),
        ];
        if let Some((flag, _)) = amqp_only.into_iter().find(|(_, set)| *set) {
            eprintln!(
                "walrelay tail: {flag} applies to an exchange; with [stream], tail reads the stream from --offset"
            );
            return ExitCode::from(2);
        }
        let from = args.offset.unwrap_or(stream::From::Next);
        let read = stream::read(
            settings,
            stream_settings,
            &from,
            args.count,
            idle_timeout,
            out,
        );
        return match read.await {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("walrelay tail: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.offset.is_some() {
        eprintln!(
            "walrelay tail: --offset applies to [stream]; an exchange's queue has no offsets"
        );
        return ExitCode::from(2);
    }
    let opts = TailOptions {
        queue: args.queue,
        binding: args.binding,
        ack: args.ack,
        count: args.count,
        idle_timeout,
    };
    match follow(settings, &opts, out).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("walrelay tail: {e}");
            ExitCode::FAILURE
        }
    }
}

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

/// Longest wait between two reconnection attempts while the broker is away.
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// What survives a reconnection: the counts, and the ids already printed.
struct Progress {
    printed: u64,
    /// When the last message arrived (or tail started): the idle timeout counts from here.
    last: Instant,
    /// Message ids printed so far from a named queue. After a reconnection the broker
    /// redelivers what tail had peeked (or printed but not yet acknowledged); those are not
    /// printed twice. A temporary queue dies with its connection, so it never redelivers.
    seen: HashSet<String>,
}

/// How one connection ended.
enum Ended {
    /// The count or the idle timeout was reached.
    Done,
    /// The connection failed after it consumed; `subscribed` is false when it failed before.
    Lost { error: AmqpError, subscribed: bool },
}

/// Consumes until `count` messages, the idle timeout, or an error. Returns how many it printed.
///
/// A broker that restarts, or a connection that breaks, after tail has started consuming does
/// not end it: tail says so on stderr and connects again (every second at first, then up to
/// every `RECONNECT_MAX`, 5 s) until the broker is back. Only a failure before the first
/// subscription (a wrong password, a missing queue) ends it with an error.
pub async fn follow(
    settings: &Settings,
    opts: &TailOptions,
    out: &mut dyn Write,
) -> Result<u64, AmqpError> {
    let mut progress = Progress {
        printed: 0,
        last: Instant::now(),
        seen: HashSet::new(),
    };
    let mut consumed_once = false;
    let mut delay = Duration::from_secs(1);
    loop {
        let error = match consume(settings, opts, out, &mut progress).await {
            Ended::Done => return Ok(progress.printed),
            Ended::Lost { error, subscribed } => {
                if subscribed {
                    if opts.queue.is_none() {
                        eprintln!(
                            "walrelay tail: connection lost ({error}); reconnecting: events published until then are not shown (the temporary queue went with the connection)"
                        );
                    } else {
                        eprintln!("walrelay tail: connection lost ({error}); reconnecting");
                    }
                    consumed_once = true;
                    delay = Duration::from_secs(1);
                }
                error
            }
        };
        if !consumed_once {
            return Err(error);
        }
        if opts
            .idle_timeout
            .is_some_and(|t| progress.last.elapsed() > t)
        {
            return Err(error);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RECONNECT_MAX);
    }
}

/// One connection: subscribe, then print until done or the connection fails.
async fn consume(
    settings: &Settings,
    opts: &TailOptions,
    out: &mut dyn Write,
    progress: &mut Progress,
) -> Ended {
    let lost = |error, subscribed| Ended::Lost { error, subscribed };
    let link = match Link::open_any(
        &settings.sink.nodes,
        0,
        "walrelay tail",
        settings.sink.confirm_timeout,
    )
    .await
    {
        Ok((link, _signals, _node)) => link,
        Err(e) => return lost(e, false),
    };
    let (ch, queue, ack) = match setup(&link, settings, opts).await {
        Ok(v) => v,
        Err(e) => {
            link.close().await;
            return lost(e, false);
        }
    };
    let ended = loop {
        if opts.count.is_some_and(|c| progress.printed >= c) {
            break Ended::Done;
        }
        if opts
            .idle_timeout
            .is_some_and(|t| progress.last.elapsed() > t)
        {
            break Ended::Done;
        }
        let got = match ch
            .basic_get(BasicGetArguments::new(&queue).no_ack(false).finish())
            .await
        {
            Ok(got) => got,
            Err(e) => break lost(link.explain("reading the queue", e), true),
        };
        match got {
            Some((get, props, body)) => {
                let id = props.message_id().cloned();
                let repeat = opts.queue.is_some()
                    && id.as_ref().is_some_and(|id| progress.seen.contains(id));
                if !repeat {
                    let body = String::from_utf8_lossy(&body);
                    let _ = writeln!(out, "{} {}", get.routing_key(), body);
                    let _ = out.flush();
                    if let (Some(id), Some(_)) = (id, &opts.queue) {
                        progress.seen.insert(id);
                    }
                    progress.printed += 1;
                    progress.last = Instant::now();
                }
                if ack
                    && let Err(e) = ch
                        .basic_ack(BasicAckArguments::new(get.delivery_tag(), false))
                        .await
                {
                    break lost(link.explain("acknowledging", e), true);
                }
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    // Closing returns every unacknowledged (peeked) message to its queue and deletes ours.
    link.close().await;
    ended
}

/// Declares the exchange, then the queue to read, and binds it.
async fn setup(
    link: &Link,
    settings: &Settings,
    opts: &TailOptions,
) -> Result<(Channel, String, bool), AmqpError> {
    let exchange = settings.sink.exchange.as_str();
    let ch = link.channel().await?;
    ch.exchange_declare(
        ExchangeDeclareArguments::new(exchange, "topic")
            .durable(true)
            .finish(),
    )
    .await
    .map_err(|e| link.explain("declaring the exchange", e))?;
    let (queue, ack) = subscribe(link, &ch, exchange, opts).await?;
    Ok((ch, queue, ack))
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
