//! Filters and the flood guard with the stream sink (RabbitMQ 4): a table rule's `ops` drop
//! what it excludes, a flood (a transaction over `flood.max_changes`) is rerouted to a stream
//! of its own with the routing prefix, another table's flood becomes one `bulk` summary, and
//! the main stream keeps commit order.

use crate::common;

use std::time::Duration;

use common::scene::Scene;
use common::stream::*;
use common::*;

const T: Duration = Duration::from_secs(120);

/// Each message of `stream` (at least `n`): its routing key and body.
async fn read(stream: &str, n: usize) -> Vec<(String, serde_json::Value)> {
    read_at_least(stream, n)
        .await
        .iter()
        .map(|(_, m)| (app_property(m, "routing_key").unwrap(), body(m)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rules_drop_and_floods_go_to_their_own_stream() {
    let s = Scene::stream(
        "CREATE TABLE a (id int PRIMARY KEY, v int); CREATE TABLE b (id int PRIMARY KEY, v int);
         CREATE TABLE c (id int PRIMARY KEY);",
        &["public.a", "public.b", "public.c"],
        "",
    )
    .await;
    let (client, stream, cfg) = (&s.client, s.stream_name().to_owned(), &s.config);
    let bulk = format!("{stream}_bulk");
    s.append(&format!(
        "[[filter.table]]\nname = \"public.b\"\nops = [\"insert\"]\n\
         [[filter.table]]\nname = \"public.c\"\nflood_policy = \"summarize\"\n\
         [flood]\nmax_changes = 10\npolicy = \"reroute\"\nreroute_exchange = {bulk:?}\nreroute_routing_prefix = \"bulk.\"\n"
    ));
    let relay = Relay::start(cfg);
    relay.wait_log("streaming", T).await;
    // One transaction each (a multi-statement batch would be one transaction).
    for sql in [
        "INSERT INTO a VALUES (1, 1)",
        "INSERT INTO b VALUES (1, 1)",
        "UPDATE b SET v = 2 WHERE id = 1",
        "INSERT INTO a SELECT g, g FROM generate_series(100, 119) g",
        "INSERT INTO a VALUES (2, 2)",
        "INSERT INTO c SELECT g FROM generate_series(1, 30) g",
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    let main = read(&stream, 4).await;
    let ops: Vec<(&str, &str)> = main
        .iter()
        .map(|(_, b)| (b["table"].as_str().unwrap(), b["op"].as_str().unwrap()))
        .collect();
    assert_eq!(
        ops,
        [
            ("a", "insert"),
            ("b", "insert"),
            ("a", "insert"),
            ("c", "bulk")
        ],
        "b's update dropped by its rule, a's flood elsewhere, c's flood summarized, commit order kept"
    );
    assert_eq!(main[2].1["key"]["id"], 2);
    let flood = read(&bulk, 20).await;
    assert_eq!(flood.len(), 20, "each flood change once");
    assert!(
        flood.iter().all(|(k, _)| k == "bulk.public.a.insert"),
        "{:?}",
        flood.first()
    );
    let ids: Vec<i64> = flood
        .iter()
        .map(|(_, b)| b["key"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, (100..120).collect::<Vec<_>>());
    let end = current_lsn(client).await;
    wait_for("the slot past the changes", T, || async {
        (slot_confirmed(client, &s.slot).await >= end).then_some(())
    })
    .await;
    drop(relay);
    let env = env().await;
    let _ = env.delete_stream(&stream).await;
    let _ = env.delete_stream(&bulk).await;
}

/// The shapes users have, through the stream sink: a partitioned table (published through its
/// root), an identifier that needs quoting, an empty transaction, and DDL while streaming.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitioned_and_oddly_named_tables_reach_the_stream() {
    let s = Scene::stream(
        "CREATE TABLE m (id int PRIMARY KEY, v int) PARTITION BY RANGE (id);
         CREATE TABLE m_low PARTITION OF m FOR VALUES FROM (0) TO (100);
         CREATE TABLE m_high PARTITION OF m FOR VALUES FROM (100) TO (200);
         CREATE TABLE \"Odd Name\" (\"Key\" int PRIMARY KEY, v text);",
        &["public.m", "public.Odd Name"],
        "",
    )
    .await;
    let (client, stream, cfg) = (&s.client, s.stream_name().to_owned(), &s.config);
    let relay = Relay::start(cfg);
    relay.wait_log("streaming", T).await;
    for sql in [
        "INSERT INTO m VALUES (1, 1), (150, 2)",
        "BEGIN; COMMIT;",
        "INSERT INTO \"Odd Name\" VALUES (7, 'x')",
        "ALTER TABLE m ADD COLUMN w int",
        "INSERT INTO m VALUES (2, 3, 4)",
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    let got = read(&stream, 4).await;
    let seen: Vec<(String, i64)> = got
        .iter()
        .map(|(_, b)| {
            let key = &b["key"];
            let id = key.get("id").or_else(|| key.get("Key")).unwrap();
            (
                b["table"].as_str().unwrap().to_owned(),
                id.as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("m".to_owned(), 1),
            ("m".to_owned(), 150),
            ("Odd Name".to_owned(), 7),
            ("m".to_owned(), 2)
        ],
        "partitions under their root's name, the odd name as it is, in commit order"
    );
    assert_eq!(got[3].1["new"]["w"], 4, "the column added while streaming");
    drop(relay);
    let _ = env().await.delete_stream(&stream).await;
}
