//! The stream side of the harness: RabbitMQ 4's stream port (`scripts/rabbitmq4.sh`), a
//! walrelay config for the stream sink, and consumers reading a stream from offset `first`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use rabbitmq_stream_client::Environment;
use rabbitmq_stream_client::types::{Message, OffsetSpecification, SimpleValue};

use super::checker::{self, Delivery};
pub use super::rabbitmq4::{rabbitmq4, rabbitmq4_ca, rabbitmq4_env};
use super::{Relay, http_get, metric};

pub const STREAM_URL: &str = "rabbitmq-stream://guest:guest@127.0.0.1:5553/%2f";

const T: Duration = Duration::from_secs(120);

/// A client of RabbitMQ 4's stream port (the test holds [`super::rabbitmq4::shared`] or a
/// stream scene).
pub async fn env() -> Environment {
    Environment::builder()
        .host("127.0.0.1")
        .port(5553)
        .build()
        .await
        .expect("RabbitMQ 4's stream port (scripts/rabbitmq4.sh start)")
}

/// A config publishing `tables` of `pg_url` to `stream`.
pub fn stream_config(
    dir: &std::path::Path,
    pg_url: &str,
    slot: &str,
    stream: &str,
    tables: &[&str],
) -> std::path::PathBuf {
    stream_config_with(dir, pg_url, slot, stream, tables, "")
}

/// [`stream_config`] with more `[stream]` keys (`extra`, one per line).
pub fn stream_config_with(
    dir: &std::path::Path,
    pg_url: &str,
    slot: &str,
    stream: &str,
    tables: &[&str],
    extra: &str,
) -> std::path::PathBuf {
    let tables: Vec<String> = tables.iter().map(|t| format!("{t:?}")).collect();
    let text = format!(
        "[postgres]\nurl = {pg_url:?}\nslot = {slot:?}\npublication = {slot:?}\nstatus_interval_ms = 200\n\
         [stream]\nurl = {STREAM_URL:?}\nstream = {stream:?}\nmax_age_secs = 3600\n{extra}\n\
         [rabbitmq]\nconfirm_timeout_ms = 5000\n\
         [service]\nreconnect_min_ms = 100\nreconnect_max_ms = 1000\nshutdown_timeout_ms = 5000\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\
         [filter]\ninclude = [{}]\n",
        tables.join(", ")
    );
    let path = dir.join("walrelay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Reads `stream` from `first` into `out` until `stop`; each message with its offset.
pub async fn consume(
    env: Environment,
    stream: String,
    out: Arc<Mutex<Vec<(u64, Message)>>>,
    stop: Arc<AtomicBool>,
) {
    // The stream exists once walrelay has connected.
    let mut consumer = loop {
        match env
            .consumer()
            .offset(OffsetSpecification::First)
            .build(&stream)
            .await
        {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    while !stop.load(Ordering::Relaxed) {
        if let Ok(Some(Ok(d))) =
            tokio::time::timeout(Duration::from_millis(200), consumer.next()).await
        {
            out.lock().unwrap().push((d.offset(), d.message().clone()));
        }
    }
    let _ = consumer.handle().close().await;
}

/// Reads `stream` from `first` until it holds at least `n` messages, then half a second
/// more, so a caller checking an exact count sees extras too.
pub async fn read_at_least(stream: &str, n: usize) -> Vec<(u64, Message)> {
    let (out, stop) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(AtomicBool::new(false)),
    );
    let reader = tokio::spawn(consume(
        env().await,
        stream.to_owned(),
        Arc::clone(&out),
        Arc::clone(&stop),
    ));
    super::wait_for(&format!("{n} messages in {stream}"), T, || {
        let got = out.lock().unwrap().len();
        async move { (got >= n).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    reader.await.unwrap();
    std::mem::take(&mut *out.lock().unwrap())
}

pub fn body(m: &Message) -> serde_json::Value {
    serde_json::from_slice(m.data().unwrap()).unwrap()
}

/// The `new.id` of every row change on `stream` once at least `n` are there and two more
/// seconds have passed (time for a duplicate to arrive, if the broker kept one).
pub async fn ids_settled(stream: &str, n: usize) -> Vec<i64> {
    read_at_least(stream, n).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    read_at_least(stream, n)
        .await
        .iter()
        .map(|(_, m)| body(m)["new"]["id"].as_i64().unwrap())
        .collect()
}

pub fn app_property(m: &Message, key: &str) -> Option<String> {
    m.application_properties()?.get(key).map(|v| match v {
        SimpleValue::String(s) => s.clone(),
        other => format!("{other:?}"),
    })
}

/// Reads the stream into checker deliveries (the changes of t0–t2) until `stop`.
pub async fn consume_changes(
    env: Environment,
    stream: String,
    out: Arc<Mutex<Vec<Delivery>>>,
    stop: Arc<AtomicBool>,
) {
    let raw = Arc::new(Mutex::new(Vec::new()));
    let reader = tokio::spawn(consume(env, stream, Arc::clone(&raw), Arc::clone(&stop)));
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let batch: Vec<(u64, Message)> = std::mem::take(&mut *raw.lock().unwrap());
        let mut out = out.lock().unwrap();
        for (_, m) in batch {
            let b = body(&m);
            out.push(Delivery {
                change: (
                    b["table"].as_str().unwrap().to_owned(),
                    b["key"]["id"].as_i64().unwrap(),
                    b["new"]["v"].as_i64().unwrap() as i32,
                ),
                message_id: b["id"].as_str().unwrap().to_owned(),
                commit_lsn: checker::parse_lsn(b["commit_lsn"].as_str().unwrap()),
            });
        }
    }
    let _ = reader.await;
}

/// `walrelay_stream_replays_total` of a running walrelay.
pub async fn replays_of(relay: &Relay) -> f64 {
    let port = relay.http_port().await;
    let (_, text) = http_get(port, "/metrics");
    metric(&text, "walrelay_stream_replays_total")
}
