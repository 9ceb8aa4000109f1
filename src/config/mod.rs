//! Configuration: the TOML file plus environment overrides, validated into typed [`Settings`].
//!
//! Raw input is checked once, here: after start-up nothing handles raw strings. Every key is
//! documented in `docs/configuration.md` (a test keeps the two in step). Overrides:
//! `DATABASE_URL` and `AMQP_URL` replace the connection URLs, and `WALRELAY_<SECTION>_<KEY>`
//! (e.g. `WALRELAY_POSTGRES_SLOT`, `WALRELAY_FLOOD_MAX_CHANGES`) replaces any key of the
//! `postgres`, `rabbitmq`, `stream`, `service`, `filter`, `flood`, `http`, `backfill`, `snapshot` and
//! `control` sections.

mod backfill;
mod dead_letter;
mod filter;
mod location;
mod nodes;
mod stream;
mod validate;

use serde::Deserialize;

pub use validate::{ConfigError, Settings};

/// Default slot and publication name.
pub const DEFAULT_NAME: &str = "walrelay";
/// Default exchange: a durable topic exchange named after the product.
pub const DEFAULT_EXCHANGE: &str = "walrelay";
/// Default routing key: lets consumers bind `public.orders.*` or `*.*.delete`.
pub const DEFAULT_ROUTING_KEY: &str = "{schema}.{table}.{op}";
/// Unconfirmed messages allowed in flight: pipelined confirms reach the broker's throughput
/// limit around 1,000–5,000; more adds latency, not speed.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 2_000;
/// 16 MiB: RabbitMQ 4.x's default `max_message_size` (3.x allowed 128 MiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Batch mode's byte limit per message (when batching is on).
pub const DEFAULT_BATCH_MAX_BYTES: usize = 1024 * 1024;
/// Without a confirm for this long, the broker is treated as unavailable and the replication
/// connection is released, so a Postgres shutdown or failover is never held hostage.
pub const DEFAULT_CONFIRM_TIMEOUT_MS: u64 = 30_000;
/// How often the slot's position is reported: well below any sane `wal_sender_timeout`.
pub const DEFAULT_STATUS_INTERVAL_MS: u64 = 1_000;
/// How long SIGTERM waits for outstanding confirms before exiting.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_RECONNECT_MIN_MS: u64 = 500;
pub const DEFAULT_RECONNECT_MAX_MS: u64 = 30_000;
/// Loopback only by default: metrics are not for the whole network unless asked.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9187";
/// Silence from the server for this long (after asking it to answer) means the connection is
/// dead: a blackholed network sends no RST, and TCP alone would wait for many minutes.
pub const DEFAULT_RECEIVE_TIMEOUT_MS: u64 = 30_000;
/// How often a progress line is logged: often enough to show life in a log, rare enough not to
/// flood it.
pub const DEFAULT_PROGRESS_INTERVAL_MS: u64 = 60_000;
/// How often the slot's retained WAL is sampled over SQL.
pub const DEFAULT_PROBE_INTERVAL_MS: u64 = 10_000;
/// While another instance holds the slot, how often a standby tries to take it: the takeover
/// time after the active instance dies.
pub const DEFAULT_STANDBY_RETRY_MS: u64 = 2_000;

/// The file as written. `deny_unknown_fields` turns typos into start-up errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub postgres: RawPostgres,
    #[serde(default)]
    pub rabbitmq: RawRabbitmq,
    /// `[stream]`: publish to RabbitMQ Streams instead of an exchange.
    pub stream: Option<RawStream>,
    #[serde(default)]
    pub service: RawService,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub filter: filter::RawFilter,
    #[serde(default)]
    pub flood: filter::RawFlood,
    #[serde(default)]
    pub backfill: backfill::RawBackfill,
    #[serde(default)]
    pub snapshot: backfill::RawSnapshot,
    #[serde(default)]
    pub control: backfill::RawControl,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPostgres {
    pub url: Option<crate::secret::Secret>,
    pub slot: Option<String>,
    pub publication: Option<String>,
    pub status_interval_ms: Option<u64>,
    pub receive_timeout_ms: Option<u64>,
    pub failover_slot: Option<bool>,
    pub on_slot_lost: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRabbitmq {
    /// One URL, or the nodes of a cluster (an array; in `AMQP_URL`, comma-separated).
    pub url: Option<nodes::UrlList>,
    pub exchange: Option<String>,
    pub declare_exchange: Option<bool>,
    pub routing_key: Option<String>,
    pub max_in_flight: Option<usize>,
    pub max_message_bytes: Option<usize>,
    pub confirm_timeout_ms: Option<u64>,
    pub publish_messages: Option<bool>,
    pub management_url: Option<crate::secret::Secret>,
    pub batch_max_events: Option<usize>,
    pub batch_max_bytes: Option<usize>,
    pub on_oversized: Option<String>,
    pub on_unroutable: Option<String>,
    pub dead_letter_exchange: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStream {
    pub url: Option<nodes::UrlList>,
    pub stream: Option<String>,
    pub create: Option<bool>,
    pub max_length_bytes: Option<u64>,
    pub max_age_secs: Option<u64>,
    pub max_segment_bytes: Option<u64>,
    pub partitions: Option<u32>,
    pub load_balancer: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub shutdown_timeout_ms: Option<u64>,
    pub reconnect_min_ms: Option<u64>,
    pub reconnect_max_ms: Option<u64>,
    pub log_format: Option<String>,
    pub heartbeat_interval_ms: Option<u64>,
    pub progress_interval_ms: Option<u64>,
    pub probe_interval_ms: Option<u64>,
    pub standby_retry_ms: Option<u64>,
    pub state_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub listen: Option<String>,
}

impl<'de> Deserialize<'de> for crate::secret::Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(crate::secret::Secret::new)
    }
}

