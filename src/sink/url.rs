//! `AmqpUrl`: what `rabbitmq.url` says, parsed once at config time so a bad URL is a config
//! error naming the key, never a failure at the first connect.
//!
//! The form is RabbitMQ's URI spec: `amqp[s]://user:password@host[:port][/vhost][?query]`,
//! user, password and vhost percent-decoded (`%2f` is the vhost `/`). A missing or empty path
//! is the vhost `/` (the spec makes `amqp://host/` the empty vhost, which nobody means).
//! Query parameters: `heartbeat` (seconds, at least 2) and, for `amqps`, `cacertfile` (a PEM
//! bundle to trust instead of the system's roots). Anything else is refused by name rather
//! than silently ignored.

use std::path::PathBuf;

use crate::secret::Secret;
use crate::source::params::percent_decode;

/// RabbitMQ's default heartbeat, which the server lowers when it proposes less.
pub const DEFAULT_HEARTBEAT_SECS: u16 = 60;

/// A parsed `amqp://` or `amqps://` URL.
#[derive(Clone, Debug)]
pub struct AmqpUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
    pub vhost: String,
    pub heartbeat_secs: u16,
    /// `amqps` only: trust this PEM bundle instead of the system's and webpki's roots.
    pub ca_file: Option<PathBuf>,
    /// The name the URL gave when `host` is one of the addresses it resolves to: what TLS
    /// checks the certificate against, and what messages name.
    pub server_name: Option<String>,
}

/// Why a URL is not usable; the text never contains the URL (it may hold a password).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum UrlError {
    #[error("not a URL")]
    NotAUrl,
    #[error("scheme {found:?} is not {plain} or {tls}")]
    Scheme {
        found: String,
        plain: &'static str,
        tls: &'static str,
    },
    #[error("no host")]
    NoHost,
    #[error("query parameter heartbeat: {0:?} is not a number of seconds from 2 to 65535")]
    Heartbeat(String),
    #[error(
        "query parameter cacertfile is only meaningful with TLS (amqps://, rabbitmq-stream+tls://)"
    )]
    CaWithoutTls,
    #[error(
        "query parameter {0:?} is not supported (supported: heartbeat, cacertfile; connecting is bounded by rabbitmq.confirm_timeout_ms)"
    )]
    UnknownParameter(String),
}

/// The schemes of one protocol: plain, TLS, and their default ports.
struct Schemes {
    plain: &'static str,
    tls: &'static str,
    ports: (u16, u16),
}

const AMQP: Schemes = Schemes {
    plain: "amqp",
    tls: "amqps",
    ports: (5672, 5671),
};

/// RabbitMQ's stream protocol (`[stream] url`), as its clients spell it.
const STREAM: Schemes = Schemes {
    plain: "rabbitmq-stream",
    tls: "rabbitmq-stream+tls",
    ports: (5552, 5551),
};

impl AmqpUrl {
    /// An `amqp://` or `amqps://` URL (`rabbitmq.url`).
    pub fn parse(s: &str) -> Result<AmqpUrl, UrlError> {
        Self::parse_with(s, &AMQP)
    }

    /// A `rabbitmq-stream://` or `rabbitmq-stream+tls://` URL (`stream.url`): the same
    /// parts, default ports 5552 and 5551.
    pub fn parse_stream(s: &str) -> Result<AmqpUrl, UrlError> {
        Self::parse_with(s, &STREAM)
    }

