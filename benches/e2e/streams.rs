//! The stream sink's part of the end-to-end benchmark (`BENCH_ONLY=stream`, against RabbitMQ
//! 4 from `scripts/rabbitmq4.sh`): walrelay publishing backlogs (a)–(c) to a stream, one
//! message per event, against the decode limit of the same run and the stream limit (a
//! minimal named producer with publishing ids, walrelay's message shape, every message
//! confirmed); then live commit→consumer latency read from the stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rabbitmq_stream_client::types::{Message, OffsetSpecification};

use super::common::stream::{STREAM_URL, env};
use super::common::*;
use super::e2e_parts::*;
use super::{TIMEOUT, timed};

/// A stream-sink config for backlog `i` (its slot and publication), `batch` events per
/// message at most.
fn config(
    dir: &std::path::Path,
    url: &str,
    slot: &str,
    publication: &str,
    stream: &str,
    table: &str,
    batch: usize,
) -> std::path::PathBuf {
    // The end of a catch-up is when the slot is confirmed past the backlog, and the slot moves
    // at walrelay's status updates: with the default interval (1 s) a catch-up of 0.6-1.3 s
    // measured as 1 or 2 s (the 44k/79k events/s of backlog b). 50 ms rounds it up by less.
    // BENCH_IN_FLIGHT: another confirm window than walrelay's default (an experiment).
    let window = std::env::var("BENCH_IN_FLIGHT")
        .map(|n| format!("max_in_flight = {n}\n"))
        .unwrap_or_default();
    let text = format!(
        "[postgres]\nurl = {url:?}\nslot = {slot:?}\npublication = {publication:?}\nstatus_interval_ms = 50\n\
         [stream]\nurl = {STREAM_URL:?}\nstream = {stream:?}\nmax_length_bytes = 20000000000\n\
         [rabbitmq]\nconfirm_timeout_ms = 60000\nbatch_max_events = {batch}\n{window}\
         [service]\nprobe_interval_ms = 600000\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\
         [filter]\ninclude = [\"public.{table}\"]\n"
    );
    let path = dir.join("walrelay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// walrelay with the stream sink from start until the slot is confirmed past the backlog.
pub(crate) async fn stream_catchup(
    env_: &Env,
    c: &tokio_postgres::Client,
    b: &Backlog,
    batch: usize,
) -> RelayRun {
    let stream = unique("bench");
    let dir = tempfile::tempdir().unwrap();
    let slot = format!("main_{}", b.i);
    let cfg = config(
        dir.path(),
        &env_.url,
        &slot,
        &format!("pub_{}", b.i),
        &stream,
        &b.table,
        batch,
    );
    let start = Instant::now();
    let relay = Relay::start(&cfg);
    let pid = relay.child.id();
    let mut startup = None;
    let mut startup_cpu = None;
    while slot_confirmed(c, &slot).await < b.end {
        assert!(start.elapsed() < TIMEOUT, "walrelay did not catch up");
        if startup.is_none() && relay.log().contains(" streaming slot=") {
            startup = Some(start.elapsed().as_secs_f64());
            startup_cpu = Some(cpu_secs_of(pid));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    // BENCH_LOG: walrelay's log of the run on stderr (where its startup time goes).
    if std::env::var_os("BENCH_LOG").is_some() {
        eprintln!("{}", relay.log());
    }
    let cpu = cpu_secs_of(pid);
    let peak = proc_status_of(pid, "VmHWM:");
    let port = relay.http_port().await;
    let metrics = tokio::task::spawn_blocking(move || http_get(port, "/metrics").1)
        .await
        .unwrap();
    let events: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("walrelay_events_published_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let bytes = metric(&metrics, "walrelay_bytes_published_total");
    let messages = metric(&metrics, "walrelay_publish_confirm_seconds_count");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = proc_status_of(pid, "VmRSS:");
    drop(relay);
    let _ = env().await.delete_stream(&stream).await;
    RelayRun {
        secs,
        events: events as u64,
        messages: messages as u64,
        avg_bytes: (bytes / events.max(1.0)) as usize,
        cpu_secs: cpu,
        peak_rss_kib: peak,
        idle_rss_kib: idle,
        startup_secs: startup,
        startup_cpu_secs: startup_cpu,
    }
}

/// The stream limit: one named producer sending `n` messages of `size` bytes shaped like
/// walrelay's (message id, content type, creation time, five application properties), each
/// with a publishing id, every one confirmed. Seconds until the last confirm.
pub(crate) async fn stream_limit(n: u64, size: usize) -> f64 {
    stream_limit_with(n, size, 256).await
}

/// [`stream_limit`] with the client packing at most `batch` messages into one frame.
pub(crate) async fn stream_limit_with(n: u64, size: usize, batch: usize) -> f64 {
    let env = env().await;
    let stream = unique("limit");
    env.stream_creator().create(&stream).await.unwrap();
    let mut producer = env
        .producer()
        .name(&unique("limit"))
        .batch_size(batch)
        .build(&stream)
        .await
        .unwrap();
    let body = vec![b'x'; size.max(1)];
    let confirmed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let (_, secs) = timed(async {
        for i in 0..n {
            let message = Message::builder()
                .body(body.clone())
                .properties()
                .message_id(format!("0/16B374D48:{i}"))
                .content_type("application/json")
                .creation_time(chrono::Utc::now())
                .message_builder()
                .application_properties()
                .insert("op", "insert")
                .insert("schema", "public")
                .insert("table", "orders")
                .insert("commit_lsn", "0/16B374D48")
                .insert("routing_key", "public.orders.insert")
                .message_builder()
                .publishing_id(i + 1)
                .build();
            let (confirmed, done) = (Arc::clone(&confirmed), Arc::clone(&done));
            producer
                .send(message, move |r| {
                    assert!(
                        r.is_ok_and(|s| s.confirmed()),
                        "the stream refused a message"
                    );
                    if confirmed.fetch_add(1, Ordering::Relaxed) + 1 == n {
                        done.notify_one();
                    }
                    async {}
                })
                .await
                .unwrap();
        }
        if confirmed.load(Ordering::Relaxed) < n {
            done.notified().await;
        }
    })
    .await;
    let _ = producer.close().await;
    let _ = env.delete_stream(&stream).await;
    secs
}

/// Live commit→consumer latency with the stream sink at `rates` transactions per second
/// (pgbench, 20 s each), the consumer reading the stream from `next`.
pub(crate) async fn stream_live_latency(
    env_: &Env,
    c: &tokio_postgres::Client,
    rates: &[u32],
) -> Vec<Latency> {
    c.batch_execute("CREATE PUBLICATION pub_slive FOR TABLE orders")
        .await
        .unwrap();
    let stream = unique("live");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &env_.url,
        "slive",
        "pub_slive",
        &stream,
        "orders",
        1,
    );
    let relay = Relay::start(&cfg);
    relay.wait_log("streaming", TIMEOUT).await;
    let env = env().await;
    let mut consumer = env
        .consumer()
        .offset(OffsetSpecification::Next)
        .build(&stream)
        .await
        .unwrap();
    let samples = Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let sink = Arc::clone(&samples);
    let task = tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let Some(data) = d.message().data() else {
                continue;
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros() as i64;
            let v: serde_json::Value = serde_json::from_slice(data).unwrap();
            if let Some(t) = v["commit_time"].as_str().and_then(parse_commit_time) {
                sink.lock().unwrap().push(now - t);
            }
        }
    });
    let port = relay.http_port().await;
    const CONFIRM: &str = "walrelay_commit_confirm_seconds";
    let mut out = Vec::new();
    for &rate in rates {
        let before = histogram(&http_get(port, "/metrics").1, CONFIRM);
        let mut l = latency_at(env_, c, "slive", rate, &samples).await;
        let after = histogram(&http_get(port, "/metrics").1, CONFIRM);
        let bound = |q| histogram_quantile_bound(&before, &after, q).map(|s| s * 1000.0);
        l.relay_confirm_p50_p99_ms = bound(0.5).zip(bound(0.99));
        l.idle_rss_kib = proc_status_of(relay.child.id(), "VmRSS:");
        out.push(l);
    }
    task.abort();
    drop(relay);
    let _ = env.delete_stream(&stream).await;
    out
}

/// The startup column: seconds until walrelay streamed (part of its catch-up time) and the
/// CPU it had used by then (part of its CPU per event: 10 ms is 0.1 µs/event over 100,000).
fn startup(relay: &RelayRun) -> String {
    match (relay.startup_secs, relay.startup_cpu_secs) {
        // /proc counts CPU in 10 ms ticks.
        (Some(s), Some(cpu)) if cpu < 0.01 => format!("{s:.2} s, < 10 ms CPU"),
        (Some(s), Some(cpu)) => format!("{s:.2} s, {:.0} ms CPU", cpu * 1000.0),
        _ => "?".to_owned(),
    }
}

/// Backlogs (a)–(c) with the stream sink, batch mode on (a)'s shape, live latency: the
/// report of `BENCH_ONLY=stream`.
pub(crate) async fn report(
    env_: &Env,
    client: &tokio_postgres::Client,
    backlogs: &[(&str, &str, i64)],
) {
    println!(
        "| backlog (stream sink, RabbitMQ 4) | events | decode limit /s | stream limit /s | walrelay /s | × decode | CPU µs/event | peak RSS MiB | messages | startup |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut i = 0;
    for (name, table, count) in backlogs {
        let mut b = Backlog::build(env_, client, i, table, *count).await;
        eprintln!("== stream backlog {name}");
        let decode = decode_limit(env_, client, &b).await;
        let relay = stream_catchup(env_, client, &b, 1).await;
        if b.events == 0 {
            b.events = relay.events;
        }
        let limit = stream_limit(b.events, relay.avg_bytes).await;
        let ev = b.events as f64;
        println!(
            "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.1} | {} | {} |",
            b.events,
            ev / decode,
            ev / limit,
            ev / relay.secs,
            decode / relay.secs,
            relay.cpu_secs * 1e6 / ev,
            relay.peak_rss_kib as f64 / 1024.0,
            relay.messages,
            startup(&relay)
        );
        i += 1;
    }
    // Batch mode (100 events per message) on (a)'s shape.
    let (_, _, count) = backlogs[0];
    let b = Backlog::build(env_, client, i, "orders", count).await;
    let decode = decode_limit(env_, client, &b).await;
    let relay = stream_catchup(env_, client, &b, 100).await;
    let ev = b.events as f64;
    println!(
        "| a, batch mode (100 events/message) | {} | {:.0} | — | {:.0} | {:.2} | {:.2} | {:.1} | {} | {} |",
        b.events,
        ev / decode,
        ev / relay.secs,
        decode / relay.secs,
        relay.cpu_secs * 1e6 / ev,
        relay.peak_rss_kib as f64 / 1024.0,
        relay.messages,
        startup(&relay)
    );
    let lat = stream_live_latency(env_, client, &[2000, 5000]).await;
    println!(
        "\n| live, stream sink: target tx/s | achieved | p50 ms | p99 ms | max ms | samples | catch-up s | RSS MiB | walrelay commit→confirm p50 / p99 ≤ ms |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for l in lat {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {:.1} | {} |",
            l.rate,
            l.achieved_tps,
            l.p50_ms,
            l.p99_ms,
            l.max_ms,
            l.samples,
            l.catchup_after_secs,
            l.idle_rss_kib as f64 / 1024.0,
            confirm_bounds(&l)
        );
    }
}

/// walrelay's own commit → confirm share of a live run, as the bounds of the histogram
/// buckets holding its median and 99th percentile.
pub(crate) fn confirm_bounds(l: &Latency) -> String {
    match l.relay_confirm_p50_p99_ms {
        Some((p50, p99)) => format!("{p50:.0} / {p99:.0}"),
        None => "?".to_owned(),
    }
}
