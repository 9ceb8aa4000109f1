//! The initial snapshot (`[snapshot]`): when the slot does not exist yet, a backfill of each
//! published table the setting names is recorded before the slot is created, so a crash in
//! between cannot lose the snapshot (recorded requests are never duplicated while active).

use tracing::info;

use crate::config::Settings;
use crate::error::RunError;
use crate::source::{Connection, publication};

/// The initial snapshot: when the slot does not exist yet, record a backfill of each published
/// table `snapshot.tables` names, before the slot is created (so a crash in between cannot
/// lose the snapshot; recorded requests are never duplicated while active).
pub(super) async fn request(conn: &mut Connection, settings: &Settings) -> Result<(), RunError> {
    let slot = &settings.source.slot;
    let exists = !conn
        .simple_query(&format!(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = {}",
            crate::source::setup::quote_literal(slot)
        ))
        .await?
        .is_empty();
    if exists {
        return Ok(());
    }
    let mut tables: Vec<crate::source::setup::TableName> = Vec::new();
    for p in publication::published_relations(conn, &settings.source.publication).await? {
        let t = crate::event::TableIdentity::resolve(&p.rel, p.facts.as_ref());
        let name = crate::source::setup::TableName {
            schema: t.schema,
            name: t.name,
        };
        if settings
            .backfill
            .snapshot
            .iter()
            .any(|pat| pat.matches(&name.schema, &name.name))
            && settings.filter.included(&name.schema, &name.name)
            && !tables.contains(&name)
        {
            tables.push(name);
        }
    }
    let schema = &settings.backfill.schema;
    crate::backfill::store::ensure(conn, schema).await?;
    crate::backfill::store::request_snapshot(conn, schema, slot, &tables).await?;
    info!(
        tables = tables.len(),
        "initial snapshot requested: the slot is new"
    );
    Ok(())
}
