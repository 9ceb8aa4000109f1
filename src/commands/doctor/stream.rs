//! The stream side of `walrelay doctor` (with `[stream]`): the credentials on the stream
//! port and the server's version, whether the address the node advertises for its streams
//! takes connections (or `stream.load_balancer` is on), and each stream the configuration names — present (with
//! its leader), or missing and created at start (`stream.create`), or missing and an error;
//! with `stream.partitions`, the super stream and its partition count.

use rabbitmq_stream_client::types::ResponseCode;
use rabbitmq_stream_client::{Client, ClientOptions};

use super::{Finding, Level};
use crate::config::Settings;
use crate::sink::stream::StreamSettings;

fn f(level: Level, message: impl Into<String>) -> Finding {
    Finding::new(level, "stream", message)
}

pub(super) async fn check(settings: &Settings, stream: &StreamSettings, out: &mut Vec<Finding>) {
    let url = &stream.url;
    if url.tls {
        return out.push(f(
            Level::Warn,
            "rabbitmq-stream+tls: the doctor does not check TLS stream connections yet",
        ));
    }
    let options = ClientOptions::builder()
        .host(&url.host)
        .port(url.port)
        .user(&url.user)
        .password(url.password.expose())
        .v_host(&url.vhost)
        .client_provided_name("walrelay doctor".to_owned())
        .build();
    let timeout = settings
        .sink
        .confirm_timeout
        .min(std::time::Duration::from_secs(10));
    let client = match tokio::time::timeout(timeout, Client::connect(options)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return out.push(f(
                Level::Fail,
                format!(
                    "cannot connect to {} over the stream protocol: {e} ({})",
                    url.describe(),
                    crate::sink::stream::NEEDS
                ),
            ));
        }
        Err(_) => {
            return out.push(f(
                Level::Fail,
                format!(
                    "no stream protocol handshake with {} within {timeout:?}",
                    url.describe()
                ),
            ));
        }
    };
    let version = client
        .server_properties()
        .await
        .get("version")
        .cloned()
        .unwrap_or_else(|| "of an unknown version".to_owned());
    out.push(f(
        Level::Ok,
        format!(
            "connected to {} (stream protocol, RabbitMQ {version})",
            url.describe()
        ),
    ));
    advertised_address(&client, stream, out).await;
    let mut names: Vec<String> = std::iter::once(&settings.sink.exchange)
        .chain(&settings.sink.extra_exchanges)
        .cloned()
        .collect();
    if let Some(n) = stream.partitions {
        names.retain(|x| *x != settings.sink.exchange);
        super_stream(&client, &settings.sink.exchange, n, stream.create, out).await;
    }
    let metadata = match client.metadata(names.clone()).await {
        Ok(m) => m,
        Err(e) => return out.push(f(Level::Fail, format!("cannot read stream metadata: {e}"))),
    };
    for name in names {
        match metadata.get(&name) {
            Some(m) if m.response_code == ResponseCode::Ok => out.push(f(
                Level::Ok,
                format!(
                    "stream {name:?} exists (leader {}:{})",
                    m.leader.host, m.leader.port
                ),
            )),
            _ if stream.create => out.push(f(
                Level::Ok,
                format!(
                    "stream {name:?} does not exist; walrelay creates it at start (stream.create)"
                ),
            )),
            _ => out.push(f(
                Level::Fail,
                format!("stream {name:?} does not exist and stream.create is off"),
            )),
        }
    }
    let _ = client.close().await;
}

/// walrelay publishes to a stream's leader at the address the broker advertises for it: the
/// node the URL reached says which address that is for itself, and it must take a connection
/// from here — unless `stream.load_balancer` sends every connection through the URL.
async fn advertised_address(client: &Client, stream: &StreamSettings, out: &mut Vec<Finding>) {
    let properties = client.connection_properties().await;
    let host = properties.get("advertised_host");
    let port = properties
        .get("advertised_port")
        .and_then(|p| p.parse::<u16>().ok());
    let (Some(host), Some(port)) = (host, port) else {
        return out.push(f(
            Level::Warn,
            "the broker does not say which address it advertises for its streams",
        ));
    };
    if stream.load_balancer {
        return out.push(f(
            Level::Ok,
            format!(
                "stream.load_balancer: publishing connections go through {} (this node advertises {host}:{port})",
                stream.url.describe()
            ),
        ));
    }
    let reach = tokio::net::TcpStream::connect((host.as_str(), port));
    match tokio::time::timeout(std::time::Duration::from_secs(3), reach).await {
        Ok(Ok(_)) => out.push(f(
            Level::Ok,
            format!("the node's advertised address {host}:{port} takes connections"),
        )),
        Ok(Err(e)) => out.push(f(
            Level::Fail,
            format!(
                "the node advertises {host}:{port} for its streams, and walrelay publishes to a stream's leader at that address, but it cannot be reached from here ({e}): behind a load balancer or a port mapping set stream.load_balancer = true (or the broker's stream.advertised_host and advertised_port)"
            ),
        )),
        Err(_) => out.push(f(
            Level::Fail,
            format!(
                "the node advertises {host}:{port} for its streams, and walrelay publishes to a stream's leader at that address, but no connection to it in 3 s: behind a load balancer or a port mapping set stream.load_balancer = true (or the broker's stream.advertised_host and advertised_port)"
            ),
        )),
    }
}

/// The super stream: present with the configured number of partitions, or missing and
/// created at start, or an error.
async fn super_stream(client: &Client, name: &str, n: u32, create: bool, out: &mut Vec<Finding>) {
    let found = match client.partitions(name.to_owned()).await {
        Ok(p) => p,
        Err(e) => {
            return out.push(f(
                Level::Fail,
                format!("cannot read super stream {name:?}'s partitions: {e}"),
            ));
        }
    };
    let got = found.streams.len();
    if !found.is_ok() || got == 0 {
        return out.push(if create {
            f(
                Level::Ok,
                format!(
                    "super stream {name:?} does not exist; walrelay creates it at start with {n} partitions ({name}-0 … {name}-{})",
                    n - 1
                ),
            )
        } else {
            f(
                Level::Fail,
                format!("super stream {name:?} does not exist and stream.create is off"),
            )
        });
    }
    if got != n as usize {
        return out.push(f(
            Level::Fail,
            format!(
                "super stream {name:?} has {got} partitions but stream.partitions = {n}: walrelay refuses to start (keys would move between partitions)"
            ),
        ));
    }
    out.push(f(
        Level::Ok,
        format!(
            "super stream {name:?} has {n} partitions: {}",
            found.streams.join(", ")
        ),
    ));
}
