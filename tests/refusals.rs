//! When something refuses — the broker (nack, no route, a closed channel, a message too big) or
//! the slot (invalidated, recreated or advanced behind walrelay's back) — walrelay never skips
//! silently: it holds its position with a clear error, and recovers once the cause is fixed,
//! or stops with a message naming the problem when continuing would hide a gap.

use crate::common;

use std::time::Duration;

use common::scene::{Consumer, Scene, Setup};
use common::*;

const T: Duration = Duration::from_secs(90);

const SCHEMA: &str = "CREATE TABLE items (id int PRIMARY KEY, body text)";

/// A scene for `public.items` with neither exchange nor queue: each test makes the ones it
/// refuses with.
async fn scene(conf: &[&str]) -> Scene {
    let setup = Setup {
        conf,
        consumer: Consumer::Absent,
        ..Setup::default()
    };
    Scene::with(SCHEMA, &["public.items"], setup).await
}

/// The config for `public.items`; `rabbitmq` sets one `[rabbitmq]` key (`(key, value)`).
fn config(s: &Scene, rabbitmq: Option<(&str, &str)>, extra: &str) -> std::path::PathBuf {
    let cfg = s.rewrite(&["public.items"], extra);
    if let Some((key, value)) = rabbitmq {
        config_set(&cfg, "rabbitmq", key, value);
    }
    cfg
}

