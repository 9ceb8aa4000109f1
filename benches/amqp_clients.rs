//! The AMQP client's own cost on walrelay's publish path (issue: CPU per event): messages shaped
//! like walrelay's — persistent, 373 bytes, walrelay's properties (message id, content type,
//! timestamp) and four headers, to a topic exchange with `mandatory`, confirms pipelined with a
//! window of 2,000 — published by a minimal amqprs publisher on a current-thread runtime, as
//! walrelay runs. The figure is the process's CPU per message (user + system, all threads) and
//! the rate. This bench compared lapin with amqprs in one run until walrelay moved to amqprs
//! (commit 29254a7 has the lapin half; its figures are in docs/benchmarks.md).
//! Not a criterion bench: each figure is one timed run.
//!
//! Run: `cargo bench --bench amqp_clients` (RabbitMQ on 127.0.0.1:5672, guest/guest;
//! `BENCH_MESSAGES` sets the count, default 200,000; `AMQP_URL` another broker).

use std::time::Instant;

const WINDOW: usize = 2_000;
const BODY: usize = 373;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("amqp_clients benchmark: skipped outside `cargo bench`");
        return;
    }
    let n: u64 = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    println!("| client | messages | msg/s | CPU µs/msg |");
    println!("| --- | ---: | ---: | ---: |");
    for round in 0..2 {
        let (secs, cpu) = rt.block_on(amqprs_run(&url, n, round));
        report("amqprs", n, secs, cpu);
    }
}

fn report(name: &str, n: u64, secs: f64, cpu: f64) {
    println!(
        "| {name} | {n} | {:.0} | {:.1} |",
        n as f64 / secs,
        cpu * 1e6 / n as f64
    );
}

/// CPU seconds (user + system, every thread) of this process so far.
fn cpu_now() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn body(i: u64) -> Vec<u8> {
    let mut b = format!("{{\"id\":\"0/1A2B3C4:{i}\",\"op\":\"insert\",\"new\":{{\"n\":{i}}}");
    while b.len() < BODY - 1 {
        b.push(' ');
    }
    b.push('}');
    b.into_bytes()
}

fn names(client: &str, round: u32) -> (String, String) {
    let tag = format!("{client}_{}_{round}", std::process::id());
    (
        format!("bench_clients_{tag}"),
        format!("bench_clients_{tag}_q"),
    )
}

/// Confirms as amqprs reports them: a callback per `basic.ack` (with `multiple`), returns and
/// nacks counted as failures.
struct Confirms {
    tx: tokio::sync::mpsc::UnboundedSender<(u64, bool, bool)>,
}

#[async_trait::async_trait]
impl amqprs::callbacks::ChannelCallback for Confirms {
    async fn close(
        &mut self,
        _: &amqprs::channel::Channel,
        _: amqprs::CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn cancel(
        &mut self,
        _: &amqprs::channel::Channel,
        _: amqprs::Cancel,
    ) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(
        &mut self,
        _: &amqprs::channel::Channel,
        _: bool,
    ) -> Result<bool, amqprs::error::Error> {
        Ok(true)
    }
    async fn publish_ack(&mut self, _: &amqprs::channel::Channel, ack: amqprs::Ack) {
        let _ = self.tx.send((ack.delivery_tag(), ack.mutiple(), true));
    }
    async fn publish_nack(&mut self, _: &amqprs::channel::Channel, nack: amqprs::Nack) {
        let _ = self.tx.send((nack.delivery_tag(), nack.multiple(), false));
    }
    async fn publish_return(
        &mut self,
        _: &amqprs::channel::Channel,
        _: amqprs::Return,
        _: amqprs::BasicProperties,
        _: Vec<u8>,
    ) {
        panic!("a message was returned unroutable");
    }
}

async fn amqprs_run(url: &str, n: u64, round: u32) -> (f64, f64) {
    use amqprs::channel::*;
    use amqprs::connection::{Connection, OpenConnectionArguments};
    use amqprs::{BasicProperties, FieldTable, FieldValue};
    let (exchange, queue) = names("amqprs", round);
    let uri = walrelay::sink::AmqpUrl::parse(url).unwrap();
    let args = OpenConnectionArguments::new(&uri.host, uri.port, &uri.user, uri.password.expose())
        .virtual_host(&uri.vhost)
        .finish();
    let conn = Connection::open(&args).await.unwrap();
    let ch = conn.open_channel(None).await.unwrap();
    let (tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
    ch.register_callback(Confirms { tx }).await.unwrap();
    ch.confirm_select(ConfirmSelectArguments::default())
        .await
        .unwrap();
    ch.exchange_declare(
        ExchangeDeclareArguments::new(&exchange, "topic")
            .durable(true)
            .finish(),
    )
    .await
    .unwrap();
    ch.queue_declare(QueueDeclareArguments::new(&queue).durable(true).finish())
        .await
        .unwrap();
    ch.queue_bind(QueueBindArguments::new(&queue, &exchange, "#"))
        .await
        .unwrap();
    let cpu0 = cpu_now();
    let start = Instant::now();
    // Delivery tags count publishes from 1; an ack with `multiple` confirms up to its tag.
    let mut confirmed = 0u64;
    let settle = |tag: u64, multiple: bool, ack: bool, confirmed: &mut u64| {
        assert!(ack, "nacked");
        *confirmed = if multiple {
            tag.max(*confirmed)
        } else {
            *confirmed + 1
        };
    };
    for i in 0..n {
        while i - confirmed >= WINDOW as u64 {
            let (tag, multiple, ack) = acks.recv().await.unwrap();
            settle(tag, multiple, ack, &mut confirmed);
        }
        let mut headers = FieldTable::new();
        for (k, v) in [
            ("op", "insert"),
            ("schema", "public"),
            ("table", "orders"),
            ("commit_lsn", "0/1A2B3C4"),
        ] {
            headers.insert(k.try_into().unwrap(), FieldValue::S(v.try_into().unwrap()));
        }
        let props = BasicProperties::default()
            .with_message_id(&format!("0/1A2B3C4:{i}"))
            .with_content_type("application/json")
            .with_persistence(true)
            .with_timestamp(1_764_000_000)
            .with_headers(headers)
            .finish();
        let publish = BasicPublishArguments::new(&exchange, "public.orders.insert")
            .mandatory(true)
            .finish();
        ch.basic_publish(props, body(i), publish).await.unwrap();
    }
    while confirmed < n {
        let (tag, multiple, ack) = acks.recv().await.unwrap();
        settle(tag, multiple, ack, &mut confirmed);
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_now() - cpu0;
    ch.queue_delete(QueueDeleteArguments::new(&queue))
        .await
        .unwrap();
    ch.exchange_delete(ExchangeDeleteArguments::new(&exchange))
        .await
        .unwrap();
    let _ = conn.close().await;
    (secs, cpu)
}
