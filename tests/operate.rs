//! Operating walrelay: metrics that move with the stream, health endpoints, readiness when the
//! broker is cut, the `status` and `doctor` commands against a real cluster, heartbeats, and a
//! hot standby taking over after `kill -9` with nothing lost. A canary password must never
//! appear in metrics, health output or logs.

use crate::common;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use common::proxy::Proxy;
use common::scene::{Consumer, Scene, Setup};
use common::*;

const T: Duration = Duration::from_secs(90);
const CANARY: &str = "canary-Pa55w0rd";

async fn scrape(port: u16) -> String {
    tokio::task::spawn_blocking(move || http_get(port, "/metrics").1)
        .await
        .unwrap()
}

async fn ready(port: u16) -> (u16, serde_json::Value) {
    probe(port, "/readyz").await
}

async fn probe(port: u16, path: &'static str) -> (u16, serde_json::Value) {
    let (code, body) = tokio::task::spawn_blocking(move || http_get(port, path))
        .await
        .unwrap();
    (code, serde_json::from_str(&body).unwrap())
}

/// A cluster whose `walrelay` role logs in with the canary password (SCRAM).
async fn cluster_with_password() -> (PgCluster, String, tokio_postgres::Client, String) {
    let (pg, db, client) = PgCluster::with_db(&format!(
        "CREATE ROLE walrelay LOGIN REPLICATION SUPERUSER PASSWORD '{CANARY}'"
    ))
    .await;
    pg.set_hba("host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 scram-sha-256\n");
    let url = pg
        .url(&db)
        .replacen("postgres@", &format!("walrelay:{CANARY}@"), 1);
    assert!(url.contains(CANARY), "{url}");
    (pg, db, client, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_stream_and_secrets_never_leak() {
    let (_pg, _db, client, url) = cluster_with_password().await;
    client
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let exchange = unique("ex");
    let queue = TestQueue::new(&exchange, Some("#")).await;
    let slot = unique("slot");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &url,
        amqp_url(),
        &slot,
        &exchange,
        &["public.items"],
        "[flood]\nmax_changes = 50\npolicy = \"skip\"\n",
    );
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg).unwrap().replace(
            "[service]\n",
            "[service]\nheartbeat_interval_ms = 300\nprobe_interval_ms = 300\n",
        ),
    )
    .unwrap();
    let relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;
    let port = relay.http_port().await;

    let before = scrape(port).await;
    assert_eq!(metric(&before, "walrelay_streaming"), 1.0, "{before}");
    assert!(
        before.contains("walrelay_build_info{version=\""),
        "{before}"
    );
    let ins = "walrelay_events_published_total{op=\"insert\",table=\"public.items\"}";
    assert_eq!(metric(&before, ins), 0.0);

    // Three transactions (a multi-statement simple query would be one).
    for sql in [
        "INSERT INTO items SELECT g, 'x' FROM generate_series(1, 20) g",
        "UPDATE items SET v = 'y' WHERE id <= 5",
        "INSERT INTO items SELECT g, 'bulk' FROM generate_series(100, 199) g",
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    queue.take(25, T).await;
    let lsn = current_lsn(&client).await;
    let after = wait_for("metrics to count the events", T, || async {
        let m = scrape(port).await;
        (metric(&m, ins) == 20.0 && metric(&m, "walrelay_confirmed_flush_lsn") >= lsn as f64)
            .then_some(m)
    })
    .await;
    let upd = "walrelay_events_published_total{op=\"update\",table=\"public.items\"}";
    assert_eq!(metric(&after, upd), 5.0, "{after}");
    assert!(metric(&after, "walrelay_bytes_published_total") > 25.0 * 100.0);
    assert_eq!(metric(&after, "walrelay_in_flight_messages"), 0.0);
    assert_eq!(
        metric(&after, "walrelay_publish_confirm_seconds_count"),
        25.0
    );
    assert_eq!(
        metric(&after, "walrelay_commit_confirm_seconds_count"),
        25.0
    );
    assert_eq!(
        metric(
            &after,
            "walrelay_flood_transactions_total{trigger=\"max_changes\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&after, "walrelay_flood_events_total{policy=\"skip\"}"),
        100.0
    );
    assert!(metric(&after, "walrelay_server_wal_end_lsn") >= lsn as f64);
    assert!(metric(&after, "walrelay_last_server_message_timestamp_seconds") > 1.7e9);
    // The probe samples retained WAL; the heartbeat comes back through the stream.
    let probed = wait_for("slot sample and heartbeat", T, || async {
        let m = scrape(port).await;
        (metric(&m, "walrelay_slot_retained_wal_bytes") > 0.0
            && metric(&m, "walrelay_heartbeat_round_trip_seconds") > 0.0)
            .then_some(m)
    })
    .await;
    assert!(metric(&probed, "walrelay_heartbeat_round_trip_seconds") < 30.0);
    // Heartbeats are never published.
    assert!(queue.drain(Duration::from_millis(800)).await.is_empty());

    let (code, body) = ready(port).await;
    assert_eq!(
        (code, &body["ready"]),
        (200, &serde_json::json!(true)),
        "{body}"
    );
    let (hcode, hbody) = tokio::task::spawn_blocking(move || http_get(port, "/healthz"))
        .await
        .unwrap();
    assert_eq!(hcode, 200);
    for (what, text) in [
        ("metrics", &probed),
        ("readyz", &body.to_string()),
        ("healthz", &hbody),
        ("log", &relay.log()),
    ] {
        assert!(
            !text.contains(CANARY),
            "the password leaked into the {what}"
        );
    }
    queue.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_flips_when_the_broker_is_cut_and_back() {
    let proxy = Proxy::start(&amqp_addr()).await;
    let amqp = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    let setup = Setup {
        amqp_url: &amqp,
        ..Setup::default()
    };
    let s = Scene::with(
        "CREATE TABLE items (id int PRIMARY KEY)",
        &["public.items"],
        setup,
    )
    .await;
    let (client, queue, cfg) = (&s.client, s.queue(), &s.config);
    let relay = Relay::start(cfg);
    relay.wait_log("streaming", T).await;
    let port = relay.http_port().await;
    wait_for("ready", T, || async {
        (ready(port).await.0 == 200).then_some(())
    })
    .await;

    proxy.set_down(true);
    let body = wait_for("not ready", T, || async {
        let (code, body) = ready(port).await;
        (code == 503).then_some(body)
    })
    .await;
    let reasons = body["reasons"].to_string();
    // A lost broker connection ends the session at once: between sessions the reason is the
    // retry's ("RabbitMQ is unavailable … reconnecting"), during one it is the state's.
    assert!(
        reasons.contains("not connected to RabbitMQ")
            || reasons.contains("RabbitMQ is unavailable"),
        "{body}"
    );
    // The container HEALTHCHECK command agrees.
    let url = format!("http://127.0.0.1:{port}/readyz");
    assert_eq!(walrelay(&["ready", "--url", &url]).status.code(), Some(1));
    assert_eq!(body["ready"], false);
    // Changes made meanwhile are delivered once the broker is back.
    client
        .batch_execute("INSERT INTO items VALUES (1)")
        .await
        .unwrap();
    proxy.set_down(false);
    wait_for("ready again", T, || async {
        (ready(port).await.0 == 200).then_some(())
    })
    .await;
    let got = queue.take(1, T).await;
    assert_eq!(got[0].body["new"]["id"], 1);
    assert_eq!(walrelay(&["ready", "--url", &url]).status.code(), Some(0));
    let m = scrape(port).await;
    assert!(
        metric(&m, "walrelay_reconnects_total{side=\"rabbitmq\"}") >= 1.0,
        "{m}"
    );
    s.finish().await;
}

fn walrelay(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("AMQP_URL")
        .env_remove("WALRELAY_TEST_AMQP_URL")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_finds_a_missing_binding_and_a_table_without_a_key_then_passes() {
    let setup = Setup {
        consumer: Consumer::Bound("public.orders.*"),
        ..Setup::default()
    };
    let s = Scene::with(
        "CREATE TABLE orders (id int PRIMARY KEY, note text);
             CREATE TABLE nopk (v int);",
        &["public.*"],
        setup,
    )
    .await;
    let (client, queue, slot, cfg) = (&s.client, s.queue(), &s.slot, &s.config);
    let cfg_s = cfg.to_str().unwrap();
    let out = walrelay(&["doctor", "--config", cfg_s]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("ok   postgres: wal_level is logical"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL postgres: public.nopk has no primary key")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL rabbitmq: messages for public.nopk.insert")),
        "{text}"
    );
    assert!(
        text.contains("public.orders: every routing key is bound"),
        "{text}"
    );
    // scripts/rabbitmq-matrix.sh runs this with quorum queues too (TEST_QUEUE_TYPE).
    let kind = std::env::var("TEST_QUEUE_TYPE").unwrap_or_else(|_| "classic".into());
    assert!(text.contains(&format!("durable {kind} queue")), "{text}");
    // Nothing was created.
    let pubs = client
        .query("SELECT 1 FROM pg_publication", &[])
        .await
        .unwrap();
    assert!(pubs.is_empty());

    queue.bind("public.nopk.#").await;
    client
        .batch_execute("ALTER TABLE nopk REPLICA IDENTITY FULL")
        .await
        .unwrap();
    let out = walrelay(&["doctor", "--config", cfg_s]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("FAIL"), "{text}");

    // failover_slot: refused before PostgreSQL 17, and on 17+ a warning until the primary
    // holds changes for its standby (synchronized_standby_slots).
    let out = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["doctor", "--config", cfg_s])
        .env("WALRELAY_POSTGRES_FAILOVER_SLOT", "true")
        .env_remove("WALRELAY_TEST_AMQP_URL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    if version < 170000 {
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(
            text.contains("FAIL postgres: postgres.failover_slot needs PostgreSQL 17"),
            "{text}"
        );
    } else {
        assert!(
            text.contains(
                "WARN postgres: failover_slot is set but synchronized_standby_slots is empty"
            ),
            "{text}"
        );
    }

    // status before the first start, and while streaming.
    let out = walrelay(&["status", "--config", cfg_s, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["slot"]["exists"], false, "{v}");
    let relay = Relay::start(cfg);
    relay.wait_log("streaming", T).await;
    client
        .batch_execute("INSERT INTO orders VALUES (1, 'x')")
        .await
        .unwrap();
    queue.take(1, T).await;
    let v = wait_for("status to show the active slot caught up", T, || async {
        let out = walrelay(&["status", "--config", cfg_s, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["slot"]["active"] == true && v["slot"]["lag_bytes"].as_i64()? < 1024).then_some(v)
    })
    .await;
    assert!(v["slot"]["active_pid"].as_i64().unwrap() > 0, "{v}");
    assert_eq!(v["slot"]["plugin"], "pgoutput");
    assert_eq!(v["slot"]["wal_status"], "reserved");
    assert!(v["slot"]["retained_wal_bytes"].as_i64().unwrap() >= 0);
    assert_eq!(
        v["publication"]["tables"],
        serde_json::json!(["public.nopk", "public.orders"])
    );
    let out = walrelay(&["status", "--config", cfg_s]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("confirmed_flush_lsn") && table.contains(slot.as_str()),
        "{table}"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_after_kill_9_and_nothing_is_lost() {
    let s = Scene::new("CREATE TABLE items (id int PRIMARY KEY)", &["public.items"]).await;
    let (queue, cfg) = (s.queue(), &s.config);
    config_set(cfg, "service", "standby_retry_ms", "300");
    let mut active = Relay::start(cfg);
    active.wait_log("streaming", T).await;
    let standby = Relay::start(cfg);
    standby.wait_log("waiting as standby", T).await;
    let sport = standby.http_port().await;
    // A standby is ready (healthy in its role), and /activez tells the roles apart.
    let (code, body) = ready(sport).await;
    assert_eq!(
        (code, body["role"].as_str()),
        (200, Some("standby")),
        "{body}"
    );
    let (code, body) = probe(sport, "/activez").await;
    assert_eq!(code, 503);
    assert!(body["reasons"].to_string().contains("standby"), "{body}");
    let aport = active.http_port().await;
    assert_eq!(probe(aport, "/activez").await.0, 200);
    assert_eq!(ready(aport).await.1["role"], "active");

    let writer = {
        let client = connect(&s.url()).await;
        tokio::spawn(async move {
            for i in 0..300 {
                client
                    .execute("INSERT INTO items VALUES ($1)", &[&i])
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    active.kill9();
    standby.wait_log("streaming", T).await;
    wait_for("the standby to become active", T, || async move {
        (probe(sport, "/activez").await.0 == 200).then_some(())
    })
    .await;
    writer.await.unwrap();
    let mut ids = HashSet::new();
    let mut received = 0;
    let start = std::time::Instant::now();
    while ids.len() < 300 {
        assert!(
            start.elapsed() < T,
            "only {} of 300 rows arrived",
            ids.len()
        );
        for m in queue.drain(Duration::from_millis(300)).await {
            received += 1;
            ids.insert(m.body["new"]["id"].as_i64().unwrap());
        }
    }
    assert_eq!(ids.len(), 300, "nothing lost");
    eprintln!("standby takeover: 300 rows, {received} deliveries");
    assert!(
        received - 300 <= 2000,
        "duplicates stay within the unconfirmed window"
    );
    s.finish().await;
}