/// Inserts a row; returns the WAL position after its commit.
async fn insert(s: &Scene, id: i32) -> u64 {
    s.client
        .execute("INSERT INTO items VALUES ($1, 'x')", &[&id])
        .await
        .unwrap();
    s.lsn().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacks_from_a_full_queue_hold_the_slot_until_there_is_room() {
    let s = scene(&[]).await;
    // A bounded queue that rejects publishes when full.
    let args = queue_args(&[
        ("x-max-length", FieldValue::I(3)),
        ("x-overflow", text("reject-publish")),
    ]);
    let q = TestQueue::on(amqp_url(), &s.exchange, Some("#"), args).await;
    let relay = Relay::start(&config(&s, None, ""));
    relay.wait_log("streaming", T).await;
    let mut lsns = Vec::new();
    for id in 1..=6 {
        lsns.push(insert(&s, id).await);
    }
    relay.wait_log("nacked by the broker", T).await;
    // Three fit; the fourth is refused and everything from it on is held.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        s.confirmed().await < lsns[3],
        "the slot passed a nacked message"
    );
    let mut ids = std::collections::BTreeSet::new();
    while ids.len() < 6 {
        for m in q.drain(Duration::from_millis(300)).await {
            ids.insert(m.body["key"]["id"].as_i64().unwrap());
        }
        assert!(relay.log().len() < 50_000_000);
    }
    assert_eq!(ids.into_iter().collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
    let end = current_lsn(&s.client).await;
    wait_for("slot past everything", T, || async {
        (s.confirmed().await >= end).then_some(())
    })
    .await;
    q.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_deleted_mid_stream_holds_the_slot_until_it_is_back() {
    let s = scene(&[]).await;
    let q = TestQueue::new(&s.exchange, Some("public.items.*")).await;
    let relay = Relay::start(&config(&s, None, ""));
    relay.wait_log("streaming", T).await;
    insert(&s, 1).await;
    q.take(1, T).await;
    q.unbind("public.items.*").await;
    let held = insert(&s, 2).await;
    relay.wait_log("returned unroutable", T).await;
    let log = relay.log();
    assert!(
        log.contains("public.items.insert") && log.contains(&s.exchange),
        "the error names the route"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(s.confirmed().await < held);
    q.bind("public.items.*").await;
    let got = q.take(1, T).await;
    assert_eq!(got[0].body["key"]["id"], 2);
    wait_for("slot past the held change", T, || async {
        (s.confirmed().await >= held).then_some(())
    })
    .await;
    q.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_deleted_mid_stream_closes_the_channel_and_walrelay_recovers() {
    let s = scene(&[]).await;
    let q = TestQueue::new(&s.exchange, Some("#")).await;
    let relay = Relay::start(&config(&s, Some(("declare_exchange", "false")), ""));
    relay.wait_log("streaming", T).await;
    insert(&s, 1).await;
    q.take(1, T).await;
    q.delete_exchange().await;
    let held = insert(&s, 2).await;
    relay.wait_log("NOT_FOUND", T).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(s.confirmed().await < held);
    // The exchange back, the queue bound to it again; the same consumer reads on.
    q.declare_exchange().await;
    q.bind("#").await;
    let got = q.take(1, T).await;
    assert_eq!(got[0].body["key"]["id"], 2);
    q.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_row_stops_walrelay_naming_it_and_is_delivered_once_allowed() {
    let s = scene(&[]).await;
    let q = TestQueue::new(&s.exchange, Some("#")).await;
    let small = config(&s, Some(("max_message_bytes", "2048")), "");
    let mut relay = Relay::start(&small);
    relay.wait_log("streaming", T).await;
    insert(&s, 1).await;
    s.client
        .execute("INSERT INTO items VALUES (2, repeat('y', 10000))", &[])
        .await
        .unwrap();
    let held = current_lsn(&s.client).await;
    let status = relay.wait_exit(T).await;
    assert!(!status.success());
    let log = relay.log();
    assert!(
        log.contains("public.items") && log.contains("max_message_bytes") && log.contains("bytes"),
        "{log}"
    );
    assert!(
        s.confirmed().await < held,
        "the slot passed the oversized row"
    );
    assert_eq!(q.take(1, T).await[0].body["key"]["id"], 1);
    let big = config(&s, Some(("max_message_bytes", "1048576")), "");
    let relay = Relay::start(&big);
    relay.wait_log("streaming", T).await;
    // Row 1 may come again (at least once); row 2 must come, whole.
    let two = wait_for("the big row", T, || async {
        q.drain(Duration::from_millis(200))
            .await
            .into_iter()
            .find(|m| m.body["key"]["id"] == 2)
    })
    .await;
    assert_eq!(two.body["new"]["body"].as_str().unwrap().len(), 10000);
    q.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_stops_walrelay_with_a_specific_message() {
    let s = scene(&[
        "max_slot_wal_keep_size = 1MB",
        "max_wal_size = 32MB",
        "min_wal_size = 32MB",
    ])
    .await;
    let q = TestQueue::new(&s.exchange, Some("#")).await;
    let cfg = config(&s, None, "");
    let mut relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;
    relay.terminate(T);
    // Far more WAL than the slot may keep, then checkpoints: the slot is invalidated.
    for _ in 0..4 {
        s.client
            .batch_execute("INSERT INTO items SELECT g, repeat('z', 1000) FROM generate_series(1, 20000) g ON CONFLICT (id) DO UPDATE SET body = excluded.body || 'x'; CHECKPOINT; SELECT pg_switch_wal();")
            .await
            .unwrap();
    }
    assert_eq!(slot_wal_status(&s.client, &s.slot).await, "lost");
    let mut relay = Relay::start(&cfg);
    let exit = relay.wait_exit(T).await;
    assert!(!exit.success());
    assert!(
        relay.log().contains("is invalidated (wal_status = lost)"),
        "{}",
        relay.log()
    );
    q.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_recreated_or_advanced_while_walrelay_was_down_is_refused_with_the_position_file() {
    for how in ["recreated", "advanced"] {
        // Synchronous commit: the slot can only be advanced over WAL that is flushed.
        let s = scene(&["synchronous_commit = on"]).await;
        let q = TestQueue::new(&s.exchange, Some("#")).await;
        let state = s.dir.path().join("position");
        let cfg = config(&s, None, "");
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "[service]\n",
            &format!("[service]\nstate_file = {:?}\n", state.to_str().unwrap()),
        );
        std::fs::write(&cfg, text).unwrap();
        let mut relay = Relay::start(&cfg);
        relay.wait_log("streaming", T).await;
        insert(&s, 1).await;
        q.take(1, T).await;
        assert!(relay.terminate(T).unwrap().success());
        assert!(state.exists());
        // Changes walrelay never sees, then the slot moves past them behind its back.
        insert(&s, 2).await;
        match how {
            "recreated" => {
                s.client
                    .query("SELECT pg_drop_replication_slot($1)", &[&s.slot])
                    .await
                    .unwrap();
                s.client
                    .query(
                        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                        &[&s.slot],
                    )
                    .await
                    .unwrap();
            }
            _ => {
                s.client
                    .query(
                        "SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())",
                        &[&s.slot],
                    )
                    .await
                    .unwrap();
            }
        }
        let mut relay = Relay::start(&cfg);
        let exit = relay.wait_exit(T).await;
        assert!(!exit.success(), "{how}");
        let log = relay.log();
        assert!(
            log.contains("by someone else") && log.contains("never published"),
            "{how}: {log}"
        );
        assert!(q.drain(Duration::from_millis(300)).await.is_empty());
        q.delete().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_missing_from_an_existing_publication_stops_the_start_before_anything_is_created() {
    let s = scene(&[]).await;
    s.client
        .batch_execute(&format!(
            "CREATE TABLE other (id int PRIMARY KEY); CREATE PUBLICATION {} FOR TABLE other",
            s.slot
        ))
        .await
        .unwrap();
    let mut relay = Relay::start(&config(&s, None, ""));
    let exit = relay.wait_exit(T).await;
    assert!(!exit.success());
    let log = relay.log();
    assert!(
        log.contains("public.items") && log.contains("ALTER PUBLICATION"),
        "{log}"
    );
    let slots = s
        .client
        .query("SELECT 1 FROM pg_replication_slots", &[])
        .await
        .unwrap();
    assert!(slots.is_empty(), "no slot was created");
    drop(s.pg);
}
