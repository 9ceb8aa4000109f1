//! Where the stream sink sends an event: the default stream, another stream a table rule or
//! the flood reroute names, or — with `stream.partitions` — the partition of a super stream
//! that the event's key hash picks (the same hash as `{partition}` in routing keys, so a key
//! stays in one partition and consumers keep per-key order with one active consumer per
//! partition).
//!
//! Order: all producers of one stream publish on the connection to its leader
//! (`super::link`), so the broker gets a stream's messages in publish order; the partitions of
//! a super stream are separate streams, each with its own order (per key).

use std::sync::Arc;

use crate::event::Event;
use crate::event::routing::partition_by_hash;

/// The streams of one session.
pub struct Destinations {
    /// The default stream, or the super stream's name.
    default: Arc<str>,
    /// The super stream's partition streams in binding order (empty without a super stream):
    /// partition `i` is `partitions[i]`.
    partitions: Vec<Arc<str>>,
}

impl Destinations {
    pub fn new(default: &str, partitions: Vec<String>) -> Destinations {
        Destinations {
            default: Arc::from(default),
            partitions: partitions.into_iter().map(Arc::from).collect(),
        }
    }

    /// The default stream (or super stream) name.
    pub fn default_name(&self) -> &str {
        &self.default
    }

    /// The partitions a truncate of the default destination goes to: all of them, so the
    /// consumer of every partition learns that its rows are gone. `None`: one stream.
    pub fn fan_out(&self, event: &Event) -> Option<&[Arc<str>]> {
        let default = event
            .exchange
            .as_deref()
            .is_none_or(|x| x == &*self.default);
        (event.op == crate::event::Op::Truncate && default && !self.partitions.is_empty())
            .then_some(self.partitions.as_slice())
    }

    /// The stream `event` goes to. An exchange naming the super stream itself means the
    /// default destination, partitioned.
    pub fn stream_of(&self, event: &Event) -> Arc<str> {
        match &event.exchange {
            Some(x) if **x != *self.default => Arc::clone(x),
            _ if self.partitions.is_empty() => Arc::clone(&self.default),
            _ => {
                let n = self.partitions.len() as u32;
                let p = event.key_hash.map_or(0, |h| partition_by_hash(h, n));
                Arc::clone(&self.partitions[p as usize])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Op;
    use crate::lsn::Lsn;

    fn event(exchange: Option<&str>, key_hash: Option<u64>) -> Event {
        Event {
            id: "0/10:0".into(),
            op: Op::Insert,
            schema: "public".into(),
            table: "t".into(),
            commit_lsn: Lsn(0x10),
            commit_time_us: None,
            routing_key: "public.t.insert".into(),
            key_hash,
            exchange: exchange.map(Arc::from),
            metric_table: Arc::from("t"),
            body: Vec::new(),
        }
    }

    #[test]
    fn keys_pick_partitions_and_other_streams_stay_plain() {
        let d = Destinations::new("orders", (0..3).map(|i| format!("orders-{i}")).collect());
        assert_eq!(&*d.stream_of(&event(None, Some(7))), "orders-1");
        assert_eq!(&*d.stream_of(&event(None, Some(9))), "orders-0");
        // No key (truncates, summaries, messages): partition 0.
        assert_eq!(&*d.stream_of(&event(None, None)), "orders-0");
        // The super stream named as an exchange is the partitioned default.
        assert_eq!(&*d.stream_of(&event(Some("orders"), Some(8))), "orders-2");
        assert_eq!(&*d.stream_of(&event(Some("audit"), Some(8))), "audit");
        let plain = Destinations::new("walrelay", Vec::new());
        assert_eq!(&*plain.stream_of(&event(None, Some(8))), "walrelay");
    }

    #[test]
    fn truncates_of_the_super_stream_go_to_every_partition() {
        let d = Destinations::new("orders", (0..3).map(|i| format!("orders-{i}")).collect());
        let mut t = event(None, None);
        t.op = Op::Truncate;
        assert_eq!(d.fan_out(&t).map(<[_]>::len), Some(3));
        assert!(
            d.fan_out(&event(None, Some(1))).is_none(),
            "a row change: one partition"
        );
        t.exchange = Some(Arc::from("audit"));
        assert!(d.fan_out(&t).is_none(), "another stream: one copy");
        t.exchange = None;
        assert!(
            Destinations::new("walrelay", Vec::new())
                .fan_out(&t)
                .is_none()
        );
    }
}
