//! The pieces of the end-to-end benchmark: building backlogs in slots, and timing the decode
//! limit, the broker limit, walrelay, the Python peer and live latency.

use std::process::Command;
use std::time::{Duration, Instant};

use amqprs::BasicProperties;
use amqprs::channel::{BasicConsumeArguments, BasicPublishArguments};
use walrelay::sink::Signal;
use walrelay::sink::confirms::ConfirmWindow;

use super::common::*;
use super::{TIMEOUT, timed};

pub(crate) const SCHEMA: &str = "
CREATE TABLE orders (id bigserial PRIMARY KEY, customer int, status text, total numeric(10,2),
  note text, created_at timestamptz, paid boolean, score float8, tags text[], ref uuid, payload jsonb);
CREATE TABLE accounts (id bigserial PRIMARY KEY, owner text, balance numeric(12,2), note text);
ALTER TABLE accounts REPLICA IDENTITY FULL;
INSERT INTO accounts (owner, balance, note) SELECT 'o' || g, 100, 'seed' FROM generate_series(1, 20000) g;";

pub(crate) struct Env {
    pub url: String,
    pub port: u16,
    pub python: Option<String>,
}

/// A backlog of changes waiting in slot `main_<i>` (and copies of it).
pub(crate) struct Backlog {
    pub i: usize,
    pub table: String,
    pub events: u64,
    pub end: u64,
}