/// Reads, overrides and validates a config file.
pub fn load(path: &std::path::Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("(file)", format!("cannot read {}: {e}", path.display())))?;
    let env: Vec<(String, String)> = std::env::vars().collect();
    from_str_with_env(&text, &env)
}

/// A TOML syntax error with the line and the text it points at, so a duplicate or malformed
/// key is named (toml's bare message is only "duplicate key").
fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let Some(span) = e.span() else {
        return ConfigError::new("(syntax)", e.message().to_owned());
    };
    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
    let at = text.get(span.clone()).unwrap_or("").trim();
    // Quote the text only when it is a bare key: a value could be a URL with a password.
    let is_key = !at.is_empty()
        && at.len() <= 64
        && at
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    // On a `key = value` line, name the key's full path; else the text, when it is a bare key.
    let message = e.message().trim_end().to_owned();
    match location::key_at(text, span.start).filter(|k| k.line == line) {
        Some(k) => ConfigError {
            line: Some(line),
            ..ConfigError::new(&k.path, message)
        },
        None => ConfigError {
            line: Some(line),
            ..ConfigError::new(
                "(syntax)",
                if is_key {
                    format!("{message}, at `{at}`")
                } else {
                    message
                },
            )
        },
    }
}

/// The sections `WALRELAY_<SECTION>_<KEY>` may override.
const ENV_SECTIONS: [&str; 10] = [
    "POSTGRES", "RABBITMQ", "STREAM", "SERVICE", "FILTER", "FLOOD", "HTTP", "BACKFILL", "SNAPSHOT",
    "CONTROL",
];

/// `WALRELAY_*` variables that are not config overrides: the binary's own options and the
/// test and benchmark tools' settings.
const ENV_NOT_CONFIG: [&str; 7] = [
    "WALRELAY_CONFIG",
    "WALRELAY_LOG",
    "WALRELAY_LOG_FORMAT",
    "WALRELAY_FAILPOINT",
    "WALRELAY_BIN",
    "WALRELAY_PG_BIN",
    "WALRELAY_CHAOS_LONG",
];

/// The one reading of a log format name (`service.log_format`, `--log-format`): `Some(true)`
/// for JSON, `Some(false)` for text.
pub fn log_format_is_json(name: &str) -> Option<bool> {
    match name {
        "text" => Some(false),
        "json" => Some(true),
        _ => None,
    }
}

/// The effective configuration of a file, as TOML: the file with the environment's overrides
/// applied and every URL's password redacted. Keys it does not list take their defaults.
pub fn effective(path: &std::path::Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("(file)", format!("cannot read {}: {e}", path.display())))?;
    let env: Vec<(String, String)> = std::env::vars().collect();
    let (mut table, _) = merged(&text, &env)?;
    for (_, section) in table.iter_mut() {
        let Some(section) = section.as_table_mut() else {
            continue;
        };
        for (key, value) in section.iter_mut() {
            if let toml::Value::String(s) = value
                && (key.as_str() == "url" || key.as_str() == "management_url")
            {
                let redacted = redact_url(s.as_str());
                *value = toml::Value::String(redacted);
            }
        }
    }
    let body = toml::to_string(&table).unwrap_or_default();
    Ok(format!(
        "# effective configuration of {}: the file with environment overrides applied, passwords redacted;\n\
         # keys not listed take their defaults (docs/configuration.md)\n{body}",
        path.display()
    ))
}

