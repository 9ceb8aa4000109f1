//! The `[filter]`, `[[filter.table]]` and `[flood]` sections: which tables, operations, columns
//! and rows are published, and what happens to bulk transactions. Validated into
//! [`FilterSettings`]; everything that can be checked without a database is checked here.

use serde::Deserialize;

use super::ConfigError;
use crate::event::routing::RoutingTemplate;
use crate::filter::glob::TablePattern;
use crate::filter::predicate::Predicate;
use crate::filter::{
    FilterSettings, FloodPolicy, FloodSettings, OnUnmatched, OpSet, Reroute, TableRule,
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilter {
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    pub skip_noop_updates: Option<bool>,
    pub on_unmatched: Option<String>,
    #[serde(default)]
    pub table: Vec<RawTableRule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTableRule {
    pub name: Option<String>,
    pub ops: Option<Vec<String>>,
    pub columns: Option<Vec<String>>,
    #[serde(default)]
    pub ignore: Vec<String>,
    #[serde(rename = "where")]
    pub where_: Option<String>,
    pub skip_noop_updates: Option<bool>,
    pub exchange: Option<String>,
    pub routing_key: Option<String>,
    pub partitions: Option<u32>,
    pub flood_policy: Option<String>,
    pub flood_then: Option<String>,
    pub max_changes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlood {
    pub max_changes: Option<u64>,
    pub max_changes_per_table: Option<u64>,
    pub marker_prefix: Option<String>,
    #[serde(default)]
    pub origins: Vec<String>,
    pub policy: Option<String>,
    pub reroute_exchange: Option<String>,
    pub reroute_routing_prefix: Option<String>,
    pub then: Option<String>,
}

/// Partitions are numbered 0..N-1 in routing keys; more than this is a typo, not a design.
pub(super) const MAX_PARTITIONS: u32 = 1024;

fn patterns(key: &str, list: &[String]) -> Result<Vec<TablePattern>, ConfigError> {
    list.iter()
        .map(|p| TablePattern::parse(p).map_err(|e| ConfigError::new(key, e)))
        .collect()
}

fn policy(key: &str, v: &str) -> Result<FloodPolicy, ConfigError> {
    Ok(match v {
        "publish" => FloodPolicy::Publish,
        "skip" => FloodPolicy::Skip,
        "summarize" => FloodPolicy::Summarize,
        "reroute" => FloodPolicy::Reroute,
        other => {
            return Err(ConfigError::new(
                key,
                format!(
                    "{other:?} is not one of \"publish\", \"skip\", \"summarize\", \"reroute\""
                ),
            ));
        }
    })
}

fn limit(key: &str, v: Option<u64>) -> Result<Option<u64>, ConfigError> {
    match v {
        Some(0) => Err(ConfigError::new(
            key,
            "must be at least 1 (leave it out to turn the limit off)".into(),
        )),
        other => Ok(other),
    }
}

pub(super) fn validate(raw: RawFilter, flood: RawFlood) -> Result<FilterSettings, ConfigError> {
    let include = patterns("filter.include", &raw.include)?;
    let exclude = patterns("filter.exclude", &raw.exclude)?;
    let rules = raw
        .table
        .into_iter()
        .enumerate()
        .map(|(i, t)| table_rule(i, t))
        .collect::<Result<Vec<_>, _>>()?;
    let flood = flood_settings(flood, &rules)?;
    // "warn" by default: a change of a table the configuration does not mention is then logged,
    // counted and shown by `status` (never silent), while a publication shared with other
    // subscribers, or a table added to a FOR ALL TABLES publication, does not halt every
    // other table's stream. "stop" is for deployments where any unplanned drop must halt.
    let on_unmatched = match raw.on_unmatched.as_deref() {
        None | Some("warn") => OnUnmatched::Warn,
        Some("stop") => OnUnmatched::Stop,
        Some(_) => {
            return Err(ConfigError::new(
                "filter.on_unmatched",
                "must be \"warn\" or \"stop\"".into(),
            ));
        }
    };
    Ok(FilterSettings {
        include,
        exclude,
        rules,
        skip_noop_updates: raw.skip_noop_updates.unwrap_or(false),
        on_unmatched,
        flood,
    })
}

/// One `[[filter.table]]` rule, its keys named `filter.table[i].<key>` in errors.
fn table_rule(i: usize, t: RawTableRule) -> Result<TableRule, ConfigError> {
    let at = |k: &str| format!("filter.table[{i}].{k}");
    let name = t
        .name
        .ok_or_else(|| ConfigError::new(&at("name"), "missing".into()))?;
    let pattern = TablePattern::parse(&name).map_err(|e| ConfigError::new(&at("name"), e))?;
    let ops = match &t.ops {
        None => OpSet::ALL,
        Some(list) => {
            let mut set = OpSet::NONE;
            for op in list {
                set = set.with(op).ok_or_else(|| {
                    ConfigError::new(
                        &at("ops"),
                        format!("{op:?} is not one of insert, update, delete, truncate"),
                    )
                })?;
            }
            if set == OpSet::NONE {
                return Err(ConfigError::new(
                    &at("ops"),
                    "is empty: exclude the table instead".into(),
                ));
            }
            set
        }
    };
    if let Some(cols) = &t.columns
        && let Some(c) = cols.iter().find(|c| t.ignore.contains(c))
    {
        return Err(ConfigError::new(
            &at("ignore"),
            format!("column {c:?} is both in columns and in ignore"),
        ));
    }
    let predicate = t
        .where_
        .as_deref()
        .map(|w| Predicate::compile(w).map_err(|e| ConfigError::new(&at("where"), e)))
        .transpose()?;
    let routing_key = t
        .routing_key
        .as_deref()
        .map(|r| {
            RoutingTemplate::parse(r)
                .map_err(|e| ConfigError::new(&at("routing_key"), e.to_string()))
        })
        .transpose()?;
    if let Some(p) = t.partitions
        && !(1..=MAX_PARTITIONS).contains(&p)
    {
        return Err(ConfigError::new(
            &at("partitions"),
            format!("must be between 1 and {MAX_PARTITIONS}"),
        ));
    }
    let uses_partition = routing_key
        .as_ref()
        .is_some_and(RoutingTemplate::uses_partition);
    if uses_partition && t.partitions.is_none() {
        return Err(ConfigError::new(
            &at("routing_key"),
            "uses {partition} but partitions is not set".into(),
        ));
    }
    Ok(TableRule {
        pattern,
        ops,
        columns: t.columns,
        ignore: t.ignore,
        predicate,
        skip_noop_updates: t.skip_noop_updates,
        exchange: t.exchange,
        routing_key,
        partitions: t.partitions,
        flood_policy: t
            .flood_policy
            .as_deref()
            .map(|p| policy(&at("flood_policy"), p))
            .transpose()?,
        flood_then: t
            .flood_then
            .as_deref()
            .map(|v| then(&at("flood_then"), v))
            .transpose()?,
        max_changes: limit(&at("max_changes"), t.max_changes)?,
    })
}

/// `flood.then` / a rule's `flood_then`: true for "backfill".
fn then(key: &str, v: &str) -> Result<bool, ConfigError> {
    match v {
        "nothing" => Ok(false),
        "backfill" => Ok(true),
        _ => Err(ConfigError::new(
            key,
            "must be \"nothing\" or \"backfill\"".into(),
        )),
    }
}

/// The `[flood]` section; the reroute policy (default or a table's) needs a destination.
fn flood_settings(flood: RawFlood, rules: &[TableRule]) -> Result<FloodSettings, ConfigError> {
    let default_policy = match flood.policy.as_deref() {
        None => FloodPolicy::Publish,
        Some(p) => policy("flood.policy", p)?,
    };
    let any_reroute = default_policy == FloodPolicy::Reroute
        || rules
            .iter()
            .any(|r| r.flood_policy == Some(FloodPolicy::Reroute));
    let reroute = match (flood.reroute_exchange, flood.reroute_routing_prefix) {
        (None, None) if any_reroute => {
            return Err(ConfigError::new(
                "flood.reroute_exchange",
                "the reroute policy needs flood.reroute_exchange or flood.reroute_routing_prefix"
                    .into(),
            ));
        }
        (None, None) => None,
        (exchange, prefix) => Some(Reroute {
            exchange,
            prefix: prefix.unwrap_or_default(),
        }),
    };
    if flood.marker_prefix.as_deref() == Some("") {
        return Err(ConfigError::new(
            "flood.marker_prefix",
            "must not be empty".into(),
        ));
    }
    Ok(FloodSettings {
        max_changes: limit("flood.max_changes", flood.max_changes)?,
        max_changes_per_table: limit("flood.max_changes_per_table", flood.max_changes_per_table)?,
        marker_prefix: flood.marker_prefix,
        origins: flood.origins,
        policy: default_policy,
        reroute,
        then_backfill: flood
            .then
            .as_deref()
            .map(|v| then("flood.then", v))
            .transpose()?
            .unwrap_or(false),
    })
}
