//! Opening walrelay's stream-protocol publishing connection: TCP with TCP_NODELAY, TLS when
//! the URL asks for it, then the handshake (peer properties, SASL PLAIN, tune, open the
//! virtual host), one request at a time before the connection is split into its reader and
//! writer halves ([`super::link`]).

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::answers::read_frame;
use super::failed;
use super::frame::{self, Incoming, Writer};
use crate::sink::{AmqpUrl, SinkError};

/// The largest frame read from the broker when it set no `frame_max`.
const READ_MAX: usize = 16 << 20;

/// A byte stream to the broker: plain TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type BoxIo = Box<dyn Io>;

/// What the handshake agreed.
#[derive(Clone, Copy)]
pub struct Tuned {
    /// The largest frame either side may send, in bytes (0: no limit set).
    pub frame_max: u32,
    /// Seconds between heartbeats (0: none).
    pub heartbeat: u32,
}

impl Tuned {
    /// The largest frame walrelay accepts from the broker.
    pub fn read_max(&self) -> usize {
        match self.frame_max {
            0 => READ_MAX,
            n => n as usize,
        }
    }
}

/// An open connection, before it is split into its reader and writer.
pub struct Opened {
    pub io: BoxIo,
    /// What was read past the handshake (the start of the next frame, if any).
    pub buf: BytesMut,
    pub tuned: Tuned,
    /// The node's own address as it advertises it (`advertised_host`, `advertised_port` in
    /// its answer to `open`): behind a load balancer, which node this connection reached.
    pub advertised: Option<(String, u16)>,
}

