//! `rabbitmq.url` as one URL or a list of a cluster's nodes (a TOML array; in `AMQP_URL`,
//! comma-separated): each entry parsed and named in errors, and the list checked to be one
//! logical broker (one scheme, one vhost, one user), since walrelay moves between its nodes.

use serde::Deserialize;

use super::ConfigError;
use crate::secret::Secret;
use crate::sink::AmqpUrl;

/// `rabbitmq.url` as written: a string (perhaps comma-separated) or an array of strings.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum UrlList {
    One(Secret),
    Many(Vec<Secret>),
}

impl UrlList {
    fn entries(&self) -> Vec<String> {
        match self {
            UrlList::One(s) => s.expose().split(',').map(|u| u.trim().to_owned()).collect(),
            UrlList::Many(list) => list.iter().map(|s| s.expose().trim().to_owned()).collect(),
        }
    }
}

/// The nodes of `rabbitmq.url`, in the order given (walrelay tries them in that order at first).
pub(super) fn parse(list: &UrlList) -> Result<Vec<AmqpUrl>, ConfigError> {
    parse_as(
        list,
        "rabbitmq.url",
        AmqpUrl::parse,
        "amqp://user:password@host:5672/vhost or amqps://…",
    )
}

/// The nodes of `stream.url`.
pub(super) fn parse_stream(list: &UrlList) -> Result<Vec<AmqpUrl>, ConfigError> {
    parse_as(
        list,
        "stream.url",
        AmqpUrl::parse_stream,
        "rabbitmq-stream://user:password@host:5552/vhost",
    )
}

fn parse_as(
    list: &UrlList,
    key: &str,
    parse_one: fn(&str) -> Result<AmqpUrl, crate::sink::url::UrlError>,
    expected: &str,
) -> Result<Vec<AmqpUrl>, ConfigError> {
    let entries = list.entries();
    if entries.iter().all(String::is_empty) {
        return Err(ConfigError::new(
            key,
            "is empty: give one amqp:// URL, or the list of the cluster's nodes".into(),
        ));
    }
    let mut nodes = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let which = if entries.len() > 1 {
            format!("entry {} of {}: ", i + 1, entries.len())
        } else {
            String::new()
        };
        let url = parse_one(e)
            .map_err(|err| ConfigError::new(key, format!("{which}{err} (expected {expected})")))?;
        nodes.push(url);
    }
    let first = &nodes[0];
    for (i, n) in nodes.iter().enumerate().skip(1) {
        let differs = if n.tls != first.tls {
            Some("mixes plain and TLS schemes")
        } else if n.vhost != first.vhost {
            Some("names another vhost")
        } else if n.user != first.user || n.password != first.password {
            Some("names another user or password")
        } else {
            None
        };
        if let Some(why) = differs {
            return Err(ConfigError::new(
                key,
                format!(
                    "entry {} ({}:{}) {why} than entry 1: the list must be the nodes of one broker, which walrelay moves between",
                    i + 1,
                    n.host,
                    n.port
                ),
            ));
        }
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Result<Vec<AmqpUrl>, String> {
        parse(&UrlList::One(Secret::new(s))).map_err(|e| e.message)
    }

    #[test]
    fn lists() {
        let n = one("amqp://u:p@a:5672/v, amqp://u:p@b:5673/v").unwrap();
        assert_eq!(
            n.iter()
                .map(|u| (u.host.as_str(), u.port))
                .collect::<Vec<_>>(),
            [("a", 5672), ("b", 5673)]
        );
        let many = parse(&UrlList::Many(vec![
            Secret::new("amqp://a"),
            Secret::new("amqp://b"),
            Secret::new("amqp://c"),
        ]))
        .unwrap();
        assert_eq!(many.len(), 3);
        assert!(one("").unwrap_err().contains("is empty"));
        assert!(
            parse(&UrlList::Many(vec![]))
                .unwrap_err()
                .message
                .contains("is empty")
        );
        assert!(
            one("amqp://a,amqps://b")
                .unwrap_err()
                .contains("mixes plain and TLS schemes")
        );
        let streams = parse_stream(&UrlList::One(Secret::new(
            "rabbitmq-stream://a:5561,rabbitmq-stream://b:5562",
        )))
        .unwrap();
        assert_eq!(streams[1].port, 5562);
        assert!(
            one("amqp://a/x,amqp://b/y")
                .unwrap_err()
                .contains("another vhost")
        );
        assert!(
            one("amqp://u:p@a,amqp://w:p@b")
                .unwrap_err()
                .contains("another user")
        );
        let bad = one("amqp://a,http://b").unwrap_err();
        assert!(bad.starts_with("entry 2 of 2:"), "{bad}");
        assert!(
            !bad.contains("http://b"),
            "never the URL itself (it may hold a password)"
        );
    }
}
