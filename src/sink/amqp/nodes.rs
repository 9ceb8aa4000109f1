//! A cluster's nodes as one broker: [`Link::open_any`] connects through the first node of
//! `rabbitmq.url` that completes the handshake, from the one used last.

use std::time::Duration;

use tokio::sync::mpsc;

use super::link::{AmqpError, Link, Signal};
use crate::sink::AmqpUrl;

/// How long one node of a list may take to complete the handshake before the next is tried:
/// a stopped node refuses at once, but one that is unreachable (a dropped route, a paused VM)
/// must not hold the others back for the whole `confirm_timeout`.
const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Link {
    /// Opens a connection to the first of `nodes` that completes the handshake, trying them
    /// in turn from `start` (the node used last); returns its index too. With one node this
    /// is [`open`](Self::open); with several each gets at most [`NODE_CONNECT_TIMEOUT`], and
    /// the error names every node's failure.
    pub async fn open_any(
        nodes: &[AmqpUrl],
        start: usize,
        name: &str,
        timeout: Duration,
    ) -> Result<(Link, mpsc::UnboundedReceiver<Signal>, usize), AmqpError> {
        let n = nodes.len().max(1);
        let each = if n > 1 {
            timeout.min(NODE_CONNECT_TIMEOUT)
        } else {
            timeout
        };
        let mut failures = Vec::new();
        let mut all_timed_out = true;
        for k in 0..nodes.len() {
            let i = (start + k) % n;
            match Link::open(&nodes[i], name, each).await {
                Ok((link, signals)) => return Ok((link, signals, i)),
                Err(e) if nodes.len() == 1 => return Err(e),
                Err(e) => {
                    all_timed_out &= e.timed_out;
                    failures.push(format!("{}:{}: {}", nodes[i].host, nodes[i].port, e.detail));
                }
            }
        }
        Err(AmqpError {
            detail: format!(
                "no RabbitMQ node of rabbitmq.url answered ({})",
                failures.join("; ")
            ),
            timed_out: all_timed_out,
        })
    }
}
