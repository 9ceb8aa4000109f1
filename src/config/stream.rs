//! `[stream]`: the stream sink's settings. With this section walrelay publishes to RabbitMQ
//! Streams instead of an exchange; `[rabbitmq]` keeps the settings both sinks share (routing
//! key template, in-flight window, message size, confirm timeout, batching).

use super::validate::sink_with;
use super::{ConfigError, DEFAULT_EXCHANGE, RawRabbitmq, RawStream};
use crate::filter::FilterSettings;
use crate::sink::SinkSettings;
use crate::sink::stream::StreamSettings;

/// Partitions of a super stream at most: each is a stream with its own producer connection.
const MAX_PARTITIONS: u32 = 256;

pub(super) fn sink(
    rabbitmq: RawRabbitmq,
    raw: RawStream,
    filter: &FilterSettings,
) -> Result<SinkSettings, ConfigError> {
    if rabbitmq.url.is_some() {
        return Err(ConfigError::new(
            "rabbitmq.url",
            "set together with [stream]: walrelay publishes to one sink (unset rabbitmq.url and AMQP_URL, or remove [stream])"
                .into(),
        ));
    }
    for (key, set) in [
        ("rabbitmq.exchange", rabbitmq.exchange.is_some()),
        (
            "rabbitmq.declare_exchange",
            rabbitmq.declare_exchange.is_some(),
        ),
    ] {
        if set {
            return Err(ConfigError::new(
                key,
                "applies to the AMQP sink only; with [stream], stream.stream names the stream"
                    .into(),
            ));
        }
    }
    let url = raw
        .url
        .ok_or_else(|| ConfigError::new("stream.url", "missing".into()))?;
    let nodes = super::nodes::parse_stream(&url)?;
    let url = nodes[0].clone();
    if nodes.iter().any(|n| n.tls && n.ca_file.is_none()) {
        return Err(ConfigError::new(
            "stream.url",
            "rabbitmq-stream+tls:// needs ?cacertfile=<PEM bundle>: the stream client cannot check a certificate against the system's roots, and walrelay never connects unchecked"
                .into(),
        ));
    }
    let stream = raw.stream.unwrap_or_else(|| DEFAULT_EXCHANGE.to_owned());
    if stream.is_empty() || stream.len() > 255 {
        return Err(ConfigError::new(
            "stream.stream",
            "must be 1 to 255 bytes".into(),
        ));
    }
    let positive = |key: &str, v: Option<u64>| match v {
        Some(0) => Err(ConfigError::new(key, "must be greater than 0".into())),
        v => Ok(v),
    };
    let settings = StreamSettings {
        url: url.clone(),
        nodes,
        create: raw.create.unwrap_or(true),
        max_length_bytes: positive("stream.max_length_bytes", raw.max_length_bytes)?,
        max_age: positive("stream.max_age_secs", raw.max_age_secs)?
            .map(std::time::Duration::from_secs),
        max_segment_bytes: positive("stream.max_segment_bytes", raw.max_segment_bytes)?,
        partitions: match raw.partitions {
            Some(n) if !(1..=MAX_PARTITIONS).contains(&n) => {
                return Err(ConfigError::new(
                    "stream.partitions",
                    format!("must be 1 to {MAX_PARTITIONS}"),
                ));
            }
            n => n,
        },
        load_balancer: raw.load_balancer.unwrap_or(false),
    };
    let mut sink = sink_with(
        rabbitmq,
        url,
        stream,
        crate::sink::stream::DEFAULT_MAX_MESSAGE_BYTES,
        filter,
        true,
    )?;
    sink.declare_exchange = false;
    sink.stream = Some(settings);
    Ok(sink)
}