fn pgbench(env: &Env, args: &[&str]) {
    let script_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/e2e");
    let mut cmd = Command::new(pg_bin("pgbench"));
    cmd.args([
        "-n",
        "-h",
        "127.0.0.1",
        "-p",
        &env.port.to_string(),
        "-U",
        "postgres",
        "bench",
    ])
    .current_dir(script_dir)
    .args(args);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Backlog {
    pub(crate) async fn build(
        env: &Env,
        c: &tokio_postgres::Client,
        i: usize,
        table: &str,
        count: i64,
    ) -> Backlog {
        // Separate statements: a slot cannot be created in a transaction that wrote.
        for sql in [
            format!("CREATE PUBLICATION pub_{i} FOR TABLE {table}"),
            format!("SELECT pg_create_logical_replication_slot('main_{i}', 'pgoutput')"),
        ] {
            c.batch_execute(&sql).await.unwrap();
        }
        let before: i64 = c
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        match i {
            1 => pgbench(env, &["-c", "8", "-j", "2", "-t", &(count / 8).to_string(), "-f", "single.sql"]),
            2 => pgbench(
                env,
                &["-c", "8", "-j", "2", "-t", &(count / 8).to_string(),
                  "-f", "mix_insert.sql@50", "-f", "mix_update.sql@35", "-f", "mix_delete.sql@15"],
            ),
            _ => c
                .batch_execute(&format!(
                    "INSERT INTO orders (customer, status, total, note, created_at, paid, score, tags, ref, payload)
                     SELECT g % 10000, 'new', (g % 500)::numeric + 0.99, 'bulk order ' || g, now(), g % 2 = 0,
                            g / 7.0, ARRAY['a', 'b'], gen_random_uuid(), jsonb_build_object('n', g)
                     FROM generate_series(1, {count}) g"
                ))
                .await
                .unwrap(),
        }
        let end = current_lsn(c).await;
        for copy in ["dec", "peer"] {
            c.batch_execute(&format!(
                "SELECT pg_copy_logical_replication_slot('main_{i}', '{copy}_{i}')"
            ))
            .await
            .unwrap();
        }
        let after: i64 = c
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        // Known for inserts; for the mix, walrelay's own count replaces it.
        let events = if i == 2 { 0 } else { (after - before) as u64 };
        Backlog {
            i,
            table: table.to_owned(),
            events,
            end,
        }
    }
}

/// `pg_recvlogical` reading the backlog from a copy of the slot into /dev/null.
pub(crate) async fn decode_limit(env: &Env, _c: &tokio_postgres::Client, b: &Backlog) -> f64 {
    let end = format!("{:X}/{:X}", b.end >> 32, b.end & 0xFFFF_FFFF);
    let (out, secs) = timed(async {
        Command::new(pg_bin("pg_recvlogical"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &env.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "bench",
            ])
            .args([
                "-S",
                &format!("dec_{}", b.i),
                "--start",
                "--no-loop",
                "-E",
                &end,
                "-f",
                "/dev/null",
            ])
            .args([
                "-o",
                "proto_version=1",
                "-o",
                &format!("publication_names=pub_{}", b.i),
            ])
            .output()
            .unwrap()
    })
    .await;
    assert!(
        out.status.success(),
        "pg_recvlogical: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    secs
}

/// One walrelay catch-up run.
#[derive(Debug, Default, Clone)]
pub(crate) struct RelayRun {
    pub secs: f64,
    pub events: u64,
    pub messages: u64,
    pub avg_bytes: usize,
    pub cpu_secs: f64,
    pub peak_rss_kib: u64,
    pub idle_rss_kib: u64,
    /// Seconds from start until walrelay said it was streaming (where measured).
    pub startup_secs: Option<f64>,
    /// CPU seconds walrelay had used by then (included in `cpu_secs`).
    pub startup_cpu_secs: Option<f64>,
}

/// A `/proc/<pid>/status` field in KiB.
pub(crate) fn proc_status_of(pid: u32, field: &str) -> u64 {
    proc_status(pid, field)
}

fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) of a process so far.
pub(crate) fn cpu_secs_of(pid: u32) -> f64 {
    cpu_secs(pid)
}

fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// walrelay from start until the slot is confirmed past the backlog's end.
pub(crate) async fn walrelay_catchup(
    env: &Env,
    c: &tokio_postgres::Client,
    b: &Backlog,
    batch: usize,
) -> RelayRun {
    let exchange = unique("bench");
    let queue = TestQueue::new(&exchange, Some("#")).await;
    let dir = tempfile::tempdir().unwrap();
    let slot = format!("main_{}", b.i);
    let cfg = write_config(
        dir.path(),
        &env.url,
        amqp_url(),
        &slot,
        &exchange,
        &[&format!("public.{}", b.table)],
        "",
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            &format!("publication = {slot:?}"),
            &format!("publication = \"pub_{}\"", b.i),
        )
        .replace(
            "[rabbitmq]\n",
            &format!("[rabbitmq]\nbatch_max_events = {batch}\n"),
        )
        .replace("[service]\n", "[service]\nprobe_interval_ms = 600000\n")
        .replace("confirm_timeout_ms = 5000", "confirm_timeout_ms = 60000");
    std::fs::write(&cfg, text).unwrap();
    let start = Instant::now();
    let relay = Relay::start(&cfg);
    let pid = relay.child.id();
    loop {
        if slot_confirmed(c, &slot).await >= b.end {
            break;
        }
        assert!(start.elapsed() < TIMEOUT, "walrelay did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_secs(pid);
    let peak = proc_status(pid, "VmHWM:");
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
    let idle = proc_status(pid, "VmRSS:");
    drop(relay);
    queue.delete().await;
    RelayRun {
        secs,
        events: events as u64,
        messages: messages as u64,
        avg_bytes: (bytes / events.max(1.0)) as usize,
        cpu_secs: cpu,
        peak_rss_kib: peak,
        idle_rss_kib: idle,
        startup_secs: None,
        startup_cpu_secs: None,
    }
}

/// A minimal publisher: `n` persistent messages of `size` bytes with walrelay's properties
/// (message id, content type, timestamp, four headers), mandatory, confirms pipelined with a
/// window of 2,000 (walrelay's default), to a durable classic queue. The properties matter:
/// RabbitMQ accepts bare messages ~25% faster, which is not a rate any relay sending
/// walrelay's messages could reach.
pub(crate) async fn broker_limit(n: u64, size: usize) -> f64 {
    broker_limit_on(n, size, false, true).await
}

/// The broker limit on a durable classic queue, or on a quorum queue, with walrelay's
/// properties (`shaped`) or only `delivery_mode`.
pub(crate) async fn broker_limit_on(n: u64, size: usize, quorum: bool, shaped: bool) -> f64 {
    let exchange = unique("limit");
    let args = if quorum {
        queue_args(&[("x-queue-type", text("quorum"))])
    } else {
        FieldTable::new()
    };
    let queue = TestQueue::on(amqp_url(), &exchange, Some("#"), args).await;
    // The same client and confirm window walrelay uses, with nothing else around it.
    let url = walrelay::sink::AmqpUrl::parse(amqp_url()).unwrap();
    let (link, mut signals) = walrelay::sink::Link::open(&url, "limit", TIMEOUT)
        .await
        .unwrap();
    let ch = link.confirm_channel().await.unwrap();
    let body = vec![b'x'; size.max(1)];
    let args = BasicPublishArguments::new(&exchange, "public.orders.insert")
        .mandatory(true)
        .finish();
    let (_, secs) = timed(async {
        let mut window: ConfirmWindow<()> = ConfirmWindow::new(2000);
        let mut settle = async |window: &mut ConfirmWindow<()>| {
            match signals.recv().await.unwrap() {
                Signal::Ack { tag, multiple } => window.ack(tag, multiple).unwrap(),
                other => panic!("the broker refused a message: {other:?}"),
            }
            while window.pop_settled().is_some() {}
        };
        for i in 0..n {
            while window.len() >= 2000 {
                settle(&mut window).await;
            }
            let props = if shaped {
                shaped_properties(i)
            } else {
                BasicProperties::default().with_persistence(true).finish()
            };
            ch.basic_publish(props, body.clone(), args.clone())
                .await
                .unwrap();
            window.push(());
        }
        while !window.is_empty() {
            settle(&mut window).await;
        }
    })
    .await;
    link.close().await;
    queue.delete().await;
    secs
}

/// The Python peer on a copy of the slot, for at most 30 s: (events, seconds).
pub(crate) async fn python_peer(
    env: &Env,
    _c: &tokio_postgres::Client,
    b: &Backlog,
) -> Option<(u64, f64)> {
    let python = env.python.as_ref()?;
    let exchange = unique("peer");
    let queue = TestQueue::new(&exchange, Some("#")).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/peer/relay.py");
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres dbname=bench",
        env.port
    );
    let out = Command::new(python)
        .args([
            script,
            &dsn,
            &format!("peer_{}", b.i),
            &format!("pub_{}", b.i),
            amqp_url(),
            &exchange,
        ])
        .args([&b.events.max(1).to_string(), "30"])
        .output()
        .unwrap();
    queue.delete().await;
    if !out.status.success() {
        eprintln!(
            "python peer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// `2026-11-22T03:35:50.822039+00:00` → µs since the Unix epoch.
pub(crate) fn parse_commit_time(s: &str) -> Option<i64> {
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, dd) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let time = rest.strip_suffix("+00:00")?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>());
    let (h, mi, se) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let micros: i64 = format!("{frac:0<6}")[..6].parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + se) * 1_000_000) + micros)
}