/// TCP (TCP_NODELAY), TLS when the URL asks, then the handshake: peer properties, SASL
/// PLAIN, tune, open the vhost.
pub async fn connect_and_open(
    url: &AmqpUrl,
    name: &str,
    host: &str,
    port: u16,
) -> Result<Opened, SinkError> {
    const WHAT: &str = "connecting to the stream's leader";
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| failed(WHAT, format!("{host}:{port}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let io: BoxIo = if url.tls {
        let Some(ca) = &url.ca_file else {
            return Err(failed(
                "TLS",
                "rabbitmq-stream+tls:// needs ?cacertfile=<PEM bundle>",
            ));
        };
        let config = crate::tls::client_config(crate::tls::Verify::Full, Some(ca))
            .map_err(|e| failed("TLS", e))?;
        let server = crate::tls::server_name(host).map_err(|e| failed("TLS", e))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(server, tcp)
            .await
            .map_err(|e| failed("TLS", format!("{host}:{port}: {e}")))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let mut hs = Handshake {
        io,
        buf: BytesMut::with_capacity(4096),
    };
    let version = env!("CARGO_PKG_VERSION");
    hs.ask(
        frame::PEER_PROPERTIES,
        1,
        "exchanging peer properties",
        |w| {
            w.properties(&[
                ("connection_name", name),
                ("product", "walrelay"),
                ("version", version),
                ("platform", "Rust"),
            ]);
        },
    )
    .await?;
    let mut mechanisms = hs
        .ask(frame::SASL_HANDSHAKE, 2, "the SASL handshake", |_| {})
        .await?;
    let n = mechanisms
        .array("mechanisms", 2)
        .map_err(|e| failed(WHAT, e))?;
    let offered = (0..n)
        .map(|_| mechanisms.string("mechanism"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed(WHAT, e))?;
    if !offered.iter().any(|m| m == "PLAIN") {
        return Err(failed(
            WHAT,
            format!("the broker offers no PLAIN authentication (it offers {offered:?})"),
        ));
    }
    let mut plain = Vec::with_capacity(url.user.len() + 32);
    plain.push(0);
    plain.extend_from_slice(url.user.as_bytes());
    plain.push(0);
    plain.extend_from_slice(url.password.expose().as_bytes());
    hs.ask(frame::SASL_AUTHENTICATE, 3, "authenticating", |w| {
        w.string("PLAIN").bytes(&plain);
    })
    .await?;
    // The broker proposes its limits; walrelay takes its frame size and the smaller of the
    // two heartbeats (0 on one side means the other's).
    let tuned = loop {
        if let Incoming::Tune {
            frame_max,
            heartbeat,
        } = hs.next().await?
        {
            let ours = u32::from(url.heartbeat_secs);
            let heartbeat = match (ours, heartbeat) {
                (0, theirs) => theirs,
                (ours, 0) => ours,
                (ours, theirs) => ours.min(theirs),
            };
            break Tuned {
                frame_max,
                heartbeat,
            };
        }
    };
    let mut tune = Vec::new();
    // The answer to a tune is a tune (the key without the response bit, as RabbitMQ's own
    // clients send it).
    let mut w = Writer::begin(&mut tune, frame::TUNE, 1);
    w.u32(tuned.frame_max).u32(tuned.heartbeat);
    w.end();
    hs.send(&tune).await?;
    let mut opened = hs
        .ask(frame::OPEN, 4, "opening the virtual host", |w| {
            w.string(&url.vhost);
        })
        .await?;
    // Brokers before 3.11 may send no properties: then no advertised address is known.
    let properties = opened
        .properties("connection properties")
        .unwrap_or_default();
    Ok(Opened {
        io: hs.io,
        buf: hs.buf,
        tuned,
        advertised: advertised(&properties),
    })
}

/// The `advertised_host` and `advertised_port` of an `open` answer's properties.
fn advertised(properties: &[(String, String)]) -> Option<(String, u16)> {
    let get = |key: &str| {
        properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    Some((
        get("advertised_host")?.to_owned(),
        get("advertised_port")?.parse().ok()?,
    ))
}

/// The connection before it is split: one request at a time, in order.
struct Handshake {
    io: BoxIo,
    buf: BytesMut,
}

impl Handshake {
    async fn send(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        self.io
            .write_all(bytes)
            .await
            .map_err(|e| failed("connecting to the stream's leader", e))?;
        self.io
            .flush()
            .await
            .map_err(|e| failed("connecting to the stream's leader", e))
    }

    async fn next(&mut self) -> Result<Incoming, SinkError> {
        let frame = read_frame(&mut self.io, &mut self.buf, READ_MAX)
            .await
            .map_err(|e| failed("connecting to the stream's leader", e))?;
        Incoming::parse(frame).map_err(|e| failed("connecting to the stream's leader", e))
    }

    /// Sends request `key` and returns the fields of its successful answer.
    async fn ask(
        &mut self,
        key: u16,
        correlation: u32,
        what: &'static str,
        fill: impl FnOnce(&mut Writer<'_>),
    ) -> Result<frame::Fields, SinkError> {
        let mut bytes = Vec::new();
        let mut w = Writer::begin(&mut bytes, key, 1);
        w.u32(correlation);
        fill(&mut w);
        w.end();
        self.send(&bytes).await?;
        loop {
            match self.next().await? {
                Incoming::Response {
                    key: k,
                    correlation: c,
                    code,
                    rest,
                } if k == key && c == correlation => {
                    if code != frame::OK {
                        return Err(failed(
                            "connecting to the stream's leader",
                            format!("{what}: {}", frame::code_name(code)),
                        ));
                    }
                    return Ok(frame::Fields::after_code(key, rest));
                }
                Incoming::Close { code, reason, .. } => {
                    return Err(failed(
                        "connecting to the stream's leader",
                        format!(
                            "{what}: the broker closed the connection ({}: {reason})",
                            frame::code_name(code)
                        ),
                    ));
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::advertised;

    #[test]
    fn the_advertised_address_needs_a_host_and_a_port() {
        let p = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            advertised(&p(&[
                ("advertised_port", "5552"),
                ("advertised_host", "rabbit-1")
            ])),
            Some(("rabbit-1".to_owned(), 5552))
        );
        assert_eq!(advertised(&p(&[("advertised_host", "rabbit-1")])), None);
        assert_eq!(
            advertised(&p(&[
                ("advertised_host", "rabbit-1"),
                ("advertised_port", "x")
            ])),
            None
        );
        assert_eq!(advertised(&[]), None);
    }
}
