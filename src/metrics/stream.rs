//! The stream sink's own metrics (`walrelay_stream_*`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The stream sink's metrics (`walrelay_stream_*`). Everything the publish loop measures
/// (events and bytes published, in flight, confirm latency, the confirmed LSN) is shared with
/// the AMQP sink and keeps its names; these are what only streams have.
#[derive(Default, Debug)]
pub struct StreamMetrics {
    /// Messages sent again with a publishing id the broker already stored for their producer:
    /// replays after a restart, which the broker drops (and confirms).
    pub replays: Counter,
    /// Deduplicating producers open.
    pub producers: Gauge,
}

impl StreamMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "stream_replays",
            "Messages re-sent with a publishing id the stream already holds (dropped by the broker as duplicates)",
            self.replays.clone(),
        );
        r.register(
            "stream_producers",
            "Deduplicating stream producers open",
            self.producers.clone(),
        );
    }
}
