//! Which tables a resync backfills: the published tables the filter includes (and the
//! command's patterns name), each with a key. A table without one could be neither read in
//! key order nor matched with its changes, so its consumers could not be brought back: the
//! resync is refused, naming it, before anything is recorded.

use super::ResyncError;
use crate::config::Settings;
use crate::event::TableIdentity;
use crate::filter::glob::TablePattern;
use crate::source::setup::TableName;
use crate::source::{Connection, publication};

pub(super) async fn affected(
    c: &mut Connection,
    settings: &Settings,
    patterns: &[TablePattern],
) -> Result<Vec<TableName>, ResyncError> {
    let mut tables: Vec<TableName> = Vec::new();
    let mut keyless: Vec<String> = Vec::new();
    for p in publication::published_relations(c, &settings.source.publication).await? {
        let t = TableIdentity::resolve(&p.rel, p.facts.as_ref());
        let name = TableName {
            schema: t.schema.clone(),
            name: t.name.clone(),
        };
        if !settings.filter.included(&name.schema, &name.name)
            || (!patterns.is_empty()
                && !patterns.iter().any(|p| p.matches(&name.schema, &name.name)))
            || tables.contains(&name)
        {
            continue;
        }
        if t.key.is_none() {
            keyless.push(name.to_string());
            continue;
        }
        tables.push(name);
    }
    if !keyless.is_empty() {
        keyless.dedup();
        return Err(ResyncError::Refused(format!(
            "a resync backfills every table it covers, and {} {} no primary key or unique NOT NULL index among its published columns, \
             so its consumers could not be brought back: add a key, leave it out of filter.include, or name the other tables \
             to `walrelay resync` (postgres.on_slot_lost = \"resync\" covers every published table)",
            keyless.join(", "),
            if keyless.len() == 1 { "has" } else { "have" }
        )));
    }
    if tables.is_empty() {
        return Err(ResyncError::Refused(
            "no published table matches: nothing could be backfilled".into(),
        ));
    }
    let missing =
        crate::backfill::privileges::missing(c, &settings.backfill.schema, &tables).await?;
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(ToString::to_string).collect();
        return Err(ResyncError::Refused(format!(
            "walrelay's role ({}) cannot backfill what a resync covers: {}",
            settings.source.conn.user,
            list.join("; ")
        )));
    }
    Ok(tables)
}
