//! Backfills against a real PostgreSQL and RabbitMQ: a table rebuilt from `read` events and
//! changes equals the table, under concurrent writers; no `read` is older than a change
//! published before it; a `kill -9` mid-backfill resumes with identical ids; composite and
//! text keys, `--where`, a table without a key refused; the initial snapshot of a new slot.

use crate::common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use common::scene::{Scene, Setup};
use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(120);

const ITEMS: &str = "CREATE SEQUENCE ver;
     CREATE TABLE items (id int PRIMARY KEY, v bigint NOT NULL, note text);";

/// A consumer's copy of `items`, rebuilt from the events in the order they were published,
/// checking on every key that no `read` is older than what was already applied.
#[derive(Default)]
struct Model {
    rows: BTreeMap<i64, Value>,
    /// Per key, the last applied state: its version, or `None` once deleted.
    last: HashMap<i64, Option<i64>>,
    /// Per key, the ids its `read` events carried (one id per key and backfill).
    read_ids: HashMap<i64, HashSet<String>>,
    reads: usize,
    changes: usize,
    controls: Vec<String>,
}

impl Model {
    fn apply(&mut self, m: &Received) {
        let b = &m.body;
        let op = b["op"].as_str().unwrap();
        match op {
            "control" => self.controls.push(b["kind"].as_str().unwrap().to_owned()),
            "truncate" => {
                self.rows.clear();
                for v in self.last.values_mut() {
                    *v = None;
                }
            }
            "delete" => {
                let id = b["key"]["id"].as_i64().unwrap();
                self.changes += 1;
                self.rows.remove(&id);
                self.last.insert(id, None);
            }
            "insert" | "update" | "read" => {
                let new = &b["new"];
                let id = new["id"].as_i64().unwrap();
                let v = new["v"].as_i64().unwrap();
                if op == "read" {
                    self.reads += 1;
                    self.read_ids
                        .entry(id)
                        .or_default()
                        .insert(b["id"].as_str().unwrap().to_owned());
                    match self.last.get(&id) {
                        Some(None) => panic!("a read of {id} after its delete: stale ({b})"),
                        Some(Some(seen)) => assert!(
                            v >= *seen,
                            "a read of {id} at version {v} after version {seen}: stale"
                        ),
                        None => {}
                    }
                } else {
                    self.changes += 1;
                }
                self.rows.insert(id, new.clone());
                self.last.insert(id, Some(v));
            }
            other => panic!("unexpected op {other}"),
        }
    }
}

/// The table as rows keyed by id, rendered by `to_jsonb` (what events carry).
async fn table_rows(client: &tokio_postgres::Client) -> BTreeMap<i64, Value> {
    client
        .query("SELECT id, to_jsonb(t)::text FROM items t", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                i64::from(r.get::<_, i32>(0)),
                serde_json::from_str(r.get::<_, &str>(1)).unwrap(),
            )
        })
        .collect()
}

/// Random updates, deletes and inserts over `1..=keys` for `duration`; versions come from one
/// sequence, so a later state of a row always has a higher version.
fn writers(url: String, keys: i32, duration: Duration) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let c = connect(&url).await;
        let start = std::time::Instant::now();
        let mut n = 0u64;
        let mut x: u64 = 0x9e3779b97f4a7c15;
        while start.elapsed() < duration {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let id = (x % keys as u64) as i32 + 1;
            let sql = match x % 10 {
                0..=5 => {
                    format!("UPDATE items SET v = nextval('ver'), note = 'u{n}' WHERE id = {id}")
                }
                6 | 7 => format!("DELETE FROM items WHERE id = {id}"),
                _ => format!(
                    "INSERT INTO items VALUES ({id}, nextval('ver'), 'i{n}') ON CONFLICT (id) DO UPDATE SET v = nextval('ver')"
                ),
            };
            c.batch_execute(&sql).await.unwrap();
            n += 1;
        }
        n
    })
}

