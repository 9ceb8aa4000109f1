//! The stream side of `walrelay doctor` (with `[stream]`): the credentials on the stream
//! port, and each stream the configuration names — present (with its leader), or missing and
//! created at start (`stream.create`), or missing and an error.

use rabbitmq_stream_client::types::ResponseCode;
use rabbitmq_stream_client::{Client, ClientOptions};

use super::{Finding, Level};
use crate::config::Settings;
use crate::stream::StreamSettings;

fn f(level: Level, message: impl Into<String>) -> Finding {
    Finding::new(level, "stream", message)
}

pub async fn check(settings: &Settings, stream: &StreamSettings, out: &mut Vec<Finding>) {
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
                format!("cannot connect to {} over the stream protocol: {e} (RabbitMQ 3.13+ with rabbitmq_stream)", url.describe()),
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
    out.push(f(
        Level::Ok,
        format!("connected to {} (stream protocol)", url.describe()),
    ));
    let names: Vec<String> = std::iter::once(&settings.sink.exchange)
        .chain(&settings.sink.extra_exchanges)
        .cloned()
        .collect();
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