/// Commit-to-consumer latency percentiles (ms) under `pgbench -R rate` for 20 s.
#[derive(Debug, Default, Clone)]
pub(crate) struct Latency {
    pub rate: u32,
    pub achieved_tps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub samples: usize,
    pub catchup_after_secs: f64,
    pub idle_rss_kib: u64,
    /// walrelay's own share, from its `walrelay_commit_confirm_seconds` histogram over the
    /// run: the upper bounds (ms) of the buckets holding the median and the 99th percentile
    /// of commit → broker confirm. What the consumer measures beyond that is the broker
    /// handing the message on and the consumer reading it. `None` where not read.
    pub relay_confirm_p50_p99_ms: Option<(f64, f64)>,
}

pub(crate) async fn live_latency(env: &Env, c: &tokio_postgres::Client) -> Vec<Latency> {
    c.batch_execute("CREATE PUBLICATION pub_live FOR TABLE orders")
        .await
        .unwrap();
    let exchange = unique("live");
    let queue = TestQueue::new(&exchange, Some("#")).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &env.url,
        amqp_url(),
        "live",
        &exchange,
        &["public.orders"],
        "",
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("publication = \"live\"", "publication = \"pub_live\"");
    std::fs::write(&cfg, text).unwrap();
    let relay = Relay::start(&cfg);
    relay.wait_log("streaming", TIMEOUT).await;
    let consumer_link = connect_amqp(amqp_url(), "bench consumer").await;
    let ch = consumer_link.channel().await.unwrap();
    let (_, mut consumer) = ch
        .basic_consume_rx(
            BasicConsumeArguments::new(&queue.queue, "bench")
                .auto_ack(true)
                .finish(),
        )
        .await
        .unwrap();
    let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let sink = std::sync::Arc::clone(&samples);
    let task = tokio::spawn(async move {
        while let Some(d) = consumer.recv().await {
            let Some(data) = d.content else { continue };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros() as i64;
            let v: serde_json::Value = serde_json::from_slice(&data).unwrap();
            if let Some(t) = v["commit_time"].as_str().and_then(parse_commit_time) {
                sink.lock().unwrap().push(now - t);
            }
        }
    });
    let mut out = Vec::new();
    for rate in [2000u32, 5000] {
        out.push(latency_at(env, c, "live", rate, &samples).await);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let Some(l) = out.last_mut() {
        l.idle_rss_kib = proc_status(relay.child.id(), "VmRSS:");
    }
    task.abort();
    consumer_link.close().await;
    drop(relay);
    queue.delete().await;
    out
}

/// One pgbench run of single-row transactions at `rate` tx/s for 20 s, with a consumer
/// pushing commit→consume latencies (µs) into `samples`; waits until `slot` is confirmed past
/// the run. `idle_rss_kib` is left 0 for the caller.
pub(crate) async fn latency_at(
    env: &Env,
    c: &tokio_postgres::Client,
    slot: &str,
    rate: u32,
    samples: &std::sync::Mutex<Vec<i64>>,
) -> Latency {
    samples.lock().unwrap().clear();
    let start = Instant::now();
    pgbench(
        env,
        &[
            "-c",
            "4",
            "-j",
            "2",
            "-R",
            &rate.to_string(),
            "-T",
            "20",
            "-f",
            "single.sql",
        ],
    );
    let bench_secs = start.elapsed().as_secs_f64();
    let end = current_lsn(c).await;
    let caught = Instant::now();
    while slot_confirmed(c, slot).await < end && caught.elapsed() < TIMEOUT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let catchup = caught.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut v = samples.lock().unwrap().clone();
    v.sort_unstable();
    let pct = |p: f64| {
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    Latency {
        rate,
        achieved_tps: v.len() as f64 / bench_secs,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: v.last().copied().unwrap_or(0) as f64 / 1000.0,
        samples: v.len(),
        catchup_after_secs: catchup,
        idle_rss_kib: 0,
        relay_confirm_p50_p99_ms: None,
    }
}

pub(crate) struct Row {
    pub name: String,
    pub events: u64,
    pub decode: f64,
    pub broker: f64,
    pub relay: RelayRun,
    pub peer: Option<(u64, f64)>,
}

pub(crate) fn print_report(rows: &[Row], batched: &RelayRun, batch_decode: f64, lat: &[Latency]) {
    println!("\n## Catch-up throughput (events/s)\n");
    println!(
        "| backlog | events | decode limit | broker limit | walrelay | walrelay / min(limits) | Python peer | walrelay CPU µs/event | peak RSS MiB |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in rows {
        let events = r.relay.events.max(r.events);
        let rate = |s: f64| events as f64 / s;
        let limit = rate(r.decode).min(rate(r.broker));
        let peer = r
            .peer
            .map_or("-".to_owned(), |(n, s)| format!("{:.0}", n as f64 / s));
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {} | {:.1} | {:.1} |",
            r.name,
            events,
            rate(r.decode),
            rate(r.broker),
            rate(r.relay.secs),
            rate(r.relay.secs) / limit,
            peer,
            r.relay.cpu_secs / events as f64 * 1e6,
            r.relay.peak_rss_kib as f64 / 1024.0
        );
    }
    let e = batched.events as f64;
    println!(
        "\nBatch mode (100 events per message), backlog (a) shape: {} events in {} messages, {:.0} events/s ({:.2}x the decode limit {:.0}/s), CPU {:.1} µs/event, peak RSS {:.1} MiB",
        batched.events,
        batched.messages,
        e / batched.secs,
        (e / batched.secs) / (e / batch_decode),
        e / batch_decode,
        batched.cpu_secs / e * 1e6,
        batched.peak_rss_kib as f64 / 1024.0
    );
    println!("\n## Live latency, commit → consumer (pgbench, 4 clients, 20 s)\n");
    println!(
        "| target tx/s | achieved events/s | p50 ms | p99 ms | max ms | samples | slot caught up after s |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for l in lat {
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {:.2} |",
            l.rate, l.achieved_tps, l.p50_ms, l.p99_ms, l.max_ms, l.samples, l.catchup_after_secs
        );
    }
    if let Some(l) = lat.last() {
        println!(
            "\nIdle RSS after the live runs: {:.1} MiB",
            l.idle_rss_kib as f64 / 1024.0
        );
    }
    if let Some(r) = rows.first() {
        println!(
            "Idle RSS after the 1M-row catch-up: {:.1} MiB",
            r.relay.idle_rss_kib as f64 / 1024.0
        );
    }
}

/// Properties shaped like walrelay's: a message id, content type, timestamp and four headers.
fn shaped_properties(i: u64) -> BasicProperties {
    let mut headers = FieldTable::new();
    for (k, v) in [
        ("op", "insert"),
        ("schema", "public"),
        ("table", "orders"),
        ("commit_lsn", "0/1D87870"),
    ] {
        headers.insert(k.try_into().unwrap(), text(v));
    }
    BasicProperties::default()
        .with_persistence(true)
        .with_message_id(&format!("0/1D87870-{i}"))
        .with_content_type("application/json")
        .with_timestamp(1_700_000_000)
        .with_headers(headers)
        .finish()
}
