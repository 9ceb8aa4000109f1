//! The stream sink against RabbitMQ 4 (`scripts/rabbitmq4.sh`, started by the test command):
//! walrelay publishes to a stream over the stream protocol; a consumer reads it from offset
//! `first`. Content and properties, and the Jepsen-style checker under `kill -9`: nothing
//! lost, and no duplicates at all, because the broker drops the replays (publishing ids).

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::checker::{self, History, Monitor};
use common::scene::Scene;
use common::stream::*;
use common::*;

const T: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_reach_the_stream_in_order_with_their_properties() {
    let s = Scene::stream(
        "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, v text);",
        &["public.a", "public.b"],
        "",
    )
    .await;
    let (client, slot, stream, cfg) = (&s.client, &s.slot, s.stream_name(), &s.config);
    let relay = Relay::start(cfg);
    relay.wait_log("streaming", T).await;
    client
        .batch_execute(
            "BEGIN; INSERT INTO a VALUES (1, 'x'); INSERT INTO b VALUES (1, 'y'); COMMIT;
             UPDATE a SET v = 'z' WHERE id = 1; DELETE FROM b WHERE id = 1; TRUNCATE a;",
        )
        .await
        .unwrap();
    let end = current_lsn(client).await;
    let got = read_at_least(stream, 5).await;
    let env = env().await;
    let seen: Vec<(String, String)> = got
        .iter()
        .map(|(_, m)| {
            (
                body(m)["op"].as_str().unwrap().to_owned(),
                body(m)["table"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want = [
        ("insert", "a"),
        ("insert", "b"),
        ("update", "a"),
        ("delete", "b"),
        ("truncate", "a"),
    ];
    assert_eq!(
        seen,
        want.map(|(o, t)| (o.to_owned(), t.to_owned())),
        "one message per change, in commit order"
    );
    for (_, m) in &got {
        let b = body(m);
        let props = m.properties().expect("AMQP 1.0 properties");
        assert!(
            format!("{:?}", props.content_type).contains("application/json"),
            "{props:?}"
        );
        assert!(
            format!("{:?}", props.message_id).contains(b["id"].as_str().unwrap()),
            "{props:?}"
        );
        assert!(props.creation_time.is_some(), "the commit time");
        assert_eq!(app_property(m, "op").as_deref(), b["op"].as_str());
        assert_eq!(app_property(m, "table").as_deref(), b["table"].as_str());
        assert_eq!(
            app_property(m, "commit_lsn").as_deref(),
            b["commit_lsn"].as_str()
        );
        let key = app_property(m, "routing_key").unwrap();
        assert_eq!(
            key,
            format!(
                "public.{}.{}",
                b["table"].as_str().unwrap(),
                b["op"].as_str().unwrap()
            )
        );
    }
    // The slot moves past what the stream confirmed.
    wait_for("the slot past the last change", T, || async {
        (slot_confirmed(client, slot).await >= end).then_some(())
    })
    .await;
    // The doctor checks the stream side instead of exchanges; `tail` says it cannot read it.
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_walrelay"))
            .args(args)
            .arg("--config")
            .arg(cfg)
            .env_remove("AMQP_URL")
            .env_remove("WALRELAY_TEST_AMQP_URL")
            .output()
            .unwrap()
    };
    let doctor = run(&["doctor"]);
    let report = String::from_utf8_lossy(&doctor.stdout).to_string();
    assert!(
        report.contains("ok   stream: connected to 127.0.0.1:5553"),
        "{report}"
    );
    assert!(
        report.contains(&format!("ok   stream: stream {stream:?} exists")),
        "{report}"
    );
    assert!(
        !report.contains("rabbitmq:"),
        "no AMQP checks with [stream]: {report}"
    );
    // `tail` reads the stream from an offset: `first`, a number, a time, `next`.
    let lines = |args: &[&str]| {
        let out = run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split_once(' ').unwrap().0.to_owned())
            .collect::<Vec<_>>()
    };
    let keys = [
        "public.a.insert",
        "public.b.insert",
        "public.a.update",
        "public.b.delete",
        "public.a.truncate",
    ];
    assert_eq!(
        lines(&["tail", "--offset", "first", "--idle-timeout-secs", "2"]),
        keys,
        "every message from the first, with its routing key"
    );
    assert_eq!(
        lines(&["tail", "--offset", "3", "--count", "2"]),
        keys[3..],
        "from offset 3"
    );
    assert_eq!(
        lines(&["tail", "--offset", "2000-01-01T00:00:00Z", "--count", "5"]),
        keys,
        "from a time before the stream"
    );
    assert!(
        lines(&["tail", "--offset", "next", "--idle-timeout-secs", "1"]).is_empty(),
        "nothing new after the end"
    );
    for bad in [
        &["tail", "--queue", "q"][..],
        &["tail", "--offset", "yesterday"][..],
    ] {
        let out = run(bad);
        assert!(!out.status.success(), "{bad:?} accepted");
        assert!(!out.stderr.is_empty());
    }
    let _ = env.delete_stream(stream).await;
    drop(relay);
}

#[test]
fn a_stream_config_refuses_the_amqp_only_keys_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = stream_config(
        dir.path(),
        "postgresql://u@127.0.0.1:1/db",
        "s",
        "st",
        &["public.a"],
    );
    let check = |extra: &str, key: &str| {
        let mut text = std::fs::read_to_string(&cfg).unwrap();
        text = text.replace("[rabbitmq]\n", &format!("[rabbitmq]\n{extra}\n"));
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_walrelay"))
            .args(["check-config", "--config"])
            .arg(&path)
            .env_remove("AMQP_URL")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{extra}: accepted");
        assert!(err.contains(&format!("config key {key}")), "{extra}: {err}");
    };
    check("url = \"amqp://h\"", "rabbitmq.url");
    check("exchange = \"x\"", "rabbitmq.exchange");
}

/// What RabbitMQ 4's management API answers at `path` (after `/api/`).
fn management(path: &str) -> serde_json::Value {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-f", "-u", "guest:guest"])
        .arg(format!("http://127.0.0.1:15673/api/{path}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The arguments RabbitMQ 4's management API shows for `stream`.
fn stream_arguments(stream: &str) -> serde_json::Value {
    management(&format!("queues/%2f/{stream}"))["arguments"].clone()
}

/// Over `rabbitmq-stream+tls://` with the test CA of `scripts/rabbitmq4.sh` (its stream TLS
/// listener on 5554 serves a certificate for localhost): walrelay's connections, the
/// publishing one included, are TLS with the certificate checked, and the changes arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_reach_the_stream_over_tls() {
    let ca = common::stream::rabbitmq4_ca();
    let s = Scene::stream("CREATE TABLE a (id int PRIMARY KEY)", &["public.a"], "").await;
    let (client, _slot, stream, cfg) = (&s.client, &s.slot, s.stream_name(), &s.config);
    s.use_stream_url(&format!(
        "rabbitmq-stream+tls://guest:guest@localhost:5554/%2f?cacertfile={ca}"
    ));
    let relay = Relay::start(cfg);
    relay.wait_log("streaming", T).await;
    client
        .batch_execute("INSERT INTO a VALUES (1), (2); DELETE FROM a WHERE id = 1;")
        .await
        .unwrap();
    let got = read_at_least(stream, 3).await;
    let ops: Vec<String> = got
        .iter()
        .map(|(_, m)| body(m)["op"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ops, ["insert", "insert", "delete"]);
    // Every connection walrelay holds on the TLS port is TLS: the queries' one and the
    // publishing one (the management API lists connections some seconds after they open).
    let on_tls_port = |connections: &serde_json::Value| -> Vec<serde_json::Value> {
        connections
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| {
                c["client_properties"]["connection_name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("walrelay"))
                    && c["port"] == 5554
            })
            .cloned()
            .collect()
    };
    let connections = wait_for(
        "walrelay's connections in the management API",
        T,
        || async move {
            let all = management("stream/connections");
            (on_tls_port(&all).len() >= 2).then_some(all)
        },
    )
    .await;
    let ours = on_tls_port(&connections);
    assert!(
        ours.iter().all(|c| c["ssl"] == true),
        "not TLS: {connections}"
    );
    assert!(
        ours.iter()
            .any(|c| c["client_properties"]["product"] == "walrelay"),
        "the publishing connection (walrelay's own) is among them: {connections}"
    );
    drop(relay);
    let _ = env().await.delete_stream(stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_walrelay_creates_has_the_configured_retention() {
    let s = Scene::stream(
        "CREATE TABLE a (id int PRIMARY KEY)",
        &["public.a"],
        "max_length_bytes = 50000000\nmax_segment_bytes = 10000000",
    )
    .await;
    let (stream, cfg) = (s.stream_name(), &s.config);
    let relay = Relay::start(cfg);
    relay.wait_log("streaming", T).await;
    let args = stream_arguments(stream);
    assert_eq!(args["x-queue-type"], "stream", "{args}");
    assert_eq!(args["x-max-length-bytes"], 50_000_000, "{args}");
    assert_eq!(
        args["x-stream-max-segment-size-bytes"], 10_000_000,
        "{args}"
    );
    assert_eq!(args["x-max-age"], "3600s", "{args}");
    assert_eq!(args["x-queue-leader-locator"], "least-leaders", "{args}");
    drop(relay);
    let _ = env().await.delete_stream(stream).await;
}

/// A stream someone declared before walrelay, with other arguments (another leader locator
/// and retention): with `stream.create = true` walrelay uses it as it is and says so, instead
/// of retrying its own declaration forever (issue 31); changes arrive; its arguments stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_existing_stream_with_other_arguments_is_used_as_it_is() {
    let s = Scene::stream("CREATE TABLE a (id int PRIMARY KEY)", &["public.a"], "").await;
    let (client, stream, cfg) = (&s.client, s.stream_name(), &s.config);
    env()
        .await
        .stream_creator()
        .leader_locator(rabbitmq_stream_client::types::LeaderLocator::ClientLocal)
        .max_age(std::time::Duration::from_secs(7200))
        .create(stream)
        .await
        .unwrap();
    let relay = Relay::start(cfg);
    relay.wait_log("streaming", T).await;
    assert!(
        relay
            .log()
            .contains("exists with other arguments than walrelay would create it with"),
        "{}",
        relay.log()
    );
    client
        .batch_execute("INSERT INTO a VALUES (1)")
        .await
        .unwrap();
    assert_eq!(ids_settled(stream, 1).await, [1]);
    let args = stream_arguments(stream);
    assert_eq!(args["x-queue-leader-locator"], "client-local", "{args}");
    assert_eq!(args["x-max-age"], "7200s", "{args}");
    drop(relay);
    let _ = env().await.delete_stream(stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_stream_loses_nothing_and_the_consumer_sees_no_duplicate() {
    // The chaos bed's cluster, schema and second database.
    let bed = common::bed::Bed::stream(false).await;
    let (client, slot, stream, cfg) = (
        &bed.client,
        bed.slot.clone(),
        bed.stream_name().to_owned(),
        &bed.config,
    );
    let mut relay = Relay::start(cfg);
    relay.wait_log("streaming", T).await;
    let monitor = Monitor::start(bed.url.clone(), slot.clone());
    let (stop, history) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Mutex::new(History::default())),
    );
    let writers = tokio::spawn(checker::workload(
        bed.url.clone(),
        bed.other_url.clone(),
        4,
        Arc::clone(&stop),
        Arc::clone(&history),
    ));
    let (deliveries, consumer_stop) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(AtomicBool::new(false)),
    );
    let env = env().await;
    let consumer = tokio::spawn(consume_changes(
        env.clone(),
        stream.clone(),
        Arc::clone(&deliveries),
        Arc::clone(&consumer_stop),
    ));
    let kills = 5;
    let mut replays = 0.0;
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..kills {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(200 + seed % 800)).await;
        replays += replays_of(&relay).await;
        relay.kill9();
        relay = Relay::start(cfg);
        relay.wait_log("streaming", T).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    replays += replays_of(&relay).await;
    stop.store(true, Ordering::Relaxed);
    writers.await.unwrap();
    let end = current_lsn(client).await;
    wait_for("the slot past the workload", T, || async {
        (slot_confirmed(client, &slot).await >= end).then_some(())
    })
    .await;
    // Everything confirmed is in the stream; give the consumer time to read it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    consumer_stop.store(true, Ordering::Relaxed);
    consumer.await.unwrap();
    let (max, backwards) = monitor.stop().await;
    let h = std::mem::take(&mut *history.lock().unwrap());
    let d = std::mem::take(&mut *deliveries.lock().unwrap());
    let v = checker::check(&h, &d, max, backwards);
    common::bed::report("stream kill -9", &v, kills);
    eprintln!("chaos: stream kill -9: replays_dropped_by_the_broker={replays}");
    v.assert_safe();
    assert!(v.committed > 100, "{v:?}");
    assert_eq!(v.duplicated, 0, "the broker dropped every replay: {v:?}");
    // The kills land between a publish and its status update (every 200 ms), so sessions
    // re-send what the broker has: the case the deduplication is for.
    assert!(
        replays > 0.0,
        "no session re-sent anything: the test proved nothing"
    );
    let _ = env.delete_stream(&stream).await;
    drop(relay);
}

/// Large rows: a backlog of 1,000 rows of 33 kB in one transaction and a 900 kB row reach the
/// stream in one session. walrelay fills each publish frame up to the broker's 1 MiB
/// `frame_max` and no further (the client library's own producer packs messages without a
/// size check).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_large_rows_respects_the_frame_limit() {
    let s = Scene::stream(
        "CREATE TABLE big (id int PRIMARY KEY, v text)",
        &["public.big"],
        "",
    )
    .await;
    let (client, slot, stream, cfg) = (&s.client, &s.slot, s.stream_name(), &s.config);
    // A backlog (walrelay stopped while it is written), so the publishes queue up.
    let mut relay = Relay::start(cfg);
    relay.wait_log("streaming", T).await;
    relay.terminate(T);
    client
        .batch_execute(
            "INSERT INTO big SELECT g, repeat(md5(g::text), 1000) FROM generate_series(1, 1000) g;
             INSERT INTO big VALUES (0, repeat('x', 900000));",
        )
        .await
        .unwrap();
    let relay = Relay::start(cfg);
    let end = current_lsn(client).await;
    wait_for("the slot past the large rows", T, || async {
        (slot_confirmed(client, slot).await >= end).then_some(())
    })
    .await;
    let got = read_at_least(stream, 1001).await;
    let env = env().await;
    assert_eq!(got.len(), 1001);
    let sizes: Vec<usize> = got.iter().map(|(_, m)| m.data().unwrap().len()).collect();
    assert!(
        sizes[..1000].iter().all(|n| *n > 32_000),
        "{:?}",
        &sizes[..3]
    );
    assert!(sizes[1000] > 900_000, "{}", sizes[1000]);
    // One session did it all: no frame made the broker close the connection.
    assert!(
        !relay.log().contains("session ended"),
        "a session failed: {}",
        relay.log()
    );
    let _ = env.delete_stream(stream).await;
}

/// Batch mode on a stream: a transaction's events travel as JSON arrays of up to
/// `batch_max_events`, each message saying how many events it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_mode_sends_arrays_to_the_stream() {
    let s = Scene::stream(
        "CREATE TABLE a (id int PRIMARY KEY, v text)",
        &["public.a"],
        "",
    )
    .await;
    let (client, _slot, stream, cfg) = (&s.client, &s.slot, s.stream_name(), &s.config);
    config_set(cfg, "rabbitmq", "batch_max_events", "10");
    let relay = Relay::start(cfg);
    relay.wait_log("streaming", T).await;
    client
        .batch_execute("INSERT INTO a SELECT g, 'v' FROM generate_series(1, 25) g")
        .await
        .unwrap();
    let got = read_at_least(stream, 3).await;
    let env = env().await;
    let sizes: Vec<usize> = got
        .iter()
        .map(|(_, m)| body(m).as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [10, 10, 5], "arrays of up to 10, in order");
    let counts: Vec<Option<String>> = got.iter().map(|(_, m)| app_property(m, "batch")).collect();
    assert!(counts.iter().all(Option::is_some), "{counts:?}");
    let ids: Vec<i64> = got
        .iter()
        .flat_map(|(_, m)| body(m).as_array().unwrap().clone())
        .map(|e| e["key"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, (1..=25).collect::<Vec<_>>());
    drop(relay);
    let _ = env.delete_stream(stream).await;
}
