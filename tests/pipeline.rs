//! End-to-end tests against a real PostgreSQL (a private cluster per test) and the local
//! RabbitMQ: content, routing keys, order, ids, and the slot position.

use crate::common;

use std::time::Duration;

use common::scene::{Consumer, Scene, Setup};
use common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_every_operation_in_commit_order_and_advances_the_slot() {
    let s = Scene::with(
        "CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric(10,2));
             CREATE TABLE users (id bigint PRIMARY KEY, email text);",
        &["public.orders", "public.users"],
        Setup {
            consumer: Consumer::Bound("public.#"),
            ..Setup::default()
        },
    )
    .await;
    let (client, queue, slot, cfg) = (&s.client, s.queue(), &s.slot, s.config.clone());
    let relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;

    client
        .batch_execute("INSERT INTO orders VALUES (1, 'new', 10.50), (2, 'new', 3.00)")
        .await
        .unwrap();
    client.batch_execute("BEGIN; UPDATE orders SET status = 'paid' WHERE id = 1; INSERT INTO users VALUES (7, 'a@b.c'); COMMIT").await.unwrap();
    client
        .batch_execute("UPDATE orders SET id = 3 WHERE id = 2")
        .await
        .unwrap();
    client
        .batch_execute("DELETE FROM users WHERE id = 7")
        .await
        .unwrap();
    client.batch_execute("TRUNCATE users").await.unwrap();
    let after = current_lsn(client).await;

    let got = queue.take(7, T).await;
    let ops: Vec<(String, String)> = got
        .iter()
        .map(|m| {
            (
                m.routing_key.clone(),
                m.body["op"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        ops,
        vec![
            ("public.orders.insert".into(), "insert".into()),
            ("public.orders.insert".into(), "insert".into()),
            ("public.orders.update".into(), "update".into()),
            ("public.users.insert".into(), "insert".into()),
            ("public.orders.update".into(), "update".into()),
            ("public.users.delete".into(), "delete".into()),
            ("public.users.truncate".into(), "truncate".into()),
        ]
    );
    let expected: serde_json::Value =
        serde_json::from_str(r#"{"id": 1, "status": "new", "total": 10.50}"#).unwrap();
    assert_eq!(got[0].body["new"], expected);
    assert_eq!(
        got[0].body["new"]["total"].to_string(),
        "10.50",
        "numeric keeps its digits"
    );
    assert_eq!(got[0].body["key"], json!({"id": 1}));
    assert_eq!(got[2].body["new"]["status"], "paid");
    assert_eq!(got[2].body["old"], json!({"id": 1}));
    assert_eq!(
        got[4].body["key"],
        json!({"id": 2}),
        "a key change reports the old key"
    );
    assert_eq!(got[4].body["new"]["id"], 3);
    assert_eq!(got[5].body["old"], json!({"id": 7}));
    assert_eq!(got[5].body["new"], serde_json::Value::Null);
    // Ids: commit LSN and index; the two changes of the second transaction share the LSN.
    let lsn_of = |m: &Received| m.message_id.split(':').next().unwrap().to_owned();
    assert_eq!(got[0].message_id, format!("{}:0", lsn_of(&got[0])));
    assert_eq!(got[1].message_id, format!("{}:1", lsn_of(&got[0])));
    assert_eq!(lsn_of(&got[2]), lsn_of(&got[3]));
    assert_eq!(got[3].message_id, format!("{}:1", lsn_of(&got[2])));
    for m in &got {
        assert_eq!(m.body["id"], m.message_id.as_str());
        assert_eq!(m.properties.delivery_mode(), Some(2));
        assert_eq!(
            m.properties.content_type().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(m.body["commit_lsn"].as_str().unwrap(), lsn_of(m));
        assert!(m.body["commit_time"].as_str().unwrap().ends_with("+00:00"));
        assert!(m.body["xid"].is_u64());
    }
    // The slot moves past everything once confirmed (idle keepalives carry it to the WAL end).
    wait_for("slot to pass the last commit", T, || async {
        (slot_confirmed(client, slot).await >= after).then_some(())
    })
    .await;
    assert!(
        queue.drain(Duration::from_millis(500)).await.is_empty(),
        "no extra messages"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_is_marked_not_nulled_and_full_identity_sends_old_rows() {
    let s = Scene::with(
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
             ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
             CREATE TABLE audit (id int, note text);
             ALTER TABLE audit REPLICA IDENTITY FULL;
             CREATE TABLE nokey (v int);",
        &["public.docs", "public.audit", "public.nokey"],
        Setup::default(),
    )
    .await;
    let (client, queue, cfg) = (&s.client, s.queue(), s.config.clone());
    let relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;

    let big: String = (0..20_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    client
        .execute("INSERT INTO docs VALUES (1, 't', $1)", &[&big])
        .await
        .unwrap();
    client
        .batch_execute("UPDATE docs SET title = 't2' WHERE id = 1")
        .await
        .unwrap();
    client
        .batch_execute(
            "INSERT INTO audit VALUES (1, 'x'); UPDATE audit SET note = 'y'; DELETE FROM audit",
        )
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO nokey VALUES (5)")
        .await
        .unwrap();

    let got = queue.take(6, T).await;
    assert_eq!(got[0].body["new"]["body"].as_str().unwrap().len(), 20_000);
    let upd = &got[1].body;
    assert_eq!(upd["op"], "update");
    assert_eq!(
        upd["new"],
        json!({"id": 1, "title": "t2"}),
        "unchanged TOAST column is left out, never null"
    );
    assert_eq!(upd["unchanged_toast"], json!(["body"]));
    assert_eq!(
        got[3].body["old"],
        json!({"id": 1, "note": "x"}),
        "FULL identity: whole old row on update"
    );
    assert_eq!(
        got[4].body["old"],
        json!({"id": 1, "note": "y"}),
        "FULL identity: whole old row on delete"
    );
    assert_eq!(
        got[5].body["key"],
        serde_json::Value::Null,
        "a table without a key has no key"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_mode_packs_a_transaction_into_arrays_and_never_spans_commits() {
    let s = Scene::with(
        "CREATE TABLE items (id int PRIMARY KEY)",
        &["public.items"],
        Setup::default(),
    )
    .await;
    let (client, queue, slot, cfg) = (&s.client, s.queue(), &s.slot, s.config.clone());
    config_set(&cfg, "rabbitmq", "batch_max_events", "4");
    let relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;
    client
        .batch_execute("INSERT INTO items SELECT g FROM generate_series(1, 10) g")
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO items VALUES (11)")
        .await
        .unwrap();
    client
        .batch_execute("BEGIN; UPDATE items SET id = id + 100 WHERE id <= 2; INSERT INTO items VALUES (12); COMMIT")
        .await
        .unwrap();
    let after = current_lsn(client).await;
    // 10 inserts -> 4 + 4 + 2; 1 insert alone; then 2 updates (a new routing key) and 1 insert.
    let got = queue.take(6, T).await;
    let sizes: Vec<usize> = got
        .iter()
        .map(|m| m.body.as_array().map_or(1, Vec::len))
        .collect();
    assert_eq!(sizes, [4, 4, 2, 1, 2, 1]);
    let first = &got[0];
    let events = first.body.as_array().unwrap();
    assert_eq!(
        first.message_id,
        format!("{}+4", events[0]["id"].as_str().unwrap())
    );
    let ids: Vec<i64> = got
        .iter()
        .take(3)
        .flat_map(|m| {
            m.body
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["key"]["id"].as_i64().unwrap())
        })
        .collect();
    assert_eq!(ids, (1..=10).collect::<Vec<_>>());
    assert!(got[3].body.is_object(), "a single event is sent as itself");
    assert_eq!(got[4].routing_key, "public.items.update");
    assert_eq!(first.header("batch").as_deref(), Some("4"));
    wait_for("slot past the batches", T, || async {
        (slot_confirmed(client, slot).await >= after).then_some(())
    })
    .await;
    s.finish().await;
}