/// A URL with its password replaced by `redacted` (unparsable: entirely redacted).
fn redact_url(s: &str) -> String {
    match url::Url::parse(s) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("redacted"));
            }
            u.to_string()
        }
        Err(_) => "<redacted>".to_owned(),
    }
}

/// Parses `text`, applies overrides from `env`, validates.
pub fn from_str_with_env(text: &str, env: &[(String, String)]) -> Result<Settings, ConfigError> {
    let (table, from_env) = merged(text, env)?;
    let raw = match RawConfig::deserialize(toml::Value::Table(table)) {
        Ok(raw) => raw,
        // Every override passed alone, so the file is what is wrong: find where.
        Err(e) => return Err(schema_error(text, e.message())),
    };
    validate::validate(raw).map_err(|mut e| {
        match from_env.iter().find(|(path, _)| *path == e.key) {
            Some((_, var)) => e.message = format!("from environment variable {var}: {}", e.message),
            None => e.line = location::line_of(text, &e.key),
        }
        e
    })
}

/// The file's table with the environment's overrides applied, and which keys they set (path,
/// variable). Each override is checked alone, so a wrong one names its variable.
fn merged(
    text: &str,
    env: &[(String, String)],
) -> Result<(toml::Table, Vec<(String, String)>), ConfigError> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| syntax_error(text, &e))?;
    // Keys set from the environment, with the variable that set them.
    let mut from_env: Vec<(String, String)> = Vec::new();
    for (name, value) in env {
        let (section, key) = match name.as_str() {
            "DATABASE_URL" => ("postgres".to_owned(), "url".to_owned()),
            "AMQP_URL" => ("rabbitmq".to_owned(), "url".to_owned()),
            other if !other.starts_with("WALRELAY_") || ENV_NOT_CONFIG.contains(&other) => continue,
            other => match other
                .strip_prefix("WALRELAY_")
                .and_then(|r| r.split_once('_'))
            {
                Some((s, k)) if ENV_SECTIONS.contains(&s) && !k.is_empty() => {
                    (s.to_lowercase(), k.to_lowercase())
                }
                _ => {
                    return Err(ConfigError::new(
                        other,
                        format!(
                            "unknown environment variable: walrelay reads WALRELAY_<SECTION>_<KEY> for the sections {} \
                             (e.g. WALRELAY_POSTGRES_SLOT), DATABASE_URL and AMQP_URL",
                            ENV_SECTIONS.join(", ")
                        ),
                    ));
                }
            },
        };
        let path = format!("{section}.{key}");
        let value = env_value(value);
        // Check the override alone, so a wrong type or key names the variable, not the file.
        let mut alone = toml::Table::new();
        let mut inner = toml::Table::new();
        inner.insert(key.clone(), value.clone());
        alone.insert(section.clone(), toml::Value::Table(inner));
        if let Err(e) = RawConfig::deserialize(toml::Value::Table(alone)) {
            return Err(ConfigError::new(
                &path,
                format!(
                    "from environment variable {name}: {}",
                    location::explain(e.message(), &path)
                ),
            ));
        }
        let section_table = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .ok_or_else(|| ConfigError::new(&section, "must be a table".into()))?;
        section_table.insert(key, value);
        from_env.push((path, name.clone()));
    }
    Ok((table, from_env))
}

/// A type or unknown-key error in the file, with the key's full path and line.
fn schema_error(text: &str, merged_message: &str) -> ConfigError {
    let Err(e) = toml::from_str::<RawConfig>(text) else {
        return ConfigError::new("(schema)", location::explain(merged_message, ""));
    };
    match e.span().and_then(|s| location::key_at(text, s.start)) {
        Some(at) => ConfigError {
            message: location::explain(e.message(), &at.path),
            key: at.path,
            line: Some(at.line),
        },
        None => ConfigError::new("(schema)", location::explain(e.message(), "")),
    }
}

/// An environment value as TOML: integers and booleans keep their type, lists are TOML arrays.
fn env_value(v: &str) -> toml::Value {
    if let Ok(i) = v.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    match v {
        "true" => return toml::Value::Boolean(true),
        "false" => return toml::Value::Boolean(false),
        _ => {}
    }
    if v.starts_with('[')
        && let Ok(t) = toml::from_str::<toml::Table>(&format!("v = {v}"))
        && let Some(val) = t.get("v")
    {
        return val.clone();
    }
    toml::Value::String(v.to_owned())
}

#[cfg(test)]
mod tests;
