//! What walrelay did to get past a stop by a rule an operator chose: resyncs after a broken
//! slot or a publication gap (`walrelay_resyncs_total{cause}`). Nothing is ever passed over
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

#[derive(Default, Debug)]
pub struct HealMetrics {
    /// Resyncs this process completed, by cause.
    pub resyncs: Family<Labels1, Counter>,
}

impl HealMetrics {
    pub fn register(&self, r: &mut Registry) {
        for cause in RESYNC_CAUSES {
            let _ = self.resyncs.get_or_create(&[("cause", cause)]);
        }
        r.register(
            "resyncs",
            "Resyncs after a broken slot or a publication gap: gap recorded, slot repaired, stream_gap announced, tables backfilled",
            self.resyncs.clone(),
        );
    }

    /// One resync done.
    pub fn resynced(&self, cause: &'static str) {
        self.resyncs.get_or_create(&[("cause", cause)]).inc();
    }
}
