//! Turns a [`RawConfig`] into [`Settings`]: typed values, defaults applied, and an error that
//! names the offending key for anything wrong.

use std::time::Duration;

use super::*;
use crate::event::routing::RoutingTemplate;
use crate::filter::FilterSettings;
use crate::sink::{BatchLimits, SinkSettings};
use crate::source::params::ConnParams;
use crate::source::{OnSlotLost, SourceSettings};

/// A configuration problem, naming the key (its full path) and, when the file sets it, its line.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
    /// 1-based line of the key in the file; `None` for keys the file does not set (defaults,
    /// environment overrides).
    pub line: Option<usize>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "config key {}", self.key)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    pub fn new(key: &str, message: String) -> Self {
        ConfigError {
            key: key.to_owned(),
            message,
            line: None,
        }
    }
}

/// The validated configuration, by section: what the source, the sink, the filter and the
/// service each need, and nothing else.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `[postgres]`: the replication connection, slot and publication.
    pub source: SourceSettings,
    /// `[rabbitmq]`: where and how to publish.
    pub sink: SinkSettings,
    /// `[filter]` and `[flood]`: which changes are published and how; also decides the
    /// tables (and operations) of the publication walrelay creates when it does not exist.
    pub filter: FilterSettings,
    /// `[service]` and `[http]`: the process around the pipeline.
    pub service: ServiceSettings,
    /// `[backfill]`, `[snapshot]` and `[control]`: existing rows beside the stream.
    pub backfill: crate::backfill::BackfillSettings,
}

/// The process around the pipeline: shutdown, reconnects, logs, HTTP, side tasks.
#[derive(Clone, Debug)]
pub struct ServiceSettings {
    pub shutdown_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub log_json: bool,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `None` when turned off.
    pub http_listen: Option<std::net::SocketAddr>,
    /// Emit a heartbeat logical message this often (off when `None`).
    pub heartbeat_interval: Option<Duration>,
    /// Log a progress line this often while running (off when `None`).
    pub progress_interval: Option<Duration>,
    pub probe_interval: Duration,
    pub standby_retry: Duration,
    /// Where the last reported position is kept across restarts (off when `None`).
    pub state_file: Option<std::path::PathBuf>,
}

fn is_valid_slot_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn positive(key: &str, v: Option<u64>, default: u64) -> Result<Duration, ConfigError> {
    match v.unwrap_or(default) {
        0 => Err(ConfigError::new(key, "must be greater than 0".into())),
        ms => Ok(Duration::from_millis(ms)),
    }
}

pub(super) fn validate(raw: RawConfig) -> Result<Settings, ConfigError> {
    let source = source(raw.postgres)?;
    let backfill = super::backfill::validate(raw.backfill, raw.snapshot, raw.control)?;
    let mut filter = super::filter::validate(raw.filter, raw.flood)?;
    // walrelay's own progress table is never published, whatever the patterns say.
    filter
        .exclude
        .push(super::backfill::internal_exclude(&backfill.schema));
    let sink = match raw.stream {
        Some(stream) => super::stream::sink(raw.rabbitmq, stream, &filter)?,
        None => sink(raw.rabbitmq, &filter)?,
    };
    let service = service(raw.service, raw.http)?;
    Ok(Settings {
        source,
        sink,
        filter,
        service,
        backfill,
    })
}

