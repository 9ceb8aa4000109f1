//! The backfill benchmark: a table of backlog (a)'s shape backfilled by walrelay (one message
//! per row, then batch mode), timed from the request to the `finished` state, with the
//! process's CPU and peak memory; compared with the broker limit for messages of that size.
//! Meanwhile a writer commits a single-row transaction every 10 ms to another published table,
//! and a consumer of those rows measures how long each took from `clock_timestamp()` at insert
//! to its arrival: live changes must keep flowing while a backfill runs.

use std::process::Command;
use std::time::{Duration, Instant};

use super::common::*;
use super::e2e_parts::{Env, RelayRun, cpu_secs_of, proc_status_of};

/// Copies `rows` rows of `orders` into a table of its own (same columns and key).
pub(crate) async fn prepare(c: &tokio_postgres::Client, rows: i64) -> &'static str {
    c.batch_execute(&format!(
        "DROP TABLE IF EXISTS bf_orders;
         CREATE TABLE bf_orders (LIKE orders INCLUDING ALL);
         INSERT INTO bf_orders SELECT * FROM orders ORDER BY id LIMIT {rows};
         ANALYZE bf_orders;
         DROP TABLE IF EXISTS bf_live;
         CREATE TABLE bf_live (id serial PRIMARY KEY, t bigint NOT NULL);"
    ))
    .await
    .unwrap();
    "bf_orders"
}

/// Backfills `table` through a fresh slot and publication; `batch` events per message.
pub(crate) async fn walrelay_backfill(
    env: &Env,
    c: &tokio_postgres::Client,
    table: &str,
    batch: usize,
) -> (RelayRun, Vec<f64>) {
    let exchange = unique("bench_bf");
    let queue = TestQueue::new(&exchange, Some("#")).await;
    let live_queue = TestQueue::named(
        amqp_url(),
        &exchange,
        &format!("{exchange}_live"),
        Some("public.bf_live.#"),
        Default::default(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let slot = unique("bf");
    let cfg = write_config(
        dir.path(),
        &env.url,
        amqp_url(),
        &slot,
        &exchange,
        &[&format!("public.{table}"), "public.bf_live"],
        "",
    );
    config_set(&cfg, "rabbitmq", "batch_max_events", &batch.to_string());
    config_set(&cfg, "rabbitmq", "confirm_timeout_ms", "60000");
    config_set(&cfg, "service", "probe_interval_ms", "600000");
    config_set(&cfg, "backfill", "chunk_rows", "5000");
    let relay = Relay::start(&cfg);
    relay.wait_log("streaming", super::TIMEOUT).await;
    let pid = relay.child.id();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (url, stop) = (env.url.clone(), std::sync::Arc::clone(&stop));
        tokio::spawn(async move {
            let c = connect(&url).await;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.batch_execute(
                    "INSERT INTO bf_live (t) VALUES ((extract(epoch FROM clock_timestamp()) * 1000000)::bigint)",
                )
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let consumer = {
        let stop = std::sync::Arc::clone(&stop);
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut quiet_since: Option<Instant> = None;
            loop {
                match live_queue.get().await {
                    Some(m) => {
                        let now_us = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_micros() as f64;
                        latencies.push((now_us - m.body["new"]["t"].as_f64().unwrap()) / 1000.0);
                        quiet_since = None;
                    }
                    None => {
                        if stop.load(std::sync::atomic::Ordering::Relaxed)
                            && quiet_since.get_or_insert_with(Instant::now).elapsed()
                                > Duration::from_secs(2)
                        {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }
            live_queue.delete().await;
            latencies
        })
    };
    let cpu_before = cpu_secs_of(pid);
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["backfill", "--config"])
        .arg(&cfg)
        .arg(format!("public.{table}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    loop {
        let done = c
            .query_opt(
                "SELECT rows_done FROM walrelay.backfill WHERE slot = $1 AND state = 'finished'",
                &[&slot],
            )
            .await
            .unwrap();
        if done.is_some() {
            break;
        }
        assert!(
            start.elapsed() < super::TIMEOUT,
            "the backfill did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_secs_of(pid) - cpu_before;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    let mut latencies = consumer.await.unwrap();
    latencies.sort_by(f64::total_cmp);
    let peak = proc_status_of(pid, "VmHWM:");
    let port = relay.http_port().await;
    let metrics = tokio::task::spawn_blocking(move || http_get(port, "/metrics").1)
        .await
        .unwrap();
    let events = metric(&metrics, "walrelay_backfill_rows_total");
    let bytes = metric(&metrics, "walrelay_bytes_published_total");
    let messages = metric(&metrics, "walrelay_publish_confirm_seconds_count");
    drop(relay);
    queue.delete().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = c
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await;
    let run = RelayRun {
        secs,
        events: events as u64,
        messages: messages as u64,
        avg_bytes: (bytes / events.max(1.0)) as usize,
        cpu_secs: cpu,
        peak_rss_kib: peak,
        idle_rss_kib: 0,
        startup_secs: None,
        startup_cpu_secs: None,
    };
    (run, latencies)
}

/// The `q`-quantile of sorted values (0 when empty).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Both runs and the broker limit, as a Markdown table.
pub(crate) async fn report(env: &Env, c: &tokio_postgres::Client, rows: i64) {
    let table = prepare(c, rows).await;
    eprintln!("== backfill: {rows} rows");
    let (one, one_live) = walrelay_backfill(env, c, table, 1).await;
    let (batched, batched_live) = walrelay_backfill(env, c, table, 100).await;
    let broker = super::e2e_parts::broker_limit(one.events, one.avg_bytes).await;
    println!("\n### Backfill of {rows} rows (backlog (a)'s shape, chunks of 5,000)\n");
    println!(
        "| mode | rows/s | × broker limit | CPU µs/row | peak RSS | live changes meanwhile: count, p50, p99 |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, r, live) in [
        ("one message per row", &one, &one_live),
        ("batch mode (100)", &batched, &batched_live),
    ] {
        println!(
            "| {name} | {:.0} | {:.2} | {:.1} | {:.1} MiB | {}, {:.0} ms, {:.0} ms |",
            r.events as f64 / r.secs,
            (r.events as f64 / r.secs) / (one.events as f64 / broker),
            r.cpu_secs * 1e6 / r.events.max(1) as f64,
            r.peak_rss_kib as f64 / 1024.0,
            live.len(),
            quantile(live, 0.5),
            quantile(live, 0.99)
        );
    }
    println!(
        "\nBroker limit for these messages ({} bytes): {:.0}/s",
        one.avg_bytes,
        one.events as f64 / broker
    );
}
