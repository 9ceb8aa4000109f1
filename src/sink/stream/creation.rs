//! Creating what the stream sink publishes to at start: a stream, or a super stream and its
//! partitions, with the configured retention (`max-length-bytes`, `max-age`, segment size)
//! when it is missing and `stream.create` is on. An existing stream keeps its own settings,
//! even when declared with other arguments (`walrelay doctor` reports them); an existing
//! super stream must have the configured partition count.

use std::collections::HashMap;

use rabbitmq_stream_client::Client;
use rabbitmq_stream_client::types::ResponseCode;
use tracing::info;

use super::{StreamSettings, failed};
use crate::sink::SinkError;

/// Creates `name` when missing (and `create` is on); an existing stream keeps its own
/// retention, which `walrelay doctor` reports.
pub(super) async fn ensure_stream(
    admin: &Client,
    name: &str,
    s: &StreamSettings,
) -> Result<(), SinkError> {
    if !s.create {
        if exists(admin, name).await? {
            return Ok(());
        }
        return Err(failed(
            "checking the stream",
            format!("stream {name:?} does not exist and stream.create is off"),
        ));
    }
    let answer = admin
        .create_stream(name, create_arguments(s))
        .await
        .map_err(|e| failed("creating the stream", e))?;
    // A stream someone declared with other arguments (another leader locator, retention): the
    // broker refuses walrelay's declaration as a precondition failure. It is used as it is.
    if *answer.code() == ResponseCode::PreconditionFailed && exists(admin, name).await? {
        info!(
            stream = name,
            "the stream exists with other arguments than walrelay would create it with: used as it is (walrelay doctor shows its retention)"
        );
        return Ok(());
    }
    if created(answer.code(), "stream", name)? {
        info!(stream = name, "created the stream");
    }
    Ok(())
}

/// The partition streams of super stream `name`, creating it with `n` partitions when it is
/// missing and `create` is on. An existing super stream must have exactly `n` partitions:
/// another count would send keys to other partitions than before.
pub(super) async fn super_stream(
    admin: &Client,
    name: &str,
    n: u32,
    s: &StreamSettings,
) -> Result<Vec<String>, SinkError> {
    let found = admin
        .partitions(name.to_owned())
        .await
        .map_err(|e| failed("reading the super stream's partitions", e))?;
    let streams = if found.is_ok() && !found.streams.is_empty() {
        found.streams
    } else if !s.create {
        return Err(failed(
            "checking the super stream",
            format!("super stream {name:?} does not exist and stream.create is off"),
        ));
    } else {
        // Partitions `<name>-0` … `<name>-<n-1>`, bound with keys "0" … "n-1" (what the
        // RabbitMQ clients name them).
        let keys: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        let partitions = keys.iter().map(|k| format!("{name}-{k}")).collect();
        let answer = admin
            .create_super_stream(name, partitions, keys, create_arguments(s))
            .await
            .map_err(|e| failed("creating the super stream", e))?;
        if created(answer.code(), "super stream", name)? {
            info!(
                super_stream = name,
                partitions = n,
                "created the super stream"
            );
        }
        let again = admin
            .partitions(name.to_owned())
            .await
            .map_err(|e| failed("reading the super stream's partitions", e))?;
        again.streams
    };
    if streams.len() != n as usize {
        return Err(SinkError::Layout(format!(
            "super stream {name:?} has {} partitions but stream.partitions = {n}; a different count would move keys to other partitions and break their order (create a new super stream to change it)",
            streams.len()
        )));
    }
    Ok(streams)
}

/// The arguments of a stream created with the configured retention (`max-length-bytes`,
/// `max-age`, segment size), as the stream protocol's create commands take them. Leaders are
/// placed on the node leading the fewest streams (`least-leaders`, what the client's own
/// stream creator asks for), not on the node walrelay happens to be connected to.
fn create_arguments(s: &StreamSettings) -> HashMap<String, String> {
    let mut options = HashMap::new();
    options.insert(
        "queue-leader-locator".to_owned(),
        "least-leaders".to_owned(),
    );
    if let Some(bytes) = s.max_length_bytes {
        options.insert("max-length-bytes".to_owned(), bytes.to_string());
    }
    if let Some(age) = s.max_age {
        options.insert("max-age".to_owned(), format!("{}s", age.as_secs()));
    }
    if let Some(bytes) = s.max_segment_bytes {
        options.insert(
            "stream-max-segment-size-bytes".to_owned(),
            bytes.to_string(),
        );
    }
    options
}

/// What the broker answered to a create command for `what` `name`: true when it created it,
/// false when it existed already, an error naming the code otherwise.
/// True when the stream exists (its metadata answers Ok).
async fn exists(admin: &Client, name: &str) -> Result<bool, SinkError> {
    Ok(admin
        .metadata(vec![name.to_owned()])
        .await
        .map_err(|e| failed("reading stream metadata", e))?
        .get(name)
        .is_some_and(|m| m.response_code == ResponseCode::Ok))
}

fn created(code: &ResponseCode, what: &str, name: &str) -> Result<bool, SinkError> {
    match code {
        ResponseCode::Ok => Ok(true),
        ResponseCode::StreamAlreadyExists => Ok(false),
        code => Err(failed(
            "creating a stream",
            format!("{what} {name:?}: {code:?}"),
        )),
    }
}
