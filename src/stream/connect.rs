//! Connecting to RabbitMQ over the stream protocol: an `Environment` (it opens the producers'
//! and consumers' connections) and a plain `Client` for queries, from one `rabbitmq-stream://`
//! URL, with TLS only when a CA file lets the certificate be checked.

use rabbitmq_stream_client::{Client, ClientOptions, Environment, TlsConfiguration};

use super::{NEEDS, failed};
use crate::sink::{AmqpUrl, SinkError};

/// The environment and a query client, both named `name` in the broker's connection list.
pub async fn environment(url: &AmqpUrl, name: &str) -> Result<(Environment, Client), SinkError> {
    let mut builder = Environment::builder()
        .host(&url.host)
        .port(url.port)
        .username(&url.user)
        .password(url.password.expose())
        .virtual_host(&url.vhost)
        .heartbeat(u32::from(url.heartbeat_secs))
        .client_provided_name(name);
    let mut options = ClientOptions::builder()
        .host(&url.host)
        .port(url.port)
        .user(&url.user)
        .password(url.password.expose())
        .v_host(&url.vhost)
        .client_provided_name(format!("{name} (queries)"));
    if url.tls {
        // Never without checking the certificate: the client library trusts any server when
        // no root certificates are given, so validation requires `cacertfile`.
        let Some(ca) = &url.ca_file else {
            return Err(failed(
                "TLS",
                "rabbitmq-stream+tls:// needs ?cacertfile=<PEM bundle>",
            ));
        };
        let tls = TlsConfiguration::builder()
            .add_root_certificates(ca.clone())
            .build()
            .map_err(|e| failed("TLS", e))?;
        builder = builder.tls(tls.clone());
        options = options.tls(tls);
    }
    // A broker older than 3.13 closes the connection at the client's first command
    // (ExchangeCommandVersions), which the client reports as a bare I/O error.
    let env = builder
        .build()
        .await
        .map_err(|e| failed("connecting", format!("{e} ({NEEDS})")))?;
    let admin = Client::connect(options.build())
        .await
        .map_err(|e| failed("connecting", e))?;
    Ok((env, admin))
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
