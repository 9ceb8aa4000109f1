//! A row's identity against a real server: under DEFAULT, USING INDEX and FULL, with single and
//! composite keys of int, text, uuid, numeric and timestamptz, every change of one row carries
//! the same `key` and lands in the same `{partition}` (across a restart too), an update that
//! changes the key is keyed and routed by the old key, and a Jepsen-style run on a FULL table
//! with one consumer per partition finds each row's changes in commit order in one partition.

use crate::common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::scene::Scene;
use common::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);

/// Key shapes: (table suffix, key column definitions, key column names, values of one row).
const SHAPES: [(&str, &str, &str, &str); 6] = [
    ("int", "k int", "k", "7"),
    ("text", "k text", "k", "'a.b c'"),
    (
        "uuid",
        "k uuid",
        "k",
        "'6f1c1f9e-1c2b-4d7a-9f00-0123456789ab'",
    ),
    ("num", "k numeric", "k", "1.50"),
    ("ts", "k timestamptz", "k", "'2026-03-29 01:30:00+01'"),
    (
        "comp",
        "a int, b text, c uuid, d numeric",
        "a, b, c, d",
        "1, 'x', '6f1c1f9e-1c2b-4d7a-9f00-0123456789ab', 2.0",
    ),
];

const IDENTITIES: [&str; 3] = ["default", "index", "full"];

fn schema() -> String {
    let mut sql = String::new();
    for ident in IDENTITIES {
        for (suffix, cols, keys, _) in SHAPES {
            let t = format!("{ident}_{suffix}");
            sql.push_str(&format!(
                "CREATE TABLE {t} ({cols}, v int NOT NULL DEFAULT 0, note text, PRIMARY KEY ({keys}));\n"
            ));
            match ident {
                "index" => sql.push_str(&format!(
                    "ALTER TABLE {t} REPLICA IDENTITY USING INDEX {t}_pkey;\n"
                )),
                "full" => sql.push_str(&format!("ALTER TABLE {t} REPLICA IDENTITY FULL;\n")),
                _ => {}
            }
        }
    }
    sql
}

