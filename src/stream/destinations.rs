//! Where the stream sink sends an event: the default stream, another stream a table rule or
//! the flood reroute names, or — with `stream.partitions` — the partition of a super stream
//! that the event's key hash picks (the same hash as `{partition}` in routing keys, so a key
//! stays in one partition and consumers keep per-key order with one active consumer per
//! partition).
//!
//! Order across producers: every producer has a connection of its own, so two producers'
//! messages can reach the broker in either order. Within one stream that would break the
//! order, so a message may go to another producer of the *same* stream only once everything
//! before it is confirmed. The partitions of a super stream are separate streams: a message
//! moving from one partition to another needs no wait (the per-key order lives inside each
//! partition), which is what lets a super stream publish at full speed with keys spread
//! over all partitions. Between other streams (a reroute, a table's own stream) walrelay
//! keeps the conservative rule and waits.

use std::collections::HashMap;
use std::sync::Arc;

use rabbitmq_stream_client::types::ResponseCode;
use rabbitmq_stream_client::{Client, Environment};
use tracing::info;

use super::publisher::ProducerKey;
use super::{StreamSettings, failed};
use crate::event::Event;
use crate::event::routing::partition_by_hash;
use crate::sink::SinkError;

/// The streams of one session and the last producer used on each partition.
pub struct Destinations {
    /// The default stream, or the super stream's name.
    default: Arc<str>,
    /// The super stream's partition streams in binding order (empty without a super stream):
    /// partition `i` is `partitions[i]`.
    partitions: Vec<Arc<str>>,
    /// The producer of the last message sent to each partition stream.
    on_partition: HashMap<Arc<str>, ProducerKey>,
    /// The producer of the last message sent.
    last: Option<ProducerKey>,
}

impl Destinations {
    pub fn new(default: &str, partitions: Vec<String>) -> Destinations {
        Destinations {
            default: Arc::from(default),
            partitions: partitions.into_iter().map(Arc::from).collect(),
            on_partition: HashMap::new(),
            last: None,
        }
    }

    /// The default stream (or super stream) name.
    pub fn default_name(&self) -> &str {
        &self.default
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

    /// True when a message for producer `key` must wait until every earlier message is
    /// confirmed (see the module's note on order).
    pub fn must_wait(&self, key: &ProducerKey) -> bool {
        let Some(last) = &self.last else {
            return false;
        };
        if last == key {
            return false;
        }
        if self.is_partition(&key.stream) && self.is_partition(&last.stream) {
            return self
                .on_partition
                .get(&key.stream)
                .is_some_and(|prev| prev != key);
        }
        true
    }

    /// Records that a message went to `key`.
    pub fn sent(&mut self, key: &ProducerKey) {
        if self.is_partition(&key.stream) && self.on_partition.get(&key.stream) != Some(key) {
            self.on_partition
                .insert(Arc::clone(&key.stream), key.clone());
        }
        if self.last.as_ref() != Some(key) {
            self.last = Some(key.clone());
        }
    }

    fn is_partition(&self, stream: &Arc<str>) -> bool {
        // Partition counts are small; a scan beats hashing a name.
        self.partitions
            .iter()
            .any(|p| Arc::ptr_eq(p, stream) || p == stream)
    }
}

/// The partition streams of super stream `name`, creating it with `n` partitions when it is
/// missing and `create` is on. An existing super stream must have exactly `n` partitions:
/// another count would send keys to other partitions than before.
pub async fn super_stream(
    env: &Environment,
    admin: &Client,
    name: &str,
    n: u32,
    s: &StreamSettings,
) -> Result<Vec<String>, SinkError> {
    let found = admin
        .partitions(name.to_owned())
        .await
        .map_err(|e| failed("reading the super stream's partitions", e))?;
    let streams = if found.is_ok() && !found.streams.is_empty() {
        found.streams
    } else if !s.create {
        return Err(failed(
            "checking the super stream",
            format!("super stream {name:?} does not exist and stream.create is off"),
        ));
    } else {
        let mut creator = env.stream_creator();
        creator = super::publisher::with_retention(creator, s);
        match creator.create_super_stream(name, n as usize, None).await {
            Ok(()) => info!(
                super_stream = name,
                partitions = n,
                "created the super stream"
            ),
            Err(rabbitmq_stream_client::error::StreamCreateError::Create {
                status: ResponseCode::StreamAlreadyExists,
                ..
            }) => {}
            Err(e) => return Err(failed("creating the super stream", e)),
        }
        let again = admin
            .partitions(name.to_owned())
            .await
            .map_err(|e| failed("reading the super stream's partitions", e))?;
        again.streams
    };
    if streams.len() != n as usize {
        return Err(SinkError::Layout(format!(
            "super stream {name:?} has {} partitions but stream.partitions = {n}; a different count would move keys to other partitions and break their order (create a new super stream to change it)",
            streams.len()
        )));
    }
    Ok(streams)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::publishing_id::Sequence;

    fn key(stream: &str, sequence: Option<Sequence>) -> ProducerKey {
        ProducerKey {
            stream: Arc::from(stream),
            sequence,
        }
    }

    #[test]
    fn moving_between_partitions_never_waits_but_switching_producers_in_one_does() {
        let mut d = Destinations::new("orders", vec!["orders-0".into(), "orders-1".into()]);
        let named = || Some(Sequence::Epoch(0));
        assert!(!d.must_wait(&key("orders-0", named())));
        d.sent(&key("orders-0", named()));
        // Another partition, same producer name: no wait.
        assert!(!d.must_wait(&key("orders-1", named())));
        d.sent(&key("orders-1", named()));
        assert!(!d.must_wait(&key("orders-0", named())));
        // Another producer on a partition already written by a different one: wait.
        assert!(d.must_wait(&key("orders-0", None)));
        assert!(d.must_wait(&key("orders-1", Some(Sequence::Epoch(1)))));
        // A stream outside the super stream: wait.
        assert!(d.must_wait(&key("audit", named())));
    }

    #[test]
    fn a_plain_stream_waits_on_every_producer_change() {
        let mut d = Destinations::new("walrelay", Vec::new());
        let named = || Some(Sequence::Epoch(0));
        d.sent(&key("walrelay", named()));
        assert!(!d.must_wait(&key("walrelay", named())));
        assert!(d.must_wait(&key("walrelay", None)));
        assert!(d.must_wait(&key("other", named())));
    }
}
