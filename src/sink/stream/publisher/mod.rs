//! `StreamPublisher`: publishes events to RabbitMQ Streams over the stream protocol, one
//! producer per (stream, deduplication sequence), and turns every publish confirm into a
//! [`Signal`] for the publish loop, which settles them in publish order exactly as it settles
//! AMQP confirms (`sink::confirms::ConfirmWindow`).
//!
//! Delivery tags: the AMQP channel numbers publishes 1, 2, 3…; this publisher does the same
//! over all its producers, so the window, the ack tracker and the LSN contract are shared
//! code. A confirm with an error status is `Signal::Refused` (the session ends, nothing after
//! it counts). A closed connection is `Signal::Lost`.
//!
//! Which producer: row changes, truncates and logical messages carry `<commit LSN>:<index>`
//! and go to the named producer of their [`Sequence`] with their publishing id, so the broker
//! drops a replay. Events walrelay derives (backfill reads, bulk summaries, control events)
//! have no place in that order and go to an unnamed producer: never dropped, possibly repeated
//! after a crash (their ids are stable for consumers to de-duplicate).
//!
//! Which stream: [`super::destinations`]. Producers are publishers on the connection to their
//! stream's leader ([`StreamLink`], which also frames the publishes), so a stream's messages
//! reach the broker in publish order whichever producer sends them.

mod producers;

use std::collections::HashMap;
use std::sync::Arc;

use rabbitmq_stream_client::Client;
use tokio::sync::{mpsc, watch};
use tracing::info;

use super::StreamSettings;
use super::amqp10;
use super::creation::{ensure_stream, super_stream};
use super::destinations::Destinations;
use super::frame::PublishFrame;
use super::link::StreamLink;
use super::publishing_id::{Origin, Sequence, publishing_id};
use crate::event::{Event, Op};
use crate::sink::{BrokerState, Signal, SinkError};

/// Which producer a message goes to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProducerKey {
    pub stream: Arc<str>,
    /// `None`: the unnamed producer (no deduplication).
    pub sequence: Option<Sequence>,
}

/// A producer: a publisher on the connection to its stream's leader.
struct Producer {
    /// The leader's address: the key of its link.
    leader: (String, u16),
    publisher: u8,
    /// Named: the highest id the broker stored for the name when the producer opened (a
    /// message at or below it is a replay the broker drops). Unnamed: 0.
    stored: u64,
    /// Unnamed: the last publishing id used (ids only match confirms to messages).
    last_id: u64,
}

/// The publishing side of one session on the stream protocol.
pub struct StreamPublisher {
    /// For queries that are not publishing (metadata, the last stored id of a name).
    admin: Client,
    /// The URL the links' connections take their credentials and TLS from.
    url: crate::sink::AmqpUrl,
    /// Publishing connections go through the URL's address (`stream.load_balancer`).
    load_balancer: bool,
    origin: Option<Origin>,
    producers: Vec<Producer>,
    /// Where each producer is in `producers`.
    by_key: HashMap<ProducerKey, usize>,
    /// The producer of the last message: consecutive messages almost always share one, and
    /// hashing the key (a stream name and a sequence) for each was measurable.
    last: Option<(ProducerKey, usize)>,
    /// One connection per leader node.
    links: HashMap<(String, u16), StreamLink>,
    /// The streams (and super stream partitions) and the producers last used on them.
    destinations: Destinations,
    next_tag: u64,
    signals_tx: mpsc::UnboundedSender<Signal>,
    /// Tags published as several copies, shared with every link's handler.
    fan_out: super::link::FanOut,
    signals: mpsc::UnboundedReceiver<Signal>,
    state: Arc<watch::Sender<BrokerState>>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// The last commit LSN a message carried, and its text (an application property of
    /// every message; the same for every message of a transaction).
    lsn_text: (crate::lsn::Lsn, String),
}

impl StreamPublisher {
    /// Connects (the environment checks the credentials) and creates the streams that do not
    /// exist when `create` is on, with the configured retention.
    pub async fn connect(
        settings: &crate::sink::SinkSettings,
        stream: &StreamSettings,
    ) -> Result<StreamPublisher, SinkError> {
        let start = settings
            .node_in_use
            .load(std::sync::atomic::Ordering::Relaxed);
        let (admin, node) = super::connect::admin_any(&stream.nodes, start, "walrelay").await?;
        if node != start && stream.nodes.len() > 1 {
            tracing::warn!(node = %format!("{}:{}", stream.nodes[node].host, stream.nodes[node].port),
                "querying the stream metadata through another RabbitMQ node");
        }
        settings
            .node_in_use
            .store(node, std::sync::atomic::Ordering::Relaxed);
        if let Some(version) = admin.server_properties().await.get("version") {
            info!(rabbitmq = %version, "connected to RabbitMQ over the stream protocol");
        }
        let partitions = match stream.partitions {
            Some(n) => super_stream(&admin, &settings.exchange, n, stream).await?,
            None => {
                ensure_stream(&admin, &settings.exchange, stream).await?;
                Vec::new()
            }
        };
        for name in settings
            .extra_exchanges
            .iter()
            .filter(|x| **x != settings.exchange)
        {
            ensure_stream(&admin, name, stream).await?;
        }
        let destinations = Destinations::new(&settings.exchange, partitions);
        let mut publisher = Self::with(admin, stream, destinations);
        // Credentials and TLS are the same on every node; through a load balancer, publishing
        // connections go to the node that answered.
        publisher.url = stream.nodes[node].clone();
        Ok(publisher)
    }