/// The `{partition}` of a routing key `table.op.pN.…`.
fn partition(rk: &str) -> String {
    rk.split('.').nth(2).unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_of_a_row_has_the_same_key_and_partition_under_every_identity() {
    let s = Scene::new(&schema(), &["public.*"]).await;
    s.append(
        "[[filter.table]]\nname = \"public.*\"\npartitions = 8\nrouting_key = \"{table}.{op}.p{partition}\"\n",
    );
    let mut relay = s.start_streaming().await;
    let mut sql = String::new();
    for ident in IDENTITIES {
        for (suffix, _, keys, values) in SHAPES {
            let t = format!("{ident}_{suffix}");
            sql.push_str(&format!("INSERT INTO {t} ({keys}) VALUES ({values});\n"));
            for i in 1..=3 {
                sql.push_str(&format!("UPDATE {t} SET v = {i}, note = 'n{i}';\n"));
            }
        }
    }
    s.sql(&sql).await;
    let per_table = 4;
    let total = IDENTITIES.len() * SHAPES.len() * per_table;
    let first = s.queue().take_distinct(total, T).await;
    // A restart in the middle: the partition function is the same in the next process.
    relay.kill9();
    let _relay = s.start_streaming().await;
    let mut sql = String::new();
    for ident in IDENTITIES {
        for (suffix, _, _, _) in SHAPES {
            sql.push_str(&format!(
                "UPDATE {ident}_{suffix} SET v = 10;\nDELETE FROM {ident}_{suffix};\n"
            ));
        }
    }
    s.sql(&sql).await;
    let mut all = first;
    let mut seen: HashSet<String> = all.iter().map(|m| m.message_id.clone()).collect();
    let want = total + total / 2;
    let start = std::time::Instant::now();
    while seen.len() < want {
        assert!(
            start.elapsed() < T,
            "got {} of {want} distinct events",
            seen.len()
        );
        match s.queue().get().await {
            Some(m) if seen.insert(m.message_id.clone()) => all.push(m),
            Some(_) => {}
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    // Replays arrive in commit order with the rest; keep the stream order by commit position.
    all.sort_by_key(|m| {
        let id = m.message_id.clone();
        let (lsn, index) = id.rsplit_once(':').unwrap();
        (checker::parse_lsn(lsn), index.parse::<u64>().unwrap())
    });
    let mut by_table: BTreeMap<String, Vec<&Received>> = BTreeMap::new();
    for m in &all {
        by_table
            .entry(m.body["table"].as_str().unwrap().to_owned())
            .or_default()
            .push(m);
    }
    assert_eq!(by_table.len(), IDENTITIES.len() * SHAPES.len());
    for (table, msgs) in &by_table {
        let ops: Vec<&str> = msgs
            .iter()
            .map(|m| m.body["op"].as_str().unwrap())
            .collect();
        assert_eq!(
            ops,
            ["insert", "update", "update", "update", "update", "delete"],
            "{table}"
        );
        let key = &msgs[0].body["key"];
        let want_cols: Vec<&str> = SHAPES
            .iter()
            .find(|s| table.ends_with(&format!("_{}", s.0)))
            .unwrap()
            .2
            .split(", ")
            .collect();
        let got_cols: Vec<&str> = key
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            got_cols, want_cols,
            "{table}: the key is the primary key, {key}"
        );
        for m in msgs {
            assert_eq!(&m.body["key"], key, "{table}: {}", m.body);
            assert_eq!(
                partition(&m.routing_key),
                partition(&msgs[0].routing_key),
                "{table}: {} vs {}",
                m.routing_key,
                msgs[0].routing_key
            );
        }
        // FULL still carries the whole old row.
        if table.starts_with("full_") {
            assert_eq!(msgs[2].body["old"]["v"], 1, "{table}");
        }
    }
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_of_the_primary_key_is_keyed_and_routed_by_the_old_key() {
    let s = Scene::new(
        "CREATE TABLE acct (id numeric PRIMARY KEY, balance int);
         CREATE TABLE acct_full (id int PRIMARY KEY, balance int);
         ALTER TABLE acct_full REPLICA IDENTITY FULL;",
        &["public.*"],
    )
    .await;
    s.append(
        "[[filter.table]]\nname = \"public.*\"\npartitions = 8\nrouting_key = \"{table}.{op}.p{partition}.{key.id}\"\n",
    );
    let _relay = s.start_streaming().await;
    s.sql(
        "INSERT INTO acct VALUES (1.50, 0);
         UPDATE acct SET id = 1.5 WHERE id = 1.50;   -- the same key to the index, other text
         UPDATE acct SET balance = 1;
         UPDATE acct SET id = 2;
         INSERT INTO acct_full VALUES (1, 0);
         UPDATE acct_full SET id = 2, balance = 5;",
    )
    .await;
    let got = s.queue().take(6, T).await;
    let keys: Vec<(String, Value, Value)> = got
        .iter()
        .map(|m| {
            (
                m.routing_key.clone(),
                m.body["key"].clone(),
                m.body["new"]["id"].clone(),
            )
        })
        .collect();
    let p = partition(&got[0].routing_key);
    assert_eq!(keys[0].0, format!("acct.insert.{p}.1%2E5"));
    assert_eq!(
        keys[1].0,
        format!("acct.update.{p}.1%2E5"),
        "1.50 and 1.5: one key"
    );
    assert_eq!(
        keys[1].1.to_string(),
        r#"{"id":1.50}"#,
        "the old key, as PostgreSQL renders it"
    );
    assert_eq!(keys[2].0, format!("acct.update.{p}.1%2E5"));
    assert_eq!(
        keys[3].0,
        format!("acct.update.{p}.1%2E5"),
        "routed by the old key"
    );
    assert_eq!(keys[3].1.to_string(), r#"{"id":1.5}"#);
    assert_eq!(keys[3].2, json!(2));
    assert_eq!(got[5].body["key"], json!({"id": 1}));
    assert_eq!(got[5].body["new"]["id"], 2);
    assert_eq!(got[5].body["old"], json!({"id": 1, "balance": 0}));
    assert_eq!(
        partition(&got[5].routing_key),
        partition(&got[4].routing_key)
    );
    s.finish().await;
}

/// One consumer queue per partition, bound to `acct.*.p<i>`.
async fn partition_queues(exchange: &str, n: u32) -> Vec<TestQueue> {
    let mut qs = Vec::new();
    for i in 0..n {
        qs.push(
            TestQueue::named(
                amqp_url(),
                exchange,
                &format!("{exchange}_p{i}"),
                Some(&format!("acct.*.p{i}")),
                Default::default(),
            )
            .await,
        );
    }
    qs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_table_keeps_every_rows_changes_in_commit_order_within_one_partition() {
    const ROWS: i32 = 40;
    const PARTITIONS: u32 = 8;
    let s = Scene::new(
        "CREATE TABLE acct (id int PRIMARY KEY, balance int NOT NULL);
         ALTER TABLE acct REPLICA IDENTITY FULL;",
        &["public.acct"],
    )
    .await;
    s.append(&format!(
        "[[filter.table]]\nname = \"public.acct\"\npartitions = {PARTITIONS}\nrouting_key = \"{{table}}.{{op}}.p{{partition}}\"\n"
    ));
    let queues = partition_queues(&s.exchange, PARTITIONS).await;
    let mut relay = s.start_streaming().await;
    s.sql(&format!(
        "INSERT INTO acct SELECT g, 0 FROM generate_series(1, {ROWS}) g;"
    ))
    .await;
    // Writers bump random rows; each row's balances 1, 2, 3… are its commit order (row lock).
    let stop = Arc::new(AtomicBool::new(false));
    let committed: Arc<std::sync::Mutex<HashMap<i32, i32>>> = Default::default();
    let mut writers = Vec::new();
    for w in 0..3u64 {
        let url = s.pg.url(&s.db);
        let stop = Arc::clone(&stop);
        let committed = Arc::clone(&committed);
        writers.push(tokio::spawn(async move {
            let c = connect(&url).await;
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ w;
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let id = (x % ROWS as u64) as i32 + 1;
                let row = c
                    .query_one(
                        "UPDATE acct SET balance = balance + 1 WHERE id = $1 RETURNING balance",
                        &[&id],
                    )
                    .await
                    .unwrap();
                let b: i32 = row.get(0);
                let mut m = committed.lock().unwrap();
                let e = m.entry(id).or_default();
                *e = (*e).max(b);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    relay.kill9();
    let _relay = s.start_streaming().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let committed = committed.lock().unwrap().clone();
    let updates: i32 = committed.values().sum();
    assert!(updates > 200, "the workload ran: {updates} updates");
    // Drain every partition; a replay after the kill repeats ids, never changes them.
    let mut rows: HashMap<i32, (usize, Vec<i32>)> = HashMap::new();
    let mut ids: HashMap<String, Value> = HashMap::new();
    let expected = ROWS as usize + updates as usize;
    let start = std::time::Instant::now();
    while ids.len() < expected {
        assert!(
            start.elapsed() < T,
            "got {} of {expected} distinct events",
            ids.len()
        );
        let mut got_any = false;
        for (p, q) in queues.iter().enumerate() {
            while let Some(m) = q.get().await {
                got_any = true;
                if let Some(prev) = ids.insert(m.message_id.clone(), m.body.clone()) {
                    assert_eq!(prev, m.body, "a replay differs");
                    continue;
                }
                let id = m.body["key"]["id"].as_i64().unwrap() as i32;
                let balance = m.body["new"]["balance"].as_i64().unwrap() as i32;
                let entry = rows.entry(id).or_insert((p, Vec::new()));
                assert_eq!(entry.0, p, "row {id} appeared in two partitions");
                entry.1.push(balance);
            }
        }
        if !got_any {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut used = HashSet::new();
    for id in 1..=ROWS {
        let (p, seq) = &rows[&id];
        used.insert(*p);
        let last = committed.get(&id).copied().unwrap_or(0);
        let want: Vec<i32> = (0..=last).collect();
        assert_eq!(
            seq, &want,
            "row {id}: every change, in commit order, in partition {p}"
        );
    }
    assert!(used.len() > 1, "rows spread over partitions: {used:?}");
    for q in queues {
        q.delete_queue().await;
    }
    s.finish().await;
}
