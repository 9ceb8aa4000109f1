//! Sub-entry batching measured (`BENCH_ONLY=stream-subentry`): what packing several messages
//! into one stream entry would save the broker, against one entry per message as walrelay
//! publishes. A minimal publisher on walrelay's own stream connection code
//! (`walrelay::sink::stream::handshake`, `frame`, `amqp10`) sends `n` messages of walrelay's shape
//! as plain entries or as uncompressed sub-entries of `k` messages (one publishing id per
//! entry), every entry confirmed; the figures are the rate and the CPU the RabbitMQ 4 node
//! spent per message. The first messages are then read back over AMQP 0-9-1 (the broker
//! unpacks uncompressed sub-entries for such consumers) and checked. Not with the RabbitMQ
//! team's Rust stream client: 0.11 cannot read sub-entries (its deliver decoder takes every
//! record for a plain message), the first reason walrelay does not offer them
//! (docs/benchmarks.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use walrelay::sink::AmqpUrl;
use walrelay::sink::stream::amqp10::{self, Value};
use walrelay::sink::stream::frame::{self, Incoming, Writer};
use walrelay::sink::stream::handshake::connect_and_open;

use amqprs::channel::{BasicAckArguments, BasicConsumeArguments, BasicQosArguments};

use super::common::stream::{STREAM_URL, env};
use super::common::{connect_amqp, queue_args, text, unique};

/// Messages sent and not confirmed at most (walrelay's default confirm window).
const WINDOW: u64 = 2000;

/// One run: the rate and the broker's CPU per message.
pub(crate) struct SubEntryRun {
    pub per_entry: usize,
    pub messages_per_sec: f64,
    pub broker_cpu_us_per_message: f64,
}

/// Sends `n` messages with a body of `size` bytes, `per_entry` to an entry (1: plain
/// entries), at most 256 entries or 1 MiB to a frame.
pub(crate) async fn run(n: u64, size: usize, per_entry: usize) -> SubEntryRun {
    let env = env().await;
    let stream = unique("subentry");
    env.stream_creator().create(&stream).await.unwrap();
    let url = AmqpUrl::parse_stream(STREAM_URL).unwrap();
    let opened = connect_and_open(&url, "bench", &url.host, url.port)
        .await
        .unwrap();
    let (mut buf, tuned) = (opened.buf, opened.tuned);
    let (mut read, mut write) = tokio::io::split(opened.io);
    let mut declare = Vec::new();
    let mut w = Writer::begin(&mut declare, frame::DECLARE_PUBLISHER, 1);
    w.u32(1).u8(0).string(&unique("subentry")).string(&stream);
    w.end();
    write.write_all(&declare).await.unwrap();
    loop {
        match Incoming::parse(next_frame(&mut read, &mut buf, tuned.read_max()).await).unwrap() {
            Incoming::Response {
                correlation: 1,
                code,
                ..
            } => {
                assert_eq!(code, frame::OK, "declaring the publisher");
                break;
            }
            _ => continue,
        }
    }
    let entries = n.div_ceil(per_entry as u64);
    let confirmed = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(tokio::sync::Notify::new());
    let reader = {
        let (confirmed, progress) = (Arc::clone(&confirmed), Arc::clone(&progress));
        tokio::spawn(async move {
            while confirmed.load(Ordering::Relaxed) < entries {
                match Incoming::parse(next_frame(&mut read, &mut buf, tuned.read_max()).await) {
                    Ok(Incoming::Confirm { ids, .. }) => {
                        confirmed.fetch_add(ids.len() as u64, Ordering::Relaxed);
                        progress.notify_one();
                    }
                    Ok(Incoming::Errors { errors, .. }) => panic!("refused: {errors:?}"),
                    Ok(_) => {}
                    Err(e) => panic!("{e}"),
                }
            }
        })
    };
    let body = vec![b'x'; size.max(1)];
    let props = [
        ("op", Value::Str("insert")),
        ("schema", Value::Str("public")),
        ("table", Value::Str("orders")),
        ("commit_lsn", Value::Str("0/16B374D48")),
        ("routing_key", Value::Str("public.orders.insert")),
    ];
    let broker = broker_pid();
    let cpu_before = cpu_ticks(broker);
    let start = Instant::now();
    let (mut sent, mut entry_id) = (0u64, 0u64);
    let mut out = Vec::with_capacity(1 << 20);
    let mut records = Vec::new();
    while sent < n {
        // One frame: up to 256 entries or about 1 MiB, within the window.
        while (entry_id - confirmed.load(Ordering::Relaxed)) * per_entry as u64 >= WINDOW {
            progress.notified().await;
        }
        out.clear();
        let mut w = Writer::begin(&mut out, frame::PUBLISH, 1);
        w.u8(0).u32(0);
        w.end();
        let mut in_frame = 0u32;
        while sent < n && in_frame < 256 && out.len() < 1_000_000 {
            entry_id += 1;
            let k = (per_entry as u64).min(n - sent) as usize;
            records.clear();
            for i in 0..k {
                let id = format!("0/16B374D48:{}", sent + i as u64);
                let fields = amqp10::Fields {
                    message_id: &id,
                    content_type: "application/json",
                    creation_time_ms: Some(1_765_000_000_000),
                    application_properties: &props,
                };
                let at = records.len();
                records.extend_from_slice(&[0; 4]);
                amqp10::write(&mut records, &fields, &body);
                let len = (records.len() - at - 4) as u32;
                records[at..at + 4].copy_from_slice(&len.to_be_bytes());
            }
            out.extend_from_slice(&entry_id.to_be_bytes());
            if per_entry == 1 {
                // A plain entry: the record as it is (its length, the message).
                out.extend_from_slice(&records);
            } else {
                // A sub-entry: type 1, no compression; records, sizes, then the records.
                out.push(0x80);
                out.extend_from_slice(&(k as u16).to_be_bytes());
                out.extend_from_slice(&(records.len() as u32).to_be_bytes());
                out.extend_from_slice(&(records.len() as u32).to_be_bytes());
                out.extend_from_slice(&records);
            }
            sent += k as u64;
            in_frame += 1;
        }
        let size = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&size.to_be_bytes());
        out[9..13].copy_from_slice(&in_frame.to_be_bytes());
        write.write_all(&out).await.unwrap();
    }
    reader.await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    let cpu_secs = (cpu_ticks(broker) - cpu_before) as f64 / 100.0;
    read_back(&stream, &body, n.min(1000)).await;
    let _ = env.delete_stream(&stream).await;
    SubEntryRun {
        per_entry,
        messages_per_sec: n as f64 / secs,
        broker_cpu_us_per_message: cpu_secs * 1e6 / n as f64,
    }
}