    fn with(admin: Client, stream: &StreamSettings, destinations: Destinations) -> Self {
        let (signals_tx, signals) = mpsc::unbounded_channel();
        let (state, _) = watch::channel(BrokerState {
            open: true,
            blocked: false,
        });
        StreamPublisher {
            admin,
            url: stream.url.clone(),
            load_balancer: stream.load_balancer,
            origin: None,
            producers: Vec::new(),
            by_key: HashMap::new(),
            last: None,
            links: HashMap::new(),
            destinations,
            next_tag: 1,
            signals_tx,
            fan_out: Arc::default(),
            signals,
            state: Arc::new(state),
            metrics: None,
            lsn_text: (crate::lsn::Lsn::ZERO, "0/0".to_owned()),
        }
    }

    /// Who publishes (slot, system id, timeline): part of every producer name. Set once the
    /// replication connection has identified the server, before the first publish.
    pub fn set_origin(&mut self, origin: Origin, metrics: Arc<crate::metrics::Metrics>) {
        self.origin = Some(origin);
        self.metrics = Some(metrics);
    }

    /// The default stream's (or super stream's) name.
    pub fn stream(&self) -> &str {
        self.destinations.default_name()
    }

    /// The producer (and publishing id) of `event`.
    pub fn route(&self, event: &Event) -> (ProducerKey, Option<u64>) {
        let stream = self.destinations.stream_of(event);
        match change_index(event) {
            Some(index) => {
                let pid = publishing_id(event.commit_lsn, index);
                let key = ProducerKey {
                    stream,
                    sequence: Some(pid.sequence),
                };
                (key, Some(pid.id))
            }
            None => (
                ProducerKey {
                    stream,
                    sequence: None,
                },
                None,
            ),
        }
    }

    /// Adds a message of `count` events to the frame of its producer's link; its confirm
    /// arrives as a signal with the next delivery tag. The frame is sent when full, when the
    /// link's next message is another producer's, or by [`Self::flush`].
    ///
    /// A truncate of a super stream goes to every partition under that one tag, acked once
    /// every copy is; each copy goes to its partition's producer with the event's publishing
    /// id, so replays are dropped there too.
    pub async fn publish_message(
        &mut self,
        event: &Event,
        body: Vec<u8>,
        count: usize,
    ) -> Result<(), SinkError> {
        let (key, id) = self.route(event);
        let tag = self.next_tag;
        match self.destinations.fan_out(event).map(<[_]>::to_vec) {
            None => self.push(key, id, tag, event, &body, count).await?,
            Some(partitions) => {
                self.fan_out
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(tag, partitions.len());
                for stream in partitions {
                    let key = ProducerKey {
                        stream,
                        sequence: key.sequence.clone(),
                    };
                    self.push(key, id, tag, event, &body, count).await?;
                }
            }
        }
        self.next_tag += 1;
        Ok(())
    }

    /// Adds the message of `event` to the frame of `key`'s producer (opened when missing) as
    /// delivery tag `tag`, with publishing id `id` (named producers) or the producer's next.
    async fn push(
        &mut self,
        key: ProducerKey,
        id: Option<u64>,
        tag: u64,
        event: &Event,
        body: &[u8],
        count: usize,
    ) -> Result<(), SinkError> {
        let at = match &self.last {
            Some((last, at)) if *last == key => *at,
            _ => {
                let at = match self.by_key.get(&key) {
                    Some(&at) => at,
                    None => {
                        let producer = self.open_producer(&key).await?;
                        self.producers.push(producer);
                        self.by_key.insert(key.clone(), self.producers.len() - 1);
                        self.producers.len() - 1
                    }
                };
                self.last = Some((key, at));
                at
            }
        };
        let producer = &mut self.producers[at];
        let id = match id {
            Some(id) => {
                if id <= producer.stored
                    && let Some(m) = &self.metrics
                {
                    m.stream.replays.inc();
                }
                id
            }
            None => {
                producer.last_id += 1;
                producer.last_id
            }
        };
        if self.lsn_text.0 != event.commit_lsn {
            self.lsn_text.1.clear();
            event.commit_lsn.push_to(&mut self.lsn_text.1);
            self.lsn_text.0 = event.commit_lsn;
        }
        let link = self
            .links
            .get_mut(&producer.leader)
            .expect("a producer's link is opened with it");
        let batch = u32::try_from(count).unwrap_or(u32::MAX);
        let props = application_properties(event, &self.lsn_text.1, batch);
        let fields = amqp10::Fields {
            message_id: &event.id,
            content_type: "application/json",
            creation_time_ms: event
                .commit_time_us
                .map(|t| crate::event::time::pg_to_unix_us(t).div_euclid(1000)),
            application_properties: if count > 1 { &props } else { &props[..5] },
        };
        let size = PublishFrame::entry_len(&fields, body.len());
        if size > link.budget() {
            return Err(SinkError::OverFrame {
                id: event.id.clone(),
                table: format!("{}.{}", event.schema, event.table),
                size,
                max: link.budget(),
            });
        }
        link.push(producer.publisher, id, tag, (&fields, body), size)
            .await
    }

