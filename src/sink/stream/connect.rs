//! Connecting to RabbitMQ over the stream protocol: an `Environment` (it opens consumers'
//! connections, for `walrelay tail`) and a plain `Client` for queries and stream creation,
//! from one `rabbitmq-stream://` URL, with TLS only when a CA file lets the certificate be
//! checked.

use rabbitmq_stream_client::{Client, ClientOptions, Environment, TlsConfiguration};

use super::{NEEDS, failed};
use crate::sink::{AmqpUrl, SinkError};

/// The environment and a query client, both named `name` in the broker's connection list.
/// With `load_balancer`, the environment's consumers connect through the URL's address
/// (the client's load-balancer mode) instead of to the addresses the broker advertises.
pub async fn environment(
    url: &AmqpUrl,
    name: &str,
    load_balancer: bool,
) -> Result<(Environment, Client), SinkError> {
    let mut builder = Environment::builder()
        .host(&url.host)
        .port(url.port)
        .username(&url.user)
        .password(url.password.expose())
        .virtual_host(&url.vhost)
        .heartbeat(u32::from(url.heartbeat_secs))
        .client_provided_name(name)
        .load_balancer_mode(load_balancer);
    if let Some(tls) = tls(url)? {
        builder = builder.tls(tls);
    }
    // A broker older than 3.13 closes the connection at the client's first command
    // (ExchangeCommandVersions), which the client reports as a bare I/O error.
    let env = builder
        .build()
        .await
        .map_err(|e| failed("connecting", format!("{e} ({NEEDS})")))?;
    let admin = admin(url, name).await?;
    Ok((env, admin))
}

/// [`admin`] to the first of `nodes` that answers, trying them in turn from `start` (the node
/// used last); returns its index too. The error names every node's failure.
pub async fn admin_any(
    nodes: &[AmqpUrl],
    start: usize,
    name: &str,
) -> Result<(Client, usize), SinkError> {
    let n = nodes.len().max(1);
    let mut failures = Vec::new();
    for k in 0..nodes.len() {
        let i = (start + k) % n;
        // Bounded: a node that accepts TCP and never answers must not hold the others back.
        match tokio::time::timeout(NODE_CONNECT_TIMEOUT, admin(&nodes[i], name)).await {
            Ok(Ok(client)) => return Ok((client, i)),
            Ok(Err(e)) if nodes.len() == 1 => return Err(e),
            Ok(Err(e)) => failures.push(format!("{}:{}: {e}", nodes[i].host, nodes[i].port)),
            Err(_) => failures.push(format!(
                "{}:{}: no answer within {NODE_CONNECT_TIMEOUT:?}",
                nodes[i].host, nodes[i].port
            )),
        }
    }
    Err(failed(
        "connecting",
        format!("no node of stream.url answered ({})", failures.join("; ")),
    ))
}

/// How long one node of `stream.url` may take to answer before the next is tried.
const NODE_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A plain client to the URL's node for queries and stream creation, named `<name> (queries)`.
/// The publisher needs no `Environment`: each stream it creates through one would open (and
/// close) a connection of its own, and every connection costs tens of milliseconds at start.
pub async fn admin(url: &AmqpUrl, name: &str) -> Result<Client, SinkError> {
    let options = client_options(url, &format!("{name} (queries)"), &url.host, url.port)?;
    let client = Client::connect(options)
        .await
        .map_err(|e| failed("connecting", format!("{e} ({NEEDS})")))?;
    super::nodelay::set_for_host(&url.host, url.port).await;
    Ok(client)
}

/// Options for a plain client connection to `host:port` (the URL's node, or a stream's
/// leader as the broker advertises it) with the URL's credentials, vhost, heartbeat and TLS.
pub fn client_options(
    url: &AmqpUrl,
    name: &str,
    host: &str,
    port: u16,
) -> Result<ClientOptions, SinkError> {
    let mut options = ClientOptions::builder()
        .host(host)
        .port(port)
        .user(&url.user)
        .password(url.password.expose())
        .v_host(&url.vhost)
        .heartbeat(u32::from(url.heartbeat_secs))
        .client_provided_name(name.to_owned());
    if let Some(tls) = tls(url)? {
        options = options.tls(tls);
    }
    Ok(options.build())
}

/// TLS for `rabbitmq-stream+tls://`: never without checking the certificate — the client
/// library trusts any server when no root certificates are given, so it needs `cacertfile`.
fn tls(url: &AmqpUrl) -> Result<Option<TlsConfiguration>, SinkError> {
    if !url.tls {
        return Ok(None);
    }
    let Some(ca) = &url.ca_file else {
        return Err(failed(
            "TLS",
            "rabbitmq-stream+tls:// needs ?cacertfile=<PEM bundle>",
        ));
    };
    TlsConfiguration::builder()
        .add_root_certificates(ca.clone())
        .build()
        .map(Some)
        .map_err(|e| failed("TLS", e))
}

/// The streams that make up `name`: its partitions when `partitions` is set (in binding
/// order), else the stream itself.
pub async fn members(
    admin: &Client,
    name: &str,
    partitions: Option<u32>,
) -> Result<Vec<String>, SinkError> {
    if partitions.is_none() {
        return Ok(vec![name.to_owned()]);
    }
    let found = admin
        .partitions(name.to_owned())
        .await
        .map_err(|e| failed("reading the super stream's partitions", e))?;
    if !found.is_ok() || found.streams.is_empty() {
        return Err(failed(
            "reading the super stream's partitions",
            format!("super stream {name:?} does not exist"),
        ));
    }
    Ok(found.streams)
}
