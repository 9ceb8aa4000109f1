//! `walrelay tail` with `[stream]`: reads the stream (every partition of a super stream) from
//! an offset — `first`, `last`, `next`, a numeric offset, or an RFC 3339 time — and prints one
//! line per message, `<routing key> <JSON body>`, as the AMQP tail does. Reading a stream
//! removes nothing from it, so tail is always a peek.

use std::io::Write;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rabbitmq_stream_client::types::{OffsetSpecification, SimpleValue};
use tokio::sync::mpsc;

use crate::config::Settings;
use crate::sink::AmqpError;
use crate::sink::stream::StreamSettings;

/// Where reading starts.
#[derive(Clone, Debug, PartialEq)]
pub enum From {
    First,
    Last,
    Next,
    Offset(u64),
    /// Milliseconds since the Unix epoch: the first chunk stored at or after it.
    Time(i64),
}

impl std::str::FromStr for From {
    type Err = String;

    fn from_str(s: &str) -> Result<From, String> {
        Ok(match s {
            "first" => From::First,
            "last" => From::Last,
            "next" => From::Next,
            _ if s.bytes().all(|b| b.is_ascii_digit()) => From::Offset(
                s.parse()
                    .map_err(|_| format!("offset {s:?} is out of range"))?,
            ),
            _ => From::Time(
                chrono::DateTime::parse_from_rfc3339(s)
                    .map_err(|_| {
                        format!(
                            "{s:?} is not first, last, next, an offset or an RFC 3339 time (2026-12-02T18:00:00Z)"
                        )
                    })?
                    .timestamp_millis(),
            ),
        })
    }
}

impl std::fmt::Display for From {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            From::First => f.write_str("the first message"),
            From::Last => f.write_str("the last chunk"),
            From::Next => f.write_str("the next message (what arrives from now on)"),
            From::Offset(o) => write!(f, "offset {o}"),
            From::Time(ms) => match chrono::DateTime::from_timestamp_millis(*ms) {
                Some(t) => write!(f, "the first chunk stored at or after {}", t.to_rfc3339()),
                None => write!(f, "the first chunk stored at or after {ms} ms"),
            },
        }
    }
}

impl From {
    fn spec(&self) -> OffsetSpecification {
        match self {
            From::First => OffsetSpecification::First,
            From::Last => OffsetSpecification::Last,
            From::Next => OffsetSpecification::Next,
            From::Offset(o) => OffsetSpecification::Offset(*o),
            From::Time(ms) => OffsetSpecification::Timestamp(*ms),
        }
    }
}

/// Reads until `count` messages or the idle timeout. Returns how many it printed.
pub async fn read(
    settings: &Settings,
    stream: &StreamSettings,
    from: &From,
    count: Option<u64>,
    idle_timeout: Option<Duration>,
    out: &mut dyn Write,
) -> Result<u64, AmqpError> {
    let broker = |e: crate::sink::SinkError| AmqpError::new(e.to_string());
    let name = settings.sink.exchange.as_str();
    // The first node of stream.url that answers (a stopped node of a cluster is passed over).
    let (_, node) = crate::sink::stream::connect::admin_any(&stream.nodes, 0, "walrelay tail")
        .await
        .map_err(broker)?;
    let (env, admin) = crate::sink::stream::connect::environment(
        &stream.nodes[node],
        "walrelay tail",
        stream.load_balancer,
    )
    .await
    .map_err(broker)?;
    let members = crate::sink::stream::connect::members(&admin, name, stream.partitions)
        .await
        .map_err(broker)?;
    let _ = admin.close().await;
    // One consumer per member stream, merged in arrival order (each keeps its own order).
    let (tx, mut rx) = mpsc::channel(1024);
    let mut handles = Vec::new();
    for member in &members {
        let mut consumer = env
            .consumer()
            .offset(from.spec())
            .client_provided_name("walrelay tail")
            .build(member)
            .await
            .map_err(|e| AmqpError::new(format!("reading stream {member:?}: {e}")))?;
        handles.push(consumer.handle());
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(delivery) = consumer.next().await {
                let line = delivery
                    .map_err(|e| e.to_string())
                    .map(|d| line(d.message()));
                if tx.send(line).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let what = if members.len() > 1 {
        format!("super stream {name:?} ({} partitions)", members.len())
    } else {
        format!("stream {name:?}")
    };
    eprintln!("walrelay tail: reading {what} from {from} (reading removes nothing)");
    let mut printed = 0;
    let mut last = Instant::now();
    let result = loop {
        if count.is_some_and(|c| printed >= c) {
            break Ok(printed);
        }
        let next = match idle_timeout {
            Some(t) => {
                match tokio::time::timeout(t.saturating_sub(last.elapsed()), rx.recv()).await {
                    Ok(n) => n,
                    Err(_) => break Ok(printed),
                }
            }
            None => rx.recv().await,
        };
        match next {
            Some(Ok(text)) => {
                let _ = writeln!(out, "{text}");
                let _ = out.flush();
                printed += 1;
                last = Instant::now();
            }
            Some(Err(e)) => break Err(AmqpError::new(format!("reading the stream: {e}"))),
            None => break Ok(printed),
        }
    };
    for h in handles {
        let _ = h.close().await;
    }
    // The consumers' connections belong to the environment: it lives until they closed.
    drop(env);
    result
}

/// `<routing key> <body>` of one message (the routing key is an application property).
fn line(m: &rabbitmq_stream_client::types::Message) -> String {
    let key = m
        .application_properties()
        .and_then(|p| p.get("routing_key"))
        .map(|v| match v {
            SimpleValue::String(s) => s.clone(),
            other => format!("{other:?}"),
        })
        .unwrap_or_else(|| "-".to_owned());
    let body = m.data().map(String::from_utf8_lossy).unwrap_or_default();
    format!("{key} {body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_from_words_numbers_and_times() {
        assert_eq!("first".parse(), Ok(From::First));
        assert_eq!("last".parse(), Ok(From::Last));
        assert_eq!("next".parse(), Ok(From::Next));
        assert_eq!("42".parse(), Ok(From::Offset(42)));
        assert_eq!(
            "2026-12-02T18:00:00Z".parse(),
            Ok(From::Time(1_796_234_400_000))
        );
        assert_eq!(
            "2026-12-02T19:00:00+01:00".parse(),
            Ok(From::Time(1_796_234_400_000))
        );
        assert_eq!(From::Offset(3).to_string(), "offset 3");
        assert_eq!(
            From::Time(1_796_234_400_000).to_string(),
            "the first chunk stored at or after 2026-12-02T18:00:00+00:00"
        );
        let e = "yesterday".parse::<From>().unwrap_err();
        assert!(e.contains("RFC 3339"), "{e}");
        assert!("99999999999999999999".parse::<From>().is_err());
    }
}