    /// True when a frame waits to be sent.
    pub fn has_pending(&self) -> bool {
        self.links.values().any(StreamLink::has_pending)
    }

    /// Sends every frame being filled.
    pub async fn flush(&mut self) -> Result<(), SinkError> {
        for link in self.links.values_mut() {
            link.flush().await?;
        }
        Ok(())
    }

    /// The next answer of the broker.
    pub async fn answer(&mut self) -> Signal {
        self.signals.recv().await.unwrap_or(Signal::Lost)
    }

    /// The next answer if one has arrived already.
    pub fn try_answer(&mut self) -> Option<Signal> {
        crate::sink::try_signal(&mut self.signals)
    }

    /// A live view of the connection's state (open).
    pub fn state(&self) -> watch::Receiver<BrokerState> {
        self.state.subscribe()
    }

    /// Closes the connections (best effort, bounded).
    pub async fn close(self) {
        let closing = async {
            for (_, link) in self.links {
                link.close().await;
            }
            let _ = self.admin.close().await;
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), closing).await;
        if let Some(m) = &self.metrics {
            m.stream.producers.set(0);
        }
    }
}

/// The index of a change in its transaction (`<commit LSN>:<index>`, or `…+<count>` for a
/// batch, whose first event's index it is); `None` for events walrelay derives.
fn change_index(event: &Event) -> Option<u64> {
    match event.op {
        Op::Insert | Op::Update | Op::Delete | Op::Truncate | Op::Message => {}
        Op::Bulk | Op::Read | Op::Control => return None,
    }
    let first = event.id.split('+').next()?;
    let (lsn, index) = first.rsplit_once(':')?;
    // Parsed, not formatted: this runs for every event.
    (lsn.parse::<crate::lsn::Lsn>().ok()? == event.commit_lsn)
        .then(|| index.parse().ok())
        .flatten()
}

/// The application properties of an event's message, mirroring the AMQP sink's headers
/// (and its routing key); the sixth, `batch` (events in a batch message), is sent only when
/// the message holds more than one. `commit_lsn` is the text of `event.commit_lsn`.
fn application_properties<'a>(
    event: &'a Event,
    commit_lsn: &'a str,
    batch: u32,
) -> [(&'static str, amqp10::Value<'a>); 6] {
    use amqp10::Value::{Str, Uint};
    [
        ("op", Str(event.op.as_str())),
        ("schema", Str(&event.schema)),
        ("table", Str(&event.table)),
        ("commit_lsn", Str(commit_lsn)),
        ("routing_key", Str(&event.routing_key)),
        ("batch", Uint(batch)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;

    fn event(op: Op, id: &str, lsn: u64) -> Event {
        Event {
            id: id.to_owned(),
            op,
            schema: "public".into(),
            table: "t".into(),
            commit_lsn: Lsn(lsn),
            commit_time_us: None,
            routing_key: "public.t.insert".into(),
            key_hash: None,
            exchange: None,
            metric_table: Arc::from("t"),
            body: Vec::new(),
        }
    }

    #[test]
    fn changes_have_an_index_and_derived_events_none() {
        let lsn = Lsn(0x16B374D48);
        let id = |rest: &str| format!("{lsn}{rest}");
        assert_eq!(change_index(&event(Op::Insert, &id(":7"), lsn.0)), Some(7));
        assert_eq!(
            change_index(&event(Op::Update, &id(":7+12"), lsn.0)),
            Some(7)
        );
        assert_eq!(change_index(&event(Op::Message, &id(":0"), lsn.0)), Some(0));
        // A row change whose id is not its own LSN's is not trusted with deduplication.
        assert_eq!(change_index(&event(Op::Insert, "0/10:7", lsn.0)), None);
        for op in [Op::Bulk, Op::Read, Op::Control] {
            assert_eq!(change_index(&event(op, &id(":3"), lsn.0)), None);
        }
    }
}