fn source(raw: RawPostgres) -> Result<SourceSettings, ConfigError> {
    let url = raw.url.ok_or_else(|| {
        ConfigError::new(
            "postgres.url",
            "missing (set it in the file or in DATABASE_URL)".into(),
        )
    })?;
    let conn = ConnParams::from_url(url.expose())
        .map_err(|e| ConfigError::new("postgres.url", e.to_string()))?;
    let slot = raw.slot.unwrap_or_else(|| DEFAULT_NAME.to_owned());
    if !is_valid_slot_name(&slot) {
        return Err(ConfigError::new(
            "postgres.slot",
            format!(
                "{slot:?} is not a valid slot name (lower-case letters, digits and _, at most 63)"
            ),
        ));
    }
    let publication = raw.publication.unwrap_or_else(|| DEFAULT_NAME.to_owned());
    if publication.is_empty() || publication.len() > 63 {
        return Err(ConfigError::new(
            "postgres.publication",
            "must be 1 to 63 characters".into(),
        ));
    }
    let status_interval = positive(
        "postgres.status_interval_ms",
        raw.status_interval_ms,
        DEFAULT_STATUS_INTERVAL_MS,
    )?;
    let receive_timeout = positive(
        "postgres.receive_timeout_ms",
        raw.receive_timeout_ms,
        DEFAULT_RECEIVE_TIMEOUT_MS,
    )?;
    if receive_timeout < status_interval * 2 {
        return Err(ConfigError::new(
            "postgres.receive_timeout_ms",
            "must be at least twice postgres.status_interval_ms".into(),
        ));
    }
    let on_slot_lost = match raw.on_slot_lost.as_deref() {
        None | Some("stop") => OnSlotLost::Stop,
        Some("resync") => OnSlotLost::Resync,
        Some(_) => {
            return Err(ConfigError::new(
                "postgres.on_slot_lost",
                "must be \"stop\" or \"resync\"".into(),
            ));
        }
    };
    Ok(SourceSettings {
        conn,
        slot,
        publication,
        status_interval,
        receive_timeout,
        failover_slot: raw.failover_slot.unwrap_or(false),
        on_slot_lost,
    })
}

fn sink(raw: RawRabbitmq, filter: &FilterSettings) -> Result<SinkSettings, ConfigError> {
    let url = raw.url.clone().ok_or_else(|| {
        ConfigError::new(
            "rabbitmq.url",
            "missing (set it in the file or in AMQP_URL; or set [stream] url for RabbitMQ Streams)"
                .into(),
        )
    })?;
    let nodes = super::nodes::parse(&url)?;
    let url = nodes[0].clone();
    let exchange = raw
        .exchange
        .clone()
        .unwrap_or_else(|| DEFAULT_EXCHANGE.to_owned());
    if exchange.len() > 255 {
        return Err(ConfigError::new(
            "rabbitmq.exchange",
            "longer than 255 bytes".into(),
        ));
    }
    let mut sink = sink_with(raw, url, exchange, DEFAULT_MAX_MESSAGE_BYTES, filter, false)?;
    sink.nodes = nodes;
    Ok(sink)
}

/// The settings both sinks share, once the destination is known.
pub(super) fn sink_with(
    raw: RawRabbitmq,
    url: crate::sink::AmqpUrl,
    exchange: String,
    default_max_message_bytes: usize,
    filter: &FilterSettings,
    stream: bool,
) -> Result<SinkSettings, ConfigError> {
    let dead_letters = super::dead_letter::validate(
        raw.on_oversized.as_deref(),
        raw.on_unroutable.as_deref(),
        raw.dead_letter_exchange.clone(),
        stream,
    )?;
    let template = raw
        .routing_key
        .unwrap_or_else(|| DEFAULT_ROUTING_KEY.to_owned());
    let routing_key = RoutingTemplate::parse(&template)
        .map_err(|e| ConfigError::new("rabbitmq.routing_key", e.to_string()))?;
    if routing_key.uses_partition() {
        return Err(ConfigError::new(
            "rabbitmq.routing_key",
            "{partition} needs a table's partitions: use it in a [[filter.table]] routing_key"
                .into(),
        ));
    }
    let mut extra_exchanges: Vec<String> = filter
        .rules
        .iter()
        .filter_map(|r| r.exchange.clone())
        .chain(
            filter
                .flood
                .reroute
                .as_ref()
                .and_then(|r| r.exchange.clone()),
        )
        .collect();
    // The dead-letter exchange is declared (and checked by doctor) like the others.
    extra_exchanges.extend(dead_letters.unroutable_to.clone());
    extra_exchanges.sort();
    extra_exchanges.dedup();
    let max_in_flight = raw.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
    if !(1..=100_000).contains(&max_in_flight) {
        return Err(ConfigError::new(
            "rabbitmq.max_in_flight",
            "must be between 1 and 100000".into(),
        ));
    }
    let max_message_bytes = raw.max_message_bytes.unwrap_or(default_max_message_bytes);
    if max_message_bytes < 1024 {
        return Err(ConfigError::new(
            "rabbitmq.max_message_bytes",
            "must be at least 1024".into(),
        ));
    }
    let confirm_timeout = positive(
        "rabbitmq.confirm_timeout_ms",
        raw.confirm_timeout_ms,
        DEFAULT_CONFIRM_TIMEOUT_MS,
    )?;
    if let Some(m) = &raw.management_url
        && let Err(why) = crate::sink::management::Api::from_url(m.expose())
    {
        return Err(ConfigError::new(
            "rabbitmq.management_url",
            format!("must be the management API's http:// or https:// URL: {why}"),
        ));
    }
    Ok(SinkSettings {
        exchange,
        extra_exchanges,
        declare_exchange: raw.declare_exchange.unwrap_or(true),
        routing_key,
        max_in_flight,
        max_message_bytes,
        confirm_timeout,
        publish_messages: raw.publish_messages.unwrap_or(false),
        batch: batch_limits(raw.batch_max_events, raw.batch_max_bytes, max_message_bytes)?,
        management_url: raw.management_url,
        nodes: vec![url.clone()],
        url,
        stream: None,
        dead_letters,
        node_in_use: Default::default(),
    })
}