/// Runs `walrelay backfill …` against the scene; returns stdout, asserting success.
fn backfill(s: &Scene, args: &[&str]) -> String {
    let mut all = vec!["backfill"];
    all.extend_from_slice(args);
    let out = s.command(&all);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "walrelay {all:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Waits until `walrelay backfill --status` shows no active backfill.
async fn wait_finished(s: &Scene) -> String {
    wait_for("the backfill to finish", T, || async {
        let text = backfill(s, &["--status"]);
        let active = text.lines().skip(1).any(|l| {
            l.contains(" pending ") || l.contains(" running ") || l.contains(" cancelling ")
        });
        (!active && text.lines().count() > 1).then_some(text)
    })
    .await
}

/// Takes every event until the slot has confirmed `after` and the queue is quiet.
async fn consume_until(s: &Scene, model: &mut Model, after: u64) {
    let start = std::time::Instant::now();
    while s.confirmed().await < after {
        assert!(start.elapsed() < T, "the slot did not pass {after}");
        for m in s.queue().drain(Duration::from_millis(300)).await {
            model.apply(&m);
        }
    }
    for m in s.queue().drain_all(Duration::from_millis(800)).await {
        model.apply(&m);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_under_concurrent_writes_rebuilds_the_table_and_is_never_stale() {
    let s = Scene::new(ITEMS, &["public.items"]).await;
    // WALRELAY_CHAOS_LONG: the long variant, a million rows.
    let rows = if std::env::var_os("WALRELAY_CHAOS_LONG").is_some() {
        1_000_000
    } else {
        200_000
    };
    s.sql(&format!(
        "INSERT INTO items SELECT g, 0, 'seed' FROM generate_series(1, {rows}) g; ANALYZE items"
    ))
    .await;
    s.set("backfill", "chunk_rows", "5000");
    let relay = s.start_streaming().await;
    let writer = writers(s.url(), rows + rows / 20, Duration::from_secs(8));
    let said = backfill(&s, &["public.items"]);
    assert!(said.contains("recorded"), "{said}");
    let mut model = Model::default();
    // Consume while it runs: the queue stays small and the order is the publish order.
    while !writer.is_finished() {
        for m in s.queue().drain(Duration::from_millis(200)).await {
            model.apply(&m);
        }
    }
    let writes = writer.await.unwrap();
    let status = wait_finished(&s).await;
    assert!(status.contains("finished"), "{status}");
    s.sql("SELECT 1").await;
    let after = s.lsn().await;
    consume_until(&s, &mut model, after).await;
    assert!(writes > 500, "the writers ran ({writes} writes)");
    assert!(
        model.reads as i32 > rows * 3 / 4,
        "reads: {}; {}",
        model.reads,
        scrape_metrics(&relay).await
    );
    let table = table_rows(&s.client).await;
    assert_eq!(model.rows.len(), table.len(), "row count");
    assert!(
        model.rows == table,
        "the rebuilt table differs from the table"
    );
    assert!(
        model.read_ids.values().all(|ids| ids.len() == 1),
        "one id per key per backfill"
    );
    assert_eq!(
        model.controls,
        ["backfill_started", "backfill_finished"],
        "control events, in order"
    );
    let m = scrape_metrics(&relay).await;
    // Chunks hold at most chunk_rows (5000) rows; how many the table needs depends on how
    // many seeded rows the writers deleted before the backfill read them. A session that
    // restarts (a confirm stall under load) drops its one unconfirmed chunk, which is read
    // again: at most one chunk more per restart.
    let (chunks, read) = (
        metric(&m, "walrelay_backfill_chunks_total"),
        metric(&m, "walrelay_backfill_rows_total"),
    );
    let restarts = metric(&m, "walrelay_reconnects_total{side=\"rabbitmq\"}")
        + metric(&m, "walrelay_reconnects_total{side=\"postgres\"}");
    assert!(read >= f64::from(rows * 3 / 4), "{m}");
    assert!((chunks + restarts) * 5000.0 >= read, "{m}");
    s.finish().await;
}

async fn scrape_metrics(relay: &Relay) -> String {
    let port = relay.http_port().await;
    http_get(port, "/metrics").1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_twice_during_a_backfill_the_standby_resumes_it_with_identical_ids() {
    let s = Scene::new(ITEMS, &["public.items"]).await;
    s.sql("INSERT INTO items SELECT g, 0, 'seed' FROM generate_series(1, 30000) g")
        .await;
    s.set("backfill", "chunk_rows", "1000");
    // Slow enough that both kills land mid-way, whatever else the machine does.
    s.set("backfill", "rows_per_second", "2500");
    s.set("service", "standby_retry_ms", "300");
    let mut active = s.start_streaming().await;
    backfill(&s, &["public.items"]);
    let mut model = Model::default();
    for (round, at) in [(0, 6_000), (1, 15_000)] {
        let standby = s.start();
        standby.wait_log("waiting as standby", T).await;
        // Kill once the recorded progress passes `at` rows: mid-way, whatever the speed.
        wait_for("backfill progress", T, || async {
            let row = s
                .client
                .query_one("SELECT rows_done FROM walrelay.backfill", &[])
                .await
                .unwrap();
            (row.get::<_, i64>(0) >= at).then_some(())
        })
        .await;
        active.kill9();
        // A write while the active one is gone: the stream carries it after the takeover.
        s.sql(&format!(
            "UPDATE items SET v = nextval('ver') WHERE id % 97 = {round}"
        ))
        .await;
        let status = backfill(&s, &["--status"]);
        assert!(status.contains("running"), "round {round}: {status}");
        standby.wait_log("streaming", T).await;
        active = standby;
    }
    wait_finished(&s).await;
    let after = s.lsn().await;
    consume_until(&s, &mut model, after).await;
    let table = table_rows(&s.client).await;
    assert!(
        model.rows == table,
        "the rebuilt table differs from the table"
    );
    assert!(
        model.read_ids.values().all(|ids| ids.len() == 1),
        "a replayed chunk carries the ids it had"
    );
    drop(active);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_during_a_backfill_loses_nothing() {
    let proxy = common::proxy::Proxy::start(&amqp_addr()).await;
    let amqp = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    let setup = common::scene::Setup {
        amqp_url: &amqp,
        ..Default::default()
    };
    let s = Scene::with(ITEMS, &["public.items"], setup).await;
    s.sql("INSERT INTO items SELECT g, 0, 'seed' FROM generate_series(1, 20000) g")
        .await;
    s.set("backfill", "chunk_rows", "1000");
    let relay = s.start_streaming().await;
    backfill(&s, &["public.items"]);
    let mut model = Model::default();
    for m in s.queue().take(3_000, T).await {
        model.apply(&m);
    }
    proxy.set_down(true);
    s.sql("UPDATE items SET v = nextval('ver') WHERE id % 50 = 0")
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set_down(false);
    wait_finished(&s).await;
    let after = s.lsn().await;
    consume_until(&s, &mut model, after).await;
    assert!(model.rows == table_rows(&s.client).await);
    assert!(model.read_ids.values().all(|ids| ids.len() == 1));
    assert!(
        relay.log().contains("retrying"),
        "the outage ended a session"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_and_text_keys_a_where_clause_and_a_table_without_a_key() {
    let s = Scene::new(
        "CREATE TABLE pairs (a text, b int, payload text, PRIMARY KEY (a, b));
         INSERT INTO pairs VALUES ('', 1, 'empty'), ('a b', 2, 'space'), ('ünï', 4, 'utf8'),
           ('it''s', 6, 'quote'), ('x\\y', 8, 'backslash'), ('a b', 3, 'odd'), ('z', 10, NULL);
         CREATE TABLE nokey (v int);",
        &["public.pairs", "public.nokey"],
    )
    .await;
    s.set("backfill", "chunk_rows", "2");
    // A flood guard that skips any transaction of more than one change: a chunk is no flood.
    s.append("[flood]\nmax_changes = 1\npolicy = \"skip\"");
    let _relay = s.start_streaming().await;
    let out = s.command(&["backfill", "public.nokey"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no primary key"), "{err}");
    let out = s.command(&["backfill", "public.pairs", "--where", "no_such_column > 1"]);
    assert!(!out.status.success(), "a bad --where is refused at once");
    backfill(&s, &["public.pairs", "--where", "b % 2 = 0"]);
    wait_finished(&s).await;
    let got = s.queue().drain_all(Duration::from_millis(1500)).await;
    let reads: Vec<&Value> = got
        .iter()
        .map(|m| &m.body)
        .filter(|b| b["op"] == "read")
        .collect();
    let mut keys: Vec<(String, i64)> = reads
        .iter()
        .map(|b| {
            (
                b["key"]["a"].as_str().unwrap().to_owned(),
                b["key"]["b"].as_i64().unwrap(),
            )
        })
        .collect();
    keys.sort();
    let want: Vec<(String, i64)> = [
        ("", 1),
        ("a b", 2),
        ("it's", 6),
        ("x\\y", 8),
        ("z", 10),
        ("ünï", 4),
    ]
    .iter()
    .filter(|(_, b)| b % 2 == 0)
    .map(|(a, b)| (a.to_string(), *b))
    .collect();
    let mut want = want;
    want.sort();
    assert_eq!(keys, want);
    let z = reads.iter().find(|b| b["key"]["a"] == "z").unwrap();
    assert_eq!(z["new"]["payload"], Value::Null);
    assert_eq!(z["table"], "pairs");
    assert!(got.iter().any(|m| m.routing_key == "public.pairs.read"));
    assert!(
        got.iter()
            .any(|m| m.routing_key == "_walrelay.control.backfill_finished")
    );
    s.finish().await;
}

/// A transaction's commit record can precede the low mark in the WAL while the transaction is
/// still invisible to a new snapshot: PostgreSQL writes the commit record first and leaves the
/// running-transactions array later (after a group-commit flush, or here, after a synchronous
/// standby's answer). The update then streams before the low mark, outside the window, and a
/// chunk read without waiting for it holds the row's older state: a stale `read`. A synchronous
/// standby that never answers holds such a transaction for as long as the test wants; a
/// backfill cancelled while it waits ends at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_committed_before_the_low_mark_but_not_yet_visible_is_waited_for() {
    let s = Scene::with(
        ITEMS,
        &["public.items"],
        Setup {
            conf: &[
                "synchronous_standby_names = 'ghost'",
                "synchronous_commit = local",
            ],
            ..Setup::default()
        },
    )
    .await;
    s.sql("INSERT INTO items SELECT g, 0, 'seed' FROM generate_series(1, 100) g")
        .await;
    let relay = s.start_streaming().await;
    // Only this transaction waits for the standby that does not exist.
    let held = connect(&s.url()).await;
    let update = tokio::spawn(async move {
        held.batch_execute(
            "SET synchronous_commit = on; UPDATE items SET v = nextval('ver') WHERE id = 7",
        )
        .await
        .unwrap();
    });
    let mut model = Model::default();
    let published = s.queue().take(1, T).await;
    assert_eq!(published[0].body["op"], "update", "{:?}", published[0].body);
    model.apply(&published[0]);
    let visible = s
        .client
        .query_one("SELECT v FROM items WHERE id = 7", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(visible, 0, "the update is published but not yet visible");
    // A backfill cancelled during the wait ends at once, the writer still held.
    backfill(&s, &["public.items"]);
    relay
        .wait_log("backfill waits for transactions writing public.items", T)
        .await;
    backfill(&s, &["--cancel", "public.items"]);
    let status = wait_finished(&s).await;
    assert!(status.contains("cancelled"), "{status}");
    assert!(!update.is_finished(), "the writer is still held");
    // Requested again: it waits until the writer's transaction is visible.
    backfill(&s, &["public.items"]);
    wait_for("the second wait", T, || async {
        (relay
            .log()
            .matches("backfill waits for transactions writing public.items")
            .count()
            == 2)
            .then_some(())
    })
    .await;
    // Held: nothing read while the update is invisible.
    let early = s.queue().drain(Duration::from_secs(2)).await;
    for m in &early {
        model.apply(m);
    }
    assert!(
        early.iter().all(|m| m.body["op"] != "read"),
        "read while a committed write was invisible"
    );
    s.client
        .batch_execute("ALTER SYSTEM SET synchronous_standby_names = ''")
        .await
        .unwrap();
    s.sql("SELECT pg_reload_conf()").await;
    update.await.unwrap();
    let status = wait_finished(&s).await;
    assert!(status.contains("finished"), "{status}");
    s.sql("SELECT 1").await;
    let after = s.lsn().await;
    consume_until(&s, &mut model, after).await;
    assert_eq!(model.reads, 100);
    assert!(model.rows == table_rows(&s.client).await);
    assert_eq!(
        model.controls,
        // The first backfill was cancelled before its first chunk began: no start announced.
        [
            "backfill_cancelled",
            "backfill_started",
            "backfill_finished"
        ]
    );
    s.finish().await;
}

/// An update of `id` that commits (its record in the WAL, published) but stays invisible until
/// the synchronous standby answers (`synchronous_standby_names = 'ghost'` never does): the
/// task that ends with it, and its backend's pid.
async fn held_update(url: &str, id: i32) -> (tokio::task::JoinHandle<()>, i32) {
    let held = connect(url).await;
    let pid: i32 = held
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let task = tokio::spawn(async move {
        held.batch_execute(&format!(
            "SET synchronous_commit = on; UPDATE items SET v = nextval('ver') WHERE id = {id}"
        ))
        .await
        .unwrap();
    });
    (task, pid)
}

/// A writer that begins while the worker waits before the low mark, and is still committing
/// after it: the chunk is abandoned after a second (its window closed rather than left open
/// for as long as the writer runs) and read once the writer's update is visible; the start of
/// the backfill is announced once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_outlasts_the_wait_after_the_low_mark_restarts_the_chunk() {
    let s = Scene::with(
        ITEMS,
        &["public.items"],
        Setup {
            conf: &[
                "synchronous_standby_names = 'ghost'",
                "synchronous_commit = local",
            ],
            ..Setup::default()
        },
    )
    .await;
    s.sql("INSERT INTO items SELECT g, 0, 'seed' FROM generate_series(1, 100) g")
        .await;
    let relay = s.start_streaming().await;
    let mut model = Model::default();
    let (first, first_pid) = held_update(&s.url(), 7).await;
    model.apply(&s.queue().take(1, T).await[0]);
    backfill(&s, &["public.items"]);
    relay
        .wait_log("backfill waits for transactions writing public.items", T)
        .await;
    // Begins after the worker listed the writers it waits for before the low mark.
    let (second, _) = held_update(&s.url(), 8).await;
    let published = s.queue().take(1, T).await;
    assert_eq!(published[0].body["key"]["id"], 8);
    model.apply(&published[0]);
    // The first writer's wait ends (its transaction is committed and becomes visible).
    s.sql(&format!("SELECT pg_cancel_backend({first_pid})"))
        .await;
    first.await.unwrap();
    relay
        .wait_log("a writer outlasted the wait after the low mark", T)
        .await;
    let early = s.queue().drain(Duration::from_secs(2)).await;
    for m in &early {
        model.apply(m);
    }
    assert!(
        early.iter().all(|m| m.body["op"] != "read"),
        "read while a committed write was invisible"
    );
    s.client
        .batch_execute("ALTER SYSTEM SET synchronous_standby_names = ''")
        .await
        .unwrap();
    s.sql("SELECT pg_reload_conf()").await;
    second.await.unwrap();
    let status = wait_finished(&s).await;
    assert!(status.contains("finished"), "{status}");
    s.sql("SELECT 1").await;
    let after = s.lsn().await;
    consume_until(&s, &mut model, after).await;
    assert_eq!(model.reads, 100);
    assert!(model.rows == table_rows(&s.client).await);
    assert_eq!(model.controls, ["backfill_started", "backfill_finished"]);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_initial_snapshot_of_a_new_slot_delivers_existing_rows_then_every_change() {
    let s = Scene::new(ITEMS, &["public.items"]).await;
    s.sql("INSERT INTO items SELECT g, 0, 'seed' FROM generate_series(1, 20000) g")
        .await;
    s.append("[snapshot]\ntables = [\"public.*\"]");
    let _relay = s.start_streaming().await;
    let writer = writers(s.url(), 21_000, Duration::from_secs(5));
    let mut model = Model::default();
    while !writer.is_finished() {
        for m in s.queue().drain(Duration::from_millis(200)).await {
            model.apply(&m);
        }
    }
    writer.await.unwrap();
    let status = wait_finished(&s).await;
    assert!(status.contains("finished"), "{status}");
    let after = s.lsn().await;
    consume_until(&s, &mut model, after).await;
    assert!(model.rows == table_rows(&s.client).await);
    assert!(model.reads > 10_000, "reads: {}", model.reads);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_and_a_new_slot_are_announced_once_in_stream_order() {
    let s = Scene::new("CREATE TABLE t (id int PRIMARY KEY, a int);", &["public.t"]).await;
    s.set("control", "schema_events", "true");
    let _relay = s.start_streaming().await;
    s.sql("INSERT INTO t VALUES (1, 1)").await;
    s.sql("ALTER TABLE t ADD COLUMN b text").await;
    s.sql("INSERT INTO t VALUES (2, 2, 'x')").await;
    s.sql("ALTER TABLE t ALTER COLUMN a TYPE bigint").await;
    s.sql("INSERT INTO t VALUES (3, 3, 'y')").await;
    s.sql("ALTER TABLE t RENAME COLUMN b TO c").await;
    s.sql("INSERT INTO t VALUES (4, 4, 'z')").await;
    let got = s.queue().take(8, T).await;
    let seq: Vec<String> = got
        .iter()
        .map(|m| match m.body["op"].as_str().unwrap() {
            "control" => m.body["kind"].as_str().unwrap().to_owned(),
            op => format!("{op} {}", m.body["key"]["id"]),
        })
        .collect();
    assert_eq!(
        seq,
        [
            "slot_created",
            "insert 1",
            "schema_changed",
            "insert 2",
            "schema_changed",
            "insert 3",
            "schema_changed",
            "insert 4"
        ]
    );
    let names = |m: &Received, side: &str| -> Vec<String> {
        m.body["columns"][side]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&got[2], "old"), ["id", "a"]);
    assert_eq!(names(&got[2], "new"), ["id", "a", "b"]);
    assert_ne!(
        got[4].body["columns"]["old"][1]["type_oid"], got[4].body["columns"]["new"][1]["type_oid"],
        "a retyped column"
    );
    assert_eq!(names(&got[6], "new"), ["id", "a", "c"]);
    assert_eq!(got[2].routing_key, "_walrelay.control.schema_changed");
    assert_eq!(got[2].body["table"], "t");
    assert_eq!(got[0].body["slot"], s.slot.as_str());
    assert!(
        s.queue().drain(Duration::from_millis(800)).await.is_empty(),
        "once each"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_backfill_stops_and_says_so_and_a_postgres_restart_is_survived() {
    let s = Scene::new(ITEMS, &["public.items"]).await;
    s.sql("INSERT INTO items SELECT g, 0, 'seed' FROM generate_series(1, 20000) g")
        .await;
    s.set("backfill", "chunk_rows", "500");
    s.set("backfill", "rows_per_second", "4000");
    let relay = s.start_streaming().await;
    backfill(&s, &["public.items"]);
    let mut model = Model::default();
    for m in s.queue().take(2_000, T).await {
        model.apply(&m);
    }
    // PostgreSQL restarts mid-backfill: walrelay reconnects and the backfill resumes.
    s.pg.pg_ctl_stop("fast");
    s.pg.pg_ctl_start();
    relay.wait_log("retrying", T).await;
    for m in s.queue().take(2_000, T).await {
        model.apply(&m);
    }
    let said = backfill(&s, &["--cancel", "public.items"]);
    assert!(said.starts_with("1 backfill"), "{said}");
    let status = wait_finished(&s).await;
    assert!(status.contains("cancelled"), "{status}");
    for m in s.queue().drain_all(Duration::from_millis(1000)).await {
        model.apply(&m);
    }
    assert_eq!(
        model.controls.first().map(String::as_str),
        Some("backfill_started")
    );
    assert_eq!(
        model.controls.last().map(String::as_str),
        Some("backfill_cancelled")
    );
    assert!(
        model.reads < 20_000,
        "it stopped early ({} reads)",
        model.reads
    );
    assert!(model.read_ids.values().all(|ids| ids.len() == 1));
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_table_with_odd_names_is_backfilled_under_its_root() {
    let s = Scene::new(
        r#"CREATE SCHEMA "Odd Schema";
           CREATE TABLE "Odd Schema"."my.events" (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
           CREATE TABLE "Odd Schema".ev_2025 PARTITION OF "Odd Schema"."my.events" FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
           CREATE TABLE "Odd Schema".ev_2026 PARTITION OF "Odd Schema"."my.events" FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
           INSERT INTO "Odd Schema"."my.events" SELECT g, date '2025-06-01' + (g % 400) FROM generate_series(1, 1000) g;"#,
        &[r#""Odd Schema"."my.events""#],
    )
    .await;
    s.set("backfill", "chunk_rows", "100");
    let _relay = s.start_streaming().await;
    backfill(&s, &[r#""Odd Schema"."my.events""#]);
    wait_finished(&s).await;
    let got = s.queue().drain_all(Duration::from_millis(1500)).await;
    let reads: Vec<&Received> = got.iter().filter(|m| m.body["op"] == "read").collect();
    assert_eq!(reads.len(), 1000);
    assert!(reads.iter().all(|m| m.body["schema"] == "Odd Schema"
        && m.body["table"] == "my.events"
        && m.routing_key == "Odd Schema.my%2Eevents.read"));
    let ids: HashSet<&str> = reads
        .iter()
        .map(|m| m.body["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1000, "one id per row");
    s.finish().await;
}
