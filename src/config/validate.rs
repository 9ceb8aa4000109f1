//! Turns a [`RawConfig`] into [`Settings`]: typed values, defaults applied, and an error that
//! names the offending key for anything wrong.

use std::time::Duration;

use super::*;
use crate::event::routing::RoutingTemplate;
use crate::filter::FilterSettings;
use crate::sink::SinkSettings;
use crate::source::params::ConnParams;

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

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub postgres: ConnParams,
    pub slot: String,
    pub publication: String,
    /// Which changes are published and how; also decides the tables (and operations) of the
    /// publication walrelay creates when it does not exist.
    pub filter: FilterSettings,
    pub status_interval: Duration,
    /// Silence from the server after which the replication connection is presumed dead.
    pub receive_timeout: Duration,
    /// Create the slot with `FAILOVER` (PostgreSQL 17+), so standbys with
    /// `sync_replication_slots` keep a copy that survives a promotion.
    pub failover_slot: bool,
    pub sink: SinkSettings,
    pub routing_key: RoutingTemplate,
    pub max_in_flight: usize,
    pub confirm_timeout: Duration,
    /// Publish `pg_logical_emit_message` messages (op `message`); off by default because no
    /// queue is usually bound for them and an unroutable message holds the stream.
    pub publish_messages: bool,
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
    /// RabbitMQ's management API, for `walrelay doctor` (bindings and queue types).
    pub management_url: Option<secret::Secret>,
    /// Where the last reported position is kept across restarts (off when `None`).
    pub state_file: Option<std::path::PathBuf>,
    /// Batch mode: events of one transaction packed into one message (off at 1 event).
    pub batch: crate::pipeline::publish::BatchLimits,
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
    let pg_url = raw.postgres.url.ok_or_else(|| {
        ConfigError::new(
            "postgres.url",
            "missing (set it in the file or in DATABASE_URL)".into(),
        )
    })?;
    let postgres = ConnParams::from_url(pg_url.expose())
        .map_err(|e| ConfigError::new("postgres.url", e.to_string()))?;
    let slot = raw.postgres.slot.unwrap_or_else(|| DEFAULT_NAME.to_owned());
    if !is_valid_slot_name(&slot) {
        return Err(ConfigError::new(
            "postgres.slot",
            format!(
                "{slot:?} is not a valid slot name (lower-case letters, digits and _, at most 63)"
            ),
        ));
    }
    let publication = raw
        .postgres
        .publication
        .unwrap_or_else(|| DEFAULT_NAME.to_owned());
    if publication.is_empty() || publication.len() > 63 {
        return Err(ConfigError::new(
            "postgres.publication",
            "must be 1 to 63 characters".into(),
        ));
    }
    let status_interval = positive(
        "postgres.status_interval_ms",
        raw.postgres.status_interval_ms,
        DEFAULT_STATUS_INTERVAL_MS,
    )?;

    let amqp_url = raw.rabbitmq.url.ok_or_else(|| {
        ConfigError::new(
            "rabbitmq.url",
            "missing (set it in the file or in AMQP_URL)".into(),
        )
    })?;
    if amqp_url.expose().parse::<lapin::uri::AMQPUri>().is_err() {
        return Err(ConfigError::new(
            "rabbitmq.url",
            "not an amqp:// or amqps:// URL".into(),
        ));
    }
    let exchange = raw
        .rabbitmq
        .exchange
        .unwrap_or_else(|| DEFAULT_EXCHANGE.to_owned());
    if exchange.len() > 255 {
        return Err(ConfigError::new(
            "rabbitmq.exchange",
            "longer than 255 bytes".into(),
        ));
    }
    let template = raw
        .rabbitmq
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
    let filter = super::filter::validate(raw.filter, raw.flood)?;
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
    extra_exchanges.sort();
    extra_exchanges.dedup();
    let max_in_flight = raw.rabbitmq.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
    if !(1..=100_000).contains(&max_in_flight) {
        return Err(ConfigError::new(
            "rabbitmq.max_in_flight",
            "must be between 1 and 100000".into(),
        ));
    }
    let max_message_bytes = raw
        .rabbitmq
        .max_message_bytes
        .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
    if max_message_bytes < 1024 {
        return Err(ConfigError::new(
            "rabbitmq.max_message_bytes",
            "must be at least 1024".into(),
        ));
    }
    let confirm_timeout = positive(
        "rabbitmq.confirm_timeout_ms",
        raw.rabbitmq.confirm_timeout_ms,
        DEFAULT_CONFIRM_TIMEOUT_MS,
    )?;

    let shutdown_timeout = positive(
        "service.shutdown_timeout_ms",
        raw.service.shutdown_timeout_ms,
        DEFAULT_SHUTDOWN_TIMEOUT_MS,
    )?;
    let reconnect_min = positive(
        "service.reconnect_min_ms",
        raw.service.reconnect_min_ms,
        DEFAULT_RECONNECT_MIN_MS,
    )?;
    let reconnect_max = positive(
        "service.reconnect_max_ms",
        raw.service.reconnect_max_ms,
        DEFAULT_RECONNECT_MAX_MS,
    )?;
    if reconnect_max < reconnect_min {
        return Err(ConfigError::new(
            "service.reconnect_max_ms",
            "must not be below service.reconnect_min_ms".into(),
        ));
    }
    let format = raw.service.log_format.as_deref().unwrap_or("text");
    let log_json = super::log_format_is_json(format).ok_or_else(|| {
        ConfigError::new(
            "service.log_format",
            format!("{format:?} is not \"text\" or \"json\""),
        )
    })?;
    let http_listen = match raw.http.listen.as_deref().unwrap_or(DEFAULT_HTTP_LISTEN) {
        "" | "off" => None,
        addr => Some(addr.parse().map_err(|_| {
            ConfigError::new(
                "http.listen",
                format!("{addr:?} is not an address like 127.0.0.1:9187 (or \"off\")"),
            )
        })?),
    };
    let progress_interval = match raw
        .service
        .progress_interval_ms
        .unwrap_or(DEFAULT_PROGRESS_INTERVAL_MS)
    {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    };
    let heartbeat_interval = match raw.service.heartbeat_interval_ms {
        None | Some(0) => None,
        Some(ms) => Some(Duration::from_millis(ms)),
    };
    let probe_interval = positive(
        "service.probe_interval_ms",
        raw.service.probe_interval_ms,
        DEFAULT_PROBE_INTERVAL_MS,
    )?;
    let standby_retry = positive(
        "service.standby_retry_ms",
        raw.service.standby_retry_ms,
        DEFAULT_STANDBY_RETRY_MS,
    )?;
    if let Some(m) = &raw.rabbitmq.management_url
        && !m.expose().starts_with("http://")
    {
        return Err(ConfigError::new(
            "rabbitmq.management_url",
            "must be an http:// URL of the management API".into(),
        ));
    }
    let receive_timeout = positive(
        "postgres.receive_timeout_ms",
        raw.postgres.receive_timeout_ms,
        DEFAULT_RECEIVE_TIMEOUT_MS,
    )?;
    if receive_timeout < status_interval * 2 {
        return Err(ConfigError::new(
            "postgres.receive_timeout_ms",
            "must be at least twice postgres.status_interval_ms".into(),
        ));
    }
    let batch_max_events = raw.rabbitmq.batch_max_events.unwrap_or(1);
    if !(1..=100_000).contains(&batch_max_events) {
        return Err(ConfigError::new(
            "rabbitmq.batch_max_events",
            "must be between 1 (off) and 100000".into(),
        ));
    }
    let batch_max_bytes = raw
        .rabbitmq
        .batch_max_bytes
        .unwrap_or(DEFAULT_BATCH_MAX_BYTES.min(max_message_bytes - 2));
    if batch_max_bytes < 1024 || batch_max_bytes > max_message_bytes - 2 {
        return Err(ConfigError::new(
            "rabbitmq.batch_max_bytes",
            "must be at least 1024 and below rabbitmq.max_message_bytes".into(),
        ));
    }
    Ok(Settings {
        batch: crate::pipeline::publish::BatchLimits {
            max_events: batch_max_events,
            max_bytes: batch_max_bytes,
        },
        receive_timeout,
        failover_slot: raw.postgres.failover_slot.unwrap_or(false),
        state_file: raw.service.state_file,
        http_listen,
        heartbeat_interval,
        progress_interval,
        probe_interval,
        standby_retry,
        management_url: raw.rabbitmq.management_url,
        postgres,
        slot,
        publication,
        filter,
        status_interval,
        sink: SinkSettings {
            url: amqp_url,
            exchange,
            extra_exchanges,
            declare_exchange: raw.rabbitmq.declare_exchange.unwrap_or(true),
            max_message_bytes,
        },
        routing_key,
        max_in_flight,
        confirm_timeout,
        publish_messages: raw.rabbitmq.publish_messages.unwrap_or(false),
        shutdown_timeout,
        reconnect_min,
        reconnect_max,
        log_json,
    })
}