fn batch_limits(
    max_events: Option<usize>,
    max_bytes: Option<usize>,
    max_message_bytes: usize,
) -> Result<BatchLimits, ConfigError> {
    let max_events = max_events.unwrap_or(1);
    if !(1..=100_000).contains(&max_events) {
        return Err(ConfigError::new(
            "rabbitmq.batch_max_events",
            "must be between 1 (off) and 100000".into(),
        ));
    }
    let max_bytes = max_bytes.unwrap_or(DEFAULT_BATCH_MAX_BYTES.min(max_message_bytes - 2));
    if max_bytes < 1024 || max_bytes > max_message_bytes - 2 {
        return Err(ConfigError::new(
            "rabbitmq.batch_max_bytes",
            "must be at least 1024 and below rabbitmq.max_message_bytes".into(),
        ));
    }
    Ok(BatchLimits {
        max_events,
        max_bytes,
    })
}

fn service(raw: RawService, http: RawHttp) -> Result<ServiceSettings, ConfigError> {
    let reconnect_min = positive(
        "service.reconnect_min_ms",
        raw.reconnect_min_ms,
        DEFAULT_RECONNECT_MIN_MS,
    )?;
    let reconnect_max = positive(
        "service.reconnect_max_ms",
        raw.reconnect_max_ms,
        DEFAULT_RECONNECT_MAX_MS,
    )?;
    if reconnect_max < reconnect_min {
        return Err(ConfigError::new(
            "service.reconnect_max_ms",
            "must not be below service.reconnect_min_ms".into(),
        ));
    }
    let format = raw.log_format.as_deref().unwrap_or("text");
    let log_json = super::log_format_is_json(format).ok_or_else(|| {
        ConfigError::new(
            "service.log_format",
            format!("{format:?} is not \"text\" or \"json\""),
        )
    })?;
    let http_listen = match http.listen.as_deref().unwrap_or(DEFAULT_HTTP_LISTEN) {
        "" | "off" => None,
        addr => Some(addr.parse().map_err(|_| {
            ConfigError::new(
                "http.listen",
                format!("{addr:?} is not an address like 127.0.0.1:9187 (or \"off\")"),
            )
        })?),
    };
    let off_at_zero = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
    Ok(ServiceSettings {
        shutdown_timeout: positive(
            "service.shutdown_timeout_ms",
            raw.shutdown_timeout_ms,
            DEFAULT_SHUTDOWN_TIMEOUT_MS,
        )?,
        reconnect_min,
        reconnect_max,
        log_json,
        http_listen,
        heartbeat_interval: off_at_zero(raw.heartbeat_interval_ms.unwrap_or(0)),
        progress_interval: off_at_zero(
            raw.progress_interval_ms
                .unwrap_or(DEFAULT_PROGRESS_INTERVAL_MS),
        ),
        probe_interval: positive(
            "service.probe_interval_ms",
            raw.probe_interval_ms,
            DEFAULT_PROBE_INTERVAL_MS,
        )?,
        standby_retry: positive(
            "service.standby_retry_ms",
            raw.standby_retry_ms,
            DEFAULT_STANDBY_RETRY_MS,
        )?,
        state_file: raw.state_file,
    })
}
