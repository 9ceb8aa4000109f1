//! End-to-end benchmark: walrelay against the decode limit (`pg_recvlogical`), the broker limit
//! (a minimal amqprs publisher with pipelined confirms, the client walrelay uses) and a peer (a hand-written Python relay),
//! on the same backlogs in one run; then live latency under `pgbench`, and memory and CPU.
//! Run with `scripts/bench.sh` (it builds, prepares the Python peer and calls this). Not a
//! criterion bench: each figure is one timed run on a noisy 2-core machine, printed as a table.
//!
//! `BENCH_SCALE` (default 1.0) scales every backlog; `BENCH_PYTHON` is the interpreter with
//! psycopg2 and pika (the peer is skipped without it).

// The test harness, of which this bench uses a part.
#[path = "../tests/common/mod.rs"]
#[allow(dead_code, unused_imports)]
mod common;
#[path = "e2e/backfill.rs"]
mod e2e_backfill;
#[path = "e2e/parts.rs"]
mod e2e_parts;
#[path = "e2e/streams.rs"]
mod e2e_streams;
#[path = "e2e/subentry.rs"]
mod e2e_subentry;

use std::time::{Duration, Instant};

use common::*;
use e2e_parts::*;

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` (the test command) runs bench
    // targets without it, and this benchmark takes minutes: scripts/bench.sh runs it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("e2e benchmark: skipped outside `cargo bench` (run scripts/bench.sh)");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let scale: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let n = |base: f64| ((base * scale) as i64).max(1000);
    let only = |what: &str| std::env::var("BENCH_ONLY").is_ok_and(|v| v == what);
    // Classic versus quorum queue: the broker's own limit, 500-byte persistent messages.
    let count = n(200_000.0) as u64;
    if !only("stream")
        && !only("stream-limit")
        && !only("stream-catchup")
        && !only("stream-live")
        && !only("stream-subentry")
    {
        let classic = broker_limit_on(count, 500, false, false).await;
        let quorum = broker_limit_on(count, 500, true, false).await;
        println!(
            "Broker limit, {count} persistent 500-byte messages, window 2,000: classic queue {:.0}/s, quorum queue {:.0}/s",
            count as f64 / classic,
            count as f64 / quorum
        );
    }
    // `BENCH_ONLY=stream-subentry`: sub-entry batching against plain entries, at the broker.
    if only("stream-subentry") {
        for per_entry in [1, 10, 100] {
            let r = e2e_subentry::run(count, 400, per_entry).await;
            println!(
                "Stream, {count} 400-byte messages of walrelay's shape, {} per entry: {:.0}/s, broker CPU {:.2} µs/message",
                r.per_entry, r.messages_per_sec, r.broker_cpu_us_per_message
            );
        }
        return;
    }
    if only("stream-limit") {
        for batch in [1, 16, 256] {
            let secs = e2e_streams::stream_limit_with(count, 400, batch).await;
            println!(
                "Stream limit, {count} 400-byte messages, {batch} per frame: {:.0}/s",
                count as f64 / secs
            );
        }
        return;
    }
    if only("broker") {
        // With walrelay's properties too (the figure walrelay's own rate is held against).
        let shaped = broker_limit(count, 500).await;
        println!(
            "Broker limit, {count} 500-byte messages with walrelay's properties, classic queue: {:.0}/s",
            count as f64 / shaped
        );
        return;
    }
    // synchronous_commit on, as in production: with it off, the walsender only sees commits
    // once the WAL writer flushes them (every wal_writer_delay), which would dominate latency.
    let pg = PgCluster::start_with(&[
        "max_wal_senders = 20",
        "max_replication_slots = 20",
        "synchronous_commit = on",
    ]);
    let db = "bench";
    let client = pg.create_db(db).await;
    client.batch_execute(SCHEMA).await.unwrap();
    let env = Env {
        url: pg.url(db),
        port: pg.port,
        python: std::env::var("BENCH_PYTHON").ok(),
    };
    let mut rows = Vec::new();

    let backlogs: [(&str, &str, i64); 3] = [
        (
            "a: one transaction, 10-column rows",
            "orders",
            n(1_000_000.0),
        ),
        (
            "b: single-row transactions, 8 sessions",
            "orders",
            n(100_000.0),
        ),
        (
            "c: insert/update/delete mix, REPLICA IDENTITY FULL",
            "accounts",
            n(100_000.0),
        ),
    ];
    // `BENCH_ONLY=stream-catchup`: one backlog through the stream sink only, for profiling:
    // (a) unless `BENCH_BACKLOG` names another (`b`, `c`).
    if only("stream-catchup") {
        let i = match std::env::var("BENCH_BACKLOG").as_deref() {
            Ok("b") => 1,
            Ok("c") => 2,
            _ => 0,
        };
        let (_, table, count) = backlogs[i];
        let b = Backlog::build(&env, &client, i, table, count).await;
        let relay = e2e_streams::stream_catchup(&env, &client, &b, 1).await;
        // The mix's change count is what walrelay published.
        let events = if b.events == 0 {
            relay.events
        } else {
            b.events
        };
        println!(
            "stream catch-up, {events} events: walrelay {:.0}/s, CPU {:.2} µs/event, peak RSS {:.1} MiB, streaming after {:.2} s and {:.0} ms of CPU",
            events as f64 / relay.secs,
            relay.cpu_secs * 1e6 / events as f64,
            relay.peak_rss_kib as f64 / 1024.0,
            relay.startup_secs.unwrap_or(f64::NAN),
            relay.startup_cpu_secs.unwrap_or(f64::NAN) * 1000.0
        );
        return;
    }
    // `BENCH_ONLY=stream-live`: the stream sink's live commit→consumer latency only.
    if only("stream-live") {
        // The live run writes to backlog (b)'s table.
        let (_, table, _) = backlogs[1];
        Backlog::build(&env, &client, 1, table, 1000).await;
        for l in e2e_streams::stream_live_latency(&env, &client, &[2000, 5000]).await {
            println!(
                "stream live at {} tx/s: achieved {:.0}, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; walrelay's commit→confirm p50 / p99 ≤ {} ms",
                l.rate,
                l.achieved_tps,
                l.p50_ms,
                l.p99_ms,
                l.max_ms,
                e2e_streams::confirm_bounds(&l)
            );
        }
        return;
    }
    // `BENCH_ONLY=stream`: the stream sink (RabbitMQ 4's stream port) on the same backlogs.
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "stream") {
        e2e_streams::report(&env, &client, &backlogs).await;
        return;
    }
    // `BENCH_ONLY=backfill`: the backfill of a table of backlog (a)'s shape only.
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "backfill") {
        let _ = Backlog::build(&env, &client, 0, "orders", n(1_000_000.0)).await;
        e2e_backfill::report(&env, &client, n(1_000_000.0)).await;
        return;
    }
    // `BENCH_ONLY=catchup`: backlog (a) only, walrelay against the broker limit, for iterating
    // on the publish path without the full run.
    let only_catchup = std::env::var("BENCH_ONLY").is_ok_and(|v| v == "catchup");
    if only_catchup {
        let b = Backlog::build(&env, &client, 0, "orders", n(1_000_000.0)).await;
        let relay = walrelay_catchup(&env, &client, &b, 1).await;
        let broker = broker_limit(b.events, relay.avg_bytes).await;
        let bare = broker_limit_on(b.events, relay.avg_bytes, false, false).await;
        println!(
            "catch-up, {} events: walrelay {:.0}/s, broker limit {:.0}/s (bare messages {:.0}/s), ratio {:.2}, CPU {:.1} µs/event, peak RSS {:.1} MiB",
            b.events,
            b.events as f64 / relay.secs,
            b.events as f64 / broker,
            b.events as f64 / bare,
            broker / relay.secs,
            relay.cpu_secs * 1e6 / b.events as f64,
            relay.peak_rss_kib as f64 / 1024.0
        );
        return;
    }
    for (i, (name, table, count)) in backlogs.iter().enumerate() {
        let mut b = Backlog::build(&env, &client, i, table, *count).await;
        eprintln!("== backlog {name}");
        let decode = decode_limit(&env, &client, &b).await;
        let relay = walrelay_catchup(&env, &client, &b, 1).await;
        // The mix's change count is what walrelay published (updates may miss deleted rows).
        if b.events == 0 {
            b.events = relay.events;
        }
        let broker = broker_limit(b.events, relay.avg_bytes).await;
        let peer = python_peer(&env, &client, &b).await;
        rows.push(Row {
            name: name.to_string(),
            events: b.events,
            decode,
            broker,
            relay,
            peer,
        });
    }
    // Batch mode on backlog (a)'s shape.
    let b = Backlog::build(&env, &client, 3, "orders", n(1_000_000.0)).await;
    eprintln!("== batch mode: {} changes", b.events);
    let batched = walrelay_catchup(&env, &client, &b, 100).await;
    let decode = decode_limit(&env, &client, &b).await;

    let latencies = live_latency(&env, &client).await;
    print_report(&rows, &batched, decode, &latencies);
    e2e_backfill::report(&env, &client, n(1_000_000.0)).await;
    // The same count and size as backlog (a), with only `delivery_mode` as properties.
    let a = &rows[0];
    let bare = broker_limit_on(a.events, a.relay.avg_bytes, false, false).await;
    println!(
        "\nBroker limit for backlog (a) with bare messages (no id, headers or timestamp): {:.0}/s",
        a.events as f64 / bare
    );
    drop(pg);
}

/// Elapsed seconds of a future.
pub async fn timed<F: std::future::Future>(f: F) -> (F::Output, f64) {
    let start = Instant::now();
    let out = f.await;
    (out, start.elapsed().as_secs_f64())
}

pub const TIMEOUT: Duration = Duration::from_secs(1800);