    fn parse_with(s: &str, schemes: &Schemes) -> Result<AmqpUrl, UrlError> {
        let url = url::Url::parse(s).map_err(|_| UrlError::NotAUrl)?;
        let tls = match url.scheme() {
            p if p == schemes.plain => false,
            t if t == schemes.tls => true,
            other => {
                return Err(UrlError::Scheme {
                    found: other.to_owned(),
                    plain: schemes.plain,
                    tls: schemes.tls,
                });
            }
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or(UrlError::NoHost)?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let user = match percent_decode(url.username()) {
            u if u.is_empty() => "guest".to_owned(),
            u => u,
        };
        let password = Secret::new(
            url.password()
                .map_or_else(|| "guest".to_owned(), percent_decode),
        );
        let vhost = match percent_decode(url.path().trim_start_matches('/')) {
            v if v.is_empty() => "/".to_owned(),
            v => v,
        };
        let mut parsed = AmqpUrl {
            tls,
            host,
            port: url.port().unwrap_or(if tls {
                schemes.ports.1
            } else {
                schemes.ports.0
            }),
            user,
            password,
            vhost,
            heartbeat_secs: DEFAULT_HEARTBEAT_SECS,
            ca_file: None,
            server_name: None,
        };
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                // amqprs sends a heartbeat every heartbeat/2 seconds: 0 or 1 would spin.
                "heartbeat" => {
                    parsed.heartbeat_secs = v
                        .parse::<u16>()
                        .ok()
                        .filter(|&h| h >= 2)
                        .ok_or_else(|| UrlError::Heartbeat(v.to_string()))?
                }
                "cacertfile" if tls => parsed.ca_file = Some(PathBuf::from(v.as_ref())),
                "cacertfile" => return Err(UrlError::CaWithoutTls),
                other => return Err(UrlError::UnknownParameter(other.to_owned())),
            }
        }
        Ok(parsed)
    }

    /// `host:port vhost "/" as user`, for messages (never the password).
    pub fn describe(&self) -> String {
        format!(
            "{}:{} vhost {:?} as {}",
            self.host, self.port, self.vhost, self.user
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        let u = AmqpUrl::parse("amqp://guest:guest@localhost:5672/%2f").unwrap();
        assert_eq!(
            (
                u.tls,
                u.host.as_str(),
                u.port,
                u.user.as_str(),
                u.vhost.as_str()
            ),
            (false, "localhost", 5672, "guest", "/")
        );
        assert_eq!(u.password.expose(), "guest");
        let u = AmqpUrl::parse("amqps://a%40b:p%3Aw@[::1]/prod?heartbeat=10").unwrap();
        assert_eq!(
            (
                u.tls,
                u.host.as_str(),
                u.port,
                u.user.as_str(),
                u.vhost.as_str()
            ),
            (true, "::1", 5671, "a@b", "prod")
        );
        assert_eq!((u.password.expose(), u.heartbeat_secs), ("p:w", 10));
        let u = AmqpUrl::parse("amqp://rabbit").unwrap();
        assert_eq!(
            (u.user.as_str(), u.vhost.as_str(), u.heartbeat_secs),
            ("guest", "/", 60)
        );
        assert_eq!(AmqpUrl::parse("amqp://h/").unwrap().vhost, "/");
        assert_eq!(AmqpUrl::parse("amqp://h/a%2Fb").unwrap().vhost, "a/b");
        let u = AmqpUrl::parse("amqps://h?cacertfile=/etc/ca.pem").unwrap();
        assert_eq!(u.ca_file, Some(PathBuf::from("/etc/ca.pem")));
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        assert_eq!(AmqpUrl::parse("rabbit").unwrap_err(), UrlError::NotAUrl);
        assert_eq!(
            AmqpUrl::parse("http://h").unwrap_err().to_string(),
            "scheme \"http\" is not amqp or amqps"
        );
        assert!(AmqpUrl::parse("rabbitmq-stream://h").is_err());
        assert!(AmqpUrl::parse_stream("amqp://h").is_err());
        assert_eq!(
            AmqpUrl::parse("amqp://h?heartbeat=0").unwrap_err(),
            UrlError::Heartbeat("0".into())
        );
        assert_eq!(
            AmqpUrl::parse("amqp://h?heartbeat=x").unwrap_err(),
            UrlError::Heartbeat("x".into())
        );
        assert_eq!(
            AmqpUrl::parse("amqp://h?cacertfile=/x").unwrap_err(),
            UrlError::CaWithoutTls
        );
        assert_eq!(
            AmqpUrl::parse("amqp://h?frame_max=4096").unwrap_err(),
            UrlError::UnknownParameter("frame_max".into())
        );
    }

    #[test]
    fn stream_urls_have_their_own_schemes_and_ports() {
        let u = AmqpUrl::parse_stream("rabbitmq-stream://me:pw@h/v").unwrap();
        assert_eq!(
            (u.tls, u.port, u.user.as_str(), u.vhost.as_str()),
            (false, 5552, "me", "v")
        );
        let u = AmqpUrl::parse_stream("rabbitmq-stream+tls://h?cacertfile=/ca.pem").unwrap();
        assert_eq!((u.tls, u.port, u.vhost.as_str()), (true, 5551, "/"));
        assert_eq!(
            AmqpUrl::parse_stream("rabbitmq-stream://h?cacertfile=/x").unwrap_err(),
            UrlError::CaWithoutTls
        );
    }

    #[test]
    fn errors_and_descriptions_never_show_the_password() {
        let u = AmqpUrl::parse("amqp://me:s3cret@h/v").unwrap();
        assert!(!u.describe().contains("s3cret"));
        assert!(!format!("{u:?}").contains("s3cret"));
        let e = AmqpUrl::parse("amqp://me:s3cret@h/v?nope=1").unwrap_err();
        assert!(!e.to_string().contains("s3cret"));
    }
}