/// Checks that the stream holds what was sent: an AMQP 0-9-1 consumer of RabbitMQ 4 (the
/// broker unpacks uncompressed sub-entries for it) reads the first `count` messages from
/// offset `first`, each with its message id in order and the body sent.
async fn read_back(stream: &str, body: &[u8], count: u64) {
    let link = connect_amqp("amqp://guest:guest@127.0.0.1:5673/%2f", "bench reader").await;
    let ch = link.channel().await.unwrap();
    ch.basic_qos(BasicQosArguments::new(0, 500, false))
        .await
        .unwrap();
    let mut args = BasicConsumeArguments::new(stream, "")
        .manual_ack(true)
        .finish();
    args.arguments(queue_args(&[("x-stream-offset", text("first"))]));
    let (_, mut rx) = ch.basic_consume_rx(args).await.unwrap();
    for i in 0..count {
        let m = tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv())
            .await
            .expect("a message read back within 30 s")
            .expect("the consumer ended");
        let id = m
            .basic_properties
            .as_ref()
            .and_then(|p| p.message_id().cloned());
        assert_eq!(id.as_deref(), Some(format!("0/16B374D48:{i}").as_str()));
        assert_eq!(m.content.as_deref(), Some(body));
        let tag = m.deliver.unwrap().delivery_tag();
        ch.basic_ack(BasicAckArguments::new(tag, false))
            .await
            .unwrap();
    }
    let _ = ch.close().await;
}

async fn next_frame(
    read: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut BytesMut,
    max: usize,
) -> bytes::Bytes {
    loop {
        if let Some(f) = frame::take(buf, max).unwrap() {
            return f;
        }
        buf.reserve(64 * 1024);
        assert!(
            read.read_buf(buf).await.unwrap() > 0,
            "the broker closed the connection"
        );
    }
}

/// The RabbitMQ 4 node of `scripts/rabbitmq4.sh`: the `beam.smp` started with its epmd port.
fn broker_pid() -> u32 {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("beam.smp") && c.contains("4370")
            })
        })
        .expect("the RabbitMQ 4 node (scripts/rabbitmq4.sh start)")
}

/// User and system CPU of a process, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}
