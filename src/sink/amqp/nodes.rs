//! A cluster's nodes as one broker: [`Link::open_any`] connects through the first node of
//! `rabbitmq.url` that completes the handshake, from the one used last; a node whose host name
//! resolves to several addresses is tried address by address (a TCP connect alone would stop
//! at the first address that accepts, even when that one never completes the handshake).

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

        let mut failures = Vec::new();
        let mut all_timed_out = true;
        for k in 0..nodes.len() {
            let i = (start + k) % n;
            let resolved =
                match tokio::net::lookup_host((nodes[i].host.as_str(), nodes[i].port)).await {
                    Ok(addrs) => addrs.map(|a| a.ip()).collect(),
                    Err(_) => Vec::new(),
                };
            let candidates = addresses(&nodes[i], &resolved);
            let single = nodes.len() == 1 && candidates.len() == 1;
            let each = if single {
                timeout
            } else {
                timeout.min(NODE_CONNECT_TIMEOUT)
            };
            for url in &candidates {
                match Link::open(url, name, each).await {
                    Ok((link, signals)) => return Ok((link, signals, i)),
                    Err(e) if single => return Err(e),
                    Err(e) => {
                        all_timed_out &= e.timed_out;
                        failures.push(format!("{}:{}: {}", url.host, url.port, e.detail));
                    }
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

/// What to try for one node: itself when its host is an address or names one address; else
/// each address it resolves to, in the resolver's order, with the name kept for TLS.
fn addresses(node: &AmqpUrl, resolved: &[std::net::IpAddr]) -> Vec<AmqpUrl> {
    let mut distinct: Vec<std::net::IpAddr> = Vec::new();
    for a in resolved {
        if !distinct.contains(a) {
            distinct.push(*a);
        }
    }
    if distinct.len() < 2 || node.host.parse::<std::net::IpAddr>().is_ok() {
        return vec![node.clone()];
    }
    distinct
        .into_iter()
        .map(|ip| AmqpUrl {
            host: ip.to_string(),
            server_name: Some(node.host.clone()),
            ..node.clone()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_with_several_addresses_is_tried_address_by_address() {
        let node = AmqpUrl::parse("amqps://u:p@rabbit.example:5671/%2f").unwrap();
        let ips: Vec<std::net::IpAddr> = vec![
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
        ];
        let tried = addresses(&node, &ips);
        assert_eq!(
            tried.iter().map(|u| u.host.as_str()).collect::<Vec<_>>(),
            ["10.0.0.1", "10.0.0.2"]
        );
        assert!(
            tried
                .iter()
                .all(|u| u.server_name.as_deref() == Some("rabbit.example"))
        );
        assert_eq!(
            addresses(&node, &ips[..1])[0].host,
            "rabbit.example",
            "one address: as given"
        );
        assert_eq!(
            addresses(&node, &[])[0].host,
            "rabbit.example",
            "unresolved: as given"
        );
        let ip = AmqpUrl::parse("amqp://127.0.0.1").unwrap();
        assert_eq!(addresses(&ip, &ips).len(), 1);
    }
}
