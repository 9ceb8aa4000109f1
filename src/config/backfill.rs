//! The `[backfill]`, `[snapshot]` and `[control]` sections: how backfills run, which tables
//! the initial snapshot covers, and the control events that announce them.

use serde::Deserialize;

use super::ConfigError;
use crate::backfill::BackfillSettings;
use crate::filter::glob::TablePattern;

/// Rows per chunk: large enough that the two watermarks and the confirm wait are a small
/// share of a chunk's time, small enough that a chunk is a few MiB in memory.
pub(super) const DEFAULT_CHUNK_ROWS: usize = 5_000;
pub(super) const DEFAULT_POLL_INTERVAL_MS: u64 = 1_000;
pub(super) const DEFAULT_SCHEMA: &str = "walrelay";
pub(super) const DEFAULT_CONTROL_PREFIX: &str = "_walrelay.control";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackfill {
    pub chunk_rows: Option<usize>,
    pub rows_per_second: Option<u64>,
    pub poll_interval_ms: Option<u64>,
    pub schema: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSnapshot {
    #[serde(default)]
    pub tables: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawControl {
    pub events: Option<bool>,
    pub schema_events: Option<bool>,
    pub routing_prefix: Option<String>,
}

pub(super) fn validate(
    raw: RawBackfill,
    snapshot: RawSnapshot,
    control: RawControl,
) -> Result<BackfillSettings, ConfigError> {
    let chunk_rows = raw.chunk_rows.unwrap_or(DEFAULT_CHUNK_ROWS);
    if !(1..=1_000_000).contains(&chunk_rows) {
        return Err(ConfigError::new(
            "backfill.chunk_rows",
            "must be between 1 and 1000000".into(),
        ));
    }
    let poll = raw.poll_interval_ms.unwrap_or(DEFAULT_POLL_INTERVAL_MS);
    if poll == 0 {
        return Err(ConfigError::new(
            "backfill.poll_interval_ms",
            "must be greater than 0".into(),
        ));
    }
    let schema = raw.schema.unwrap_or_else(|| DEFAULT_SCHEMA.to_owned());
    if schema.is_empty() || schema.len() > 63 {
        return Err(ConfigError::new(
            "backfill.schema",
            "must be 1 to 63 characters".into(),
        ));
    }
    let snapshot = snapshot
        .tables
        .iter()
        .map(|t| TablePattern::parse(t).map_err(|e| ConfigError::new("snapshot.tables", e)))
        .collect::<Result<Vec<_>, _>>()?;
    let control_prefix = control
        .routing_prefix
        .unwrap_or_else(|| DEFAULT_CONTROL_PREFIX.to_owned());
    if control_prefix.is_empty() || control_prefix.len() > 200 {
        return Err(ConfigError::new(
            "control.routing_prefix",
            "must be 1 to 200 characters".into(),
        ));
    }
    Ok(BackfillSettings {
        chunk_rows,
        rows_per_second: raw.rows_per_second.filter(|r| *r > 0),
        poll_interval: std::time::Duration::from_millis(poll),
        schema,
        snapshot,
        control_events: control.events.unwrap_or(true),
        schema_events: control.schema_events.unwrap_or(false),
        control_prefix,
    })
}

/// The pattern that keeps walrelay's own progress table out of every publication and event.
pub(super) fn internal_exclude(schema: &str) -> TablePattern {
    TablePattern::parse(&format!("\"{}\".*", schema.replace('"', "\"\"")))
        .expect("a quoted schema and * always parse")
}
