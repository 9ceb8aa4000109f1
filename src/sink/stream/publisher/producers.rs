//! Opening the stream sink's producers: a publisher on the connection to its stream's leader,
//! the connection opened when missing (behind a load balancer or a port mapping: tried until
//! one lands on the leader), named after the origin and sequence so the broker deduplicates,
//! or unnamed for derived events.

use std::sync::Arc;

use rabbitmq_stream_client::types::ResponseCode;
use tracing::debug;

use super::{Producer, ProducerKey, StreamPublisher};
use crate::sink::SinkError;
use crate::sink::stream::failed;
use crate::sink::stream::link::{Routes, StreamLink};
use crate::sink::stream::publishing_id::producer_name;

/// Connections through a load balancer tried before giving up on reaching a stream's leader
/// (each lands on a node the balancer picks; with five nodes picked at random, thirty
/// attempts all miss the leader about once in 800 sessions, and the next session tries again).
const LOAD_BALANCER_ATTEMPTS: usize = 30;

impl StreamPublisher {
    /// Opens the producer of `key`: a publisher on the connection to its stream's leader
    /// (opened when missing), named after the origin and sequence or unnamed.
    pub(super) async fn open_producer(&mut self, key: &ProducerKey) -> Result<Producer, SinkError> {
        let leader = self.leader_of(&key.stream).await?;
        if !self.links.contains_key(&leader) {
            let link = self.open_link(&key.stream, &leader).await?;
            self.links.insert(leader.clone(), link);
        }
        let name = match &key.sequence {
            None => None,
            Some(sequence) => {
                let origin = self.origin.as_ref().ok_or_else(|| {
                    failed("opening a producer", "the server is not identified yet")
                })?;
                Some(producer_name(origin, sequence))
            }
        };
        let link = self.links.get_mut(&leader).expect("inserted above");
        let stored = match &name {
            Some(name) => link.stored_id(name, &key.stream).await?,
            None => 0,
        };
        let publisher = link.declare(name.as_deref(), &key.stream).await?;
        debug!(producer = ?name, stream = %key.stream, stored, publisher, "opened a stream producer");
        if let Some(m) = &self.metrics {
            m.stream.producers.inc();
        }
        Ok(Producer {
            leader,
            publisher,
            stored,
            last_id: 0,
        })
    }

    /// A publishing connection to `leader`, the node leading `stream`: to the address the
    /// broker advertises for it, or, behind a load balancer, to the URL's address again and
    /// again until one lands on the leader (the node says which it is when it opens).
    async fn open_link(
        &self,
        stream: &str,
        leader: &(String, u16),
    ) -> Result<StreamLink, SinkError> {
        let routes = || Routes {
            signals: self.signals_tx.clone(),
            state: Arc::clone(&self.state),
            fan_out: Arc::clone(&self.fan_out),
        };
        let (host, port) = (&self.url.host, self.url.port);
        if !self.load_balancer {
            return StreamLink::open(&self.url, "walrelay", &leader.0, leader.1, routes())
                .await
                .map_err(|e| match leader {
                    // The address the user gave works for the queries: no hint needed.
                    (h, p) if h == host && *p == port => e,
                    (h, p) => SinkError::LeaderUnreachable {
                        stream: stream.to_owned(),
                        host: h.clone(),
                        port: *p,
                        source: Box::new(e),
                    },
                });
        }
        let mut reached = Vec::new();
        for _ in 0..LOAD_BALANCER_ATTEMPTS {
            let link = StreamLink::open(&self.url, "walrelay", host, port, routes()).await?;
            match link.advertised() {
                Some(node) if node == leader => return Ok(link),
                node => {
                    let node = node.map_or_else(
                        || "a node that did not say".to_owned(),
                        |(h, p)| format!("{h}:{p}"),
                    );
                    debug!(stream, reached = %node, leader = %format!("{}:{}", leader.0, leader.1), "the load balancer led to another node; connecting again");
                    if !reached.contains(&node) {
                        reached.push(node);
                    }
                    link.close().await;
                }
            }
        }
        Err(failed(
            "connecting to the stream's leader",
            format!(
                "{LOAD_BALANCER_ATTEMPTS} connections through {host}:{port} (stream.load_balancer) reached {} but never the leader of stream {stream:?}, {}:{}",
                reached.join(", "),
                leader.0,
                leader.1
            ),
        ))
    }

    /// The leader node of `stream`, as the broker advertises it.
    async fn leader_of(&self, stream: &str) -> Result<(String, u16), SinkError> {
        let metadata = self
            .admin
            .metadata(vec![stream.to_owned()])
            .await
            .map_err(|e| failed("reading stream metadata", e))?;
        match metadata.get(stream) {
            Some(m) if m.response_code == ResponseCode::Ok => {
                let port = u16::try_from(m.leader.port)
                    .map_err(|_| failed("reading stream metadata", "leader port out of range"))?;
                Ok((m.leader.host.clone(), port))
            }
            Some(m) => Err(failed(
                "reading stream metadata",
                format!("stream {stream:?}: {:?}", m.response_code),
            )),
            None => Err(failed(
                "reading stream metadata",
                format!("stream {stream:?}: no answer"),
            )),
        }
    }
}
