//! What walrelay did to get past a stop by a rule an operator chose: resyncs after a broken
//! slot or a publication gap (`walrelay_resyncs_total{cause}`), and events set aside
//! (`walrelay_events_dead_lettered_total{reason,table}`). Nothing is ever passed over
//! without a rule and a count.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::Labels1;

/// The causes a resync records (`source::error::Broken` and the publication gap).
pub const RESYNC_CAUSES: [&str; 4] = [
    "slot_dropped",
    "slot_invalidated",
    "slot_moved",
    "publication_gap",
];

/// `reason` and `table` (the table label is shared with the other per-table metrics).
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ReasonTable {
    pub reason: &'static str,
    pub table: std::sync::Arc<str>,
}

#[derive(Default, Debug)]
pub struct HealMetrics {
    /// Resyncs this process completed, by cause.
    pub resyncs: Family<Labels1, Counter>,
    /// Events set aside, broker-confirmed: `oversized` (replaced by a claim check) and
    /// `unroutable` (published to the dead-letter exchange), by table.
    pub dead_lettered: Family<ReasonTable, Counter>,
}

impl HealMetrics {
    pub fn register(&self, r: &mut Registry) {
        for cause in RESYNC_CAUSES {
            let _ = self.resyncs.get_or_create(&[("cause", cause)]);
        }
        // Present (at 0) before the first event is set aside, so alert rules and dashboards
        // find the series; `other` is the label of every table the configuration does not name.
        for reason in ["oversized", "unroutable"] {
            let _ = self.dead_lettered.get_or_create(&ReasonTable {
                reason,
                table: std::sync::Arc::from("other"),
            });
        }
        r.register(
            "resyncs",
            "Resyncs after a broken slot or a publication gap: gap recorded, slot repaired, stream_gap announced, tables backfilled",
            self.resyncs.clone(),
        );
        r.register(
            "events_dead_lettered",
            "Events set aside by rabbitmq.on_oversized / on_unroutable = \"dead_letter\" (a claim check in place, or a copy to the dead-letter exchange), by reason and table",
            self.dead_lettered.clone(),
        );
    }

    /// One event set aside and confirmed.
    pub fn dead_lettered(&self, reason: &'static str, table: &std::sync::Arc<str>) {
        self.dead_lettered
            .get_or_create(&ReasonTable {
                reason,
                table: std::sync::Arc::clone(table),
            })
            .inc();
    }

    /// One resync done.
    pub fn resynced(&self, cause: &'static str) {
        self.resyncs.get_or_create(&[("cause", cause)]).inc();
    }
}
