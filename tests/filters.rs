//! The filter stage and the flood guard against a real PostgreSQL and RabbitMQ: every filter
//! kind, every flood policy and trigger, bounded memory during a flood, and rules that cannot
//! apply stopping the start.

use crate::common;

use std::time::Duration;

use common::scene::Scene;
use common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_ops_columns_predicates_noops_and_routing() {
    let s = Scene::new(
        "CREATE TABLE orders (id int PRIMARY KEY, status text, card text, total int);
         ALTER TABLE orders REPLICA IDENTITY FULL;
         CREATE TABLE users (id int PRIMARY KEY, email text, password_hash text);
         CREATE TABLE audit_log (id int PRIMARY KEY, note text);
         CREATE SCHEMA other; CREATE TABLE other.things (id int PRIMARY KEY);",
        &[],
    )
    .await;
    let special = TestQueue::new(&unique("orders_ex"), Some("#")).await;
    let cfg = s.rewrite(
        &["public.*"],
        &format!(
            "exclude = [\"audit_*\"]
[[filter.table]]
name = \"public.orders\"
ops = [\"insert\", \"update\"]
ignore = [\"card\"]
where = \"new.status == 'paid' || old.status == 'paid'\"
skip_noop_updates = true
exchange = {:?}
routing_key = \"orders.{{op}}.{{key.id}}.p{{partition}}\"
partitions = 4
[[filter.table]]
name = \"users\"
columns = [\"id\", \"email\"]
",
            special.exchange
        ),
    );
    let relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;

    // The publication holds exactly the included tables.
    let published: Vec<String> = s
        .client
        .query(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1",
            &[&s.slot],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(published, ["public.orders", "public.users"]);

    s.sql(
        "INSERT INTO orders VALUES (1, 'open', '4111', 10), (2, 'paid', '4222', 20);
         UPDATE orders SET status = 'paid' WHERE id = 1;          -- published (now paid)
         UPDATE orders SET card = '4333' WHERE id = 1;            -- only an ignored column: no-op
         UPDATE orders SET total = 11 WHERE id = 1;               -- published
         DELETE FROM orders WHERE id = 2;                         -- op not published
         INSERT INTO users VALUES (7, 'a@b.c', 'secret-hash');
         INSERT INTO audit_log VALUES (1, 'x');
         INSERT INTO other.things VALUES (1);",
    )
    .await;
    let orders = special.take(3, T).await;
    let seen: Vec<(String, i64, String)> = orders
        .iter()
        .map(|m| {
            (
                m.body["op"].as_str().unwrap().to_owned(),
                m.body["key"]["id"].as_i64().unwrap(),
                m.body["new"]["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    // Insert of 1 ('open') fails the predicate, the card-only update is a no-op, the delete is
    // not a published op.
    assert_eq!(
        seen,
        [
            ("insert".to_owned(), 2, "paid".to_owned()),
            ("update".to_owned(), 1, "paid".to_owned()),
            ("update".to_owned(), 1, "paid".to_owned()),
        ]
    );
    let partition = |m: &Received| m.routing_key.rsplit('.').next().unwrap().to_owned();
    assert_eq!(
        orders[0].routing_key,
        format!("orders.insert.2.{}", partition(&orders[0]))
    );
    assert_eq!(
        orders[1].routing_key,
        format!("orders.update.1.{}", partition(&orders[1]))
    );
    assert_eq!(
        partition(&orders[1]),
        partition(&orders[2]),
        "same key, same partition"
    );
    for m in &orders {
        for image in ["new", "old", "key"] {
            assert!(
                m.body[image].get("card").is_none(),
                "ignored column leaked in {image}: {}",
                m.body
            );
        }
        let part: u32 = m.routing_key.rsplit('.').next().unwrap()[1..]
            .parse()
            .unwrap();
        assert!(part < 4);
    }
    assert_eq!(orders[2].body["new"]["total"], 11);
    assert_eq!(orders[1].body["old"]["status"], "open");

    let rest = s.queue().take(1, T).await;
    assert_eq!(rest[0].routing_key, "public.users.insert");
    assert_eq!(rest[0].body["new"], json!({"id": 7, "email": "a@b.c"}));
    assert!(!rest[0].body.to_string().contains("secret-hash"));
    assert!(s.queue().drain(Duration::from_millis(800)).await.is_empty());
    assert!(special.drain(Duration::from_millis(200)).await.is_empty());
    special.delete().await;
    s.finish().await;
}

/// Changes of `tx` as (op, id) pairs.
fn ops_ids(msgs: &[Received]) -> Vec<(String, i64)> {
    msgs.iter()
        .map(|m| {
            (
                m.body["op"].as_str().unwrap().to_owned(),
                m.body["key"]["id"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100k_row_update_flood_is_summarized_between_intact_transactions() {
    let s = Scene::new(
        "CREATE TABLE items (id int PRIMARY KEY, v int);
         INSERT INTO items SELECT g, 0 FROM generate_series(1, 100000) g;",
        &[],
    )
    .await;
    let cfg = s.rewrite(
        &["public.items"],
        "[flood]\nmax_changes = 1000\npolicy = \"summarize\"\n",
    );
    let relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;
    let pid = relay.child.id();

    s.sql("INSERT INTO items VALUES (-1, 1); UPDATE items SET v = 1 WHERE id = 1;")
        .await;
    s.sql("UPDATE items SET v = 2 WHERE id <= 10000").await;
    s.sql("INSERT INTO items VALUES (-2, 1)").await;
    let first = s.queue().take(4, T).await;
    let rss_after_10k = peak_rss_kib(pid);
    s.sql("UPDATE items SET v = 3").await;
    s.sql("BEGIN; INSERT INTO items VALUES (-3, 1); DELETE FROM items WHERE id = -1; COMMIT")
        .await;
    let after = current_lsn(&s.client).await;
    let second = s.queue().take(3, T).await;
    let rss_after_100k = peak_rss_kib(pid);

    let all: Vec<Received> = first.into_iter().chain(second).collect();
    assert_eq!(
        ops_ids(&all),
        [
            ("insert".to_owned(), -1),
            ("update".to_owned(), 1),
            ("bulk".to_owned(), -1),
            ("insert".to_owned(), -2),
            ("bulk".to_owned(), -1),
            ("insert".to_owned(), -3),
            ("delete".to_owned(), -1),
        ]
    );
    // -1 and -2 match both updates too.
    for (bulk, n) in [(&all[2], 10_001), (&all[4], 100_002)] {
        let b = &bulk.body["bulk"];
        assert_eq!(b["reason"], "max_changes");
        assert_eq!(b["counts"]["update"], n, "{b}");
        assert_eq!(b["total"], n);
        assert!(
            b["first_key"]["id"].is_i64() && b["last_key"]["id"].is_i64(),
            "{b}"
        );
        assert_eq!(bulk.routing_key, "public.items.bulk");
        assert!(bulk.message_id.ends_with(":0"), "first change's index");
    }
    // The slot moves past the summarized floods.
    wait_for("slot past the floods", T, || async {
        (slot_confirmed(&s.client, &s.slot).await >= after).then_some(())
    })
    .await;
    // Memory does not grow with the flood's size: at most max_changes events are held.
    let growth = rss_after_100k.saturating_sub(rss_after_10k);
    eprintln!(
        "peak RSS: {rss_after_10k} KiB after the 10k flood, {rss_after_100k} KiB after the 100k flood"
    );
    assert!(
        growth < 16 * 1024,
        "peak RSS grew by {growth} KiB from a 10k- to a 100k-row flood ({rss_after_10k} -> {rss_after_100k} KiB)"
    );
    assert!(relay.log().contains("flood transaction"));
    assert!(s.queue().drain(Duration::from_millis(500)).await.is_empty());
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markers_and_origins_make_floods_that_are_skipped_or_rerouted() {
    let s = Scene::new(
        "CREATE TABLE a (id int PRIMARY KEY);
         CREATE TABLE b (id int PRIMARY KEY);
         SELECT pg_replication_origin_create('loader');",
        &[],
    )
    .await;
    let slow = TestQueue::new(&unique("slow"), Some("bulk.#")).await;
    let cfg = s.rewrite(
        &["public.a", "public.b"],
        &format!(
            "[[filter.table]]\nname = \"public.b\"\nflood_policy = \"reroute\"\n\
             [flood]\nmarker_prefix = \"walrelay.bulk\"\norigins = [\"loader\"]\npolicy = \"skip\"\n\
             reroute_exchange = {:?}\nreroute_routing_prefix = \"bulk.\"\n",
            slow.exchange
        ),
    );
    let relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;

    s.sql(
        "BEGIN;
         SELECT pg_logical_emit_message(true, 'walrelay.bulk', 'backfill');
         INSERT INTO a VALUES (1), (2), (3);
         INSERT INTO b VALUES (1), (2);
         COMMIT;",
    )
    .await;
    s.sql(
        "SELECT pg_replication_origin_session_setup('loader');
         BEGIN; INSERT INTO a VALUES (4); INSERT INTO b VALUES (3); COMMIT;
         SELECT pg_replication_origin_session_reset();",
    )
    .await;
    // An unrelated message prefix and an ordinary transaction are not floods.
    s.sql(
        "BEGIN; SELECT pg_logical_emit_message(true, 'app', 'x'); INSERT INTO a VALUES (5); COMMIT;",
    )
    .await;
    let after = current_lsn(&s.client).await;

    let normal = s.queue().take(1, T).await;
    assert_eq!(ops_ids(&normal), [("insert".to_owned(), 5)]);
    let rerouted = slow.take(3, T).await;
    let keys: Vec<&str> = rerouted.iter().map(|m| m.routing_key.as_str()).collect();
    assert_eq!(keys, ["bulk.public.b.insert"; 3]);
    assert_eq!(
        rerouted
            .iter()
            .map(|m| m.body["new"]["id"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    wait_for("slot past the skipped floods", T, || async {
        (slot_confirmed(&s.client, &s.slot).await >= after).then_some(())
    })
    .await;
    let log = relay.log();
    assert!(log.contains("reason=\"marker\""), "{log}");
    assert!(log.contains("reason=\"origin\""), "{log}");
    assert!(s.queue().drain(Duration::from_millis(500)).await.is_empty());
    assert!(slow.drain(Duration::from_millis(100)).await.is_empty());
    slow.delete().await;
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_that_hides_a_key_column_stops_the_start_naming_it() {
    let s = Scene::new(
        "CREATE TABLE orders (order_no int PRIMARY KEY, card text);",
        &[],
    )
    .await;
    let cfg = s.rewrite(
        &["public.orders"],
        "[[filter.table]]\nname = \"public.orders\"\nignore = [\"order_no\", \"card\"]\n",
    );
    let mut relay = Relay::start(&cfg);
    let status = relay.wait_exit(T).await;
    assert!(!status.success());
    let log = relay.log();
    assert!(
        log.contains("order_no")
            && log.contains("row's key (primary key order_no)")
            && log.contains("public.orders"),
        "{log}"
    );
    assert!(!log.contains("streaming"), "{log}");
    s.finish().await;
}
